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

#[test]
fn sampled_profile_names_the_top_sites_of_a_c_program() {
    let dir = scratch("sampled");
    let out = profile(
        &[
            "--out",
            "p.json",
            "--rate",
            "64K",
            "--",
            top_program().to_str().unwrap(),
        ],
        &dir,
    );
    let v = load(&dir.join("p.json"));
    let (tb, frame) = top_by(&v, "tb");
    assert!(
        frame.contains("big_site") && frame.contains("top.c:"),
        "{frame}"
    );
    // 200 MB allocated at big_site; sampling estimates it.
    let tb = tb as f64;
    assert!((tb / 200e6 - 1.0).abs() < 0.25, "big_site tb {tb}");
    let (_, frame) = top_by(&v, "gb");
    assert!(frame.contains("big_site"), "{frame}");
    let (eb, frame) = top_by(&v, "eb");
    assert!(frame.contains("leaky_site"), "{frame}");
    let eb = eb as f64;
    assert!((eb / 200e3 - 1.0).abs() < 0.5, "leaky_site eb {eb}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("heapkeep: profile: ") && err.contains("p.json"),
        "{err}"
    );
    assert!(err.contains("top sites by bytes allocated:\n"), "{err}");
    assert!(
        err.contains("top sites by bytes leaked at exit:\n"),
        "{err}"
    );
}

#[test]
fn every_allocation_gives_exact_counts() {
    let dir = scratch("every");
    profile(
        &[
            "--every",
            "--out",
            "p.json",
            "--",
            top_program().to_str().unwrap(),
        ],
        &dir,
    );
    let v = load(&dir.join("p.json"));
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
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
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
    profile(&["--", top_program().to_str().unwrap()], &dir);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("heapkeep-profile.top.") && names[0].ends_with(".json"),
        "{names:?}"
    );
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
