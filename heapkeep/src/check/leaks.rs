//! The end-of-run checks of check mode: every block in quarantine must
//! still hold the freed pattern, every live block's redzones must be
//! intact, and live blocks nothing refers to any more are leaks.
//!
//! Leaks are found as a conservative collector would: roots are the
//! writable data of every loaded module, the exiting thread's TLS and its
//! stack; any word that points into a live block (its start or inside)
//! marks it, and marked blocks are scanned in turn. Unmarked blocks are
//! leaked; they are summed per allocation stack.

use core::ffi::c_void;
use core::ptr;

use super::stack::{self, Frames};
use super::table::{FREED, LARGE, LIVE};
use super::{check_freed, check_redzones, each_shard, lock_all, options, report, Error, State};
use crate::os;
use crate::os::maps;
use crate::sync::SpinGuard;
use crate::writer::Writer;
use options::id;

/// A live block in the scan: `[start, end)`, its stack, and whether a
/// reference to it was found.
#[derive(Clone, Copy)]
struct Block {
    start: usize,
    end: usize,
    size: usize,
    stack: u32,
    marked: bool,
}

/// Scratch memory for the scan, in a mapping of its own (the heap being
/// checked is not used).
struct Scratch<T> {
    ptr: *mut T,
    cap: usize,
}

impl<T: Copy> Scratch<T> {
    fn new(cap: usize) -> Option<Scratch<T>> {
        let bytes = (cap.max(1) * core::mem::size_of::<T>()).next_multiple_of(os::PAGE_SIZE);
        let ptr = os::map_aligned(bytes, os::PAGE_SIZE).cast::<T>();
        (!ptr.is_null()).then_some(Scratch { ptr, cap })
    }

    fn slice(&mut self, len: usize) -> &mut [T] {
        debug_assert!(len <= self.cap);
        // SAFETY: the mapping holds `cap` elements; T is plain data and the
        // caller writes before reading (fresh mappings read as zero).
        unsafe { core::slice::from_raw_parts_mut(self.ptr, len.min(self.cap)) }
    }
}

impl<T> Scratch<T> {
    /// The mapping, `(start, bytes)`.
    fn range(&self) -> (usize, usize) {
        let bytes = (self.cap.max(1) * core::mem::size_of::<T>()).next_multiple_of(os::PAGE_SIZE);
        (self.ptr as usize, bytes)
    }
}

impl<T> Drop for Scratch<T> {
    fn drop(&mut self) {
        let (start, bytes) = self.range();
        // SAFETY: our mapping, of this size.
        unsafe { os::unmap(start as *mut u8, bytes) };
    }
}

/// One leak site: a stack and what leaked from it.
#[derive(Clone, Copy, Default)]
struct Site {
    stack: u32,
    bytes: usize,
    blocks: usize,
}

/// Anonymous mappings larger than this are not scanned as roots.
const MAX_ROOT_MAPPING: usize = 4 << 30;

/// How many sites the report lists.
const TOP_SITES: usize = 10;

/// Runs the end-of-run checks and prints what they find.
pub(super) fn at_exit() {
    let mut first_error: Option<Error> = None;
    each_shard(|st| {
        st.table.for_each(|e| {
            if first_error.is_none() {
                match e.state {
                    FREED => check_freed(st, e, &mut first_error),
                    LIVE => check_redzones(st, e, &mut first_error),
                    _ => {}
                }
            }
        });
    });
    if let Some(mut err) = first_error {
        err.detail.s(" (found when the program exited)");
        let mut here = Frames::new();
        let m = super::marker(&here);
        super::capture_here(&mut here, m);
        report(&err, &here);
    }
    let mode = options::get(id::LEAKS);
    if mode == options::LEAKS_OFF {
        return;
    }
    let mut top = [Site::default(); TOP_SITES];
    let mut stacks = [const { Frames::new() }; TOP_SITES];
    let (bytes, blocks) = {
        let mut sts = lock_all();
        let Some((bytes, blocks)) = find_leaks(&mut sts, mode == options::LEAKS_ALL, &mut top)
        else {
            return;
        };
        for (s, f) in top.iter().zip(stacks.iter_mut()) {
            f.set(sts[0].depot.get(s.stack));
        }
        (bytes, blocks)
    };
    if blocks == 0 {
        return;
    }
    let symbolize = super::symbolize();
    let mut w = Writer::new();
    w.s("heapkeep: leak: ")
        .d(bytes)
        .s(" bytes in ")
        .d(blocks)
        .s(" blocks\n");
    for (s, f) in top.iter().zip(stacks.iter()) {
        if s.blocks == 0 {
            break;
        }
        w.s("  ")
            .d(s.bytes)
            .s(" bytes in ")
            .d(s.blocks)
            .s(" blocks allocated at:\n");
        stack::print(&mut w, f.as_slice(), symbolize);
    }
    w.flush();
    let code = options::get(id::LEAK_EXIT_CODE);
    if code != 0 {
        // SAFETY: flushes C streams (the program's buffered output), then
        // ends the process with the chosen code.
        unsafe {
            libc::fflush(ptr::null_mut());
            libc::_exit(code as i32);
        }
    }
}

