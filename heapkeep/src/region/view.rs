//! Looking at a `RegionHeap` without changing it: statistics (free bytes,
//! largest free block, fragmentation), the full invariant walk `check()` that
//! tests run after every operation, and the byte map as text (`aab---c`) and
//! as an SVG picture.
//!
//! Rules: nothing here writes to the heap, and nothing here allocates (the
//! map and the picture go to any `core::fmt::Write`). Only `free_bytes` and
//! `capacity` are O(1); the rest walk a list or the whole heap.

use core::fmt::{self, Write};

use super::{
    class_of, Gap, RegionHdr, RegionHeap, ABOVE_FREE, CLASS_COUNT, FLAGS, FL_COUNT, GRANULE,
    MIN_BLOCK, SL_BITS, SL_COUNT, USED, W,
};

/// The first broken invariant `RegionHeap::check` found: what, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckError {
    /// The invariant that does not hold.
    pub what: &'static str,
    /// The address of the block (or list head) concerned.
    pub at: usize,
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {:#x}", self.what, self.at)
    }
}

fn fail<T>(what: &'static str, at: usize) -> Result<T, CheckError> {
    Err(CheckError { what, at })
}

/// The regions of `heap`, newest first.
fn regions(heap: &RegionHeap) -> impl Iterator<Item = &RegionHdr> {
    let mut r = heap.regions;
    core::iter::from_fn(move || {
        // SAFETY: region headers live as long as the heap.
        let region = unsafe { r.as_ref()? };
        r = region.next;
        Some(region)
    })
}

/// One block met by `blocks_down`.
#[derive(Clone, Copy)]
struct Seen {
    /// Its first byte.
    at: usize,
    size: usize,
    free: bool,
    /// Its last word: a used block's tag, a free block's size.
    last: usize,
}

/// The blocks of `region` from the top down (the only way to walk them: a
/// block's size is in its last word). Each block's size comes from the word
/// below the previous one; a size that is zero or reaches below the region's
/// first block is reported once and ends the walk (`check` rejects it).
fn blocks_down(region: &RegionHdr) -> impl Iterator<Item = Seen> + '_ {
    let first = region.first as usize;
    let mut end = region.limit as usize;
    core::iter::from_fn(move || {
        if end <= first {
            return None;
        }
        // SAFETY: `end` is a block boundary inside the region above its
        // first block, so the word below it is a block's last word.
        let last = unsafe { *((end - W) as *const usize) };
        let free = last & USED == 0;
        let size = if free { last } else { last & !FLAGS };
        let at = end.wrapping_sub(size);
        end = if size == 0 || size > end - first {
            first
        } else {
            at
        };
        Some(Seen {
            at,
            size,
            free,
            last,
        })
    })
}

/// Used blocks in `region`.
fn used_blocks(region: &RegionHdr) -> usize {
    blocks_down(region).filter(|b| !b.free).count()
}

impl RegionHeap {
    /// Bytes in free blocks (each block's tag word included: a single
    /// allocation can use at most `largest_free() - BLOCK_OVERHEAD`). O(1).
    pub fn free_bytes(&self) -> usize {
        self.capacity - self.used
    }

    /// Bytes in used blocks (tags and rounding included).
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    /// The size of the largest free block (0 if none). Walks the list of
    /// the highest non-empty class.
    pub fn largest_free(&self) -> usize {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = 31 - self.fl_bitmap.leading_zeros() as usize;
        let sl = 31 - self.sl_bitmap[fl].leading_zeros() as usize;
        // SAFETY: the bitmaps say this list is not empty, so the head table
        // exists; walking one of our free lists.
        let mut g = unsafe { *self.heads.add(fl << SL_BITS | sl) };
        let mut largest = 0;
        while !g.is_null() {
            // SAFETY: as above.
            unsafe {
                largest = largest.max((*g).size);
                g = (*g).next;
            }
        }
        largest
    }

    /// How scattered the free memory is, in percent: `1 - largest_free /
    /// free_bytes`. 0 when all free memory is one block (or none is free).
    pub fn fragmentation(&self) -> f64 {
        let free = self.free_bytes();
        if free == 0 {
            return 0.0;
        }
        (1.0 - self.largest_free() as f64 / free as f64) * 100.0
    }

