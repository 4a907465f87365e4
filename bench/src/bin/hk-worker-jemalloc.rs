//! Benchmark worker running one workload under jemalloc (crate `tikv-jemallocator`).
//!
//! Usage: `hk-worker-jemalloc <workload> <quick|full>`; prints one JSON line.
//! Started by the `heapkeep-bench` driver, one process per measurement.

#[global_allocator]
static A: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    heapkeep_bench::worker::main("jemalloc")
}
