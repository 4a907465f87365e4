//! Benchmark worker running one workload under mimalloc (crate `mimalloc`).
//!
//! Usage: `hk-worker-mimalloc <workload> <quick|full>`; prints one JSON line.
//! Started by the `heapkeep-bench` driver, one process per measurement.

#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    heapkeep_bench::worker::main("mimalloc")
}
