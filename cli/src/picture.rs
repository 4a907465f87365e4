//! The heap map picture: a snapshot laid out as a [`Scene`] (boxes and
//! monospace text at pixel positions), written as SVG (with hover titles),
//! as a self-contained HTML page (the SVG inline, and every size class and
//! heap in tables), or rasterized to PNG (`raster.rs`). The layout is done
//! once, so the three outputs show the same picture.
//!
//! The picture: a title and the fragmentation figures; a legend (what each
//! colour and shape means; colours follow the block size, small blue to
//! large red); the top size classes; then one row per segment (64 slices of
//! 64 KiB, slice 0 its header), grouped by heap, then the segment cache,
//! the sampled guard, and one bar per huge block. A page box is tinted in
//! its block size's colour and filled from the bottom by the share of its
//! blocks in use; a free slice is grey while resident and white with a
//! dashed outline once purged.

use std::fmt::Write as _;

use crate::snapshot::{self, Kind, Place, Segment, Snapshot, Span, SLICES};

/// A colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// Mixes `self` with white: `t` = 0 keeps it, 1 gives white.
    fn tint(self, t: f32) -> Rgb {
        let m = |c: u8| (c as f32 + (255.0 - c as f32) * t).round() as u8;
        Rgb(m(self.0), m(self.1), m(self.2))
    }

    /// Darkens `self` by `t` (0 keeps it, 1 gives black).
    fn shade(self, t: f32) -> Rgb {
        let m = |c: u8| (c as f32 * (1.0 - t)).round() as u8;
        Rgb(m(self.0), m(self.1), m(self.2))
    }

    fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// The text styles (monospace; sizes in pixels, width 0.6 of the size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Font {
    /// 10 px (6 px per character).
    Small,
    /// 12 px (7 px per character).
    Normal,
    /// 12 px bold.
    Bold,
    /// 15 px bold (9 px per character).
    Title,
}

impl Font {
    pub fn size(self) -> i32 {
        match self {
            Font::Small => 10,
            Font::Normal | Font::Bold => 12,
            Font::Title => 15,
        }
    }

    /// Width of one character.
    pub fn advance(self) -> i32 {
        match self {
            Font::Small => 6,
            Font::Normal | Font::Bold => 7,
            Font::Title => 9,
        }
    }

    fn bold(self) -> bool {
        matches!(self, Font::Bold | Font::Title)
    }
}

/// A box. `class`/`data` tag it in the SVG (`class="page" data-size=".."`).
#[derive(Clone, Debug)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
    pub fill: Option<Rgb>,
    pub stroke: Option<Rgb>,
    pub dashed: bool,
    pub title: Option<String>,
    pub class: Option<&'static str>,
    pub data: Option<(&'static str, String)>,
}

impl Rect {
    fn new(x: i32, y: i32, w: i32, h: i32) -> Rect {
        Rect {
            x,
            y,
            w,
            h,
            fill: None,
            stroke: None,
            dashed: false,
            title: None,
            class: None,
            data: None,
        }
    }

    fn fill(mut self, c: Rgb) -> Rect {
        self.fill = Some(c);
        self
    }

    fn stroke(mut self, c: Rgb) -> Rect {
        self.stroke = Some(c);
        self
    }
}

/// A line of text; `y` is the top of the line.
#[derive(Clone, Debug)]
pub struct Text {
    pub x: i32,
    pub y: i32,
    pub font: Font,
    pub color: Rgb,
    pub text: String,
}

#[derive(Clone, Debug)]
pub enum Shape {
    Rect(Rect),
    Text(Text),
}

/// Everything drawn, in drawing order.
#[derive(Clone, Debug, Default)]
pub struct Scene {
    pub width: i32,
    pub height: i32,
    pub shapes: Vec<Shape>,
}

impl Scene {
    fn rect(&mut self, r: Rect) {
        self.shapes.push(Shape::Rect(r));
    }

    fn text(&mut self, x: i32, y: i32, font: Font, color: Rgb, text: impl Into<String>) {
        let text = text.into();
        self.width = self
            .width
            .max(x + text.chars().count() as i32 * font.advance() + MARGIN);
        self.shapes.push(Shape::Text(Text {
            x,
            y,
            font,
            color,
            text,
        }));
    }
}

// ---------------------------------------------------------------------------
// Colours and numbers

