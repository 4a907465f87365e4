//! Benchmark of the heaps you own (issue 6): `heapkeep::region::RegionHeap` against talc, rlsf,
//! linked_list_allocator and buddy_system_allocator, each over the same 16 MiB region, and
//! `heapkeep::arena::Arena` against bumpalo. One process, all allocators side by side, rounds
//! interleaved with the order rotating; medians of rounds.
//!
//! - throughput: a seeded stream of alloc / free / realloc (identical for every allocator) over a
//!   fixed number of slots, for maximum sizes 64 B – 32 KiB;
//! - latency: the same streams with every operation timed on its own (rdtsc on x86_64): p99 and
//!   the worst;
//! - heap efficiency: random allocs, frees and reallocs until the first failure; the bytes live
//!   (as requested) over the region size, averaged over seeds. Four tables: our workload ended
//!   by the first failure of an allocation or a reallocation; the same ended by the first
//!   failed allocation (the issue's definition: a failed reallocation leaves its block); talc's
//!   current method (the same operations on one 128 MiB heap reused for many trials); and the
//!   method behind the figures talc 4 published;
//! - arena: many small allocations then a reset, and vectors growing in the arena.
//!
//! Usage: `cargo run --release -p heapkeep-bench-region -- [--quick] [--out DIR]`; prints a
//! markdown report and writes `DIR/report.md`, `DIR/results.csv` and `DIR/*.svg`.

use std::alloc::{GlobalAlloc, Layout};
use std::fmt::Write as _;
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::Instant;

use heapkeep::arena::Arena;
use heapkeep::region::RegionHeap;

const REGION: usize = 16 << 20;
/// The heap size of talc's own efficiency benchmark (the third efficiency table).
const REF_REGION: usize = 128 << 20;
/// The heap size of the benchmark behind the efficiency figures talc's
/// README published with talc 4 (the fourth table).
const V4_REGION: usize = 512 << 20;
const MAX_SIZES: [usize; 5] = [64, 256, 1024, 4096, 32 * 1024];

// -------------------------------------------------------------------------------------------
// The allocators, behind one interface
// -------------------------------------------------------------------------------------------

trait Heap {
    const NAME: &'static str;
    /// A fresh heap over `len` bytes at `base`.
    ///
    /// # Safety
    /// The memory is valid and unused while the heap lives.
    unsafe fn over(base: *mut u8, len: usize) -> Self;
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>>;
    /// # Safety
    /// `p` is live, allocated with `l`.
    unsafe fn dealloc(&mut self, p: NonNull<u8>, l: Layout);
    /// # Safety
    /// `p` is live, allocated with `l`.
    unsafe fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>>;
    /// Free bytes and the largest free block, for allocators that can tell (the efficiency
    /// diagnostics).
    fn free_stats(&self) -> Option<(usize, usize)> {
        None
    }
}

/// What allocators without a realloc of their own do (and what `GlobalAlloc`'s default does).
///
/// # Safety
/// As `Heap::realloc`.
unsafe fn move_realloc<H: Heap>(
    h: &mut H,
    p: NonNull<u8>,
    l: Layout,
    new: usize,
) -> Option<NonNull<u8>> {
    let q = h.alloc(Layout::from_size_align(new, l.align()).ok()?)?;
    // SAFETY: distinct live blocks of at least the bytes copied.
    unsafe {
        std::ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), l.size().min(new));
        h.dealloc(p, l);
    }
    Some(q)
}

struct Hk(RegionHeap);
impl Heap for Hk {
    const NAME: &'static str = "heapkeep";
    unsafe fn over(base: *mut u8, len: usize) -> Self {
        let mut h = RegionHeap::empty();
        // SAFETY: forwarded.
        unsafe { h.extend_raw(base, len) };
        Hk(h)
    }
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        self.0.alloc(l)
    }
    #[inline]
    unsafe fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        // SAFETY: forwarded.
        unsafe { self.0.dealloc(p, l) }
    }
    #[inline]
    unsafe fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded.
        unsafe { self.0.realloc(p, l, new) }
    }
    fn free_stats(&self) -> Option<(usize, usize)> {
        Some((self.0.free_bytes(), self.0.largest_free()))
    }
}

struct Talc(talc::TalcCell<talc::source::Manual>);
impl Heap for Talc {
    const NAME: &'static str = "talc";
    unsafe fn over(base: *mut u8, len: usize) -> Self {
        let t = talc::TalcCell::new(talc::source::Manual);
        // SAFETY: forwarded.
        unsafe { t.claim(base, len).expect("talc claims the region") };
        Talc(t)
    }
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        // SAFETY: the workloads never ask for zero bytes.
        NonNull::new(unsafe { self.0.alloc(l) })
    }
    #[inline]
    unsafe fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        // SAFETY: forwarded.
        unsafe { self.0.dealloc(p.as_ptr(), l) }
    }
    #[inline]
    unsafe fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded (talc's own in-place realloc, else move).
        NonNull::new(unsafe { self.0.realloc(p.as_ptr(), l, new) })
    }
}

struct Rlsf(rlsf::Tlsf<'static, u32, u32, 24, 32>);
impl Heap for Rlsf {
    const NAME: &'static str = "rlsf";
    unsafe fn over(base: *mut u8, len: usize) -> Self {
        let mut t = rlsf::Tlsf::new();
        let block = NonNull::slice_from_raw_parts(NonNull::new(base).unwrap(), len);
        // SAFETY: forwarded.
        unsafe {
            t.insert_free_block_ptr(block)
                .expect("rlsf takes the region")
        };
        Rlsf(t)
    }
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        self.0.allocate(l)
    }
    #[inline]
    unsafe fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        // SAFETY: forwarded.
        unsafe { self.0.deallocate(p, l.align()) }
    }
    #[inline]
    unsafe fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded (rlsf's own realloc, in place when it can).
        unsafe {
            self.0
                .reallocate(p, Layout::from_size_align(new, l.align()).ok()?)
        }
    }
}

struct LinkedList(linked_list_allocator::Heap);
impl Heap for LinkedList {
    const NAME: &'static str = "linked_list";
    unsafe fn over(base: *mut u8, len: usize) -> Self {
        let mut h = linked_list_allocator::Heap::empty();
        // SAFETY: forwarded.
        unsafe { h.init(base, len) };
        LinkedList(h)
    }
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        self.0.allocate_first_fit(l).ok()
    }
    #[inline]
    unsafe fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        // SAFETY: forwarded.
        unsafe { self.0.deallocate(p, l) }
    }
    #[inline]
    unsafe fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded.
        unsafe { move_realloc(self, p, l, new) }
    }
}

