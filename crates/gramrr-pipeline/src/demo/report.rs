//! The demo's report: `report.json` (the schema below), `report.md` (tables a person reads)
//! and `accuracy.png` (test accuracy by stage).
//!
//! ```json
//! {"accuracy": {"vanilla_rm": 0.0, "gram_rr_initial": 0.0, "gram_rr_self_training": [0.0],
//!               "gram_rr_final": 0.0, "control_extra_steps": 0.0},
//!  "pseudo_labels": [{"iteration": 1, "n": 0, "kept": 0, "accuracy_all": 0.0, "accuracy_kept": 0.0}],
//!  "proof_selection": {"eq5": 0.0, "random": 0.0},
//!  "seconds": 0.0}
//! ```

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub vanilla_rm: f64,
    pub gram_rr_initial: f64,
    pub gram_rr_self_training: Vec<f64>,
    pub gram_rr_final: f64,
    pub control_extra_steps: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PseudoLabelReport {
    pub iteration: usize,
    /// Unlabeled pairs in the iteration's batch.
    pub n: usize,
    /// Pairs that passed every filter (vote, threshold, rules) and went into training.
    pub kept: usize,
    /// Accuracy of the majority-vote labels over all n pairs (no majority counts as wrong).
    pub accuracy_all: f64,
    /// Accuracy of the labels of the kept pairs.
    pub accuracy_kept: f64,
    /// Pairs above the confidence threshold, and their accuracy (before the rule filters).
    pub confident: usize,
    pub accuracy_confident: f64,
}

/// Eq. 5 against picking a sample at random, judged by whether the proof's stated computation
/// is correct (the domain can check it; the pipeline never does). Random picks are scored by
/// their expectation (the share of correct samples), so the baseline has no sampling noise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProofSelection {
    /// Percent correct of the Eq. 5-best of the k samples (selection alone, before the rules).
    pub eq5: f64,
    /// Percent correct of a random one of the k samples.
    pub random: f64,
    /// Pairs compared.
    pub pairs: usize,
    /// The same among the samples that passed the rule filters, which is the choice the
    /// pipeline makes (pairs with at least one passing sample).
    pub eq5_passing: f64,
    pub random_passing: f64,
    pub pairs_passing: usize,
}

/// What a reward model's test rationales get right, step by step (percent of test pairs): it
/// shows where a weak model fails, in the computation or in the comparison after it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RationaleQuality {
    /// The stage's name in `accuracy.png` and the tables.
    pub model: String,
    /// The worked steps and the stated result are right.
    pub computation_correct: f64,
    /// Both verdicts say `yes` exactly where the quote equals the model's own stated result.
    pub verdicts_consistent: f64,
    /// The final label is the response judged `yes` (exactly one `yes`).
    pub label_follows_verdicts: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub accuracy: Accuracy,
    pub pseudo_labels: Vec<PseudoLabelReport>,
    pub proof_selection: ProofSelection,
    /// Percent of held-out test questions the pretrained backbone works out right (greedy,
    /// prompt `Q: 63-15? `): how capable the stand-in for a pretrained LLM is.
    pub backbone_arithmetic: f64,
    /// Each reward model's test rationales, step by step.
    #[serde(default)]
    pub rationale_quality: Vec<RationaleQuality>,
    /// Wall time of the invocation that finished the run.
    pub seconds: f64,
    pub seed: u64,
    pub size: String,
    /// Sum of the recorded stage times (equal to the work done, even across resumes).
    pub stage_seconds: f64,
    pub stage_times: Vec<(String, f64)>,
    pub test_pairs: usize,
    pub targets: Vec<Target>,
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub met: bool,
    pub detail: String,
}