const INK: Rgb = Rgb(0x22, 0x22, 0x22);
const GREY_TEXT: Rgb = Rgb(0x66, 0x66, 0x66);
const HEADER: Rgb = Rgb(0x4d, 0x4d, 0x4d);
const FREE_RESIDENT: Rgb = Rgb(0xc4, 0xc4, 0xc4);
const FREE_PURGED_LINE: Rgb = Rgb(0xa0, 0xa0, 0xa0);
const UNKNOWN: Rgb = Rgb(0xe0, 0xa0, 0xa0);
const GUARD: Rgb = Rgb(0xd6, 0x3a, 0xaf);
const HUGE: Rgb = Rgb(0x6a, 0x3d, 0x9a);
const WHITE: Rgb = Rgb(255, 255, 255);
const ROW_BACK: Rgb = Rgb(0xf3, 0xf3, 0xf3);

/// Size bands: one colour per power of two of the block size, from 16 bytes
/// (band 0) to 2 MiB (band 17, the largest large block).
const BANDS: usize = 18;

/// The band of a block of `size` bytes.
fn band(size: u64) -> usize {
    let log = 64 - size.max(1).saturating_sub(1).leading_zeros() as usize; // ceil(log2)
    log.saturating_sub(4).min(BANDS - 1)
}

/// The largest block size of band `b`.
fn band_top(b: usize) -> u64 {
    1 << (b + 4)
}

/// The colours of the size bands of one picture: the bands present are
/// spread evenly over the colour map (in size order, small blue to large
/// red), so neighbouring bands stay easy to tell apart.
#[derive(Clone, Debug)]
struct Palette([Rgb; BANDS]);

impl Palette {
    fn new(present: &[bool; BANDS]) -> Palette {
        let n = present.iter().filter(|p| **p).count();
        let mut out = [Rgb(0x80, 0x80, 0x80); BANDS];
        let bands = present.iter().enumerate().filter(|(_, p)| **p);
        for (k, (b, _)) in bands.enumerate() {
            out[b] = turbo(if n <= 1 {
                0.25
            } else {
                k as f64 / (n - 1) as f64
            });
        }
        Palette(out)
    }

    fn of(&self, size: u64) -> Rgb {
        self.0[band(size)]
    }
}

/// The size bands a snapshot's pages and large blocks fall in.
fn bands_present(snap: &Snapshot) -> [bool; BANDS] {
    let mut present = [false; BANDS];
    for seg in &snap.segments {
        for sp in seg.spans.iter().filter(|s| s.kind != Kind::Guard) {
            present[band(span_size(sp))] = true;
        }
    }
    present
}

/// Google's Turbo colour map (polynomial fit) at `x` in 0..=1, over its
/// middle (0.1..0.9), so neither end is too dark.
fn turbo(x: f64) -> Rgb {
    let t = 0.1 + 0.8 * x;
    let poly = |c: [f64; 6]| {
        let v = c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * (c[4] + t * c[5]))));
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    Rgb(
        poly([0.1357, 4.6154, -42.6603, 132.1311, -152.9424, 59.2864]),
        poly([0.0914, 2.1942, 4.8430, -14.1850, 4.2773, 2.8296]),
        poly([0.1067, 12.6419, -60.5820, 110.3628, -89.9031, 27.3482]),
    )
}

/// `n` bytes, short: `176 B`, `64 KiB`, `3.9 MiB`, `1.25 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else if v >= 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// `n` with thousands separators.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        0
    } else {
        (part as u128 * 100 / whole as u128) as u64
    }
}

// ---------------------------------------------------------------------------
// Layout

const MARGIN: i32 = 16;
/// Width of one slice in a segment row.
const CELL: i32 = 12;
const ROW_H: i32 = 18;
const ROW_GAP: i32 = 4;
/// Where rows start (after the address label).
const GRID_X: i32 = MARGIN + 15 * 7;
const GRID_W: i32 = CELL * SLICES as i32;
/// Where the figures right of a row start.
const NOTE_X: i32 = GRID_X + GRID_W + 10;
const LINE: i32 = 16;
/// Top size classes listed in the legend.
const TOP_CLASSES: usize = 8;

