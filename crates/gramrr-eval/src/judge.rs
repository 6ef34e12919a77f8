//! Where decisions come from. Two kinds of source exist, and every benchmark takes either:
//!
//! - a [`ResponseScorer`] gives one scalar per response (a reward model, a scores file, a
//!   baseline). Its decision on a pair is A only when `score_a > score_b`, otherwise B — the
//!   upstream rule, so an exact tie is wrong for the response listed first;
//! - a [`PairJudge`] sees two responses and decides (a generative judge).
//!
//! A live model is wired by implementing [`PairJudge`] (or [`ResponseScorer`]) and passing it
//! as a [`Source`].

use gramrr_data::{Conversation, Label, PreferencePair};
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// One judge decision on one pair, in the order the pair was given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairDecision {
    /// `A` or `B`; `Tie` when the judge said the two are equal; `None` when there is no verdict
    /// (a failure). Benchmarks score `Tie` and `None` the same way (as not correct), but the
    /// per-item file keeps them apart.
    pub decision: Option<Label>,
    /// The judge's probability that A is better, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_a: Option<f64>,
    /// Scalar scores behind the decision, when a scorer made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_a: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_b: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// Why there is no decision (unparsable verdict, generation cut off...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The evaluator showed the pair to the judge in the other order (to cancel position bias)
    /// and flipped the decision back; set by the evaluator, not by judges.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub swapped: bool,
}

impl PairDecision {
    /// The upstream reward-model rule: A only when A scores strictly higher.
    pub fn from_scores(score_a: f64, score_b: f64) -> PairDecision {
        PairDecision {
            decision: Some(if score_a > score_b { Label::A } else { Label::B }),
            score_a: Some(score_a),
            score_b: Some(score_b),
            ..Default::default()
        }
    }

    /// The same decision, described for the pair with A and B swapped.
    pub fn flipped(&self) -> PairDecision {
        PairDecision {
            decision: self.decision.map(Label::flipped),
            p_a: self.p_a.map(|p| 1.0 - p),
            score_a: self.score_b,
            score_b: self.score_a,
            swapped: !self.swapped,
            ..self.clone()
        }
    }

    pub fn failed(why: impl Into<String>) -> PairDecision {
        PairDecision { failure: Some(why.into()), ..Default::default() }
    }
}

/// A pairwise judge. Implementations get every pair that can run together and decide how to
/// batch them; output `i` answers pair `i`. The pairs carry no label.
pub trait PairJudge {
    /// A short name for reports (model directory, judge settings).
    fn name(&self) -> String;
    fn judge(&self, pairs: &[PreferencePair]) -> Result<Vec<PairDecision>, EvalError>;
}

/// One response to score.
#[derive(Debug, Clone, Copy)]
pub struct ScoreQuery<'a> {
    /// The benchmark item id (the key of scores files).
    pub item_id: &'a str,
    /// The response's name within its item (`chosen`, `rejected[2]`, `response_7`...).
    pub key: &'a str,
    /// The response's 0-based position within its item.
    pub index: usize,
    pub prompt: &'a Conversation,
    pub response: &'a str,
}

/// A scalar scorer: one number per response, higher is better.
pub trait ResponseScorer {
    fn name(&self) -> String;
    fn score(&self, queries: &[ScoreQuery<'_>]) -> Result<Vec<f64>, EvalError>;
}

/// What an evaluation asks for decisions.
pub enum Source {
    Scalar(Box<dyn ResponseScorer>),
    Judge(Box<dyn PairJudge>),
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::Scalar(s) => s.name(),
            Source::Judge(j) => j.name(),
        }
    }
}
