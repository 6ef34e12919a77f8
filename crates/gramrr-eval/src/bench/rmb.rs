//! RMB (Zhou-Zoey/RMB-Reward-Model-Benchmark; arXiv:2410.09893).
//!
//! - Pairwise: accuracy of `score(chosen) > score(reject)`.
//! - Best-of-N: an item is correct only when `bon_best` beats every loser (one comparison per
//!   loser; a judge sees each in a seeded random order).
//!
//! Both are reported pooled and per `category_path` (without its `Pairwise_set/` / `BoN_set/`
//! root, so the two sets' categories line up).

use gramrr_data::{CandidateList, Label, PreferencePair};
use serde_json::{Map, Value};

use super::{evaluate, group_order, mean_bool, Bench, Report};
use crate::bootstrap::pct;
use crate::judge::Source;
use crate::run::{decide, Comparison, EvalConfig, ItemOutcome, Response, Task};
use crate::EvalError;

const PAIRWISE: &str = "pairwise";
const BON: &str = "bon";

fn category(meta: &Map<String, Value>) -> String {
    let path = meta.get("category_path").and_then(Value::as_str).unwrap_or("all");
    match path.split_once('/') {
        Some((root, rest)) if root.ends_with("_set") => rest.to_string(),
        _ => path.to_string(),
    }
}

/// Pairwise items (`chosen`, `rejected`) then best-of-N items (`best`, `loser[i]`). The group is
/// `pairwise:<category>` or `bon:<category>`.
pub fn tasks(pairs: &[PreferencePair], lists: &[CandidateList]) -> Result<Vec<Task>, EvalError> {
    let mut out = Vec::with_capacity(pairs.len() + lists.len());
    for p in pairs {
        let (a, b) = match p.label {
            Some(Label::A) => (0, 1),
            Some(Label::B) => (1, 0),
            _ => return Err(EvalError::Invalid(format!("rmb: pair {:?} has no A/B label", p.id))),
        };
        out.push(Task {
            id: p.id.clone(),
            group: format!("{PAIRWISE}:{}", category(&p.metadata)),
            prompt: p.prompt.clone(),
            responses: vec![
                Response { key: if a == 0 { "chosen" } else { "rejected" }.into(), text: p.response_a.clone() },
                Response { key: if a == 0 { "rejected" } else { "chosen" }.into(), text: p.response_b.clone() },
            ],
            comparisons: vec![Comparison { a, b, expected: Label::A, shuffle: true }],
        });
    }
    for c in lists {
        let best = c.best.ok_or_else(|| {
            EvalError::Invalid(format!("rmb: best-of-N item {:?} does not mark its best response", c.id))
        })?;
        if best >= c.responses.len() || c.responses.len() < 2 {
            return Err(EvalError::Invalid(format!("rmb: best-of-N item {:?} needs a best and at least one loser", c.id)));
        }
        let mut loser = 0;
        let responses = c
            .responses
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let key = if i == best {
                    "best".to_string()
                } else {
                    loser += 1;
                    format!("loser[{}]", loser - 1)
                };
                Response { key, text: text.clone() }
            })
            .collect();
        let comparisons = (0..c.responses.len())
            .filter(|&i| i != best)
            .map(|i| Comparison { a: best, b: i, expected: Label::A, shuffle: true })
            .collect();
        out.push(Task {
            id: c.id.clone(),
            group: format!("{BON}:{}", category(&c.metadata)),
            prompt: c.prompt.clone(),
            responses,
            comparisons,
        });
    }
    Ok(out)
}

pub struct Rmb;

pub struct Stat {
    group: String,
    correct: bool,
}

impl Bench for Rmb {
    type Stat = Stat;
    fn name(&self) -> &'static str {
        "rmb"
    }
    fn stat(&self, task: &Task, o: &ItemOutcome) -> Stat {
        let correct = !o.decisions.is_empty() && o.decisions.iter().all(|d| d.d.decision == Some(Label::A));
        Stat { group: task.group.clone(), correct }
    }
    fn summary(&self, s: &Stat) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("correct".into(), s.correct.into());
        m
    }
    fn metrics(&self, stats: &[&Stat]) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("benchmark".into(), "rmb".into());
        m.insert("n".into(), stats.len().into());
        for kind in [PAIRWISE, BON] {
            let prefix = format!("{kind}:");
            let mine: Vec<&&Stat> = stats.iter().filter(|s| s.group.starts_with(&prefix)).collect();
            if mine.is_empty() {
                continue;
            }
            let mut cats = Map::new();
            for g in group_order(mine.iter().map(|s| s.group.as_str())) {
                let acc = mean_bool(mine.iter().filter(|s| s.group == g).map(|s| &s.correct)).unwrap_or(0.0);
                cats.insert(g[prefix.len()..].to_string(), pct(acc).into());
            }
            let mut k = Map::new();
            k.insert("n".into(), mine.len().into());
            k.insert("accuracy".into(), pct(mean_bool(mine.iter().map(|s| &s.correct)).unwrap_or(0.0)).into());
            k.insert("categories".into(), Value::Object(cats));
            m.insert(kind.into(), Value::Object(k));
        }
        m
    }
}

/// Scores RMB pairwise pairs and best-of-N lists (either may be empty) with a source.
pub fn eval_rmb(
    pairs: &[PreferencePair],
    lists: &[CandidateList],
    source: &Source,
    cfg: &EvalConfig,
) -> Result<Report, EvalError> {
    let tasks = tasks(pairs, lists)?;
    evaluate(&Rmb, &tasks, &source.name(), cfg, &mut |chunk| decide(chunk, source, cfg.seed))
}
