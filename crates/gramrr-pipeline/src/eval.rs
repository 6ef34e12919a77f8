//! Pairwise accuracy of a reward model on labeled pairs: one greedy rationale per pair, the
//! label parsed from it. An output that names no label counts as wrong (and is counted by its
//! failure kind), so formatting failures cannot hide.

use std::collections::BTreeMap;

use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::{Backend, GenerateRequest, SamplingParams};
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
    let params = SamplingParams { max_new_tokens, temperature: 0.0, ..Default::default() };
    let mut preds = Vec::with_capacity(labeled.len());
    let mut s = EvalSummary { pairs: labeled.len(), ..Default::default() };
    for part in labeled.chunks(chunk.max(1)) {
        let reqs: Vec<GenerateRequest> =
            part.iter().enumerate().map(|(i, (p, _))| GenerateRequest { prompt: format.judge_prompt(p), seed_offset: i as u64 }).collect();
        let outs = backend.generate(&reqs, &params)?;
        for ((p, truth), o) in part.iter().zip(outs) {
            let parsed = format.parse_verdict(&o.text);
            match &parsed {
                Ok(l) => {
                    s.correct += (*l == *truth) as usize;
                    s.predicted_a += (*l == Label::A) as usize;
                }
                Err(f) => *s.failures.entry(f.kind().to_string()).or_default() += 1,
            }
            preds.push(Prediction { id: p.id.clone(), label: parsed.ok(), truth: *truth, text: o.text });
        }
        progress(preds.len());
    }
    s.accuracy = if s.pairs == 0 { 0.0 } else { 100.0 * s.correct as f64 / s.pairs as f64 };
    Ok((s, preds))
}
