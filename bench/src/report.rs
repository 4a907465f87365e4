//! Aggregation and reporting of benchmark samples.
//!
//! Turns the raw [`Sample`]s of a run into medians per workload and
//! allocator, heapkeep/peer ratios and their geometric means, checks the
//! performance "bar" heapkeep is held to, and renders everything as a
//! markdown summary (printed and written to `summary.md`), CSV and JSON.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::UNDER_TEST;

/// Bar: geomean time heapkeep/mimalloc at most this.
pub const MAX_GEOMEAN_TIME_VS_MIMALLOC: f64 = 1.10;
/// Bar: geomean peak RSS heapkeep/mimalloc at most this.
pub const MAX_GEOMEAN_RSS_VS_MIMALLOC: f64 = 1.10;
/// Bar: no workload slower than this factor times the best peer.
pub const MAX_SLOWDOWN_VS_BEST: f64 = 1.5;

/// One measurement: one worker process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// Round number, from 1.
    pub round: usize,
    /// Workload name.
    pub workload: String,
    /// Allocator name.
    pub allocator: String,
    /// Whether the worker succeeded.
    pub ok: bool,
    /// Workload wall time, seconds.
    pub seconds: Option<f64>,
    /// Peak RSS (VmHWM), KiB.
    pub peak_rss_kib: Option<u64>,
    /// RSS at the end (memreturn: after the frees), KiB.
    pub rss_after_kib: Option<u64>,
    /// Work checksum reported by the worker.
    pub checksum: Option<u64>,
    /// Failure description when `ok` is false.
    pub error: Option<String>,
}

/// Medians of one workload/allocator cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Median {
    /// Workload name.
    pub workload: String,
    /// Allocator name.
    pub allocator: String,
    /// Successful runs.
    pub ok_runs: usize,
    /// Failed runs.
    pub failed_runs: usize,
    /// Median time, seconds.
    pub seconds: Option<f64>,
    /// Median peak RSS, KiB.
    pub peak_rss_kib: Option<f64>,
    /// Median RSS at the end, KiB.
    pub rss_after_kib: Option<f64>,
}

/// Outcome of one criterion of the bar.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    /// What is checked.
    pub criterion: String,
    /// `Some(true)` pass, `Some(false)` fail, `None` could not be evaluated.
    pub pass: Option<bool>,
    /// Measured value / explanation.
    pub detail: String,
}

impl Check {
    /// `PASS`, `FAIL` or `SKIP`.
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "SKIP",
        }
    }
}

/// Facts about the run, stored with the results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    /// `quick` or `full`.
    pub scale: String,
    /// Rounds run.
    pub rounds: usize,
    /// Workloads, in order.
    pub workloads: Vec<String>,
    /// Allocators, in order.
    pub allocators: Vec<String>,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Wall time of the whole run, seconds.
    pub duration_seconds: f64,
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs available.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// `git describe` of the workspace, if available.
    pub git: Option<String>,
}

/// Everything computed from a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Run facts.
    pub meta: Meta,
    /// Raw samples.
    pub samples: Vec<Sample>,
    /// Medians per workload and allocator.
    pub medians: Vec<Median>,
    /// The bar.
    pub checks: Vec<Check>,
    /// Workloads whose checksum differed between runs (work not identical).
    pub checksum_mismatches: Vec<String>,
}

/// Which measured quantity a table shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Median seconds.
    Time,
    /// Median peak RSS.
    PeakRss,
    /// Median RSS at the end.
    RssAfter,
}

impl Metric {
    fn of(self, m: &Median) -> Option<f64> {
        match self {
            Metric::Time => m.seconds,
            Metric::PeakRss => m.peak_rss_kib,
            Metric::RssAfter => m.rss_after_kib,
        }
    }

