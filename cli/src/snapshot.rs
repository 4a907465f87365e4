//! Reading a heap map snapshot: the text file the library writes (format
//! version 1, described in heapkeep's `map.rs` and docs/ARCHITECTURE.md),
//! and the figures derived from it (per size class, per heap).
//!
//! Unknown record kinds and unknown `key=value` fields are skipped, so a
//! newer library's snapshot still reads.

use std::collections::BTreeMap;

/// Slices per segment, and their size.
pub const SLICES: usize = 64;
pub const SLICE_BYTES: u64 = 64 << 10;
pub const SEGMENT_BYTES: u64 = SLICE_BYTES * SLICES as u64;

/// A whole snapshot.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub pid: u32,
    pub program: String,
    /// exit, peak, signal or call.
    pub when: String,
    pub heaps: Vec<Heap>,
    pub segments: Vec<Segment>,
    pub huge: Vec<Huge>,
    pub totals: Totals,
    pub stats: Counts,
    /// The file ended with its `end` line.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heap {
    pub index: usize,
    pub addr: u64,
    /// active, retired, claimed or private.
    pub state: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Heap(usize),
    Cache,
    Guard,
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub base: u64,
    pub place: Place,
    /// Bit `i`: slice `i` is free.
    pub free: u64,
    /// Bit `i`: slice `i` may hold data (clear: never touched or purged).
    pub dirty: u64,
    /// Resident KiB per slice.
    pub resident_kib: Vec<u32>,
    pub spans: Vec<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Blocks,
    Large,
    Guard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub slice: usize,
    pub slices: usize,
    pub kind: Kind,
    /// Size class (blocks).
    pub class: usize,
    /// Usable bytes per block (the stride).
    pub block_size: u64,
    /// Blocks the page holds when all are carved.
    pub capacity: u64,
    pub carved: u64,
    pub used: u64,
    /// Freed by other threads, not collected yet (included in `used`).
    pub pending: u64,
    pub resident: u64,
    pub full: bool,
    pub aligned: bool,
}

impl Span {
    pub fn in_use(&self) -> u64 {
        self.used.saturating_sub(self.pending)
    }

    pub fn in_use_bytes(&self) -> u64 {
        self.in_use() * self.block_size
    }

    pub fn bytes(&self) -> u64 {
        self.slices as u64 * SLICE_BYTES
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Huge {
    pub base: u64,
    pub map_size: u64,
    pub block_size: u64,
    pub live: bool,
    pub resident: u64,
}

/// The `totals` line: sums of the walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub held: u64,
    pub resident: u64,
    pub in_use: u64,
    pub unused_resident: u64,
    pub largest_free_run: u64,
    pub segments: u64,
    pub huge_live: u64,
    pub huge_cached: u64,
}

/// The `stats` line: the counters read with the snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub mapped: u64,
    pub mapped_peak: u64,
    pub live: u64,
    pub peak_live: u64,
    pub live_blocks: u64,
}

/// Figures of one size class (summed over the snapshot's pages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassRow {
    pub class: usize,
    /// The class size.
    pub block_size: u64,
    pub in_use: u64,
    pub capacity: u64,
    pub pages: u64,
    pub page_bytes: u64,
    /// Bytes in blocks in use (strides).
    pub in_use_bytes: u64,
}

fn num(s: &str) -> Result<u64, String> {
    let r = if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    r.map_err(|_| format!("not a number: {s:?}"))
}

/// Reads `key=value` fields into `set(key, value)`.
fn fields(words: &[&str], mut set: impl FnMut(&str, u64)) -> Result<(), String> {
    for w in words {
        if let Some((k, v)) = w.split_once('=') {
            set(k, num(v)?);
        }
    }
    Ok(())
}