struct Buddy(buddy_system_allocator::Heap<32>);
impl Heap for Buddy {
    const NAME: &'static str = "buddy";
    unsafe fn over(base: *mut u8, len: usize) -> Self {
        let mut h = buddy_system_allocator::Heap::<32>::new();
        // SAFETY: forwarded.
        unsafe { h.init(base as usize, len) };
        Buddy(h)
    }
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        self.0.alloc(l).ok()
    }
    #[inline]
    unsafe fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        // SAFETY: forwarded.
        unsafe { self.0.dealloc(p, l) }
    }
    #[inline]
    unsafe fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded.
        unsafe { move_realloc(self, p, l, new) }
    }
}

const NAMES: [&str; 5] = [
    Hk::NAME,
    Talc::NAME,
    Rlsf::NAME,
    LinkedList::NAME,
    Buddy::NAME,
];

// -------------------------------------------------------------------------------------------
// Workloads
// -------------------------------------------------------------------------------------------

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    /// Mostly 8, a quarter 16, a sixteenth 32, … up to 2048 (each step a quarter as likely).
    fn align(&mut self) -> usize {
        8 << ((self.next() as u16).trailing_zeros() / 2).min(8)
    }
}

#[derive(Clone, Copy)]
enum Op {
    Alloc { slot: u32, size: u32, align: u32 },
    Free { slot: u32 },
    Realloc { slot: u32, size: u32 },
}

/// `n` operations over `slots` slots: an empty slot gets a block (size uniform in 1..=max); a
/// full one is freed (2/3) or resized (1/3). Everything is freed at the end.
fn stream(max: usize, slots: usize, n: usize, seed: u64) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut full = vec![false; slots];
    let mut ops = Vec::with_capacity(n + slots);
    for _ in 0..n {
        let slot = rng.range(0, slots - 1);
        if !full[slot] {
            let (size, align) = (rng.range(1, max), rng.align());
            ops.push(Op::Alloc {
                slot: slot as u32,
                size: size as u32,
                align: align as u32,
            });
            full[slot] = true;
        } else if rng.next() % 3 == 0 {
            ops.push(Op::Realloc {
                slot: slot as u32,
                size: rng.range(1, max) as u32,
            });
        } else {
            ops.push(Op::Free { slot: slot as u32 });
            full[slot] = false;
        }
    }
    for (slot, &f) in full.iter().enumerate() {
        if f {
            ops.push(Op::Free { slot: slot as u32 });
        }
    }
    ops
}

/// Slots for a maximum size: about a third of the region live on average.
fn slots_for(max: usize) -> usize {
    (REGION / 3 / (max / 2)).min(4096)
}

type Slot = Option<(NonNull<u8>, Layout)>;

/// Runs one operation; false if an allocation failed.
#[inline(always)]
fn step<H: Heap>(h: &mut H, slots: &mut [Slot], op: Op) -> bool {
    match op {
        Op::Alloc { slot, size, align } => {
            // SAFETY: a power of two below 4096 and a small size.
            let l = unsafe { Layout::from_size_align_unchecked(size as usize, align as usize) };
            let p = h.alloc(l);
            slots[slot as usize] = p.map(|p| (p, l));
            p.is_some()
        }
        Op::Free { slot } => {
            if let Some((p, l)) = slots[slot as usize].take() {
                // SAFETY: live, allocated with `l`.
                unsafe { h.dealloc(p, l) };
            }
            true
        }
        Op::Realloc { slot, size } => {
            let Some((p, l)) = slots[slot as usize] else {
                return true;
            };
            // SAFETY: live, allocated with `l`.
            match unsafe { h.realloc(p, l, size as usize) } {
                Some(q) => {
                    // SAFETY: as above.
                    let nl = unsafe { Layout::from_size_align_unchecked(size as usize, l.align()) };
                    slots[slot as usize] = Some((q, nl));
                    true
                }
                None => false,
            }
        }
    }
}

/// Bytes written before every timed run to push the previous run's lines out of this core's
/// L2 (2 MiB here). Without it the allocator that runs right after one with a similar layout
/// (talc after heapkeep: the same stream gives nearly the same addresses) starts warm and the
/// one after a different layout (heapkeep after buddy) starts cold: a bias of up to 8% seen at
/// 4 KiB. The region itself stays in the (much larger) L3 for everyone.
const EVICT: usize = 8 << 20;

/// Touches `EVICT` bytes of scratch memory (see there).
fn evict() {
    use std::sync::OnceLock;
    static SCRATCH: OnceLock<usize> = OnceLock::new();
    let base = *SCRATCH
        .get_or_init(|| Box::leak(vec![1u8; EVICT].into_boxed_slice()).as_mut_ptr() as usize);
    let p = base as *mut u8;
    for i in (0..EVICT).step_by(64) {
        // SAFETY: `p..p + EVICT` is a leaked buffer only this function touches (the bench is
        // single-threaded).
        unsafe {
            p.add(i)
                .write_volatile(p.add(i).read_volatile().wrapping_add(1))
        };
    }
}

/// Writes the whole region, then [`evict`]s: every timed run starts from the same state,
/// whoever ran before. [`evict`] alone left the previous run's traces in the TLB (8 MiB of
/// scratch replaces only part of the region's 4,096 page entries) and in L3: the report's
/// rotation put heapkeep after buddy or talc and talc after heapkeep or rlsf, and it read
/// heapkeep/talc 2-9% below the adjacent pairs of `--ab` at every size up to 4 KiB.
fn prime(region: *mut u8) {
    // SAFETY: the region is ours and no heap is over it between runs.
    unsafe { std::ptr::write_bytes(region, 0, REGION) };
    black_box(region);
    evict();
}

