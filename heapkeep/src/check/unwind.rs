//! A fast unwinder for check mode's stack captures (x86_64 Linux): the
//! unwind rules of each return address are read once from the module's
//! `.eh_frame` (found with glibc's `_dl_find_object`, decoded with `gimli`)
//! and cached; a walk is then a cache lookup and two loads per frame.
//!
//! Only the common shapes are cached: the frame address is `rsp` or `rbp`
//! plus an offset, the return address is stored just below it, and `rbp` is
//! either saved at an offset from it or untouched. Anything else (signal
//! frames, rules given as expressions, code without unwind tables) makes
//! the walk fail, and the caller falls back to the platform unwinder.
//! Every load stays between the walk's starting stack pointer and the top
//! of the mapping holding it, and frame addresses must grow.

use core::cell::Cell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicU64, Ordering};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EndianSlice, LittleEndian, Pointer, Register,
    RegisterRule, UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow,
};

use core::mem::size_of;

use super::stack::{Frames, MAX_DEPTH};
use crate::os;

/// glibc's `struct dl_find_object` (2.35+).
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut c_void,
    map_end: *mut c_void,
    link_map: *mut c_void,
    eh_frame: *mut c_void,
    reserved: [u64; 7],
}

extern "C" {
    fn _dl_find_object(pc: *mut c_void, result: *mut DlFindObject) -> libc::c_int;
}

/// gimli's rule storage, on the stack (no allocation inside malloc).
struct OnStack;

impl UnwindContextStorage<usize> for OnStack {
    type Rules = [(Register, RegisterRule<usize>); 32];
    type Stack = [UnwindTableRow<usize, Self>; 2];
}

const RSP: Register = Register(7);
const RBP: Register = Register(6);
const RA: Register = Register(16);

/// A cached rule, packed: bit 0 valid, bit 1 CFA from rbp (else rsp),
/// bit 2 rbp saved, bit 3 last frame (return address undefined), bit 4
/// unsupported; bits 16..32 the rbp save offset (i16); bits 32..64 the CFA
/// offset (i32).
#[derive(Clone, Copy)]
struct Rule(u64);

const VALID: u64 = 1;
const CFA_RBP: u64 = 2;
const RBP_SAVED: u64 = 4;
const LAST: u64 = 8;
const UNSUPPORTED: u64 = 16;

impl Rule {
    fn cfa_off(self) -> i64 {
        (self.0 >> 32) as i32 as i64
    }
    fn rbp_off(self) -> i64 {
        (self.0 >> 16) as u16 as i16 as i64
    }
    fn has(self, flag: u64) -> bool {
        self.0 & flag != 0
    }
}

/// Slots of the rule cache (a power of two). A slot is a `(pc, rule)`
/// pair in 16 bytes of one cache line, so a lookup touches one line (a
/// walk looks up every frame, and between two samples the program has
/// usually pushed the cache out). A writer takes a slot by swapping its key
/// to `BUSY`, writes the rule, then publishes the key; a reader accepts a
/// rule only if the key reads the same before and after it (rules are
/// fixed per address, so a reader can never pair a key with another
/// address's rule).
const SLOTS: usize = 1 << 14;
const BUSY: u64 = u64::MAX;

/// One cache slot: the key (a pc, 0 = empty, `BUSY` while written) and its
/// packed [`Rule`].
#[repr(C, align(16))]
struct Slot {
    key: AtomicU64,
    rule: AtomicU64,
}

static CACHE: [Slot; SLOTS] = [const {
    Slot {
        key: AtomicU64::new(0),
        rule: AtomicU64::new(0),
    }
}; SLOTS];

fn slot(pc: usize) -> &'static Slot {
    &CACHE[(pc.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 50) & (SLOTS - 1)]
}

fn cached(pc: usize) -> Option<Rule> {
    let s = slot(pc);
    let k1 = s.key.load(Ordering::Acquire);
    if k1 != pc as u64 {
        return None;
    }
    let r = s.rule.load(Ordering::Acquire);
    (s.key.load(Ordering::Acquire) == k1).then_some(Rule(r))
}