impl Snapshot {
    /// Parses a snapshot file's text.
    pub fn parse(text: &str) -> Result<Snapshot, String> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l.starts_with("heapkeep-map ") => {
                let v = l["heapkeep-map ".len()..].trim();
                if v != "1" {
                    return Err(format!(
                        "snapshot format version {v} (this heapkeep reads 1)"
                    ));
                }
            }
            _ => return Err("not a heapkeep map snapshot (no `heapkeep-map 1` line)".into()),
        }
        let mut s = Snapshot::default();
        for (n, line) in lines {
            let err = |e: String| format!("line {}: {e}: {line}", n + 1);
            let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
            let w: Vec<&str> = rest.split_whitespace().collect();
            match kind {
                "pid" => s.pid = num(rest.trim()).map_err(err)? as u32,
                "program" => s.program = rest.to_string(),
                "when" => s.when = rest.trim().to_string(),
                "heap" => {
                    if w.len() < 3 {
                        return Err(err("short heap line".into()));
                    }
                    s.heaps.push(Heap {
                        index: num(w[0]).map_err(err)? as usize,
                        addr: num(w[1]).map_err(err)?,
                        state: w[2].to_string(),
                    });
                }
                "segment" => s.segments.push(parse_segment(&w).map_err(err)?),
                "span" => {
                    let span = parse_span(&w).map_err(err)?;
                    let seg = s
                        .segments
                        .last_mut()
                        .ok_or_else(|| err("span before any segment".into()))?;
                    seg.spans.push(span);
                }
                "huge" => {
                    if w.len() < 5 {
                        return Err(err("short huge line".into()));
                    }
                    s.huge.push(Huge {
                        base: num(w[0]).map_err(err)?,
                        map_size: num(w[1]).map_err(err)?,
                        block_size: num(w[2]).map_err(err)?,
                        live: w[3] == "live",
                        resident: num(w[4]).map_err(err)?,
                    });
                }
                "totals" => {
                    let t = &mut s.totals;
                    fields(&w, |k, v| match k {
                        "held" => t.held = v,
                        "resident" => t.resident = v,
                        "in_use" => t.in_use = v,
                        "unused_resident" => t.unused_resident = v,
                        "largest_free_run" => t.largest_free_run = v,
                        "segments" => t.segments = v,
                        "huge_live" => t.huge_live = v,
                        "huge_cached" => t.huge_cached = v,
                        _ => {}
                    })
                    .map_err(err)?;
                }
                "stats" => {
                    let c = &mut s.stats;
                    fields(&w, |k, v| match k {
                        "mapped" => c.mapped = v,
                        "mapped_peak" => c.mapped_peak = v,
                        "live" => c.live = v,
                        "peak_live" => c.peak_live = v,
                        "live_blocks" => c.live_blocks = v,
                        _ => {}
                    })
                    .map_err(err)?;
                }
                "end" => s.complete = true,
                _ => {}
            }
        }
        Ok(s)
    }

    /// Reads and parses a snapshot file.
    pub fn read(path: &std::path::Path) -> Result<Snapshot, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Snapshot::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Per size class figures, for the classes with pages, by class.
    pub fn classes(&self) -> Vec<ClassRow> {
        let mut rows: BTreeMap<usize, ClassRow> = BTreeMap::new();
        for seg in &self.segments {
            for sp in seg.spans.iter().filter(|s| s.kind == Kind::Blocks) {
                let r = rows.entry(sp.class).or_insert_with(|| ClassRow {
                    class: sp.class,
                    block_size: class_size(sp.class),
                    ..ClassRow::default()
                });
                r.in_use += sp.in_use();
                r.capacity += sp.capacity;
                r.pages += 1;
                r.page_bytes += sp.bytes();
                r.in_use_bytes += sp.in_use_bytes();
            }
        }
        rows.into_values().collect()
    }

    /// The segments of heap `index`.
    pub fn heap_segments(&self, index: usize) -> impl Iterator<Item = &Segment> {
        self.segments
            .iter()
            .filter(move |s| s.place == Place::Heap(index))
    }

    /// Bytes held but not in a block in use.
    pub fn unused(&self) -> u64 {
        self.totals.held.saturating_sub(self.totals.in_use)
    }
}

/// The block size of size class `class` (as the library defines it).
pub fn class_size(class: usize) -> u64 {
    if class < heapkeep::walk::SIZE_CLASSES {
        heapkeep::walk::class_block_size(class) as u64
    } else {
        0
    }
}

