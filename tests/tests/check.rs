//! Check mode (`HEAPKEEP_CHECK=1`, `heapkeep check`): every kind of heap
//! misuse in C (tests/c/check/misuse.c, through `heapkeep check`) and in
//! Rust (the `check_misuse` binary, on heapkeep as its global allocator) is
//! reported in the documented format, with the right class and the
//! functions that allocated, freed and misused the block, and the program is
//! aborted; leaks are counted exactly (tests/c/check/leaks.c, the `leak`
//! case of `check_misuse`); correct programs run silently.
//!
//! The report format these tests hold the checker to:
//!
//! ```text
//! heapkeep: error: <class> on 0x<hex address>
//!   <detail lines; for overflows one containing "offset <k>">
//!   here (thread <tid>):
//!     #0 0x<ip> in <function> <file>:<line>
//!   allocated (thread <tid>):      (when the block is known)
//!     #0 ...
//!   freed (thread <tid>):          (when the block was freed)
//!     #0 ...
//! heapkeep: aborting
//! ```
//!
//! and for leaks at exit `heapkeep: leak: <N> bytes in <M> blocks`, then
//! the sites by leaked bytes, `  <bytes> bytes in <count> blocks allocated
//! at:` each followed by frames.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use heapkeep_tests::{compile_c, heapkeep_cmd, workspace};

// ---------------------------------------------------------------------------
// Programs

fn preload_lib() -> PathBuf {
    heapkeep_cmd()
        .parent()
        .unwrap()
        .join("libheapkeep_preload.so")
}

/// Compiles `tests/c/<src>` with `compiler` into `target/check-tests/<name>`
/// with debug information, unoptimised and without inlining (so every
/// named site is a frame of its own). Each name is compiled once per test
/// binary: tests run in parallel, and two compiling to one path would race
/// with a run of it.
fn compile(compiler: &str, src: &str, name: &str, extra: &[&str]) -> &'static Path {
    static DONE: Mutex<Vec<(String, &'static Path)>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = done.iter().find(|(n, _)| n == name) {
        return p;
    }
    let dir = workspace().join("target").join("check-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    compile_c(compiler, src, &out, &["-g", "-O0", "-fno-inline"], extra);
    let out: &'static Path = Box::leak(out.into_boxed_path());
    done.push((name.to_string(), out));
    out
}

fn misuse_c() -> &'static Path {
    compile("cc", "check/misuse.c", "misuse", &["-pthread"])
}

fn api_c() -> &'static Path {
    compile("cc", "api.c", "api", &["-ldl"])
}

fn threads_c() -> &'static Path {
    compile("cc", "threads.c", "threads", &["-pthread"])
}

fn guard_c() -> &'static Path {
    compile("cc", "check/guard.c", "guard", &["-pthread"])
}

fn leaks_c() -> &'static Path {
    compile("cc", "check/leaks.c", "leaks", &["-pthread"])
}

fn check_misuse_rs() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_check_misuse"))
}

/// A command whose environment holds none of our own check-mode,
/// preload or report settings.
fn hermetic(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for o in heapkeep::check::OPTIONS {
        cmd.env_remove(o.env);
    }
    cmd.env_remove("HEAPKEEP_LIB")
        .env_remove("HEAPKEEP_REPORT")
        .env_remove("LD_PRELOAD");
    cmd
}

/// `heapkeep check FLAGS -- PROGRAM ARGS`.
fn heapkeep_check(flags: &[&str], program: &Path, args: &[&str]) -> Output {
    hermetic(heapkeep_cmd())
        .arg("check")
        .args(flags)
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .expect("run heapkeep check")
}

