//! `heapkeep run`: start the program with the library preloaded, wait,
//! read its exit report, print the summary. Also what `heapkeep check`
//! shares with it: finding the library, preloading it, waiting for the
//! program and turning how it ended into our exit status.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::summary::{self, Ending, Report, RunSummary};
use crate::RunArgs;

/// File name of the preload library.
const LIB_NAME: &str = "libheapkeep_preload.so";

/// The library to preload: `--lib`, else `HEAPKEEP_LIB`, else beside us.
pub(crate) fn find_lib(lib: Option<&Path>) -> Result<PathBuf, String> {
    let (lib, source) = if let Some(l) = lib {
        (l.to_path_buf(), "--lib")
    } else if let Some(l) = std::env::var_os("HEAPKEEP_LIB").filter(|l| !l.is_empty()) {
        (PathBuf::from(l), "HEAPKEEP_LIB")
    } else {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        (
            dir.join(LIB_NAME),
            "the default, beside the heapkeep executable",
        )
    };
    if !lib.is_file() {
        return Err(format!(
            "no heapkeep library at {} ({source}); build it with `cargo build --release` \
             or name it with --lib / HEAPKEEP_LIB",
            lib.display()
        ));
    }
    // LD_PRELOAD needs a path the loader can open from any directory.
    std::fs::canonicalize(&lib).map_err(|e| format!("{}: {e}", lib.display()))
}

/// A directory of our own for the reports, removed when dropped.
pub(crate) struct ReportDir(PathBuf);

impl ReportDir {
    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn new() -> Result<ReportDir, String> {
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir = base.join(format!(
                "heapkeep-run-{}-{nanos}-{attempt}",
                std::process::id()
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(ReportDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        }
        Err("cannot create a report directory".into())
    }
}

impl Drop for ReportDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Our SIGINT/SIGQUIT handler while the program runs: nothing. The terminal
/// sends these to the program too; it decides, and we still print the
/// summary. (A handler, unlike SIG_IGN, is reset to the default by `exec`.)
extern "C" fn ignore_signal(_: libc::c_int) {}

/// `LD_PRELOAD` with `lib` first, keeping what was there.
pub(crate) fn preload_value(lib: &Path) -> OsString {
    let mut v = OsString::from(lib);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        v.push(":");
        v.push(old);
    }
    v
}

/// Starts `cmd` (the program named `program`) and waits for it, ignoring
/// SIGINT and SIGQUIT meanwhile; returns its process id and how it ended.
pub(crate) fn spawn_and_wait(cmd: &mut Command, program: &str) -> Result<(u32, Ending), String> {
    spawn_and_wait_with(cmd, program, |_| {})
}

/// [`spawn_and_wait`], calling `started` with the process id once the
/// program runs (`heapkeep map --at signal` tells it to the user).
pub(crate) fn spawn_and_wait_with(
    cmd: &mut Command,
    program: &str,
    started: impl FnOnce(u32),
) -> Result<(u32, Ending), String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    started(child.id());
    let handler = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that does nothing is async-signal-safe.
    let old = unsafe {
        [
            libc::signal(libc::SIGINT, handler),
            libc::signal(libc::SIGQUIT, handler),
        ]
    };
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {program}: {e}"));
    // SAFETY: restores the dispositions we replaced.
    unsafe {
        libc::signal(libc::SIGINT, old[0]);
        libc::signal(libc::SIGQUIT, old[1]);
    }
    let status = status?;
    let ending = match (status.code(), status.signal()) {
        (Some(c), _) => Ending::Exited(c),
        (None, Some(s)) => Ending::Signaled(s),
        (None, None) => Ending::Exited(1),
    };
    Ok((child.id(), ending))
}

/// Runs `command` with the library preloaded and `env` added, passing its
/// output through; returns its exit status as ours (`check`, `profile`).
pub(crate) fn run_preloaded(
    lib: Option<&Path>,
    command: &[OsString],
    env: Vec<(&'static str, String)>,
) -> Result<ExitCode, String> {
    let lib = find_lib(lib)?;
    let program = command[0].to_string_lossy().into_owned();
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("LD_PRELOAD", preload_value(&lib))
        .envs(env);
    let (_, ending) = spawn_and_wait(&mut cmd, &program)?;
    Ok(exit_code(ending))
}

/// Our exit status for a program that ended so: its own, or 128+N when
/// killed by signal N.
pub(crate) fn exit_code(ending: Ending) -> ExitCode {
    match ending {
        Ending::Exited(c) => ExitCode::from(c as u8),
        Ending::Signaled(s) => ExitCode::from(128u8.wrapping_add(s as u8)),
    }
}

pub fn run(args: &RunArgs) -> Result<ExitCode, String> {
    let lib = find_lib(args.lib.as_deref())?;
    let dir = ReportDir::new()?;
    let prefix = dir.0.join("report");
    let program = args.command[0].to_string_lossy().into_owned();

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("LD_PRELOAD", preload_value(&lib))
        .env("HEAPKEEP_REPORT", &prefix)
        .env("HEAPKEEP_STACKS", "1");
    let start = Instant::now();
    let (pid, ending) = spawn_and_wait(&mut cmd, &program)?;
    let wall = start.elapsed();

    let own = format!("report.{pid}");
    let mut report: Option<Report> = None;
    let mut others = 0;
    if let Ok(entries) = std::fs::read_dir(&dir.0) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy() == own {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                report = serde_json::from_str(&text).ok();
            } else {
                others += 1;
            }
        }
    }
    let run = RunSummary {
        program: &program,
        ending,
        wall_seconds: wall.as_secs_f64(),
        child_processes: others,
        heap: report.as_ref(),
    };
    if !args.quiet {
        eprint!("{}", summary::text(&run));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&run).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(exit_code(ending))
}