    /// Walks every region block by block (from the top down) and every free
    /// list, and checks that they agree: sizes and bounds, the tags' bits
    /// (USED, ABOVE_FREE) and the base tag, free blocks' fields and last
    /// words, no two free blocks adjacent, each free block on the list of
    /// its class exactly once with its back link right, the bitmaps, and the
    /// byte totals. Slow (the whole heap); for tests.
    pub fn check(&self) -> Result<(), CheckError> {
        let mut capacity = 0;
        let mut free = 0;
        let mut free_blocks = 0usize;
        for region in regions(self) {
            let (first, limit) = (region.first as usize, region.limit as usize);
            if first % GRANULE != 0 || limit % GRANULE != 0 || limit <= first {
                return fail("region bounds misaligned or empty", first);
            }
            if limit > region.end {
                return fail("blocks past the region's end", limit);
            }
            let mut above_free = false;
            let mut at = limit;
            for b in blocks_down(region) {
                if b.size < MIN_BLOCK || b.size % GRANULE != 0 || b.size > at - first {
                    return fail("block size out of bounds", at - W);
                }
                at = b.at;
                if b.free {
                    if above_free {
                        return fail("two adjacent free blocks", at);
                    }
                    // SAFETY: a free block's first granule, in bounds.
                    let g = unsafe { &*(at as *const Gap) };
                    if g.size != b.size {
                        return fail("free block's two size words differ", at);
                    }
                    if g.class != class_of(b.size) {
                        return fail("free block's class is wrong", at);
                    }
                    free += b.size;
                    free_blocks += 1;
                } else if (b.last & ABOVE_FREE != 0) != above_free {
                    return fail("ABOVE_FREE bit disagrees with the block above", at);
                }
                capacity += b.size;
                above_free = b.free;
            }
            if at != first {
                return fail("blocks do not start at the region's first block", at);
            }
            // SAFETY: the base tag, the word below the first block.
            let base_tag = unsafe { *((first - W) as *const usize) };
            if base_tag & !ABOVE_FREE != USED || (base_tag & ABOVE_FREE != 0) != above_free {
                return fail("base tag is wrong", first - W);
            }
        }
        if capacity != self.capacity {
            return fail("capacity differs from the sum of block sizes", capacity);
        }
        if free != self.free_bytes() {
            return fail("free byte count differs from the free blocks", free);
        }
        if !self.has_table() {
            return if self.fl_bitmap == 0 && self.sl_bitmap.iter().all(|&m| m == 0) {
                Ok(())
            } else {
                fail("bitmaps set without a head table", 0)
            };
        }
        let mut listed = 0usize;
        for fl in 0..FL_COUNT {
            if (self.fl_bitmap >> fl & 1 != 0) != (self.sl_bitmap[fl] != 0) {
                return fail("first-level bitmap disagrees with the second level", fl);
            }
            for sl in 0..SL_COUNT {
                let c = fl << SL_BITS | sl;
                debug_assert!(c < CLASS_COUNT);
                // SAFETY: the table has CLASS_COUNT slots.
                let slot = unsafe { self.heads.add(c) };
                // SAFETY: as above.
                let head = unsafe { *slot };
                if (self.sl_bitmap[fl] >> sl & 1 != 0) == head.is_null() {
                    return fail(
                        "second-level bitmap disagrees with the list head",
                        head as usize,
                    );
                }
                let mut from = slot;
                let mut g = head;
                while !g.is_null() {
                    listed += 1;
                    if listed > free_blocks {
                        return fail(
                            "more blocks on free lists than free in the regions",
                            g as usize,
                        );
                    }
                    if !regions(self)
                        .any(|r| (r.first as usize..r.limit as usize).contains(&(g as usize)))
                    {
                        return fail("free list entry outside every region", g as usize);
                    }
                    // SAFETY: `g` lies in a region (just checked) and the
                    // walk above checked every block there.
                    unsafe {
                        let end = g as usize + (*g).size;
                        if (*g).size < MIN_BLOCK
                            || (*g).size % GRANULE != 0
                            || *((end - W) as *const usize) != (*g).size
                        {
                            return fail("list entry is not a free block", g as usize);
                        }
                        if (*g).class != c {
                            return fail("free block on the list of another class", g as usize);
                        }
                        if (*g).next_of_prev != from {
                            return fail("free list back link is wrong", g as usize);
                        }
                        from = core::ptr::addr_of_mut!((*g).next);
                        g = (*g).next;
                    }
                }
            }
        }
        if listed != free_blocks {
            return fail("free blocks missing from the free lists", listed);
        }
        Ok(())
    }