fn remember(pc: usize, rule: Rule) {
    let s = slot(pc);
    let old = s.key.load(Ordering::Relaxed);
    if old == BUSY
        || s.key
            .compare_exchange(old, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    s.rule.store(rule.0, Ordering::Release);
    s.key.store(pc as u64, Ordering::Release);
}

/// Reads the unwind rule for `pc` from its module's `.eh_frame`.
fn decode(pc: usize) -> Rule {
    let unsupported = Rule(VALID | UNSUPPORTED);
    // SAFETY: `DlFindObject` is plain data; all-zero is a valid value.
    let mut obj: DlFindObject = unsafe { core::mem::zeroed() };
    // SAFETY: `obj` is a valid out-pointer; _dl_find_object does not allocate.
    if unsafe { _dl_find_object(pc as *mut c_void, &mut obj) } != 0 || obj.eh_frame.is_null() {
        return unsupported;
    }
    let hdr_addr = obj.eh_frame as usize;
    let end = obj.map_end as usize;
    if end <= hdr_addr {
        return unsupported;
    }
    // SAFETY: the loader maps the module's headers and `.eh_frame` read-only
    // for its lifetime, between the header and the end of its mapping.
    let hdr_bytes = unsafe { core::slice::from_raw_parts(hdr_addr as *const u8, end - hdr_addr) };
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_addr as u64);
    let Ok(hdr) = EhFrameHdr::new(hdr_bytes, LittleEndian).parse(&bases, 8) else {
        return unsupported;
    };
    let Pointer::Direct(frame_addr) = hdr.eh_frame_ptr() else {
        return unsupported;
    };
    let frame_addr = frame_addr as usize;
    if frame_addr >= end {
        return unsupported;
    }
    // SAFETY: as above, `.eh_frame` lies inside the module's mapping.
    let frame_bytes =
        unsafe { core::slice::from_raw_parts(frame_addr as *const u8, end - frame_addr) };
    let eh_frame = EhFrame::new(frame_bytes, LittleEndian);
    let bases = bases.set_eh_frame(frame_addr as u64);
    let Some(table) = hdr.table() else {
        return unsupported;
    };
    let mut ctx = UnwindContext::<usize, OnStack>::new_in();
    let row = table.unwind_info_for_address(
        &eh_frame,
        &bases,
        &mut ctx,
        pc as u64,
        |f: &EhFrame<EndianSlice<'_, LittleEndian>>, b, o| f.cie_from_offset(b, o),
    );
    let Ok(row) = row else {
        return unsupported;
    };
    let mut bits = VALID;
    match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if i32::try_from(offset).is_ok() => {
            if register == RBP {
                bits |= CFA_RBP;
            } else if register != RSP {
                return unsupported;
            }
            bits |= (offset as i32 as u32 as u64) << 32;
        }
        _ => return unsupported,
    }
    match row.register(RA) {
        RegisterRule::Offset(-8) => {}
        RegisterRule::Undefined => bits |= LAST,
        _ => return unsupported,
    }
    match row.register(RBP) {
        RegisterRule::Offset(off) if i16::try_from(off).is_ok() => {
            bits |= RBP_SAVED | ((off as i16 as u16 as u64) << 16);
        }
        RegisterRule::Undefined | RegisterRule::SameValue => {}
        _ => return unsupported,
    }
    Rule(bits)
}

fn rule_for(pc: usize) -> Rule {
    if let Some(r) = cached(pc) {
        return r;
    }
    let r = decode(pc);
    remember(pc, r);
    r
}

/// Frames of a walk whose rules a [`Memo`] keeps.
const MEMO: usize = 32;

/// Walks a [`Memo`] keeps whole, to replay them.
const REPLAYS: usize = 4;
/// Stack loads a replayable walk may make.
const LOADS: usize = 64;
/// Frames a replayable walk may record.
const KEPT: usize = 32;

