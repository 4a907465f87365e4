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
            &["-O1", "-g", "-fno-builtin", &include],
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

/// [`heapkeep`] with fast mode for its program even when these tests run
/// in check mode (`.ci/tests-under-check` sets HEAPKEEP_CHECK=1).
fn heapkeep_fast(args: &[&str]) -> Output {
    Command::new(heapkeep_cmd())
        .args(args)
        .env_remove("HEAPKEEP_LIB")
        .env_remove("HEAPKEEP_CHECK")
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

/// `run` gives each thread's peak stack use against its stack's size:
/// tests/c/stacks.c sends threads to known depths (16 KiB frames, so the
/// deepest touched page is within a frame of the asked depth), including a
/// thread that gets the cached stack of one that went deep before it.
#[test]
fn run_measures_how_deep_each_stack_went() {
    let dir = tempdir();
    let exe = dir.join("stacks");
    compile_c("cc", "stacks.c", &exe, &["-O1", "-pthread"], &[]);
    let path = dir.join("stacks.json");
    let out = heapkeep(&[
        "run",
        "--json",
        path.to_str().unwrap(),
        "--",
        exe.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // glibc gave `second` the stack `first` used: the figure below is only
    // meaningful then.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "reused 1\n");
    let v = json(&path);
    assert_eq!(num(&v, "threads_measured"), 5, "{v}");
    let rows = v["stacks"].as_array().expect("stacks listed");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {v}"))
    };
    const K: u64 = 1024;
    // (name, asked depth, stack size); the top of a thread's stack also
    // holds glibc's thread descriptor and TLS, and the main thread's its
    // arguments and environment: allow 64 KiB above the asked depth.
    let main_name = exe.file_name().unwrap().to_str().unwrap();
    for (name, depth, size) in [
        ("deep", 1024 * K, Some(4096 * K)),
        ("shallow", 64 * K, Some(2048 * K)),
        ("first", 768 * K, Some(1024 * K)),
        ("second", 32 * K, Some(1024 * K)),
        (main_name, 512 * K, None),
    ] {
        let r = row(name);
        let peak = num(r, "peak_bytes");
        assert!(
            peak >= depth && peak <= depth + 64 * K,
            "{name}: peak {peak} for a depth of {depth}: {r}"
        );
        if let Some(size) = size {
            assert_eq!(num(r, "size_bytes"), size, "{r}");
            assert_eq!(r["running"], false, "{r}");
            assert_eq!(r["main"], false, "{r}");
        } else {
            assert!(num(r, "size_bytes") >= 512 * K, "{r}");
            assert_eq!(r["main"], true, "{r}");
        }
    }
    // Deepest first, in the JSON and in the text summary.
    let peaks: Vec<u64> = rows.iter().map(|r| num(r, "peak_bytes")).collect();
    assert!(peaks.windows(2).all(|w| w[0] >= w[1]), "{peaks:?}");
    assert!(err.contains("stacks 5 thread(s) measured"), "{err}");
    let deep_line = err.find("\"deep\": peak 1.").expect("deep thread's line");
    let second_line = err.find("\"second\": peak ").expect("second's line");
    assert!(deep_line < second_line, "{err}");
    assert!(err.contains("of 4.00 MiB"), "{err}");
}

/// A Rust program that uses heapkeep as its global allocator has a copy of
/// heapkeep of its own beside the C heap that `run` preloads: the summary
/// counts both (the program's 20,000 `hot_site`/`cold_site` pairs go
/// through its own copy; only a few calls of libc and std reach the C
/// heap), and says so.
#[test]
fn run_counts_a_rust_programs_own_heapkeep_too() {
    let dir = tempdir();
    let path = dir.join("rust-program.json");
    let out = heapkeep_fast(&[
        "run",
        "--json",
        path.to_str().unwrap(),
        "--",
        env!("CARGO_BIN_EXE_profile_target"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done 101000000\n");
    assert!(err.contains("two heaps"), "{err}");
    let v = json(&path);
    assert_eq!(num(&v, "heaps"), 2, "{v}");
    // 40,000 vectors and their frees, plus the few calls of start-up.
    let allocs = num(&v, "allocs");
    assert!((40_000..40_500).contains(&allocs), "allocs {allocs}");
    assert!(num(&v, "frees") >= 40_000, "{v}");
    assert!(num(&v, "bytes_allocated") >= 101_000_000, "{v}");
    assert!(num(&v, "peak_live_bytes") >= 5_000, "{v}");
}

/// Taking a profile allocates nothing through the heap being profiled:
/// counts.c checks its exact counts (calls, live blocks and bytes, the
/// heap walk's figures) while every allocation is recorded (a stack
/// captured and interned for each) and while 1 KiB sampling takes samples
/// inside its loops.
#[test]
fn profiling_allocates_nothing_through_the_programs_heap() {
    let dir = tempdir();
    for (name, options) in [("every", &["--every"][..]), ("sampled", &["--rate", "1K"])] {
        let path = dir.join(format!("counts-{name}.json"));
        let mut args = vec!["profile"];
        args.extend(options);
        args.extend(["--out", path.to_str().unwrap(), "--"]);
        args.extend([counts_program().to_str().unwrap(), "2000", "0"]);
        let out = heapkeep_fast(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok 2000\n", "{err}");
        assert!(path.exists(), "{name}: no profile\n{err}");
    }
}

/// Writing the profile at exit (its stacks symbolized to file:line by a
/// forked `addr2line`) allocates nothing through the program's heap: the
/// exit report, which the C front writes after the profile, counts the
/// same calls with and without a profile that records every allocation.
#[test]
fn writing_the_profile_at_exit_allocates_nothing_through_the_programs_heap() {
    let dir = tempdir();
    let run = |name: &str, profile: bool| -> serde_json::Value {
        let prefix = dir.join(format!("exit-{name}"));
        let lib = heapkeep_cmd().with_file_name("libheapkeep_preload.so");
        let mut cmd = Command::new(counts_program());
        // Preloaded, so that no other copy on LD_LIBRARY_PATH (cargo's
        // target/debug) serves the program.
        cmd.args(["2000", "0"])
            .env("LD_PRELOAD", lib)
            .env_remove("HEAPKEEP_CHECK")
            .env_remove("HEAPKEEP_PROFILE")
            .env("HEAPKEEP_REPORT", &prefix)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if profile {
            cmd.env("HEAPKEEP_PROFILE", "1")
                .env("HEAPKEEP_PROFILE_RATE", "1")
                .env(
                    "HEAPKEEP_PROFILE_OUT",
                    dir.join(format!("exit-{name}.json")),
                );
        }
        let child = cmd.spawn().expect("run counts");
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok 2000\n", "{err}");
        json(&dir.join(format!("exit-{name}.{pid}")))
    };
    let plain = run("plain", false);
    let profiled = run("profiled", true);
    // (Usable sizes differ: sampled blocks come from the profile's heap.)
    for key in [
        "allocs",
        "frees",
        "reallocs",
        "bytes_requested",
        "live_blocks_at_exit",
    ] {
        assert_eq!(plain[key], profiled[key], "{key}: {plain} / {profiled}");
    }
    assert!(plain["allocs"].as_u64().unwrap() >= 2000, "{plain}");
    // The profile was written, its frames symbolized to the program's source.
    let text = std::fs::read_to_string(dir.join("exit-profiled.json")).unwrap();
    assert!(
        text.contains("counts.c:"),
        "no symbolized frame of counts.c"
    );
}
