//! RM-Bench (THU-KEG/RM-Bench, scripts/utils.py `compute_accuracy`).
//!
//! Each record has three chosen and three rejected responses, one per style (0 concise,
//! 1 detailed, 2 detailed markdown). Its 3×3 matrix is `M[i][j] = 1` when chosen `i` beats
//! rejected `j` (strictly: a tie is wrong). Averaged over a domain's records: *hard* is the mean
//! of the upper triangle (a plainer chosen against a fancier rejected), *normal* the diagonal,
//! *easy* the lower triangle; the domain score is their mean. Safety pools the safety-refuse and
//! safety-response records (`domain.startswith("safety")`) into one set. Overall is the mean over
//! the domains present.

use gramrr_data::formats::RmBenchRecord;
use gramrr_data::{Conversation, Label};
use serde_json::{Map, Value};

use super::{evaluate, Bench, Report};
use crate::bootstrap::pct;
use crate::judge::Source;
use crate::run::{decide, Comparison, EvalConfig, ItemOutcome, Response, Task};
use crate::EvalError;

/// Upstream's domain order.
const DOMAIN_ORDER: [&str; 4] = ["chat", "math", "code", "safety"];

/// The domain a record is scored in: safety-refuse and safety-response pool into safety.
pub fn pooled_domain(domain: &str) -> &str {
    if domain.starts_with("safety") {
        "safety"
    } else {
        domain
    }
}

/// Six responses (`chosen[0..3]`, `rejected[0..3]`) and nine comparisons, chosen `i` against
/// rejected `j` at index `3 * i + j`.
pub fn tasks(records: &[RmBenchRecord]) -> Vec<Task> {
    records
        .iter()
        .map(|r| {
            let mut responses: Vec<Response> = (0..3)
                .map(|i| Response { key: format!("chosen[{i}]"), text: r.chosen[i].clone() })
                .collect();
            responses.extend((0..3).map(|j| Response { key: format!("rejected[{j}]"), text: r.rejected[j].clone() }));
            let comparisons = (0..3)
                .flat_map(|i| (0..3).map(move |j| Comparison { a: i, b: 3 + j, expected: Label::A, shuffle: true }))
                .collect();
            Task {
                id: r.item_id(),
                group: pooled_domain(&r.domain).to_string(),
                prompt: Conversation::Text(r.prompt.clone()),
                responses,
                comparisons,
            }
        })
        .collect()
}

pub struct RmBench;

pub struct Stat {
    domain: String,
    m: [[bool; 3]; 3],
}

impl Bench for RmBench {
    type Stat = Stat;
    fn name(&self) -> &'static str {
        "rm-bench"
    }
    fn stat(&self, task: &Task, o: &ItemOutcome) -> Stat {
        let mut m = [[false; 3]; 3];
        for (k, d) in o.decisions.iter().enumerate() {
            m[k / 3][k % 3] = d.d.decision == Some(Label::A);
        }
        Stat { domain: task.group.clone(), m }
    }
    fn summary(&self, s: &Stat) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("matrix".into(), s.m.iter().map(|row| row.iter().map(|&b| b as u8).collect::<Vec<_>>()).collect::<Vec<_>>().into());
        out
    }
    fn metrics(&self, stats: &[&Stat]) -> Map<String, Value> {
        let mut names: Vec<&str> = super::group_order(stats.iter().map(|s| s.domain.as_str()));
        names.sort_by_key(|d| (DOMAIN_ORDER.iter().position(|x| x == d).unwrap_or(usize::MAX), d.to_string()));
        let mut domains = Map::new();
        let mut counts = Map::new();
        let mut sums = [0.0f64; 4];
        for d in &names {
            let recs: Vec<&&Stat> = stats.iter().filter(|s| s.domain == *d).collect();
            let [easy, normal, hard] = easy_normal_hard(recs.iter().map(|s| &s.m));
            let avg = (easy + normal + hard) / 3.0;
            for (acc, x) in sums.iter_mut().zip([easy, normal, hard, avg]) {
                *acc += x;
            }
            domains.insert(d.to_string(), obj(easy, normal, hard, avg));
            counts.insert(d.to_string(), recs.len().into());
        }
        let k = names.len().max(1) as f64;
        let mut out = Map::new();
        out.insert("benchmark".into(), "rm-bench".into());
        out.insert("domains".into(), Value::Object(domains));
        out.insert("overall".into(), obj(sums[0] / k, sums[1] / k, sums[2] / k, sums[3] / k));
        out.insert("n".into(), stats.len().into());
        out.insert("counts".into(), Value::Object(counts));
        out
    }
}

fn obj(easy: f64, normal: f64, hard: f64, avg: f64) -> Value {
    serde_json::json!({"easy": pct(easy), "normal": pct(normal), "hard": pct(hard), "avg": pct(avg)})
}

/// `[easy, normal, hard]` as fractions from per-record 3×3 matrices.
pub fn easy_normal_hard<'a>(matrices: impl Iterator<Item = &'a [[bool; 3]; 3]>) -> [f64; 3] {
    let mut acc = [[0.0f64; 3]; 3];
    let mut n = 0usize;
    for m in matrices {
        n += 1;
        for i in 0..3 {
            for j in 0..3 {
                acc[i][j] += m[i][j] as u8 as f64;
            }
        }
    }
    let n = n.max(1) as f64;
    let (mut easy, mut normal, mut hard) = (0.0, 0.0, 0.0);
    for (i, row) in acc.iter().enumerate() {
        for (j, &x) in row.iter().enumerate() {
            let x = x / n;
            match i.cmp(&j) {
                std::cmp::Ordering::Less => hard += x / 3.0,
                std::cmp::Ordering::Equal => normal += x / 3.0,
                std::cmp::Ordering::Greater => easy += x / 3.0,
            }
        }
    }
    [easy, normal, hard]
}

/// Scores RM-Bench records with a source.
pub fn eval_rm_bench(records: &[RmBenchRecord], source: &Source, cfg: &EvalConfig) -> Result<Report, EvalError> {
    let tasks = tasks(records);
    evaluate(&RmBench, &tasks, &source.name(), cfg, &mut |chunk| decide(chunk, source, cfg.seed))
}
