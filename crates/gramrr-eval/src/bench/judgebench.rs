//! JudgeBench (ScalerLab/JudgeBench, utils/metrics.py `compute_final_metrics`, run_judge.py).
//!
//! - Single game (the mode for reward models): a pair is correct when the decision on (A, B)
//!   equals the label. A reward model decides A only when `score_A > score_B`, so a tie goes to B.
//! - Double game (the default for judges): the pair is judged as (A, B) and as (B, A); the second
//!   decision is flipped back. Each scores +1 when it equals the label, −1 when it equals the
//!   opposite, 0 for a tie or no verdict; the pair is correct when the sum is positive. So an
//!   inconsistent pair, or one with two ties, is wrong.
//! - Categories come from the `source` prefix; overall is pooled over pairs.

use std::str::FromStr;

use gramrr_data::formats::JudgeBenchOutput;
use gramrr_data::{Label, PreferencePair};
use serde_json::{Map, Value};

use super::{evaluate, mean_bool, Bench, Report};
use crate::bootstrap::pct;
use crate::judge::{PairDecision, Source};
use crate::run::{decide, Comparison, Decided, EvalConfig, ItemOutcome, Response, Task};
use crate::EvalError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    Double,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Double => "double",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "single" => Ok(Mode::Single),
            "double" => Ok(Mode::Double),
            _ => Err(format!("unknown mode {s:?}; expected single or double")),
        }
    }
}

/// Upstream's source prefixes and the category each reports.
const CATEGORIES: [(&str, &str); 4] = [
    ("mmlu-pro", "knowledge"),
    ("livebench-reasoning", "reasoning"),
    ("livebench-math", "math"),
    ("livecodebench", "coding"),
];

pub fn category(source: &str) -> Option<&'static str> {
    CATEGORIES.iter().find(|(p, _)| source.starts_with(p)).map(|(_, c)| *c)
}

/// Two responses (`A`, `B`); the (A, B) comparison, and (B, A) in double mode. The expected
/// label of (B, A) is the pair's label flipped.
pub fn tasks(pairs: &[PreferencePair], mode: Mode) -> Result<Vec<Task>, EvalError> {
    pairs
        .iter()
        .map(|p| {
            let label = match p.label {
                Some(l @ (Label::A | Label::B)) => l,
                _ => return Err(EvalError::Invalid(format!("JudgeBench pair {:?} has no A/B label", p.id))),
            };
            let source = p.metadata.get("source").and_then(Value::as_str).unwrap_or("");
            let mut comparisons = vec![Comparison { a: 0, b: 1, expected: label, shuffle: false }];
            if mode == Mode::Double {
                comparisons.push(Comparison { a: 1, b: 0, expected: label.flipped(), shuffle: false });
            }
            Ok(Task {
                id: p.id.clone(),
                group: category(source).unwrap_or("other").to_string(),
                prompt: p.prompt.clone(),
                responses: vec![
                    Response { key: "A".into(), text: p.response_a.clone() },
                    Response { key: "B".into(), text: p.response_b.clone() },
                ],
                comparisons,
            })
        })
        .collect()
}

pub struct JudgeBench {
    pub mode: Mode,
}

pub struct Stat {
    category: String,
    correct: bool,
    /// The double-game sum (−2..=2); the single-game ±1/0.
    score: i32,
}