/// Finds leaked blocks (all live ones if `all`) in every shard (`sts`,
/// all locked); fills `top` with the biggest sites, whose stacks are ids of
/// the first shard's depot (the others' stacks are copied into it, so that
/// one site is one entry whichever shards its blocks are in). Returns
/// `(bytes, blocks)` leaked, `None` when the scan could not get memory.
fn find_leaks(
    sts: &mut [SpinGuard<'static, State>],
    all: bool,
    top: &mut [Site; TOP_SITES],
) -> Option<(usize, usize)> {
    let entries: usize = sts.iter().map(|st| st.table.len()).sum();
    let mut scratch = Scratch::<Block>::new(entries)?;
    let mut n = 0;
    {
        let blocks = scratch.slice(entries);
        let (first, rest) = sts.split_first_mut()?;
        let first: &mut State = first;
        let depot = &mut first.depot;
        let mut add = |e: &super::table::Entry, stack: u32| {
            if e.state == LIVE && n < blocks.len() {
                blocks[n] = Block {
                    start: e.addr,
                    end: e.addr + e.size.max(1),
                    size: e.size,
                    stack,
                    marked: all,
                };
                n += 1;
            }
        };
        first.table.for_each(|e| add(e, e.alloc_stack));
        for st in rest.iter() {
            st.table
                .for_each(|e| add(e, depot.intern(st.depot.get(e.alloc_stack))));
        }
        blocks[..n].sort_unstable_by_key(|b| b.start);
    }
    let sts = &*sts;
    if !all {
        let room = entries + 1024;
        let mut work = Scratch::<u32>::new(n)?;
        let mut skip = Scratch::<(usize, usize)>::new(room)?;
        let nskip = own_mappings(
            sts,
            &[scratch.range(), work.range(), skip.range()],
            skip.slice(room),
        );
        let mut marker = Marker {
            blocks: scratch.slice(n),
            work: work.slice(n),
            pending: 0,
        };
        scan_roots(&mut marker, skip.slice(nskip));
        while marker.pending > 0 {
            marker.pending -= 1;
            let b = marker.blocks[marker.work[marker.pending] as usize];
            marker.scan(b.start, b.start + b.size);
        }
    }
    let blocks = scratch.slice(n);
    let mut sites = Scratch::<Site>::new(n)?;
    let sites = sites.slice(n);
    let mut nsites = 0;
    let (mut bytes, mut count) = (0, 0);
    // Group the unmarked blocks by stack: sort by stack id, then sum runs.
    blocks.sort_unstable_by_key(|b| (b.marked, b.stack));
    for b in blocks.iter() {
        if b.marked != all {
            continue; // with `all`, every block counts (marked = true)
        }
        bytes += b.size;
        count += 1;
        if nsites > 0 && sites[nsites - 1].stack == b.stack {
            sites[nsites - 1].bytes += b.size;
            sites[nsites - 1].blocks += 1;
        } else {
            sites[nsites] = Site {
                stack: b.stack,
                bytes: b.size,
                blocks: 1,
            };
            nsites += 1;
        }
    }
    // Blocks the dynamic loader allocated for itself are not the program's.
    for site in sites[..nsites].iter_mut() {
        if stack::loader_owned(sts[0].depot.get(site.stack)) {
            bytes -= site.bytes;
            count -= site.blocks;
            site.bytes = 0;
            site.blocks = 0;
        }
    }
    let sites = &mut sites[..nsites];
    sites.sort_unstable_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
    for (t, s) in top.iter_mut().zip(sites.iter()) {
        *t = *s;
    }
    Some((bytes, count))
}

/// The mark phase: blocks sorted by address, and a stack of blocks marked
/// but not scanned yet.
struct Marker<'a> {
    blocks: &'a mut [Block],
    work: &'a mut [u32],
    pending: usize,
}

