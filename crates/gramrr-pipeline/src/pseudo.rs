//! Pseudo-labelling with the first two denoising steps of the paper: majority vote over v
//! sampled judgments, then a confidence threshold on the label-token probability.
//!
//! Each vote is a rationale sampled from π_φ by gramrr-judge. Its label is parsed from the text;
//! its probability is read by appending the rationale up to the answer marker, then the answer
//! prefix, to the judge prompt and taking the softmax of the next token over {A, B}. A pair's
//! label is the majority of the parsed votes (a tie, or no parsed vote, drops the pair); its
//! confidence is the mean, over the votes that reached an answer, of the majority label's
//! probability. Pairs below the threshold are dropped.

use gramrr_data::{Label, PreferencePair};
use gramrr_judge::{judge_pairs, JudgeConfig, JudgeMode, PairInput};
use gramrr_model::backend::{Backend, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::format::PairFormat;
use crate::store::Keyed;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub text: String,
    /// The parsed label; absent when the text names none.
    pub label: Option<Label>,
    /// Why no label could be parsed (a `ParseFailure` kind).
    pub failure: Option<String>,
    /// Softmax probability of A over {A, B} at the answer position; absent when the text has
    /// no answer marker.
    pub p_a: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoItem {
    pub id: String,
    pub index: usize,
    pub votes: Vec<Vote>,
    pub majority: Option<Label>,
    pub confidence: Option<f64>,
    /// Passed the vote and the threshold.
    pub kept: bool,
    /// "no_vote", "tie", "no_probability" or "below_threshold".
    pub dropped: Option<String>,
}

impl Keyed for PseudoItem {
    fn id(&self) -> &str {
        &self.id
    }
    fn index(&self) -> usize {
        self.index
    }
}

/// The majority of the parsed votes, `Err(reason)` when there is none.
pub fn majority(votes: &[Vote]) -> std::result::Result<Label, &'static str> {
    let a = votes.iter().filter(|v| v.label == Some(Label::A)).count();
    let b = votes.iter().filter(|v| v.label == Some(Label::B)).count();
    match (a, b) {
        (0, 0) => Err("no_vote"),
        _ if a > b => Ok(Label::A),
        _ if b > a => Ok(Label::B),
        _ => Err("tie"),
    }
}

/// Mean probability of `label` over the votes that have one.
pub fn confidence(votes: &[Vote], label: Label) -> Option<f64> {
    let ps: Vec<f64> = votes.iter().filter_map(|v| v.p_a).map(|p| if label == Label::A { p } else { 1.0 - p }).collect();
    (!ps.is_empty()).then(|| ps.iter().sum::<f64>() / ps.len() as f64)
}

/// Decides a pair from its votes.
pub fn decide(id: String, index: usize, votes: Vec<Vote>, threshold: f64) -> PseudoItem {
    let (majority, confidence, dropped) = match majority(&votes) {
        Err(r) => (None, None, Some(r.to_string())),
        Ok(l) => match confidence(&votes, l) {
            None => (Some(l), None, Some("no_probability".to_string())),
            Some(c) if c < threshold => (Some(l), Some(c), Some("below_threshold".to_string())),
            Some(c) => (Some(l), Some(c), None),
        },
    };
    PseudoItem { id, index, votes, majority, confidence, kept: dropped.is_none(), dropped }
}

/// Labels `pairs` (with their positions in the stage input) by v sampled votes each.
///
/// The votes are judged by gramrr-judge (`prob-after-reason`, one order placed from the pair's
/// content, v votes, no early stop), the same code and the same content-derived seeds as
/// `gramrr judge --mode prob-after-reason --one-order --votes v` and the server; this function
/// only applies the paper's denoising (majority, then the confidence threshold) to them.
pub fn pseudo_label(
    backend: &dyn Backend,
    format: &dyn PairFormat,
    pairs: &[(usize, &PreferencePair)],
    votes: usize,
    params: &SamplingParams,
    threshold: f64,
) -> Result<Vec<PseudoItem>> {
    let template = format.judge_template();
    let config = JudgeConfig {
        mode: JudgeMode::ProbAfterReason,
        both_orders: false,
        votes,
        early_stop: false,
        sampling: params.clone(),
    };
    let inputs: Vec<PairInput> = pairs.iter().map(|(_, p)| PairInput::from_pair(p)).collect();
    let verdicts = judge_pairs(backend, &template, &config, &inputs)?;
    let mut items = Vec::with_capacity(pairs.len());
    for ((index, p), verdict) in pairs.iter().zip(verdicts) {
        let vs: Vec<Vote> = verdict
            .judgments
            .into_iter()
            .map(|j| {
                let text = j.rationale.unwrap_or_default();
                // Confidence is read only where the rationale reached its answer: a probability
                // forced after an unfinished rationale says little about the model's verdict.
                let answered = text.contains(template.answer_marker.as_str());
                Vote {
                    label: j.label,
                    failure: j.failure.map(|f| f.kind().to_string()),
                    p_a: if answered { j.p_a } else { None },
                    text,
                }
            })
            .collect();
        items.push(decide(p.id.clone(), *index, vs, threshold));
    }
    Ok(items)
}

/// Counts per filter for the iteration log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PseudoStats {
    pub pairs: usize,
    /// Pairs with a majority label.
    pub voted: usize,
    /// Pairs at or above the threshold.
    pub confident: usize,
    pub dropped: std::collections::BTreeMap<String, usize>,
    pub vote_failures: std::collections::BTreeMap<String, usize>,
}

pub fn pseudo_stats(items: &[PseudoItem]) -> PseudoStats {
    let mut s = PseudoStats { pairs: items.len(), ..Default::default() };
    for it in items {
        s.voted += it.majority.is_some() as usize;
        s.confident += it.kept as usize;
        if let Some(d) = &it.dropped {
            *s.dropped.entry(d.clone()).or_default() += 1;
        }
        for v in &it.votes {
            if let Some(f) = &v.failure {
                *s.vote_failures.entry(f.clone()).or_default() += 1;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(label: Option<Label>, p_a: Option<f64>) -> Vote {
        Vote { text: String::new(), label, failure: None, p_a }
    }

    #[test]
    fn majority_confidence_and_threshold() {
        let votes = vec![v(Some(Label::B), Some(0.1)), v(Some(Label::B), Some(0.2)), v(Some(Label::A), Some(0.9))];
        let it = decide("x".into(), 0, votes.clone(), 0.5);
        assert_eq!(it.majority, Some(Label::B));
        assert!((it.confidence.unwrap() - (0.9 + 0.8 + 0.1) / 3.0).abs() < 1e-12);
        assert!(it.kept);
        let it = decide("x".into(), 0, votes, 0.7);
        assert!(!it.kept);
        assert_eq!(it.dropped.as_deref(), Some("below_threshold"));
        let it = decide("x".into(), 0, vec![v(Some(Label::A), None), v(Some(Label::B), None)], 0.5);
        assert_eq!(it.dropped.as_deref(), Some("tie"));
        let it = decide("x".into(), 0, vec![v(None, Some(0.5))], 0.5);
        assert_eq!(it.dropped.as_deref(), Some("no_vote"));
        let it = decide("x".into(), 0, vec![v(Some(Label::A), None)], 0.5);
        assert_eq!(it.dropped.as_deref(), Some("no_probability"));
    }
}
