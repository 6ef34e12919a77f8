//! Proof synthesis with Eq. 5 selection (stage 2, and the proofs of pseudo-labelled pairs in
//! stage 4).
//!
//! For each pair and its label, k proofs are sampled from π_ψ in one batched call, and each is
//! scored with `Score = -log π_ψ(ẑ | s, l) / log π_ψ(ẑ)`: both terms are teacher-forced sums of
//! token log-probabilities, the second conditioned on the format's minimal context-free prompt.
//! The score lies in (-∞, 0]; higher is better: a proof that is likely given the pair but unlikely
//! on its own is specific to the pair, generic boilerplate scores low. The rule filters run on
//! every sample, and the best-scoring sample that passes them is kept. Every sample, its two
//! log-probabilities, its score and its rejection reason are recorded.

use std::collections::BTreeMap;

use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::{Backend, FinishReason, GenerateRequest, SamplingParams, ScoreRequest};
use gramrr_judge::seed::mix;
use gramrr_judge::PairInput;
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};
use crate::format::{PairFormat, RuleRejection};
use crate::store::Keyed;

/// Eq. 5. `None` when the context-free log-probability is not negative (an empty proof, or one
/// the model finds certain with no context), where the ratio means nothing.
pub fn eq5_score(lp_ctx: f64, lp_free: f64) -> Option<f64> {
    (lp_ctx.is_finite() && lp_free.is_finite() && lp_free < 0.0).then(|| -lp_ctx / lp_free)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProofSample {
    pub text: String,
    pub finish: FinishReason,
    /// log π_ψ(ẑ | s, l)
    pub lp_ctx: f64,
    /// log π_ψ(ẑ | context-free prompt)
    pub lp_free: f64,
    /// Eq. 5; absent when undefined.
    pub score: Option<f64>,
    /// Why the rule filters dropped it; absent when it passed.
    pub rejection: Option<RuleRejection>,
}

/// One pair's synthesis: every sample, and which one was selected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthItem {
    pub id: String,
    pub index: usize,
    pub label: Label,
    pub samples: Vec<ProofSample>,
    /// Index of the kept sample; absent when no sample passed the rules.
    pub selected: Option<usize>,
    /// The kept proof turned into a reward-model rationale.
    pub rationale: Option<String>,
}

impl Keyed for SynthItem {
    fn id(&self) -> &str {
        &self.id
    }
    fn index(&self) -> usize {
        self.index
    }
}

