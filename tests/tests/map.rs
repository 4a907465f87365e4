//! The heap walk and what is built on it: `heapkeep map` draws a program
//! whose heap has a known shape (tests/c/map/shape.c) from snapshots taken
//! at exit, at the peak and on a signal, and the walk's figures in the
//! snapshot are exact for that quiet, single-threaded program; a Rust
//! program writes its own snapshot from the environment options; in this
//! process, `stats()`'s walk figures hold together, `class_stats()` counts
//! a fresh thread's blocks exactly, the walk finds small, large and huge
//! blocks, and walking is safe while other threads churn.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use heapkeep_tests::{compile_c, heapkeep_cmd, workspace, KIB, MIB};

#[global_allocator]
static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;

/// The tests count blocks of this process (and read files whose sizes
/// could fall in a counted class): one test at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Snapshots (format version 1, see heapkeep's map.rs)

#[derive(Debug, Default)]
struct Snap {
    when: String,
    segments: Vec<Seg>,
    huge: Vec<Huge>,
    totals: HashMap<String, u64>,
    stats: HashMap<String, u64>,
    complete: bool,
}

#[derive(Debug)]
struct Seg {
    place: String,
    free: u64,
    spans: Vec<Span>,
}

#[derive(Debug)]
struct Span {
    slice: u64,
    slices: u64,
    kind: String,
    class: usize,
    block_size: u64,
    capacity: u64,
    carved: u64,
    used: u64,
    pending: u64,
}

#[derive(Debug)]
struct Huge {
    map_size: u64,
    block_size: u64,
    live: bool,
    resident: u64,
}

fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
    }
}

/// The `key=number` fields of a line (lists such as `resident=` left out).
fn pairs(words: &[&str]) -> HashMap<String, u64> {
    words
        .iter()
        .filter_map(|w| w.split_once('='))
        .filter(|(_, v)| !v.contains(','))
        .map(|(k, v)| (k.to_string(), num(v)))
        .collect()
}

fn parse(text: &str) -> Snap {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("heapkeep-map 1"), "{text}");
    let mut s = Snap::default();
    for line in lines {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[0] {
            "when" => s.when = w[1].to_string(),
            "segment" => s.segments.push(Seg {
                place: w[2].to_string(),
                free: pairs(&w[3..])["free"],
                spans: Vec::new(),
            }),
            "span" => {
                let n = |i: usize| num(w[i]);
                let span = Span {
                    slice: n(1),
                    slices: n(2),
                    kind: w[3].to_string(),
                    class: n(4) as usize,
                    block_size: n(5),
                    capacity: n(6),
                    carved: n(7),
                    used: n(8),
                    pending: n(9),
                };
                s.segments
                    .last_mut()
                    .expect("span after a segment")
                    .spans
                    .push(span);
            }
            "huge" => s.huge.push(Huge {
                map_size: num(w[2]),
                block_size: num(w[3]),
                live: w[4] == "live",
                resident: num(w[5]),
            }),
            "totals" => s.totals = pairs(&w[1..]),
            "stats" => s.stats = pairs(&w[1..]),
            "end" => s.complete = true,
            _ => {}
        }
    }
    s
}

fn read_snap(path: &Path) -> Snap {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let s = parse(&text);
    assert!(s.complete, "snapshot without its end line:\n{text}");
    // Every span lies in its segment and counts add up.
    for seg in &s.segments {
        for sp in &seg.spans {
            assert!(sp.slice >= 1 && sp.slice + sp.slices <= 64, "{sp:?}");
            assert!(
                sp.pending <= sp.used && sp.used <= sp.carved && sp.carved <= sp.capacity,
                "{sp:?}"
            );
            assert_eq!(
                seg.free & (((1u64 << sp.slices) - 1) << sp.slice),
                0,
                "{sp:?}"
            );
            if sp.kind == "blocks" {
                // The stride is the class size (plus a cache line for
                // coloured classes that are multiples of 1 KiB).
                let size = heapkeep::walk::class_block_size(sp.class) as u64;
                assert!(
                    sp.block_size == size || sp.block_size == size + 64,
                    "{sp:?}"
                );
            }
        }
    }
    s
}

