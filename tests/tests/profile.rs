//! `heapkeep profile` and `HEAPKEEP_PROFILE=1`: the profile written at exit
//! is a DHAT file (its schema checked here: what `dh_view.html` reads) whose
//! top sites are the ones the programs were built to have
//! (tests/c/profile/top.c, the `profile_target` binary), with sampling and
//! with every allocation recorded, across threads and fork.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use heapkeep_tests::{compile_c, heapkeep_cmd, workspace};
use serde_json::Value;

fn top_program() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = workspace().join("target").join("profile-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("top");
        compile_c(
            "cc",
            "profile/top.c",
            &out,
            &["-g", "-O1", "-fno-inline"],
            &["-pthread"],
        );
        out
    })
}

/// A fresh directory for one test's profiles.
fn scratch(name: &str) -> PathBuf {
    let dir = workspace().join("target").join("profile-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The files in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn profile(args: &[&str], cwd: &Path) -> Output {
    // The profile is a fast-mode feature (check mode turns it off); these
    // tests may themselves run in check mode (.ci/tests-under-check).
    let out = Command::new(heapkeep_cmd())
        .arg("profile")
        .args(args)
        .current_dir(cwd)
        .env_remove("HEAPKEEP_CHECK")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done", "{err}");
    out
}

/// Profiles top.c (given the argument `mode`, if any) with `options` in a
/// fresh directory `name`, into `p.json` there: the run's output and the
/// profile.
fn profile_top(name: &str, options: &[&str], mode: Option<&str>) -> (Output, Value) {
    let dir = scratch(name);
    let mut args = options.to_vec();
    args.extend(["--out", "p.json", "--", top_program().to_str().unwrap()]);
    args.extend(mode);
    let out = profile(&args, &dir);
    (out, load(&dir.join("p.json")))
}

/// Reads a profile and checks it against DHAT's file format (version 2):
/// the header fields with their types, every program point's counts, and
/// frame indices that point into the frame table.
fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {e}\n{text}"));
    assert_eq!(v["dhatFileVersion"], 2);
    for key in ["mode", "verb", "tu", "Mtu", "cmd"] {
        assert!(v[key].is_string(), "{key}: {}", v[key]);
    }
    assert_eq!(v["bklt"], true);
    assert_eq!(v["bkacc"], false);
    for key in ["pid", "te", "tg", "tuth"] {
        assert!(v[key].is_u64(), "{key}: {}", v[key]);
    }
    assert!(v["tg"].as_u64() <= v["te"].as_u64());
    let ftbl = v["ftbl"].as_array().expect("ftbl");
    assert_eq!(ftbl[0], "[root]");
    assert!(ftbl.iter().all(Value::is_string));
    for pp in v["pps"].as_array().expect("pps") {
        for key in ["tb", "tbk", "tl", "mb", "mbk", "gb", "gbk", "eb", "ebk"] {
            assert!(pp[key].is_u64(), "{key} in {pp}");
        }
        let n = |k: &str| pp[k].as_u64().unwrap();
        assert!(
            n("mb") <= n("tb") && n("gb") <= n("mb") && n("eb") <= n("mb"),
            "{pp}"
        );
        let fs = pp["fs"].as_array().expect("fs");
        assert!(!fs.is_empty(), "{pp}");
        for f in fs {
            let i = f.as_u64().expect("frame index") as usize;
            assert!(i > 0 && i < ftbl.len(), "{pp}");
        }
    }
    v
}

/// The innermost frame of a program point (`0x...: function (file:line)`).
fn first_frame(v: &Value, pp: &Value) -> String {
    let f = pp["fs"][0].as_u64().unwrap() as usize;
    v["ftbl"][f].as_str().unwrap().to_string()
}

