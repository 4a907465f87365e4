//! `heapkeep::forbid_alloc` and `permit_alloc`: allocations inside a region
//! are caught (here in `OnAlloc::Panic` mode, which fails only the test that
//! breaks the rule), frees are allowed, regions nest, other threads are not
//! affected; the abort and log modes run in a process of their own (the
//! `forbid_modes` binary).

use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use heapkeep::{forbid_alloc_with, permit_alloc, ForbidAlloc, OnAlloc};
use heapkeep_tests::panic_message;

#[global_allocator]
static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;

/// Runs `f` and returns the message it panicked with (None: no panic).
fn panic_of(f: impl FnOnce()) -> Option<String> {
    catch_unwind(AssertUnwindSafe(f))
        .err()
        .map(|p| panic_message(&*p))
}

#[test]
fn a_region_without_allocations_passes_and_returns_the_value() {
    let mut buf: Vec<u32> = Vec::with_capacity(256);
    let n = forbid_alloc_with(OnAlloc::Panic, || {
        for i in 0..256 {
            buf.push(i); // within capacity
        }
        buf.iter().map(|&x| x as u64).sum::<u64>()
    });
    assert_eq!(n, 255 * 256 / 2);
}

#[test]
fn an_allocation_inside_panics_when_the_region_ends() {
    let msg = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, || {
            black_box(vec![1u8; 100]);
        })
    })
    .expect("an allocation inside forbid_alloc must panic");
    assert!(
        msg.contains("1 allocation(s) inside forbid_alloc") && msg.contains("of 100 bytes"),
        "{msg}"
    );
    // The thread allocates normally again afterwards.
    let v = black_box(vec![2u8; 1000]);
    assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 2000);
}

#[test]
fn every_allocation_is_counted_and_the_first_named() {
    let msg = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, || {
            black_box(vec![1u8; 40]);
            black_box(Box::new([0u64; 8]));
            black_box(String::from("three"));
        })
    })
    .unwrap();
    assert!(
        msg.contains("3 allocation(s)") && msg.contains("of 40 bytes"),
        "{msg}"
    );
}

#[test]
fn frees_are_allowed_inside() {
    let v = black_box(vec![3u8; 5000]);
    let b = black_box(Box::new(17u64));
    let r = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, move || {
            drop(v);
            drop(b);
        })
    });
    assert_eq!(r, None);
}

#[test]
fn realloc_in_place_is_not_an_allocation_but_a_move_is() {
    let mut v: Vec<u8> = Vec::with_capacity(1000);
    v.resize(900, 1);
    let r = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, || {
            v.shrink_to_fit(); // 1000 -> 900 bytes: stays where it is
        })
    });
    // Check mode moves every realloc but does not count a shrink either.
    assert_eq!(r, None);
    let msg = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, || {
            v.reserve(1 << 20); // must move
        })
    })
    .expect("growing a block past its size class allocates");
    assert!(msg.contains("1 allocation(s)"), "{msg}");
}

#[test]
fn permit_alloc_allows_one_spot_and_nests() {
    let r = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, || {
            let s = permit_alloc(|| format!("allowed {}", 1));
            assert_eq!(s, "allowed 1");
            // A region inside the permit, and a permit inside that.
            let inner = permit_alloc(|| {
                forbid_alloc_with(OnAlloc::Panic, || permit_alloc(|| vec![5u8; 10]))
            });
            assert_eq!(inner.len(), 10);
            drop(s);
            drop(inner);
        })
    });
    assert_eq!(r, None);
    // After the permit ends, the rule holds again.
    let msg = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, || {
            permit_alloc(|| black_box(vec![0u8; 10]));
            black_box(vec![0u8; 33]);
        })
    })
    .unwrap();
    assert!(
        msg.contains("1 allocation(s)") && msg.contains("of 33 bytes"),
        "{msg}"
    );
}

#[test]
fn nested_regions_report_the_inner_allocation_once() {
    let msg = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, || {
            forbid_alloc_with(OnAlloc::Panic, || {
                black_box(vec![0u8; 77]);
            });
        })
    })
    .unwrap();
    assert!(
        msg.contains("1 allocation(s)") && msg.contains("of 77 bytes"),
        "{msg}"
    );
    // An inner log region inside an outer panic region: the outer panics.
    let msg = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, || {
            forbid_alloc_with(OnAlloc::Log, || black_box(vec![0u8; 55]));
        })
    })
    .unwrap();
    assert!(msg.contains("of 55 bytes"), "{msg}");
}