impl Report {
    /// The issue's targets, checked on the last self-training iteration (the compute-matched
    /// comparison) and stated with their numbers.
    pub fn check_targets(&mut self) {
        let a = &self.accuracy;
        let st = a.gram_rr_self_training.last().copied().unwrap_or(a.gram_rr_initial);
        let mut t = vec![
            Target {
                name: "self-training beats vanilla by ≥ 10 points".into(),
                met: st - a.vanilla_rm >= 10.0,
                detail: format!("{st:.1} vs {:.1} ({:+.1})", a.vanilla_rm, st - a.vanilla_rm),
            },
            Target {
                name: "self-training beats its initial model by ≥ 3 points".into(),
                met: st - a.gram_rr_initial >= 3.0,
                detail: format!("{st:.1} vs {:.1} ({:+.1})", a.gram_rr_initial, st - a.gram_rr_initial),
            },
            Target {
                name: "self-training beats the compute-matched control by ≥ 3 points".into(),
                met: st - a.control_extra_steps >= 3.0,
                detail: format!("{st:.1} vs {:.1} ({:+.1})", a.control_extra_steps, st - a.control_extra_steps),
            },
        ];
        for p in &self.pseudo_labels {
            t.push(Target {
                name: format!("denoising raises pseudo-label accuracy (iteration {})", p.iteration),
                met: p.accuracy_kept > p.accuracy_all,
                detail: format!("kept {:.1} vs all {:.1}", p.accuracy_kept, p.accuracy_all),
            });
        }
        t.push(Target {
            name: "Eq. 5 beats random selection".into(),
            met: self.proof_selection.eq5 > self.proof_selection.random,
            detail: format!("{:.2} vs {:.2}", self.proof_selection.eq5, self.proof_selection.random),
        });
        self.targets = t;
    }

    /// (stage label, accuracy) in the order they are drawn.
    pub fn stages(&self) -> Vec<(String, f64)> {
        let a = &self.accuracy;
        let mut v = vec![("vanilla RM".to_string(), a.vanilla_rm), ("GRAM-R² initial".to_string(), a.gram_rr_initial)];
        for (i, x) in a.gram_rr_self_training.iter().enumerate() {
            v.push((format!("self-training {}", i + 1), *x));
        }
        v.push(("GRAM-R² final".to_string(), a.gram_rr_final));
        v.push(("control (extra steps)".to_string(), a.control_extra_steps));
        v
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "# gramrr demo: GRAM-R² in miniature\n\nseed {}, size {}, {} held-out test pairs, {:.0} s wall time ({:.0} s of recorded stage work).\n\n",
            self.seed, self.size, self.test_pairs, self.seconds, self.stage_seconds
        ));
        s.push_str(&format!(
            "The pretrained backbone works out {:.1}% of the test questions right on its own (the skill the reward models build on).\n\n",
            self.backbone_arithmetic
        ));
        s.push_str("## Pairwise accuracy on the held-out test set\n\n| model | accuracy (%) |\n|---|---|\n");
        for (name, acc) in self.stages() {
            s.push_str(&format!("| {name} | {acc:.1} |\n"));
        }
        s.push_str("\n![accuracy by stage](accuracy.png)\n\n");
        if !self.rationale_quality.is_empty() {
            s.push_str("## The test rationales, step by step (% of test pairs)\n\n| model | computation right | verdicts match its own result | label follows the verdicts |\n|---|---|---|---|\n");
            for q in &self.rationale_quality {
                s.push_str(&format!(
                    "| {} | {:.1} | {:.1} | {:.1} |\n",
                    q.model, q.computation_correct, q.verdicts_consistent, q.label_follows_verdicts
                ));
            }
            s.push('\n');
        }
        s.push_str("## Pseudo-labels per self-training iteration\n\n");
        s.push_str("| iteration | pairs | above threshold | kept (after rules) | accuracy, all | accuracy, above threshold | accuracy, kept |\n|---|---|---|---|---|---|---|\n");
        for p in &self.pseudo_labels {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
                p.iteration, p.n, p.confident, p.kept, p.accuracy_all, p.accuracy_confident, p.accuracy_kept
            ));
        }
        let ps = &self.proof_selection;
        s.push_str(&format!(
            "\n## Proof selection (stage 2, labeled set)\n\nShare of chosen proofs whose stated computation is correct.\n\n| choice | Eq. 5 | random sample | pairs |\n|---|---|---|---|\n| among all k samples | {:.2} | {:.2} | {} |\n| among samples passing the rules (what the pipeline keeps) | {:.2} | {:.2} | {} |\n",
            ps.eq5, ps.random, ps.pairs, ps.eq5_passing, ps.random_passing, ps.pairs_passing
        ));
        s.push_str("\n## Targets\n\n");
        if self.size != "full" {
            s.push_str(&format!(
                "The targets are the full demo's (`gramrr demo` without `--quick`). At size {}, the backbone is pretrained for \
                 fewer steps and works out {:.1}% of the test sums right (about 100% at full size), so the accuracies here are \
                 no evidence for or against the method: this size shows that every stage runs and the report is complete.\n\n",
                self.size, self.backbone_arithmetic
            ));
        }
        s.push_str("| target | met | numbers |\n|---|---|---|\n");
        for t in &self.targets {
            s.push_str(&format!("| {} | {} | {} |\n", t.name, if t.met { "yes" } else { "**no**" }, t.detail));
        }
        s.push_str("\n## Stage times (s)\n\n| stage | seconds |\n|---|---|\n");
        for (n, t) in &self.stage_times {
            s.push_str(&format!("| {n} | {t:.1} |\n"));
        }
        s
    }
}

