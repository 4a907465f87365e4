//! SVG charts of a run, drawn with `plotters` (SVG backend only, no system
//! font libraries: text is emitted as SVG `<text>` elements).
//!
//! One chart per metric: for each workload a group of bars, one per
//! allocator, showing the allocator's median divided by heapkeep's median on
//! that workload (heapkeep = 1.0; when heapkeep has no value, the best
//! allocator on the workload is the reference). The y axis is logarithmic.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{Metric, Report};
use crate::UNDER_TEST;

/// Bar colours, in allocator order (heapkeep first).
const COLORS: &[RGBColor] = &[
    RGBColor(214, 39, 40),   // heapkeep: red
    RGBColor(127, 127, 127), // system: grey
    RGBColor(31, 119, 180),  // mimalloc: blue
    RGBColor(44, 160, 44),   // jemalloc: green
    RGBColor(255, 127, 14),  // snmalloc: orange
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

const FONT: &str = "sans-serif";
const HEIGHT: u32 = 580;

/// Draws the chart of `metric` into the SVG file `path`.
pub fn draw(report: &Report, metric: Metric, title: &str, path: &Path) -> Result<(), String> {
    draw_inner(report, metric, title, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Y axis marks: the powers of two (and their 1.5 multiples) in range.
fn key_points(lo: f64, hi: f64) -> Vec<f64> {
    (-8..=12)
        .flat_map(|k| {
            let p = 2f64.powi(k);
            [p, p * 1.5]
        })
        .filter(|v| (lo..=hi).contains(v))
        .collect()
}

fn draw_inner(
    report: &Report,
    metric: Metric,
    title: &str,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let workloads = &report.meta.workloads;
    let allocs = &report.meta.allocators;
    if workloads.is_empty() || allocs.is_empty() {
        return Ok(());
    }

    // ratios[w][a] = value(w, a) / reference(w)
    let ratios: Vec<Vec<Option<f64>>> = workloads
        .iter()
        .map(|w| {
            let vals: Vec<Option<f64>> = allocs
                .iter()
                .map(|a| report.value(w, a, metric).filter(|v| *v > 0.0))
                .collect();
            let reference = report
                .value(w, UNDER_TEST, metric)
                .filter(|v| *v > 0.0)
                .or_else(|| vals.iter().flatten().copied().min_by(f64::total_cmp));
            vals.iter().map(|v| Some((*v)? / reference?)).collect()
        })
        .collect();
    let all = ratios.iter().flatten().flatten().copied();
    let (min, max) = all.fold((1.0f64, 1.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    let y_lo = (min / 1.4).min(0.5);
    let y_hi = (max * 1.8).max(2.0);

    let n_w = workloads.len();
    let n_a = allocs.len();
    let width = (180 + n_w * (n_a * 26 + 40)).max(900) as u32;
    let root = SVGBackend::new(path, (width, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let reference_name = if report.has_under_test() {
        UNDER_TEST
    } else {
        "best allocator"
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(64)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0f64..n_w as f64,
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(key_points(y_lo, y_hi)),
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(format!(
            "relative to {reference_name} (= 1.0), log scale, lower is better"
        ))
        .y_label_formatter(&|v| format!("{v}"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;

    // Reference line at 1.0.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (n_w as f64, 1.0)],
        BLACK.mix(0.6).stroke_width(1),
    )))?;

    let group = 0.8; // fraction of a workload slot used by its bars
    let bar_w = group / n_a as f64;
    let value_style = TextStyle::from((FONT, 11).into_font())
        .transform(FontTransform::Rotate270)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (ai, a) in allocs.iter().enumerate() {
        let color = COLORS[ai % COLORS.len()];
        let bars: Vec<(f64, f64, f64)> = ratios
            .iter()
            .enumerate()
            .filter_map(|(wi, row)| {
                let x0 = wi as f64 + (1.0 - group) / 2.0 + ai as f64 * bar_w;
                row[ai].map(|r| (x0, x0 + bar_w * 0.9, r))
            })
            .collect();
        chart.draw_series(
            bars.iter()
                .map(|&(x0, x1, r)| Rectangle::new([(x0, y_lo), (x1, r)], color.filled())),
        )?;
        // Legend entry, in a row under the workload names (so it never
        // hides a bar), centred.
        let lx = width as i32 / 2 - (n_a as i32 * 120) / 2 + ai as i32 * 120;
        let ly = HEIGHT as i32 - 24;
        root.draw(&Rectangle::new(
            [(lx, ly - 6), (lx + 14, ly + 6)],
            color.filled(),
        ))?;
        root.draw(&Text::new(
            a.as_str(),
            (lx + 20, ly),
            TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        // Value labels, written upwards from the top of each bar.
        for &(x0, x1, r) in &bars {
            let (px, py) = chart.backend_coord(&((x0 + x1) / 2.0, r));
            root.draw(&Text::new(
                format!("{r:.2}"),
                (px, py - 4),
                value_style.clone(),
            ))?;
        }
        // Mark failed cells.
        for (wi, row) in ratios.iter().enumerate() {
            let failed = report
                .cell(&workloads[wi], a)
                .is_some_and(|m| m.failed_runs > 0 && row[ai].is_none());
            if failed {
                let x = wi as f64 + (1.0 - group) / 2.0 + (ai as f64 + 0.45) * bar_w;
                let (px, py) = chart.backend_coord(&(x, y_lo));
                root.draw(&Text::new("failed", (px, py - 4), value_style.clone()))?;
            }
        }
    }

    // Workload names under their groups.
    let name_style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (wi, w) in workloads.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(wi as f64 + 0.5, y_lo));
        root.draw(&Text::new(w.as_str(), (px, py + 8), name_style.clone()))?;
    }

    root.present()?;
    Ok(())
}
