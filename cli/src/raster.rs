//! The heap map as a PNG: the [`Scene`] drawn into an RGB buffer (boxes
//! with one-pixel outlines, dashed where asked; text in embedded-graphics'
//! ISO 8859-1 bitmap fonts, whose widths match the SVG's monospace
//! advance), then encoded with the `png` crate. No system fonts are needed.

use std::convert::Infallible;

use embedded_graphics::mono_font::iso_8859_1::{
    FONT_6X10, FONT_7X13, FONT_7X13_BOLD, FONT_9X15_BOLD,
};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Baseline, Text};

use crate::picture::{Font, Rect, Rgb, Scene, Shape};

/// An RGB pixel buffer.
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Canvas {
        Canvas {
            width,
            height,
            pixels: vec![255; width as usize * height as usize * 3],
        }
    }

    fn put(&mut self, x: i32, y: i32, c: Rgb) {
        if x < 0 || y < 0 || x >= self.width as i32 || y >= self.height as i32 {
            return;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        self.pixels[i..i + 3].copy_from_slice(&[c.0, c.1, c.2]);
    }

    /// The pixel at `(x, y)` (tests look at the picture).
    #[cfg(test)]
    fn get(&self, x: u32, y: u32) -> Rgb {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Rgb(self.pixels[i], self.pixels[i + 1], self.pixels[i + 2])
    }

    fn rect(&mut self, r: &Rect) {
        if let Some(c) = r.fill {
            for y in r.y..r.y + r.h {
                for x in r.x..r.x + r.w {
                    self.put(x, y, c);
                }
            }
        }
        if let Some(c) = r.stroke {
            // One pixel inside the box's edge, as SVG centres a 1 px stroke
            // on it (close enough at this size); dashes 2 on, 2 off.
            let on = |k: i32| !r.dashed || (k / 2) % 2 == 0;
            let (x1, y1) = (r.x + r.w - 1, r.y + r.h - 1);
            for (k, x) in (r.x..=x1).enumerate() {
                if on(k as i32) {
                    self.put(x, r.y, c);
                    self.put(x, y1, c);
                }
            }
            for (k, y) in (r.y..=y1).enumerate() {
                if on(k as i32) {
                    self.put(r.x, y, c);
                    self.put(x1, y, c);
                }
            }
        }
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        for Pixel(p, c) in pixels {
            self.put(p.x, p.y, Rgb(c.r(), c.g(), c.b()));
        }
        Ok(())
    }
}

/// Draws the scene.
pub fn draw(sc: &Scene) -> Canvas {
    let mut cv = Canvas::new(sc.width.max(1) as u32, sc.height.max(1) as u32);
    for s in &sc.shapes {
        match s {
            Shape::Rect(r) => cv.rect(r),
            Shape::Text(t) => {
                let font = match t.font {
                    Font::Small => &FONT_6X10,
                    Font::Normal => &FONT_7X13,
                    Font::Bold => &FONT_7X13_BOLD,
                    Font::Title => &FONT_9X15_BOLD,
                };
                let style = MonoTextStyle::new(font, Rgb888::new(t.color.0, t.color.1, t.color.2));
                // The fonts cover ISO 8859-1; anything else shows as '?'.
                let text: String = t
                    .text
                    .chars()
                    .map(|c| if (c as u32) < 256 { c } else { '?' })
                    .collect();
                let _ = Text::with_baseline(&text, Point::new(t.x, t.y), style, Baseline::Top)
                    .draw(&mut cv);
            }
        }
    }
    cv
}

/// The scene as PNG bytes.
pub fn png(sc: &Scene) -> Result<Vec<u8>, String> {
    let cv = draw(sc);
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, cv.width, cv.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::High);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&cv.pixels).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picture;
    use crate::snapshot::{Snapshot, SAMPLE};

    #[test]
    fn png_decodes_to_the_scene_and_shows_the_pages() {
        let snap = Snapshot::parse(SAMPLE).unwrap();
        let sc = picture::scene(&snap);
        let bytes = png(&sc).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let info = reader.info();
        assert_eq!(
            (info.width, info.height),
            (sc.width as u32, sc.height as u32)
        );
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        let cv = draw(&sc);
        assert_eq!(buf, cv.pixels);
        // The full page (slice 1) is filled with its colour inside its
        // outline; the page with 97 of 372 blocks in use is tinted at its
        // top and filled at its bottom.
        let pages: Vec<&Rect> = sc
            .shapes
            .iter()
            .filter_map(|s| match s {
                Shape::Rect(r) if r.class == Some("page") => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(pages.len(), 3);
        let tint = pages[0].fill.unwrap();
        let centre = |r: &Rect, dy: i32| cv.get((r.x + r.w / 2) as u32, (r.y + dy) as u32);
        let full = centre(pages[0], pages[0].h / 2);
        assert_ne!(full, tint, "a full page is filled, not just tinted");
        assert_eq!(centre(pages[1], pages[1].h - 2), full);
        assert_eq!(centre(pages[1], 2), tint);
        // Text is drawn in ink.
        assert!(cv.pixels.chunks(3).any(|p| p == [0x22, 0x22, 0x22]));
    }
}
