//! `hk-preload-bench`: times programs that use the C heap under glibc,
//! heapkeep, mimalloc, jemalloc and tcmalloc injected with `LD_PRELOAD`,
//! side by side, and reports medians and heapkeep/peer ratios.
//!
//! See `bench/preload/README.md`.

mod alloc;
mod measure;
mod report;
mod workloads;

use std::collections::HashMap;
use std::hash::Hasher;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use alloc::Allocator;
use measure::{Launcher, Runner};
use report::{AllocInfo, Config, Sample, WorkloadInfo};
use workloads::{find_program, tail, Job, Prepared};

/// Preload-mode benchmark: C workloads and real programs under several
/// malloc implementations injected with LD_PRELOAD.
#[derive(Parser, Debug)]
#[command(name = "hk-preload-bench", version)]
struct Args {
    /// Rounds (each runs every workload under every allocator) [default: 5, --quick: 2]
    #[arg(long)]
    rounds: Option<usize>,
    /// Two rounds and a smaller redis run.
    #[arg(long)]
    quick: bool,
    /// Output directory (summary.md, results.json).
    #[arg(long, default_value = "results/preload")]
    out: PathBuf,
    /// Allocators to run (comma separated): glibc, heapkeep, mimalloc, jemalloc, tcmalloc.
    #[arg(long, value_delimiter = ',')]
    allocators: Vec<String>,
    /// Workloads to run (comma separated names, or the groups `c` and `real`).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Library for an allocator, overriding the search (repeatable).
    #[arg(long, value_name = "NAME=PATH")]
    lib: Vec<String>,
    /// Requests per redis-benchmark test [default: 100000, --quick: 50000].
    #[arg(long)]
    redis_requests: Option<u64>,
    /// Time limit of one run, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Do not build libheapkeep_preload.so first.
    #[arg(long)]
    no_build: bool,
    /// Do not run setup.sh when an allocator or program is missing.
    #[arg(long)]
    no_setup: bool,
    /// List the workloads and the allocators found, and exit.
    #[arg(long)]
    list: bool,
}

/// Where the binary lives (`target/<profile>`), where libheapkeep_preload.so
/// is built too.
fn profile_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

fn workspace_root() -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .ok()
}

fn setup_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("setup.sh")
}

/// What setup.sh would install, if anything is missing.
fn missing_things(
    alloc_wanted: &dyn Fn(&str) -> bool,
    wl_wanted: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut missing = Vec::new();
    for name in ["mimalloc", "jemalloc", "tcmalloc"] {
        if alloc_wanted(name) && alloc::find_peer(name).is_none() {
            missing.push(format!("lib{name}"));
        }
    }
    let progs: &[(&str, &[&str])] = &[
        ("perl", &["perl"]),
        ("sqlite", &["sqlite3"]),
        ("gcc", &["gcc"]),
        ("redis", &["redis-server", "redis-benchmark"]),
    ];
    for (w, ps) in progs {
        if wl_wanted(w) {
            missing.extend(
                ps.iter()
                    .filter(|p| find_program(p).is_none())
                    .map(|p| p.to_string()),
            );
        }
    }
    if wl_wanted("python") && !Path::new("/usr/bin/python3").exists() {
        missing.push("/usr/bin/python3".into());
    }
    if C_NAMES.iter().any(|n| wl_wanted(n)) && find_program("cc").is_none() {
        missing.push("cc".into());
    }
    missing
}

const C_NAMES: [&str; 8] = [
    "small",
    "larson",
    "prodcons",
    "random",
    "realloc",
    "large",
    "churn",
    "memreturn",
];

fn run_setup(missing: &[String], notes: &mut Vec<String>) {
    let script = setup_script();
    if !script.is_file() {
        notes.push(format!(
            "missing {}; setup script {} not found",
            missing.join(", "),
            script.display()
        ));
        return;
    }
    eprintln!(
        "missing {}: running {}",
        missing.join(", "),
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => notes.push(format!(
            "setup.sh ended with {s}; going on with what is installed"
        )),
        Err(e) => notes.push(format!("cannot run setup.sh: {e}")),
    }
}

