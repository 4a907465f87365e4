//! Benchmark worker running one workload under heapkeep, the allocator under test.
//!
//! Usage: `hk-worker-heapkeep <workload> <quick|full>`; prints one JSON line.
//! Started by the `heapkeep-bench` driver, one process per measurement.

#[global_allocator]
static A: heapkeep::HeapKeep = heapkeep::HeapKeep;

fn main() -> std::process::ExitCode {
    heapkeep_bench::worker::main("heapkeep")
}
