//! The driver every benchmark shares: items in, decisions out, written to the per-item file as
//! they complete so that a killed run can resume, with a progress bar.
//!
//! A benchmark turns its records into [`Task`]s: the responses of one item and the comparisons
//! it needs (RM-Bench: 9 per record; JudgeBench double game: both orders; best-of-N: best vs
//! each loser). Scalar sources score every response once and compare scores; judges see each
//! comparison as a pair.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use gramrr_data::{Conversation, Label, PreferencePair};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::judge::{PairDecision, ScoreQuery, Source};
use crate::scorers::unit_hash;
use crate::EvalError;

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The response's name within its item: the key of scores files and per-item records.
    pub key: String,
    pub text: String,
}

/// One comparison an item needs: response `a` against response `b`, where `expected` says
/// which should win in that orientation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub a: usize,
    pub b: usize,
    pub expected: Label,
    /// Whether a judge may be shown the pair in either order. Benchmarks whose data always puts
    /// the better response first (chosen/rejected) set it, so that a judge that prefers the first
    /// position gains nothing; JudgeBench keeps its given orders. Scalar scores never see it.
    pub shuffle: bool,
}

/// One benchmark item.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    /// The stratum for bootstrap resampling and the group reports break down by (domain,
    /// category, subset).
    pub group: String,
    pub prompt: Conversation,
    pub responses: Vec<Response>,
    pub comparisons: Vec<Comparison>,
}

impl Task {
    pub fn key(&self, i: usize) -> &str {
        &self.responses[i].key
    }
}

/// A decision together with the responses it compared, in the comparison's orientation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decided {
    pub a: String,
    pub b: String,
    #[serde(flatten)]
    pub d: PairDecision,
}

/// What the source said about one item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemOutcome {
    pub id: String,
    /// One per comparison of the task, in its order (empty for PPE scored by scalars).
    pub decisions: Vec<Decided>,
    /// One per response, when a scalar scorer scored them.
    pub scores: Option<Vec<f64>>,
    /// PPE: the response picked among the first K, for K = 1..=n.
    pub picks: Option<Vec<usize>>,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Where metrics.json, items.jsonl, report.md (and curve.png) go; `None` writes nothing.
    pub out: Option<PathBuf>,
    /// Items handed to the source at once (and written to the per-item file together).
    pub batch: usize,
    /// Continue from `out/items.jsonl`: items already there are not asked again.
    pub resume: bool,
    pub progress: bool,
    /// Seeds the judge's position shuffling and the bootstrap.
    pub seed: u64,
    /// Bootstrap resamples for the 95% intervals; 0 for none.
    pub bootstrap: usize,
    /// Extra fields for metrics.json (data files, skipped records...).
    pub extra: Map<String, Value>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { out: None, batch: 64, resume: false, progress: false, seed: 0, bootstrap: 1000, extra: Map::new() }
    }
}

impl EvalConfig {
    pub fn items_path(&self) -> Option<PathBuf> {
        self.out.as_ref().map(|d| d.join("items.jsonl"))
    }
}

/// Asks a source for the decisions a chunk of tasks needs.
pub fn decide(tasks: &[&Task], source: &Source, seed: u64) -> Result<Vec<ItemOutcome>, EvalError> {
    match source {
        Source::Scalar(scorer) => {
            let queries: Vec<ScoreQuery> = tasks
                .iter()
                .flat_map(|t| {
                    t.responses.iter().enumerate().map(|(index, r)| ScoreQuery {
                        item_id: &t.id,
                        key: &r.key,
                        index,
                        prompt: &t.prompt,
                        response: &r.text,
                    })
                })
                .collect();
            let scores = scorer.score(&queries)?;
            check_len(&scorer.name(), queries.len(), scores.len())?;
            let mut rest = &scores[..];
            Ok(tasks
                .iter()
                .map(|t| {
                    let (s, tail) = rest.split_at(t.responses.len());
                    rest = tail;
                    let decisions = t
                        .comparisons
                        .iter()
                        .map(|c| Decided {
                            a: t.key(c.a).into(),
                            b: t.key(c.b).into(),
                            d: PairDecision::from_scores(s[c.a], s[c.b]),
                        })
                        .collect();
                    ItemOutcome { id: t.id.clone(), decisions, scores: Some(s.to_vec()), picks: None }
                })
                .collect())
        }
        Source::Judge(judge) => {
            let mut pairs = Vec::new();
            let mut swaps = Vec::new();
            for t in tasks {
                for (k, c) in t.comparisons.iter().enumerate() {
                    let swap = c.shuffle && unit_hash(seed, &[&t.id, &k.to_string(), "swap"]) < 0.5;
                    pairs.push(judge_pair(t, k, c.a, c.b, swap));
                    swaps.push(swap);
                }
            }
            let decisions = judge.judge(&pairs)?;
            check_len(&judge.name(), pairs.len(), decisions.len())?;
            let mut it = decisions.into_iter().zip(swaps);
            Ok(tasks
                .iter()
                .map(|t| {
                    let decisions = t
                        .comparisons
                        .iter()
                        .map(|c| {
                            let (d, swap) = it.next().expect("one decision per comparison, checked");
                            let d = if swap { d.flipped() } else { d };
                            Decided { a: t.key(c.a).into(), b: t.key(c.b).into(), d }
                        })
                        .collect();
                    ItemOutcome { id: t.id.clone(), decisions, scores: None, picks: None }
                })
                .collect())
        }
    }
}