/// Keys of recorded walks ([`Frames::key`]): one counter for all threads,
/// so a key never names two different stacks.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// One walk kept whole. A walk is a function of where it starts (its
/// stack pointer, and its frame register if a rule read it before any
/// frame restored it), of `marker` and `depth`, and of the stack words it
/// loads (rules are fixed per address): if all of those read the same
/// again, the walk would record the same frames, so [`Memo::replay`] gives
/// them without walking. Its loads' addresses are known in advance, so they
/// issue together, where a walk waits for each frame before the next.
///
/// Invariant: `sp == 0`, or `frames[..len]` is what a walk starting at
/// `sp` (and `fp` when `fp_used`) with this `marker` and `depth` recorded
/// after loading `val[i]` from `sp + off[i]` for every `i < loads`, each of
/// those addresses between `sp` and the top of the thread's stack; `key`
/// names those frames.
struct Replay {
    sp: Cell<usize>,
    fp: Cell<usize>,
    fp_used: Cell<bool>,
    marker: Cell<usize>,
    depth: Cell<usize>,
    key: Cell<u64>,
    loads: Cell<usize>,
    off: [Cell<u32>; LOADS],
    val: [Cell<usize>; LOADS],
    len: Cell<usize>,
    frames: [Cell<usize>; KEPT],
}

impl Replay {
    const fn new() -> Replay {
        Replay {
            sp: Cell::new(0),
            fp: Cell::new(0),
            fp_used: Cell::new(false),
            marker: Cell::new(0),
            depth: Cell::new(0),
            key: Cell::new(0),
            loads: Cell::new(0),
            off: [const { Cell::new(0) }; LOADS],
            val: [const { Cell::new(0) }; LOADS],
            len: Cell::new(0),
            frames: [const { Cell::new(0) }; KEPT],
        }
    }

    /// Whether a walk from `sp`/`fp` with `marker` and `depth` would record
    /// this walk's frames. Every load stays in `[sp, stack_top)`, as the
    /// walk's own do: each offset is clamped to that range rather than
    /// trusted, since a signal handler's walk may rewrite this slot while it
    /// is being compared (if it interrupted this one). Such a rewrite
    /// changes `sp` for good (the handler's walk starts below this one, or
    /// on another stack, and a failed one leaves 0), which
    /// [`Memo::replay`] checks again after it copied the frames.
    #[inline]
    fn matches(&self, sp: usize, fp: usize, marker: usize, depth: usize, stack_top: usize) -> bool {
        if self.sp.get() != sp
            || self.marker.get() != marker
            || self.depth.get() != depth
            || (self.fp_used.get() && self.fp.get() != fp)
            || sp + 8 > stack_top
        {
            return false;
        }
        let last = stack_top - 8 - sp;
        let mut diff = 0;
        for (off, val) in self.off.iter().zip(&self.val).take(self.loads.get()) {
            let at = sp + (off.get() as usize).min(last);
            // SAFETY: `at` lies in [sp, stack_top - 8]: the calling thread's
            // own stack, mapped (the bound every load of a walk keeps).
            let v = unsafe { *(at as *const usize) };
            diff |= v ^ val.get();
        }
        diff == 0
    }
}

/// What a thread remembers of its last walks: the rules of the last one,
/// frame by frame, and the last [`REPLAYS`] walks whole.
///
/// A program allocating in a loop walks the same frames again and again.
/// Mostly a walk is one it made lately: [`Replay`] checks that and hands
/// the frames out with the key they had. Otherwise the walk finds each
/// frame's rule here, in a few adjacent cache lines read at addresses
/// known in advance, instead of in one line of the shared cache per frame,
/// whose address depends on the frame before (so its misses come one after
/// the other).
pub(crate) struct Memo {
    /// Looked-up address of frame `k` (0: none).
    keys: [Cell<usize>; MEMO],
    /// Its packed [`Rule`].
    rules: [Cell<u64>; MEMO],
    walks: [Replay; REPLAYS],
    /// The slot of `walks` the next recorded walk takes.
    next: Cell<usize>,
    /// The slot replayed or recorded last, tried first (a loop's samples
    /// come from one site; trying an older slot first costs a whole
    /// compare when it differs only in an outer frame).
    last: Cell<usize>,
}