/// PROGRAM ARGS with `HEAPKEEP_CHECK=1` and `env`, not preloaded (for the
/// Rust binary, whose global allocator is heapkeep itself).
fn run_checked(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    hermetic(program)
        .args(args)
        .env("HEAPKEEP_CHECK", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn describe(out: &Output) -> String {
    let status = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => format!("{:?}", out.status),
    };
    format!(
        "{status}\n--- stdout ---\n{}--- stderr ---\n{}--------------",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The lines of stderr that heapkeep wrote (they start with `heapkeep:`).
fn heapkeep_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("heapkeep:"))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// Reading reports

/// One section of an error report (`here`, `allocated`, `freed`).
#[derive(Debug)]
struct Section {
    name: String,
    thread: String,
    /// The frame lines, trimmed (`#0 0x... in function file:line`).
    frames: Vec<String>,
}

/// An error report, as read from stderr.
#[derive(Debug)]
struct ErrorReport {
    class: String,
    details: Vec<String>,
    sections: Vec<Section>,
}

impl ErrorReport {
    fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a frame line (trimmed): `#<n> 0x<hex> in <function>[ <file>:<line>]`.
fn check_frame(line: &str, n: usize) -> Result<(), String> {
    let rest = line
        .strip_prefix(&format!("#{n} 0x"))
        .ok_or_else(|| format!("frame {n} is not `#{n} 0x<ip> in ...`: {line:?}"))?;
    let (ip, rest) = rest
        .split_once(" in ")
        .ok_or_else(|| format!("frame has no ` in <function>`: {line:?}"))?;
    if !is_hex(ip) || rest.trim().is_empty() {
        return Err(format!("malformed frame: {line:?}"));
    }
    Ok(())
}

/// Parses `  <name> (thread <tid>):`.
fn section_header(line: &str) -> Option<(String, String)> {
    let inner = line.strip_prefix("  ")?;
    if inner.starts_with(' ') {
        return None;
    }
    let (name, thread) = inner.strip_suffix("):")?.split_once(" (thread ")?;
    if name.is_empty() || name.contains(' ') || thread.is_empty() {
        return None;
    }
    Some((name.to_string(), thread.to_string()))
}

/// Reads the error report: the first `heapkeep:` line of stderr must be
/// `heapkeep: error: <class> on 0x<hex>`, the report must end with
/// `heapkeep: aborting`, and every section must have well-formed frames.
fn parse_error(stderr: &str) -> Result<ErrorReport, String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("heapkeep:"))
        .ok_or("no line starting with `heapkeep:` on stderr")?;
    let first = lines[start];
    let (class, address) = first
        .strip_prefix("heapkeep: error: ")
        .and_then(|r| r.split_once(" on 0x"))
        .ok_or_else(|| {
            format!("first heapkeep line is not `heapkeep: error: <class> on 0x<hex>`: {first:?}")
        })?;
    if !is_hex(address) || class.is_empty() || class.contains(' ') {
        return Err(format!(
            "first heapkeep line is not `heapkeep: error: <class> on 0x<hex>`: {first:?}"
        ));
    }
    let mut report = ErrorReport {
        class: class.to_string(),
        details: Vec::new(),
        sections: Vec::new(),
    };
    for line in &lines[start + 1..] {
        if *line == "heapkeep: aborting" {
            if report.details.is_empty() {
                return Err("the report has no detail line".into());
            }
            for s in &report.sections {
                if s.frames.is_empty() {
                    return Err(format!("section `{}` has no frames", s.name));
                }
                for (n, f) in s.frames.iter().enumerate() {
                    check_frame(f, n).map_err(|e| format!("section `{}`: {e}", s.name))?;
                }
            }
            return Ok(report);
        }
        if line.starts_with("heapkeep:") {
            return Err(format!(
                "another heapkeep line before `heapkeep: aborting`: {line:?}"
            ));
        }
        if let Some((name, thread)) = section_header(line) {
            report.sections.push(Section {
                name,
                thread,
                frames: Vec::new(),
            });
        } else if let Some(frame) = line.strip_prefix("    #") {
            match report.sections.last_mut() {
                Some(s) => s.frames.push(format!("#{frame}")),
                None => return Err(format!("a frame before any section: {line:?}")),
            }
        } else if line.starts_with("  ") && report.sections.is_empty() {
            report.details.push(line.trim().to_string());
        } else {
            return Err(format!("unexpected line in the report: {line:?}"));
        }
    }
    Err("the report does not end with `heapkeep: aborting`".into())
}

/// Whether `text` names the function `name`: as a whole identifier (so
/// `free_site` is not found in `invalid_free_site`), plain, as the last
/// component of a Rust path, or inside a mangled Rust symbol
/// (`..9free_site17h..`).
fn names_function(text: &str, name: &str) -> bool {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    text.match_indices(name).any(|(i, _)| {
        !ident(text[..i].chars().next_back()) && !ident(text[i + name.len()..].chars().next())
    })
}

/// What a section must say about a site.
#[derive(Clone, Copy, Debug)]
enum Site {
    /// The section exists and one of its frames is this function, with the
    /// source file and line.
    Named(&'static str),
    /// The section must not appear.
    Absent,
    /// Not checked (the contract leaves it open).
    Any,
}

/// What the report must say about the offset of the access.
#[derive(Clone, Copy, Debug)]
enum Offset {
    Unchecked,
    /// A detail line contains `offset <k>` (any k).
    Mentioned,
    /// A detail line contains `offset <k>` with exactly this k.
    Exactly(i64),
    /// A detail line contains `offset <k>` with at least this k.
    AtLeast(i64),
}

/// One misuse case and what its report must say.
#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    class: &'static str,
    here: Site,
    allocated: Site,
    freed: Site,
    offset: Offset,
}

/// Shorthand for the table below.
const fn case(
    name: &'static str,
    class: &'static str,
    here: Site,
    allocated: Site,
    freed: Site,
    offset: Offset,
) -> Case {
    Case {
        name,
        class,
        here,
        allocated,
        freed,
        offset,
    }
}

use Offset::{AtLeast, Exactly, Mentioned, Unchecked};
use Site::{Absent, Any, Named};

/// The numbers after `offset ` in the detail lines.
fn offsets(details: &[String]) -> Vec<i64> {
    details
        .iter()
        .flat_map(|d| d.match_indices("offset ").map(move |(i, _)| &d[i + 7..]))
        .filter_map(|rest| {
            let end = rest
                .char_indices()
                .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+'))))
                .map_or(rest.len(), |(i, _)| i);
            rest[..end].parse().ok()
        })
        .collect()
}

fn check_site(report: &ErrorReport, section: &str, site: Site, source: &str) -> Result<(), String> {
    let found = report.section(section);
    match (site, found) {
        (Any, _) | (Absent, None) => Ok(()),
        (Absent, Some(_)) => Err(format!("a `{section}` section, expected none")),
        (Named(f), None) => Err(format!("no `{section}` section (expected {f})")),
        (Named(f), Some(s)) => match s.frames.iter().find(|l| names_function(l, f)) {
            None => Err(format!("the `{section}` section does not name {f}")),
            Some(frame) if !frame.contains(&format!("{source}:")) => Err(format!(
                "the `{section}` frame of {f} has no {source}:<line>: {frame:?}"
            )),
            Some(_) => Ok(()),
        },
    }
}

/// Checks one run of a misuse case; `Err` says what is wrong.
fn check_case(c: &Case, out: &Output, via_cli: bool, source: &str) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = parse_error(&stderr)?;
    if report.class != c.class {
        return Err(format!("class {:?}, expected {:?}", report.class, c.class));
    }
    let here = report
        .section("here")
        .ok_or("no `here (thread <tid>):` section")?;
    if here.thread.trim().is_empty() {
        return Err("the `here` section names no thread".into());
    }
    check_site(&report, "here", c.here, source)?;
    check_site(&report, "allocated", c.allocated, source)?;
    check_site(&report, "freed", c.freed, source)?;
    let found = offsets(&report.details);
    let offset_ok = match c.offset {
        Unchecked => true,
        Mentioned => !found.is_empty(),
        Exactly(k) => found.contains(&k),
        AtLeast(k) => found.iter().any(|&o| o >= k),
    };
    if !offset_ok {
        return Err(format!(
            "no detail line with `offset <k>` as expected ({:?}); details: {:?}",
            c.offset, report.details
        ));
    }
    let aborted = if via_cli {
        out.status.code() == Some(128 + libc::SIGABRT)
    } else {
        out.status.signal() == Some(libc::SIGABRT)
    };
    if !aborted {
        return Err(format!(
            "not aborted (expected SIGABRT{}): {:?}",
            if via_cli { ", exit code 134" } else { "" },
            out.status
        ));
    }
    Ok(())
}