/// Lays out the picture of `snap`.
pub fn scene(snap: &Snapshot) -> Scene {
    let mut sc = Scene {
        width: NOTE_X + 40 * 6 + MARGIN,
        ..Scene::default()
    };
    let pal = Palette::new(&bands_present(snap));
    let mut y = MARGIN;
    y = header(&mut sc, snap, y);
    y = legend(&mut sc, snap, &pal, y + 6);
    y = classes(&mut sc, snap, &pal, y + 8);
    y += 10;
    for h in &snap.heaps {
        let segs: Vec<&Segment> = snap.heap_segments(h.index).collect();
        if segs.is_empty() {
            continue;
        }
        let in_use: u64 = segs.iter().map(|s| seg_in_use(s)).sum();
        let title = format!(
            "heap {} ({}): {} segment{}, {} in use",
            h.index,
            h.state,
            segs.len(),
            if segs.len() == 1 { "" } else { "s" },
            bytes(in_use)
        );
        y = segment_section(&mut sc, &pal, &title, &segs, y);
    }
    let cached: Vec<&Segment> = snap
        .segments
        .iter()
        .filter(|s| s.place == Place::Cache)
        .collect();
    if !cached.is_empty() {
        let title = format!("segment cache: {} empty segments", cached.len());
        y = segment_section(&mut sc, &pal, &title, &cached, y);
    }
    let guard: Vec<&Segment> = snap
        .segments
        .iter()
        .filter(|s| s.place == Place::Guard)
        .collect();
    if !guard.is_empty() {
        y = segment_section(
            &mut sc,
            &pal,
            "sampled guard (one slot per slice)",
            &guard,
            y,
        );
    }
    if !snap.huge.is_empty() {
        y = huge_section(&mut sc, snap, y);
    }
    sc.height = y + MARGIN;
    sc
}

fn header(sc: &mut Scene, snap: &Snapshot, mut y: i32) -> i32 {
    let prog = snap
        .program
        .rsplit('/')
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or("program");
    sc.text(
        MARGIN,
        y,
        Font::Title,
        INK,
        format!("heapkeep map: {prog} (pid {})", snap.pid),
    );
    y += 22;
    let when = match snap.when.as_str() {
        "exit" => "at exit".to_string(),
        "peak" => format!(
            "at the peak of bytes in use ({} peak)",
            bytes(snap.stats.peak_live)
        ),
        "signal" => "on a signal".to_string(),
        "call" => "on request (heapkeep_write_snapshot)".to_string(),
        w => format!("({w})"),
    };
    let cut = if snap.complete {
        ""
    } else {
        "  [INCOMPLETE SNAPSHOT]"
    };
    sc.text(
        MARGIN,
        y,
        Font::Normal,
        GREY_TEXT,
        format!("snapshot {when}; {}{cut}", snap.program),
    );
    y += LINE + 6;
    let t = &snap.totals;
    let huge_live: u64 = snap
        .huge
        .iter()
        .filter(|h| h.live)
        .map(|h| h.map_size)
        .sum();
    let huge_cached: u64 = snap
        .huge
        .iter()
        .filter(|h| !h.live)
        .map(|h| h.map_size)
        .sum();
    let cached = snap
        .segments
        .iter()
        .filter(|s| s.place == Place::Cache)
        .count();
    let lines = [
        format!(
            "held {}   resident {}   in use {} in {} blocks   (OS mapped {}, peak {})",
            bytes(t.held),
            bytes(t.resident),
            bytes(t.in_use),
            count(snap.stats.live_blocks),
            bytes(snap.stats.mapped),
            bytes(snap.stats.mapped_peak),
        ),
        format!(
            "held, not in use {} ({}%)   resident, not in use at least {}   largest free run {}",
            bytes(snap.unused()),
            percent(snap.unused(), t.held),
            bytes(t.unused_resident),
            bytes(t.largest_free_run),
        ),
        format!(
            "segments {} ({} cached)   huge blocks {} live ({}), {} cached ({})",
            t.segments,
            cached,
            t.huge_live,
            bytes(huge_live),
            t.huge_cached,
            bytes(huge_cached),
        ),
    ];
    for l in lines {
        sc.text(MARGIN, y, Font::Normal, INK, l);
        y += LINE;
    }
    y
}

/// A legend swatch and its label at `x`; returns the next x.
fn swatch(sc: &mut Scene, x: i32, y: i32, r: Rect, label: &str) -> i32 {
    sc.rect(Rect {
        x,
        y: y + 1,
        w: 14,
        h: 12,
        ..r
    });
    sc.text(x + 19, y + 2, Font::Small, INK, label);
    x + 19 + label.len() as i32 * 6 + 14
}