impl Memo {
    pub(crate) const fn new() -> Memo {
        Memo {
            keys: [const { Cell::new(0) }; MEMO],
            rules: [const { Cell::new(0) }; MEMO],
            walks: [const { Replay::new() }; REPLAYS],
            next: Cell::new(0),
            last: Cell::new(0),
        }
    }

    /// Bytes of a memo's own mapping (whole pages).
    const MAPPED: usize = size_of::<Memo>().next_multiple_of(os::PAGE_SIZE);

    /// A fresh memo in a mapping of its own (null when out of memory).
    pub(crate) fn map() -> *mut Memo {
        let p = os::map_aligned(Self::MAPPED, os::PAGE_SIZE).cast::<Memo>();
        if !p.is_null() {
            // SAFETY: a fresh mapping big enough for a `Memo`, page-aligned.
            unsafe { p.write(Memo::new()) };
        }
        p
    }

    /// Unmaps a memo made by [`Memo::map`].
    ///
    /// # Safety
    /// `p` came from [`Memo::map`], and nothing uses it any more.
    pub(crate) unsafe fn unmap(p: *mut Memo) {
        // SAFETY: forwarded from the caller; the mapping is this size.
        unsafe { os::unmap(p.cast(), Self::MAPPED) };
    }

    /// The rule for `key`, the address looked up for frame `k` of a walk.
    #[inline]
    fn rule(&self, k: usize, key: usize) -> Rule {
        if k >= MEMO {
            return rule_for(key);
        }
        if self.keys[k].get() == key {
            return Rule(self.rules[k].get());
        }
        let r = rule_for(key);
        self.keys[k].set(key);
        self.rules[k].set(r.0);
        r
    }

    /// Gives a kept walk's frames (and key) if a walk from here would
    /// record them.
    fn replay(
        &self,
        start: (usize, usize),
        marker: usize,
        depth: usize,
        top: usize,
        out: &mut Frames,
    ) -> bool {
        let (sp, fp) = start;
        let first = self.last.get();
        for k in 0..REPLAYS {
            let i = (first + k) % REPLAYS;
            let w = &self.walks[i];
            if w.matches(sp, fp, marker, depth, top) {
                self.last.set(i);
                out.set_keyed(&w.frames[..w.len.get().min(KEPT)], w.key.get());
                // A signal handler's walk that rewrote the slot meanwhile
                // left another `sp` in it (see `Replay::matches`).
                return w.sp.get() == sp;
            }
        }
        false
    }
}

/// Records one walk into a [`Replay`] slot as it goes; the slot is valid
/// only once [`Recorder::finish`] ran.
struct Recorder<'a> {
    w: &'a Replay,
    sp: usize,
    loads: usize,
    ok: bool,
}

