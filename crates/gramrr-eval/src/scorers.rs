//! Scalar scorers that need no model: the scores file (scores from any reward model, computed
//! elsewhere) and the two baselines.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use crate::judge::{ResponseScorer, ScoreQuery};
use crate::EvalError;

/// The help text for the scores-file format, shown by the CLI.
pub const SCORES_FILE_HELP: &str = "\
Scores file: JSONL, one line per item or per response, keyed by the item id and the response key:
  {\"id\": \"chat/8\", \"response\": \"chosen[0]\", \"score\": 3.25}
  {\"id\": \"chat/8\", \"scores\": {\"chosen[0]\": 3.25, \"rejected[0]\": -1.5, ...}}
  {\"id\": \"chat/8\", \"scores\": [3.25, 1.0, ...]}        (in the item's response order)
Higher is better. Ids and response keys per benchmark (--write-requests prints them all, with
the texts to score):
  rm-bench     id \"<domain>/<id>\" (chat/8, safety-refuse/123); keys chosen[0..2], rejected[0..2]
               (0 concise, 1 detailed, 2 markdown)
  judgebench   id = pair_id; keys A, B
  rewardbench  id = id; keys chosen, rejected
  llmbar       id \"<set>/<index>\" (Natural/0, Adversarial/GPTInst/5); keys output_1, output_2
  hh-rlhf      id \"<dir>/<file>/<index>\" (harmless-base/test/0); keys chosen, rejected
  rmb          pairwise: id \"<category_path>/<pair_uid>\", keys chosen, rejected;
               best-of-N: id \"<category_path>/<bon_uid>\", keys best, loser[0], loser[1], ...
  ppe          id \"<question_id>/<model_name>\"; keys response_1 .. response_32";

/// Scores read from a file.
pub struct ScoresFile {
    path: String,
    by_id: HashMap<String, ItemScores>,
}

#[derive(Default)]
struct ItemScores {
    by_key: HashMap<String, f64>,
    by_index: Vec<f64>,
}

impl ScoresFile {
    pub fn open(path: &Path) -> Result<ScoresFile, EvalError> {
        let shown = path.display().to_string();
        let reader = gramrr_data::read::open_lines(path)?;
        let mut by_id: HashMap<String, ItemScores> = HashMap::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| EvalError::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |problem: String| EvalError::ScoresFile { path: shown.clone(), line: i + 1, problem };
            let v: Value = serde_json::from_str(&line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            let id = match v.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(bad("field \"id\": expected a string or number".into())),
            };
            let num = |v: &Value, field: &str| {
                v.as_f64().ok_or_else(|| bad(format!("field \"{field}\": expected a number, found {v}")))
            };
            let entry = by_id.entry(id).or_default();
            match (v.get("response"), v.get("score"), v.get("scores")) {
                (Some(key), Some(score), None) => {
                    let key = match key {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(bad("field \"response\": expected a response key".into())),
                    };
                    entry.by_key.insert(key, num(score, "score")?);
                }
                (None, None, Some(Value::Object(m))) => {
                    for (k, s) in m {
                        entry.by_key.insert(k.clone(), num(s, &format!("scores.{k}"))?);
                    }
                }
                (None, None, Some(Value::Array(a))) => {
                    entry.by_index =
                        a.iter().enumerate().map(|(j, s)| num(s, &format!("scores[{j}]"))).collect::<Result<_, _>>()?;
                }
                _ => {
                    return Err(bad(
                        "expected {\"id\", \"response\", \"score\"} or {\"id\", \"scores\": {key: score} | [score, ...]}"
                            .into(),
                    ))
                }
            }
        }
        Ok(ScoresFile { path: shown, by_id })
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

impl ResponseScorer for ScoresFile {
    fn name(&self) -> String {
        format!("scores:{}", self.path)
    }
    fn score(&self, queries: &[ScoreQuery<'_>]) -> Result<Vec<f64>, EvalError> {
        queries
            .iter()
            .map(|q| {
                let item = self.by_id.get(q.item_id);
                item.and_then(|s| s.by_key.get(q.key).copied().or_else(|| s.by_index.get(q.index).copied()))
                    .ok_or_else(|| EvalError::MissingScore {
                        path: self.path.clone(),
                        id: q.item_id.to_string(),
                        key: q.key.to_string(),
                        index: q.index,
                    })
            })
            .collect()
    }
}

/// Scores a response by its length in Unicode scalar values: the verbosity bias any reward
/// model should beat.
pub struct LengthBaseline;

impl ResponseScorer for LengthBaseline {
    fn name(&self) -> String {
        "baseline:length".into()
    }
    fn score(&self, queries: &[ScoreQuery<'_>]) -> Result<Vec<f64>, EvalError> {
        Ok(queries.iter().map(|q| q.response.chars().count() as f64).collect())
    }
}

/// Uniform scores in [0, 1) that depend only on (seed, item id, response key), so that a
/// resumed or reordered run gives the same numbers.
pub struct RandomBaseline {
    pub seed: u64,
}

impl ResponseScorer for RandomBaseline {
    fn name(&self) -> String {
        format!("baseline:random(seed={})", self.seed)
    }
    fn score(&self, queries: &[ScoreQuery<'_>]) -> Result<Vec<f64>, EvalError> {
        Ok(queries.iter().map(|q| unit_hash(self.seed, &[q.item_id, q.key])).collect())
    }
}

/// A stable hash of strings to [0, 1): FNV-1a, then a SplitMix64 finaliser for the low bits.
pub(crate) fn unit_hash(seed: u64, parts: &[&str]) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (splitmix(h) >> 11) as f64 / (1u64 << 53) as f64
}

pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic generator for bootstrap resampling.
pub(crate) struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.0.wrapping_sub(0x9e37_79b9_7f4a_7c15))
    }
    pub fn below(&mut self, n: usize) -> usize {
        // n is at most a few hundred thousand: modulo bias is far below bootstrap noise.
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gramrr_data::Conversation;

    #[test]
    fn random_baseline_depends_only_on_seed_id_and_key() {
        let p = Conversation::Text(String::new());
        let q = |id, key| ScoreQuery { item_id: id, key, index: 0, prompt: &p, response: "x" };
        let r = RandomBaseline { seed: 7 };
        let a = r.score(&[q("i1", "A"), q("i2", "B")]).unwrap();
        let b = r.score(&[q("i2", "B"), q("i1", "A")]).unwrap();
        assert_eq!(a[0], b[1]);
        assert_ne!(a[0], a[1]);
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
        let other = RandomBaseline { seed: 8 }.score(&[q("i1", "A")]).unwrap();
        assert_ne!(other[0], a[0]);
    }

    #[test]
    fn length_counts_unicode_characters_not_bytes() {
        let p = Conversation::Text(String::new());
        let q = ScoreQuery { item_id: "x", key: "A", index: 0, prompt: &p, response: "héllo ✓" };
        assert_eq!(LengthBaseline.score(&[q]).unwrap(), vec![7.0]);
    }
}