/// The sum of `key` over the program points whose innermost frame
/// contains `name` (a site called from several places is several points).
fn sum_at(v: &Value, name: &str, key: &str) -> u64 {
    v["pps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pp| first_frame(v, pp).contains(name))
        .map(|pp| pp[key].as_u64().unwrap())
        .sum()
}

/// The innermost function with the most of `key` (program points summed
/// by their innermost frame's function) and its innermost frame.
fn top_by(v: &Value, key: &str) -> (u64, String) {
    let mut best = (0, String::new());
    for pp in v["pps"].as_array().unwrap() {
        let frame = first_frame(v, pp);
        let func = frame
            .split(": ")
            .nth(1)
            .unwrap_or("")
            .split(" (")
            .next()
            .unwrap_or("")
            .to_string();
        let total = sum_at(v, &format!(": {func} ("), key);
        if total > best.0 {
            best = (total, frame);
        }
    }
    best
}

/// Asserts that `site` is the top site by `key` and that its figure lies
/// within `tol` (a fraction) of `expected` bytes; returns the site's frame.
fn assert_top_near(v: &Value, key: &str, site: &str, expected: f64, tol: f64) -> String {
    let (got, frame) = top_by(v, key);
    assert!(frame.contains(site), "{frame}");
    let got = got as f64;
    assert!((got / expected - 1.0).abs() < tol, "{site} {key} {got}");
    frame
}

#[test]
fn sampled_profile_names_the_top_sites_of_a_c_program() {
    let (out, v) = profile_top("sampled", &["--rate", "64K"], None);
    // 200 MB allocated at big_site; sampling estimates it.
    let frame = assert_top_near(&v, "tb", "big_site", 200e6, 0.25);
    assert!(frame.contains("top.c:"), "{frame}");
    let (_, frame) = top_by(&v, "gb");
    assert!(frame.contains("big_site"), "{frame}");
    assert_top_near(&v, "eb", "leaky_site", 200e3, 0.5);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("heapkeep: profile: ") && err.contains("p.json"),
        "{err}"
    );
    // The text table: each list's first site is the program's top one.
    assert!(
        first_site_listed(&err, "allocated").contains("in big_site "),
        "{err}"
    );
    assert!(
        first_site_listed(&err, "live at the peak").contains("in big_site "),
        "{err}"
    );
    assert!(
        first_site_listed(&err, "leaked at exit").contains("in leaky_site "),
        "{err}"
    );
}

/// The innermost frame of the first site of the text table's list "top
/// sites by bytes `what`:" in `err`.
fn first_site_listed(err: &str, what: &str) -> String {
    let heading = format!("top sites by bytes {what}:\n");
    let at = err
        .find(&heading)
        .unwrap_or_else(|| panic!("no {heading:?} in\n{err}"));
    let mut lines = err[at + heading.len()..].lines();
    let figure = lines.next().unwrap_or("");
    assert!(figure.trim_end().ends_with(" bytes at:"), "{figure}");
    lines.next().unwrap_or("").to_string()
}

