//! Entry point shared by the `hk-worker-<allocator>` binaries.
//!
//! A worker binary only installs its `#[global_allocator]` and calls
//! [`main`]. The worker runs one workload (`hk-worker-X <workload>
//! <quick|full>`), then prints one JSON line ([`WorkerReport`]) on stdout:
//! the workload's wall time, the process's peak resident set (`VmHWM`) and
//! its resident set at the end (for `memreturn`, the figure after the frees).

use std::process::ExitCode;

use crate::workloads;
use crate::{procmem, Scale, WorkerReport};

/// Runs the workload named on the command line under `allocator` (the name
/// of the allocator the calling binary installed).
pub fn main(allocator: &str) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names = || {
        workloads::WORKLOADS
            .iter()
            .map(|w| w.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (Some(name), Some(scale)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: hk-worker-{allocator} <workload> <quick|full>\nworkloads: {}",
            names()
        );
        return ExitCode::from(2);
    };
    let Some(workload) = workloads::find(name) else {
        eprintln!("unknown workload {name:?}; known: {}", names());
        return ExitCode::from(2);
    };
    let Some(scale) = Scale::parse(scale) else {
        eprintln!("unknown scale {scale:?}; use quick or full");
        return ExitCode::from(2);
    };

    let outcome = (workload.run)(scale);

    let report = WorkerReport {
        workload: workload.name.to_string(),
        allocator: allocator.to_string(),
        scale,
        seconds: outcome.seconds,
        peak_rss_kib: procmem::peak_rss_kib(),
        rss_after_kib: outcome.rss_after_kib.unwrap_or_else(procmem::rss_kib),
        checksum: outcome.checksum,
    };
    match serde_json::to_string(&report) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot encode report: {e}");
            ExitCode::FAILURE
        }
    }
}
