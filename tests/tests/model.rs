//! Model-based property tests (proptest) of `heapkeep::HeapKeep` called directly through
//! `GlobalAlloc`: random alloc / alloc_zeroed / realloc / dealloc sequences checked against a
//! shadow model (no overlap, alignment, contents preserved, zeroing, usable_size >= size,
//! `heapkeep::check_invariants()`), single-threaded and in 2-4 threads with cross-thread frees.
//!
//! Knobs: `PROPTEST_CASES` overrides the number of cases of every test here;
//! `HEAPKEEP_MODEL_CHECK_EVERY` (default 2) sets how many ops run between full checks
//! (invariant walk + contents of every live block).

use heapkeep::{usable_size, HeapKeep};
use heapkeep_tests::{assert_invariants, check_zero, panic_message, Pattern, KIB, MIB};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn config(default_cases: u32) -> Config {
    Config {
        cases: env_usize("PROPTEST_CASES").map_or(default_cases, |c| c as u32),
        max_shrink_iters: 2000,
        ..Config::default()
    }
}

fn check_every() -> usize {
    env_usize("HEAPKEEP_MODEL_CHECK_EVERY").unwrap_or(2).max(1)
}

// ---------------------------------------------------------------------------------------------
// Operations and their strategies
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align_log: u8,
        zeroed: bool,
    },
    Dealloc {
        which: Index,
    },
    Realloc {
        which: Index,
        new_size: usize,
    },
    /// Multi-threaded model only: hand a live block to another thread, which adopts it
    /// (checks it, then may realloc or free it).
    Send {
        which: Index,
        to: Index,
    },
}

/// Sizes biased towards small ones, plus sizes straddling powers of two (size-class and page
/// boundaries), a few up to 4 MiB.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        68 => 0..=1024usize,
        14 => 1025..=64 * KIB,
        12 => (3u32..=22, 0usize..3).prop_map(|(k, d)| (1usize << k) + d - 1),
        6 => 64 * KIB + 1..=4 * MIB,
    ]
}

/// log2 of alignments 1 .. 64 KiB, mostly small.
fn align_log() -> impl Strategy<Value = u8> {
    prop_oneof![80 => 0..=4u8, 15 => 5..=12u8, 5 => 13..=16u8]
}

