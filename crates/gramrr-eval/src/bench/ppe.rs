//! PPE best-of-K (Frick et al. 2024, arXiv:2410.14872): for K = 1..=32, the accuracy of the
//! response the reward model ranks first among an item's first K samples, as a curve. An item
//! is a (prompt, generating model) with K samples and a verifiable correctness for each.
//!
//! The first K samples are taken in the file's order (`response_1..response_K`), so the curve is
//! one deterministic pass, not an average over random subsets.
//!
//! With a scalar source the pick is the top score among the first K (the earliest on a tie).
//! A pairwise judge gives no scores, so its pick is a *running champion*: response 1 holds the
//! title, each next response challenges the holder, and takes the title only when the judge
//! prefers it. The holder after K samples is the judge's best-of-K. That costs K−1 comparisons
//! per item for the whole curve (31 for K = 32), batched across items one round at a time.
//! A tie or a failed verdict keeps the holder.
//!
//! Reported with the curve: `oracle` (some correct response among the first K: the ceiling) and
//! `random` (the expected accuracy of a uniform pick among all samples: the floor).

use gramrr_data::{CandidateList, Label};
use serde_json::{Map, Value};

use super::{evaluate, Bench, Report};
use crate::bootstrap::pct;
use crate::judge::Source;
use crate::run::{check_len, decide, judge_pair, Decided, EvalConfig, ItemOutcome, Response, Task};
use crate::scorers::unit_hash;
use crate::EvalError;

pub fn tasks(lists: &[CandidateList]) -> Vec<Task> {
    lists
        .iter()
        .map(|c| Task {
            id: c.id.clone(),
            group: c.metadata.get("category").and_then(Value::as_str).unwrap_or("all").to_string(),
            prompt: c.prompt.clone(),
            responses: c
                .responses
                .iter()
                .enumerate()
                .map(|(i, t)| Response { key: format!("response_{}", i + 1), text: t.clone() })
                .collect(),
            comparisons: Vec::new(),
        })
        .collect()
}

/// The top-scored index among the first K scores, for every K; the earliest wins a tie.
pub fn picks_from_scores(scores: &[f64]) -> Vec<usize> {
    let mut best = 0;
    (0..scores.len())
        .map(|k| {
            if scores[k] > scores[best] {
                best = k;
            }
            best
        })
        .collect()
}

pub struct Ppe {
    correct: std::collections::HashMap<String, Vec<bool>>,
}

pub struct Stat {
    /// Whether the pick among the first K is correct, K = 1..=n.
    at_k: Vec<bool>,
    oracle: Vec<bool>,
    random: f64,
}

impl Bench for Ppe {
    type Stat = Stat;
    fn name(&self) -> &'static str {
        "ppe"
    }
    fn stat(&self, task: &Task, o: &ItemOutcome) -> Stat {
        let correct = &self.correct[&task.id];
        let picks = match (&o.picks, &o.scores) {
            (Some(p), _) => p.clone(),
            (None, Some(s)) => picks_from_scores(s),
            (None, None) => vec![0; correct.len()],
        };
        let at_k = picks.iter().map(|&p| correct[p]).collect();
        let oracle = correct.iter().scan(false, |any, &c| {
            *any |= c;
            Some(*any)
        });
        let random = correct.iter().filter(|&&c| c).count() as f64 / correct.len().max(1) as f64;
        Stat { at_k, oracle: oracle.collect(), random }
    }
    fn summary(&self, s: &Stat) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("correct_at_k".into(), s.at_k.iter().map(|&b| b as u8).collect::<Vec<_>>().into());
        m
    }
    fn metrics(&self, stats: &[&Stat]) -> Map<String, Value> {
        let k_max = stats.iter().map(|s| s.at_k.len()).max().unwrap_or(0);
        // An item with fewer than K samples counts with all of them.
        let curve = |f: &dyn Fn(&Stat) -> &Vec<bool>| -> Map<String, Value> {
            (1..=k_max)
                .map(|k| {
                    let hits = stats.iter().filter(|s| f(s).get(k - 1).or(f(s).last()).copied().unwrap_or(false)).count();
                    (k.to_string(), pct(hits as f64 / stats.len().max(1) as f64).into())
                })
                .collect()
        };
        let mut m = Map::new();
        m.insert("benchmark".into(), "ppe".into());
        m.insert("n".into(), stats.len().into());
        m.insert("k_max".into(), k_max.into());
        m.insert("best_of_k".into(), Value::Object(curve(&|s| &s.at_k)));
        m.insert("oracle".into(), Value::Object(curve(&|s| &s.oracle)));
        m.insert("random".into(), pct(stats.iter().map(|s| s.random).sum::<f64>() / stats.len().max(1) as f64).into());
        m
    }
    fn plot(&self, metrics: &Map<String, Value>, dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, EvalError> {
        let series = |key: &str| -> Vec<(f64, f64)> {
            metrics
                .get(key)
                .and_then(Value::as_object)
                .map(|o| o.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_f64()?))).collect())
                .unwrap_or_default()
        };
        let ci = metrics.get("ci95").and_then(Value::as_object);
        let band: Vec<(f64, f64, f64)> = series("best_of_k")
            .iter()
            .filter_map(|(k, _)| {
                let v = ci?.get(&format!("best_of_k.{k}"))?.as_array()?;
                Some((*k, v.first()?.as_f64()?, v.get(1)?.as_f64()?))
            })
            .collect();
        let random = metrics.get("random").and_then(Value::as_f64);
        let path = dir.join("best_of_k.png");
        let source = metrics.get("source").and_then(Value::as_str).unwrap_or("");
        crate::plot::curve_png(
            &path,
            &format!("PPE best-of-K — {source}"),
            &[("best-of-K", series("best_of_k")), ("oracle", series("oracle"))],
            &band,
            random,
        )?;
        Ok(vec![path])
    }
}