impl Bench for JudgeBench {
    type Stat = Stat;
    fn name(&self) -> &'static str {
        "judgebench"
    }
    fn settings(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("mode".into(), self.mode.as_str().into());
        m
    }
    fn stat(&self, task: &Task, o: &ItemOutcome) -> Stat {
        // +1 for the expected verdict, −1 for its opposite, 0 for a tie or none.
        let vote = |k: usize| -> i32 {
            let expected = task.comparisons[k].expected;
            match o.decisions.get(k).and_then(|d| d.d.decision) {
                Some(d) if d == expected => 1,
                Some(d) if d == expected.flipped() && d != Label::Tie => -1,
                _ => 0,
            }
        };
        let score = match self.mode {
            Mode::Single => vote(0),
            Mode::Double => vote(0) + vote(1),
        };
        Stat { category: task.group.clone(), correct: score > 0, score }
    }
    fn summary(&self, s: &Stat) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("category".into(), s.category.clone().into());
        m.insert("correct".into(), s.correct.into());
        m.insert("score".into(), s.score.into());
        m
    }
    fn metrics(&self, stats: &[&Stat]) -> Map<String, Value> {
        let mut cats = Map::new();
        for (_, c) in CATEGORIES {
            if let Some(acc) = mean_bool(stats.iter().filter(|s| s.category == c).map(|s| &s.correct)) {
                cats.insert(c.into(), pct(acc).into());
            }
        }
        let mut m = Map::new();
        m.insert("benchmark".into(), "judgebench".into());
        m.insert("mode".into(), self.mode.as_str().into());
        m.insert("n".into(), stats.len().into());
        m.insert("overall".into(), pct(mean_bool(stats.iter().map(|s| &s.correct)).unwrap_or(0.0)).into());
        m.insert("categories".into(), Value::Object(cats));
        // Pairs judged both ways whose two verdicts cancel or are both ties: upstream's "ties".
        if self.mode == Mode::Double {
            m.insert("ties".into(), stats.iter().filter(|s| s.score == 0).count().into());
        }
        m
    }
}

/// Scores JudgeBench pairs with a source. Scalar sources score A and B once; both orders
/// follow from the same two numbers.
pub fn eval_judgebench(
    pairs: &[PreferencePair],
    source: &Source,
    mode: Mode,
    cfg: &EvalConfig,
) -> Result<Report, EvalError> {
    let tasks = tasks(pairs, mode)?;
    evaluate(&JudgeBench { mode }, &tasks, &source.name(), cfg, &mut |chunk| decide(chunk, source, cfg.seed))
}

/// The mode a judge-output file supports by default: double when every pair was judged in both
/// orders.
pub fn default_mode(outputs: &[JudgeBenchOutput]) -> Mode {
    if !outputs.is_empty() && outputs.iter().all(|o| o.judgments.len() >= 2) {
        Mode::Double
    } else {
        Mode::Single
    }
}

/// Re-scores JudgeBench's published judge outputs: the recorded decisions are the source.
pub fn eval_judgebench_outputs(
    outputs: &[JudgeBenchOutput],
    mode: Option<Mode>,
    cfg: &EvalConfig,
) -> Result<Report, EvalError> {
    let mode = mode.unwrap_or_else(|| default_mode(outputs));
    let pairs: Vec<PreferencePair> = outputs.iter().map(|o| o.pair.clone()).collect();
    let tasks = tasks(&pairs, mode)?;
    let by_id: std::collections::HashMap<&str, &JudgeBenchOutput> =
        outputs.iter().map(|o| (o.pair.id.as_str(), o)).collect();
    let judge = outputs
        .iter()
        .find_map(|o| o.judgments.iter().flatten().find_map(|j| j.judge_model.clone()))
        .unwrap_or_else(|| "unknown".into());
    let name = match outputs.first().and_then(|o| o.judge_name.clone()) {
        Some(n) => format!("judgments:{n}/{judge}"),
        None => format!("judgments:{judge}"),
    };
    let mut compute = |chunk: &[&Task]| -> Result<Vec<ItemOutcome>, EvalError> {
        Ok(chunk
            .iter()
            .map(|t| {
                let out = by_id[t.id.as_str()];
                let decisions = t
                    .comparisons
                    .iter()
                    .enumerate()
                    .map(|(k, c)| {
                        let d = match out.judgments.get(k).cloned().flatten() {
                            None => PairDecision::failed("no judgment recorded"),
                            Some(j) => PairDecision {
                                decision: j.decision,
                                score_a: j.scores.as_ref().and_then(|s| s.first().copied()),
                                score_b: j.scores.as_ref().and_then(|s| s.get(1).copied()),
                                rationale: j.response,
                                failure: j
                                    .decision
                                    .is_none()
                                    .then(|| format!("no verdict (decision {:?})", j.raw_decision)),
                                ..Default::default()
                            },
                        };
                        Decided { a: t.key(c.a).into(), b: t.key(c.b).into(), d }
                    })
                    .collect();
                ItemOutcome { id: t.id.clone(), decisions, scores: None, picks: None }
            })
            .collect())
    };
    evaluate(&JudgeBench { mode }, &tasks, &name, cfg, &mut compute)
}
