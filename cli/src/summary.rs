//! The exit report the library writes (see `preload/src/report.rs`) and the
//! summary `heapkeep run` prints from it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The library's exit report (one JSON object).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Report {
    pub pid: u64,
    pub allocs: u64,
    pub frees: u64,
    pub reallocs: u64,
    pub bytes_requested: u64,
    pub bytes_allocated: u64,
    pub peak_live_bytes: u64,
    pub live_bytes_at_exit: u64,
    pub live_blocks_at_exit: u64,
    pub os_mapped_bytes_at_exit: u64,
    pub os_mapped_peak_bytes: u64,
    pub stats_enabled: u64,
    /// 2 when a Rust program's own copy of heapkeep and the C heap both
    /// counted (their sums are reported; the peak is the sum of theirs).
    #[serde(default = "one")]
    pub heaps: u64,
    /// Threads whose stack depth was measured (listed in `stacks` or not).
    #[serde(default)]
    pub threads_measured: u64,
    /// The deepest stacks, deepest first (at most 64).
    #[serde(default)]
    pub stacks: Vec<StackRow>,
}

fn one() -> u64 {
    1
}

/// How deep one thread's stack went (the report's `stacks` rows).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct StackRow {
    pub thread_id: u64,
    pub name: String,
    /// Bytes from the top of the stack to the deepest page it touched.
    pub peak_bytes: u64,
    /// The stack's size (the main thread: its stack limit).
    pub size_bytes: u64,
    /// Still running at exit (else measured as it exited).
    pub running: bool,
    pub main: bool,
}

/// Stack rows the text summary shows (the JSON has them all).
const STACK_LINES: usize = 8;

/// How the program ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Exit status.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// What `heapkeep run --json` writes: the report plus what the command saw.
#[derive(Debug, Serialize)]
pub struct RunSummary<'a> {
    pub program: &'a str,
    pub ending: Ending,
    pub wall_seconds: f64,
    /// Other processes (children of the program) that wrote a report.
    pub child_processes: usize,
    /// The program's own report (its keys at the top level); `None` if it
    /// left without one (`_exit`, a signal, or an `exec` of a program that
    /// did not load heapkeep).
    #[serde(flatten)]
    pub heap: Option<&'a Report>,
}

/// `1234567` as `1,234,567`.
pub fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units with 3 significant digits: `512 B`, `1.50 KiB`, `12.3 MiB`.
pub fn bytes(v: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = v as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v} B")
    } else if x < 10.0 {
        format!("{x:.2} {}", UNITS[u])
    } else if x < 100.0 {
        format!("{x:.1} {}", UNITS[u])
    } else {
        format!("{x:.0} {}", UNITS[u])
    }
}

/// The text summary (lines starting `heapkeep: `).
pub fn text(s: &RunSummary) -> String {
    let mut o = String::new();
    let how = match s.ending {
        Ending::Exited(c) => format!("exited with status {c}"),
        Ending::Signaled(n) => format!("was killed by signal {n}"),
    };
    let _ = writeln!(
        o,
        "heapkeep: {} {how} after {:.3} s wall time",
        s.program, s.wall_seconds
    );
    match s.heap {
        Some(r) if r.stats_enabled == 0 => {
            let _ = writeln!(
                o,
                "heapkeep:   (the library was built without the `stats` feature: no counts)"
            );
        }
        Some(r) => {
            let _ = writeln!(
                o,
                "heapkeep:   calls  {} allocations, {} frees, {} reallocs",
                thousands(r.allocs),
                thousands(r.frees),
                thousands(r.reallocs)
            );
            let _ = writeln!(
                o,
                "heapkeep:   heap   peak {} in use; at exit {} in {} blocks; {} allocated in total",
                bytes(r.peak_live_bytes),
                bytes(r.live_bytes_at_exit),
                thousands(r.live_blocks_at_exit),
                bytes(r.bytes_allocated)
            );
            let _ = writeln!(
                o,
                "heapkeep:   OS     peak {} mapped; at exit {}",
                bytes(r.os_mapped_peak_bytes),
                bytes(r.os_mapped_bytes_at_exit)
            );
            if r.heaps == 2 {
                let _ = writeln!(
                    o,
                    "heapkeep:   (two heaps: the program's own heapkeep and the C heap; \
                     their counts added, the peak is the sum of their peaks)"
                );
            }
            stack_lines(&mut o, r);
        }
        None => {
            let _ = writeln!(
                o,
                "heapkeep:   no heap report: the process ended without running its exit \
                 handlers (_exit, a signal, or exec), or did not load the heapkeep library"
            );
        }
    }
    if s.child_processes > 0 {
        let _ = writeln!(
            o,
            "heapkeep:   {} child process(es) also ran on heapkeep (not counted above)",
            s.child_processes
        );
    }
    o
}