fn parse_segment(w: &[&str]) -> Result<Segment, String> {
    if w.len() < 2 {
        return Err("short segment line".into());
    }
    let place = match w[1] {
        "cache" => Place::Cache,
        "guard" => Place::Guard,
        p => match p.strip_prefix("heap=") {
            Some(i) => Place::Heap(num(i)? as usize),
            None => return Err(format!("unknown place {p:?}")),
        },
    };
    let mut seg = Segment {
        base: num(w[0])?,
        place,
        free: 0,
        dirty: 0,
        resident_kib: vec![0; SLICES],
        spans: Vec::new(),
    };
    for f in &w[2..] {
        let Some((k, v)) = f.split_once('=') else {
            continue;
        };
        match k {
            "free" => seg.free = num(v)?,
            "dirty" => seg.dirty = num(v)?,
            "resident" => {
                for (i, x) in v.split(',').take(SLICES).enumerate() {
                    seg.resident_kib[i] = num(x)? as u32;
                }
            }
            _ => {}
        }
    }
    Ok(seg)
}

fn parse_span(w: &[&str]) -> Result<Span, String> {
    if w.len() < 10 {
        return Err("short span line".into());
    }
    let kind = match w[2] {
        "blocks" => Kind::Blocks,
        "large" => Kind::Large,
        "guard" => Kind::Guard,
        k => return Err(format!("unknown span kind {k:?}")),
    };
    let n = |i: usize| num(w[i]);
    let slice = n(0)? as usize;
    let slices = n(1)? as usize;
    if slice == 0 || slice + slices > SLICES || slices == 0 {
        return Err(format!("span {slice}+{slices} outside its segment"));
    }
    Ok(Span {
        slice,
        slices,
        kind,
        class: n(3)? as usize,
        block_size: n(4)?,
        capacity: n(5)?,
        carved: n(6)?,
        used: n(7)?,
        pending: n(8)?,
        resident: n(9)?,
        full: w[10..].contains(&"full"),
        aligned: w[10..].contains(&"aligned"),
    })
}

/// A small snapshot for the tests.
#[cfg(test)]
pub(crate) const SAMPLE: &str = "heapkeep-map 1
pid 42
program /bin/demo
when exit
heap 0 0x7f0000001000 active
segment 0x7f0000400000 heap=0 free=0xfffffffffffffff0 dirty=0x3f resident=8,64,64,4,64,64,0
span 1 1 blocks 11 176 372 372 372 0 65536 full
span 2 1 blocks 11 176 372 372 100 3 65536
span 3 1 blocks 3 48 1365 85 0 0 4096 aligned
huge 0x7f0001000000 8454144 8388608 live 8392704
totals held=12648448 resident=8000000 in_use=8458000 unused_resident=10 largest_free_run=3932160 segments=1 huge_live=1 huge_cached=0 future=7
stats mapped=13000000 mapped_peak=14000000 live=8458000 peak_live=9000000 live_blocks=470
something new
end
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_record() {
        let s = Snapshot::parse(SAMPLE).unwrap();
        assert_eq!(
            (s.pid, s.program.as_str(), s.when.as_str()),
            (42, "/bin/demo", "exit")
        );
        assert!(s.complete);
        assert_eq!(s.heaps.len(), 1);
        assert_eq!(s.segments.len(), 1);
        let seg = &s.segments[0];
        assert_eq!(seg.place, Place::Heap(0));
        assert_eq!(seg.resident_kib[..7], [8, 64, 64, 4, 64, 64, 0]);
        assert_eq!(seg.spans.len(), 3);
        assert!(seg.spans[0].full && !seg.spans[0].aligned && seg.spans[2].aligned);
        assert_eq!(seg.spans[1].in_use(), 97);
        assert_eq!(s.huge[0].block_size, 8388608);
        assert_eq!(s.totals.largest_free_run, 3932160);
        assert_eq!(s.stats.peak_live, 9000000);
        let classes = s.classes();
        assert_eq!(classes.len(), 2);
        let c176 = classes.iter().find(|c| c.block_size == 176).unwrap();
        assert_eq!((c176.in_use, c176.capacity, c176.pages), (372 + 97, 744, 2));
    }

    #[test]
    fn rejects_what_is_not_a_snapshot() {
        assert!(Snapshot::parse("hello\n").is_err());
        assert!(Snapshot::parse("heapkeep-map 2\n").is_err());
        assert!(Snapshot::parse("heapkeep-map 1\nspan 1 1 blocks 0 8 1 1 1 0 0\n").is_err());
        let bad = "heapkeep-map 1\nsegment 0x400000 heap=0\nspan 60 8 large 0 1 1 1 1 0 0\n";
        assert!(Snapshot::parse(bad).unwrap_err().contains("outside"));
        let cut = Snapshot::parse("heapkeep-map 1\npid 7\n").unwrap();
        assert!(!cut.complete);
    }
}
