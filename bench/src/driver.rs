//! Running worker processes from the driver.
//!
//! Workers are found beside the driver's own executable
//! (`hk-worker-<allocator>`). Each measurement is one child process; its
//! stdout must hold one JSON [`WorkerReport`] line. A non-zero exit, a
//! signal, a timeout or unreadable output is returned as an error string
//! instead, so the run can record the failure and go on.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Scale, WorkerReport};

/// Directory holding the driver executable (and so the workers).
pub fn exe_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))
}

/// Path of the worker binary for `allocator` (check mode and the profile
/// run heapkeep's).
pub fn worker_path(dir: &Path, allocator: &str) -> PathBuf {
    let binary = match allocator {
        "heapkeep-check" | "heapkeep-profile" => "heapkeep",
        a => a,
    };
    dir.join(format!(
        "hk-worker-{binary}{}",
        std::env::consts::EXE_SUFFIX
    ))
}

/// When the driver was started by `cargo run`, rebuild the worker binaries
/// with the same profile first: `cargo run` only builds the binary it runs,
/// and stale workers would measure an old heapkeep. Returns `Ok(false)` if
/// not started by cargo (nothing done).
///
/// With `nostats`, also builds `hk-worker-heapkeep-nostats`, in a cargo
/// invocation of its own so its heapkeep keeps the `stats` feature off.
pub fn rebuild_workers_if_under_cargo(nostats: bool) -> Result<bool, String> {
    if std::env::var_os("CARGO").is_none() {
        return Ok(false);
    }
    build_package(env!("CARGO_PKG_NAME"))?;
    if nostats {
        build_package("heapkeep-bench-nostats")?;
    }
    Ok(true)
}

/// `cargo build` of the binaries of `package`, with the driver's profile and
/// target directory.
fn build_package(package: &str) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").ok_or("not started by cargo")?;
    let dir = exe_dir()?;
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bins"]);
    // Build with the driver's own profile (its directory is named after it,
    // `debug` for the dev profile) into the driver's own target directory.
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    if let Some(target) = dir.parent().filter(|t| t.join("CACHEDIR.TAG").exists()) {
        cmd.arg("--target-dir").arg(target);
    }
    if let Some(dir) = option_env!("CARGO_MANIFEST_DIR") {
        cmd.current_dir(dir);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build of {package} failed ({status})"))
    }
}

/// Environment the worker of `allocator` runs with.
pub fn worker_env(allocator: &str) -> &'static [(&'static str, &'static str)] {
    match allocator {
        "heapkeep-check" => &[("HEAPKEEP_CHECK", "1")],
        // The default rate; the profile goes to a scratch file.
        "heapkeep-profile" => &[
            ("HEAPKEEP_PROFILE", "1"),
            (
                "HEAPKEEP_PROFILE_OUT",
                "/tmp/heapkeep-bench-profile.%p.json",
            ),
        ],
        _ => &[],
    }
}

/// Runs `worker workload scale` with `env` added, waiting at most `timeout`.
pub fn run_worker(
    worker: &Path,
    env: &[(&str, &str)],
    workload: &str,
    scale: Scale,
    timeout: Duration,
) -> Result<WorkerReport, String> {
    let mut child = Command::new(worker)
        .args([workload, scale.as_str()])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", worker.display()))?;
    // Drain both pipes on threads so a chatty child cannot block.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_with_timeout(&mut child, timeout);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let status = match status {
        Some(s) => s,
        None => return Err(format!("timed out after {}s", timeout.as_secs())),
    };
    if !status.success() {
        return Err(format!("{}{}", describe(status), stderr_tail(&stderr)));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("no JSON line in output{}", stderr_tail(&stderr)))?;
    serde_json::from_str(line).map_err(|e| format!("bad worker output {line:?}: {e}"))
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for the child; kills it and returns `None` on timeout.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if start.elapsed() < timeout => thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            return format!("killed by signal {sig}{name}");
        }
    }
    match status.code() {
        Some(c) => format!("exit code {c}"),
        None => "abnormal exit".to_string(),
    }
}

/// Last non-empty stderr line, formatted as a suffix.
fn stderr_tail(stderr: &str) -> String {
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => {
            let l = l.trim();
            let l: String = l.chars().take(160).collect();
            format!(": {l}")
        }
        None => String::new(),
    }
}
