//! The `heapkeep` command: `run` passes the program's output and exit status
//! through and prints a summary whose counts are exact; the C extension API
//! (`heapkeep.h`) reports the same counts from inside the program.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use heapkeep_tests::{compile_c, heapkeep_cmd, workspace};

/// Compiles tests/c/counts.c against heapkeep.h, linked with the library.
fn counts_program() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let lib_dir = heapkeep_cmd().parent().unwrap().to_path_buf();
        let out = lib_dir.join("counts");
        let include = format!("-I{}", workspace().join("preload/include").display());
        let libs = format!("-L{}", lib_dir.display());
        let rpath = format!("-Wl,-rpath,{}", lib_dir.display());
        compile_c(
            "cc",
            "counts.c",
            &out,
            &["-O1", "-fno-builtin", &include],
            &[&libs, "-lheapkeep_preload", &rpath],
        );
        out
    })
}

fn heapkeep(args: &[&str]) -> Output {
    Command::new(heapkeep_cmd())
        .args(args)
        .env_remove("HEAPKEEP_LIB")
        .output()
        .expect("run heapkeep")
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("summary JSON written");
    serde_json::from_str(&text).expect("summary is JSON")
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("key {key} missing in {v}"))
}

#[test]
fn help_documents_the_run_verb() {
    let out = heapkeep(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run") && text.contains("Usage"), "{text}");
    let out = heapkeep(&["run", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--json") && text.contains("summary"),
        "{text}"
    );
}

#[test]
fn run_counts_the_programs_own_calls_exactly() {
    let dir = tempdir();
    let exe = counts_program().to_str().unwrap().to_string();
    let mut results = Vec::new();
    for n in ["0", "5000"] {
        let path = dir.join(format!("summary-{n}.json"));
        let out = heapkeep(&["run", "--json", path.to_str().unwrap(), "--", &exe, n, "3"]);
        // Status and output pass through; the summary goes to stderr.
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("ok {n}\n"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("exited with status 3"), "{err}");
        assert!(err.contains("allocations") && err.contains("peak"), "{err}");
        results.push(json(&path));
    }
    let (a, b) = (&results[0], &results[1]);
    for key in [
        "allocs",
        "frees",
        "reallocs",
        "bytes_allocated",
        "peak_live_bytes",
        "live_bytes_at_exit",
        "live_blocks_at_exit",
        "os_mapped_peak_bytes",
    ] {
        num(a, key);
    }
    // The same program with 5000 more malloc/free pairs and 3 reallocs
    // (libc's own start-up and exit allocations are the same in both runs).
    assert_eq!(num(b, "allocs") - num(a, "allocs"), 5000);
    assert_eq!(num(b, "frees") - num(a, "frees"), 5000);
    assert_eq!(num(b, "reallocs") - num(a, "reallocs"), 3);
    assert_eq!(num(b, "live_blocks_at_exit"), num(a, "live_blocks_at_exit"));
    assert_eq!(num(b, "live_bytes_at_exit"), num(a, "live_bytes_at_exit"));
    assert!(num(b, "peak_live_bytes") >= num(a, "peak_live_bytes") + 5000 * 1000);
    assert!(num(b, "os_mapped_peak_bytes") >= num(b, "peak_live_bytes"));
    assert_eq!(b["ending"]["exited"], 3);
}

#[test]
fn run_reports_signals_and_missing_reports() {
    // Killed by a signal: 128 + N, and no report (exit handlers never ran).
    let out = heapkeep(&["run", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("killed by signal 15"), "{err}");
    assert!(err.contains("no heap report"), "{err}");
}

#[test]
fn run_without_a_library_is_a_clear_error() {
    let out = Command::new(heapkeep_cmd())
        .args(["run", "--lib", "/nonexistent/libheapkeep.so", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no heapkeep library at /nonexistent/libheapkeep.so"),
        "{err}"
    );
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("heapkeep-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Check mode counts the program's calls with the sizes it asked for (its
/// blocks' redzones and quarantine are not the program's): the same exact
/// counts as fast mode, except for realloc, which always moves a block in
/// check mode (counts.c checks reallocs only from 3 blocks on).
#[test]
fn check_mode_counts_the_programs_own_calls() {
    let out = heapkeep(&["check", "--", counts_program().to_str().unwrap(), "2", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok 2\n", "{err}");
    assert!(!err.contains("heapkeep:"), "{err}");
}