/// `cargo build` of heapkeep-preload in the profile this binary was built in.
fn build_heapkeep(profile: &Path, notes: &mut Vec<String>) {
    let Some(root) = workspace_root() else {
        notes.push("workspace not found: libheapkeep_preload.so not rebuilt".into());
        return;
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .env_remove("LD_PRELOAD")
        .args(["build", "-p", "heapkeep-preload"]);
    match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") | None => {
            cmd.arg("--release");
        }
        Some(p) => {
            cmd.args(["--profile", p]);
        }
    }
    eprintln!("building libheapkeep_preload.so ...");
    match cmd.stdin(Stdio::null()).status() {
        Ok(s) if s.success() => {}
        Ok(s) => notes.push(format!(
            "cargo build -p heapkeep-preload failed ({s}); using the library as it is"
        )),
        Err(e) => notes.push(format!("cannot run cargo: {e}; using the library as it is")),
    }
}

/// The allocators to run, in report order; problems go to `notes`.
fn allocators(args: &Args, profile: &Path, notes: &mut Vec<String>) -> Vec<Allocator> {
    let overrides: HashMap<&str, PathBuf> = args
        .lib
        .iter()
        .filter_map(|s| s.split_once('=').map(|(n, p)| (n, PathBuf::from(p))))
        .collect();
    let mut out = Vec::new();
    for &name in alloc::NAMES {
        if !args.allocators.is_empty() && !args.allocators.iter().any(|a| a == name) {
            continue;
        }
        if name == "glibc" {
            out.push(Allocator::glibc());
            continue;
        }
        let lib = overrides.get(name).cloned().or_else(|| {
            if name == "heapkeep" {
                Some(profile.join("libheapkeep_preload.so"))
            } else {
                alloc::find_peer(name)
            }
        });
        let Some(lib) = lib else {
            notes.push(format!(
                "{name}: skipped, library not found (run bench/preload/setup.sh)"
            ));
            continue;
        };
        match alloc::probe(&lib) {
            Ok(()) => out.push(Allocator {
                name: name.to_string(),
                lib: Some(lib),
            }),
            Err(e) => notes.push(format!("{name}: skipped, {}: {e}", lib.display())),
        }
    }
    out
}

/// What one run gave.
struct Outcome {
    seconds: Option<f64>,
    maxrss_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    output: Output,
    error: Option<String>,
}

/// What is compared across allocators.
#[derive(Clone, PartialEq, Eq)]
enum Output {
    /// Hash, length and first line of stdout.
    Digest(u64, usize, String),
    /// redis: every request served.
    Served(bool, String),
    None,
}

fn digest(bytes: &[u8]) -> Output {
    // FNV-1a: stable across builds and runs.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(bytes);
    let first = String::from_utf8_lossy(bytes.split(|&b| b == b'\n').next().unwrap_or(&[]));
    Output::Digest(h.finish(), bytes.len(), first.chars().take(80).collect())
}

fn failed(error: String) -> Outcome {
    Outcome {
        seconds: None,
        maxrss_kib: None,
        rss_after_kib: None,
        output: Output::None,
        error: Some(error),
    }
}

