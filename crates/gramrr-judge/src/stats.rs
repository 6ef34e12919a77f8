//! Statistics over a set of verdicts: position bias, consistency, accuracy against gold labels.

use std::collections::BTreeMap;

use gramrr_data::Label;
use serde::{Deserialize, Serialize};

use crate::pairwise::{PairVerdict, Usage};

/// How much the judge prefers whichever response it is shown first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PositionBias {
    /// Judgments that picked a label.
    pub judgments: usize,
    /// Share of those that picked the response shown first; 0.5 is unbiased.
    pub first_rate: f64,
    /// `first_rate - 0.5`, in [-0.5, 0.5]; positive favours the first position.
    pub bias: f64,
    /// Mean P(first is better) over judgments that have a probability (`None` in reason mode).
    pub mean_p_first: Option<f64>,
    /// Verdicts judged in both orders.
    pub both_order_verdicts: usize,
    /// Share of those whose two orders disagreed.
    pub inconsistent_rate: f64,
}

impl PositionBias {
    pub fn from_verdicts<'a>(verdicts: impl IntoIterator<Item = &'a PairVerdict>) -> Self {
        let (mut n, mut first, mut p_sum, mut p_n, mut both, mut inconsistent) = (0usize, 0usize, 0.0, 0usize, 0usize, 0usize);
        for v in verdicts {
            for j in &v.judgments {
                if let Some(f) = j.chose_first() {
                    n += 1;
                    first += f as usize;
                }
                if let Some(p) = j.p_first() {
                    p_sum += p;
                    p_n += 1;
                }
            }
            if let Some(c) = v.consistent {
                both += 1;
                inconsistent += (!c) as usize;
            }
        }
        let first_rate = if n > 0 { first as f64 / n as f64 } else { 0.5 };
        PositionBias {
            judgments: n,
            first_rate,
            bias: first_rate - 0.5,
            mean_p_first: (p_n > 0).then(|| p_sum / p_n as f64),
            both_order_verdicts: both,
            inconsistent_rate: if both > 0 { inconsistent as f64 / both as f64 } else { 0.0 },
        }
    }
}

/// A report over a set of verdicts, optionally against gold labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeSummary {
    pub pairs: usize,
    /// Verdicts with a label.
    pub decided: usize,
    /// Pairs with a gold A/B label.
    pub gold: usize,
    /// Correct / gold; an undecided verdict counts as wrong.
    pub accuracy: Option<f64>,
    /// Correct / gold with an undecided verdict counted as half right.
    pub accuracy_ties_half: Option<f64>,
    /// Failed judgments by parse-failure kind.
    pub failures: BTreeMap<String, usize>,
    pub position_bias: PositionBias,
    pub usage: Usage,
}

impl JudgeSummary {
    /// `gold[i]` is the label of `verdicts[i]`, when known; ties count as unknown.
    pub fn new(verdicts: &[PairVerdict], gold: &[Option<Label>]) -> Self {
        let mut s = JudgeSummary { pairs: verdicts.len(), ..Default::default() };
        let (mut correct, mut half) = (0usize, 0usize);
        for (i, v) in verdicts.iter().enumerate() {
            s.decided += v.label.is_some() as usize;
            s.usage += v.usage;
            for j in &v.judgments {
                if let Some(f) = &j.failure {
                    *s.failures.entry(f.kind().to_string()).or_default() += 1;
                }
            }
            if let Some(g @ (Label::A | Label::B)) = gold.get(i).copied().flatten() {
                s.gold += 1;
                match v.label {
                    Some(l) if l == g => correct += 1,
                    None => half += 1,
                    _ => {}
                }
            }
        }
        if s.gold > 0 {
            s.accuracy = Some(correct as f64 / s.gold as f64);
            s.accuracy_ties_half = Some((correct as f64 + 0.5 * half as f64) / s.gold as f64);
        }
        s.position_bias = PositionBias::from_verdicts(verdicts);
        s
    }
}