fn legend(sc: &mut Scene, snap: &Snapshot, pal: &Palette, mut y: i32) -> i32 {
    let right = GRID_X + GRID_W;
    let mut x = MARGIN;
    let base = Rect::new(0, 0, 0, 0);
    x = swatch(sc, x, y, base.clone().fill(HEADER), "segment header");
    x = swatch(
        sc,
        x,
        y,
        base.clone().fill(FREE_RESIDENT),
        "free slice, resident",
    );
    let mut purged = base.clone().fill(WHITE).stroke(FREE_PURGED_LINE);
    purged.dashed = true;
    x = swatch(sc, x, y, purged, "free slice, purged");
    let c = turbo(0.35);
    x = swatch(
        sc,
        x,
        y,
        base.clone().fill(c.tint(0.7)).stroke(c.shade(0.35)),
        "page, no block in use",
    );
    swatch(
        sc,
        x,
        y,
        base.clone().fill(c).stroke(c.shade(0.35)),
        "page, full",
    );
    y += LINE + 2;
    x = MARGIN;
    x = swatch(sc, x, y, base.clone().fill(GUARD), "guard slot, live");
    x = swatch(
        sc,
        x,
        y,
        base.clone().fill(HUGE),
        "huge block, resident part",
    );
    swatch(
        sc,
        x,
        y,
        base.clone().fill(HUGE.tint(0.7)).stroke(HUGE),
        "huge mapping, not resident",
    );
    y += LINE + 4;
    sc.text(
        MARGIN,
        y,
        Font::Small,
        GREY_TEXT,
        "block size (pages of blocks up to 128 KiB; large blocks up to 2 MiB have a span of their own):",
    );
    y += LINE - 2;
    // The bands present, in order.
    let present = bands_present(snap);
    x = MARGIN;
    for (b, _) in present.iter().enumerate().filter(|(_, p)| **p) {
        let label = format!("<={}", short(band_top(b)));
        let c = pal.0[b];
        if x + 19 + label.len() as i32 * 6 > right {
            x = MARGIN;
            y += LINE;
        }
        x = swatch(
            sc,
            x,
            y,
            Rect::new(0, 0, 0, 0).fill(c).stroke(c.shade(0.35)),
            &label,
        );
    }
    if present.iter().all(|p| !p) {
        sc.text(MARGIN, y, Font::Small, GREY_TEXT, "(no pages)");
    }
    y += LINE + 2;
    sc.text(
        MARGIN,
        y,
        Font::Small,
        GREY_TEXT,
        "Each row is a 4 MiB segment: 64 slices of 64 KiB, slice 0 its header. A page box is filled from the",
    );
    y += LINE - 3;
    sc.text(
        MARGIN,
        y,
        Font::Small,
        GREY_TEXT,
        "bottom by the share of its blocks in use (hover over a box in the SVG or HTML for its figures).",
    );
    y + LINE - 3
}

/// A block size as a legend label: `16`, `2K`, `1M`.
fn short(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1024 && n % 1024 == 0 {
        format!("{}K", n >> 10)
    } else if n > 1024 {
        format!("{:.1}K", n as f64 / 1024.0)
    } else {
        n.to_string()
    }
}

/// The size that colours a span: its class size, or a large block's span.
fn span_size(sp: &Span) -> u64 {
    match sp.kind {
        Kind::Blocks => snapshot::class_size(sp.class).max(1),
        _ => sp.block_size,
    }
}

fn classes(sc: &mut Scene, snap: &Snapshot, pal: &Palette, mut y: i32) -> i32 {
    let mut rows = snap.classes();
    if rows.is_empty() {
        return y;
    }
    rows.sort_by(|a, b| b.page_bytes.cmp(&a.page_bytes).then(a.class.cmp(&b.class)));
    let shown = rows.len().min(TOP_CLASSES);
    sc.text(
        MARGIN,
        y,
        Font::Bold,
        INK,
        format!(
            "size classes: {} with pages; the top {} by page memory",
            rows.len(),
            shown
        ),
    );
    y += LINE;
    sc.text(
        MARGIN + 19,
        y,
        Font::Small,
        GREY_TEXT,
        format!(
            "{:>10}  {:>11}    {:>11} {:>6}  {:>6}  {:>11}  {:>9}",
            "block", "blocks used", "capacity", "use", "pages", "page memory", "bytes used"
        ),
    );
    y += LINE - 3;
    for r in &rows[..shown] {
        let c = pal.of(r.block_size);
        sc.rect(
            Rect::new(MARGIN, y + 1, 14, 10)
                .fill(c)
                .stroke(c.shade(0.35)),
        );
        sc.text(
            MARGIN + 19,
            y,
            Font::Small,
            INK,
            format!(
                "{:>10}  {:>11} of {:>11} ({:>3}%)  {:>6}  {:>11}  {:>9}",
                bytes(r.block_size),
                count(r.in_use),
                count(r.capacity),
                percent(r.in_use, r.capacity),
                count(r.pages),
                bytes(r.page_bytes),
                bytes(r.in_use_bytes),
            ),
        );
        y += LINE - 3;
    }
    y
}