#[test]
fn the_guard_object_form_ends_the_region_on_drop() {
    let msg = panic_of(|| {
        let region = ForbidAlloc::with(OnAlloc::Panic);
        black_box(vec![0u8; 66]);
        drop(region);
    })
    .unwrap();
    assert!(msg.contains("of 66 bytes"), "{msg}");
    let msg = panic_of(|| {
        let _region = ForbidAlloc::with(OnAlloc::Panic);
        let permit = heapkeep::PermitAlloc::new();
        black_box(vec![0u8; 10]);
        drop(permit);
        black_box(vec![0u8; 12]);
    })
    .unwrap();
    assert!(
        msg.contains("1 allocation(s)") && msg.contains("of 12 bytes"),
        "{msg}"
    );
}

#[test]
fn other_threads_allocate_freely_meanwhile() {
    // 0: waiting, 1: go, 2: the other thread is done.
    let state = Arc::new(AtomicU32::new(0));
    let s2 = Arc::clone(&state);
    let t = std::thread::spawn(move || {
        while s2.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        let mut kept = Vec::new();
        for i in 0..10_000usize {
            kept.push(vec![i as u8; i % 200 + 1]);
        }
        s2.store(2, Ordering::Release);
        kept.len()
    });
    let r = panic_of(|| {
        forbid_alloc_with(OnAlloc::Panic, || {
            state.store(1, Ordering::Release);
            while state.load(Ordering::Acquire) != 2 {
                std::hint::spin_loop();
            }
        })
    });
    assert_eq!(r, None);
    assert_eq!(t.join().unwrap(), 10_000);
}

// ---------------------------------------------------------------------------
// Modes that end or outlive the process

fn run_case(case: &str, envs: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_forbid_modes"));
    c.arg(case);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn abort_mode_reports_the_allocation_and_its_stack_then_aborts() {
    use std::os::unix::process::ExitStatusExt;
    let (status, stdout, stderr) = run_case("abort", &[]);
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}\n{stderr}");
    assert!(!stdout.contains("done"), "{stdout}");
    let first = stderr
        .lines()
        .find(|l| l.starts_with("heapkeep:"))
        .unwrap_or("");
    assert_eq!(
        first, "heapkeep: error: allocation of 100 bytes (align 1) inside forbid_alloc",
        "{stderr}"
    );
    assert!(stderr.contains("allocate_inside"), "{stderr}");
    assert!(stderr.contains("forbid_modes.rs:"), "{stderr}");
    assert!(stderr.contains("heapkeep: aborting"), "{stderr}");
}

#[test]
fn log_mode_prints_the_first_allocations_and_goes_on() {
    let (status, stdout, stderr) = run_case("log", &[]);
    assert!(status.success(), "{status:?}\n{stderr}");
    assert_eq!(stdout.trim(), "done 2000");
    let warnings = stderr
        .lines()
        .filter(|l| l.starts_with("heapkeep: warning: allocation of 100 bytes"))
        .count();
    assert_eq!(warnings as u64, heapkeep::LOG_LIMIT, "{stderr}");
    assert!(stderr.contains("allocate_inside"), "{stderr}");
    assert!(stderr.contains("are not printed"), "{stderr}");
}

#[test]
fn the_environment_chooses_the_mode_of_forbid_alloc() {
    let (status, stdout, stderr) = run_case("env", &[("HEAPKEEP_FORBID_ALLOC", "log")]);
    assert!(status.success(), "{status:?}\n{stderr}");
    assert_eq!(stdout.trim(), "done 100");
    assert!(
        stderr.contains("heapkeep: warning: allocation of 100 bytes"),
        "{stderr}"
    );
    // A value that does not parse warns and keeps the default (abort).
    let (status, _, stderr) = run_case("env", &[("HEAPKEEP_FORBID_ALLOC", "loud")]);
    assert!(
        stderr.contains("heapkeep: warning: ignoring HEAPKEEP_FORBID_ALLOC=loud"),
        "{stderr}"
    );
    assert!(!status.success());
}

#[test]
fn regions_work_in_check_mode() {
    let (status, stdout, stderr) = run_case("panic", &[("HEAPKEEP_CHECK", "1")]);
    // A panic ends the program with 101, or with SIGABRT in a build with
    // `panic = "abort"` (the workspace's release profile).
    let panicked = status.code() == Some(101)
        || (std::os::unix::process::ExitStatusExt::signal(&status) == Some(6)
            && stderr.contains("panicked at"));
    assert!(panicked, "{status:?}\n{stderr}");
    assert!(!stdout.contains("done"), "{stdout}");
    assert!(
        stderr.contains("1 allocation(s) inside forbid_alloc (the first, of 100 bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("allocate_inside"), "{stderr}");
    assert!(!stderr.contains("heapkeep: error"), "{stderr}");
}