fn op(with_send: bool) -> impl Strategy<Value = Op> {
    let send_weight = if with_send { 12 } else { 0 };
    prop_oneof![
        38 => (size(), align_log()).prop_map(|(size, align_log)| Op::Alloc { size, align_log, zeroed: false }),
        12 => (size(), align_log()).prop_map(|(size, align_log)| Op::Alloc { size, align_log, zeroed: true }),
        28 => any::<Index>().prop_map(|which| Op::Dealloc { which }),
        // GlobalAlloc::realloc requires new_size > 0.
        20 => (any::<Index>(), size()).prop_map(|(which, s)| Op::Realloc { which, new_size: s.max(1) }),
        send_weight => (any::<Index>(), any::<Index>()).prop_map(|(which, to)| Op::Send { which, to }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Shadow model
// ---------------------------------------------------------------------------------------------

/// A live heapkeep block as the model knows it.
struct Block {
    ptr: *mut u8,
    layout: Layout,
    /// Bytes that hold `pattern`: usable_size (0 for a zero-size block).
    content_len: usize,
    pattern: Pattern,
    id: u64,
}

// The model hands blocks between threads on purpose: that is what is being tested.
unsafe impl Send for Block {}

impl Block {
    fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Bytes the block occupies for the overlap check; a zero-size block still owns its
    /// (documented unique) address.
    fn extent(&self) -> usize {
        self.content_len.max(1)
    }

    #[track_caller]
    fn verify(&self, when: &str) {
        if let Err(off) = unsafe { self.pattern.check(self.ptr, self.content_len) } {
            panic!(
                "block #{} at {:#x} ({:?}) corrupted at offset {off} of {} ({when}): found {:#04x}, expected {:#04x}",
                self.id,
                self.addr(),
                self.layout,
                self.content_len,
                unsafe { *self.ptr.add(off) },
                self.pattern.byte(off)
            );
        }
    }
}

/// All live blocks of one run (shared by the threads of a multi-threaded run), by address.
/// A block is inserted after the allocator returned it and removed *before* it is given back,
/// so an address present in the map is one the allocator must not hand out again.
struct Registry {
    live: Mutex<BTreeMap<usize, (usize, u64)>>,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            live: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<usize, (usize, u64)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[track_caller]
    fn insert(&self, b: &Block) {
        let (start, end) = (b.addr(), b.addr() + b.extent());
        let mut live = self.lock();
        if let Some((&s, &(e, id))) = live.range(..=start).next_back() {
            assert!(
                e <= start,
                "new block #{} [{start:#x}, {end:#x}) ({:?}) overlaps live block #{id} [{s:#x}, {e:#x})",
                b.id,
                b.layout
            );
        }
        if let Some((&s, &(e, id))) = live.range(start..).next() {
            assert!(
                s >= end,
                "new block #{} [{start:#x}, {end:#x}) ({:?}) overlaps live block #{id} [{s:#x}, {e:#x})",
                b.id,
                b.layout
            );
        }
        live.insert(start, (end, b.id));
    }

    fn remove(&self, b: &Block) {
        let removed = self.lock().remove(&b.addr());
        assert_eq!(
            removed.map(|(_, id)| id),
            Some(b.id),
            "registry out of sync"
        );
    }
}

struct Model<'r> {
    reg: &'r Registry,
    blocks: Vec<Block>,
    next_id: u64,
    op_no: usize,
}

impl<'r> Model<'r> {
    fn new(reg: &'r Registry, thread: u64) -> Model<'r> {
        Model {
            reg,
            blocks: Vec::new(),
            next_id: thread << 40,
            op_no: 0,
        }
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Checks a freshly returned pointer and turns it into a registered, filled block.
    #[track_caller]
    fn register(&mut self, ptr: *mut u8, layout: Layout, what: &str) -> Block {
        assert!(!ptr.is_null(), "op {}: {what} returned null", self.op_no);
        assert_eq!(
            ptr as usize % layout.align(),
            0,
            "op {}: {what} returned {ptr:p}, not aligned to {}",
            self.op_no,
            layout.align()
        );
        // Every usable byte belongs to this block alone: the pattern fills all of them.
        let mut content_len = layout.size();
        if layout.size() > 0 {
            let usable = unsafe { usable_size(ptr) };
            assert!(
                usable >= layout.size(),
                "op {}: usable_size({ptr:p}) = {usable} < requested {} ({what})",
                self.op_no,
                layout.size()
            );
            content_len = usable;
        }
        let id = self.new_id();
        let block = Block {
            ptr,
            layout,
            content_len,
            pattern: Pattern::new(id as u32),
            id,
        };
        self.reg.insert(&block);
        block
    }

    fn apply(&mut self, op: &Op) {
        self.op_no += 1;
        match *op {
            Op::Alloc {
                size,
                align_log,
                zeroed,
            } => self.alloc(size, 1 << align_log, zeroed),
            Op::Dealloc { which } => {
                if !self.blocks.is_empty() {
                    let b = self.blocks.swap_remove(which.index(self.blocks.len()));
                    self.free(b);
                }
            }
            Op::Realloc { which, new_size } => {
                if !self.blocks.is_empty() {
                    let i = which.index(self.blocks.len());
                    self.realloc(i, new_size);
                }
            }
            Op::Send { .. } => unreachable!("Send is handled by the multi-threaded driver"),
        }
    }

    fn alloc(&mut self, size: usize, align: usize, zeroed: bool) {
        let layout = Layout::from_size_align(size, align).unwrap();
        let what = format!(
            "{}({layout:?})",
            if zeroed { "alloc_zeroed" } else { "alloc" }
        );
        let ptr = unsafe {
            if zeroed {
                HeapKeep.alloc_zeroed(layout)
            } else {
                HeapKeep.alloc(layout)
            }
        };
        let block = self.register(ptr, layout, &what);
        if zeroed {
            if let Err(off) = unsafe { check_zero(ptr, size) } {
                panic!(
                    "op {}: {what} = {ptr:p}: byte {off} is not zero",
                    self.op_no
                );
            }
        }
        unsafe { block.pattern.fill(block.ptr, block.content_len) };
        self.blocks.push(block);
    }

    fn free(&mut self, b: Block) {
        b.verify("before dealloc");
        self.reg.remove(&b);
        unsafe { HeapKeep.dealloc(b.ptr, b.layout) };
    }

    fn realloc(&mut self, i: usize, new_size: usize) {
        let old = &self.blocks[i];
        old.verify("before realloc");
        self.reg.remove(old);
        let (old_ptr, old_layout, old_id) = (old.ptr, old.layout, old.id);
        let ptr = unsafe { HeapKeep.realloc(old_ptr, old_layout, new_size) };
        let what = format!("realloc(#{old_id} {old_ptr:p}, {old_layout:?}, {new_size})");
        let new_layout = Layout::from_size_align(new_size, old_layout.align()).unwrap();
        let block = self.register(ptr, new_layout, &what);
        let kept = old_layout.size().min(new_size);
        if let Err(off) = unsafe { self.blocks[i].pattern.check(ptr, kept) } {
            panic!(
                "op {}: {what} = {ptr:p} lost contents at offset {off} of {kept} preserved bytes",
                self.op_no
            );
        }
        unsafe { block.pattern.fill(block.ptr, block.content_len) };
        self.blocks[i] = block;
    }

    /// Takes a block out of this model (to send to another thread).
    fn take(&mut self, which: Index) -> Option<Block> {
        if self.blocks.is_empty() {
            return None;
        }
        let b = self.blocks.swap_remove(which.index(self.blocks.len()));
        b.verify("before sending to another thread");
        Some(b)
    }

    /// Adopts blocks sent by other threads.
    fn adopt(&mut self, blocks: impl IntoIterator<Item = Block>) {
        for b in blocks {
            b.verify("received from another thread");
            self.blocks.push(b);
        }
    }

    fn verify_all(&self) {
        for b in &self.blocks {
            b.verify("periodic check of live blocks");
        }
    }

    fn free_all(&mut self) {
        while let Some(b) = self.blocks.pop() {
            self.free(b);
        }
    }
}

impl Drop for Model<'_> {
    fn drop(&mut self) {
        // After a failure the heap may be corrupt: leak rather than crash while shrinking.
        if !std::thread::panicking() {
            self.free_all();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------

fn run_single(ops: &[Op]) {
    let every = check_every();
    let reg = Registry::new();
    let mut m = Model::new(&reg, 0);
    for (i, op) in ops.iter().enumerate() {
        m.apply(op);
        if (i + 1) % every == 0 {
            assert_invariants(&format!("after op {} {op:?}", i + 1));
            m.verify_all();
        }
    }
    assert_invariants("after all ops, before freeing");
    m.verify_all();
    m.free_all();
    assert!(reg.lock().is_empty());
    assert_invariants("after freeing every block");
}

/// A barrier that gives up (panics) when another participant has panicked, so a failing
/// thread cannot deadlock the others.
struct Gate {
    n: usize,
    state: Mutex<(usize, u64)>,
    cv: Condvar,
    failed: AtomicBool,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate {
            n,
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
            failed: AtomicBool::new(false),
        }
    }

    fn wait(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = st.1;
        st.0 += 1;
        if st.0 == self.n {
            *st = (0, generation + 1);
            self.cv.notify_all();
            return;
        }
        while st.1 == generation {
            if self.failed.load(Ordering::SeqCst) {
                panic!("{GAVE_UP}");
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

const GAVE_UP: &str = "another model thread failed";

/// Marks the gate failed if the owning thread unwinds.
struct FailGuard<'a>(&'a Gate);

impl Drop for FailGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::SeqCst);
            self.0.cv.notify_all();
        }
    }
}

const ROUND: usize = 16;

fn run_threads(per_thread: &[Vec<Op>]) {
    let n = per_thread.len();
    let reg = Registry::new();
    let gate = Gate::new(n);
    let mailboxes: Vec<Mutex<Vec<Block>>> = (0..n).map(|_| Mutex::new(Vec::new())).collect();
    let rounds = per_thread
        .iter()
        .map(|ops| ops.len().div_ceil(ROUND))
        .max()
        .unwrap_or(0);
    let take_mail = |t: usize| std::mem::take(&mut *mailboxes[t].lock().unwrap());

    let results: Vec<std::thread::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = per_thread
            .iter()
            .enumerate()
            .map(|(t, ops)| {
                let (reg, gate, mailboxes) = (&reg, &gate, &mailboxes);
                s.spawn(move || {
                    let _guard = FailGuard(gate);
                    let mut m = Model::new(reg, t as u64 + 1);
                    for r in 0..rounds {
                        for op in ops.iter().skip(r * ROUND).take(ROUND) {
                            m.adopt(take_mail(t));
                            if let Op::Send { which, to } = *op {
                                m.op_no += 1;
                                if let Some(b) = m.take(which) {
                                    let dest = (t + 1 + to.index(n - 1)) % n;
                                    mailboxes[dest].lock().unwrap().push(b);
                                }
                            } else {
                                m.apply(op);
                            }
                        }
                        m.verify_all();
                        // At a quiescent point every thread walks its own heap (and the
                        // retired heaps and global caches).
                        gate.wait();
                        assert_invariants(&format!(
                            "multi-threaded model, thread {t}, after round {r}"
                        ));
                        gate.wait();
                    }
                    // Nobody sends any more: adopt what is left, free everything.
                    m.adopt(take_mail(t));
                    m.free_all();
                    gate.wait();
                    assert_invariants(&format!(
                        "multi-threaded model, thread {t}, after every thread freed all"
                    ));
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });

    // Re-raise the first real failure (not a thread that merely gave up waiting for it).
    let mut first = None;
    for r in results {
        if let Err(payload) = r {
            let msg = panic_message(&*payload);
            if msg != GAVE_UP || first.is_none() {
                first = Some(msg);
            }
            if first.as_deref() != Some(GAVE_UP) {
                break;
            }
        }
    }
    if let Some(msg) = first {
        panic!("{msg}");
    }
    assert!(
        reg.lock().is_empty(),
        "blocks left in the registry: {:?}",
        reg.lock()
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn model_single_thread(ops in prop::collection::vec(op(false), 1..400)) {
        run_single(&ops);
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn model_threads_with_cross_thread_frees(
        per_thread in prop::collection::vec(prop::collection::vec(op(true), 1..160), 2..=4)
    ) {
        run_threads(&per_thread);
    }
}

/// A fixed sequence that must pass, so that the model itself is exercised whatever the random
/// cases look like: grow/shrink a block through every size class with live neighbours.
#[test]
fn model_fixed_realloc_ladder() {
    let reg = Registry::new();
    let mut m = Model::new(&reg, 0);
    for align in [1, 16, 64, 4096, 64 * KIB] {
        m.alloc(24, align, false);
        let i = m.blocks.len() - 1;
        m.alloc(3, 1, true);
        for s in [
            1,
            17,
            256,
            4095,
            4097,
            65_536,
            300_000,
            2 * MIB + 1,
            4 * MIB,
            100,
            1,
        ] {
            m.realloc(i, s);
            m.alloc(s, align, true);
            assert_invariants(&format!("ladder: align {align}, size {s}"));
        }
    }
    m.verify_all();
    m.free_all();
    assert_invariants("ladder: after freeing");
}
