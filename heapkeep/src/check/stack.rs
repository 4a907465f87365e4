//! Stack traces for check mode: captured at every allocation and free,
//! stored once per distinct stack in a depot (an id per stack), and
//! symbolized only when a report prints them.
//!
//! Capture uses the platform unwinder (`_Unwind_Backtrace`, which reads the
//! `.eh_frame` tables), so it works in programs built without frame
//! pointers. Symbolization asks `addr2line` (a child process, as sanitizers
//! do) for function, file and line of each frame, and falls back to the
//! dynamic symbol table (`dladdr`) and `module+offset`.

use core::ffi::{c_int, c_void};
use core::mem::MaybeUninit;
use core::ptr;

use crate::os;
use crate::writer::Writer;

/// The deepest stack recorded.
pub(crate) const MAX_DEPTH: usize = 64;

/// A captured stack: return addresses, innermost first. Not zeroed when
/// made: a capture costs no 512-byte clear (it ran on every sample and
/// every check-mode call).
#[derive(Clone, Copy)]
pub(crate) struct Frames {
    /// Invariant: `ips[..len]` are initialised.
    ips: [MaybeUninit<usize>; MAX_DEPTH],
    /// Invariant: `len <= MAX_DEPTH`.
    len: usize,
    /// A number naming exactly these frames (0: none): the fast unwinder
    /// gives each walk it records a fresh one and hands the same key out
    /// again when it replays that walk, so a depot can skip hashing a
    /// stack it just stored. Invariant: every change of the frames other
    /// than the walk's own resets it.
    key: u64,
}

impl Frames {
    pub(crate) const fn new() -> Frames {
        Frames {
            // SAFETY: an array of `MaybeUninit` needs no initialisation.
            ips: unsafe { MaybeUninit::<[MaybeUninit<usize>; MAX_DEPTH]>::uninit().assume_init() },
            len: 0,
            key: 0,
        }
    }

    pub(crate) fn as_slice(&self) -> &[usize] {
        // SAFETY: `ips[..len]` are initialised (invariant) and
        // `MaybeUninit<usize>` has the layout of `usize`.
        unsafe { core::slice::from_raw_parts(self.ips.as_ptr().cast(), self.len) }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.key = 0;
    }

    /// The key naming these frames (0: none).
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// Names the frames as they are now with `key` (the fast unwinder's).
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    pub(super) fn set_key(&mut self, key: u64) {
        self.key = key;
    }

    /// Appends `ip`; false (and nothing kept) when full.
    #[inline]
    pub(crate) fn push(&mut self, ip: usize) -> bool {
        let Some(slot) = self.ips.get_mut(self.len) else {
            return false;
        };
        slot.write(ip);
        self.len += 1;
        self.key = 0;
        true
    }

    /// Replaces the frames with (the first `MAX_DEPTH` of) `src`.
    pub(crate) fn set(&mut self, src: &[usize]) {
        self.fill(src.iter().copied(), 0);
    }

    /// Replaces the frames with (the first `MAX_DEPTH` of) `src`, which
    /// `key` names (a replayed walk's).
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    pub(super) fn set_keyed(&mut self, src: &[core::cell::Cell<usize>], key: u64) {
        self.fill(src.iter().map(core::cell::Cell::get), key);
    }

    /// Replaces the frames with (the first `MAX_DEPTH` of) `src`, named by
    /// `key` (0: none), in one pass.
    #[inline(always)]
    fn fill(&mut self, src: impl Iterator<Item = usize>, key: u64) {
        let mut n = 0;
        for (slot, ip) in self.ips.iter_mut().zip(src) {
            slot.write(ip);
            n += 1;
        }
        self.len = n;
        self.key = key;
    }

    /// Drops the `k` innermost frames.
    pub(crate) fn drop_innermost(&mut self, k: usize) {
        let k = k.min(self.len);
        self.key = 0;
        self.ips.copy_within(k..self.len, 0);
        self.len -= k;
    }
}

#[allow(non_camel_case_types)]
type _Unwind_Trace_Fn = extern "C" fn(*mut c_void, *mut c_void) -> c_int;