/// Seconds for the whole stream; panics if anything failed (the budget leaves room).
#[inline(never)]
fn throughput<H: Heap>(region: *mut u8, ops: &[Op], slots: usize) -> f64 {
    prime(region);
    // SAFETY: the region is ours; the previous heap over it is gone.
    let mut h = unsafe { H::over(region, REGION) };
    let mut table: Vec<Slot> = vec![None; slots];
    let t = Instant::now();
    let mut failed = 0usize;
    for &op in ops {
        failed += !step(&mut h, &mut table, op) as usize;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(failed, 0, "{}: {failed} operations failed", H::NAME);
    black_box(&h);
    secs
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn ticks() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn ticks() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Nanoseconds per tick.
fn ns_per_tick() -> f64 {
    let (t0, i0) = (ticks(), Instant::now());
    while i0.elapsed().as_millis() < 50 {}
    i0.elapsed().as_nanos() as f64 / (ticks() - t0) as f64
}

/// The `q` quantile of `sorted` (ascending clock readings), read between the clock's steps.
///
/// The time stamp counter here moves in steps of about 26 ticks (9 ns), each step read as
/// one of two neighbouring values (25 or 26, 51 or 52, ...). So a raw quantile of 600 ns
/// resolves only 1.5%, and two allocators a fraction of a step apart read either equal or a
/// whole step apart. A reading stands for true times spread over one step around it (the
/// difference of two readings rounds the true time to a neighbouring step), so the quantile
/// is read as grouped data: readings closer than a quarter step form one step (a *cluster*);
/// from the bottom of the cluster holding the quantile's rank, the share of that cluster's
/// readings below the rank, times the step. The step is the median of the gaps of more than
/// 2 ticks between neighbouring distinct readings, when at least a quarter of those gaps are
/// that wide (half of them here); otherwise the clock has no steps (only the sparse tail has
/// wide gaps) and the step is 1, which gives the plain quantile to within a tick.
fn quantile_between_steps(sorted: &[u64], q: f64) -> f64 {
    let distinct = sorted.windows(2).filter(|w| w[1] > w[0]).count();
    let mut gaps: Vec<u64> = sorted
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 2)
        .collect();
    let step = if gaps.is_empty() || gaps.len() * 4 < distinct {
        1
    } else {
        let mid = gaps.len() / 2;
        *gaps.select_nth_unstable(mid).1
    };
    let near = (step / 4).max(1);
    let rank = (sorted.len() - 1) as f64 * q;
    let at = rank as usize;
    // The cluster around `sorted[at]`: neighbours closer than `near` to the next one.
    let mut lo = at;
    while lo > 0 && sorted[lo] - sorted[lo - 1] < near {
        lo -= 1;
    }
    let mut hi = at + 1;
    while hi < sorted.len() && sorted[hi] - sorted[hi - 1] < near {
        hi += 1;
    }
    let count = (hi - lo) as f64;
    let centre = sorted[lo..hi].iter().map(|&t| t as f64).sum::<f64>() / count;
    let step = step as f64;
    centre - step / 2.0 + step * ((rank + 0.5 - lo as f64) / count).clamp(0.0, 1.0)
}

/// Every operation timed on its own: (p50, p99, max) in ticks, the p99 read between the
/// clock's steps ([`quantile_between_steps`]).
#[inline(never)]
fn latency<H: Heap>(
    region: *mut u8,
    ops: &[Op],
    slots: usize,
    times: &mut Vec<u64>,
) -> (u64, f64, u64) {
    prime(region);
    // SAFETY: as `throughput`.
    let mut h = unsafe { H::over(region, REGION) };
    let mut table: Vec<Slot> = vec![None; slots];
    times.clear();
    for &op in ops {
        let t = ticks();
        step(&mut h, &mut table, op);
        times.push(ticks() - t);
    }
    black_box(&h);
    times.sort_unstable();
    let p50 = times[(times.len() - 1) / 2];
    (
        p50,
        quantile_between_steps(times, 0.99),
        *times.last().unwrap(),
    )
}

/// What the operations at and above the p99 of one latency run are ([`tail_of`]).
#[derive(Default)]
struct Tail {
    /// Allocations, frees, reallocations in place, moved down over their old
    /// place (the new block overlaps the old one), moved elsewhere, and
    /// operations that failed or found their slot empty (they did nothing).
    kinds: [usize; 6],
    /// Bytes the moves among them copied, in all.
    copied: usize,
    /// Moves in the whole run (overlapping, elsewhere).
    moves: [usize; 2],
    ops: usize,
    /// Median ticks of the moves (overlapping, elsewhere) that copied 20-22 KiB.
    band: [u64; 2],
}

impl std::fmt::Display for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, fr, inplace, down, away, idle] = self.kinds;
        let moved = (down + away).max(1);
        write!(
            f,
            "above p99: {a} alloc, {fr} free, {inplace} realloc in place, {down} moved down over \
             itself, {away} moved away (mean copy {} B), {idle} failed or idle; in the run: {} of {} ops moved down, {} \
             moved away; median ticks of the 20-22 KiB moves: down {}, away {}",
            self.copied / moved,
            self.moves[0],
            self.ops,
            self.moves[1],
            self.band[0],
            self.band[1]
        )
    }
}

/// A latency run of `ops` that also notes what each operation did, and sums that up for the
/// top 1% of the operations by time (`--tail`; ties at the edge fall either way: the clock
/// moves in steps).
#[inline(never)]
fn tail_of<H: Heap>(region: *mut u8, ops: &[Op], slots: usize) -> Tail {
    prime(region);
    // SAFETY: as `throughput`.
    let mut h = unsafe { H::over(region, REGION) };
    let mut table: Vec<Slot> = vec![None; slots];
    // (ticks, kind, bytes copied)
    let mut seen: Vec<(u64, usize, usize)> = Vec::with_capacity(ops.len());
    let mut t = Tail {
        ops: ops.len(),
        ..Tail::default()
    };
    for &op in ops {
        // The block a free or a reallocation finds in its slot (none: it does nothing).
        let before = match op {
            Op::Free { slot } | Op::Realloc { slot, .. } => table[slot as usize],
            Op::Alloc { .. } => None,
        };
        let t0 = ticks();
        let ok = step(&mut h, &mut table, op);
        let dt = ticks() - t0;
        let (kind, copied) = match (op, before) {
            _ if !ok => (5, 0),
            (Op::Alloc { .. }, _) => (0, 0),
            (Op::Free { .. }, Some(_)) => (1, 0),
            (Op::Free { .. } | Op::Realloc { .. }, None) => (5, 0),
            (Op::Realloc { slot, size }, Some((p, l))) => {
                let q = table[slot as usize].map_or(p, |s| s.0);
                let (p, q) = (p.as_ptr() as usize, q.as_ptr() as usize);
                let copy = l.size().min(size as usize);
                if p == q {
                    (2, 0)
                } else if q < p && p < q + size as usize {
                    t.moves[0] += 1;
                    (3, copy)
                } else {
                    t.moves[1] += 1;
                    (4, copy)
                }
            }
        };
        seen.push((dt, kind, copied));
    }
    black_box(&h);
    for (k, band) in t.band.iter_mut().enumerate() {
        let mut b: Vec<u64> = seen
            .iter()
            .filter(|s| s.1 == 3 + k && (20 << 10..22 << 10).contains(&s.2))
            .map(|s| s.0)
            .collect();
        b.sort_unstable();
        *band = b.get(b.len() / 2).copied().unwrap_or(0);
    }
    seen.sort_unstable_by_key(|s| s.0);
    for &(_, kind, copied) in &seen[seen.len() * 99 / 100..] {
        t.kinds[kind] += 1;
        t.copied += copied;
    }
    t
}

/// Where one efficiency run stopped: the bytes live (as requested), and the request that failed.
/// `free` and `largest` (free bytes, largest free block) only for allocators that can tell.
#[derive(Clone, Copy, Default)]
struct Stop {
    live: usize,
    request: usize,
    free: Option<usize>,
    largest: Option<usize>,
}

/// Per allocator (a row of `stops`, one stop per run over a heap of `size` bytes): the bytes
/// live at the stops, summed, over runs x `size`, in percent.
fn efficiency_pct(stops: &[Vec<Stop>], size: usize) -> Vec<f64> {
    stops
        .iter()
        .map(|e| e.iter().map(|s| s.live).sum::<usize>() as f64 / (e.len() * size) as f64 * 100.0)
        .collect()
}

