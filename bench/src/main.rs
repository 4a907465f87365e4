//! `heapkeep-bench`: the benchmark driver.
//!
//! Runs every selected workload under every selected allocator, each
//! measurement in its own worker process (`hk-worker-<allocator>`, found
//! beside this executable), for several rounds, alternating allocators and
//! rotating their order every round. Then prints medians, heapkeep/peer
//! ratios, geomeans and the bar check, and writes `results.json`,
//! `results.csv`, `summary.md`, `chart.svg` and `rss.svg` to the output
//! directory. A failing worker is recorded and the run goes on.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use heapkeep_bench::report::{Meta, Metric, Report, Sample};
use heapkeep_bench::workloads::WORKLOADS;
use heapkeep_bench::{chart, driver, Scale, ALLOCATORS, DEFAULT_ALLOCATORS};

/// Benchmark heapkeep against the system allocator, mimalloc, jemalloc and
/// snmalloc.
#[derive(Parser, Debug)]
#[command(name = "heapkeep-bench", version, about)]
struct Cli {
    /// Quick mode: small scale and 3 rounds (a few minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Number of rounds (default: 3 quick, 5 full).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rounds: Option<u32>,
    /// Comma-separated workloads to run (default: all).
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    workloads: Vec<String>,
    /// Comma-separated allocators to compare (default: all).
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    allocators: Vec<String>,
    /// Output directory for results.json, results.csv, summary.md and charts.
    #[arg(long, value_name = "DIR", default_value = "results")]
    out: PathBuf,
    /// Kill a worker after this many seconds (default: 120 quick, 900 full).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Do not rebuild the worker binaries when started by `cargo run`.
    #[arg(long)]
    no_build: bool,
    /// List workloads and allocators and exit.
    #[arg(long)]
    list: bool,
    /// Do not run anything: rebuild the tables, files and charts from a
    /// previous run's results.json. Several files (`--from A B`) are
    /// pooled: their rounds count as one run's.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    from: Vec<PathBuf>,
}

/// Resolves a comma list against the known names (empty = all).
fn select(
    kind: &str,
    wanted: &[String],
    known: &[&str],
    default: &[&str],
) -> Result<Vec<String>, String> {
    if wanted.is_empty() {
        return Ok(default.iter().map(|s| s.to_string()).collect());
    }
    let mut out: Vec<String> = Vec::new();
    for w in wanted.iter().map(|w| w.trim()).filter(|w| !w.is_empty()) {
        if !known.contains(&w) {
            return Err(format!("unknown {kind} {w:?}; known: {}", known.join(", ")));
        }
        if !out.iter().any(|o| o == w) {
            out.push(w.to_string());
        }
    }
    // Keep the canonical order.
    out.sort_by_key(|o| known.iter().position(|k| k == o));
    Ok(out)
}

fn machine() -> (String, usize, String) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    (cpu, cpus, kernel)
}