/// Runs every case with `run` and fails with all the wrong ones at once.
fn check_cases(
    what: &str,
    cases: &[Case],
    via_cli: bool,
    source: &str,
    run: impl Fn(&str) -> Output,
) {
    let mut failures = Vec::new();
    for c in cases {
        let out = run(c.name);
        if let Err(e) = check_case(c, &out, via_cli, source) {
            failures.push(format!("{what} {}: {e}\n{}", c.name, describe(&out)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

fn check_c_cases(cases: &[Case]) {
    check_cases("misuse.c", cases, true, "misuse.c", |name| {
        heapkeep_check(&[], misuse_c(), &[name])
    });
}

fn check_rust_cases(cases: &[Case]) {
    check_cases("check_misuse", cases, false, "check_misuse.rs", |name| {
        run_checked(check_misuse_rs(), &[name], &[])
    });
}

// ---------------------------------------------------------------------------
// Leak reports

/// One leak site: bytes, blocks, frame lines.
#[derive(Debug)]
struct LeakSite {
    bytes: u64,
    blocks: u64,
    frames: Vec<String>,
}

/// Parses `  <bytes> bytes in <count> blocks allocated at:`.
fn leak_site_header(line: &str) -> Option<(u64, u64)> {
    let inner = line
        .strip_prefix("  ")?
        .strip_suffix(" blocks allocated at:")?;
    let (bytes, blocks) = inner.split_once(" bytes in ")?;
    Some((bytes.parse().ok()?, blocks.parse().ok()?))
}

/// The leak report: its summary line and its sites. `Err` if there is none
/// or a site is malformed.
fn parse_leaks(stderr: &str) -> Result<(String, Vec<LeakSite>), String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("heapkeep: leak: "))
        .ok_or("no `heapkeep: leak: ` line on stderr")?;
    let mut sites: Vec<LeakSite> = Vec::new();
    for line in &lines[start + 1..] {
        if let Some((bytes, blocks)) = leak_site_header(line) {
            sites.push(LeakSite {
                bytes,
                blocks,
                frames: Vec::new(),
            });
        } else if let Some(frame) = line.strip_prefix("    #") {
            match sites.last_mut() {
                Some(s) => s.frames.push(format!("#{frame}")),
                None => return Err(format!("a frame before any leak site: {line:?}")),
            }
        } else {
            break;
        }
    }
    for s in &sites {
        if s.frames.is_empty() {
            return Err(format!("leak site {s:?} has no frames"));
        }
        for (n, f) in s.frames.iter().enumerate() {
            check_frame(f, n)?;
        }
    }
    if sites.windows(2).any(|w| w[0].bytes < w[1].bytes) {
        return Err(format!("leak sites not ordered by leaked bytes: {sites:?}"));
    }
    Ok((lines[start].to_string(), sites))
}

/// Checks a leak report: the exact summary line, and a site with exactly
/// `bytes` in `blocks` whose frames name `function` (with `source:<line>`)
/// for each of `sites`; no other site.
fn check_leaks(
    out: &Output,
    summary: &str,
    sites: &[(u64, u64, &str)],
    source: &str,
) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (line, found) = parse_leaks(&stderr)?;
    if line != summary {
        return Err(format!("leak line {line:?}, expected {summary:?}"));
    }
    let others: Vec<String> = heapkeep_lines(out)
        .into_iter()
        .filter(|l| *l != line)
        .collect();
    if !others.is_empty() {
        return Err(format!("other heapkeep lines: {others:?}"));
    }
    if found.len() != sites.len() {
        return Err(format!(
            "{} leak sites, expected {}",
            found.len(),
            sites.len()
        ));
    }
    for &(bytes, blocks, function) in sites {
        let site = found
            .iter()
            .find(|s| s.bytes == bytes && s.blocks == blocks)
            .ok_or_else(|| format!("no site of {bytes} bytes in {blocks} blocks"))?;
        match site.frames.iter().find(|f| names_function(f, function)) {
            None => {
                return Err(format!(
                    "the site of {bytes} bytes does not name {function}"
                ))
            }
            Some(f) if !f.contains(&format!("{source}:")) => {
                return Err(format!(
                    "the frame of {function} has no {source}:<line>: {f:?}"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn assert_leaks(out: &Output, code: i32, summary: &str, sites: &[(u64, u64, &str)], source: &str) {
    let result = check_leaks(out, summary, sites, source).and_then(|()| {
        if out.status.code() == Some(code) {
            Ok(())
        } else {
            Err(format!("exit status {:?}, expected {code}", out.status))
        }
    });
    if let Err(e) = result {
        panic!("{e}\n{}", describe(out));
    }
}

/// A correct program under check mode: exit status 0, no `heapkeep:` line.
fn assert_silent(out: &Output, what: &str) {
    assert!(
        out.status.success() && heapkeep_lines(out).is_empty(),
        "{what} under check mode: expected exit 0 and nothing from heapkeep\n{}",
        describe(out)
    );
}

// ---------------------------------------------------------------------------
// The C misuse catalog, through `heapkeep check`

#[test]
fn c_double_free() {
    check_c_cases(&[
        case(
            "double-free-small",
            "double-free",
            Named("free_again_site"),
            Named("alloc_site_small"),
            Named("free_site"),
            Unchecked,
        ),
        case(
            "double-free-small-later",
            "double-free",
            Named("free_again_site"),
            Named("alloc_site_small"),
            Named("free_site"),
            Unchecked,
        ),
        case(
            "double-free-large",
            "double-free",
            Named("free_again_site"),
            Named("alloc_site_large"),
            Named("free_site"),
            Unchecked,
        ),
    ]);
}

#[test]
fn c_invalid_free() {
    let not_heap = |name, here| case(name, "invalid-free", Named(here), Absent, Absent, Unchecked);
    check_c_cases(&[
        // An interior pointer: the block it points into is known.
        case(
            "invalid-free-interior",
            "invalid-free",
            Named("invalid_free_site"),
            Named("alloc_site_small"),
            Absent,
            Unchecked,
        ),
        not_heap("invalid-free-stack", "invalid_free_site"),
        not_heap("invalid-free-global", "invalid_free_site"),
        not_heap("invalid-free-wild", "invalid_free_site"),
        not_heap("invalid-realloc-stack", "invalid_realloc_site"),
        not_heap("invalid-usable-size", "usable_size_site"),
    ]);
}

#[test]
fn c_use_after_free() {
    let uaf = |name, here, alloc| {
        case(
            name,
            "use-after-free",
            here,
            Named(alloc),
            Named("free_site"),
            Unchecked,
        )
    };
    check_c_cases(&[
        // Found when the freed block is verified at exit: `here` is the
        // exit path.
        uaf("uaf-write-small", Any, "alloc_site_small"),
        uaf("uaf-read-large", Named("uaf_read_site"), "alloc_site_large"),
        // In a mapping an earlier block left behind (kept for reuse).
        uaf(
            "uaf-read-large-reused",
            Named("uaf_read_site"),
            "alloc_site_large",
        ),
        uaf(
            "uaf-write-large",
            Named("uaf_write_site"),
            "alloc_site_large",
        ),
        uaf("uaf-realloc", Named("uaf_realloc_site"), "alloc_site_small"),
    ]);
}

#[test]
fn c_overflow_and_underflow() {
    check_c_cases(&[
        // Found by free.
        case(
            "overflow-small",
            "heap-overflow",
            Named("free_site"),
            Named("alloc_site_small"),
            Any,
            Exactly(100),
        ),
        // Found at exit; the block was never freed.
        case(
            "overflow-small-exit",
            "heap-overflow",
            Any,
            Named("alloc_site_small"),
            Absent,
            Exactly(100),
        ),
        case(
            "underflow-small",
            "heap-underflow",
            Named("free_site"),
            Named("alloc_site_small"),
            Any,
            Mentioned,
        ),
        // Found by the guard page: the access itself.
        case(
            "overflow-large-read",
            "heap-overflow",
            Named("overflow_read_site"),
            Named("alloc_site_large"),
            Absent,
            AtLeast(1 << 20),
        ),
        // In a mapping an earlier block left behind: its guard page is
        // still a guard.
        case(
            "overflow-large-reused-read",
            "heap-overflow",
            Named("overflow_read_site"),
            Named("alloc_site_large"),
            Absent,
            AtLeast(1 << 20),
        ),
        case(
            "underflow-large",
            "heap-underflow",
            Named("underflow_write_site"),
            Named("alloc_site_large"),
            Absent,
            Mentioned,
        ),
    ]);
}

#[test]
fn c_stack_overflow() {
    check_c_cases(&[
        case(
            "stack-overflow",
            "stack-overflow",
            Named("stack_overflow_recurse"),
            Absent,
            Absent,
            Unchecked,
        ),
        // The thread's alternate signal stack is set up when it starts
        // (the preload library's pthread_create), not at its first heap
        // call, which this thread never makes.
        case(
            "stack-overflow-thread",
            "stack-overflow",
            Named("stack_overflow_recurse"),
            Absent,
            Absent,
            Unchecked,
        ),
    ]);
}

// ---------------------------------------------------------------------------
// Leaks (tests/c/check/leaks.c)

/// The sites of leaks.c's unreferenced blocks, largest first.
const C_LEAKED: &[(u64, u64, &str)] = &[(1000, 2, "leak_site_pair"), (700, 3, "leak_site_triple")];

#[test]
fn c_leaks_counted_exactly() {
    let out = heapkeep_check(&[], leaks_c(), &[]);
    assert_leaks(
        &out,
        0,
        "heapkeep: leak: 1700 bytes in 5 blocks",
        C_LEAKED,
        "leaks.c",
    );
}

#[test]
fn c_leaks_all_counts_referenced_blocks_too() {
    let mut sites = C_LEAKED.to_vec();
    sites.push((100, 2, "keep_site"));
    let out = heapkeep_check(&["--leaks", "all"], leaks_c(), &[]);
    assert_leaks(
        &out,
        0,
        "heapkeep: leak: 1800 bytes in 7 blocks",
        &sites,
        "leaks.c",
    );
}

#[test]
fn c_leak_exit_code_and_leaks_off() {
    // The variable, set directly on a preloaded run.
    let out = hermetic(leaks_c())
        .env("LD_PRELOAD", preload_lib())
        .env("HEAPKEEP_CHECK", "1")
        .env("HEAPKEEP_CHECK_LEAK_EXIT_CODE", "23")
        .output()
        .unwrap();
    assert_leaks(
        &out,
        23,
        "heapkeep: leak: 1700 bytes in 5 blocks",
        C_LEAKED,
        "leaks.c",
    );
    // The flag.
    let out = heapkeep_check(&["--leak-exit-code", "23"], leaks_c(), &[]);
    assert_leaks(
        &out,
        23,
        "heapkeep: leak: 1700 bytes in 5 blocks",
        C_LEAKED,
        "leaks.c",
    );
    // No leak search: nothing reported, the program's own status.
    let out = heapkeep_check(&["--leaks", "0", "--leak-exit-code", "23"], leaks_c(), &[]);
    assert_silent(&out, "leaks.c with --leaks 0");
}

// ---------------------------------------------------------------------------
// Correct C and C++ programs

#[test]
fn c_clean_api_edge_cases_silent() {
    let out = heapkeep_check(&[], api_c(), &[]);
    assert_silent(&out, "api.c");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn c_clean_threads_and_fork_silent() {
    let out = heapkeep_check(&[], threads_c(), &[]);
    assert_silent(&out, "threads.c");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn cpp_clean_containers_silent_and_same_output() {
    let exe = compile("c++", "containers.cpp", "containers", &["-std=c++17"]);
    let plain = hermetic(exe).output().unwrap();
    assert!(plain.status.success(), "{}", describe(&plain));
    let out = heapkeep_check(&[], exe, &[]);
    assert_silent(&out, "containers.cpp");
    assert_eq!(out.stdout, plain.stdout);
}

// ---------------------------------------------------------------------------
// The Rust catalog (heapkeep as the global allocator, HEAPKEEP_CHECK=1)

#[test]
fn rust_double_free_and_use_after_free() {
    check_rust_cases(&[
        case(
            "double-free",
            "double-free",
            Named("free_again_site"),
            Named("alloc_site_small"),
            Named("free_site"),
            Unchecked,
        ),
        case(
            "uaf-write",
            "use-after-free",
            Any,
            Named("alloc_site_small"),
            Named("free_site"),
            Unchecked,
        ),
    ]);
}

/// A block freed by another thread than the one that allocated it lives in
/// the allocating thread's shard of the check state: the second free, the
/// write after the free and the leak sum find it there, and a large block
/// is found when the shard hint of its address range names another shard.
#[test]
fn rust_misuse_across_threads() {
    check_rust_cases(&[
        case(
            "double-free-threads",
            "double-free",
            Named("free_again_site"),
            Named("alloc_site_small"),
            Named("free_site"),
            Unchecked,
        ),
        case(
            "double-free-large-threads",
            "double-free",
            Named("free_again_site"),
            Named("alloc_site_large"),
            Named("free_site"),
            Unchecked,
        ),
        case(
            "uaf-write-threads",
            "use-after-free",
            Any,
            Named("alloc_site_small"),
            Named("free_site"),
            Unchecked,
        ),
    ]);
    let out = run_checked(check_misuse_rs(), &["leak-threads"], &[]);
    assert_leaks(
        &out,
        0,
        "heapkeep: leak: 2400 bytes in 8 blocks",
        &[(2400, 8, "leak_site_pair")],
        "check_misuse.rs",
    );
}

#[test]
fn rust_every_class_small_and_large() {
    check_rust_cases(&[
        case(
            "double-free-large",
            "double-free",
            Named("free_again_site"),
            Named("alloc_site_large"),
            Named("free_site"),
            Unchecked,
        ),
        case(
            "invalid-free-stack",
            "invalid-free",
            Named("invalid_free_site"),
            Absent,
            Absent,
            Unchecked,
        ),
        case(
            "invalid-free-interior",
            "invalid-free",
            Named("invalid_free_site"),
            Named("alloc_site_small"),
            Absent,
            Unchecked,
        ),
        case(
            "uaf-read-large",
            "use-after-free",
            Named("bad_read_site"),
            Named("alloc_site_large"),
            Named("free_site"),
            Exactly(4096 * 3),
        ),
        case(
            "overflow-large-read",
            "heap-overflow",
            Named("bad_read_site"),
            Named("alloc_site_large"),
            Absent,
            AtLeast(1 << 20),
        ),
        case(
            "underflow",
            "heap-underflow",
            Named("free_site"),
            Named("alloc_site_small"),
            Any,
            Mentioned,
        ),
        case(
            "stack-overflow",
            "stack-overflow",
            Named("stack_overflow_recurse"),
            Absent,
            Absent,
            Unchecked,
        ),
    ]);
}

#[test]
fn rust_overflow() {
    check_rust_cases(&[case(
        "overflow",
        "heap-overflow",
        Named("free_site"),
        Named("alloc_site_small"),
        Any,
        Exactly(100),
    )]);
}

#[test]
fn rust_layout_mismatch() {
    check_rust_cases(&[
        case(
            "layout-mismatch-size",
            "layout-mismatch",
            Named("free_wrong_layout_site"),
            Named("alloc_site_small"),
            Absent,
            Unchecked,
        ),
        case(
            "layout-mismatch-align",
            "layout-mismatch",
            Named("free_wrong_layout_site"),
            Named("alloc_site_aligned"),
            Absent,
            Unchecked,
        ),
        case(
            "realloc-layout-mismatch",
            "layout-mismatch",
            Named("realloc_wrong_layout_site"),
            Named("alloc_site_small"),
            Absent,
            Unchecked,
        ),
    ]);
}

#[test]
fn rust_leaks_counted_exactly() {
    // Only our boxes: what the Rust runtime still holds at exit is
    // referenced from its globals and thread-locals.
    let sites = [(1000, 2, "leak_site_pair"), (700, 3, "leak_site_triple")];
    let out = run_checked(check_misuse_rs(), &["leak"], &[]);
    assert_leaks(
        &out,
        0,
        "heapkeep: leak: 1700 bytes in 5 blocks",
        &sites,
        "check_misuse.rs",
    );
    let out = run_checked(
        check_misuse_rs(),
        &["leak"],
        &[("HEAPKEEP_CHECK_LEAK_EXIT_CODE", "23")],
    );
    assert_leaks(
        &out,
        23,
        "heapkeep: leak: 1700 bytes in 5 blocks",
        &sites,
        "check_misuse.rs",
    );
}

#[test]
fn rust_clean_silent() {
    let out = run_checked(check_misuse_rs(), &["clean"], &[]);
    assert_silent(&out, "check_misuse clean");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn rust_through_heapkeep_check() {
    let out = heapkeep_check(&[], check_misuse_rs(), &["clean"]);
    assert_silent(&out, "heapkeep check -- check_misuse clean");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    check_cases(
        "heapkeep check -- check_misuse",
        &[case(
            "double-free",
            "double-free",
            Named("free_again_site"),
            Named("alloc_site_small"),
            Named("free_site"),
            Unchecked,
        )],
        true,
        "check_misuse.rs",
        |name| heapkeep_check(&[], check_misuse_rs(), &[name]),
    );
}

// ---------------------------------------------------------------------------
// The `heapkeep check` verb itself

#[test]
fn check_help_lists_every_option() {
    let out = hermetic(heapkeep_cmd())
        .args(["check", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--lib",
        "--keep-going",
        "--leaks",
        "--leak-exit-code",
        "--quarantine-mb",
    ] {
        assert!(help.contains(flag), "no {flag} in:\n{help}");
    }
    assert!(!heapkeep::check::OPTIONS.is_empty());
    for o in heapkeep::check::OPTIONS {
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(o.env))
            .unwrap_or_else(|| panic!("no line for {} in:\n{help}", o.env));
        assert!(
            line.contains(o.default) && line.contains(o.meaning),
            "{} listed without its default {:?} or meaning {:?}: {line:?}",
            o.env,
            o.default,
            o.meaning
        );
    }
    let out = hermetic(heapkeep_cmd()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("check"), "{help}");
}

#[test]
fn check_sets_the_environment_and_passes_output_and_status_through() {
    let script = "echo \"$HEAPKEEP_CHECK $HEAPKEEP_CHECK_KEEP_GOING $HEAPKEEP_CHECK_LEAKS \
                  $HEAPKEEP_CHECK_LEAK_EXIT_CODE $HEAPKEEP_CHECK_QUARANTINE_MB \
                  ${HEAPKEEP_CHECK_REDZONE-unset}\"; \
                  case \"$LD_PRELOAD\" in /*/libheapkeep_preload.so) echo preloaded;; esac; \
                  echo to-stderr >&2; exit 3";
    let args = [
        "--keep-going",
        "--leaks",
        "0",
        "--leak-exit-code",
        "9",
        "--quarantine-mb",
        "5",
    ];
    let out = heapkeep_check(&args, Path::new("sh"), &["-c", script]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1 1 0 9 5 unset\npreloaded\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");

    // Killed by a signal: 128 + N.
    let out = heapkeep_check(&["--leaks", "0"], Path::new("sh"), &["-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "{}", describe(&out));
}

#[test]
fn check_rejects_bad_flags_and_a_missing_library() {
    let out = hermetic(heapkeep_cmd())
        .args(["check", "--leaks", "some", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = hermetic(heapkeep_cmd())
        .args([
            "check",
            "--lib",
            "/nonexistent/libheapkeep.so",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no heapkeep library at /nonexistent/libheapkeep.so"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// The readers themselves, on reports written by hand

#[test]
fn report_readers_accept_the_documented_format_and_reject_others() {
    let good = "program output\n\
heapkeep: error: double-free on 0x7f00aa001000\n  \
a 100-byte block at 0x7f00aa001000, freed twice\n  \
here (thread 42):\n    \
#0 0x401136 in free_again_site /src/misuse.c:40\n    \
#1 0x401200 in main /src/misuse.c:90\n  \
allocated (thread 42):\n    \
#0 0x401100 in alloc_site_small /src/misuse.c:30\n  \
freed (thread 42):\n    \
#0 0x401120 in free_site /src/misuse.c:35\n\
heapkeep: aborting\n";
    let r = parse_error(good).unwrap();
    assert_eq!(r.class, "double-free");
    assert_eq!(r.sections.len(), 3);
    assert_eq!(r.section("here").unwrap().thread, "42");
    let c = case(
        "x",
        "double-free",
        Named("free_again_site"),
        Named("alloc_site_small"),
        Named("free_site"),
        Unchecked,
    );
    assert!(check_site(&r, "freed", c.freed, "misuse.c").is_ok());
    assert!(check_site(&r, "freed", Named("invalid_free_site"), "misuse.c").is_err());
    assert!(check_site(&r, "allocated", Absent, "misuse.c").is_err());
    for bad in [
        good.replace("error: double-free on", "error: double-free at"),
        good.replace("0x7f00aa001000\n", "0x7F00AA001000\n"),
        good.replace("heapkeep: aborting\n", ""),
        good.replace("#1 0x401200", "#2 0x401200"),
    ] {
        assert!(parse_error(&bad).is_err(), "{bad}");
    }
    assert!(names_function(
        "#0 0x1 in _ZN12check_misuse9free_site17h0123456789abcdefE",
        "free_site"
    ));
    assert!(names_function(
        "#0 0x1 in check_misuse::free_site x.rs:3",
        "free_site"
    ));
    assert!(!names_function(
        "#0 0x1 in invalid_free_site m.c:3",
        "free_site"
    ));
    assert!(!names_function(
        "#0 0x1 in _ZN12check_misuse17invalid_free_site17hE",
        "free_site"
    ));
    assert_eq!(
        offsets(&["a 100-byte block, offset 100 (1 byte past)".into()]),
        [100]
    );
    assert_eq!(offsets(&["at offset -1 of a block".into()]), [-1]);

    let leaks = "heapkeep: leak: 1700 bytes in 5 blocks\n  \
1000 bytes in 2 blocks allocated at:\n    \
#0 0x1 in leak_site_pair /src/leaks.c:3\n  \
700 bytes in 3 blocks allocated at:\n    \
#0 0x2 in leak_site_triple /src/leaks.c:9\n    \
#1 0x3 in leaker /src/leaks.c:20\n";
    let (line, sites) = parse_leaks(leaks).unwrap();
    assert_eq!(line, "heapkeep: leak: 1700 bytes in 5 blocks");
    assert_eq!(
        (sites[1].bytes, sites[1].blocks, sites[1].frames.len()),
        (700, 3, 2)
    );
    // Sites must come largest first.
    let unordered = leaks.replace("  1000 bytes in 2 blocks", "  100 bytes in 2 blocks");
    assert!(parse_leaks(&unordered).is_err());
    assert!(parse_leaks("heapkeep: error: double-free on 0x10\n").is_err());
}

// ---------------------------------------------------------------------------
// Real programs under `heapkeep check`: same output and status as a plain
// run, and no error report.

/// Runs `program args` (stdin from `input`) plainly and under
/// `heapkeep check`; asserts the same status and stdout and no
/// `heapkeep: error:` line. Returns the check run's stderr (leak lines may
/// be in it: programs that leave memory allocated at exit on purpose).
fn same_under_check(program: &str, args: &[&str], env: &[(&str, &str)], input: &str) -> String {
    use std::io::Write;
    let run = |mut cmd: Command| -> Output {
        cmd.envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {program}: {e}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let which = |p: &str| -> PathBuf {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .unwrap();
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    };
    let exe = which(program);
    let mut plain = hermetic(&exe);
    plain.args(args);
    let plain = run(plain);
    let mut checked = hermetic(heapkeep_cmd());
    checked.arg("check").arg("--").arg(&exe).args(args);
    let checked = run(checked);
    let err = String::from_utf8_lossy(&checked.stderr).to_string();
    assert!(
        !err.contains("heapkeep: error:"),
        "{program} under check mode reported an error:\n{err}"
    );
    assert_eq!(
        checked.status.code(),
        plain.status.code(),
        "{program}: {err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&plain.stdout),
        "{program}: output differs under check mode"
    );
    err
}

#[test]
fn real_programs_run_clean_under_check() {
    // Python frees what it holds at exit: no leak either.
    let err = same_under_check(
        "python3",
        &[workspace()
            .join("examples/alloc_heavy.py")
            .to_str()
            .unwrap()],
        &[],
        "",
    );
    assert!(!err.contains("heapkeep:"), "python3: {err}");
    // Perl frees everything at exit only when asked to.
    let err = same_under_check(
        "perl",
        &["-e", "my %h; $h{$_} = 'x' x ($_ % 100) for 1..20000; my @k = sort keys %h; print scalar(@k), qq{\\n};"],
        &[("PERL_DESTRUCT_LEVEL", "2")],
        "",
    );
    assert!(!err.contains("heapkeep:"), "perl: {err}");
    same_under_check(
        "sqlite3",
        &[":memory:"],
        &[],
        "create table t(a, b);\n\
         with recursive c(x) as (select 1 union all select x + 1 from c where x < 20000)\n\
         insert into t select x, hex(randomblob(16)) from c;\n\
         create index i on t(b);\n\
         select count(*), sum(length(b)) from t;\n",
    );
    same_under_check(
        "git",
        &[
            "-C",
            workspace().to_str().unwrap(),
            "log",
            "--stat",
            "-n",
            "50",
            "--format=%s",
        ],
        &[],
        "",
    );
    // gcc's driver, cc1 and as (which leaves its tables allocated at exit).
    let out = workspace().join("target").join("check-tests").join("api.o");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    same_under_check(
        "gcc",
        &[
            "-O2",
            "-c",
            "-o",
            out.to_str().unwrap(),
            workspace().join("tests/c/api.c").to_str().unwrap(),
        ],
        &[],
        "",
    );
}

// ---------------------------------------------------------------------------
// The sampled guard of fast mode (HEAPKEEP_GUARD_SAMPLE; no check mode)

/// Runs tests/c/check/guard.c `case` on the preload library in fast mode,
/// sampling every slow-path allocation.
fn guard_run(case: &str) -> Output {
    hermetic(guard_c())
        .arg(case)
        .env("LD_PRELOAD", preload_lib())
        .env("HEAPKEEP_GUARD_SAMPLE", "1")
        .output()
        .expect("run guard.c")
}

#[test]
fn sampled_guard_catches_overflow_and_use_after_free() {
    for (case, class, freed) in [
        ("overflow", "heap-overflow", false),
        ("uaf", "use-after-free", true),
    ] {
        let out = guard_run(case);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{case}: {}",
            describe(&out)
        );
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.starts_with(&format!("heapkeep: error: {class} on 0x")),
            "{case}: {err}"
        );
        assert!(err.contains("sampled by the guard"), "{case}: {err}");
        let allocated = err.split("  allocated").nth(1).unwrap_or("");
        assert!(
            names_function(allocated, "guard_alloc_site"),
            "{case}: {err}"
        );
        assert!(
            names_function(
                err.split("  here").nth(1).unwrap_or(""),
                "guard_bad_read_site"
            ),
            "{case}: {err}"
        );
        if freed {
            let freed = err.split("  freed").nth(1).unwrap_or("");
            assert!(names_function(freed, "guard_free_site"), "{case}: {err}");
        }
        assert!(!String::from_utf8_lossy(&out.stdout).contains("not caught"));
    }
}

#[test]
fn sampled_guard_is_silent_on_correct_programs() {
    let out = guard_run("clean");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert!(out.stderr.is_empty(), "{}", describe(&out));
    // The C API edge cases and threads with every slow-path block sampled.
    for (src, exe) in [("api.c", api_c()), ("threads.c", threads_c())] {
        let out = hermetic(exe)
            .env("LD_PRELOAD", preload_lib())
            .env("HEAPKEEP_GUARD_SAMPLE", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{src}: {}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{src}");
    }
}

#[test]
fn keep_going_reports_and_continues() {
    // The misuse is reported, and the program runs to its end.
    let out = heapkeep_check(&["--keep-going"], misuse_c(), &["double-free-small"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("heapkeep: error: double-free on 0x"),
        "{}",
        describe(&out)
    );
    assert!(!err.contains("heapkeep: aborting"), "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // The program said it was still running after the misuse.
    assert!(err.contains("still running"), "{}", describe(&out));
    // A bad option value warns and keeps the default (abort on error).
    let out = hermetic(misuse_c())
        .arg("double-free-small")
        .env("LD_PRELOAD", preload_lib())
        .env("HEAPKEEP_CHECK", "1")
        .env("HEAPKEEP_CHECK_KEEP_GOING", "maybe")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("heapkeep: warning: ignoring HEAPKEEP_CHECK_KEEP_GOING=maybe"),
        "{}",
        describe(&out)
    );
    assert!(err.contains("heapkeep: aborting"), "{}", describe(&out));
    assert_eq!(out.status.signal(), Some(libc::SIGABRT));
}