fn seg_in_use(s: &Segment) -> u64 {
    s.spans.iter().map(Span::in_use_bytes).sum()
}

/// Slice tick labels above a group of rows.
fn axis(sc: &mut Scene, y: i32) -> i32 {
    for i in (0..SLICES).step_by(8) {
        sc.text(
            GRID_X + i as i32 * CELL,
            y,
            Font::Small,
            GREY_TEXT,
            format!("{i}"),
        );
    }
    sc.text(
        GRID_X + (SLICES as i32 - 1) * CELL - 3,
        y,
        Font::Small,
        GREY_TEXT,
        "63",
    );
    y + 12
}

fn segment_section(
    sc: &mut Scene,
    pal: &Palette,
    title: &str,
    segs: &[&Segment],
    mut y: i32,
) -> i32 {
    sc.text(MARGIN, y, Font::Bold, INK, title);
    y += LINE;
    y = axis(sc, y);
    for seg in segs {
        segment_row(sc, pal, seg, y);
        y += ROW_H + ROW_GAP;
    }
    y + 8
}

/// What a free slice of `seg` looks like.
fn free_slice(sc: &mut Scene, seg: &Segment, i: usize, y: i32) {
    let res = seg.resident_kib[i];
    let mut r = Rect::new(GRID_X + i as i32 * CELL + 1, y + 1, CELL - 2, ROW_H - 2);
    if res > 0 {
        r = r.fill(FREE_RESIDENT);
    } else {
        r = r.fill(WHITE).stroke(FREE_PURGED_LINE);
        r.dashed = true;
    }
    r.class = Some("free");
    r.title = Some(format!(
        "slice {i}: free, {} KiB resident{}",
        res,
        if res == 0 { " (purged)" } else { "" }
    ));
    sc.rect(r);
}

fn segment_row(sc: &mut Scene, pal: &Palette, seg: &Segment, y: i32) {
    sc.text(
        MARGIN,
        y + 4,
        Font::Small,
        GREY_TEXT,
        format!("{:#x}", seg.base),
    );
    sc.rect(Rect::new(GRID_X, y, GRID_W, ROW_H).fill(ROW_BACK));
    let mut h = Rect::new(GRID_X + 1, y + 1, CELL - 2, ROW_H - 2).fill(HEADER);
    h.title = Some(format!(
        "slice 0: segment header at {:#x}, {} KiB resident",
        seg.base, seg.resident_kib[0]
    ));
    sc.rect(h);
    let mut covered = [false; SLICES];
    covered[0] = true;
    for sp in &seg.spans {
        for c in covered.iter_mut().skip(sp.slice).take(sp.slices) {
            *c = true;
        }
        span_box(sc, pal, sp, y);
    }
    for (i, c) in covered.iter().enumerate() {
        if *c {
            continue;
        }
        if seg.free & (1 << i) != 0 || seg.place == Place::Cache {
            free_slice(sc, seg, i, y);
        } else {
            let mut r =
                Rect::new(GRID_X + i as i32 * CELL + 1, y + 1, CELL - 2, ROW_H - 2).fill(UNKNOWN);
            r.title = Some(format!("slice {i}: changing while read"));
            sc.rect(r);
        }
    }
    let in_use = seg_in_use(seg);
    let resident: u64 = seg.resident_kib.iter().map(|&r| r as u64 * 1024).sum();
    let free = (seg.free & !1).count_ones();
    let note = if seg.place == Place::Cache {
        format!("empty, {} resident", bytes(resident))
    } else {
        format!(
            "{} used, {} resident, {} free slices",
            bytes(in_use),
            bytes(resident),
            free
        )
    };
    sc.text(NOTE_X, y + 4, Font::Small, GREY_TEXT, note);
}