/// The operation mix of an efficiency run: half allocations, a tenth frees, four tenths
/// reallocations, with sizes and an end that differ by method.
#[derive(Clone, Copy)]
enum Mix {
    /// Ours and talc's current method: allocations of `4..=cap` bytes with `cap` uniform in
    /// `16..=10,000`, reallocations to `1..=100,000` bytes (`1..100,000` when `exclusive`);
    /// the first failure of either ends the run, or with `realloc_ends` false only the first
    /// failed allocation (a failed reallocation leaves its block as it was, as `realloc`'s
    /// contract says, and the run goes on).
    Ours { exclusive: bool, realloc_ends: bool },
    /// Talc 4's published method: allocations of `1..100,000` bytes,
    /// reallocations to `1..10^11` bytes, of which those above `region` (the heap's size,
    /// bound to fail) are not made; only a failed allocation ends the run, a failed
    /// reallocation leaves its block as it was.
    TalcV4 { region: usize },
}

/// Random operations of `mix` on the blocks in `live` until the first failure that ends it.
fn run_to_failure<H: Heap>(
    h: &mut H,
    rng: &mut Rng,
    live: &mut Vec<(NonNull<u8>, Layout)>,
    mix: Mix,
) -> Stop {
    const MAX: usize = 10_000;
    let request = loop {
        match rng.next() % 10 {
            0..=4 => {
                let size = match mix {
                    Mix::Ours { .. } => {
                        let cap = rng.range(16, MAX);
                        rng.range(4, cap)
                    }
                    Mix::TalcV4 { .. } => rng.range(1, 10 * MAX - 1),
                };
                let l = Layout::from_size_align(size, rng.align()).unwrap();
                match h.alloc(l) {
                    Some(p) => live.push((p, l)),
                    None => break l.size(),
                }
            }
            5 => {
                if !live.is_empty() {
                    let (p, l) = live.swap_remove(rng.range(0, live.len() - 1));
                    // SAFETY: live.
                    unsafe { h.dealloc(p, l) };
                }
            }
            _ => {
                if !live.is_empty() {
                    let i = rng.range(0, live.len() - 1);
                    let (p, l) = live[i];
                    let (new, ends) = match mix {
                        Mix::Ours {
                            exclusive,
                            realloc_ends,
                        } => (rng.range(1, 10 * MAX - exclusive as usize), realloc_ends),
                        Mix::TalcV4 { region } => {
                            let new = rng.range(1, 100_000_000_000 - 1);
                            if new > region {
                                continue;
                            }
                            (new, false)
                        }
                    };
                    // SAFETY: live.
                    match unsafe { h.realloc(p, l, new) } {
                        Some(q) => live[i] = (q, Layout::from_size_align(new, l.align()).unwrap()),
                        None if ends => break new,
                        None => {}
                    }
                }
            }
        }
    };
    let stats = h.free_stats();
    Stop {
        live: live.iter().map(|b| b.1.size()).sum(),
        request,
        free: stats.map(|s| s.0),
        largest: stats.map(|s| s.1),
    }
}

/// Our workload: a fresh heap over the 16 MiB region, run to the first failure (of an
/// allocation or a reallocation when `realloc_ends`, else of an allocation).
fn efficiency<H: Heap>(region: *mut u8, seed: u64, realloc_ends: bool) -> Stop {
    evict();
    // SAFETY: as `throughput`.
    let mut h = unsafe { H::over(region, REGION) };
    let mut live = Vec::new();
    run_to_failure(
        &mut h,
        &mut Rng(seed),
        &mut live,
        Mix::Ours {
            exclusive: false,
            realloc_ends,
        },
    )
}

/// Talc's heap-efficiency methods: one heap over `len` bytes at `region`, created once and
/// reused for `trials` trials; each trial runs `mix` to its first failure, then frees
/// everything. Returns the stops. With `Mix::Ours { exclusive: true }` on `REF_REGION`
/// bytes this is talc's current method (its `benches/src/heap_efficiency.rs`); with
/// `Mix::TalcV4` on `V4_REGION` bytes, the benchmark behind the figures talc's README
/// published with talc 4 (its `benches/src/main.rs` then: talc 98.87%, dlmalloc 99.07%,
/// linked_list_allocator 98.28%).
fn efficiency_reference<H: Heap>(
    region: *mut u8,
    len: usize,
    trials: usize,
    seed: u64,
    mix: Mix,
) -> Vec<Stop> {
    // SAFETY: as `throughput`, for a reference region of `len` bytes.
    let mut h = unsafe { H::over(region, len) };
    let mut rng = Rng(seed);
    let mut live = Vec::new();
    (0..trials)
        .map(|_| {
            let stop = run_to_failure(&mut h, &mut rng, &mut live, mix);
            for (p, l) in live.drain(..) {
                // SAFETY: live, freed once.
                unsafe { h.dealloc(p, l) };
            }
            stop
        })
        .collect()
}

// -------------------------------------------------------------------------------------------
// Arena against bumpalo
// -------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
#[allow(dead_code)]
struct Obj {
    a: u64,
    b: [u32; 5],
}

/// Seconds for `rounds` of: `n` small objects of three shapes, then a reset.
fn arena_small(n: usize, rounds: usize) -> f64 {
    let mut arena = Arena::new();
    let t = Instant::now();
    for r in 0..rounds {
        for i in 0..n {
            black_box(arena.alloc(i as u64).ok().unwrap());
            black_box(
                arena
                    .alloc(Obj {
                        a: i as u64,
                        b: [r as u32; 5],
                    })
                    .ok()
                    .unwrap(),
            );
            black_box(arena.alloc([i as u8; 3]).ok().unwrap());
        }
        arena.reset();
    }
    t.elapsed().as_secs_f64()
}

fn bumpalo_small(n: usize, rounds: usize) -> f64 {
    let mut bump = bumpalo::Bump::new();
    let t = Instant::now();
    for r in 0..rounds {
        for i in 0..n {
            black_box(bump.alloc(i as u64));
            black_box(bump.alloc(Obj {
                a: i as u64,
                b: [r as u32; 5],
            }));
            black_box(bump.alloc([i as u8; 3]));
        }
        bump.reset();
    }
    t.elapsed().as_secs_f64()
}

/// Seconds for `rounds` of: 100 vectors each pushed to `n` elements in turn, then a reset.
fn arena_vecs(n: usize, rounds: usize) -> f64 {
    let mut arena = Arena::new();
    let t = Instant::now();
    for _ in 0..rounds {
        {
            let mut vs: Vec<allocator_api2::vec::Vec<u32, &Arena<_>>> = (0..100)
                .map(|_| allocator_api2::vec::Vec::new_in(&arena))
                .collect();
            for i in 0..n {
                for v in vs.iter_mut() {
                    v.push(i as u32);
                }
            }
            black_box(&vs);
        }
        arena.reset();
    }
    t.elapsed().as_secs_f64()
}