extern "C" {
    // From libgcc_s, which the Rust standard library links on Linux.
    fn _Unwind_Backtrace(trace: _Unwind_Trace_Fn, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
    fn _Unwind_GetCFA(ctx: *mut c_void) -> usize;
}

struct Capture<'a> {
    frames: &'a mut Frames,
    /// Frames whose frame address as the unwinder reports it (the stack
    /// pointer in the frame) is at or below this are the checker's own: the
    /// entry point that owns the marker and what it called.
    below: usize,
    depth: usize,
}

extern "C" fn on_frame(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Capture` passed to `_Unwind_Backtrace` below,
    // alive for the whole walk; `ctx` is the unwinder's frame context.
    let cap = unsafe { &mut *arg.cast::<Capture<'_>>() };
    // SAFETY: `ctx` is the live frame context the unwinder passed us.
    let ip = unsafe { _Unwind_GetIP(ctx) };
    if ip == 0 {
        return 5; // _URC_END_OF_STACK
    }
    // SAFETY: as above.
    if unsafe { _Unwind_GetCFA(ctx) } <= cap.below {
        return 0;
    }
    cap.frames.push(ip);
    if cap.frames.len() >= cap.depth {
        return 4; // _URC_NORMAL_STOP: stop the walk
    }
    0 // _URC_NO_REASON: go on
}

/// Captures the calling thread's stack, up to `depth` frames, leaving out
/// every frame below `marker` (the address of a local variable of the
/// checker's entry point: the frames it called, this one included).
#[inline(never)]
pub(crate) fn capture(frames: &mut Frames, depth: usize, marker: usize) {
    frames.clear();
    let mut cap = Capture {
        frames,
        below: marker,
        depth: depth.clamp(1, MAX_DEPTH),
    };
    // SAFETY: `on_frame` matches the unwinder's callback type and receives
    // `cap` back as its argument; the walk ends before `cap` goes away.
    unsafe { _Unwind_Backtrace(on_frame, (&mut cap as *mut Capture<'_>).cast()) };
}

// ---------------------------------------------------------------------------
// The depot

/// Distinct stacks, each stored once: `[len, frames...]` words appended to
/// one mapping; a stack's id is its word offset (0 = no stack). A hash
/// table of ids finds a stack already stored.
///
/// Invariant: `words` maps `WORDS` words, of which `top` are used; every id
/// in `index` is a valid offset of a stored stack; only the check-lock
/// holder touches the depot.
pub(crate) struct Depot {
    words: *mut usize,
    top: usize,
    index: *mut u32,
    /// Keyed stacks met lately: `(key, id)` at `key % RECENT` (see
    /// [`Frames::key`]); a capture that replayed a walk finds its id here
    /// without hashing and comparing its frames.
    recent: [(u64, u32); RECENT],
}

/// Slots of [`Depot::recent`].
const RECENT: usize = 64;

// SAFETY: only reached through a shard's lock.
unsafe impl Send for Depot {}

/// Capacity of the depot in words (virtual; touched as used).
const WORDS: usize = 8 << 20;
/// Slots of the index (a power of two).
const INDEX: usize = 1 << 20;

fn hash_frames(ips: &[usize]) -> usize {
    ips.iter().fold(0x51_7cc1_b727_220a_usize, |h, &ip| {
        (h ^ ip).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(23)
    })
}

impl Depot {
    pub(crate) const fn new() -> Depot {
        Depot {
            words: ptr::null_mut(),
            top: 1,
            index: ptr::null_mut(),
            recent: [(0, 0); RECENT],
        }
    }

    /// The id of `frames` (stored now if new), as [`Depot::intern`], found
    /// without hashing when its key was interned lately.
    #[inline]
    pub(crate) fn intern_frames(&mut self, frames: &Frames) -> u32 {
        let key = frames.key();
        let slot = (key % RECENT as u64) as usize;
        if key != 0 && self.recent[slot].0 == key {
            return self.recent[slot].1;
        }
        let id = self.intern(frames.as_slice());
        if key != 0 && id != 0 {
            self.recent[slot] = (key, id);
        }
        id
    }

    /// The id of `ips` (stored now if new); 0 when empty or out of room.
    pub(crate) fn intern(&mut self, ips: &[usize]) -> u32 {
        if ips.is_empty() {
            return 0;
        }
        if self.words.is_null() {
            self.words = os::map_aligned(WORDS * 8, os::PAGE_SIZE).cast();
            self.index = os::map_aligned(INDEX * 4, os::PAGE_SIZE).cast();
            if self.words.is_null() || self.index.is_null() {
                self.words = ptr::null_mut();
                return 0;
            }
        }
        let mut i = hash_frames(ips) & (INDEX - 1);
        for _ in 0..64 {
            // SAFETY: `i < INDEX`; the index mapping holds INDEX slots.
            let slot = unsafe { &mut *self.index.add(i) };
            if *slot == 0 {
                if self.top + 1 + ips.len() > WORDS {
                    return 0;
                }
                let id = self.top;
                // SAFETY: `id + 1 + len <= WORDS`, inside the mapping.
                unsafe {
                    *self.words.add(id) = ips.len();
                    ptr::copy_nonoverlapping(ips.as_ptr(), self.words.add(id + 1), ips.len());
                }
                self.top += 1 + ips.len();
                *slot = id as u32;
                return id as u32;
            }
            if self.get(*slot) == ips {
                return *slot;
            }
            i = (i + 1) & (INDEX - 1);
        }
        0 // a long probe run: give up on this stack rather than scan on
    }

    /// The depot's own mappings, `(start, bytes)` each.
    pub(crate) fn mappings(&self) -> [(usize, usize); 2] {
        if self.words.is_null() {
            return [(0, 0); 2];
        }
        [
            (self.words as usize, WORDS * 8),
            (self.index as usize, INDEX * 4),
        ]
    }

    /// The frames of stack `id` (empty for 0).
    pub(crate) fn get(&self, id: u32) -> &[usize] {
        if id == 0 || self.words.is_null() {
            return &[];
        }
        let id = id as usize;
        // SAFETY: ids come from `intern`, which stored `len` and the frames.
        unsafe { core::slice::from_raw_parts(self.words.add(id + 1), *self.words.add(id)) }
    }
}

// ---------------------------------------------------------------------------
// Symbolization

/// `<T as alloc::...>::f`: a trait of the `alloc` crate implemented for
/// some type (`<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem`).
fn trait_impl_in_alloc(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b"<") else {
        return false;
    };
    let head = &rest[..rest.iter().position(|&c| c == b'>').unwrap_or(rest.len())];
    head.windows(10).any(|w| w == b" as alloc:")
}

/// Function names that belong to the allocator itself (or to Rust's
/// allocation shims): leading frames with these names are not printed.
fn is_allocator_frame(name: &[u8]) -> bool {
    const PREFIXES: &[&[u8]] = &[
        b"heapkeep::",
        b"<heapkeep::",
        b"heapkeep_preload::",
        b"__rustc::",
        b"__rust_alloc",
        b"__rust_dealloc",
        b"__rust_realloc",
        b"__rdl_",
        b"alloc::",
        b"<alloc::",
        b"std::alloc::",
        b"<std::alloc::System",
    ];
    const EXACT: &[&[u8]] = &[
        b"malloc",
        b"calloc",
        b"realloc",
        b"reallocarray",
        b"free",
        b"free_sized",
        b"free_aligned_sized",
        b"posix_memalign",
        b"aligned_alloc",
        b"memalign",
        b"valloc",
        b"pvalloc",
        b"malloc_usable_size",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || EXACT.contains(&name)
        || trait_impl_in_alloc(name)
        || name.starts_with(b"operator new")
        || name.starts_with(b"operator delete")
        || name.starts_with(b"_Znw")
        || name.starts_with(b"_Zna")
        || name.starts_with(b"_Zdl")
        || name.starts_with(b"_Zda")
}

/// The load address of the module holding `ip` (0 if none).
fn module_base(ip: usize) -> usize {
    // SAFETY: `info` is a valid out-pointer; dladdr does not allocate.
    unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr(ip as *const c_void, &mut info) == 0 {
            return 0;
        }
        info.dli_fbase as usize
    }
}

/// Whether the stack `ips` was allocated by the dynamic loader itself: its
/// first frame outside heapkeep's own module is in the loader (thread
/// vectors of TLS blocks, kept with cached thread stacks, which are not
/// roots of the leak scan).
pub(crate) fn loader_owned(ips: &[usize]) -> bool {
    // SAFETY: getauxval has no preconditions.
    let loader = unsafe { libc::getauxval(libc::AT_BASE) } as usize;
    let own = module_base(loader_owned as *const () as usize);
    if loader == 0 {
        return false;
    }
    for &ip in ips {
        let base = module_base(ip - 1);
        if base != own {
            return base == loader;
        }
    }
    false
}

/// Where a code address is: its module file, load bias and nearest
/// exported symbol.
struct Place {
    file: [u8; 256],
    file_len: usize,
    bias: usize,
    sym: [u8; 128],
    sym_len: usize,
}

/// glibc's `dladdr1` flag asking for the module's `struct link_map`.
const RTLD_DL_LINKMAP: libc::c_int = 2;

fn place_of(ip: usize) -> Option<Place> {
    // SAFETY: `Dl_info` is plain data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    let mut map: *mut libc::c_void = ptr::null_mut();
    // SAFETY: `info` and `map` are valid out-pointers; dladdr1 does not
    // allocate.
    let ok = unsafe { libc::dladdr1(ip as *const c_void, &mut info, &mut map, RTLD_DL_LINKMAP) };
    if ok == 0 {
        return None;
    }
    let mut p = Place {
        file: [0; 256],
        file_len: 0,
        bias: 0,
        sym: [0; 128],
        sym_len: 0,
    };
    // SAFETY: with RTLD_DL_LINKMAP, `map` is the module's `struct link_map`,
    // whose first field is `l_addr` (the load bias).
    if !map.is_null() {
        p.bias = unsafe { *map.cast::<usize>() };
    }
    let copy = |src: *const libc::c_char, dst: &mut [u8]| -> usize {
        if src.is_null() {
            return 0;
        }
        // SAFETY: dladdr returns NUL-terminated strings owned by the loader.
        let s = unsafe { core::ffi::CStr::from_ptr(src) }.to_bytes();
        let n = s.len().min(dst.len() - 1);
        dst[..n].copy_from_slice(&s[..n]);
        n
    };
    p.file_len = copy(info.dli_fname, &mut p.file);
    if p.file_len == 0 {
        // The main program: dladdr reports an empty name.
        p.file_len = os::exe_path(&mut p.file);
    }
    p.sym_len = copy(info.dli_sname, &mut p.sym);
    Some(p)
}

/// Most functions named for one stack, inlined ones included.
const MAX_NAMED: usize = 4 * MAX_DEPTH;

/// Text from `addr2line` for the frames of one stack. A frame's code may
/// be several functions inlined into each other, so a frame has a run of
/// named entries, innermost first: `first[k]..first[k] + count[k]` of
/// `func`/`loc` (ranges of `text`).
struct Symbols {
    text: [u8; 32 * 1024],
    len: usize,
    func: [(u32, u32); MAX_NAMED],
    loc: [(u32, u32); MAX_NAMED],
    named: usize,
    first: [u16; MAX_DEPTH],
    count: [u16; MAX_DEPTH],
}

impl Symbols {
    /// Nothing named yet.
    fn new() -> Symbols {
        Symbols {
            text: [0; 32 * 1024],
            len: 0,
            func: [(0, 0); MAX_NAMED],
            loc: [(0, 0); MAX_NAMED],
            named: 0,
            first: [0; MAX_DEPTH],
            count: [0; MAX_DEPTH],
        }
    }

    fn get(&self, r: (u32, u32)) -> &[u8] {
        &self.text[r.0 as usize..r.1 as usize]
    }
}

/// Runs `addr2line -C -f -i -a -e FILE ADDR...` once for the frames `which`
/// of one module (addresses `addrs`, relative to its load bias) and records
/// each frame's functions and `file:line`s in `out`: the function the code
/// is in, then each function it is inlined into (with `-i`), so a call made
/// from code inlined out of `alloc::` still names the caller's own
/// function. False if it cannot run.
fn addr2line(file: &[u8], addrs: &[usize], which: &[usize], out: &mut Symbols) -> bool {
    let mut path = [0u8; 257];
    if file.len() >= path.len() || addrs.is_empty() {
        return false;
    }
    path[..file.len()].copy_from_slice(file);
    // Hex arguments, NUL-terminated, side by side; frames past the
    // writer's room (not with real addresses) go unsymbolized.
    let mut hex = Writer::buffer();
    let mut starts = [0usize; MAX_DEPTH];
    let mut n = 0;
    for &a in addrs {
        if hex.room() < 20 {
            break;
        }
        starts[n] = hex.as_bytes().len();
        hex.x(a).b(&[0]);
        n += 1;
    }
    let (addrs, which) = (&addrs[..n], &which[..n]);
    const ARGS: usize = 7;
    let mut argv: [*const libc::c_char; MAX_DEPTH + ARGS + 1] = [ptr::null(); MAX_DEPTH + ARGS + 1];
    argv[..ARGS].copy_from_slice(&[
        c"addr2line".as_ptr(),
        c"-C".as_ptr(),
        c"-f".as_ptr(),
        c"-i".as_ptr(),
        c"-a".as_ptr(),
        c"-e".as_ptr(),
        path.as_ptr().cast(),
    ]);
    for k in 0..addrs.len() {
        argv[ARGS + k] = hex.as_bytes()[starts[k]..].as_ptr().cast();
    }
    let start = out.len;
    let mut fds = [0 as c_int; 2];
    // SAFETY: plain system calls on our own descriptors and buffers; the
    // child runs `addr2line` with a minimal environment and stdout on the
    // pipe (argv/envp are NUL-terminated arrays of C strings that outlive
    // the exec).
    let ok = unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return false;
        }
        let pid = libc::fork();
        if pid < 0 {
            libc::close(fds[0]);
            libc::close(fds[1]);
            return false;
        }
        if pid == 0 {
            libc::dup2(fds[1], 1);
            let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if devnull >= 0 {
                libc::dup2(devnull, 2);
            }
            let envp: [*const libc::c_char; 2] = [c"PATH=/usr/bin:/bin".as_ptr(), ptr::null()];
            libc::execve(c"/usr/bin/addr2line".as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
        libc::close(fds[1]);
        loop {
            let room = out.text.len() - out.len;
            if room == 0 {
                break;
            }
            let r = libc::read(fds[0], out.text.as_mut_ptr().add(out.len).cast(), room);
            if r <= 0 {
                break;
            }
            out.len += r as usize;
        }
        libc::close(fds[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    };
    if !ok {
        out.len = start;
        return false;
    }
    parse_inlined(out, start, which);
    true
}

/// Reads `addr2line -f -i -a` output from `out.text[start..out.len]`: per
/// address a line `0x...`, then a function line and a `file:line` line for
/// it and for each function it is inlined into. Frames `which` (in the
/// order their addresses were given) get their runs of entries. A line cut
/// off by a full buffer is left out.
fn parse_inlined(out: &mut Symbols, start: usize, which: &[usize]) {
    let mut lines = [(0u32, 0u32); 2];
    let mut pos = start;
    let mut group = 0usize;
    let mut have = 0; // lines of the current pair read so far
    while pos < out.len {
        let Some(nl) = out.text[pos..out.len].iter().position(|&c| c == b'\n') else {
            break; // cut off
        };
        let (a, b) = (pos, pos + nl);
        pos = b + 1;
        if out.text[a..b].starts_with(b"0x") && have == 0 {
            // The next address's group starts.
            if group >= which.len() {
                break;
            }
            let k = which[group];
            group += 1;
            out.first[k] = out.named as u16;
            out.count[k] = 0;
            continue;
        }
        if group == 0 {
            continue;
        }
        lines[have] = (a as u32, b as u32);
        have += 1;
        if have == 2 {
            have = 0;
            if out.named < MAX_NAMED {
                let k = which[group - 1];
                out.func[out.named] = lines[0];
                out.loc[out.named] = lines[1];
                out.named += 1;
                out.count[k] += 1;
            }
        }
    }
}

/// Prints one stack section of a report: `  <title> (thread <tid>):` and
/// its frames.
pub(crate) fn section(w: &mut Writer, title: &str, tid: u32, ips: &[usize], symbolize: bool) {
    w.s("  ").s(title).s(" (thread ").d(tid as usize).s("):\n");
    print(w, ips, symbolize);
}

/// Prints `ips` as numbered frames (`    #0 0x... in f file:line`), leaving
/// out the allocator's own leading frames.
pub(crate) fn print(w: &mut Writer, ips: &[usize], symbolize: bool) {
    if ips.is_empty() {
        w.s("    (no stack recorded)\n");
        return;
    }
    let mut shown = 0;
    describe(ips, symbolize, |ip, func, loc| {
        w.s("    #").d(shown).s(" ").x(ip).s(" in ").b(func);
        match loc {
            Loc::Line(l) => w.s(" ").b(l),
            Loc::Module(m, off) => w.s(" (").b(m).s("+").x(off).s(")"),
            Loc::None => w,
        };
        w.s("\n");
        shown += 1;
    });
    if shown == 0 {
        w.s("    (only allocator frames)\n");
    }
}

/// Where a frame is, as well as it is known.
pub(crate) enum Loc<'a> {
    /// `file:line` from the debug information.
    Line(&'a [u8]),
    /// The module's file name and the offset in it.
    Module(&'a [u8], usize),
    /// Nothing known.
    None,
}

/// Calls `frame(ip, function, location)` for each frame of `ips` (at most
/// [`MAX_DEPTH`]), innermost first, leaving out the allocator's own
/// leading frames; names functions, files and lines when `symbolize`
/// (one `addr2line` run per module), else only what `dladdr` knows.
/// Allocation-free.
pub(crate) fn describe(
    ips: &[usize],
    symbolize: bool,
    mut frame: impl FnMut(usize, &[u8], Loc<'_>),
) {
    let ips = &ips[..ips.len().min(MAX_DEPTH)];
    // Return addresses point after the call; look up the call itself.
    let look = |k: usize| if k == 0 { ips[0] } else { ips[k] - 1 };
    let places: [Option<Place>; MAX_DEPTH] = core::array::from_fn(|k| {
        if k < ips.len() {
            place_of(look(k))
        } else {
            None
        }
    });
    let mut syms = Symbols::new();
    if symbolize {
        // One addr2line run per module, for all of its frames.
        let mut done = [false; MAX_DEPTH];
        for k in 0..ips.len() {
            let Some(p) = &places[k] else { continue };
            if done[k] || p.file_len == 0 {
                continue;
            }
            let file = &p.file[..p.file_len];
            let mut which = [0usize; MAX_DEPTH];
            let mut addrs = [0usize; MAX_DEPTH];
            let mut n = 0;
            for j in k..ips.len() {
                if let Some(q) = &places[j] {
                    if !done[j] && &q.file[..q.file_len] == file {
                        done[j] = true;
                        which[n] = j;
                        addrs[n] = look(j) - q.bias;
                        n += 1;
                    }
                }
            }
            addr2line(file, &addrs[..n], &which[..n], &mut syms);
        }
    }
    let mut leading = true;
    for (k, &ip) in ips.iter().enumerate() {
        let place = &places[k];
        let mut sym: &[u8] = b"??";
        if let Some(p) = place {
            if p.sym_len > 0 {
                sym = &p.sym[..p.sym_len];
            }
        }
        // The frame's named functions, innermost first; one unnamed entry
        // (the loader's symbol, if any) when addr2line said nothing.
        let first = syms.first[k] as usize;
        let entries = (syms.count[k] as usize).max(1);
        for e in first..first + entries {
            let (mut func, mut loc): (&[u8], &[u8]) = (sym, b"");
            if syms.count[k] > 0 {
                let f = syms.get(syms.func[e]);
                if !f.is_empty() && f != b"??" {
                    func = f;
                }
                let l = syms.get(syms.loc[e]);
                if !l.is_empty() && !l.starts_with(b"??") {
                    loc = l;
                }
            }
            if leading && is_allocator_frame(func) {
                continue;
            }
            leading = false;
            if !loc.is_empty() {
                frame(ip, func, Loc::Line(loc));
            } else if let Some(p) = place {
                let name = &p.file[..p.file_len];
                let base = name.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
                frame(ip, func, Loc::Module(&name[base..], look(k) - p.bias));
            } else {
                frame(ip, func, Loc::None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn deeper(frames: &mut Frames, n: usize) {
        if n == 0 {
            capture(frames, 32, 0);
        } else {
            deeper(frames, n - 1);
            core::hint::black_box(n);
        }
    }

    #[test]
    fn capture_and_intern() {
        let mut a = Frames::new();
        let mut b = Frames::new();
        deeper(&mut a, 3);
        deeper(&mut b, 5);
        assert!(a.len >= 4, "frames: {}", a.len);
        assert!(b.len > a.len || b.len == 32);
        let mut d = Depot::new();
        let ia = d.intern(a.as_slice());
        let ib = d.intern(b.as_slice());
        assert!(ia != 0 && ib != 0 && ia != ib);
        assert_eq!(d.intern(a.as_slice()), ia);
        assert_eq!(d.get(ia), a.as_slice());
        assert_eq!(d.get(0), &[] as &[usize]);
    }

    #[test]
    fn keyed_frames_intern_by_key_and_changes_drop_the_key() {
        let mut d = Depot::new();
        let mut a = Frames::new();
        a.set(&[0x1000, 0x2000, 0x3000]);
        a.set_key(7);
        let mut b = Frames::new();
        b.set(&[0x1000, 0x2000]);
        b.set_key(8);
        let ia = d.intern_frames(&a);
        let ib = d.intern_frames(&b);
        assert!(ia != 0 && ib != 0 && ia != ib);
        // Found again by key, and the same as interning the frames.
        assert_eq!(d.intern_frames(&a), ia);
        assert_eq!(d.intern_frames(&b), ib);
        assert_eq!(d.intern(a.as_slice()), ia);
        // Any change of the frames forgets the key, so a stale key never
        // names other frames.
        a.push(0x4000);
        assert_eq!(a.key(), 0);
        let ia2 = d.intern_frames(&a);
        assert!(ia2 != ia && d.get(ia2) == a.as_slice());
        b.set_key(9);
        b.drop_innermost(1);
        assert_eq!(b.key(), 0);
        b.set_key(10);
        b.clear();
        assert_eq!(b.key(), 0);
    }

    #[test]
    fn allocator_frames() {
        assert!(is_allocator_frame(b"malloc"));
        assert!(is_allocator_frame(b"heapkeep::check::alloc"));
        assert!(is_allocator_frame(b"operator new(unsigned long)"));
        assert!(!is_allocator_frame(b"main"));
        assert!(!is_allocator_frame(b"mallocator"));
        assert!(is_allocator_frame(
            b"<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem"
        ));
        assert!(!is_allocator_frame(b"<app::Pool as app::Alloc>::get"));
        assert!(!is_allocator_frame(b"<Vec<u8> as app::Pack>::pack"));
    }

    #[test]
    fn inlined_functions_get_an_entry_each() {
        let mut syms = Symbols::new();
        let out: &[u8] = b"0x0000000000001234\nalloc::vec::from_elem\nvec.rs:10\n\
            app::site\napp.rs:3\n0x0000000000005678\napp::main\napp.rs:9\n0x9\nhalf\n";
        syms.text[..out.len()].copy_from_slice(out);
        syms.len = out.len();
        // The frames were given as 2, 0, 5: the last one's output is cut.
        parse_inlined(&mut syms, 0, &[2, 0, 5]);
        let names = |k: usize| -> std::vec::Vec<(&[u8], &[u8])> {
            let f = syms.first[k] as usize;
            (f..f + syms.count[k] as usize)
                .map(|e| (syms.get(syms.func[e]), syms.get(syms.loc[e])))
                .collect()
        };
        assert_eq!(
            names(2),
            [
                (&b"alloc::vec::from_elem"[..], &b"vec.rs:10"[..]),
                (&b"app::site"[..], &b"app.rs:3"[..])
            ]
        );
        assert_eq!(names(0), [(&b"app::main"[..], &b"app.rs:9"[..])]);
        assert!(names(5).is_empty());
    }
}
