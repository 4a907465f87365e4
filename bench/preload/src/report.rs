//! Medians, heapkeep/peer ratios with geomeans, the bar check, and the
//! markdown and JSON reports.

use std::fmt::Write as _;

use serde::Serialize;

use crate::workloads::Group;

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub workload: String,
    pub group: Group,
    pub allocator: String,
    /// 1-based round.
    pub round: usize,
    /// Wall time (none if the run failed).
    pub seconds: Option<f64>,
    /// Peak RSS in KiB (`ru_maxrss`; none if the run failed).
    pub maxrss_kib: Option<u64>,
    /// Resident set after the frees (memreturn only).
    pub rss_after_kib: Option<u64>,
    /// Output identical to the glibc reference (redis: served every
    /// request); none when it could not be checked.
    pub output_ok: Option<bool>,
    pub error: Option<String>,
}

/// Medians of one workload under one allocator.
#[derive(Clone, Debug, Serialize)]
pub struct Median {
    pub workload: String,
    pub group: Group,
    pub allocator: String,
    pub seconds: Option<f64>,
    pub maxrss_kib: Option<f64>,
    pub rss_after_kib: Option<f64>,
    pub runs: usize,
    pub runs_ok: usize,
    /// false if any run's output differed, true if all were checked and
    /// identical.
    pub output_ok: Option<bool>,
}

/// heapkeep / peer for one group and metric.
#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    pub group: Group,
    pub metric: &'static str,
    pub peer: String,
    pub per_workload: Vec<(String, Option<f64>)>,
    pub geomean: Option<f64>,
    /// Workloads in the geomean.
    pub n: usize,
}

