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
    class_of, header, next_phys, size_of_block, Block, RegionHdr, RegionHeap, FL_COUNT, FREE,
    GRANULE, MIN_BLOCK, PREV_FREE, SL_COUNT, W,
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

/// The blocks of `region` in address order, with their sizes and whether
/// each is free (the sentinel excluded).
fn blocks(region: &RegionHdr) -> impl Iterator<Item = (*mut Block, usize, bool)> + '_ {
    let mut b = region.first;
    core::iter::from_fn(move || {
        if b == region.sentinel {
            return None;
        }
        // SAFETY: `b` is a block of a checked-or-trusted heap before its
        // sentinel; the walk only reads headers.
        let (size, free, next) = unsafe { (size_of_block(b), header(b) & FREE != 0, next_phys(b)) };
        let item = (b, size, free);
        b = next;
        Some(item)
    })
}

impl RegionHeap {
    /// Bytes in free blocks (each block's header word included: a single
    /// allocation can use at most `largest_free() - BLOCK_OVERHEAD`). O(1).
    pub fn free_bytes(&self) -> usize {
        self.free
    }

    /// Bytes in used blocks (headers and rounding included).
    pub fn used_bytes(&self) -> usize {
        self.capacity - self.free
    }

    /// The size of the largest free block (0 if none). Walks the list of
    /// the highest non-empty class.
    pub fn largest_free(&self) -> usize {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = 63 - self.fl_bitmap.leading_zeros() as usize;
        let sl = 31 - self.sl_bitmap[fl].leading_zeros() as usize;
        let mut b = self.heads[fl][sl];
        let mut largest = 0;
        while !b.is_null() {
            // SAFETY: walking one of our free lists.
            unsafe {
                largest = largest.max(size_of_block(b));
                b = (*b).next;
            }
        }
        largest
    }

    /// How scattered the free memory is, in percent: `1 - largest_free /
    /// free_bytes`. 0 when all free memory is one block (or none is free).
    pub fn fragmentation(&self) -> f64 {
        if self.free == 0 {
            return 0.0;
        }
        (1.0 - self.largest_free() as f64 / self.free as f64) * 100.0
    }