/// The running-champion picks of a pairwise judge (see the module notes), for a chunk of items.
fn champion_rounds(chunk: &[&Task], source: &Source, seed: u64) -> Result<Vec<ItemOutcome>, EvalError> {
    let Source::Judge(judge) = source else {
        return decide(chunk, source, seed);
    };
    let mut champ = vec![0usize; chunk.len()];
    let mut outs: Vec<ItemOutcome> = chunk
        .iter()
        .map(|t| ItemOutcome { id: t.id.clone(), decisions: Vec::new(), scores: None, picks: Some(vec![0]) })
        .collect();
    let rounds = chunk.iter().map(|t| t.responses.len()).max().unwrap_or(0);
    for r in 1..rounds {
        let live: Vec<usize> = (0..chunk.len()).filter(|&i| chunk[i].responses.len() > r).collect();
        let swaps: Vec<bool> =
            live.iter().map(|&i| unit_hash(seed, &[&chunk[i].id, &r.to_string(), "swap"]) < 0.5).collect();
        let pairs: Vec<_> = live.iter().zip(&swaps).map(|(&i, &s)| judge_pair(chunk[i], r - 1, champ[i], r, s)).collect();
        let decisions = judge.judge(&pairs)?;
        check_len(&judge.name(), pairs.len(), decisions.len())?;
        for ((&i, swap), d) in live.iter().zip(swaps).zip(decisions) {
            let d = if swap { d.flipped() } else { d };
            let t = chunk[i];
            let challenger_wins = d.decision == Some(Label::B);
            outs[i].decisions.push(Decided { a: t.key(champ[i]).into(), b: t.key(r).into(), d });
            if challenger_wins {
                champ[i] = r;
            }
            outs[i].picks.as_mut().expect("set above").push(champ[i]);
        }
    }
    Ok(outs)
}

/// Scores PPE best-of-K lists (each must carry per-response correctness) with a source.
pub fn eval_ppe(lists: &[CandidateList], source: &Source, cfg: &EvalConfig) -> Result<Report, EvalError> {
    let mut correct = std::collections::HashMap::new();
    for c in lists {
        let ok = c.correct.clone().filter(|v| v.len() == c.responses.len()).ok_or_else(|| {
            EvalError::Invalid(format!("ppe: item {:?} has no per-response correctness (\"scores\")", c.id))
        })?;
        correct.insert(c.id.clone(), ok);
    }
    let tasks = tasks(lists);
    evaluate(&Ppe { correct }, &tasks, &source.name(), cfg, &mut |chunk| champion_rounds(chunk, source, cfg.seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_keep_the_earliest_top_score() {
        assert_eq!(picks_from_scores(&[1.0, 3.0, 3.0, 0.0, 5.0]), vec![0, 1, 1, 1, 4]);
    }
}