fn bumpalo_vecs(n: usize, rounds: usize) -> f64 {
    let mut bump = bumpalo::Bump::new();
    let t = Instant::now();
    for _ in 0..rounds {
        {
            let mut vs: Vec<allocator_api2::vec::Vec<u32, &bumpalo::Bump>> = (0..100)
                .map(|_| allocator_api2::vec::Vec::new_in(&bump))
                .collect();
            for i in 0..n {
                for v in vs.iter_mut() {
                    v.push(i as u32);
                }
            }
            black_box(&vs);
        }
        bump.reset();
    }
    t.elapsed().as_secs_f64()
}

// -------------------------------------------------------------------------------------------
// Driver, report, charts
// -------------------------------------------------------------------------------------------

/// The median over `rounds` rounds of `run(1) / run(0)`, the two taking turns at going
/// first (so neither always finds the other's lines in cache or runs in the same phase of
/// the machine's load).
fn ab_median(rounds: usize, mut run: impl FnMut(usize) -> f64) -> f64 {
    let mut r: Vec<f64> = (0..rounds)
        .map(|round| {
            let mut t = [0.0; 2];
            for j in 0..2 {
                let k = (j + round) % 2;
                t[k] = run(k);
            }
            t[1] / t[0]
        })
        .collect();
    median(&mut r)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn size_label(s: usize) -> String {
    if s >= 1024 {
        format!("{} KiB", s / 1024)
    } else {
        format!("{s} B")
    }
}

/// Runs `f` for allocator `k` (index into `NAMES`).
fn by_index<R>(k: usize, f: &mut impl FnMut(usize) -> R) -> R {
    f(k)
}

macro_rules! for_heap {
    ($k:expr, $f:ident ( $($arg:expr),* )) => {
        match $k {
            0 => $f::<Hk>($($arg),*),
            1 => $f::<Talc>($($arg),*),
            2 => $f::<Rlsf>($($arg),*),
            3 => $f::<LinkedList>($($arg),*),
            _ => $f::<Buddy>($($arg),*),
        }
    };
}

/// A grouped bar chart as SVG text: one group per label, one bar per series.
fn bar_chart(
    title: &str,
    unit: &str,
    labels: &[String],
    series: &[(&str, Vec<f64>)],
    log: bool,
) -> String {
    const COLORS: [&str; 5] = ["#d9480f", "#1971c2", "#2f9e44", "#ae3ec9", "#868e96"];
    let (w, h, left, top, bottom) = (760.0, 340.0, 60.0, 40.0, 60.0);
    let plot_h = h - top - bottom;
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0f64, f64::max)
        * 1.1;
    let min_log = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min)
        / 2.0;
    let yof = |v: f64| {
        let f = if log {
            ((v.max(min_log)).ln() - min_log.ln()) / (max.ln() - min_log.ln())
        } else {
            v / max
        };
        top + plot_h * (1.0 - f)
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" font-size="15" text-anchor="middle">{title}</text>"#,
        w / 2.0
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{unit}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        top + plot_h,
        w - 10.0,
        top + plot_h
    );
    let group_w = (w - left - 10.0) / labels.len() as f64;
    let bar_w = group_w * 0.8 / series.len() as f64;
    for (g, label) in labels.iter().enumerate() {
        let gx = left + g as f64 * group_w + group_w * 0.1;
        for (i, (_, vals)) in series.iter().enumerate() {
            let v = vals[g];
            let y = yof(v);
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{v:.3}</title></rect>"#,
                gx + i as f64 * bar_w,
                bar_w * 0.95,
                top + plot_h - y,
                COLORS[i % 5]
            );
            let text = if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{text}</text>"#,
                gx + i as f64 * bar_w + bar_w * 0.47,
                y - 3.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            gx + group_w * 0.4,
            top + plot_h + 16.0
        );
    }
    for (i, (name, _)) in series.iter().enumerate() {
        let x = left + i as f64 * 130.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{name}</text>"#,
            h - 22.0,
            COLORS[i % 5],
            x + 16.0,
            h - 12.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A number from the environment (`--ab`'s rounds, `--profile`'s allocator), if set and valid.
fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The streams `--profile` and `--tail` run, with their size index: the one REGION_BENCH_SIZE
/// names, or all.
fn chosen(streams: &[(usize, Vec<Op>)]) -> impl Iterator<Item = (usize, &(usize, Vec<Op>))> {
    let only = env_number("REGION_BENCH_SIZE");
    streams
        .iter()
        .enumerate()
        .filter(move |(i, _)| only.is_none_or(|o| o == *i))
}

fn main() {
    let mut quick = false;
    let mut profile = false;
    let mut ab = false;
    let mut tail = false;
    let mut out = String::from("results/region");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            // For profiling: only the throughput streams of one allocator (index into NAMES
            // in REGION_BENCH_HEAP, default heapkeep; one size index in REGION_BENCH_SIZE),
            // ten times each, printed; nothing written.
            "--profile" => profile = true,
            // For judging a change: only the throughput streams, heapkeep and talc taking
            // turns run by run (as in the report, so neither finds the region's lines its
            // own run left in cache), REGION_BENCH_ROUNDS rounds (default 15); prints the
            // median heapkeep/talc throughput ratio per size, then the same for the p99
            // latency against rlsf and for the arena against bumpalo (times: lower is
            // better for those two).
            "--ab" => ab = true,
            // For explaining a p99: what the operations at and above each allocator's p99
            // are (allocations, frees, reallocations in place, moved down over themselves,
            // moved elsewhere, failed or idle) and how many bytes the moves copied, per size (one size with
            // REGION_BENCH_SIZE), for heapkeep, talc and rlsf; one run each, printed.
            "--tail" => tail = true,
            "--out" => out = args.next().expect("--out DIR"),
            _ => {
                eprintln!("usage: heapkeep-bench-region [--quick] [--out DIR] | --ab | --profile | --tail");
                std::process::exit(2);
            }
        }
    }
    let rounds = if quick { 3 } else { 21 };
    let n_ops = if quick { 100_000 } else { 300_000 };
    let eff_seeds = if quick { 8 } else { 24 };
    let ref_trials = if quick { 4 } else { 30 };

    // One region for everyone, touched once so no run pays its page faults.
    let layout = Layout::from_size_align(REGION, 4096).unwrap();
    // SAFETY: a non-zero layout; the region is never freed.
    let region = unsafe { std::alloc::alloc(layout) };
    assert!(!region.is_null());
    // SAFETY: the whole region is ours.
    unsafe { region.write_bytes(0x5a, REGION) };
    let tick_ns = ns_per_tick();

    let streams: Vec<(usize, Vec<Op>)> = MAX_SIZES
        .iter()
        .map(|&m| (slots_for(m), stream(m, slots_for(m), n_ops, m as u64)))
        .collect();

    if ab {
        let rounds = env_number("REGION_BENCH_ROUNDS").unwrap_or(15);
        let mut times = Vec::with_capacity(n_ops * 2);
        let show = |what: &str, ratios: Vec<f64>| {
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            println!("{what} {}", shown.join(" "));
        };
        // Heapkeep is run 0 (talc run 1): the ratio of times is talc/heapkeep, which is
        // heapkeep/talc in operations per second.
        show(
            "heapkeep/talc throughput",
            streams
                .iter()
                .map(|(slots, ops)| {
                    ab_median(rounds, |k| for_heap!(k, throughput(region, ops, *slots)))
                })
                .collect(),
        );
        // Rlsf is run 0 (index 2), heapkeep run 1: heapkeep/rlsf.
        show(
            "heapkeep/rlsf p99",
            streams
                .iter()
                .map(|(slots, ops)| {
                    ab_median(rounds, |k| {
                        for_heap!(2 - 2 * k, latency(region, ops, *slots, &mut times)).1
                    })
                })
                .collect(),
        );
        let (an, ar, vn, vr) = (100_000, 20, 2_000, 20);
        show(
            "arena/bumpalo small, vecs",
            vec![
                ab_median(rounds, |k| match k {
                    0 => bumpalo_small(an, ar),
                    _ => arena_small(an, ar),
                }),
                ab_median(rounds, |k| match k {
                    0 => bumpalo_vecs(vn, vr),
                    _ => arena_vecs(vn, vr),
                }),
            ],
        );
        return;
    }
    if tail {
        for (i, (slots, ops)) in chosen(&streams) {
            for (k, name) in NAMES.iter().enumerate().take(3) {
                let t = for_heap!(k, tail_of(region, ops, *slots));
                println!("{} {name}: {t}", size_label(MAX_SIZES[i]));
            }
        }
        return;
    }
    if profile {
        let which = env_number("REGION_BENCH_HEAP").unwrap_or(0);
        for (_, (slots, ops)) in chosen(&streams) {
            let secs: f64 = (0..10)
                .map(|_| for_heap!(which, throughput(region, ops, *slots)))
                .sum();
            print!("{:.1} ", 10.0 * ops.len() as f64 / secs / 1e6);
        }
        println!("Mops/s {}", NAMES[which]);
        return;
    }
    // [size][allocator][round]
    let mut tput = vec![vec![Vec::new(); 5]; MAX_SIZES.len()];
    let mut p99 = vec![vec![Vec::new(); 5]; MAX_SIZES.len()];
    let mut worst = vec![vec![Vec::new(); 5]; MAX_SIZES.len()];
    let mut times = Vec::with_capacity(n_ops * 2);
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        for (s, (slots, ops)) in streams.iter().enumerate() {
            for j in 0..5 {
                // The order rotates every round and runs backwards every
                // other round, so each allocator follows each of its two
                // neighbours in the cycle equally often. Forwards only,
                // talc always ran right after heapkeep, whose layout is
                // close, and may have found the region's pages still in
                // the TLB (which the L2 eviction leaves): the report then
                // put heapkeep 3-6% below `--ab` at some sizes.
                let k = if round % 2 == 0 {
                    (j + round) % 5
                } else {
                    (round + 5 - j) % 5
                };
                let secs = by_index(k, &mut |k| for_heap!(k, throughput(region, ops, *slots)));
                tput[s][k].push(ops.len() as f64 / secs / 1e6);
                let (_, p, m) = by_index(k, &mut |k| {
                    for_heap!(k, latency(region, ops, *slots, &mut times))
                });
                p99[s][k].push(p * tick_ns);
                worst[s][k].push(m as f64 * tick_ns);
            }
        }
    }
    // Our workload, ended by either failure (`stops`) or by the first failed allocation
    // (`alloc_stops`).
    let mut stops = vec![Vec::new(); 5];
    let mut alloc_stops = vec![Vec::new(); 5];
    for seed in 0..eff_seeds {
        for k in 0..5 {
            let seed = 1000 + seed as u64;
            stops[k].push(for_heap!(k, efficiency(region, seed, true)));
            alloc_stops[k].push(for_heap!(k, efficiency(region, seed, false)));
        }
    }
    let (eff, alloc_eff) = (
        efficiency_pct(&stops, REGION),
        efficiency_pct(&alloc_stops, REGION),
    );
    // Talc's method, on a region of its size.
    let ref_layout = Layout::from_size_align(REF_REGION, 4096).unwrap();
    // SAFETY: a non-zero layout; the region is never freed.
    let ref_region = unsafe { std::alloc::alloc(ref_layout) };
    assert!(!ref_region.is_null());
    // SAFETY: the whole region is ours.
    unsafe { ref_region.write_bytes(0x5a, REF_REGION) };
    let ref_stops: Vec<Vec<Stop>> = (0..5)
        .map(|k| {
            for_heap!(
                k,
                efficiency_reference(
                    ref_region,
                    REF_REGION,
                    ref_trials,
                    7,
                    Mix::Ours {
                        exclusive: true,
                        realloc_ends: true
                    }
                )
            )
        })
        .collect();
    let ref_eff = efficiency_pct(&ref_stops, REF_REGION);
    // Talc 4's published method, on a region of its size.
    let v4_layout = Layout::from_size_align(V4_REGION, 4096).unwrap();
    // SAFETY: a non-zero layout; the region is never freed.
    let v4_region = unsafe { std::alloc::alloc(v4_layout) };
    assert!(!v4_region.is_null());
    // SAFETY: the whole region is ours.
    unsafe { v4_region.write_bytes(0x5a, V4_REGION) };
    let v4_stops: Vec<Vec<Stop>> = (0..5)
        .map(|k| {
            let mix = Mix::TalcV4 { region: V4_REGION };
            for_heap!(
                k,
                efficiency_reference(v4_region, V4_REGION, ref_trials, 11, mix)
            )
        })
        .collect();
    let v4_eff = efficiency_pct(&v4_stops, V4_REGION);
    let med = |v: &mut Vec<Vec<Vec<f64>>>| -> Vec<Vec<f64>> {
        v.iter_mut()
            .map(|row| row.iter_mut().map(|r| median(r)).collect())
            .collect()
    };
    // heapkeep against a peer, per size: the median over rounds of the ratio
    // of the two runs in that round, so a drift in the machine's speed over
    // the minutes of the report cancels out (the medians of each column
    // alone do not pair the runs). Taken before `med` sorts the rounds.
    let vs = |v: &Vec<Vec<Vec<f64>>>, peer: usize| -> Vec<f64> {
        v.iter()
            .map(|row| {
                let mut r: Vec<f64> = row[0].iter().zip(&row[peer]).map(|(a, b)| a / b).collect();
                median(&mut r)
            })
            .collect()
    };
    // [talc, rlsf] for each metric.
    let tput_vs = [vs(&tput, 1), vs(&tput, 2)];
    let p99_vs = [vs(&p99, 1), vs(&p99, 2)];
    let worst_vs = [vs(&worst, 1), vs(&worst, 2)];
    let (tput, p99, worst) = (med(&mut tput), med(&mut p99), med(&mut worst));

    // Arena against bumpalo, interleaved.
    let (an, ar) = if quick { (100_000, 20) } else { (100_000, 60) };
    let (vn, vr) = if quick { (2_000, 20) } else { (2_000, 60) };
    let (mut a_small, mut b_small, mut a_vec, mut b_vec) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        if round % 2 == 0 {
            a_small.push(arena_small(an, ar));
            b_small.push(bumpalo_small(an, ar));
            a_vec.push(arena_vecs(vn, vr));
            b_vec.push(bumpalo_vecs(vn, vr));
        } else {
            b_small.push(bumpalo_small(an, ar));
            a_small.push(arena_small(an, ar));
            b_vec.push(bumpalo_vecs(vn, vr));
            a_vec.push(arena_vecs(vn, vr));
        }
    }
    let ratio_small = median(
        &mut a_small
            .iter()
            .zip(&b_small)
            .map(|(a, b)| a / b)
            .collect::<Vec<_>>(),
    );
    let ratio_vec = median(
        &mut a_vec
            .iter()
            .zip(&b_vec)
            .map(|(a, b)| a / b)
            .collect::<Vec<_>>(),
    );
    let (a_small, b_small, a_vec, b_vec) = (
        median(&mut a_small),
        median(&mut b_small),
        median(&mut a_vec),
        median(&mut b_vec),
    );

    // The report.
    let labels: Vec<String> = MAX_SIZES.iter().map(|&m| size_label(m)).collect();
    let mut r = String::new();
    let _ = writeln!(r, "Region {} MiB; {} ops per stream; {rounds} rounds (medians; a ratio to a peer is the median of the rounds' ratios); efficiency over {eff_seeds} seeds.\n", REGION >> 20, n_ops);
    let _ = writeln!(
        r,
        "### Throughput (million operations per second, higher is better)\n"
    );
    let _ = writeln!(
        r,
        "| max size | {} | hk/talc | hk/rlsf |",
        NAMES.join(" | ")
    );
    let _ = writeln!(r, "|---|{}---:|---:|", "---:|".repeat(5));
    for (s, label) in labels.iter().enumerate() {
        let cells: Vec<String> = tput[s].iter().map(|v| format!("{v:.1}")).collect();
        let _ = writeln!(
            r,
            "| {label} | {} | {:.2} | {:.2} |",
            cells.join(" | "),
            tput_vs[0][s],
            tput_vs[1][s]
        );
    }
    for (title, data, ratios) in [
        ("99th-percentile time of one operation (ns)", &p99, &p99_vs),
        ("Worst time of one operation (ns)", &worst, &worst_vs),
    ] {
        let _ = writeln!(r, "\n### {title}, lower is better\n");
        let _ = writeln!(
            r,
            "| max size | {} | hk/rlsf | hk/talc |",
            NAMES.join(" | ")
        );
        let _ = writeln!(r, "|---|{}---:|---:|", "---:|".repeat(5));
        for (s, label) in labels.iter().enumerate() {
            let cells: Vec<String> = data[s].iter().map(|v| format!("{v:.0}")).collect();
            let _ = writeln!(
                r,
                "| {label} | {} | {:.2} | {:.2} |",
                cells.join(" | "),
                ratios[1][s],
                ratios[0][s]
            );
        }
    }
    // One table per efficiency method: a heading, the allocators, a row of
    // percentages.
    let mut eff_table = |heading: String, values: &[f64]| {
        let _ = writeln!(r, "\n### {heading}\n");
        let _ = writeln!(r, "| {} |", NAMES.join(" | "));
        let _ = writeln!(r, "|{}", "---:|".repeat(5));
        let cells: Vec<String> = values.iter().map(|e| format!("{e:.2}%")).collect();
        let _ = writeln!(r, "| {} |", cells.join(" | "));
    };
    eff_table(
        "Heap efficiency (our workload to the first failed allocation or reallocation; bytes live / region size, higher is better)".into(),
        &eff,
    );
    eff_table(
        "Heap efficiency, ending at the first failed allocation (our workload; a failed reallocation leaves its block and the run goes on)".into(),
        &alloc_eff,
    );
    eff_table(
        format!(
            "Heap efficiency, talc's method (one {} MiB heap reused for {ref_trials} trials; bytes live at each trial's first failure, summed, over trials x heap size)",
            REF_REGION >> 20
        ),
        &ref_eff,
    );
    eff_table(
        format!(
            "Heap efficiency, talc 4's published method (one {} MiB heap reused for {ref_trials} trials; allocations of 1..100,000 bytes; a trial ends at the first failed allocation, not reallocation)",
            V4_REGION >> 20
        ),
        &v4_eff,
    );
    let _ = writeln!(r, "\n### heapkeep at the first failure (means over runs)\n");
    let _ = writeln!(
        r,
        "| workload | live | free | largest free block | failed request | failures a compacting heap would serve |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|");
    for (name, list, size) in [
        ("ours, 16 MiB", &stops[0], REGION),
        (
            "ours to the first failed allocation, 16 MiB",
            &alloc_stops[0],
            REGION,
        ),
        ("talc's method, 128 MiB", &ref_stops[0], REF_REGION),
        (
            "talc 4's published method, 512 MiB",
            &v4_stops[0],
            V4_REGION,
        ),
    ] {
        let n = list.len() as f64;
        let mean = |f: &dyn Fn(&Stop) -> f64| list.iter().map(f).sum::<f64>() / n;
        let _ = writeln!(
            r,
            "| {name} | {:.2}% | {:.2}% | {:.1} KiB | {:.1} KiB | {} of {} |",
            mean(&|s| s.live as f64 / size as f64 * 100.0),
            mean(&|s| s.free.unwrap_or(0) as f64 / size as f64 * 100.0),
            mean(&|s| s.largest.unwrap_or(0) as f64 / 1024.0),
            mean(&|s| s.request as f64 / 1024.0),
            list.iter()
                .filter(|s| s.request + 64 <= s.free.unwrap_or(0))
                .count(),
            list.len()
        );
    }
    let _ = writeln!(
        r,
        "\n### Arena against bumpalo (seconds, lower is better)\n"
    );
    let _ = writeln!(r, "| workload | heapkeep Arena | bumpalo | arena/bumpalo |");
    let _ = writeln!(r, "|---|---:|---:|---:|");
    let _ = writeln!(
        r,
        "| {an} x 3 small objects, reset; x{ar} | {a_small:.4} | {b_small:.4} | {ratio_small:.3} |"
    );
    let _ = writeln!(
        r,
        "| 100 Vecs pushed to {vn}, reset; x{vr} | {a_vec:.4} | {b_vec:.4} | {ratio_vec:.3} |"
    );

    let min_tput = tput_vs[0].iter().copied().fold(f64::MAX, f64::min);
    let max_p99 = p99_vs[1].iter().copied().fold(0.0, f64::max);
    let arena_worst = ratio_small.max(ratio_vec);
    let pass = |ok: bool| if ok { "**PASS**" } else { "**FAIL**" };
    let _ = writeln!(r, "\n### Bar check\n");
    let _ = writeln!(r, "| criterion | result | detail |");
    let _ = writeln!(r, "|---|---|---|");
    let _ = writeln!(
        r,
        "| throughput >= talc on every size range | {} | lowest hk/talc {min_tput:.2} |",
        pass(min_tput >= 1.0)
    );
    let _ = writeln!(
        r,
        "| p99 latency <= rlsf on every size range | {} | highest hk/rlsf {max_p99:.2} |",
        pass(max_p99 <= 1.0)
    );
    let _ = writeln!(
        r,
        "| heap efficiency >= 99% (the issue's definition: in use when the first allocation fails) | {} | our workload {:.2}%, talc 4's published method {:.2}% |",
        pass(alloc_eff[0] >= 99.0 && v4_eff[0] >= 99.0),
        alloc_eff[0],
        v4_eff[0]
    );
    let _ = writeln!(
        r,
        "| the same, stricter: a failed reallocation also ends the run | {} | our workload {:.2}%, talc's method {:.2}% |",
        pass(eff[0] >= 99.0 && ref_eff[0] >= 99.0),
        eff[0],
        ref_eff[0]
    );
    let _ = writeln!(
        r,
        "| arena within 5% of bumpalo | {} | worst arena/bumpalo {arena_worst:.3} |",
        pass(arena_worst <= 1.05)
    );
    println!("{r}");

    std::fs::create_dir_all(&out).expect("create the output directory");
    std::fs::write(format!("{out}/report.md"), &r).unwrap();
    let mut csv = String::from("metric,max_size,allocator,value\n");
    for (s, &m) in MAX_SIZES.iter().enumerate() {
        for (k, name) in NAMES.iter().enumerate() {
            let _ = writeln!(csv, "mops,{m},{name},{:.3}", tput[s][k]);
            let _ = writeln!(csv, "p99_ns,{m},{name},{:.1}", p99[s][k]);
            let _ = writeln!(csv, "max_ns,{m},{name},{:.1}", worst[s][k]);
        }
    }
    for (k, name) in NAMES.iter().enumerate() {
        let _ = writeln!(csv, "efficiency_pct,,{name},{:.3}", eff[k]);
        let _ = writeln!(
            csv,
            "efficiency_to_failed_alloc_pct,,{name},{:.3}",
            alloc_eff[k]
        );
        let _ = writeln!(csv, "efficiency_talc_method_pct,,{name},{:.3}", ref_eff[k]);
        let _ = writeln!(csv, "efficiency_talc4_method_pct,,{name},{:.3}", v4_eff[k]);
    }
    let _ = writeln!(
        csv,
        "arena_small_s,,heapkeep,{a_small:.5}\narena_small_s,,bumpalo,{b_small:.5}"
    );
    let _ = writeln!(
        csv,
        "arena_vecs_s,,heapkeep,{a_vec:.5}\narena_vecs_s,,bumpalo,{b_vec:.5}"
    );
    std::fs::write(format!("{out}/results.csv"), csv).unwrap();
    let series = |data: &Vec<Vec<f64>>| -> Vec<(&str, Vec<f64>)> {
        NAMES
            .iter()
            .enumerate()
            .map(|(k, n)| (*n, data.iter().map(|row| row[k]).collect()))
            .collect()
    };
    std::fs::write(
        format!("{out}/throughput.svg"),
        bar_chart(
            "Random alloc/free/realloc throughput by maximum size (16 MiB region)",
            "million ops/s (log)",
            &labels,
            &series(&tput),
            true,
        ),
    )
    .unwrap();
    std::fs::write(
        format!("{out}/latency.svg"),
        bar_chart(
            "99th-percentile time of one operation",
            "ns (log)",
            &labels,
            &series(&p99),
            true,
        ),
    )
    .unwrap();
    let eff_series: Vec<(&str, Vec<f64>)> = NAMES
        .iter()
        .enumerate()
        .map(|(k, n)| (*n, vec![eff[k], alloc_eff[k], ref_eff[k], v4_eff[k]]))
        .collect();
    std::fs::write(
        format!("{out}/efficiency.svg"),
        bar_chart(
            "Heap efficiency: live bytes at the first failure",
            "% of the region",
            &[
                "ours (16 MiB, fresh heap per seed)".to_string(),
                "ours to the first failed allocation".to_string(),
                format!("talc's method ({} MiB, one heap)", REF_REGION >> 20),
                format!("talc 4's published method ({} MiB)", V4_REGION >> 20),
            ],
            &eff_series,
            false,
        ),
    )
    .unwrap();
}