/// The size class whose blocks are `size` bytes.
fn class_of(size: usize) -> usize {
    (0..heapkeep::walk::SIZE_CLASSES)
        .find(|&c| heapkeep::walk::class_block_size(c) == size)
        .unwrap_or_else(|| panic!("no class of {size} bytes"))
}

impl Snap {
    /// (blocks in use, pages) of class `class`.
    fn class(&self, class: usize) -> (u64, usize) {
        let spans: Vec<&Span> = self
            .segments
            .iter()
            .flat_map(|s| &s.spans)
            .filter(|s| s.kind == "blocks" && s.class == class)
            .collect();
        (spans.iter().map(|s| s.used - s.pending).sum(), spans.len())
    }
}

/// `n` bytes as the picture writes them (cli/src/picture.rs `bytes`).
fn shown(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else if v >= 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

// ---------------------------------------------------------------------------
// `heapkeep map` on a program of known shape

/// tests/c/map/shape.c, linked with the library (for heapkeep_write_snapshot).
fn shape_program() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let lib_dir = heapkeep_cmd().parent().unwrap().to_path_buf();
        let out = lib_dir.join("map-shape");
        let include = format!("-I{}", workspace().join("preload/include").display());
        let libs = format!("-L{}", lib_dir.display());
        let rpath = format!("-Wl,-rpath,{}", lib_dir.display());
        compile_c(
            "cc",
            "map/shape.c",
            &out,
            &["-O1", "-fno-builtin", &include],
            &[&libs, "-lheapkeep_preload", &rpath],
        );
        out
    })
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = workspace().join("target").join("map-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `heapkeep map ARGS`. Without cargo's `LD_LIBRARY_PATH`, which would
/// make shape.c load another build of the library than the one preloaded.
fn heapkeep_map(args: &[&str]) -> Output {
    Command::new(heapkeep_cmd())
        .arg("map")
        .args(args)
        .env_remove("HEAPKEEP_LIB")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run heapkeep map")
}

/// Runs `heapkeep map ARGS -- shape.c PROGRAM_ARGS`, which must succeed;
/// returns the snapshot it kept and its stderr.
fn map_shape(dir: &Path, args: &[&str], program_args: &[&str]) -> (Snap, String) {
    let snap = dir.join("snapshot.txt");
    let mut all: Vec<&str> = vec!["--snapshot", snap.to_str().unwrap()];
    all.extend_from_slice(args);
    all.push("--");
    all.push(shape_program().to_str().unwrap());
    all.extend_from_slice(program_args);
    let out = heapkeep_map(&all);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n", "{err}");
    (read_snap(&snap), err)
}

/// What shape.c leaves at exit: 1000 blocks of 176 bytes on 3 pages (372
/// fit a page), 300 of 720 bytes (class 768) on 4 pages, none of the 500
/// blocks of 3000 bytes (class 3072) and at most the one page its class
/// keeps, free slices where their pages were, an 8 MiB huge block live and
/// a 3 MiB one cached.
fn assert_shape_at_exit(s: &Snap) {
    assert_eq!(s.class(class_of(176)), (1000, 3));
    assert_eq!(s.class(class_of(768)), (300, 4));
    let (in_use, pages) = s.class(class_of(3072));
    assert_eq!(in_use, 0);
    assert!(pages <= 1, "{pages} pages of 3072-byte blocks");
    let heap_segs: Vec<&Seg> = s
        .segments
        .iter()
        .filter(|g| g.place.starts_with("heap="))
        .collect();
    assert!(!heap_segs.is_empty());
    assert!(
        heap_segs.iter().any(|g| (g.free & !1).count_ones() >= 20),
        "the freed pages' slices are free: {heap_segs:?}"
    );
    let live: Vec<&Huge> = s.huge.iter().filter(|h| h.live).collect();
    assert_eq!(live.len(), 1, "{:?}", s.huge);
    assert!(live[0].block_size >= 8 * MIB as u64 && live[0].map_size > live[0].block_size);
    assert!(
        live[0].resident >= 8 * MIB as u64,
        "written, so resident: {:?}",
        live[0]
    );
    assert!(
        s.huge
            .iter()
            .any(|h| !h.live && h.block_size >= 3 * MIB as u64),
        "the freed 3 MiB block waits in the cache: {:?}",
        s.huge
    );
    // The walk agrees with the counters (one thread, quiet at exit).
    let t = &s.totals;
    assert_eq!(t["in_use"], s.stats["live"], "{t:?} {:?}", s.stats);
    assert!(t["resident"] <= t["held"] && t["held"] <= s.stats["mapped"]);
    assert!(t["largest_free_run"] >= 3 * MIB as u64 && t["largest_free_run"] <= t["held"]);
    assert_eq!(t["huge_live"], 1);
    assert_eq!(t["huge_cached"], 1);
}

#[test]
fn map_draws_a_known_heap_shape_at_exit() {
    let _g = serial();
    let dir = scratch("exit");
    let svg = dir.join("shape.svg");
    let (s, err) = map_shape(&dir, &["--out", svg.to_str().unwrap()], &[]);
    assert_eq!(s.when, "exit");
    assert_shape_at_exit(&s);
    assert!(
        err.contains("heapkeep: map: wrote") && err.contains("largest free run"),
        "{err}"
    );

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    // One box per page of each class, one row per segment, one bar row per
    // 4 MiB (or part) of each huge mapping.
    let boxes = |size: usize| {
        svg.matches(&format!(r#"class="page" data-size="{size}""#))
            .count()
    };
    assert_eq!(boxes(176), 3);
    assert_eq!(boxes(768), 4);
    let pages: usize = s
        .segments
        .iter()
        .map(|g| g.spans.iter().filter(|p| p.kind == "blocks").count())
        .sum();
    assert_eq!(svg.matches(r#"class="page""#).count(), pages);
    let huge_rows: u64 = s
        .huge
        .iter()
        .map(|h| h.map_size.div_ceil(4 * MIB as u64))
        .sum();
    assert_eq!(svg.matches(r#"class="huge""#).count() as u64, huge_rows);
    // The legend's figures are the snapshot's.
    let t = &s.totals;
    for figure in [
        format!("held {}", shown(t["held"])),
        format!("resident {}", shown(t["resident"])),
        format!("in use {}", shown(t["in_use"])),
        format!("held, not in use {}", shown(t["held"] - t["in_use"])),
        format!("largest free run {}", shown(t["largest_free_run"])),
        "1,000 of".to_string(),
    ] {
        assert!(svg.contains(&figure), "legend lacks {figure:?}");
    }
    // Free slices are drawn as such (resident or purged).
    let free: u32 = s
        .segments
        .iter()
        .filter(|g| g.place != "guard")
        .map(|g| (g.free & !1).count_ones())
        .sum();
    assert_eq!(svg.matches(r#"class="free""#).count() as u32, free);
}

#[test]
fn map_draws_png_and_html_from_a_kept_snapshot() {
    let _g = serial();
    let dir = scratch("from");
    let snap = dir.join("snapshot.txt");
    // The program writes its own snapshot (heapkeep_write_snapshot).
    let out = Command::new(shape_program())
        .args(["call", snap.to_str().unwrap()])
        .env_remove("HEAPKEEP_CHECK")
        .env_remove("LD_PRELOAD")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = read_snap(&snap);
    assert_eq!(s.when, "call");
    assert_eq!(s.class(class_of(176)), (1000, 3));

    let png = dir.join("shape.png");
    let out = heapkeep_map(&[
        "--from",
        snap.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = std::fs::read(&png).unwrap();
    assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(data[16..20].try_into().unwrap()),
        u32::from_be_bytes(data[20..24].try_into().unwrap()),
    );
    assert!(
        (800..3000).contains(&w) && (300..20000).contains(&h),
        "{w}x{h}"
    );

    let html = dir.join("shape.html");
    let out = heapkeep_map(&[
        "--from",
        snap.to_str().unwrap(),
        "--out",
        html.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("<svg"));
    assert!(page.contains("<td>176 B</td><td>1,000</td>"), "class table");

    let out = heapkeep_map(&["--from", snap.to_str().unwrap(), "--out", "x.jpg"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains(".svg, .png or .html"));
}

#[test]
fn map_on_a_signal() {
    let _g = serial();
    let dir = scratch("signal");
    let svg = dir.join("shape.svg");
    let (s, err) = map_shape(
        &dir,
        &["--at", "signal", "--out", svg.to_str().unwrap()],
        &["signal"],
    );
    assert_eq!(s.when, "signal");
    assert!(err.contains("kill -USR2"), "{err}");
    // Taken before exit, after the program built its heap: the same shape.
    assert_eq!(s.class(class_of(176)), (1000, 3));
    assert_eq!(s.class(class_of(768)), (300, 4));
    assert!(s
        .huge
        .iter()
        .any(|h| h.live && h.block_size >= 8 * MIB as u64));
}

/// A process with two copies of the library: the preloaded one serves
/// `malloc`, the one shape.c links comes from another path and serves
/// nothing. The copy installed last owns the signal handler; handlers
/// chain, so the serving copy writes the snapshot, at a signal as at exit.
#[test]
fn two_copies_in_one_process_write_the_serving_copys_map() {
    let _g = serial();
    let dir = scratch("two-copies");
    let other = dir.join("lib");
    std::fs::create_dir_all(&other).unwrap();
    let lib = heapkeep_cmd()
        .parent()
        .unwrap()
        .join("libheapkeep_preload.so");
    std::fs::copy(&lib, other.join("libheapkeep_preload.so")).unwrap();
    for at in ["signal", "exit"] {
        let snap = dir.join(format!("{at}.txt"));
        let svg = dir.join(format!("{at}.svg"));
        let mut cmd = Command::new(heapkeep_cmd());
        cmd.args(["map", "--at", at, "--snapshot", snap.to_str().unwrap()])
            .args(["--out", svg.to_str().unwrap(), "--"])
            .arg(shape_program())
            .env_remove("HEAPKEEP_LIB")
            .env("LD_LIBRARY_PATH", &other);
        if at == "signal" {
            cmd.arg("signal");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{at}: {err}");
        let s = read_snap(&snap);
        assert_eq!(s.when, at);
        assert_eq!(s.class(class_of(176)), (1000, 3), "{at}");
    }
}

#[test]
fn map_at_the_peak() {
    let _g = serial();
    let dir = scratch("peak");
    let svg = dir.join("shape.svg");
    let (s, _) = map_shape(&dir, &["--at", "peak", "--out", svg.to_str().unwrap()], &[]);
    // The peak: both huge blocks live (8 and 3 MiB) before the 3 MiB one
    // is freed; at exit only one is.
    assert_eq!(s.when, "peak");
    let live: Vec<&Huge> = s.huge.iter().filter(|h| h.live).collect();
    assert_eq!(live.len(), 2, "{:?}", s.huge);
    assert!(s.totals["in_use"] >= 11 * MIB as u64, "{:?}", s.totals);
}

#[test]
fn map_without_a_snapshot_is_a_clear_error() {
    let _g = serial();
    let out = heapkeep_map(&["--out", "never.svg", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no heap map snapshot"), "{err}");
    assert!(!Path::new("never.svg").exists());
}

#[test]
fn a_rust_program_writes_its_peak_snapshot_from_the_environment() {
    let _g = serial();
    let dir = scratch("rust");
    let path = dir.join("peak.%p.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_map_target"))
        .env_remove("HEAPKEEP_CHECK")
        .env("HEAPKEEP_MAP", "peak")
        .env("HEAPKEEP_MAP_OUT", &path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let written: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let s = read_snap(&written[0]);
    assert_eq!(s.when, "peak", "the exit did not overwrite the peak");
    // Within the 10% step of the peak of 24,576 blocks of 1000 bytes.
    let (in_use, _) = s.class(class_of(1024));
    assert!((22_000..=24 * 1024).contains(&in_use), "{in_use}");
    assert!(s.stats["peak_live"] >= s.totals["in_use"] && s.stats["peak_live"] >= 22_000 * 1024);
}

// ---------------------------------------------------------------------------
// In this process

#[test]
fn stats_walk_figures_hold_together() {
    let _g = serial();
    let keep: Vec<Vec<u8>> = (0..2000).map(|i| vec![i as u8; 100 + i % 300]).collect();
    let big = vec![7u8; 5 * MIB];
    let s = heapkeep::stats();
    assert!(s.held_bytes > 0);
    assert!(s.resident_bytes <= s.held_bytes, "{s:?}");
    assert!(s.held_bytes <= s.os_mapped_bytes, "{s:?}");
    assert!(s.unused_bytes <= s.held_bytes, "{s:?}");
    assert!(s.unused_resident_bytes <= s.resident_bytes, "{s:?}");
    assert!(s.largest_free_run <= s.held_bytes, "{s:?}");
    // What is in use is held: the blocks above at least (in fast mode;
    // check mode gives large blocks guarded mappings of its own).
    if std::env::var_os("HEAPKEEP_CHECK").is_none_or(|v| v != "1") {
        assert!(
            s.held_bytes - s.unused_bytes >= (5 * MIB + 2000 * 100) as u64,
            "{s:?}"
        );
    }
    drop((keep, big));
}

#[test]
fn class_stats_count_a_fresh_threads_blocks() {
    let _g = serial();
    // 2816 bytes: a class the other tests here use little, and never
    // while this one runs (they are serial).
    let class = class_of(2816);
    std::thread::spawn(move || {
        let before = heapkeep::class_stats()[class];
        assert_eq!(before.block_size, 2816);
        let blocks: Vec<Box<[u8; 2700]>> = (0..777).map(|_| Box::new([1u8; 2700])).collect();
        let during = heapkeep::class_stats()[class];
        assert_eq!(during.blocks_in_use - before.blocks_in_use, 777);
        // 23 blocks of 2816 bytes fit a 64 KiB page: 34 pages at least
        // (one may be an empty page the thread's heap kept from before).
        assert!(during.pages >= 34, "{during:?}");
        assert!(during.blocks_capacity >= during.blocks_in_use);
        assert_eq!(during.page_bytes, during.pages * 64 * KIB as u64);
        drop(blocks);
        let after = heapkeep::class_stats()[class];
        assert_eq!(after.blocks_in_use, before.blocks_in_use);
    })
    .join()
    .unwrap();
}

/// Whether `p` lies in `[base, base + len)`.
fn inside(p: usize, base: usize, len: usize) -> bool {
    p >= base && p < base + len
}

#[test]
fn walk_finds_small_large_and_huge_blocks() {
    use heapkeep::walk::{walk, Item, Place, SpanKind};
    let _g = serial();
    let small = Box::new([3u8; 64]);
    let large = vec![4u8; 512 * KIB];
    let huge = vec![5u8; 5 * MIB];
    let (sp, lp, hp) = (
        small.as_ptr() as usize,
        large.as_ptr() as usize,
        huge.as_ptr() as usize,
    );
    let (mut found_small, mut found_large, mut found_huge) = (false, false, false);
    let mut heaps = 0;
    walk(|item| match item {
        Item::Heap(_) => heaps += 1,
        Item::Segment(s) => {
            assert!(matches!(
                s.place,
                Place::Heap(_) | Place::Cache | Place::Guard
            ));
            for span in s.spans() {
                let start = s.base + span.slice as usize * heapkeep::walk::SLICE_BYTES;
                if inside(sp, start, span.bytes()) {
                    found_small = span.kind == SpanKind::Blocks
                        && span.block_size >= 64
                        && span.in_use() >= 1;
                }
                if lp == start {
                    found_large =
                        span.kind == SpanKind::Large && span.block_size as usize >= 512 * KIB;
                }
            }
        }
        Item::Huge(h) => {
            if inside(hp, h.base, h.map_size) {
                found_huge = h.live && h.block_size >= 5 * MIB;
            }
        }
    });
    assert!(heaps >= 1);
    assert!(found_small && found_large && found_huge);
    drop((small, large));
    // Freed, the huge block's mapping waits in the cache.
    drop(huge);
    let mut cached = false;
    walk(|item| {
        if let Item::Huge(h) = item {
            if inside(hp, h.base, h.map_size) {
                cached = !h.live;
            }
        }
    });
    assert!(cached, "the freed huge mapping is walked as cached");
}

/// Threads allocate, free each other's blocks, resize huge blocks and exit
/// while this thread walks: every walk stays inside heapkeep's memory and
/// its figures stay consistent. (A walk that followed a stale pointer into
/// unmapped memory would crash the test.)
#[test]
fn walking_while_threads_churn_is_safe() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    let _g = serial();
    use std::sync::atomic::AtomicU64;
    static STOP: AtomicBool = AtomicBool::new(false);
    // Generations finished by all workers so far: the walks go on until a
    // few have ended (on a loaded machine 150 walks can be over before the
    // first worker thread has retired its heap).
    static DONE: AtomicU64 = AtomicU64::new(0);
    STOP.store(false, Ordering::Relaxed);
    DONE.store(0, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for t in 0..3u64 {
        let tx = tx.clone();
        let rx = rx.clone();
        workers.push(std::thread::spawn(move || {
            let mut rng = heapkeep_tests::Rng::new(t + 1);
            let mut generation = 0;
            while !STOP.load(Ordering::Relaxed) {
                // Each generation runs on a new thread: heaps retire and
                // are adopted while the walk reads them.
                let tx = tx.clone();
                let rx = rx.clone();
                let seed = rng.next_u64();
                std::thread::spawn(move || {
                    let mut rng = heapkeep_tests::Rng::new(seed);
                    let mut keep: Vec<Vec<u8>> = Vec::new();
                    for i in 0..400 {
                        let size = match i % 50 {
                            0 => rng.range(3 * MIB, 6 * MIB),
                            1 => rng.range(200 * KIB, MIB),
                            _ => rng.size(64 * KIB),
                        };
                        // Not the class the class_stats test counts.
                        let size = if (2561..=2816).contains(&size) {
                            2000
                        } else {
                            size
                        };
                        let v = vec![i as u8; size];
                        if rng.chance(1, 3) {
                            let _ = tx.send(v); // freed by another thread
                        } else {
                            keep.push(v);
                        }
                        if let Ok(v) = rx.lock().unwrap().try_recv() {
                            drop(v);
                        }
                        if keep.len() > 40 {
                            let mut v = keep.swap_remove(rng.range(0, keep.len() - 1));
                            if v.len() > 2 * MIB {
                                v.resize(v.len() * 2, 1); // a huge mremap
                            }
                            drop(v);
                        }
                    }
                })
                .join()
                .unwrap();
                generation += 1;
                DONE.fetch_add(1, Ordering::Relaxed);
            }
            generation
        }));
    }
    drop(tx);
    let mut heaps_seen = 0;
    let mut walks = 0;
    // (A worker that panicked ends early: then the assert below reports it
    // instead of this loop waiting forever.)
    while walks < 150
        || (DONE.load(Ordering::Relaxed) < 3 && !workers.iter().all(|w| w.is_finished()))
    {
        walks += 1;
        // The callback runs under heapkeep's locks and must not allocate
        // (a failing assert! would): note the first broken rule, assert
        // after the walk.
        let mut broken: Option<&'static str> = None;
        let mut note = |ok: bool, what: &'static str| {
            if !ok && broken.is_none() {
                broken = Some(what);
            }
        };
        let mut t = heapkeep::walk::Totals::default();
        heapkeep::walk::walk(|item| {
            t.add(item);
            match item {
                heapkeep::walk::Item::Heap(_) => heaps_seen += 1,
                heapkeep::walk::Item::Segment(s) => {
                    note(
                        s.base % heapkeep::walk::SEGMENT_BYTES == 0,
                        "segment alignment",
                    );
                    let mut end = 1;
                    for sp in s.spans() {
                        note(sp.slice as usize >= end, "spans in order, apart");
                        end = sp.slice as usize + sp.slices as usize;
                        note(end <= heapkeep::walk::SLICES, "span inside its segment");
                        note(
                            sp.pending <= sp.used
                                && sp.used <= sp.carved
                                && sp.carved <= sp.capacity,
                            "pending <= used <= carved <= capacity",
                        );
                        note(sp.resident as usize <= sp.bytes(), "resident <= span");
                        note(
                            s.free_mask & (((1u64 << sp.slices) - 1) << sp.slice) == 0,
                            "a span's slices are not free",
                        );
                    }
                }
                heapkeep::walk::Item::Huge(h) => {
                    note(h.block_size < h.map_size, "huge block inside its mapping");
                    note(h.resident <= h.map_size, "huge resident <= mapping");
                }
            }
        });
        assert_eq!(broken, None);
        assert!(t.resident <= t.held && t.in_use <= t.held && t.largest_free_run <= t.held);
        let s = heapkeep::stats();
        assert!(s.resident_bytes <= s.held_bytes);
        let c = heapkeep::class_stats();
        assert!(c.iter().all(|c| c.blocks_in_use <= c.blocks_capacity));
    }
    STOP.store(true, Ordering::Relaxed);
    let generations: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(generations >= 3, "the workers ran");
    assert!(heaps_seen >= 150);
    heapkeep_tests::assert_invariants("after walking while threads churned");
}
