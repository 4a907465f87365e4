//! Benchmark worker running one workload under heapkeep built without its
//! operation counters (feature `stats` off), to measure what counting costs.
//!
//! Usage: `hk-worker-heapkeep-nostats <workload> <quick|full>`.

#[global_allocator]
static A: heapkeep::HeapKeep = heapkeep::HeapKeep;

fn main() -> std::process::ExitCode {
    if heapkeep::STATS_ENABLED {
        eprintln!(
            "hk-worker-heapkeep-nostats was built with heapkeep's `stats` feature \
             (cargo unified features); build it alone: cargo build -p heapkeep-bench-nostats"
        );
        return std::process::ExitCode::from(3);
    }
    heapkeep_bench::worker::main("heapkeep-nostats")
}