    /// One run's value (none for a failed run).
    fn of_sample(self, s: &Sample) -> Option<f64> {
        if !s.ok {
            return None;
        }
        match self {
            Metric::Time => s.seconds,
            Metric::PeakRss => s.peak_rss_kib.map(|k| k as f64),
            Metric::RssAfter => s.rss_after_kib.map(|k| k as f64),
        }
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Geometric mean of positive values (`None` if empty).
pub fn geomean(v: &[f64]) -> Option<f64> {
    if v.is_empty() || v.iter().any(|&x| x <= 0.0 || !x.is_finite()) {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// For `n` values, the largest rank `k` (1-based) such that the `k`-th
/// smallest and the `k`-th largest bracket the population median with at
/// least 95% probability: P(Binomial(n, 1/2) < k) <= 2.5%. `None` when
/// even `k = 1` (the extremes) falls short, below 6 values.
fn median_interval_rank(n: usize) -> Option<usize> {
    // Binomial(n, 1/2) probabilities in logs (0.5^n underflows past 1074).
    let mut ln_p = n as f64 * 0.5f64.ln();
    let mut below = 0.0;
    let mut k = 0;
    for i in 0..n / 2 {
        below += ln_p.exp();
        if below > 0.025 {
            break;
        }
        k = i + 1;
        ln_p += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    (k > 0).then_some(k)
}

/// The `k`-th smallest and `k`-th largest of `v` for the rank `k` of
/// [`median_interval_rank`]: a 95% interval for the median of what `v`
/// samples. `None` below 6 values.
fn median_interval(mut v: Vec<f64>) -> Option<(f64, f64)> {
    v.sort_by(f64::total_cmp);
    let k = median_interval_rank(v.len())?;
    Some((v[k - 1], v[v.len() - k]))
}

/// A table's header: a `workload` column, then `columns`, right-aligned.
fn header(s: &mut String, columns: impl Iterator<Item = String>) {
    let mut rule = String::from("|---|");
    let _ = write!(s, "| workload |");
    for c in columns {
        let _ = write!(s, " {c} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "\n{rule}");
}

impl Report {
    /// Builds the report from raw samples.
    pub fn new(meta: Meta, samples: Vec<Sample>) -> Report {
        let mut medians = Vec::new();
        for w in &meta.workloads {
            for a in &meta.allocators {
                let cell: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| &s.workload == w && &s.allocator == a)
                    .collect();
                let ok_runs = cell.iter().filter(|s| s.ok).count();
                // Over the runs that succeeded (`of_sample` skips the others).
                let of = |m: Metric| median(cell.iter().filter_map(|s| m.of_sample(s)).collect());
                medians.push(Median {
                    workload: w.clone(),
                    allocator: a.clone(),
                    ok_runs,
                    failed_runs: cell.len() - ok_runs,
                    seconds: of(Metric::Time),
                    peak_rss_kib: of(Metric::PeakRss),
                    rss_after_kib: of(Metric::RssAfter),
                });
            }
        }
        let checksum_mismatches = meta
            .workloads
            .iter()
            .filter(|w| {
                let sums: BTreeSet<u64> = samples
                    .iter()
                    .filter(|s| &s.workload == *w && s.ok)
                    .filter_map(|s| s.checksum)
                    .collect();
                sums.len() > 1
            })
            .cloned()
            .collect();
        let mut report = Report {
            meta,
            samples,
            medians,
            checks: Vec::new(),
            checksum_mismatches,
        };
        report.checks = report.bar();
        report
    }

    /// Median cell for a workload and allocator.
    pub fn cell(&self, workload: &str, allocator: &str) -> Option<&Median> {
        self.medians
            .iter()
            .find(|m| m.workload == workload && m.allocator == allocator)
    }

    /// Median value of `metric`.
    pub fn value(&self, workload: &str, allocator: &str, metric: Metric) -> Option<f64> {
        self.cell(workload, allocator).and_then(|m| metric.of(m))
    }

    /// Whether heapkeep is part of the run.
    pub fn has_under_test(&self) -> bool {
        self.meta.allocators.iter().any(|a| a == UNDER_TEST)
    }

    /// Peers of heapkeep in this run.
    pub fn peers(&self) -> Vec<&str> {
        self.meta
            .allocators
            .iter()
            .map(String::as_str)
            .filter(|&a| a != UNDER_TEST)
            .collect()
    }

    /// The peers the tables give `hk/X` ratios for: none when heapkeep
    /// itself was not run.
    fn ratio_columns(&self) -> Vec<&str> {
        if self.has_under_test() {
            self.peers()
        } else {
            Vec::new()
        }
    }

    /// heapkeep/peer ratio of `metric` on a workload: the median over
    /// rounds of heapkeep's value divided by the peer's in the same round.
    /// The two runs of a round are seconds apart, so a drift in the
    /// machine's speed over the minutes of the run cancels out, which a
    /// ratio of the two columns' medians does not do.
    pub fn ratio(&self, workload: &str, peer: &str, metric: Metric) -> Option<f64> {
        median(self.per_round_ratios(workload, peer, metric))
    }

    /// A 95% confidence interval for [`Report::ratio`]: the order
    /// statistics of the rounds' ratios that bracket their median with at
    /// least 95% probability, whatever the noise's distribution, as long
    /// as the rounds are independent (the sign test's interval). `None`
    /// with fewer than 6 paired rounds, where even the lowest and highest
    /// ratio bracket the median with less than 95%.
    pub fn ratio_interval(&self, workload: &str, peer: &str, metric: Metric) -> Option<(f64, f64)> {
        median_interval(self.per_round_ratios(workload, peer, metric))
    }

    /// The geomean over `workloads` of heapkeep/peer, taken round by round
    /// (in rounds where every workload has both values), with its median
    /// and 95% interval over the rounds as [`Report::ratio_interval`]
    /// gives them for one workload: `(median, low, high)`. Rounds are
    /// independent, so this brackets the typical geomean of a round;
    /// the time table's geomean of the workloads' medians is close to its
    /// median, not the same figure. `None` below 6 complete rounds.
    pub fn geomean_interval(
        &self,
        workloads: &[String],
        peer: &str,
        metric: Metric,
    ) -> Option<(f64, f64, f64)> {
        let per_workload: Vec<Vec<Option<f64>>> = workloads
            .iter()
            .map(|w| self.round_ratios(w, peer, metric))
            .collect();
        let v: Vec<f64> = (0..self.meta.rounds)
            .filter_map(|r| {
                let round: Option<Vec<f64>> = per_workload.iter().map(|rs| rs[r]).collect();
                geomean(&round?)
            })
            .collect();
        let (lo, hi) = median_interval(v.clone())?;
        Some((median(v)?, lo, hi))
    }

    /// heapkeep's value divided by `peer`'s, for each round in which both
    /// ran.
    fn per_round_ratios(&self, workload: &str, peer: &str, metric: Metric) -> Vec<f64> {
        self.round_ratios(workload, peer, metric)
            .into_iter()
            .flatten()
            .collect()
    }

    /// heapkeep's value divided by `peer`'s in each round (index 0 is
    /// round 1), `None` where one of them is missing.
    fn round_ratios(&self, workload: &str, peer: &str, metric: Metric) -> Vec<Option<f64>> {
        // One pass over the samples (pooled runs have thousands): the two
        // allocators' values by round, the first sample of a round kept.
        let mut hk = vec![None; self.meta.rounds];
        let mut p = vec![None; self.meta.rounds];
        for s in self.samples.iter().filter(|s| s.workload == workload) {
            let column = if s.allocator == UNDER_TEST {
                &mut hk
            } else if s.allocator == peer {
                &mut p
            } else {
                continue;
            };
            if let Some(slot) = s.round.checked_sub(1).and_then(|i| column.get_mut(i)) {
                if slot.is_none() {
                    *slot = Some(metric.of_sample(s));
                }
            }
        }
        hk.into_iter()
            .zip(p)
            .map(|(hk, p)| {
                let (hk, p) = (hk.flatten()?, p.flatten()?);
                (p > 0.0).then(|| hk / p)
            })
            .collect()
    }

    /// Several runs' samples as one run's, for intervals over more rounds
    /// than one run takes: each run's rounds are numbered on from the
    /// previous run's. The runs must share a scale and their workloads;
    /// the allocators are all that any run has, in the harness's order.
    /// Meta gives the first run's machine, the rounds and durations
    /// summed and every run's `git` joined.
    pub fn pool(runs: Vec<Report>) -> Result<Report, String> {
        let mut runs = runs.into_iter();
        let first = runs.next().ok_or("no runs to pool")?;
        let mut meta = first.meta;
        let mut samples = first.samples;
        let mut gits: Vec<String> = meta.git.take().into_iter().collect();
        for run in runs {
            let m = run.meta;
            if m.scale != meta.scale || m.workloads != meta.workloads {
                return Err(format!(
                    "cannot pool a {} run of {:?} with a {} run of {:?}",
                    m.scale, m.workloads, meta.scale, meta.workloads
                ));
            }
            let shift = meta.rounds;
            samples.extend(run.samples.into_iter().map(|mut s| {
                s.round += shift;
                s
            }));
            meta.rounds += m.rounds;
            meta.duration_seconds += m.duration_seconds;
            meta.started_unix = meta.started_unix.min(m.started_unix);
            for a in m.allocators {
                if !meta.allocators.contains(&a) {
                    meta.allocators.push(a);
                }
            }
            gits.extend(m.git.filter(|g| !gits.contains(g)));
        }
        meta.allocators
            .sort_by_key(|a| crate::ALLOCATORS.iter().position(|k| k == a));
        meta.git = (!gits.is_empty()).then(|| gits.join(" + "));
        Ok(Report::new(meta, samples))
    }

    /// Geomean over `workloads` of heapkeep/peer ratios, with the number of
    /// workloads that had both values.
    pub fn geomean_ratio(
        &self,
        workloads: &[String],
        peer: &str,
        metric: Metric,
    ) -> (Option<f64>, usize) {
        let r: Vec<f64> = workloads
            .iter()
            .filter_map(|w| self.ratio(w, peer, metric))
            .collect();
        (geomean(&r), r.len())
    }

    fn bar(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        let skip = |criterion: &str, why: &str| Check {
            criterion: criterion.to_string(),
            pass: None,
            detail: why.to_string(),
        };
        let c1 = "heapkeep faster than system on every workload";
        let c2 = format!("geomean time heapkeep/mimalloc <= {MAX_GEOMEAN_TIME_VS_MIMALLOC:.2}");
        let c3 = format!("geomean peak RSS heapkeep/mimalloc <= {MAX_GEOMEAN_RSS_VS_MIMALLOC:.2}");
        let c4 = format!("no workload slower than {MAX_SLOWDOWN_VS_BEST}x the best peer");
        if !self.has_under_test() {
            for c in [c1.to_string(), c2, c3, c4] {
                checks.push(skip(&c, "heapkeep not in this run"));
            }
            return checks;
        }
        let ws = &self.meta.workloads;
        let has = |a: &str| self.meta.allocators.iter().any(|x| x == a);

        // 1. Faster than system everywhere.
        if has("system") {
            let mut bad = Vec::new();
            let mut unknown = Vec::new();
            for w in ws {
                match (
                    self.value(w, UNDER_TEST, Metric::Time),
                    self.value(w, "system", Metric::Time),
                ) {
                    (None, _) => bad.push(format!("{w} (heapkeep failed)")),
                    (Some(_), None) => unknown.push(w.clone()),
                    (Some(h), Some(s)) if h >= s => bad.push(format!("{w} ({:.2}x)", h / s)),
                    _ => {}
                }
            }
            let mut detail = if bad.is_empty() {
                "faster on all".to_string()
            } else {
                format!("not faster on: {}", bad.join(", "))
            };
            if !unknown.is_empty() {
                let _ = write!(detail, "; system failed on: {}", unknown.join(", "));
            }
            let compared = bad.len() + unknown.len() < ws.len() || !bad.is_empty();
            checks.push(Check {
                criterion: c1.to_string(),
                // Nothing to compare with (system failed everywhere): SKIP.
                pass: compared.then_some(bad.is_empty()),
                detail,
            });
        } else {
            checks.push(skip(c1, "system not in this run"));
        }

        // 2 and 3. Geomeans against mimalloc.
        for (criterion, metric, limit) in [
            (c2, Metric::Time, MAX_GEOMEAN_TIME_VS_MIMALLOC),
            (c3, Metric::PeakRss, MAX_GEOMEAN_RSS_VS_MIMALLOC),
        ] {
            if !has("mimalloc") {
                checks.push(skip(&criterion, "mimalloc not in this run"));
                continue;
            }
            let failed_hk: Vec<&str> = ws
                .iter()
                .filter(|w| self.value(w, UNDER_TEST, metric).is_none())
                .map(String::as_str)
                .collect();
            let (g, n) = self.geomean_ratio(ws, "mimalloc", metric);
            checks.push(match g {
                Some(g) if failed_hk.is_empty() => Check {
                    criterion,
                    pass: Some(g <= limit),
                    detail: format!("{g:.3} over {n} workloads"),
                },
                Some(g) => Check {
                    criterion,
                    pass: Some(false),
                    detail: format!(
                        "{g:.3} over {n} workloads; heapkeep failed on {}",
                        failed_hk.join(", ")
                    ),
                },
                None => Check {
                    criterion,
                    pass: Some(false),
                    detail: "no comparable workloads".to_string(),
                },
            });
        }

        // 4. Never much slower than the best peer.
        let peers: Vec<&str> = self
            .peers()
            .into_iter()
            .filter(|p| !crate::is_variant(p))
            .collect();
        if peers.is_empty() {
            checks.push(skip(&c4, "no peers in this run"));
        } else {
            let mut bad = Vec::new();
            let mut worst: Option<(f64, String)> = None;
            for w in ws {
                let best = peers
                    .iter()
                    .filter_map(|p| self.value(w, p, Metric::Time).map(|t| (t, *p)))
                    .min_by(|a, b| a.0.total_cmp(&b.0));
                match (self.value(w, UNDER_TEST, Metric::Time), best) {
                    (None, _) => bad.push(format!("{w} (heapkeep failed)")),
                    (Some(_), None) => {}
                    (Some(h), Some((t, p))) => {
                        let r = h / t;
                        if worst.as_ref().is_none_or(|(x, _)| r > *x) {
                            worst = Some((r, format!("{w}: {r:.2}x {p}")));
                        }
                        if r > MAX_SLOWDOWN_VS_BEST {
                            bad.push(format!("{w} ({r:.2}x {p})"));
                        }
                    }
                }
            }
            let detail = match (&worst, bad.is_empty()) {
                (Some((_, wd)), true) => format!("worst {wd}"),
                (_, false) => format!("too slow on: {}", bad.join(", ")),
                (None, true) => "no comparable workloads".to_string(),
            };
            checks.push(Check {
                criterion: c4,
                pass: Some(bad.is_empty() && worst.is_some()),
                detail,
            });
        }
        checks
    }

    /// The markdown summary (tables, bar check, failures).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.meta;
        let _ = writeln!(
            s,
            "## heapkeep benchmark results ({} scale, {} rounds, medians)\n",
            m.scale, m.rounds
        );
        let _ = writeln!(
            s,
            "Machine: {} ({} CPUs), Linux {}{}. Each measurement is one process; \
             allocators alternate, order rotated every round. Run took {:.0} s.\n",
            m.cpu,
            m.cpus,
            m.kernel,
            m.git
                .as_ref()
                .map(|g| format!(", workspace at `{g}`"))
                .unwrap_or_default(),
            m.duration_seconds
        );
        let ratio_note = if self.has_under_test() {
            " `hk/X` is heapkeep divided by X, run by run (the median over rounds of the two runs' ratio in a round): below 1.00 heapkeep is better."
        } else {
            ""
        };
        let _ = writeln!(s, "### Time (seconds, lower is better)\n");
        if !ratio_note.is_empty() {
            let _ = writeln!(s, "{}\n", ratio_note.trim());
        }
        self.table(&mut s, Metric::Time, &m.workloads);
        self.intervals(&mut s, &m.workloads);
        let _ = writeln!(s, "\n### Peak RSS (MiB, VmHWM, lower is better)\n");
        self.table(&mut s, Metric::PeakRss, &m.workloads);
        if m.workloads.iter().any(|w| w == "memreturn") {
            let _ = writeln!(
                s,
                "\n### memreturn: resident memory after freeing 90% (MiB, from /proc/self/statm)\n"
            );
            self.table(&mut s, Metric::RssAfter, &["memreturn".to_string()]);
        }
        let _ = writeln!(s, "\n### Bar check\n");
        let _ = writeln!(s, "| criterion | result | detail |\n|---|---|---|");
        for c in &self.checks {
            let _ = writeln!(
                s,
                "| {} | **{}** | {} |",
                c.criterion,
                c.verdict(),
                c.detail
            );
        }
        let failures: Vec<&Sample> = self.samples.iter().filter(|x| !x.ok).collect();
        if !failures.is_empty() {
            let _ = writeln!(s, "\n### Failures\n");
            for f in failures {
                let _ = writeln!(
                    s,
                    "- round {}, {} / {}: {}",
                    f.round,
                    f.workload,
                    f.allocator,
                    f.error.as_deref().unwrap_or("failed")
                );
            }
        }
        let _ = writeln!(s, "\n### Workloads\n");
        for w in &self.meta.workloads {
            if let Some(wl) = crate::workloads::find(w) {
                let _ = writeln!(s, "- `{}`: {}", wl.name, wl.about);
            }
        }
        if !self.checksum_mismatches.is_empty() {
            let _ = writeln!(
                s,
                "\n**Warning:** checksums differ between runs of: {} (the work was not identical).",
                self.checksum_mismatches.join(", ")
            );
        }
        s
    }

    /// The time ratios' 95% intervals ([`Report::ratio_interval`]), when
    /// there are peers and enough rounds.
    fn intervals(&self, s: &mut String, workloads: &[String]) {
        let peers = self.ratio_columns();
        if peers.is_empty() || median_interval_rank(self.meta.rounds).is_none() {
            return;
        }
        let _ = writeln!(
            s,
            "\n95% intervals of the time ratios (sign test over the rounds' ratios; \
             read a bar as met on a workload only when the whole interval lies within it):\n"
        );
        header(s, peers.iter().map(|p| format!("hk/{p}")));
        for w in workloads {
            let _ = write!(s, "| {w} |");
            for p in &peers {
                let cell = self
                    .ratio_interval(w, p, Metric::Time)
                    .map_or("–".to_string(), |(lo, hi)| format!("{lo:.3} – {hi:.3}"));
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
        if workloads.len() > 1 {
            let _ = write!(s, "| **geomean** (per round) |");
            for p in &peers {
                let cell = self
                    .geomean_interval(workloads, p, Metric::Time)
                    .map_or("–".to_string(), |(m, lo, hi)| {
                        format!("{lo:.3} – {hi:.3} (median {m:.3})")
                    });
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
    }

    fn table(&self, s: &mut String, metric: Metric, workloads: &[String]) {
        let allocs = &self.meta.allocators;
        let peers = self.ratio_columns();
        header(
            s,
            allocs
                .iter()
                .cloned()
                .chain(peers.iter().map(|p| format!("hk/{p}"))),
        );
        for w in workloads {
            let label = if metric == Metric::RssAfter {
                format!("{w} (after)")
            } else {
                w.clone()
            };
            let _ = write!(s, "| {label} |");
            for a in allocs {
                let _ = write!(s, " {} |", self.fmt_cell(w, a, metric));
            }
            for p in &peers {
                let r = self.ratio(w, p, metric);
                let _ = write!(s, " {} |", r.map_or("–".to_string(), |r| format!("{r:.2}")));
            }
            s.push('\n');
        }
        if !peers.is_empty() && workloads.len() > 1 {
            let _ = write!(s, "| **geomean** |");
            for _ in allocs {
                let _ = write!(s, " |");
            }
            for p in &peers {
                let (g, n) = self.geomean_ratio(workloads, p, metric);
                let cell = match g {
                    Some(g) if n == workloads.len() => format!("**{g:.2}**"),
                    Some(g) => format!("**{g:.2}** ({n}/{})", workloads.len()),
                    None => "–".to_string(),
                };
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
    }

    fn fmt_cell(&self, workload: &str, allocator: &str, metric: Metric) -> String {
        let Some(m) = self.cell(workload, allocator) else {
            return "–".to_string();
        };
        let v = match metric.of(m) {
            None if m.failed_runs > 0 => return "FAILED".to_string(),
            None => return "–".to_string(),
            Some(v) => v,
        };
        let mut out = match metric {
            Metric::Time => fmt_seconds(v),
            Metric::PeakRss | Metric::RssAfter => fmt_mib(v),
        };
        if m.failed_runs > 0 {
            let _ = write!(out, " ({} failed)", m.failed_runs);
        }
        out
    }

    /// Raw samples as CSV.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "round,workload,allocator,ok,seconds,peak_rss_kib,rss_after_kib,checksum,error\n",
        );
        for x in &self.samples {
            let opt = |v: Option<String>| v.unwrap_or_default();
            let err = x
                .error
                .as_deref()
                .map(|e| format!("\"{}\"", e.replace('"', "\"\"")))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{}",
                x.round,
                x.workload,
                x.allocator,
                x.ok,
                opt(x.seconds.map(|v| format!("{v:.6}"))),
                opt(x.peak_rss_kib.map(|v| v.to_string())),
                opt(x.rss_after_kib.map(|v| v.to_string())),
                opt(x.checksum.map(|v| format!("{v:016x}"))),
                err
            );
        }
        s
    }
}

/// Seconds with three significant digits or so.
pub fn fmt_seconds(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// KiB shown as MiB.
pub fn fmt_mib(kib: f64) -> String {
    let mib = kib / 1024.0;
    if mib < 100.0 {
        format!("{mib:.1}")
    } else {
        format!("{mib:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(w: &str, a: &str, secs: f64, round: usize) -> Sample {
        Sample {
            round,
            workload: w.into(),
            allocator: a.into(),
            ok: true,
            seconds: Some(secs),
            peak_rss_kib: Some(1024),
            rss_after_kib: Some(512),
            checksum: Some(1),
            error: None,
        }
    }

    /// A quick-scale, three-round run of these workloads and allocators.
    fn meta(workloads: &[&str], allocators: &[&str]) -> Meta {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Meta {
            scale: "quick".into(),
            rounds: 3,
            workloads: names(workloads),
            allocators: names(allocators),
            started_unix: 0,
            duration_seconds: 1.0,
            cpu: "test".into(),
            cpus: 2,
            kernel: "x".into(),
            git: None,
        }
    }

    #[test]
    fn a_ratio_pairs_the_runs_of_each_round() {
        let meta = meta(&["small"], &["heapkeep", "system"]);
        // The machine slows down round by round; heapkeep is 9% and 10%
        // faster in rounds 1 and 2 and 3% slower in round 3.
        let samples = vec![
            sample("small", "heapkeep", 1.0, 1),
            sample("small", "system", 1.1, 1),
            sample("small", "heapkeep", 1.8, 2),
            sample("small", "system", 2.0, 2),
            sample("small", "heapkeep", 3.0, 3),
            sample("small", "system", 2.9, 3),
        ];
        let rep = Report::new(meta, samples);
        let r = rep.ratio("small", "system", Metric::Time).unwrap();
        assert!(
            (r - 1.0 / 1.1).abs() < 1e-9,
            "median of 0.909, 0.9, 1.034 = {r}"
        );
        // The ratio of the two columns' medians (1.8 / 2.0) would differ.
        let hk = rep.value("small", "heapkeep", Metric::Time).unwrap();
        let sys = rep.value("small", "system", Metric::Time).unwrap();
        assert!((hk / sys - 0.9).abs() < 1e-9);
    }

    #[test]
    fn pooled_runs_pair_each_run_s_rounds_as_rounds_of_one() {
        // Run A: heapkeep 10% and 20% slower; run B (with one more
        // allocator): 30% slower, and 40% in a round that lacks `small`.
        let mut a = meta(&["small", "random"], &["heapkeep", "heapkeep-nostats"]);
        a.rounds = 2;
        a.git = Some("aaa".into());
        let mut b = meta(
            &["small", "random"],
            &["heapkeep", "heapkeep-nostats", "system"],
        );
        b.rounds = 2;
        b.git = Some("bbb".into());
        let mut sa = Vec::new();
        for (round, q) in [(1, 1.1), (2, 1.2)] {
            for w in ["small", "random"] {
                sa.push(sample(w, "heapkeep", q, round));
                sa.push(sample(w, "heapkeep-nostats", 1.0, round));
            }
        }
        let sb = vec![
            sample("small", "heapkeep", 1.3, 1),
            sample("small", "heapkeep-nostats", 1.0, 1),
            sample("small", "system", 2.0, 1),
            sample("random", "heapkeep", 1.3, 1),
            sample("random", "heapkeep-nostats", 1.0, 1),
            sample("random", "heapkeep", 1.4, 2),
            sample("random", "heapkeep-nostats", 1.0, 2),
        ];
        let pooled = Report::pool(vec![
            Report::new(a.clone(), sa.clone()),
            Report::new(b.clone(), sb.clone()),
        ])
        .unwrap();
        assert_eq!(pooled.meta.rounds, 4);
        // In the harness's order, as a run lists them.
        assert_eq!(
            pooled.meta.allocators,
            ["heapkeep", "system", "heapkeep-nostats"]
        );
        assert_eq!(pooled.meta.git.as_deref(), Some("aaa + bbb"));
        let rounds = |w: &str| pooled.round_ratios(w, "heapkeep-nostats", Metric::Time);
        let close = |v: Vec<Option<f64>>, want: [Option<f64>; 4]| {
            v.iter().zip(want).all(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => (x - y).abs() < 1e-9,
                (x, y) => x.is_none() && y.is_none(),
            })
        };
        assert!(close(
            rounds("small"),
            [Some(1.1), Some(1.2), Some(1.3), None]
        ));
        assert!(close(
            rounds("random"),
            [Some(1.1), Some(1.2), Some(1.3), Some(1.4)]
        ));
        // `random`'s four rounds, one run's after the other's.
        let r = pooled
            .ratio("random", "heapkeep-nostats", Metric::Time)
            .unwrap();
        assert!((r - 1.25).abs() < 1e-9, "{r}");
        // Runs at other scales, or of other workloads, do not pool.
        let mut full = b.clone();
        full.scale = "full".into();
        assert!(Report::pool(vec![
            Report::new(a.clone(), sa.clone()),
            Report::new(full, sb)
        ])
        .is_err());
        let mut other = a.clone();
        other.workloads = vec!["small".into()];
        assert!(Report::pool(vec![Report::new(a, sa.clone()), Report::new(other, sa)]).is_err());
        assert!(Report::pool(Vec::new()).is_err());
    }

    #[test]
    fn the_median_interval_ranks_follow_the_binomial() {
        // P(Bin(5, 1/2) = 0) = 1/32 > 2.5%: not even the extremes.
        assert_eq!(median_interval_rank(5), None);
        // 1/64 <= 2.5% < 7/64.
        assert_eq!(median_interval_rank(6), Some(1));
        // 12/2048 <= 2.5% < 67/2048.
        assert_eq!(median_interval_rank(11), Some(2));
        // Sign-test tables: n = 20 gives the 6th order statistics, n = 100
        // the 40th.
        assert_eq!(median_interval_rank(20), Some(6));
        assert_eq!(median_interval_rank(100), Some(40));
        // No underflow for long runs: about n/2 - 0.98 sqrt(n).
        let k = median_interval_rank(2000).unwrap();
        assert!((955..=957).contains(&k), "{k}");
    }

    #[test]
    fn a_ratio_interval_brackets_the_rounds_median() {
        let mut meta = meta(&["random"], &["heapkeep", "heapkeep-nostats"]);
        meta.rounds = 11;
        let mut samples = Vec::new();
        // Ratios 1.00, 1.01, ..., 1.10 in a shuffled round order, on a
        // machine whose speed changes from round to round.
        for (r, step) in [3, 9, 0, 6, 10, 1, 4, 8, 2, 7, 5].into_iter().enumerate() {
            let base = 1.0 + r as f64 * 0.3;
            samples.push(sample("random", "heapkeep-nostats", base, r + 1));
            samples.push(sample(
                "random",
                "heapkeep",
                base * (1.0 + step as f64 * 0.01),
                r + 1,
            ));
        }
        let rep = Report::new(meta, samples);
        let (lo, hi) = rep
            .ratio_interval("random", "heapkeep-nostats", Metric::Time)
            .unwrap();
        assert!(
            (lo - 1.01).abs() < 1e-9 && (hi - 1.09).abs() < 1e-9,
            "{lo} {hi}"
        );
        assert!(
            (rep.ratio("random", "heapkeep-nostats", Metric::Time)
                .unwrap()
                - 1.05)
                .abs()
                < 1e-9
        );
        assert!(rep.markdown().contains("| random | 1.010 – 1.090 |"));
    }

    #[test]
    fn the_geomean_interval_is_taken_round_by_round() {
        let mut meta = meta(&["small", "random"], &["heapkeep", "heapkeep-nostats"]);
        meta.rounds = 12;
        let mut samples = Vec::new();
        // In a round (shuffled) with g = 1.0 + step%, `small`'s ratio is
        // g squared and `random`'s 1, so the round's geomean is g. Round
        // 12 misses `random` and is left out.
        for (r, step) in [3, 9, 0, 6, 10, 1, 4, 8, 2, 7, 5, 40]
            .into_iter()
            .enumerate()
        {
            let g = 1.0 + step as f64 * 0.01;
            let base = 1.0 + r as f64 * 0.3;
            for (w, ratio) in [("small", g * g), ("random", 1.0)] {
                if w == "random" && r == 11 {
                    continue;
                }
                samples.push(sample(w, "heapkeep-nostats", base, r + 1));
                samples.push(sample(w, "heapkeep", base * ratio, r + 1));
            }
        }
        let rep = Report::new(meta, samples);
        let ws = ["small".to_string(), "random".to_string()];
        let (m, lo, hi) = rep
            .geomean_interval(&ws, "heapkeep-nostats", Metric::Time)
            .unwrap();
        assert!(
            (m - 1.05).abs() < 1e-9 && (lo - 1.01).abs() < 1e-9 && (hi - 1.09).abs() < 1e-9,
            "{m} {lo} {hi}"
        );
        assert!(
            rep.markdown()
                .contains("| **geomean** (per round) | 1.010 – 1.090 (median 1.050) |"),
            "{}",
            rep.markdown()
        );
    }

    #[test]
    fn medians_ratios_and_bar() {
        let meta = meta(&["small", "large"], &["heapkeep", "system", "mimalloc"]);
        let mut samples = Vec::new();
        for r in 1..=3 {
            samples.push(sample("small", "heapkeep", 1.0 + r as f64 * 0.01, r));
            samples.push(sample("small", "system", 2.0, r));
            samples.push(sample("small", "mimalloc", 1.0, r));
            samples.push(sample("large", "heapkeep", 1.0, r));
            samples.push(sample("large", "system", 1.5, r));
            samples.push(sample("large", "mimalloc", 0.5, r));
        }
        samples[0].ok = false;
        samples[0].error = Some("killed by signal 11".into());
        let rep = Report::new(meta, samples);
        let t = rep.value("small", "heapkeep", Metric::Time).unwrap();
        assert!((t - 1.025).abs() < 1e-9, "median of two = {t}");
        assert!((rep.ratio("large", "mimalloc", Metric::Time).unwrap() - 2.0).abs() < 1e-9);
        // Round 1 of `small` failed for heapkeep: the ratio pairs rounds 2
        // and 3 only (1.02/2 and 1.03/2).
        let r = rep.ratio("small", "system", Metric::Time).unwrap();
        assert!((r - 0.5125).abs() < 1e-9, "paired ratio {r}");
        let verdicts: Vec<_> = rep.checks.iter().map(Check::verdict).collect();
        assert_eq!(verdicts, ["PASS", "FAIL", "PASS", "FAIL"]);
        let md = rep.markdown();
        assert!(md.contains("(1 failed)"));
        assert!(md.contains("killed by signal 11"));
        assert!(rep.csv().lines().count() == 19);
    }
}
