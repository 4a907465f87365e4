//! Running one child process and measuring it: wall time, peak RSS
//! (`ru_maxrss` from `wait4`, which covers the child and the descendants it
//! waited for), exit status and captured output, with a time limit.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exit status {c}"),
            Exit::Signal(s) => format!("killed by signal {s}"),
            Exit::TimedOut => "timed out (killed)".to_string(),
        }
    }
}

/// The tiny C runner (`c/runner.c`) that starts the measured program and
/// reports its time and peak RSS in a result file.
///
/// A child's `ru_maxrss` starts at the peak RSS of the address space it had
/// before `exec`, that is its parent's: spawned straight from this harness,
/// every small program would report the harness's own size. Started by the
/// runner (a few hundred KiB), the floor is negligible.
#[derive(Clone, Debug)]
pub struct Runner {
    exe: PathBuf,
    result: PathBuf,
}

impl Runner {
    pub fn new(exe: PathBuf, result: PathBuf) -> Runner {
        Runner { exe, result }
    }

    /// The same runner writing to another result file.
    pub fn with_result(&self, result: PathBuf) -> Runner {
        Runner {
            exe: self.exe.clone(),
            result,
        }
    }

    fn read(&self) -> Result<(Exit, u64, f64), String> {
        let text = std::fs::read_to_string(&self.result)
            .map_err(|e| format!("no result from the runner ({e})"))?;
        let words: Vec<&str> = text.split_whitespace().collect();
        let field = |name: &str| -> Option<&str> {
            words
                .iter()
                .position(|w| *w == name)
                .and_then(|i| words.get(i + 1).copied())
        };
        let parse = || -> Option<(Exit, u64, f64)> {
            let status: i32 = field("status")?.parse().ok()?;
            let signal: i32 = field("signal")?.parse().ok()?;
            let rss: u64 = field("maxrss_kib")?.parse().ok()?;
            let secs: f64 = field("seconds")?.parse().ok()?;
            let exit = if signal != 0 {
                Exit::Signal(signal)
            } else {
                Exit::Code(status)
            };
            Some((exit, rss, secs))
        };
        parse().ok_or_else(|| format!("bad runner result {:?}", text.trim()))
    }
}

/// How the measured programs are started: straight from the harness, or
/// through the runner.
#[derive(Clone, Debug)]
pub enum Launcher {
    Direct,
    Runner(Runner),
}

impl Launcher {
    /// A command running `program args` with `LD_PRELOAD=preload` (none:
    /// no preload). `program` must be an absolute path.
    pub fn command(&self, program: &OsStr, args: &[OsString], preload: Option<&Path>) -> Command {
        match self {
            Launcher::Direct => {
                let mut c = Command::new(program);
                c.args(args);
                match preload {
                    Some(p) => c.env("LD_PRELOAD", p),
                    None => c.env_remove("LD_PRELOAD"),
                };
                c
            }
            Launcher::Runner(r) => {
                let mut c = Command::new(&r.exe);
                c.arg(&r.result)
                    .arg(preload.map_or(OsStr::new("-"), Path::as_os_str))
                    .arg(program)
                    .args(args)
                    .env_remove("LD_PRELOAD");
                c
            }
        }
    }

    fn runner(&self) -> Option<&Runner> {
        match self {
            Launcher::Direct => None,
            Launcher::Runner(r) => Some(r),
        }
    }

    /// Runs a command made by [`Launcher::command`]; see [`run`].
    pub fn run(&self, cmd: &mut Command, timeout: Duration) -> Result<Measured, String> {
        let Some(r) = self.runner() else {
            return run(cmd, timeout);
        };
        let _ = std::fs::remove_file(&r.result);
        let mut m = run(cmd, timeout)?;
        if m.exit == Exit::TimedOut {
            return Ok(m);
        }
        match r.read() {
            Ok((exit, rss, secs)) => {
                m.exit = exit;
                m.maxrss_kib = rss;
                m.seconds = secs;
                Ok(m)
            }
            Err(e) => Err(format!(
                "{e}; runner {}: {}",
                m.exit.describe(),
                String::from_utf8_lossy(&m.stderr).trim()
            )),
        }
    }

    /// Starts a server made by [`Launcher::command`].
    pub fn spawn_server(&self, cmd: &mut Command) -> Result<Server, String> {
        if let Some(r) = self.runner() {
            let _ = std::fs::remove_file(&r.result);
        }
        let mut s = Server::spawn(cmd)?;
        s.runner = self.runner().cloned();
        Ok(s)
    }
}

