//! What a person reads after a run: `curves.png` (reward, KL, response length, clip fraction,
//! reward-model calls and time per step) and `summary.md`.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Result, RlError};
use crate::grpo::{GrpoReport, GrpoStepMetrics};

fn mean(x: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = x.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// The Markdown summary: settings, the objective, first and last tenth of the run, totals.
pub fn summary_markdown(r: &GrpoReport) -> String {
    let h = &r.history;
    let tenth = (h.len() / 10).max(1);
    let first = &h[..tenth.min(h.len())];
    let last = &h[h.len().saturating_sub(tenth)..];
    let c = &r.config;
    let mut s = String::new();
    s.push_str("# GRPO run\n\n");
    s.push_str(&format!(
        "- policy: {} fine-tuning, {} trainable parameters\n- reward: {}\n- {} steps × {} prompts × {} responses, μ = {} updates per batch, lr {} ({:?})\n",
        r.mode, r.trainable_params, r.reward, r.steps, c.prompts_per_step, c.group_size, c.num_iterations, c.lr, c.scheduler
    ));
    s.push_str(&format!(
        "- objective: per-token clipped ratio (ε_low {}, ε_high {}) + β = {} × k3 KL to the reference (exp(r) − r − 1, r = log π_ref − log π_θ), {} normalisation; advantages (r − mean){} within each group\n",
        c.loss.epsilon_low,
        c.loss.epsilon_high,
        c.loss.beta,
        match c.loss_norm {
            crate::grpo::LossNorm::Sequence => "sequence (GRPO)",
            crate::grpo::LossNorm::Token => "token",
        },
        if c.scale_rewards { " / (std + 1e-4)" } else { "" }
    ));
    if let Some(from) = r.resumed_from {
        s.push_str(&format!("- resumed from step {from}\n"));
    }
    s.push_str(&format!("- wall time {:.1} s\n\n", r.seconds));
    if h.is_empty() {
        s.push_str("No steps were run.\n");
        return s;
    }
    s.push_str(&format!("| | first {tenth} steps | last {tenth} steps |\n|---|---|---|\n"));
    let row = |name: &str, f: &dyn Fn(&GrpoStepMetrics) -> f64, digits: usize| {
        format!("| {name} | {:.*} | {:.*} |\n", digits, mean(first.iter().map(f)), digits, mean(last.iter().map(f)))
    };
    s.push_str(&row("mean reward", &|m| m.reward_mean, 4));
    s.push_str(&row("reward std within groups", &|m| m.reward_std, 4));
    s.push_str(&row("KL to the reference (per token)", &|m| m.kl, 5));
    s.push_str(&row("response length (tokens)", &|m| m.response_tokens, 1));
    s.push_str(&row("clip fraction", &|m| m.clip_fraction, 4));
    s.push_str(&row("reward-model calls per step", &|m| m.rm_calls as f64, 1));
    s.push_str(&row("reward-model seconds per step", &|m| m.rm_seconds, 3));
    s.push_str(&row("seconds per step", &|m| m.step_seconds, 3));
    let calls: usize = h.iter().map(|m| m.rm_calls).sum();
    let rm: f64 = h.iter().map(|m| m.rm_seconds).sum();
    let gen: f64 = h.iter().map(|m| m.generate_seconds).sum();
    let train: f64 = h.iter().map(|m| m.train_seconds).sum();
    s.push_str(&format!(
        "\nTotals: {calls} reward-model calls in {rm:.1} s; sampling {gen:.1} s; updates {train:.1} s.\n\nPer-step figures are in `metrics.jsonl`, every sampled response with its reward in `samples.jsonl`, curves in `curves.png`.\n"
    ));
    s
}

/// Six panels, one per logged quantity, against the step.
pub fn plot_curves(history: &[GrpoStepMetrics], path: &Path) -> Result<()> {
    let perr = |m: String| RlError::Plot { path: path.to_path_buf(), message: m };
    if history.is_empty() {
        return Err(perr("no steps to plot".into()));
    }
    let text = gramrr_train::plot::ensure_font();
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(e.to_string()))?;
    let panels: [(&str, fn(&GrpoStepMetrics) -> f64); 6] = [
        ("mean reward", |m| m.reward_mean),
        ("KL to reference (per token)", |m| m.kl),
        ("response length (tokens)", |m| m.response_tokens),
        ("clip fraction", |m| m.clip_fraction),
        ("reward-model calls", |m| m.rm_calls as f64),
        ("reward-model seconds", |m| m.rm_seconds),
    ];
    let n = history.len();
    for (area, (title, f)) in root.split_evenly((2, 3)).iter().zip(panels) {
        let ys: Vec<f64> = history.iter().map(f).collect();
        let finite: Vec<f64> = ys.iter().copied().filter(|y| y.is_finite()).collect();
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() { (lo, if hi - lo < 1e-9 { lo + 1e-3 } else { hi }) } else { (0.0, 1.0) };
        let pad = (hi - lo) * 0.05;
        let mut b = ChartBuilder::on(area);
        b.margin(12);
        if text {
            b.caption(title, ("sans-serif", 18)).x_label_area_size(30).y_label_area_size(55);
        }
        let mut chart = b.build_cartesian_2d(1f64..(n.max(2) as f64), (lo - pad)..(hi + pad)).map_err(|e| perr(e.to_string()))?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(WHITE.mix(0.0));
        if text {
            mesh.x_desc("step").label_style(("sans-serif", 12));
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| perr(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(ys.iter().enumerate().map(|(i, &y)| ((i + 1) as f64, y)), BLUE.stroke_width(2)))
            .map_err(|e| perr(e.to_string()))?;
    }
    root.present().map_err(|e| perr(e.to_string()))?;
    Ok(())
}
