//! PNG curves (PPE best-of-K).
//!
//! Text needs a font file. plotters' "ttf" feature would find system fonts through fontconfig,
//! which must then exist at build time; instead a TrueType font is looked up at run time
//! (`GRAMRR_FONT`, then common system paths) and registered with plotters' ab_glyph renderer.
//! Without one the figure is drawn without text, rather than not at all.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::EvalError;

const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font once; whether text can be drawn.
pub fn fonts_available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let candidates = std::env::var("GRAMRR_FONT").ok().into_iter().chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                // plotters keeps a 'static reference; one font for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws percentage curves over K, with an optional interval band around the first series and a
/// horizontal reference line.
pub fn curve_png(
    path: &Path,
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    band: &[(f64, f64, f64)],
    reference: Option<f64>,
) -> Result<(), EvalError> {
    let text = fonts_available();
    draw(path, title, series, band, reference, text)
        .map_err(|e| EvalError::Plot { path: path.display().to_string(), message: e.to_string() })
}

fn draw(
    path: &Path,
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    band: &[(f64, f64, f64)],
    reference: Option<f64>,
    text: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let k_max = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(1.0f64, f64::max);
    let y_lo = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .chain(band.iter().map(|b| b.1))
        .chain(reference)
        .fold(100.0f64, f64::min);
    let y_lo = ((y_lo - 5.0) / 10.0).floor().max(0.0) * 10.0;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(45).y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(1.0..k_max.max(2.0), y_lo..100.0)?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if text {
        mesh.x_desc("K (samples ranked)")
            .y_desc("accuracy of the top-ranked sample (%)")
            .label_style(("sans-serif", 15))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let colors = [RGBColor(31, 119, 180), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];
    if !band.is_empty() {
        let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2)).collect();
        poly.extend(band.iter().rev().map(|b| (b.0, b.1)));
        chart.draw_series(std::iter::once(Polygon::new(poly, colors[0].mix(0.18).filled())))?;
    }
    if let Some(r) = reference {
        let s = chart.draw_series(LineSeries::new([(1.0, r), (k_max, r)], RGBColor(128, 128, 128).stroke_width(1)))?;
        if text {
            s.label("random pick").legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RGBColor(128, 128, 128)));
        }
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let s = chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?;
        if text {
            s.label(*name).legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 2, c.filled())))?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", 15))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_drawn_without_a_font_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let pts: Vec<(f64, f64)> = (1..=32).map(|k| (k as f64, 40.0 + k as f64)).collect();
        let band: Vec<(f64, f64, f64)> = pts.iter().map(|&(k, y)| (k, y - 3.0, y + 3.0)).collect();
        draw(&path, "t", &[("a", pts)], &band, Some(45.0), false).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG");
        // Not a blank image: the curve's colour is in the pixels.
        assert!(bytes.len() > 2000, "{} bytes", bytes.len());
    }
}
