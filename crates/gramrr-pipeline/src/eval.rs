//! Pairwise accuracy of a reward model on labeled pairs: one greedy rationale per pair (judged by
//! gramrr-judge, in one order placed from the pair's content), the label parsed from it. An output that names no label counts as wrong (and is counted by its
//! failure kind), so formatting failures cannot hide.

use std::collections::BTreeMap;

use gramrr_data::{Label, PreferencePair};
use gramrr_judge::{judge_pairs, JudgeConfig, JudgeMode, PairInput};
use gramrr_model::backend::{Backend, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::data::preference;
use crate::error::Result;
use crate::format::PairFormat;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub pairs: usize,
    pub correct: usize,
    /// Percent.
    pub accuracy: f64,
    /// Outputs naming no label, by failure kind.
    pub failures: BTreeMap<String, usize>,
    /// How often A was predicted (position bias shows here).
    pub predicted_a: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub label: Option<Label>,
    pub truth: Label,
    pub text: String,
    /// The pair was shown as (B, A): the rationale's "A" is `response_b`. `label` and `truth`
    /// are in the pair's own orientation either way.
    #[serde(default)]
    pub swapped: bool,
}

/// Evaluates `pairs` (those with an A/B label) in chunks of `chunk`, calling `progress` with the
/// number done.
pub fn evaluate(
    backend: &dyn Backend,
    format: &dyn PairFormat,
    pairs: &[PreferencePair],
    max_new_tokens: usize,
    chunk: usize,
    mut progress: impl FnMut(usize),
) -> Result<(EvalSummary, Vec<Prediction>)> {
    let labeled: Vec<(&PreferencePair, Label)> = pairs.iter().filter_map(|p| preference(p).map(|l| (p, l))).collect();
    // One greedy vote in one order placed from the pair's content: gramrr-judge's verdict, as
    // `gramrr judge --one-order` gives it.
    let template = format.judge_template();
    let config = JudgeConfig {
        mode: JudgeMode::Reason,
        both_orders: false,
        votes: 1,
        early_stop: false,
        sampling: SamplingParams { max_new_tokens, temperature: 0.0, ..Default::default() },
    };
    let mut preds = Vec::with_capacity(labeled.len());
    let mut s = EvalSummary { pairs: labeled.len(), ..Default::default() };
    for part in labeled.chunks(chunk.max(1)) {
        let inputs: Vec<PairInput> = part.iter().map(|(p, _)| PairInput::from_pair(p)).collect();
        let verdicts = judge_pairs(backend, &template, &config, &inputs)?;
        for ((p, truth), v) in part.iter().zip(verdicts) {
            let j = v.judgments.into_iter().next().expect("one judgment per pair");
            match (j.label, &j.failure) {
                (Some(l), _) => {
                    s.correct += (l == *truth) as usize;
                    s.predicted_a += (l == Label::A) as usize;
                }
                (None, f) => *s.failures.entry(f.as_ref().map_or("no label", |f| f.kind()).to_string()).or_default() += 1,
            }
            preds.push(Prediction {
                id: p.id.clone(),
                label: j.label,
                truth: *truth,
                text: j.rationale.unwrap_or_default(),
                swapped: j.swapped,
            });
        }
        progress(preds.len());
    }
    s.accuracy = if s.pairs == 0 { 0.0 } else { 100.0 * s.correct as f64 / s.pairs as f64 };
    Ok((s, preds))
}