fn git_describe() -> Option<String> {
    let dir = option_env!("CARGO_MANIFEST_DIR")?;
    let out = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        println!("workloads:");
        for w in WORKLOADS {
            println!("  {:<14} {}", w.name, w.about);
        }
        println!("allocators: {}", ALLOCATORS.join(", "));
        return ExitCode::SUCCESS;
    }
    let result = if cli.from.is_empty() {
        run(&cli)
    } else {
        rereport(&cli, &cli.from)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heapkeep-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let scale = if cli.quick { Scale::Quick } else { Scale::Full };
    let rounds = cli.rounds.map_or(scale.pick(3, 5), |r| r as usize);
    let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
    let workloads = select("workload", &cli.workloads, &names, &names)?;
    let allocators = select("allocator", &cli.allocators, ALLOCATORS, DEFAULT_ALLOCATORS)?;
    let timeout = Duration::from_secs(cli.timeout.unwrap_or(scale.pick(120, 900)));

    let nostats = allocators.iter().any(|a| a == "heapkeep-nostats");
    if !cli.no_build && driver::rebuild_workers_if_under_cargo(nostats)? {
        eprintln!("workers rebuilt");
    }
    let dir = driver::exe_dir()?;
    let workers: Vec<PathBuf> = allocators
        .iter()
        .map(|a| driver::worker_path(&dir, a))
        .collect();
    for w in workers.iter().filter(|w| !w.exists()) {
        eprintln!(
            "warning: {} not found (build with `cargo build --release -p heapkeep-bench`); \
             its runs will be recorded as failures",
            w.display()
        );
    }

    eprintln!(
        "{} scale, {rounds} rounds, {} workloads x {} allocators, one process each",
        scale.as_str(),
        workloads.len(),
        allocators.len()
    );
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let start = Instant::now();
    let total = (rounds * workloads.len() * allocators.len()) as u64;
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:32.cyan/blue}] {pos}/{len} {msg} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }

    let mut samples = Vec::new();
    for round in 1..=rounds {
        for workload in &workloads {
            for k in 0..allocators.len() {
                // Rotate the allocator order every round.
                let i = (k + round - 1) % allocators.len();
                let allocator = &allocators[i];
                bar.set_message(format!("round {round}/{rounds} {workload} {allocator}"));
                let sample = match driver::run_worker(
                    &workers[i],
                    driver::worker_env(allocator),
                    workload,
                    scale,
                    timeout,
                ) {
                    Ok(r) => Sample {
                        round,
                        workload: workload.clone(),
                        allocator: allocator.clone(),
                        ok: true,
                        seconds: Some(r.seconds),
                        peak_rss_kib: Some(r.peak_rss_kib),
                        rss_after_kib: Some(r.rss_after_kib),
                        checksum: Some(r.checksum),
                        error: None,
                    },
                    Err(e) => {
                        // (`println` on a hidden bar would drop the line.)
                        bar.suspend(|| {
                            eprintln!("FAILED round {round} {workload} / {allocator}: {e}")
                        });
                        Sample {
                            round,
                            workload: workload.clone(),
                            allocator: allocator.clone(),
                            ok: false,
                            seconds: None,
                            peak_rss_kib: None,
                            rss_after_kib: None,
                            checksum: None,
                            error: Some(e),
                        }
                    }
                };
                samples.push(sample);
                bar.inc(1);
            }
        }
        if bar.is_hidden() {
            // Not a terminal (CI log, redirected): one line per round.
            eprintln!(
                "round {round}/{rounds} done, {:.0} s elapsed",
                start.elapsed().as_secs_f64()
            );
        }
    }
    bar.finish_and_clear();

    let (cpu, cpus, kernel) = machine();
    let meta = Meta {
        scale: scale.as_str().to_string(),
        rounds,
        workloads,
        allocators,
        started_unix,
        duration_seconds: start.elapsed().as_secs_f64(),
        cpu,
        cpus,
        kernel,
        git: git_describe(),
    };
    let report = Report::new(meta, samples);
    let md = report.markdown();
    println!("{md}");

    write_outputs(cli, &report, &md)?;
    Ok(())
}

/// Re-reports previous runs from their `results.json` files, pooled
/// ([`Report::pool`]) when there are several.
fn rereport(cli: &Cli, files: &[PathBuf]) -> Result<(), String> {
    let runs = files
        .iter()
        .map(|file| {
            let text = fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
        })
        .collect::<Result<Vec<Report>, String>>()?;
    let report = Report::pool(runs)?;
    let md = report.markdown();
    println!("{md}");
    write_outputs(cli, &report, &md)
}

fn write_outputs(cli: &Cli, report: &Report, md: &str) -> Result<(), String> {
    let out = &cli.out;
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let write = |name: &str, text: &str| {
        let p = out.join(name);
        fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    let json = serde_json::to_string_pretty(report).map_err(|e| format!("json: {e}"))?;
    write("results.json", &json)?;
    write("results.csv", &report.csv())?;
    write("summary.md", md)?;
    let charts = [
        (Metric::Time, "Time per workload", "chart.svg"),
        (Metric::PeakRss, "Peak RSS per workload", "rss.svg"),
    ];
    for (metric, title, file) in charts {
        if let Err(e) = chart::draw(report, metric, title, &out.join(file)) {
            eprintln!("warning: chart not written: {e}");
        }
    }
    eprintln!(
        "wrote results.json, results.csv, summary.md, chart.svg, rss.svg to {}",
        out.display()
    );
    Ok(())
}
