//! Benchmark worker running one workload under the system allocator (glibc malloc via `std::alloc::System`).
//!
//! Usage: `hk-worker-system <workload> <quick|full>`; prints one JSON line.
//! Started by the `heapkeep-bench` driver, one process per measurement.

#[global_allocator]
static A: std::alloc::System = std::alloc::System;

fn main() -> std::process::ExitCode {
    heapkeep_bench::worker::main("system")
}
