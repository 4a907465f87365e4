//! Size classes: which block size serves a request.
//!
//! Class 0 serves 1–8 bytes; classes 1–8 step by 16 bytes up to 128; above
//! that every power-of-two interval `[2^k, 2^(k+1))` is split into 8 equal
//! steps, so a block is at most 12.5% larger than the request (from 128 bytes
//! up). Every class from 16 bytes on is a multiple of 16, which gives the
//! 16-byte alignment C's `malloc` promises.
//!
//! Blocks up to [`SMALL_MAX`] live on 64 KiB pages, larger ones up to
//! [`MEDIUM_MAX`] on 512 KiB pages; beyond that see `segment.rs` (large spans)
//! and `huge.rs`.

/// Alignment of every page start (one slice).
pub(crate) const PAGE_ALIGN: usize = 64 * 1024;
/// Number of size classes served from pages with many blocks.
pub(crate) const CLASS_COUNT: usize = 89;
/// Largest block on a small (one slice) page.
pub(crate) const SMALL_MAX: usize = 8 * 1024;
/// Largest size served by a size class.
pub(crate) const MEDIUM_MAX: usize = 128 * 1024;
/// Largest request the direct table answers (fast path).
pub(crate) const DIRECT_MAX: usize = 1024;
/// Entries in the direct table: index `(size + 7) / 8` for sizes `0..=DIRECT_MAX`.
pub(crate) const DIRECT_COUNT: usize = DIRECT_MAX / 8 + 1;

/// The class serving a request of `size` bytes (`size <= MEDIUM_MAX`).
#[inline]
pub(crate) const fn size_to_class(size: usize) -> usize {
    if size <= 8 {
        0
    } else if size <= 128 {
        (size + 15) >> 4
    } else {
        let s = size - 1;
        let k = (usize::BITS - 1 - s.leading_zeros()) as usize;
        let j = (s >> (k - 3)) & 7;
        9 + (k - 7) * 8 + j
    }
}

/// The block size of class `class`.
#[inline]
pub(crate) const fn class_to_size(class: usize) -> usize {
    if class == 0 {
        8
    } else if class <= 8 {
        class * 16
    } else {
        let i = class - 9;
        let k = 7 + i / 8;
        let j = i % 8;
        (1 << k) + (j + 1) * (1 << (k - 3))
    }
}

/// The class serving `size` bytes at alignment `align`: the first class from
/// `size_to_class(size)` whose block size is a multiple of `align`, so every
/// block of a page (pages start 64 KiB-aligned) is aligned. `None` when no
/// class fits (the request then goes to a large span).
#[inline]
pub(crate) const fn size_align_to_class(size: usize, align: usize) -> Option<usize> {
    if size > MEDIUM_MAX || align > PAGE_ALIGN {
        return None;
    }
    let mut c = size_to_class(if size < align { align } else { size });
    while c < CLASS_COUNT {
        if class_to_size(c) % align == 0 {
            return Some(c);
        }
        c += 1;
    }
    None
}

/// Bins: the queues a heap keeps. Bin `c < CLASS_COUNT` holds *coloured*
/// pages of class `c`: the first block sits a few cache lines into the page
/// and classes that are multiples of 1 KiB (from 2 KiB) get one cache line of
/// padding per block, so same-sized blocks in many pages do not all map to
/// the same cache sets (power-of-two strides on 64 KiB-aligned pages would).
/// Blocks of coloured pages are 16-byte aligned. Bin `CLASS_COUNT + c` holds
/// *plain* pages of class `c` (stride = class size, first block at the page
/// start) for requests aligned above 16 bytes.
pub(crate) const BIN_COUNT: usize = 2 * CLASS_COUNT;

/// The class of bin `bin`.
#[inline]
pub(crate) const fn bin_class(bin: usize) -> usize {
    if bin >= CLASS_COUNT {
        bin - CLASS_COUNT
    } else {
        bin
    }
}

/// Distance between blocks of a page of bin `bin` (the usable block size).
#[inline]
pub(crate) const fn bin_stride(bin: usize) -> usize {
    let size = class_to_size(bin_class(bin));
    if bin < CLASS_COUNT && size >= 2048 && size % 1024 == 0 {
        size + 64
    } else {
        size
    }
}