/// The bar the harness checks.
#[derive(Clone, Debug, Serialize)]
pub struct Bar {
    pub c_time_vs_mimalloc: Option<f64>,
    pub c_limit: f64,
    pub c_pass: Option<bool>,
    pub real_time_vs_mimalloc: Option<f64>,
    pub real_limit: f64,
    pub real_pass: Option<bool>,
    pub real_outputs_identical: Option<bool>,
    pub real_output_problems: Vec<String>,
    pub c_outputs_identical: Option<bool>,
    pub c_output_problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AllocInfo {
    pub name: String,
    pub lib: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadInfo {
    pub name: String,
    pub group: Group,
    pub about: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub rounds: usize,
    pub quick: bool,
    pub redis_requests: u64,
    pub cpus: usize,
    pub unix_time: u64,
}

/// Everything written to `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub config: Config,
    pub allocators: Vec<AllocInfo>,
    pub workloads: Vec<WorkloadInfo>,
    pub notes: Vec<String>,
    pub samples: Vec<Sample>,
    pub medians: Vec<Median>,
    pub ratios: Vec<Ratios>,
    pub bar: Bar,
}

pub const C_LIMIT: f64 = 1.10;
pub const REAL_LIMIT: f64 = 1.05;

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn geomean(v: &[f64]) -> Option<f64> {
    if v.is_empty() || v.iter().any(|&x| x <= 0.0 || !x.is_finite()) {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// Builds medians, ratios and the bar from the samples.
pub fn analyse(
    config: Config,
    allocators: Vec<AllocInfo>,
    workloads: Vec<WorkloadInfo>,
    notes: Vec<String>,
    samples: Vec<Sample>,
) -> Results {
    let mut medians = Vec::new();
    for w in &workloads {
        for a in &allocators {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.workload == w.name && s.allocator == a.name)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let ok: Vec<&&Sample> = mine.iter().filter(|s| s.error.is_none()).collect();
            let output_ok = if mine.iter().any(|s| s.output_ok == Some(false)) {
                Some(false)
            } else if mine.iter().all(|s| s.output_ok == Some(true)) {
                Some(true)
            } else {
                None
            };
            medians.push(Median {
                workload: w.name.clone(),
                group: w.group,
                allocator: a.name.clone(),
                seconds: median(ok.iter().filter_map(|s| s.seconds).collect()),
                maxrss_kib: median(
                    ok.iter()
                        .filter_map(|s| s.maxrss_kib.map(|k| k as f64))
                        .collect(),
                ),
                rss_after_kib: median(
                    ok.iter()
                        .filter_map(|s| s.rss_after_kib.map(|k| k as f64))
                        .collect(),
                ),
                runs: mine.len(),
                runs_ok: ok.len(),
                output_ok,
            });
        }
    }
    let find = |w: &str, a: &str| medians.iter().find(|m| m.workload == w && m.allocator == a);
    let mut ratios = Vec::new();
    let has_hk = allocators.iter().any(|a| a.name == "heapkeep");
    for group in [Group::C, Group::Real] {
        for metric in ["time", "peak_rss"] {
            for peer in allocators.iter().filter(|a| a.name != "heapkeep") {
                if !has_hk {
                    continue;
                }
                let per: Vec<(String, Option<f64>)> = workloads
                    .iter()
                    .filter(|w| w.group == group)
                    .map(|w| {
                        let get = |a: &str| {
                            find(&w.name, a).and_then(|m| {
                                if metric == "time" {
                                    m.seconds
                                } else {
                                    m.maxrss_kib
                                }
                            })
                        };
                        let r = match (get("heapkeep"), get(&peer.name)) {
                            (Some(h), Some(p)) if p > 0.0 => Some(h / p),
                            _ => None,
                        };
                        (w.name.clone(), r)
                    })
                    .collect();
                if per.is_empty() {
                    continue;
                }
                let vals: Vec<f64> = per.iter().filter_map(|(_, r)| *r).collect();
                ratios.push(Ratios {
                    group,
                    metric,
                    peer: peer.name.clone(),
                    geomean: geomean(&vals),
                    n: vals.len(),
                    per_workload: per,
                });
            }
        }
    }
    let gm = |group: Group| {
        ratios
            .iter()
            .find(|r| r.group == group && r.metric == "time" && r.peer == "mimalloc")
            .and_then(|r| r.geomean)
    };
    let outputs = |group: Group| -> (Option<bool>, Vec<String>) {
        let mut problems = Vec::new();
        let mut all_checked = true;
        let mut any = false;
        for w in workloads.iter().filter(|w| w.group == group) {
            match find(&w.name, "heapkeep") {
                Some(m) => {
                    any = true;
                    match m.output_ok {
                        Some(true) => {}
                        Some(false) => problems.push(format!("{}: output differs", w.name)),
                        None => {
                            all_checked = false;
                            problems.push(format!(
                                "{}: not checked (failed runs or no reference)",
                                w.name
                            ));
                        }
                    }
                    if m.runs_ok < m.runs {
                        problems.push(format!(
                            "{}: {} of {} runs failed",
                            w.name,
                            m.runs - m.runs_ok,
                            m.runs
                        ));
                    }
                }
                None => {
                    all_checked = false;
                    problems.push(format!("{}: not run under heapkeep", w.name));
                }
            }
        }
        let verdict = if !any {
            None
        } else if problems
            .iter()
            .any(|p| p.contains("differs") || p.contains("failed"))
        {
            Some(false)
        } else if all_checked {
            Some(true)
        } else {
            None
        };
        (verdict, problems)
    };
    let (c_out, c_problems) = outputs(Group::C);
    let (real_out, real_problems) = outputs(Group::Real);
    let c = gm(Group::C);
    let real = gm(Group::Real);
    let bar = Bar {
        c_time_vs_mimalloc: c,
        c_limit: C_LIMIT,
        c_pass: c.map(|g| g <= C_LIMIT),
        real_time_vs_mimalloc: real,
        real_limit: REAL_LIMIT,
        real_pass: real.map(|g| g <= REAL_LIMIT),
        real_outputs_identical: real_out,
        real_output_problems: real_problems,
        c_outputs_identical: c_out,
        c_output_problems: c_problems,
    };
    Results {
        config,
        allocators,
        workloads,
        notes,
        samples,
        medians,
        ratios,
        bar,
    }
}

fn verdict(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "n/a",
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.digits$}"))
}

/// The bar check, a few lines.
pub fn bar_text(r: &Results) -> String {
    let b = &r.bar;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- C workloads: geomean time heapkeep/mimalloc = {} (bar ≤ {:.2}): {}",
        fmt_opt(b.c_time_vs_mimalloc, 3),
        b.c_limit,
        verdict(b.c_pass)
    );
    let _ = writeln!(
        s,
        "- real programs: geomean time heapkeep/mimalloc = {} (bar ≤ {:.2}): {}",
        fmt_opt(b.real_time_vs_mimalloc, 3),
        b.real_limit,
        verdict(b.real_pass)
    );
    let _ = writeln!(
        s,
        "- real programs' output identical under heapkeep (redis: every request served): {}{}",
        verdict(b.real_outputs_identical),
        if b.real_output_problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", b.real_output_problems.join("; "))
        }
    );
    let _ = writeln!(
        s,
        "- C workloads' output identical under heapkeep: {}{}",
        verdict(b.c_outputs_identical),
        if b.c_output_problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", b.c_output_problems.join("; "))
        }
    );
    s
}