/// A bar chart of test accuracy by stage, with the vanilla RM as a dashed reference line.
pub fn plot_accuracy(report: &Report, path: &Path) -> Result<()> {
    plot_accuracy_seeds(std::slice::from_ref(report), path)
}

/// Splits a stage name into at most two lines of about `width` characters, at a space.
fn bar_label_lines(name: &str, width: usize) -> Vec<String> {
    if name.chars().count() <= width {
        return vec![name.to_string()];
    }
    let spaces: Vec<usize> = name.char_indices().filter(|(_, c)| *c == ' ').map(|(i, _)| i).collect();
    let mid = name.len() / 2;
    match spaces.iter().min_by_key(|&&i| i.abs_diff(mid)) {
        Some(&i) => vec![name[..i].to_string(), name[i + 1..].to_string()],
        None => vec![name.to_string()],
    }
}

/// Test accuracy by stage over one or several seeds' reports: bars at the mean, the stage names
/// whole under the bars, and with several seeds each seed as a dot and its spread (min to max) as
/// a whisker. The vanilla RM's mean is a dashed reference line.
pub fn plot_accuracy_seeds(reports: &[Report], path: &Path) -> Result<()> {
    let perr = |m: String| PipelineError::Plot { path: path.to_path_buf(), message: m };
    let first = reports.first().ok_or_else(|| perr("no reports to plot".into()))?;
    let names: Vec<String> = first.stages().into_iter().map(|s| s.0).collect();
    let mut per_stage: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for r in reports {
        let stages = r.stages();
        if stages.len() != names.len() {
            return Err(perr(format!("seed {} has {} stages, seed {} has {}", r.seed, stages.len(), first.seed, names.len())));
        }
        for (i, (_, acc)) in stages.into_iter().enumerate() {
            per_stage[i].push(acc);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let several = reports.len() > 1;
    let text = gramrr_train::plot::ensure_font();
    let root = BitMapBackend::new(path, (1100, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(e.to_string()))?;
    let lo = per_stage.iter().flatten().copied().fold(100.0f64, f64::min);
    let y0 = ((lo - 10.0) / 10.0).floor().clamp(0.0, 9.0) * 10.0;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        let seeds: Vec<String> = reports.iter().map(|r| r.seed.to_string()).collect();
        let caption = if several {
            format!("gramrr demo: pairwise accuracy on {} held-out pairs, mean of seeds {}", first.test_pairs, seeds.join(", "))
        } else {
            format!("gramrr demo: pairwise accuracy on {} held-out pairs (seed {})", first.test_pairs, first.seed)
        };
        // Room under the plot for two lines of stage names.
        builder.caption(caption, ("sans-serif", 22)).x_label_area_size(52).y_label_area_size(55);
    }
    let n = names.len();
    let mut chart = builder.build_cartesian_2d(0f64..n as f64, y0..100f64).map_err(|e| perr(e.to_string()))?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(0);
    if text {
        mesh.y_desc("accuracy (%)").label_style(("sans-serif", 14));
    } else {
        mesh.disable_y_axis().disable_x_axis();
    }
    mesh.draw().map_err(|e| perr(e.to_string()))?;
    let colour = |name: &str| -> RGBColor {
        if name.starts_with("vanilla") {
            RGBColor(150, 150, 150)
        } else if name.starts_with("control") {
            RGBColor(230, 150, 60)
        } else {
            RGBColor(60, 110, 200)
        }
    };
    chart
        .draw_series(names.iter().zip(&per_stage).enumerate().map(|(i, (name, accs))| {
            Rectangle::new([(i as f64 + 0.15, y0), (i as f64 + 0.85, mean(accs))], colour(name).filled())
        }))
        .map_err(|e| perr(e.to_string()))?;
    if several {
        let ink = RGBColor(30, 30, 30);
        for (i, accs) in per_stage.iter().enumerate() {
            let x = i as f64 + 0.5;
            let (min, max) = accs.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            chart
                .draw_series([
                    PathElement::new(vec![(x, min), (x, max)], ink.stroke_width(2)),
                    PathElement::new(vec![(x - 0.08, min), (x + 0.08, min)], ink.stroke_width(2)),
                    PathElement::new(vec![(x - 0.08, max), (x + 0.08, max)], ink.stroke_width(2)),
                ])
                .map_err(|e| perr(e.to_string()))?;
            // Seeds side by side around the whisker, so equal values stay visible.
            let k = accs.len() as f64;
            chart
                .draw_series(accs.iter().enumerate().map(|(j, &v)| {
                    let dx = 0.2 * (j as f64 - (k - 1.0) / 2.0) / k.max(1.0);
                    Circle::new((x + dx, v), 4, ink.filled())
                }))
                .map_err(|e| perr(e.to_string()))?;
        }
    }
    if text {
        let value_style = ("sans-serif", 15).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(per_stage.iter().enumerate().map(|(i, accs)| {
                let top = if several { accs.iter().copied().fold(f64::MIN, f64::max) } else { mean(accs) };
                let label = if several {
                    let m = mean(accs);
                    let sd = (accs.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (accs.len() - 1) as f64).sqrt();
                    format!("{m:.1} ± {sd:.1}")
                } else {
                    format!("{:.1}", mean(accs))
                };
                Text::new(label, (i as f64 + 0.5, top + 0.8), value_style.clone())
            }))
            .map_err(|e| perr(e.to_string()))?;
        // Stage names under their bars, centred, whole (wrapped onto two lines when long).
        let name_style = ("sans-serif", 14).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
        for (i, name) in names.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, y0));
            for (line_no, line) in bar_label_lines(name, 16).into_iter().enumerate() {
                root.draw(&Text::new(line, (px, py + 6 + 17 * line_no as i32), name_style.clone())).map_err(|e| perr(e.to_string()))?;
            }
        }
    }
    let v = mean(&per_stage[0]);
    chart
        .draw_series(DashedLineSeries::new([(0.0, v), (n as f64, v)], 6, 4, RGBColor(120, 120, 120).stroke_width(1)))
        .map_err(|e| perr(e.to_string()))?;
    root.present().map_err(|e| perr(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod plot_tests {
    use super::*;

    fn report(seed: u64, shift: f64) -> Report {
        Report {
            accuracy: Accuracy {
                vanilla_rm: 52.0 + shift,
                gram_rr_initial: 65.0 + shift,
                gram_rr_self_training: vec![71.0 + shift, 74.0 - shift],
                gram_rr_final: 72.0,
                control_extra_steps: 70.0 + shift,
            },
            seed,
            test_pairs: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn long_stage_names_wrap_at_a_space_and_stay_whole() {
        assert_eq!(bar_label_lines("vanilla RM", 16), vec!["vanilla RM"]);
        assert_eq!(bar_label_lines("control (extra steps)", 16), vec!["control", "(extra steps)"]);
        assert_eq!(bar_label_lines("self-training 12", 16), vec!["self-training 12"]);
        assert_eq!(bar_label_lines("proof-synthesised", 16), vec!["proof-synthesised"], "no space: kept on one line");
        for name in report(0, 0.0).stages().iter().map(|s| &s.0) {
            assert_eq!(bar_label_lines(name, 16).join(" "), *name, "nothing is cut");
        }
    }

    #[test]
    fn one_and_several_seeds_plot_and_mismatched_reports_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.png");
        plot_accuracy(&report(0, 0.0), &one).unwrap();
        let three = dir.path().join("three.png");
        plot_accuracy_seeds(&[report(0, 0.0), report(1, 3.0), report(2, -2.0)], &three).unwrap();
        for p in [&one, &three] {
            let bytes = std::fs::read(p).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{}", p.display());
        }
        if let Some(dir) = std::env::var_os("GRAMRR_KEEP_PLOTS") {
            std::fs::copy(&one, Path::new(&dir).join("demo_one_seed.png")).unwrap();
            std::fs::copy(&three, Path::new(&dir).join("demo_three_seeds.png")).unwrap();
        }
        let mut short = report(3, 0.0);
        short.accuracy.gram_rr_self_training.pop();
        let err = plot_accuracy_seeds(&[report(0, 0.0), short], &dir.path().join("x.png")).unwrap_err().to_string();
        assert!(err.contains("seed 3 has 5 stages, seed 0 has 6"), "{err}");
    }
}