fn run_job(
    job: &Job,
    a: &Allocator,
    launcher: &Launcher,
    work: &Path,
    timeout: Duration,
) -> Outcome {
    match job {
        Job::Exec { argv, stdin, env } => {
            let mut cmd = launcher.command(&argv[0], &argv[1..], a.lib.as_deref());
            cmd.current_dir(work).env("LC_ALL", "C");
            for (k, v) in env {
                cmd.env(k, v);
            }
            match stdin {
                Some(p) => match std::fs::File::open(p) {
                    Ok(f) => {
                        cmd.stdin(f);
                    }
                    Err(e) => return failed(format!("cannot open {}: {e}", p.display())),
                },
                None => {
                    cmd.stdin(Stdio::null());
                }
            }
            let m = match launcher.run(&mut cmd, timeout) {
                Ok(m) => m,
                Err(e) => return failed(e),
            };
            let err = String::from_utf8_lossy(&m.stderr);
            if !m.exit.success() {
                let why = tail(&err, 300);
                return failed(if why.is_empty() {
                    m.exit.describe()
                } else {
                    format!("{}: {why}", m.exit.describe())
                });
            }
            let rss_after_kib = err.lines().find_map(|l| {
                l.strip_prefix("rss_after_kib ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            Outcome {
                seconds: Some(m.seconds),
                maxrss_kib: Some(m.maxrss_kib),
                rss_after_kib,
                output: digest(&m.stdout),
                error: None,
            }
        }
        Job::Redis {
            server,
            bench,
            requests,
            dir,
        } => match run_redis(server, bench, *requests, dir, a, launcher, timeout) {
            Ok(o) => o,
            Err(e) => failed(e),
        },
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Sends one inline command to the redis server on 127.0.0.1:`port` and
/// returns the reply (a bulk string's contents, or the status line).
fn redis_cmd(port: u16, cmd: &str) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{cmd}\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end().to_string();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.parse().map_err(|_| format!("bad reply {line:?}"))?;
        if n < 0 {
            return Ok(String::new());
        }
        let mut buf = vec![0u8; n as usize + 2];
        r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        buf.truncate(n as usize);
        return Ok(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(line)
}

fn run_redis(
    server: &Path,
    bench: &Path,
    requests: u64,
    dir: &Path,
    a: &Allocator,
    launcher: &Launcher,
    timeout: Duration,
) -> Result<Outcome, String> {
    let port = free_port()?;
    let server_launcher = match launcher {
        Launcher::Direct => Launcher::Direct,
        Launcher::Runner(r) => Launcher::Runner(r.with_result(dir.join("server-result.txt"))),
    };
    let log_path = dir.join(format!("server-{}.log", a.name));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let args: Vec<std::ffi::OsString> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--logfile",
        "",
        "--loglevel",
        "warning",
        "--dir",
    ]
    .iter()
    .map(Into::into)
    .chain(std::iter::once(dir.as_os_str().to_owned()))
    .collect();
    let mut cmd = server_launcher.command(server.as_os_str(), &args, a.lib.as_deref());
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let srv = server_launcher.spawn_server(&mut cmd)?;
    let start = Instant::now();
    loop {
        if srv.exited() {
            return Err(format!(
                "redis-server exited at start (see {})",
                log_path.display()
            ));
        }
        if redis_cmd(port, "PING").is_ok_and(|r| r == "+PONG") {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("redis-server did not answer PING within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let bargs: Vec<std::ffi::OsString> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-n",
        &requests.to_string(),
        "-q",
        "-t",
        "set,get,lpush,lpop",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let mut b = launcher.command(bench.as_os_str(), &bargs, None);
    b.current_dir(dir).stdin(Stdio::null());
    let m = launcher.run(&mut b, timeout);
    let stats = redis_cmd(port, "INFO commandstats");
    let _ = redis_cmd(port, "SHUTDOWN NOSAVE");
    let (exit, rss) = srv.finish(Duration::from_secs(10))?;
    let m = m?;
    let out = String::from_utf8_lossy(&m.stdout);
    if !m.exit.success() {
        return Err(format!(
            "redis-benchmark: {}: {}",
            m.exit.describe(),
            tail(&String::from_utf8_lossy(&m.stderr), 300)
        ));
    }
    if !matches!(exit, measure::Exit::Code(0)) {
        return Err(format!(
            "redis-server: {} (see {})",
            exit.describe(),
            log_path.display()
        ));
    }
    let tests = out
        .split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .count();
    let stats = stats.map_err(|e| format!("INFO commandstats: {e}"))?;
    let mut problems = Vec::new();
    if tests != 4 {
        problems.push(format!("{tests} of 4 tests reported"));
    }
    for c in ["set", "get", "lpush", "lpop"] {
        let calls = stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{c}:calls=")))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if calls != requests {
            problems.push(format!("{c}: {calls} of {requests} served"));
        }
    }
    let ok = problems.is_empty();
    Ok(Outcome {
        seconds: Some(m.seconds),
        maxrss_kib: Some(rss),
        rss_after_kib: None,
        output: Output::Served(ok, problems.join(", ")),
        error: None,
    })
}

fn show(o: &Outcome) -> String {
    match (&o.error, o.seconds, o.maxrss_kib) {
        (Some(e), _, _) => format!("FAILED: {e}"),
        (None, Some(t), Some(r)) => format!("{t:8.3} s {:9.1} MiB", r as f64 / 1024.0),
        _ => "?".into(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    for a in &args.allocators {
        if !alloc::NAMES.contains(&a.as_str()) {
            eprintln!(
                "unknown allocator {a:?} (known: {})",
                alloc::NAMES.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let all = workloads::all_names();
    for w in &args.workloads {
        if w != "c" && w != "real" && !all.iter().any(|(n, _, _)| n == w) {
            let names: Vec<&str> = all.iter().map(|(n, _, _)| *n).collect();
            eprintln!(
                "unknown workload {w:?} (known: c, real, {})",
                names.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let wl_wanted = |name: &str| -> bool {
        if args.workloads.is_empty() {
            return true;
        }
        let group = all.iter().find(|(n, _, _)| *n == name).map(|(_, g, _)| *g);
        args.workloads.iter().any(|w| {
            w == name
                || (w == "c" && group == Some(workloads::Group::C))
                || (w == "real" && group == Some(workloads::Group::Real))
        })
    };
    let alloc_wanted =
        |name: &str| args.allocators.is_empty() || args.allocators.iter().any(|a| a == name);
    let profile = profile_dir();
    let mut notes = Vec::new();

    if args.list {
        println!("workloads:");
        for (n, g, about) in &all {
            println!("  {n:<10} {:<14} {about}", g.title());
        }
        println!("allocators:");
        for a in allocators(&args, &profile, &mut notes) {
            println!(
                "  {:<10} {}",
                a.name,
                a.lib
                    .as_deref()
                    .map_or("(no preload)".into(), |l| l.display().to_string())
            );
        }
        for n in &notes {
            println!("  note: {n}");
        }
        return ExitCode::SUCCESS;
    }

    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 5 }).max(1);
    let redis_requests = args
        .redis_requests
        .unwrap_or(if args.quick { 50_000 } else { 100_000 })
        .max(1);
    let timeout = Duration::from_secs(args.timeout.max(1));
    let started = Instant::now();

    if !args.no_setup {
        let missing = missing_things(&alloc_wanted, &wl_wanted);
        if !missing.is_empty() {
            run_setup(&missing, &mut notes);
        }
    }
    if !args.no_build && alloc_wanted("heapkeep") {
        build_heapkeep(&profile, &mut notes);
    }
    let allocs = allocators(&args, &profile, &mut notes);
    if allocs.is_empty() {
        eprintln!("no allocator to run");
        return ExitCode::FAILURE;
    }
    let work = profile
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("preload-bench");
    let launcher = match workloads::build_runner(&work) {
        Ok(exe) => Launcher::Runner(Runner::new(exe, work.join("runner-result.txt"))),
        Err(e) => {
            notes.push(format!(
                "runner not built ({e}): programs start straight from the harness, so every peak RSS \
                 has the harness's own peak as a floor"
            ));
            Launcher::Direct
        }
    };
    let (mut jobs, n1) = workloads::build_c(&work, &wl_wanted);
    let (real, n2) = workloads::prepare_real(&work.join("inputs"), &wl_wanted, redis_requests);
    jobs.extend(real);
    notes.extend(n1);
    notes.extend(n2);
    for n in &notes {
        eprintln!("note: {n}");
    }
    if jobs.is_empty() {
        eprintln!("no workload to run");
        return ExitCode::FAILURE;
    }
    let names: Vec<&str> = allocs.iter().map(|a| a.name.as_str()).collect();
    eprintln!(
        "{} workloads x {} allocators ({}) x {rounds} rounds",
        jobs.len(),
        allocs.len(),
        names.join(", ")
    );

    // Reference run under glibc (also a warm-up: page cache, compiled code).
    let glibc = Allocator::glibc();
    let mut reference: HashMap<&str, Output> = HashMap::new();
    for j in &jobs {
        let o = run_job(&j.job, &glibc, &launcher, &work, timeout);
        eprintln!("[ref]  {:<10} {:<9} {}", j.name, "glibc", show(&o));
        match (&o.error, o.output) {
            (None, out @ Output::Digest(..)) => {
                reference.insert(j.name, out);
            }
            (Some(e), _) => notes.push(format!("{}: the glibc reference run failed: {e}", j.name)),
            _ => {}
        }
    }

    let mut samples = Vec::new();
    for round in 0..rounds {
        let mut order = allocs.clone();
        order.rotate_left(round % allocs.len());
        for j in &jobs {
            for a in &order {
                let o = run_job(&j.job, a, &launcher, &work, timeout);
                eprintln!(
                    "[{}/{}]  {:<10} {:<9} {}",
                    round + 1,
                    rounds,
                    j.name,
                    a.name,
                    show(&o)
                );
                let output_ok = match (&o.output, reference.get(j.name)) {
                    (Output::Served(ok, why), _) => {
                        if !ok {
                            notes.push(format!(
                                "{} under {} (round {}): {why}",
                                j.name,
                                a.name,
                                round + 1
                            ));
                        }
                        Some(*ok)
                    }
                    (out @ Output::Digest(_, len, first), Some(r)) => {
                        let same = out == r;
                        if !same {
                            notes.push(format!(
                                "{} under {} (round {}): output differs from glibc ({len} bytes, first line {first:?})",
                                j.name,
                                a.name,
                                round + 1
                            ));
                        }
                        Some(same)
                    }
                    _ => None,
                };
                if let Some(e) = &o.error {
                    notes.push(format!(
                        "{} under {} (round {}): {e}",
                        j.name,
                        a.name,
                        round + 1
                    ));
                }
                samples.push(Sample {
                    workload: j.name.to_string(),
                    group: j.group,
                    allocator: a.name.clone(),
                    round: round + 1,
                    seconds: o.seconds,
                    maxrss_kib: o.maxrss_kib,
                    rss_after_kib: o.rss_after_kib,
                    output_ok,
                    error: o.error,
                });
            }
        }
    }

    let results = report::analyse(
        Config {
            rounds,
            quick: args.quick,
            redis_requests,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
        allocs
            .iter()
            .map(|a| AllocInfo {
                name: a.name.clone(),
                lib: a.lib.as_ref().map(|l| {
                    let real = std::fs::canonicalize(l).unwrap_or_else(|_| l.clone());
                    real.display().to_string()
                }),
            })
            .collect(),
        jobs.iter()
            .map(|j: &Prepared| WorkloadInfo {
                name: j.name.to_string(),
                group: j.group,
                about: j.about.to_string(),
            })
            .collect(),
        notes,
        samples,
    );
    let md = report::markdown(&results);
    println!("{md}");
    let mut status = ExitCode::SUCCESS;
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join("summary.md"), &md)?;
        let json = serde_json::to_string_pretty(&results).map_err(std::io::Error::other)?;
        std::fs::write(args.out.join("results.json"), json + "\n")
    };
    match write() {
        Ok(()) => eprintln!(
            "wrote {}/summary.md and results.json ({:.0} s)",
            args.out.display(),
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("cannot write {}: {e}", args.out.display());
            status = ExitCode::FAILURE;
        }
    }
    status
}