/// The markdown summary.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# heapkeep preload benchmark\n");
    let _ = writeln!(
        s,
        "{} round{} (allocator order rotated every round), medians; {} CPUs. Ratios are heapkeep / peer \
         (below 1: heapkeep is faster or smaller); geomeans over the workloads where both ran.\n",
        r.config.rounds,
        if r.config.rounds == 1 { "" } else { "s" },
        r.config.cpus
    );
    let _ = writeln!(s, "Allocators:\n");
    for a in &r.allocators {
        let _ = writeln!(
            s,
            "- {}: {}",
            a.name,
            a.lib
                .as_deref()
                .map_or("no preload".to_string(), |l| format!("`LD_PRELOAD={l}`"))
        );
    }
    s.push('\n');
    for group in [Group::C, Group::Real] {
        let ws: Vec<&WorkloadInfo> = r.workloads.iter().filter(|w| w.group == group).collect();
        if ws.is_empty() {
            continue;
        }
        for (metric, title) in [("time", "time (s)"), ("peak_rss", "peak RSS (MiB)")] {
            let _ = writeln!(s, "## {}: {}\n", group.title(), title);
            s.push_str(&table(r, &ws, group, metric));
            s.push('\n');
        }
        if group == Group::C {
            let after: Vec<String> = r
                .medians
                .iter()
                .filter(|m| m.workload == "memreturn")
                .filter_map(|m| {
                    m.rss_after_kib
                        .map(|k| format!("{} {:.1}", m.allocator, k / 1024.0))
                })
                .collect();
            if !after.is_empty() {
                let _ = writeln!(
                    s,
                    "memreturn, resident set after the frees (MiB): {}.\n",
                    after.join(", ")
                );
            }
        }
        if group == Group::Real && ws.iter().any(|w| w.name == "redis") {
            let _ = writeln!(
                s,
                "redis: the time is redis-benchmark's (not preloaded) against a redis-server run under the \
                 allocator; the RSS is the server's. Debian's redis-server is linked with libjemalloc, so \
                 its no-preload column (\"glibc\") is in fact jemalloc.\n"
            );
        }
    }
    let _ = writeln!(
        s,
        "Cells: `(!)` output differed from the glibc run, `(k/n ok)` some runs failed, `fail` no run succeeded.\n"
    );
    let _ = writeln!(s, "## Bar check\n");
    s.push_str(&bar_text(r));
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

fn table(r: &Results, ws: &[&WorkloadInfo], group: Group, metric: &str) -> String {
    let allocs: Vec<&str> = r.allocators.iter().map(|a| a.name.as_str()).collect();
    let ratios: Vec<&Ratios> = r
        .ratios
        .iter()
        .filter(|x| x.group == group && x.metric == metric)
        .collect();
    let mut s = String::new();
    s.push_str("| workload |");
    for a in &allocs {
        let _ = write!(s, " {a} |");
    }
    for x in &ratios {
        let _ = write!(s, " hk/{} |", x.peer);
    }
    s.push_str("\n|---|");
    for _ in 0..allocs.len() + ratios.len() {
        s.push_str("---:|");
    }
    s.push('\n');
    for w in ws {
        let _ = write!(s, "| {} |", w.name);
        for a in &allocs {
            let cell = match r
                .medians
                .iter()
                .find(|m| m.workload == w.name && &m.allocator == a)
            {
                None => "-".to_string(),
                Some(m) => {
                    let v = if metric == "time" {
                        m.seconds.map(|x| format!("{x:.3}"))
                    } else {
                        m.maxrss_kib.map(|k| format!("{:.1}", k / 1024.0))
                    };
                    let mut c = v.unwrap_or_else(|| "fail".to_string());
                    if m.runs_ok > 0 && m.runs_ok < m.runs {
                        let _ = write!(c, " ({}/{} ok)", m.runs_ok, m.runs);
                    }
                    if m.output_ok == Some(false) {
                        c.push_str(" (!)");
                    }
                    c
                }
            };
            let _ = write!(s, " {cell} |");
        }
        for x in &ratios {
            let v = x
                .per_workload
                .iter()
                .find(|(n, _)| n == &w.name)
                .and_then(|(_, r)| *r);
            let _ = write!(s, " {} |", fmt_opt(v, 2));
        }
        s.push('\n');
    }
    if !ratios.is_empty() {
        s.push_str("| **geomean** |");
        for _ in &allocs {
            s.push_str(" |");
        }
        for x in &ratios {
            let _ = write!(s, " **{}** |", fmt_opt(x.geomean, 2));
        }
        s.push('\n');
    }
    s
}