impl Marker<'_> {
    /// Marks every block that a word in `[from, to)` points into.
    fn scan(&mut self, from: usize, to: usize) {
        let (Some(first), Some(last)) = (self.blocks.first(), self.blocks.last()) else {
            return;
        };
        let (lo, hi) = (first.start, last.end);
        let mut a = from.next_multiple_of(8);
        while a + 8 <= to {
            // SAFETY: the range is readable (a root region or a live block).
            let w = unsafe { ptr::read_volatile(a as *const usize) };
            a += 8;
            if w < lo || w >= hi {
                continue;
            }
            let i = self.blocks.partition_point(|b| b.start <= w);
            if i == 0 {
                continue;
            }
            let b = &mut self.blocks[i - 1];
            if w < b.end && !b.marked {
                b.marked = true;
                self.work[self.pending] = (i - 1) as u32;
                self.pending += 1;
            }
        }
    }
}

/// Fills `out` with the memory heapkeep itself holds, as `[lo, hi)`
/// sorted by address: each shard's inner heap's segments, large blocks,
/// side table, depot and quarantine ring, and `scratch` (the scan's own
/// buffers). None of it is a root: live blocks in it are scanned when
/// something marks them, and the rest (freed blocks, bookkeeping) would
/// make leaked blocks look referenced. Returns how many ranges it wrote.
fn own_mappings(
    sts: &[SpinGuard<'static, State>],
    scratch: &[(usize, usize)],
    out: &mut [(usize, usize)],
) -> usize {
    let mut n = 0;
    let mut add = |start: usize, bytes: usize| {
        if bytes > 0 && n < out.len() {
            out[n] = (start, start + bytes);
            n += 1;
        }
    };
    for &(s, b) in scratch {
        add(s, b);
    }
    for st in sts {
        for &(s, b) in &st.depot.mappings() {
            add(s, b);
        }
        let (s, b) = st.table.mapping();
        add(s, b);
        add(st.quarantine.ring as usize, st.quarantine.cap * 8);
        st.table.for_each(|e| {
            if e.kind == LARGE {
                add(e.base, e.extent);
            }
        });
        if !st.heap.is_null() {
            // SAFETY: the inner heap and its segment list are ours (the
            // shard's lock is held).
            unsafe {
                let mut seg = (*st.heap).segments;
                while !seg.is_null() {
                    add(seg as usize, (*seg).map_size);
                    seg = (*seg).next;
                }
            }
        }
    }
    out[..n].sort_unstable();
    n
}

/// Scans the roots: writable data and TLS of every module, then every
/// writable anonymous mapping (thread stacks, memory the program mapped
/// itself) except `skip`, heapkeep's own. The calling thread's stack is
/// scanned from here up only: below lie dead frames.
fn scan_roots(m: &mut Marker<'_>, skip: &[(usize, usize)]) {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> i32 {
        // SAFETY: the loader passes valid module info; `data` is our Marker.
        unsafe {
            let m = &mut *data.cast::<Marker<'_>>();
            let info = &*info;
            for i in 0..info.dlpi_phnum as usize {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_W != 0 {
                    let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
                    m.scan(start, start + ph.p_memsz as usize);
                } else if ph.p_type == libc::PT_TLS && !info.dlpi_tls_data.is_null() {
                    let start = info.dlpi_tls_data as usize;
                    m.scan(start, start + ph.p_memsz as usize);
                }
            }
        }
        0
    }
    // SAFETY: `each` only reads module data; `m` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (m as *mut Marker<'_>).cast()) };
    let here = &m as *const _ as usize;
    maps::for_each(|map| {
        // Reservations of many GiB (runtimes reserve address space this
        // way) are skipped: reading them would fault in zero pages.
        if !map.rw || !map.anon || map.hi - map.lo > MAX_ROOT_MAPPING {
            return;
        }
        let mut lo = map.lo;
        if lo <= here && here < map.hi {
            lo = here;
        }
        for &(s, e) in skip {
            if e <= lo || s >= map.hi {
                continue;
            }
            if s > lo {
                m.scan(lo, s);
            }
            lo = lo.max(e);
        }
        if lo < map.hi {
            m.scan(lo, map.hi);
        }
    });
}
