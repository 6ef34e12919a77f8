//! The loss curve a person looks at after a run.
//!
//! Text is drawn with a TrueType font found on the system (DejaVu, Liberation, Noto...); with
//! none, the curve is still drawn, without labels, rather than failing the run.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Result, TrainError};

const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system font as "sans-serif" once; false when none is found.
pub fn ensure_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        for p in FONT_CANDIDATES {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws the per-step loss and a moving average to a PNG.
pub fn loss_curve(losses: &[f32], path: &Path, title: &str) -> Result<()> {
    let perr = |m: String| TrainError::Plot { path: path.to_path_buf(), message: m };
    if losses.is_empty() {
        return Err(perr("no steps to plot".into()));
    }
    let text = ensure_font();
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(e.to_string()))?;
    let n = losses.len();
    let finite: Vec<f32> = losses.iter().copied().filter(|x| x.is_finite()).collect();
    let lo = finite.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let hi = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max).max(lo + 1e-3);
    let window = (n / 20).max(1);
    let smooth: Vec<(usize, f32)> = (0..n)
        .map(|i| {
            let a = i.saturating_sub(window - 1);
            let s = &losses[a..=i];
            (i + 1, s.iter().sum::<f32>() / s.len() as f32)
        })
        .collect();
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(format!("training loss ({title}, {n} steps)"), ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(1f32..(n.max(2) as f32), lo..hi * 1.05)
        .map_err(|e| perr(e.to_string()))?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE.mix(0.0));
    if text {
        mesh.x_desc("optimizer step")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 15));
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| perr(e.to_string()))?;
    let raw = chart
        .draw_series(LineSeries::new(losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f32, l)), BLUE.mix(0.35)))
        .map_err(|e| perr(e.to_string()))?;
    if text {
        raw.label("loss per step").legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    }
    let avg = chart
        .draw_series(LineSeries::new(smooth.iter().map(|&(i, l)| (i as f32, l)), RED.stroke_width(2)))
        .map_err(|e| perr(e.to_string()))?;
    if text {
        avg.label(format!("moving average ({window} steps)")).legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| perr(e.to_string()))?;
    }
    root.present().map_err(|e| perr(e.to_string()))?;
    Ok(())
}