fn span_box(sc: &mut Scene, pal: &Palette, sp: &Span, y: i32) {
    let x = GRID_X + sp.slice as i32 * CELL + 1;
    let w = sp.slices as i32 * CELL - 2;
    let (colour, title, tag, fraction) = match sp.kind {
        Kind::Guard => {
            let live = sp.used > 0;
            let title = if live {
                format!(
                    "slice {}: guard slot, a live sampled block of {} B",
                    sp.slice, sp.block_size
                )
            } else {
                format!("slice {}: guard slot, empty", sp.slice)
            };
            (
                GUARD,
                title,
                ("guard", sp.block_size.to_string()),
                live as u64 as f64,
            )
        }
        Kind::Large => {
            let title = format!(
                "slices {}-{}: a large block of {} ({} resident)",
                sp.slice,
                sp.slice + sp.slices - 1,
                bytes(sp.block_size),
                bytes(sp.resident),
            );
            (
                pal.of(sp.block_size),
                title,
                ("large", sp.block_size.to_string()),
                sp.in_use() as f64,
            )
        }
        Kind::Blocks => {
            let size = snapshot::class_size(sp.class);
            let slices = if sp.slices == 1 {
                format!("slice {}", sp.slice)
            } else {
                format!("slices {}-{}", sp.slice, sp.slice + sp.slices - 1)
            };
            let mut title = format!(
                "{slices}: {} blocks, {} of {} in use ({}%), {} carved, {} resident",
                bytes(size),
                count(sp.in_use()),
                count(sp.capacity),
                percent(sp.in_use(), sp.capacity),
                count(sp.carved),
                bytes(sp.resident),
            );
            if sp.pending > 0 {
                let _ = write!(title, ", {} freed by other threads", count(sp.pending));
            }
            if sp.full {
                title.push_str(", full");
            }
            if sp.aligned {
                title.push_str(", over-aligned requests");
            }
            let frac = if sp.capacity == 0 {
                0.0
            } else {
                sp.in_use() as f64 / sp.capacity as f64
            };
            (pal.of(size), title, ("page", size.to_string()), frac)
        }
    };
    let inner = ROW_H - 2;
    let mut back = Rect::new(x, y + 1, w, inner).fill(colour.tint(0.7));
    back.title = Some(title);
    back.class = Some(tag.0);
    back.data = Some(("data-size", tag.1));
    sc.rect(back);
    let filled = (fraction.clamp(0.0, 1.0) * inner as f64).round() as i32;
    let filled = if fraction > 0.0 { filled.max(1) } else { 0 };
    if filled > 0 {
        sc.rect(Rect::new(x, y + 1 + inner - filled, w, filled).fill(colour));
    }
    sc.rect(Rect::new(x, y + 1, w, inner).stroke(colour.shade(0.35)));
}

fn huge_section(sc: &mut Scene, snap: &Snapshot, mut y: i32) -> i32 {
    let live = snap.huge.iter().filter(|h| h.live).count();
    sc.text(
        MARGIN,
        y,
        Font::Bold,
        INK,
        format!(
            "huge blocks: {} live, {} cached (bar length: the mapping; one row = 4 MiB)",
            live,
            snap.huge.len() - live
        ),
    );
    y += LINE + 2;
    let mut huge: Vec<_> = snap.huge.iter().collect();
    huge.sort_by_key(|h| (!h.live, std::cmp::Reverse(h.map_size)));
    for h in huge {
        sc.text(
            MARGIN,
            y + 4,
            Font::Small,
            GREY_TEXT,
            format!("{:#x}", h.base),
        );
        // Up to a whole row per 4 MiB; longer mappings wrap onto more rows.
        let full_rows = (h.map_size / snapshot::SEGMENT_BYTES) as i32;
        let rest = h.map_size % snapshot::SEGMENT_BYTES;
        let rows = full_rows + (rest > 0) as i32;
        let shown_rows = rows.min(8);
        let res_frac = if h.map_size == 0 {
            0.0
        } else {
            h.resident as f64 / h.map_size as f64
        };
        let title = format!(
            "huge block at {:#x}: {} block in a {} mapping, {}, {} resident",
            h.base,
            bytes(h.block_size),
            bytes(h.map_size),
            if h.live { "live" } else { "cached (free)" },
            bytes(h.resident)
        );
        let row_h = 10;
        for r in 0..shown_rows {
            let w = if r == rows - 1 && rest > 0 {
                ((rest as f64 / snapshot::SEGMENT_BYTES as f64) * GRID_W as f64).round() as i32
            } else {
                GRID_W
            }
            .max(3);
            let ry = y + r * (row_h + 2);
            let mut back = Rect::new(GRID_X, ry, w, row_h)
                .fill(HUGE.tint(0.7))
                .stroke(HUGE);
            back.dashed = !h.live;
            back.title = Some(title.clone());
            back.class = Some("huge");
            back.data = Some(("data-size", h.block_size.to_string()));
            sc.rect(back);
            // Resident share, drawn as the same share of each row.
            let rw = ((w as f64) * res_frac).round() as i32;
            if rw > 0 {
                sc.rect(Rect::new(GRID_X, ry, rw, row_h).fill(if h.live {
                    HUGE
                } else {
                    HUGE.tint(0.35)
                }));
            }
        }
        let more = if rows > shown_rows {
            format!(" ({} rows shown of {rows})", shown_rows)
        } else {
            String::new()
        };
        sc.text(
            NOTE_X,
            y,
            Font::Small,
            GREY_TEXT,
            format!(
                "{} {}, {} res{more}",
                bytes(h.block_size),
                if h.live { "live" } else { "cached" },
                bytes(h.resident)
            ),
        );
        y += shown_rows * (row_h + 2) + ROW_GAP + 2;
    }
    y
}