impl<'a> Recorder<'a> {
    fn start(memo: &'a Memo, sp: usize, fp: usize, marker: usize, depth: usize) -> Recorder<'a> {
        let i = memo.next.get() % REPLAYS;
        memo.next.set(i + 1);
        memo.last.set(i);
        let w = &memo.walks[i];
        w.sp.set(0);
        w.fp.set(fp);
        w.fp_used.set(false);
        w.marker.set(marker);
        w.depth.set(depth);
        Recorder {
            w,
            sp,
            loads: 0,
            ok: depth <= KEPT,
        }
    }

    /// The walk loaded `val` from `at`.
    #[inline]
    fn load(&mut self, at: usize, val: usize) {
        let off = at - self.sp;
        if self.loads < LOADS && off <= u32::MAX as usize {
            self.w.off[self.loads].set(off as u32);
            self.w.val[self.loads].set(val);
            self.loads += 1;
        } else {
            self.ok = false;
        }
    }

    /// The walk read the frame register it started with.
    fn used_fp(&mut self) {
        self.w.fp_used.set(true);
    }

    /// The walk succeeded with `frames`: keeps it (if it fitted) and names
    /// the frames with a fresh key.
    fn finish(self, frames: &mut Frames) {
        if !self.ok || frames.len() > KEPT {
            return;
        }
        for (k, &f) in frames.as_slice().iter().enumerate() {
            self.w.frames[k].set(f);
        }
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        self.w.len.set(frames.len());
        self.w.loads.set(self.loads);
        self.w.key.set(key);
        self.w.sp.set(self.sp);
        frames.set_key(key);
    }
}

/// Walks the calling thread's stack, recording into `frames` the program
/// counter of up to `depth` frames whose stack pointer is above `marker`
/// (return addresses, as the platform unwinder gives them). `stack_top` bounds every load;
/// `memo` is the calling thread's (it remembers this walk for the next).
/// False if a frame could not be unwound this way (then `frames` is
/// unspecified). The frames get a key ([`Frames::key`]) when the walk was
/// replayed or kept.
#[inline(never)]
pub(super) fn walk(
    frames: &mut Frames,
    depth: usize,
    marker: usize,
    stack_top: usize,
    memo: &Memo,
) -> bool {
    let (mut pc, mut sp, mut fp): (usize, usize, usize);
    // SAFETY: reads this function's own program counter, stack pointer and
    // frame register; the unwind rule for `pc` describes this very point.
    unsafe {
        core::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let floor = sp;
    let depth = depth.min(MAX_DEPTH);
    if memo.replay((sp, fp), marker, depth, stack_top, frames) {
        return true;
    }
    let mut rec = Recorder::start(memo, sp, fp, marker, depth);
    // Where the frame register's value was loaded from (0: it is the one
    // the walk started with), until a rule reads it: a walk depends on the
    // saved frame registers it uses, not on those it passes by (code
    // without frame pointers keeps any value there).
    let mut fp_at = 0;
    frames.clear();
    let mut k = 0;
    loop {
        // Return addresses point after the call: look up the call itself.
        let rule = memo.rule(k, if k == 0 { pc } else { pc - 1 });
        k += 1;
        if rule.has(UNSUPPORTED) {
            return false;
        }
        let base = if rule.has(CFA_RBP) {
            // (`usize::MAX`: that load is recorded already.)
            if fp_at == 0 {
                rec.used_fp();
            } else if fp_at != usize::MAX {
                rec.load(fp_at, fp);
                fp_at = usize::MAX;
            }
            fp
        } else {
            sp
        };
        let cfa = (base as i64 + rule.cfa_off()) as usize;
        if cfa <= sp || cfa < floor + 8 || cfa > stack_top || cfa % 8 != 0 {
            return false;
        }
        // This frame is recorded when its stack pointer lies above the
        // marker (the marker's own frame and those it called are the
        // checker's), as the platform unwinder's frame address reads.
        if sp > marker {
            frames.push(pc);
            if frames.len() >= depth {
                break;
            }
        }
        if rule.has(LAST) {
            break;
        }
        // SAFETY: `cfa - 8` lies in [floor, stack_top): this thread's stack.
        let ra = unsafe { *((cfa - 8) as *const usize) };
        rec.load(cfa - 8, ra);
        if rule.has(RBP_SAVED) {
            let at = (cfa as i64 + rule.rbp_off()) as usize;
            if at < floor || at + 8 > stack_top {
                return false;
            }
            // SAFETY: checked to lie in the thread's stack just above.
            fp = unsafe { *(at as *const usize) };
            fp_at = at;
        }
        sp = cfa;
        if ra == 0 {
            break;
        }
        pc = ra;
    }
    rec.finish(frames);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::stack;
    use crate::os::maps;

    /// Captures the same stack with the platform unwinder and with `walk`.
    fn both(n: usize, a: &mut Frames, b: &mut Frames, memo: &Memo) -> bool {
        both_to(n, 30, a, b, memo)
    }

    /// [`both`], `depth` frames deep.
    #[inline(never)]
    fn both_to(n: usize, depth: usize, a: &mut Frames, b: &mut Frames, memo: &Memo) -> bool {
        if n > 0 {
            let ok = both_to(n - 1, depth, a, b, memo);
            core::hint::black_box(n);
            return ok;
        }
        let local = 0u8;
        let marker = core::hint::black_box(&local) as *const u8 as usize;
        let (_, top) = maps::near(marker, false).expect("stack mapping");
        stack::capture(a, depth, marker);
        walk(b, depth, marker, top, memo)
    }

    #[test]
    fn walk_matches_the_platform_unwinder() {
        let memo = Memo::new();
        let mut a = Frames::new();
        let mut b = Frames::new();
        assert!(both(6, &mut a, &mut b, &memo), "the fast walk gave up");
        assert!(a.len() > 8, "frames: {}", a.len());
        assert_eq!(a.len(), b.len());
        assert_eq!(a.as_slice(), b.as_slice());
        // Rules remembered by the last walk give the same walk again.
        let mut c = Frames::new();
        let mut d = Frames::new();
        assert!(both(6, &mut c, &mut d, &memo));
        assert_eq!(c.as_slice(), d.as_slice());
        // A walk from elsewhere (frame k holds another function now) does
        // not take the remembered rules for its own.
        for n in [3, 9, 0] {
            let mut e = Frames::new();
            let mut f = Frames::new();
            assert!(both(n, &mut e, &mut f, &memo));
            assert_eq!(e.as_slice(), f.as_slice(), "depth {n}");
        }
    }

    /// Frames a replay test walks: up to `via_a`/`via_b`, not into the
    /// test function. An optimised build may unroll the test's loop, so
    /// each round calls them from another place: the return address into
    /// the test function differs, and no round would replay the one before.
    const SHORT: usize = 3;

    /// Two callers of the same shape: a walk from either starts at the
    /// same stack pointer, but one frame up the return address differs.
    #[inline(never)]
    fn via_a(a: &mut Frames, b: &mut Frames, memo: &Memo) -> bool {
        let ok = both_to(2, SHORT, a, b, memo);
        core::hint::black_box(1);
        ok
    }

    #[inline(never)]
    fn via_b(a: &mut Frames, b: &mut Frames, memo: &Memo) -> bool {
        let ok = both_to(2, SHORT, a, b, memo);
        core::hint::black_box(2);
        ok
    }

    #[test]
    fn a_walk_is_replayed_only_from_the_same_stack() {
        let memo = Memo::new();
        let mut keys = [[0u64; 2]; 4];
        for (round, k) in keys.iter_mut().enumerate() {
            for (which, key) in k.iter_mut().enumerate() {
                let mut a = Frames::new();
                let mut b = Frames::new();
                let ok = if which == 0 {
                    via_a(&mut a, &mut b, &memo)
                } else {
                    via_b(&mut a, &mut b, &memo)
                };
                assert!(ok, "the fast walk gave up");
                // Replayed or walked, the frames are the platform's.
                assert_eq!(a.as_slice(), b.as_slice(), "round {round}, caller {which}");
                assert_ne!(b.key(), 0, "a kept walk has a key");
                *key = b.key();
            }
        }
        // Each caller's walk was kept once and replayed from then on; the
        // two never shared one (their stacks differ one frame up).
        assert_ne!(keys[0][0], keys[0][1]);
        for k in &keys[1..] {
            assert_eq!(*k, keys[0]);
        }
        // A walk asked for fewer frames is not a replay of a deeper one.
        let mut a = Frames::new();
        let mut b = Frames::new();
        let local = 0u8;
        let marker = core::hint::black_box(&local) as *const u8 as usize;
        let (_, top) = maps::near(marker, false).expect("stack mapping");
        stack::capture(&mut a, 3, marker);
        assert!(walk(&mut b, 3, marker, top, &memo));
        assert_eq!(a.as_slice(), b.as_slice());
    }
}