/// The best-scoring sample among those that passed the rules (the first on ties).
pub fn select_best(samples: &[ProofSample]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in samples.iter().enumerate() {
        if s.rejection.is_some() {
            continue;
        }
        let Some(score) = s.score else { continue };
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// One pair to prove: its position in the stage input, the pair, the label to prove.
pub struct ProofTask<'a> {
    pub index: usize,
    pub pair: &'a PreferencePair,
    pub label: Label,
}

/// Samples `k` proofs per task, scores them (Eq. 5), filters them and selects the best.
pub fn synthesize(
    backend: &dyn Backend,
    format: &dyn PairFormat,
    tasks: &[ProofTask],
    k: usize,
    params: &SamplingParams,
) -> Result<Vec<SynthItem>> {
    let ferr = |e: crate::format::FormatError| PipelineError::Format { format: format.name().into(), message: e.to_string() };
    let prompts = tasks.iter().map(|t| format.prover_prompt(t.pair, t.label).map_err(ferr)).collect::<Result<Vec<_>>>()?;
    let mut gen = Vec::with_capacity(tasks.len() * k);
    for (t, p) in tasks.iter().zip(&prompts) {
        let key = PairInput::from_pair(t.pair).key();
        for j in 0..k {
            // Seeded from the pair's content and the label to prove, with gramrr-judge's hash: the
            // same pair gets the same proofs in any chunk, shard or run.
            gen.push(GenerateRequest { prompt: p.clone(), seed_offset: mix(&[key, t.label as u64, j as u64]) });
        }
    }
    let outs = backend.generate(&gen, params)?;
    let free = format.context_free_prompt();
    let mut score_reqs = Vec::with_capacity(outs.len() * 2);
    for (i, o) in outs.iter().enumerate() {
        score_reqs.push(ScoreRequest { prompt: prompts[i / k].clone(), completion: o.text.clone() });
        score_reqs.push(ScoreRequest { prompt: free.clone(), completion: o.text.clone() });
    }
    let scores = backend.score(&score_reqs)?;
    let mut items = Vec::with_capacity(tasks.len());
    for (ti, t) in tasks.iter().enumerate() {
        let samples: Vec<ProofSample> = (0..k)
            .map(|j| {
                let i = ti * k + j;
                let o = &outs[i];
                let (lp_ctx, lp_free) = (scores[2 * i].logprob, scores[2 * i + 1].logprob);
                let rejection = if o.finish_reason == FinishReason::Length {
                    Some(RuleRejection::new("unfinished", "cut at max_new_tokens before the end of the proof"))
                } else {
                    format.check_proof(t.pair, &o.text, t.label).err()
                };
                ProofSample { text: o.text.clone(), finish: o.finish_reason, lp_ctx, lp_free, score: eq5_score(lp_ctx, lp_free), rejection }
            })
            .collect();
        let selected = select_best(&samples);
        let rationale = match selected {
            None => None,
            Some(s) => Some(format.proof_to_rationale(&samples[s].text).map_err(ferr)?.0),
        };
        items.push(SynthItem { id: t.pair.id.clone(), index: t.index, label: t.label, samples, selected, rationale });
    }
    Ok(items)
}

/// Counts over a synthesis: pairs, pairs with a kept proof, samples and rejections by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SynthStats {
    pub pairs: usize,
    pub kept: usize,
    pub samples: usize,
    pub samples_passed: usize,
    pub rejected: BTreeMap<String, usize>,
    /// Mean Eq. 5 score of the kept proofs.
    pub mean_selected_score: Option<f64>,
}

pub fn synth_stats(items: &[SynthItem]) -> SynthStats {
    let mut s = SynthStats { pairs: items.len(), ..Default::default() };
    let mut score_sum = 0.0;
    for it in items {
        for smp in &it.samples {
            s.samples += 1;
            match &smp.rejection {
                None => s.samples_passed += 1,
                Some(r) => *s.rejected.entry(r.reason.clone()).or_default() += 1,
            }
        }
        if let Some(i) = it.selected {
            s.kept += 1;
            score_sum += it.samples[i].score.unwrap_or(0.0);
        }
    }
    s.mean_selected_score = (s.kept > 0).then(|| score_sum / s.kept as f64);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq5_prefers_proofs_likely_in_context_and_unlikely_alone() {
        // Equal context likelihood: the one less likely on its own (more specific) wins.
        assert!(eq5_score(-2.0, -20.0).unwrap() > eq5_score(-2.0, -4.0).unwrap());
        // Equal context-free likelihood: the one more likely in context wins.
        assert!(eq5_score(-1.0, -10.0).unwrap() > eq5_score(-5.0, -10.0).unwrap());
        assert_eq!(eq5_score(-3.0, -12.0), Some(-0.25));
        assert_eq!(eq5_score(0.0, -3.0), Some(0.0));
        assert!(eq5_score(-1.0, 0.0).is_none());
        assert!(eq5_score(f64::NEG_INFINITY, -1.0).is_none());
    }

    fn sample(score: Option<f64>, rejected: bool) -> ProofSample {
        ProofSample {
            text: String::new(),
            finish: FinishReason::Stop,
            lp_ctx: 0.0,
            lp_free: 0.0,
            score,
            rejection: rejected.then(|| RuleRejection::new("structure", "x")),
        }
    }

    #[test]
    fn selection_skips_rejected_and_unscored_samples() {
        let s = vec![sample(Some(-0.1), true), sample(Some(-0.5), false), sample(None, false), sample(Some(-0.3), false)];
        assert_eq!(select_best(&s), Some(3));
        assert_eq!(select_best(&[sample(Some(-0.1), true)]), None);
        assert_eq!(select_best(&[sample(Some(-0.2), false), sample(Some(-0.2), false)]), Some(0));
    }
}