/// The pair a judge sees for comparison `k` of a task: no label, and the item and comparison in
/// the metadata for the judge's own logs.
pub(crate) fn judge_pair(t: &Task, k: usize, a: usize, b: usize, swap: bool) -> PreferencePair {
    let (first, second) = if swap { (b, a) } else { (a, b) };
    let mut metadata = Map::new();
    metadata.insert("item_id".into(), t.id.clone().into());
    metadata.insert("comparison".into(), k.into());
    PreferencePair {
        id: format!("{}#{k}", t.id),
        prompt: t.prompt.clone(),
        response_a: t.responses[first].text.clone(),
        response_b: t.responses[second].text.clone(),
        label: None,
        rationale: None,
        metadata,
    }
}

pub(crate) fn check_len(name: &str, asked: usize, got: usize) -> Result<(), EvalError> {
    if asked != got {
        return Err(EvalError::Source {
            source_name: name.to_string(),
            message: format!("returned {got} results for {asked} requests"),
        });
    }
    Ok(())
}

/// Decides a chunk of tasks: one outcome per task, in order.
pub(crate) type Compute<'a> = dyn FnMut(&[&Task]) -> Result<Vec<ItemOutcome>, EvalError> + 'a;

/// Runs `compute` over the tasks not yet in the per-item file, a chunk at a time, appending each
/// finished chunk to it. Returns one outcome per task, in task order.
pub(crate) fn run_chunked(
    tasks: &[Task],
    cfg: &EvalConfig,
    compute: &mut Compute<'_>,
    summary: &dyn Fn(&Task, &ItemOutcome) -> Map<String, Value>,
) -> Result<Vec<ItemOutcome>, EvalError> {
    let mut seen = HashSet::new();
    if let Some(dup) = tasks.iter().find(|t| !seen.insert(t.id.as_str())) {
        return Err(EvalError::Invalid(format!(
            "item id {:?} occurs twice; ids must be unique (are the same files given twice?)",
            dup.id
        )));
    }
    let items_path = cfg.items_path();
    let mut done: HashMap<String, ItemOutcome> = HashMap::new();
    let mut writer = match &items_path {
        None => None,
        Some(p) => {
            if cfg.resume && p.exists() {
                done = load_items(p, tasks)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(cfg.resume)
                .write(true)
                .truncate(!cfg.resume)
                .open(p)
                .map_err(|e| EvalError::io(p, e))?;
            Some((p.clone(), BufWriter::new(f)))
        }
    };
    let todo: Vec<&Task> = tasks.iter().filter(|t| !done.contains_key(&t.id)).collect();
    let pb = indicatif::ProgressBar::new(tasks.len() as u64);
    if cfg.progress {
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} items  {elapsed} elapsed, eta {eta}")
                .expect("static template"),
        );
    } else {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb.set_position(done.len() as u64);
    for chunk in todo.chunks(cfg.batch.max(1)) {
        let outs = compute(chunk)?;
        check_len("evaluator", chunk.len(), outs.len())?;
        for (t, o) in chunk.iter().zip(outs) {
            if let Some((p, w)) = writer.as_mut() {
                let line = item_line(t, &o, summary(t, &o));
                serde_json::to_writer(&mut *w, &line).map_err(|e| EvalError::io(p, e.into()))?;
                w.write_all(b"\n").map_err(|e| EvalError::io(p, e))?;
            }
            done.insert(t.id.clone(), o);
        }
        if let Some((p, w)) = writer.as_mut() {
            // A chunk is on disk before the next one starts: that is what a resume relies on.
            w.flush().map_err(|e| EvalError::io(p, e))?;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(tasks.iter().map(|t| done.remove(&t.id).expect("every task computed or resumed")).collect())
}

fn item_line(t: &Task, o: &ItemOutcome, summary: Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), t.id.clone().into());
    m.insert("group".into(), t.group.clone().into());
    m.extend(summary);
    if let Some(s) = &o.scores {
        let scores: Map<String, Value> = t.responses.iter().zip(s).map(|(r, s)| (r.key.clone(), (*s).into())).collect();
        m.insert("scores".into(), Value::Object(scores));
    }
    if let Some(p) = &o.picks {
        m.insert("picks".into(), p.clone().into());
    }
    m.insert("decisions".into(), serde_json::to_value(&o.decisions).expect("plain data"));
    Value::Object(m)
}