/// The sampling rate sets how many blocks are sampled: about one per rate
/// bytes (top.c allocates about 202 MB), the default being 512 KiB.
#[test]
fn the_rate_sets_how_many_blocks_are_sampled() {
    // The summary line says how many samples were taken (the profile's
    // figures are estimates, the same whatever the rate).
    let sampled = |name: &str, options: &[&str]| -> f64 {
        let (out, _) = profile_top(name, options, None);
        let err = String::from_utf8_lossy(&out.stderr);
        let at = err
            .find("(estimated from ")
            .unwrap_or_else(|| panic!("{err}"));
        err[at + 16..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {err}"))
    };
    let fine = sampled("rate-64k", &["--rate", "64K"]);
    let default = sampled("rate-default", &[]);
    let coarse = sampled("rate-4m", &["--rate", "4M"]);
    // Expected about 3,100, 390 and 48 samples.
    assert!((1500.0..6000.0).contains(&fine), "64K: {fine}");
    assert!(
        (4.0..16.0).contains(&(fine / default)),
        "{fine} / {default}"
    );
    assert!(
        (4.0..16.0).contains(&(default / coarse)),
        "{default} / {coarse}"
    );
}

/// Many threads allocating (and sampled) while the program forks: no
/// deadlock, the parent's profile has the threads' site on top and
/// estimates its bytes, and the child writes its own with its own site.
#[test]
fn threads_sampled_while_the_program_forks() {
    let dir = scratch("threads-fork");
    profile(
        &[
            "--rate",
            "64K",
            "--out",
            "p.%p.json",
            "--",
            top_program().to_str().unwrap(),
            "threads",
        ],
        &dir,
    );
    let files = files_in(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let profiles: Vec<Value> = files.iter().map(|f| load(f)).collect();
    let parent = profiles
        .iter()
        .find(|v| sum_at(v, "child_site", "tbk") == 0)
        .expect("a profile without child_site");
    let child = profiles
        .iter()
        .find(|v| sum_at(v, "child_site", "tbk") > 0)
        .expect("the child's profile");
    assert_top_near(parent, "tb", "thread_site", 160e6, 0.25);
    assert!(sum_at(child, "child_site", "tb") > 1_000_000);
}

/// Large blocks (128 KiB to 2 MiB) are sampled where the thread's heap put
/// them, and a freed one is forgotten: only the leaked ones are live at
/// exit.
#[test]
fn large_blocks_are_sampled_in_place_and_forgotten_when_freed() {
    // (`profile` asserts that the run succeeded.)
    let (_, v) = profile_top("large", &[], Some("large"));
    // 404 blocks of 300 KiB.
    assert_top_near(&v, "tb", "large_site", 404.0 * 307_200.0, 0.25);
    // 4 blocks leaked: 1.2 MB, not the 123 MB a missed forget would leave.
    assert_top_near(&v, "eb", "large_site", 4.0 * 307_200.0, 0.6);
}

/// A sampled huge block that `realloc` moves stops being a sample (the
/// profile keeps samples by address): none is left live at exit, where a
/// missed forget would report the freed blocks as leaked.
#[test]
fn sampled_huge_blocks_moved_by_realloc_are_not_leaked() {
    let (out, v) = profile_top("remap", &["--rate", "4K"], Some("remap"));
    let err = String::from_utf8_lossy(&out.stderr);
    let moved: u32 = err
        .lines()
        .find_map(|l| l.strip_prefix("moved "))
        .unwrap_or_else(|| panic!("{err}"))
        .parse()
        .unwrap();
    assert!(moved > 0, "no block moved: {err}");
    assert!(sum_at(&v, "remap_site", "tbk") >= 7, "{err}");
    assert_eq!(sum_at(&v, "remap_site", "eb"), 0, "{err}");
}

/// Lifetimes (DHAT's `tl`, total µs over a site's blocks) and the run's
/// length (`te`) are in real microseconds: blocks that live 300 ms read
/// about that, blocks freed at once far less.
#[test]
fn lifetimes_are_in_microseconds() {
    let (_, v) = profile_top("lifetimes", &["--every"], Some("lifetimes"));
    assert_eq!(sum_at(&v, "long_site", "tbk"), 20);
    assert_eq!(sum_at(&v, "short_site", "tbk"), 20);
    let long = sum_at(&v, "long_site", "tl") as f64 / 20.0;
    let short = sum_at(&v, "short_site", "tl") as f64 / 20.0;
    // Sleeps run long, never short; a loaded machine may stretch them.
    assert!((300e3..3e6).contains(&long), "long_site lifetime {long} µs");
    assert!(short < long / 10.0, "short_site lifetime {short} µs");
    let te = v["te"].as_u64().unwrap() as f64;
    assert!((300e3..30e6).contains(&te), "te {te} µs");
}

/// A sampled profile times lifetimes with the coarse clock (whole kernel
/// ticks): still about 300 ms a block for the long site, and far less for
/// blocks freed at once (a tick at most, and seldom that).
#[test]
fn sampled_lifetimes_follow_the_coarse_clock() {
    let (_, v) = profile_top("lifetimes-sampled", &["--rate", "256"], Some("lifetimes"));
    let blocks = sum_at(&v, "long_site", "tbk") as f64;
    assert!(blocks > 0.0, "long_site was never sampled");
    let long = sum_at(&v, "long_site", "tl") as f64 / blocks;
    assert!((290e3..3e6).contains(&long), "long_site lifetime {long} µs");
    let short =
        sum_at(&v, "short_site", "tl") as f64 / sum_at(&v, "short_site", "tbk").max(1) as f64;
    assert!(short < long / 10.0, "short_site lifetime {short} µs");
}

#[test]
fn every_allocation_gives_exact_counts() {
    let (_, v) = profile_top("every", &["--every"], None);
    assert_eq!(sum_at(&v, "big_site", "tbk"), 200_000);
    assert_eq!(sum_at(&v, "big_site", "tb"), 200_000_000);
    assert_eq!(sum_at(&v, "big_site", "eb"), 0);
    assert_eq!(sum_at(&v, "small_site", "tbk"), 20_000);
    assert_eq!(sum_at(&v, "small_site", "tb"), 2_000_000);
    assert_eq!(sum_at(&v, "leaky_site", "ebk"), 50);
    assert_eq!(sum_at(&v, "leaky_site", "eb"), 200_000);
    // At the global peak one thread's 1000 live blocks (the rounds run one
    // thread after the other) were live at big_site.
    assert_eq!(sum_at(&v, "big_site", "gbk"), 1000);
}

#[test]
fn sampled_blocks_give_their_whole_usable_size() {
    // Every block is a sample, with its record just before the program's
    // pointer: writing all of malloc_usable_size (before and after a
    // realloc) must leave every record intact, so the counts stay exact.
    let (_, v) = profile_top("usable", &["--every"], Some("usable"));
    let fill: u64 = (0..64).map(|i| 1 + 97 * i).sum();
    assert_eq!(sum_at(&v, "fill_site", "tbk"), 64);
    assert_eq!(sum_at(&v, "fill_site", "tb"), fill);
    assert_eq!(sum_at(&v, "fill_site", "ebk"), 0);
    assert_eq!(sum_at(&v, "grow_site", "tbk"), 64);
    assert_eq!(sum_at(&v, "grow_site", "ebk"), 32);
}

#[test]
fn default_name_and_forked_children() {
    let dir = scratch("fork");
    // %p: parent and child each write their own.
    profile(
        &[
            "--out",
            "p.%p.json",
            "--",
            top_program().to_str().unwrap(),
            "fork",
        ],
        &dir,
    );
    let files = files_in(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    // The child keeps its parent's samples and adds its own 5000-byte
    // blocks: its profile has more big_site bytes than the parent's.
    let big: Vec<u64> = files
        .iter()
        .map(|f| sum_at(&load(f), "big_site", "tb"))
        .collect();
    assert!(big[0] != big[1], "{big:?}");
    for f in &files {
        let v = load(f);
        assert!(top_by(&v, "tb").1.contains("big_site"));
    }
    // Without --out: named after the program and its pid, in the working
    // directory; a forked child does not overwrite it.
    let dir = scratch("default");
    let out = profile(&["--", top_program().to_str().unwrap()], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = err
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .unwrap_or_else(|| panic!("{err}"));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [format!("heapkeep-profile.top.{pid}.json")]);
    load(&dir.join(&names[0]));
}

#[test]
fn a_rust_program_profiles_itself_with_the_environment_option() {
    let dir = scratch("rust");
    let path = dir.join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_profile_target"))
        .env_remove("HEAPKEEP_CHECK")
        .env("HEAPKEEP_PROFILE", "1")
        .env("HEAPKEEP_PROFILE_RATE", "256K")
        .env("HEAPKEEP_PROFILE_OUT", &path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v = load(&path);
    let (_, frame) = top_by(&v, "tb");
    assert!(
        frame.contains("hot_site") && frame.contains("profile_target.rs:"),
        "{frame}"
    );
}

/// `heapkeep profile` on a Rust program that uses heapkeep as its global
/// allocator: two copies of heapkeep profile the process (the program's
/// and the preloaded C heap). The program's copy writes `--out`; the C
/// heap's, having sampled nothing at the default rate, keeps quiet; with
/// every allocation recorded both have a profile and the C heap's goes
/// beside the program's (`.c-heap.json`) instead of over it.
#[test]
fn heapkeep_profile_runs_a_rust_program_on_heapkeep() {
    let dir = scratch("rust-cli");
    let run = |args: &[&str]| -> String {
        let out = Command::new(heapkeep_cmd())
            .arg("profile")
            .args(args)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_profile_target"))
            .current_dir(&dir)
            .env_remove("HEAPKEEP_CHECK")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "done 101000000\n");
        err
    };
    let err = run(&["--out", "r.json"]);
    assert!(!err.contains("nothing written"), "{err}");
    let v = load(&dir.join("r.json"));
    let (_, frame) = top_by(&v, "tb");
    assert!(frame.contains("hot_site"), "{frame}");
    assert!(!dir.join("r.c-heap.json").exists());

    let err = run(&["--every", "--out", "e.json"]);
    let v = load(&dir.join("e.json"));
    assert_eq!(sum_at(&v, "hot_site", "tbk"), 20_000, "{err}");
    assert_eq!(sum_at(&v, "cold_site", "tbk"), 20_000, "{err}");
    let c = load(&dir.join("e.c-heap.json"));
    assert_eq!(sum_at(&c, "hot_site", "tbk"), 0, "{err}");
    assert!(err.contains("e.c-heap.json"), "{err}");
}

/// Sampled blocks that are freed and sampled again (the profile keeps a
/// few per size for reuse) must read zero when zeroed memory was asked
/// for, and never be handed out twice.
#[test]
fn reused_sampled_blocks_are_zeroed_and_never_shared() {
    let dir = scratch("churn");
    let out = Command::new(env!("CARGO_BIN_EXE_profile_target"))
        .arg("churn")
        .env_remove("HEAPKEEP_CHECK")
        // Under the preload pass a second heapkeep (the C library's) would
        // profile too and write its own profile to the same path at exit.
        .env_remove("LD_PRELOAD")
        .env("HEAPKEEP_PROFILE", "1")
        .env("HEAPKEEP_PROFILE_RATE", "16K")
        .env("HEAPKEEP_PROFILE_OUT", dir.join("c.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("churn ok"),
        "{err}"
    );
    // Every churned block was freed before exit, the last few held back by
    // the freeing thread (`profile::Pending`) until the profile settled
    // them at exit: none may read as live then.
    let v = load(&dir.join("c.json"));
    let churned: Vec<&Value> = v["pps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pp| {
            pp["fs"].as_array().unwrap().iter().any(|f| {
                v["ftbl"][f.as_u64().unwrap() as usize]
                    .as_str()
                    .unwrap()
                    .contains("profile_target::churn")
            })
        })
        .collect();
    let sum = |key: &str| -> u64 { churned.iter().map(|pp| pp[key].as_u64().unwrap()).sum() };
    assert!(sum("tbk") > 1000, "churn sampled {} blocks", sum("tbk"));
    assert_eq!(sum("eb"), 0, "churned bytes live at exit");
    assert_eq!(sum("ebk"), 0, "churned blocks live at exit");
}

/// valgrind's DHAT viewer (`dh_view.html`; the `valgrind` package has it).
fn dh_view() -> PathBuf {
    let candidates = [
        std::env::var_os("HEAPKEEP_DH_VIEW").map(PathBuf::from),
        Some(PathBuf::from("/usr/libexec/valgrind/dh_view.html")),
        Some(PathBuf::from(
            "/usr/lib/x86_64-linux-gnu/valgrind/dh_view.html",
        )),
        Some(PathBuf::from("/usr/lib/valgrind/dh_view.html")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .expect("dh_view.html not found: install valgrind (.ci/run does) or set HEAPKEEP_DH_VIEW")
}

/// tests/dhview with its node modules (jsdom) installed from the lock file.
fn dhview_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = workspace().join("tests").join("dhview");
        if !dir.join("node_modules").join("jsdom").is_dir() {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .expect("run npm (install nodejs and npm; .ci/run does)");
            assert!(status.success(), "npm ci in {} failed", dir.display());
        }
        dir
    })
}

/// The first program point under the root in the tree the viewer shows.
fn first_child(view: &str) -> &str {
    let start = view
        .find("PP 1.1/")
        .unwrap_or_else(|| panic!("no PP 1.1 in\n{view}"));
    let rest = &view[start..];
    let end = rest.find("PP 1.2/").unwrap_or(rest.len());
    &rest[..end]
}

/// Opens `file` in dh_view.html (jsdom, tests/dhview/load.js) and checks
/// that the page reports no error and shows, for each sort metric, the
/// expected site first under the root.
fn open_in_dh_view(file: &Path, metrics: &[(&str, &str)]) {
    let out = Command::new("node")
        .arg(dhview_dir().join("load.js"))
        .arg(dh_view())
        .arg(file)
        .args(metrics.iter().map(|m| m.0))
        .output()
        .expect("run node (install nodejs; .ci/run does)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "load.js failed: {err}");
    let page: Value = serde_json::from_slice(&out.stdout).expect("load.js prints JSON");
    assert_eq!(
        page["errors"],
        serde_json::json!([]),
        "the viewer reported errors"
    );
    let title = page["title"].as_str().unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(
        title.starts_with(&format!("DHAT Viewer - {name}")),
        "{title}"
    );
    for (metric, site) in metrics {
        let view = page["views"][metric].as_str().unwrap();
        assert!(view.contains("Mode:    heapkeep"), "{view}");
        assert!(
            view.contains("t-gmax:") && view.contains("t-end:"),
            "{view}"
        );
        let top = first_child(view);
        assert!(
            top.contains(site) && top.contains("top.c:"),
            "{metric}: the top site is not {site}:\n{top}"
        );
    }
}

/// The profile opens in the real DHAT viewer: dh_view.html and its script,
/// run in jsdom, load the file through the page's own file input, report
/// no error, and show the sites the program was built to have at the top
/// of the tree for each sort metric: at the default sampling rate (the
/// 200 KB leak gets less than one sample there, so only the big site is
/// asked for) and with every allocation recorded.
#[test]
fn the_profile_opens_in_dh_view_with_the_right_top_sites() {
    let dir = scratch("dhview");
    let exe = top_program().to_str().unwrap();
    profile(&["--out", "default.json", "--", exe], &dir);
    open_in_dh_view(
        &dir.join("default.json"),
        &[
            ("Total (bytes)", "big_site ("),
            ("At t-gmax (bytes)", "big_site ("),
        ],
    );
    profile(&["--every", "--out", "every.json", "--", exe], &dir);
    open_in_dh_view(
        &dir.join("every.json"),
        &[
            ("Total (bytes)", "big_site ("),
            ("Total (blocks)", "big_site ("),
            ("At t-gmax (bytes)", "big_site ("),
            ("At t-end (bytes)", "leaky_site ("),
        ],
    );
}