/// The stack lines: each listed thread's peak stack use against its size.
fn stack_lines(o: &mut String, r: &Report) {
    if r.stacks.is_empty() {
        return;
    }
    let more = r.threads_measured.saturating_sub(STACK_LINES as u64);
    let _ = writeln!(
        o,
        "heapkeep:   stacks {} thread(s) measured, deepest first{}",
        r.threads_measured,
        if more > 0 {
            format!(" ({more} more in --json or shallower)")
        } else {
            String::new()
        }
    );
    for t in r.stacks.iter().take(STACK_LINES) {
        let who = if t.main {
            format!("main thread {}", t.thread_id)
        } else {
            format!("thread {}", t.thread_id)
        };
        let name = if t.name.is_empty() {
            String::new()
        } else {
            format!(" \"{}\"", t.name)
        };
        let pct = if t.size_bytes > 0 {
            format!(
                " ({:.0}%)",
                t.peak_bytes as f64 * 100.0 / t.size_bytes as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "heapkeep:     {who}{name}: peak {} of {}{pct}",
            bytes(t.peak_bytes),
            bytes(t.size_bytes)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(12_900_000), "12.3 MiB");
        assert_eq!(bytes(300 << 30), "300 GiB");
    }

    #[test]
    fn summary_names_every_figure() {
        let r = Report {
            pid: 7,
            allocs: 1500,
            frees: 1400,
            reallocs: 3,
            bytes_allocated: 10 << 20,
            peak_live_bytes: 2 << 20,
            live_bytes_at_exit: 4096,
            live_blocks_at_exit: 100,
            os_mapped_peak_bytes: 8 << 20,
            os_mapped_bytes_at_exit: 4 << 20,
            stats_enabled: 1,
            ..Report::default()
        };
        let s = RunSummary {
            program: "prog",
            ending: Ending::Exited(3),
            wall_seconds: 1.5,
            child_processes: 0,
            heap: Some(&r),
        };
        let t = text(&s);
        assert!(
            t.starts_with("heapkeep: prog exited with status 3 after 1.500 s"),
            "{t}"
        );
        assert!(
            t.contains("1,500 allocations, 1,400 frees, 3 reallocs"),
            "{t}"
        );
        assert!(
            t.contains("peak 2.00 MiB in use; at exit 4.00 KiB in 100 blocks"),
            "{t}"
        );
        assert!(t.contains("peak 8.00 MiB mapped; at exit 4.00 MiB"), "{t}");
        assert!(!t.contains("stacks"), "{t}");
        assert!(t.lines().all(|l| l.starts_with("heapkeep: ")));
    }

    #[test]
    fn summary_lists_stacks_deepest_first() {
        let row = |id: u64, name: &str, peak: u64, main: bool| StackRow {
            thread_id: id,
            name: name.into(),
            peak_bytes: peak,
            size_bytes: 8 << 20,
            running: main,
            main,
        };
        let mut r = Report {
            stats_enabled: 1,
            threads_measured: 10,
            stacks: vec![row(7, "main", 2 << 20, true)],
            ..Report::default()
        };
        r.stacks
            .extend((0..9).map(|i| row(100 + i, "", (9 - i) << 10, false)));
        let s = RunSummary {
            program: "prog",
            ending: Ending::Exited(0),
            wall_seconds: 1.0,
            child_processes: 0,
            heap: Some(&r),
        };
        let t = text(&s);
        assert!(
            t.contains("stacks 10 thread(s) measured, deepest first (2 more"),
            "{t}"
        );
        assert!(
            t.contains("main thread 7 \"main\": peak 2.00 MiB of 8.00 MiB (25%)"),
            "{t}"
        );
        assert!(
            t.contains("thread 100: peak 9.00 KiB of 8.00 MiB (0%)"),
            "{t}"
        );
        // Eight rows: the main thread and seven of the nine others.
        assert_eq!(t.matches(": peak ").count(), 8, "{t}");
        assert!(!t.contains("thread 107"), "{t}");
    }
}