#[cfg(test)]
mod tests {
    use super::quantile_between_steps;

    /// With a clock of one-tick resolution, the plain quantile to within a tick: also when a
    /// sparse tail has wide gaps (they are not steps).
    #[test]
    fn without_steps_the_quantile_is_the_plain_one() {
        let times: Vec<u64> = (0..1000).collect();
        let q = quantile_between_steps(&times, 0.99);
        assert!((q - 989.0).abs() <= 1.0, "{q}");
        let mut tailed: Vec<u64> = (0..990).collect();
        tailed.extend((0..10).map(|i| 1000 + 100 * i));
        let q = quantile_between_steps(&tailed, 0.99);
        assert!((q - 989.0).abs() <= 1.0, "{q}");
    }

    /// Readings in steps of 26 ticks, each step read as one of two neighbouring values (as
    /// this machine's counter does): the quantile moves with the share of the readings on the
    /// step that holds it, so two distributions a fraction of a step apart (more readings on
    /// the upper step) read apart, in the right order and by about that fraction.
    #[test]
    fn between_steps_the_quantile_follows_the_share_on_each_step() {
        // 1000 readings: `low` of them on the step at 520 (as 519 or 520), the rest on the
        // one at 546 (as 545 or 546); a few far below, so the clusters have neighbours.
        let at = |low: usize| {
            let mut t: Vec<u64> = (0..1000)
                .map(|i| if i < low { 519 } else { 545 } + (i % 2) as u64)
                .collect();
            t[0] = 26;
            t[1] = 52;
            t.sort_unstable();
            quantile_between_steps(&t, 0.99)
        };
        // The 99% rank (989.01) on the upper step in both, but higher when more of the
        // readings are on it (the distribution sits higher).
        let (few, many) = (at(985), at(900));
        assert!(many > few, "{few} {many}");
        assert!(few >= 545.5 - 13.0 && many <= 545.5 + 13.0, "{few} {many}");
        // The plain quantile would read 545 or 546 for both.
        assert!((many - few) > 5.0, "{few} {many}");
        // 995 on the lower step: the rank falls among them, near their top.
        let low = at(995);
        assert!(low < 519.5 + 13.0 && low > 519.5, "{low}");
    }
}