    /// Draws the heap as text: one line per region (newest first), `width`
    /// cells each, a cell showing the block under its middle byte: a letter
    /// per used block (`a`, `b`, … `z`, then `a` again, in address order
    /// across the heap) and `-` for free space.
    ///
    /// ```
    /// # use core::alloc::Layout;
    /// # use heapkeep::region::RegionHeap;
    /// # let memory = Box::leak(vec![0u8; 8192].into_boxed_slice());
    /// let mut heap = RegionHeap::new(memory);
    /// let quarter = heap.capacity() / 4;
    /// heap.alloc(Layout::from_size_align(quarter, 8).unwrap()).unwrap();
    /// let mut map = String::new();
    /// heap.render_map(8, &mut map).unwrap();
    /// assert_eq!(map, "aa------\n");
    /// ```
    ///
    /// Blocks can only be walked from the top down (a block's size is in its
    /// last word), so each line is drawn in batches of `BATCH` cells, one
    /// walk of the region per batch, into a buffer on the stack.
    pub fn render_map(&self, width: usize, out: &mut impl Write) -> fmt::Result {
        const BATCH: usize = 128;
        // Used blocks in the regions before this one (letters run on).
        let mut before = 0usize;
        for region in regions(self) {
            let first = region.first as usize;
            let span = (region.limit as usize - first) as u128;
            let used = used_blocks(region);
            let mut start = 0;
            while start < width {
                let n = BATCH.min(width - start);
                let mut cells = [b'?'; BATCH];
                // Used blocks above the current one in this region.
                let mut above = 0usize;
                for b in blocks_down(region) {
                    let (lo, hi) = ((b.at - first) as u128, (b.at - first + b.size) as u128);
                    let c = if b.free {
                        b'-'
                    } else {
                        above += 1;
                        b'a' + ((before + used - above) % 26) as u8
                    };
                    // Cells of this batch whose middle,
                    // `(2i + 1) * span / (2 * width)`, is in `lo..hi`.
                    for (i, cell) in cells.iter_mut().enumerate().take(n) {
                        let mid = (2 * (start + i) as u128 + 1) * span / (2 * width as u128);
                        if (lo..hi).contains(&mid) {
                            *cell = c;
                        }
                    }
                }
                for &c in &cells[..n] {
                    out.write_char(c as char)?;
                }
                start += n;
            }
            out.write_char('\n')?;
            before += used;
        }
        Ok(())
    }

    /// Draws the heap as an SVG picture `width` pixels wide: one bar per
    /// region, a coloured rectangle per used block (hue by its letter in
    /// [`render_map`](Self::render_map)), light grey for free space, and a
    /// caption with the statistics.
    pub fn write_svg(&self, width: usize, out: &mut impl Write) -> fmt::Result {
        const BAR: usize = 24;
        let rows = regions(self).count();
        let height = rows * (BAR + 8) + 28;
        writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        )?;
        let mut before = 0usize;
        for (row, region) in regions(self).enumerate() {
            let y = row * (BAR + 8) + 4;
            let first = region.first as usize;
            let span = (region.limit as usize - first) as f64;
            let used = used_blocks(region);
            let mut above = 0usize;
            for b in blocks_down(region) {
                let x = (b.at - first) as f64 / span * width as f64;
                let w = b.size as f64 / span * width as f64;
                if b.free {
                    writeln!(
                        out,
                        r##"<rect x="{x:.2}" y="{y}" width="{w:.2}" height="{BAR}" fill="#e4e4e4"/>"##
                    )?;
                } else {
                    above += 1;
                    let hue = ((before + used - above) % 26) * 360 / 26;
                    writeln!(
                        out,
                        r#"<rect x="{x:.2}" y="{y}" width="{w:.2}" height="{BAR}" fill="hsl({hue},65%,55%)" stroke="white" stroke-width="0.5"/>"#
                    )?;
                }
            }
            before += used;
        }
        writeln!(
            out,
            r#"<text x="4" y="{}">capacity {} B, free {} B, largest free {} B, fragmentation {:.1}%</text>"#,
            rows * (BAR + 8) + 20,
            self.capacity,
            self.free_bytes(),
            self.largest_free(),
            self.fragmentation()
        )?;
        writeln!(out, "</svg>")
    }
}
