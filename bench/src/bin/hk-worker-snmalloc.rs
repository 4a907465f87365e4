//! Benchmark worker running one workload under snmalloc (crate `snmalloc-rs`, built with `build_cc`).
//!
//! Usage: `hk-worker-snmalloc <workload> <quick|full>`; prints one JSON line.
//! Started by the `heapkeep-bench` driver, one process per measurement.

#[global_allocator]
static A: snmalloc_rs::SnMalloc = snmalloc_rs::SnMalloc;

fn main() -> std::process::ExitCode {
    heapkeep_bench::worker::main("snmalloc")
}