/// The bin serving `size` bytes at alignment `align`, `None` above the
/// classes (large spans and huge blocks take over).
#[inline]
pub(crate) const fn size_align_to_bin(size: usize, align: usize) -> Option<usize> {
    if align <= 16 {
        if size > MEDIUM_MAX {
            return None;
        }
        return Some(size_to_class(if size < align { align } else { size }));
    }
    match size_align_to_class(size, align) {
        Some(c) => Some(c + CLASS_COUNT),
        None => None,
    }
}

/// Slices (64 KiB units) per page of class `class`.
#[inline]
pub(crate) const fn class_page_slices(class: usize) -> usize {
    if class_to_size(class) <= SMALL_MAX {
        1
    } else {
        8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_increase_and_end_at_medium_max() {
        for c in 1..CLASS_COUNT {
            assert!(class_to_size(c) > class_to_size(c - 1), "class {c}");
        }
        assert_eq!(class_to_size(CLASS_COUNT - 1), MEDIUM_MAX);
    }

    #[test]
    fn every_size_maps_to_the_smallest_fitting_class() {
        for size in 0..=MEDIUM_MAX {
            let c = size_to_class(size);
            assert!(c < CLASS_COUNT);
            assert!(class_to_size(c) >= size, "size {size} class {c}");
            if c > 0 {
                assert!(
                    class_to_size(c - 1) < size.max(1),
                    "size {size} not smallest"
                );
            }
        }
    }

    #[test]
    fn waste_is_bounded_above_128_bytes() {
        for size in 129..=MEDIUM_MAX {
            let b = class_to_size(size_to_class(size));
            // at most 12.5% above the request
            assert!((b - size) * 8 <= size, "size {size} block {b}");
        }
    }

    #[test]
    fn classes_from_16_are_16_aligned() {
        for c in 1..CLASS_COUNT {
            assert_eq!(class_to_size(c) % 16, 0);
        }
    }

    #[test]
    fn aligned_classes_are_multiples_of_the_alignment() {
        let mut align = 1;
        while align <= MEDIUM_MAX {
            if align > PAGE_ALIGN {
                assert!(size_align_to_class(8, align).is_none());
            }
            for size in [0, 1, 7, 100, 1000, 5000, 40_000, MEDIUM_MAX] {
                if let Some(c) = size_align_to_class(size, align) {
                    assert_eq!(class_to_size(c) % align, 0);
                    assert!(class_to_size(c) >= size);
                }
            }
            align *= 2;
        }
        assert!(size_align_to_class(MEDIUM_MAX + 1, 8).is_none());
    }

    #[test]
    fn bins_cover_requests_with_their_alignment() {
        for align in [1usize, 8, 16, 32, 64, 4096, PAGE_ALIGN] {
            for size in [0usize, 1, 8, 24, 1000, 4096, 5000, 65536, MEDIUM_MAX] {
                let Some(bin) = size_align_to_bin(size, align) else {
                    assert!(align > PAGE_ALIGN || size > MEDIUM_MAX);
                    continue;
                };
                assert!(bin < BIN_COUNT);
                assert!(bin_stride(bin) >= size);
                if align > 16 {
                    assert!(bin >= CLASS_COUNT);
                    assert_eq!(bin_stride(bin) % align, 0);
                } else {
                    assert_eq!(bin_stride(bin) % 16 % align.max(1), 0);
                }
            }
        }
        // coloured power-of-two classes are padded by a cache line
        assert_eq!(bin_stride(size_to_class(4096)), 4096 + 64);
        assert_eq!(bin_stride(size_to_class(4096) + CLASS_COUNT), 4096);
        assert_eq!(bin_stride(size_to_class(1024)), 1024);
    }

    #[test]
    fn direct_table_ranges_fall_in_one_class() {
        for idx in 1..DIRECT_COUNT {
            let lo = (idx - 1) * 8 + 1;
            let hi = idx * 8;
            assert_eq!(size_to_class(lo), size_to_class(hi));
        }
    }
}