    /// Walks every region block by block and every free list, and checks
    /// that they agree: sizes and bounds, the FREE / PREV_FREE bits and
    /// footers, no two free blocks adjacent, each free block on the list of
    /// its class exactly once, the bitmaps, and the byte totals. Slow (the
    /// whole heap); for tests.
    pub fn check(&self) -> Result<(), CheckError> {
        let mut capacity = 0;
        let mut free = 0;
        let mut free_blocks = 0usize;
        for region in regions(self) {
            let (first, sentinel) = (region.first as usize, region.sentinel as usize);
            if first % GRANULE != GRANULE - W || sentinel % GRANULE != GRANULE - W {
                return fail("region first block or sentinel misaligned", first);
            }
            if sentinel + W > region.end {
                return fail("sentinel past the region's end", sentinel);
            }
            // SAFETY: the region's first block header.
            if unsafe { header(region.first) } & PREV_FREE != 0 {
                return fail(
                    "first block of a region claims a free block before it",
                    first,
                );
            }
            let mut prev_free = false;
            let mut at = first;
            for (b, size, is_free) in blocks(region) {
                at = b as usize;
                if size < MIN_BLOCK || size % GRANULE != 0 || at + size > sentinel {
                    return fail("block size out of bounds", at);
                }
                // SAFETY: `b` and its size were checked to lie in the region.
                let h = unsafe { header(b) };
                if (h & PREV_FREE != 0) != prev_free {
                    return fail("PREV_FREE bit disagrees with the block before", at);
                }
                if is_free {
                    if prev_free {
                        return fail("two adjacent free blocks", at);
                    }
                    // SAFETY: the footer is the block's last word, in bounds.
                    let footer = unsafe { *((at + size - W) as *const usize) };
                    if footer != at {
                        return fail("free block footer does not point at its header", at);
                    }
                    free += size;
                    free_blocks += 1;
                }
                capacity += size;
                prev_free = is_free;
                at += size;
            }
            if at != sentinel {
                return fail("blocks do not end at the sentinel", at);
            }
            // SAFETY: the sentinel header.
            let h = unsafe { header(region.sentinel) };
            if h & !PREV_FREE != 0 || (h & PREV_FREE != 0) != prev_free {
                return fail("sentinel header is wrong", sentinel);
            }
        }
        if capacity != self.capacity {
            return fail("capacity differs from the sum of block sizes", capacity);
        }
        if free != self.free {
            return fail("free byte count differs from the free blocks", free);
        }
        let mut listed = 0usize;
        for fl in 0..FL_COUNT {
            if (self.fl_bitmap >> fl & 1 != 0) != (self.sl_bitmap[fl] != 0) {
                return fail("first-level bitmap disagrees with the second level", fl);
            }
            for sl in 0..SL_COUNT {
                let head = self.heads[fl][sl];
                if (self.sl_bitmap[fl] >> sl & 1 != 0) == head.is_null() {
                    return fail(
                        "second-level bitmap disagrees with the list head",
                        head as usize,
                    );
                }
                let mut prev: *mut Block = core::ptr::null_mut();
                let mut b = head;
                while !b.is_null() {
                    listed += 1;
                    if listed > free_blocks {
                        return fail(
                            "more blocks on free lists than free in the regions",
                            b as usize,
                        );
                    }
                    if !regions(self)
                        .any(|r| (r.first as usize..r.sentinel as usize).contains(&(b as usize)))
                    {
                        return fail("free list entry outside every region", b as usize);
                    }
                    // SAFETY: `b` lies in a region (just checked) and the
                    // walk above checked every block there.
                    unsafe {
                        if header(b) & FREE == 0 {
                            return fail("used block on a free list", b as usize);
                        }
                        if class_of(size_of_block(b)) != (fl, sl) {
                            return fail("free block on the list of another class", b as usize);
                        }
                        if (*b).prev != prev {
                            return fail("free list back link is wrong", b as usize);
                        }
                        prev = b;
                        b = (*b).next;
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
    /// # let memory = Box::leak(vec![0u8; 4096].into_boxed_slice());
    /// let mut heap = RegionHeap::new(memory);
    /// heap.alloc(Layout::from_size_align(1000, 8).unwrap()).unwrap();
    /// let mut map = String::new();
    /// heap.render_map(8, &mut map).unwrap();
    /// assert_eq!(map, "aa------\n");
    /// ```
    pub fn render_map(&self, width: usize, out: &mut impl Write) -> fmt::Result {
        let mut letter = 0u8;
        for region in regions(self) {
            let span = (region.sentinel as usize - region.first as usize) as u128;
            let mut cells = 0;
            for (b, size, free) in blocks(region) {
                let (lo, hi) = (
                    (b as usize - region.first as usize) as u128,
                    (b as usize - region.first as usize + size) as u128,
                );
                let c = if free {
                    '-'
                } else {
                    let c = (b'a' + letter) as char;
                    letter = (letter + 1) % 26;
                    c
                };
                // Cells whose middle, `(2i + 1) * span / (2 * width)`, is in
                // `lo..hi`.
                while cells < width {
                    let mid = (2 * cells as u128 + 1) * span / (2 * width as u128);
                    if mid >= hi {
                        break;
                    }
                    if mid >= lo {
                        out.write_char(c)?;
                    }
                    cells += 1;
                }
            }
            out.write_char('\n')?;
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
        let mut letter = 0usize;
        for (row, region) in regions(self).enumerate() {
            let y = row * (BAR + 8) + 4;
            let span = (region.sentinel as usize - region.first as usize) as f64;
            let first = region.first as usize;
            for (b, size, free) in blocks(region) {
                let x = (b as usize - first) as f64 / span * width as f64;
                let w = size as f64 / span * width as f64;
                if free {
                    writeln!(
                        out,
                        r##"<rect x="{x:.2}" y="{y}" width="{w:.2}" height="{BAR}" fill="#e4e4e4"/>"##
                    )?;
                } else {
                    let hue = (letter % 26) * 360 / 26;
                    letter += 1;
                    writeln!(
                        out,
                        r#"<rect x="{x:.2}" y="{y}" width="{w:.2}" height="{BAR}" fill="hsl({hue},65%,55%)" stroke="white" stroke-width="0.5"/>"#
                    )?;
                }
            }
        }
        writeln!(
            out,
            r#"<text x="4" y="{}">capacity {} B, free {} B, largest free {} B, fragmentation {:.1}%</text>"#,
            rows * (BAR + 8) + 20,
            self.capacity,
            self.free,
            self.largest_free(),
            self.fragmentation()
        )?;
        writeln!(out, "</svg>")
    }
}