/// What a measured run produced.
pub struct Measured {
    pub seconds: f64,
    pub maxrss_kib: u64,
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` (in a process group of its own, stdout and stderr captured;
/// the caller sets stdin) and waits for it, killing the whole group after
/// `timeout`. The time runs from just before the spawn to the child's exit.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Measured, String> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cmd.get_program().to_string_lossy()))?;
    let pid = child.id() as libc::pid_t;
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let watchdog = Watchdog::start(pid, timeout);
    let waited = wait_exited(pid);
    let seconds = start.elapsed().as_secs_f64();
    let fired = watchdog.finish();
    // The child is a zombie now (not reaped), so its process group id cannot
    // have been reused: clear out anything it left running that would keep
    // our pipes open.
    // SAFETY: plain syscall.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let reaped = reap(pid);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    drop(child);
    waited.map_err(|e| format!("waitid: {e}"))?;
    let (status, maxrss_kib) = reaped.map_err(|e| format!("wait4: {e}"))?;
    Ok(Measured {
        seconds,
        maxrss_kib,
        exit: if fired {
            Exit::TimedOut
        } else {
            decode(status)
        },
        stdout,
        stderr,
    })
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn decode(status: libc::c_int) -> Exit {
    if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(-1)
    }
}

/// Whether `pid` has exited, without reaping it: `waitid` with `WNOWAIT`
/// and the extra `flags` (`WNOHANG` to ask, 0 to block until it has).
fn peek_exited(pid: libc::pid_t, flags: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer, our own child.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | flags,
            )
        };
        if r == 0 {
            // SAFETY: si_pid is valid for SIGCHLD-style info (zero if none).
            return Ok(unsafe { info.si_pid() } != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Blocks until `pid` has exited, without reaping it.
fn wait_exited(pid: libc::pid_t) -> io::Result<()> {
    peek_exited(pid, 0).map(|_| ())
}

/// `true` if `pid` has exited (not reaped yet); an error counts as exited.
fn has_exited(pid: libc::pid_t) -> bool {
    peek_exited(pid, libc::WNOHANG).unwrap_or(true)
}

/// Reaps `pid`; returns its wait status and peak RSS in KiB.
fn reap(pid: libc::pid_t) -> io::Result<(libc::c_int, u64)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain data.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers, our own child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru.ru_maxrss.max(0) as u64));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Kills the process group `pid` if `finish` is not called in time.
struct Watchdog {
    state: Arc<(Mutex<(bool, bool)>, Condvar)>,
    handle: JoinHandle<()>,
}

impl Watchdog {
    fn start(pid: libc::pid_t, timeout: Duration) -> Watchdog {
        let state = Arc::new((Mutex::new((false, false)), Condvar::new()));
        let s = Arc::clone(&state);
        let handle = thread::spawn(move || {
            let (m, c) = &*s;
            let deadline = Instant::now() + timeout;
            let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
            while !g.0 {
                let now = Instant::now();
                if now >= deadline {
                    // SAFETY: the child is not reaped before `finish`, which
                    // needs this lock, so the group id is still ours.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    g.1 = true;
                    break;
                }
                g = c
                    .wait_timeout(g, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        });
        Watchdog { state, handle }
    }

    /// Stops the watchdog; returns whether it killed the child.
    fn finish(self) -> bool {
        let fired = {
            let (m, c) = &*self.state;
            let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
            g.0 = true;
            c.notify_all();
            g.1
        };
        let _ = self.handle.join();
        fired
    }
}

/// A long-running child (a server) in a process group of its own. Dropping
/// it kills the group and reaps it.
pub struct Server {
    child: Option<Child>,
    pid: libc::pid_t,
    runner: Option<Runner>,
}

impl Server {
    pub fn spawn(cmd: &mut Command) -> Result<Server, String> {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd.get_program().to_string_lossy()))?;
        let pid = child.id() as libc::pid_t;
        Ok(Server {
            child: Some(child),
            pid,
            runner: None,
        })
    }

    pub fn exited(&self) -> bool {
        self.child.is_some() && has_exited(self.pid)
    }

    /// Waits up to `grace` for the server to exit by itself (after it was
    /// asked to), kills it after that, and reaps it: returns how it ended
    /// and its peak RSS in KiB.
    pub fn finish(mut self, grace: Duration) -> Result<(Exit, u64), String> {
        let deadline = Instant::now() + grace;
        let mut killed = false;
        while !has_exited(self.pid) {
            if Instant::now() >= deadline {
                // SAFETY: not reaped yet, so the group id is ours.
                unsafe { libc::kill(-self.pid, libc::SIGKILL) };
                killed = true;
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: as above; clears any helper processes.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let r = reap(self.pid).map_err(|e| format!("wait4: {e}"));
        self.child = None;
        let (status, rss) = r?;
        if killed {
            return Ok((Exit::TimedOut, rss));
        }
        match &self.runner {
            None => Ok((decode(status), rss)),
            // The runner reports the server's own figures.
            Some(r) => r.read().map(|(exit, rss, _)| (exit, rss)),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.take().is_some() {
            // SAFETY: not reaped yet, so the group id is ours.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            let _ = reap(self.pid);
        }
    }
}
