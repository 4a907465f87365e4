//! The memory cap (`heapkeep::set_memory_cap`) with heapkeep as the global
//! allocator: one test, since the cap is process-wide (and its
//! environment option in a child process).

use heapkeep::{memory_cap, os_mapped_bytes, set_memory_cap};

#[global_allocator]
static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;

const MIB: usize = 1 << 20;

/// A block of `n` bytes, touched, or None when the allocator says no.
fn try_block(n: usize) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, 1);
    Some(v)
}

/// The environment option, in a child process (this test again, with
/// `HEAPKEEP_MEMORY_CAP=256M`): the cap is set before `main`, a request
/// beyond it gets null and a small one still works.
fn the_environment_option_caps_a_rust_program() {
    if std::env::var_os("HEAPKEEP_MEMORY_CAP").is_some() {
        assert_eq!(memory_cap(), 256 * MIB);
        assert!(try_block(512 * MIB).is_none());
        let small = try_block(MIB).expect("1 MiB under a 256 MiB cap");
        assert!(os_mapped_bytes() <= 256 * MIB, "{}", os_mapped_bytes());
        drop(small);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "allocations_beyond_the_cap_fail_and_work_again_below_it",
            "--nocapture",
        ])
        .env("HEAPKEEP_MEMORY_CAP", "256M")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "child: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn allocations_beyond_the_cap_fail_and_work_again_below_it() {
    the_environment_option_caps_a_rust_program();
    if std::env::var_os("HEAPKEEP_MEMORY_CAP").is_some() {
        return;
    }
    let base = os_mapped_bytes();
    let cap = base + 64 * MIB;
    set_memory_cap(cap);
    assert_eq!(memory_cap(), cap);

    // One request larger than what is left: refused, not an abort.
    assert!(try_block(128 * MIB).is_none());

    // Blocks of 1 MiB until the cap stops them; the mapping never passes it.
    let mut blocks = Vec::with_capacity(256);
    while blocks.len() < 256 {
        match try_block(MIB) {
            Some(b) => blocks.push(b),
            None => break,
        }
        assert!(os_mapped_bytes() <= cap, "{} > {cap}", os_mapped_bytes());
    }
    assert!(
        (40..64).contains(&blocks.len()),
        "{} blocks of 1 MiB under a 64 MiB cap",
        blocks.len()
    );
    drop(blocks);

    // Freed memory serves other shapes; a freed huge block held in the
    // cache is given back when the cap would stop an allocation.
    let big = try_block(48 * MIB).expect("48 MiB after the frees");
    drop(big);
    let again: Vec<_> = (0..40).map_while(|_| try_block(MIB)).collect();
    assert_eq!(again.len(), 40, "1 MiB blocks after a cached 48 MiB block");
    drop(again);

    set_memory_cap(0);
    assert_eq!(memory_cap(), 0);
    assert!(try_block(128 * MIB).is_some());
}