// ---------------------------------------------------------------------------
// SVG and HTML

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The scene as an SVG document.
pub fn svg(sc: &Scene) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" xml:space="preserve" width="{w}" height="{h}" viewBox="0 0 {w} {h}">"#,
        w = sc.width,
        h = sc.height
    );
    o.push_str(
        "<style>text{font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;white-space:pre}</style>\n",
    );
    let _ = writeln!(
        o,
        r#"<rect x="0" y="0" width="{}" height="{}" fill="white"/>"#,
        sc.width, sc.height
    );
    for s in &sc.shapes {
        match s {
            Shape::Rect(r) => {
                let _ = write!(
                    o,
                    r#"<rect x="{}" y="{}" width="{}" height="{}""#,
                    r.x, r.y, r.w, r.h
                );
                match r.fill {
                    Some(c) => {
                        let _ = write!(o, r#" fill="{}""#, c.hex());
                    }
                    None => o.push_str(r#" fill="none""#),
                }
                if let Some(c) = r.stroke {
                    // Inside the box, as the raster draws it.
                    let _ = write!(o, r#" stroke="{}" stroke-width="1""#, c.hex());
                    if r.dashed {
                        o.push_str(r#" stroke-dasharray="2 2""#);
                    }
                }
                if let Some(c) = r.class {
                    let _ = write!(o, r#" class="{c}""#);
                }
                if let Some((k, v)) = &r.data {
                    let _ = write!(o, r#" {k}="{}""#, esc(v));
                }
                match &r.title {
                    Some(t) => {
                        let _ = writeln!(o, "><title>{}</title></rect>", esc(t));
                    }
                    None => o.push_str("/>\n"),
                }
            }
            Shape::Text(t) => {
                let baseline = t.y + t.font.size() * 4 / 5;
                let _ = writeln!(
                    o,
                    r#"<text x="{}" y="{}" font-size="{}"{} fill="{}">{}</text>"#,
                    t.x,
                    baseline,
                    t.font.size(),
                    if t.font.bold() {
                        r#" font-weight="bold""#
                    } else {
                        ""
                    },
                    t.color.hex(),
                    esc(&t.text)
                );
            }
        }
    }
    o.push_str("</svg>\n");
    o
}

/// A self-contained HTML page: the picture (SVG inline, hover for figures)
/// and tables of every size class and heap.
pub fn html(snap: &Snapshot, sc: &Scene) -> String {
    let prog = esc(&snap.program);
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
         <title>heapkeep map: {prog} ({pid})</title>\n<style>\
         body{{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;margin:16px;color:#222}}\
         table{{border-collapse:collapse;margin:8px 0 20px}}\
         td,th{{padding:2px 10px;text-align:right;font-family:'DejaVu Sans Mono',Menlo,monospace;font-size:12px}}\
         th{{border-bottom:1px solid #999}} tr:nth-child(even){{background:#f4f4f4}}\
         .pic{{overflow-x:auto}} rect:hover{{opacity:0.75}}\
         </style></head><body>\n",
        pid = snap.pid
    );
    let _ = writeln!(
        o,
        "<div class=\"pic\">{}</div>",
        svg(sc).replace(r#"<svg xmlns"#, r#"<svg role="img" xmlns"#)
    );
    o.push_str("<h2>Size classes</h2>\n<table><tr><th>class</th><th>block</th><th>blocks in use</th><th>capacity</th><th>use</th><th>pages</th><th>page memory</th><th>bytes in use</th></tr>\n");
    for r in snap.classes() {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}%</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.class,
            bytes(r.block_size),
            count(r.in_use),
            count(r.capacity),
            percent(r.in_use, r.capacity),
            count(r.pages),
            bytes(r.page_bytes),
            bytes(r.in_use_bytes)
        );
    }
    o.push_str("</table>\n<h2>Heaps</h2>\n<table><tr><th>heap</th><th>state</th><th>segments</th><th>in use</th><th>resident</th><th>free slices</th></tr>\n");
    for h in &snap.heaps {
        let segs: Vec<_> = snap.heap_segments(h.index).collect();
        let in_use: u64 = segs.iter().map(|s| seg_in_use(s)).sum();
        let res: u64 = segs
            .iter()
            .flat_map(|s| s.resident_kib.iter())
            .map(|&r| r as u64 * 1024)
            .sum();
        let free: u32 = segs.iter().map(|s| (s.free & !1).count_ones()).sum();
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            h.index,
            esc(&h.state),
            segs.len(),
            bytes(in_use),
            bytes(res),
            free
        );
    }
    o.push_str("</table>\n</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SAMPLE;

    #[test]
    fn numbers_read_well() {
        assert_eq!(bytes(176), "176 B");
        assert_eq!(bytes(64 << 10), "64 KiB");
        assert_eq!(bytes(4_089_446), "3.90 MiB");
        assert_eq!(bytes(12 << 20 | 1 << 19), "12.5 MiB");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(band(16), 0);
        assert_eq!(band(17), 1);
        assert_eq!(band(176), 4);
        assert_eq!(band(2 << 20), BANDS - 1);
        assert_eq!(short(1 << 20), "1M");
        assert_eq!(short(2048), "2K");
    }

    #[test]
    fn palette_spreads_the_bands_present() {
        let mut present = [false; BANDS];
        present[3] = true;
        present[4] = true;
        present[12] = true;
        let p = Palette::new(&present);
        assert_eq!(p.0[3], turbo(0.0));
        assert_eq!(p.0[4], turbo(0.5));
        assert_eq!(p.0[12], turbo(1.0));
        assert_ne!(p.0[3], p.0[4]);
    }

    #[test]
    fn svg_has_a_box_per_page_and_the_figures() {
        let snap = Snapshot::parse(SAMPLE).unwrap();
        let sc = scene(&snap);
        let svg = svg(&sc);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches(r#"class="page" data-size="176""#).count(), 2);
        assert_eq!(svg.matches(r#"class="page" data-size="48""#).count(), 1);
        assert_eq!(svg.matches(r#"class="huge""#).count(), 3, "8 MiB: 3 rows");
        // Slices 4..63 are free: 3 resident (4, 5, 6 read 64, 64, 0 KiB...).
        assert_eq!(svg.matches(r#"class="free""#).count(), 60);
        assert!(svg.contains("largest free run 3.75 MiB"), "{svg}");
        assert!(svg.contains("held 12.1 MiB"));
        assert!(svg.contains("372 of 372 in use (100%)"));
        assert!(svg.contains("97 of 372 in use (26%)"));
        assert!(svg.contains("3 freed by other threads"));
        // Text is escaped.
        let mut odd = snap.clone();
        odd.program = "/bin/a<b>&c".into();
        let s = super::svg(&scene(&odd));
        assert!(s.contains("a&lt;b&gt;&amp;c") && !s.contains("a<b>"));
    }

    #[test]
    fn html_is_self_contained() {
        let snap = Snapshot::parse(SAMPLE).unwrap();
        let page = html(&snap, &scene(&snap));
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("<svg role=\"img\""));
        assert!(!page.contains("src=") && !page.contains("href="));
        assert!(page.contains("<td>11</td><td>176 B</td><td>469</td><td>744</td><td>63%</td>"));
    }
}