/// Reads a per-item file back. Lines for unknown items or with the wrong number of decisions are
/// refused (the file belongs to another run); a final line cut short by a kill is dropped, and
/// the file is rewritten without it so that appending continues cleanly.
fn load_items(path: &Path, tasks: &[Task]) -> Result<HashMap<String, ItemOutcome>, EvalError> {
    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let reader = gramrr_data::read::open_lines(path)?;
    let lines: Vec<String> = reader.lines().collect::<Result<_, _>>().map_err(|e| EvalError::io(path, e))?;
    let mut out = HashMap::new();
    let mut kept = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| EvalError::Resume { path: path.display().to_string(), line: i + 1, problem };
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => return Err(bad(format!("not valid JSON: {e}"))),
        };
        let id = v.get("id").and_then(Value::as_str).ok_or_else(|| bad("no \"id\"".into()))?;
        let task = by_id.get(id).ok_or_else(|| bad(format!("item {id:?} is not in the data being evaluated")))?;
        let decisions: Vec<Decided> = serde_json::from_value(v.get("decisions").cloned().unwrap_or(Value::Array(vec![])))
            .map_err(|e| bad(format!("field \"decisions\": {e}")))?;
        if !task.comparisons.is_empty() && decisions.len() != task.comparisons.len() {
            return Err(bad(format!(
                "{} decisions for item {id:?}, which needs {} (another mode or benchmark?)",
                decisions.len(),
                task.comparisons.len()
            )));
        }
        let scores = match v.get("scores") {
            Some(Value::Object(m)) => Some(
                task.responses
                    .iter()
                    .map(|r| m.get(&r.key).and_then(Value::as_f64))
                    .collect::<Option<Vec<f64>>>()
                    .ok_or_else(|| bad(format!("field \"scores\" lacks a response of item {id:?}")))?,
            ),
            _ => None,
        };
        let picks = match v.get("picks") {
            Some(p) => Some(serde_json::from_value(p.clone()).map_err(|e| bad(format!("field \"picks\": {e}")))?),
            None => None,
        };
        out.insert(id.to_string(), ItemOutcome { id: id.to_string(), decisions, scores, picks });
        kept.push(line.as_str());
    }
    if kept.len() != lines.iter().filter(|l| !l.trim().is_empty()).count() {
        let mut f = BufWriter::new(File::create(path).map_err(|e| EvalError::io(path, e))?);
        for l in kept {
            writeln!(f, "{l}").map_err(|e| EvalError::io(path, e))?;
        }
        f.flush().map_err(|e| EvalError::io(path, e))?;
    }
    Ok(out)
}

/// Writes every response the tasks need scored, one JSONL line each:
/// `{"id", "response", "index", "prompt", "text"}`. Scored by any reward model and turned into
/// `{"id", "response", "score"}` lines, this is a scores file.
pub fn write_requests(tasks: &[Task], path: &Path) -> Result<usize, EvalError> {
    let f = File::create(path).map_err(|e| EvalError::io(path, e))?;
    let mut w = BufWriter::new(f);
    let mut n = 0;
    for t in tasks {
        for (index, r) in t.responses.iter().enumerate() {
            let line = serde_json::json!({
                "id": t.id, "response": r.key, "index": index, "prompt": t.prompt, "text": r.text,
            });
            serde_json::to_writer(&mut w, &line).map_err(|e| EvalError::io(path, e.into()))?;
            w.write_all(b"\n").map_err(|e| EvalError::io(path, e))?;
            n += 1;
        }
    }
    w.flush().map_err(|e| EvalError::io(path, e))?;
    Ok(n)
}
