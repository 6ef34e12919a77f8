//! The benchmarks. Each one turns its records into [`Task`]s, reduces an item's decisions to a
//! small per-item statistic, and computes its metrics from a list of those with the upstream
//! rules. [`evaluate`] does the rest for all of them: run the source, write the per-item file,
//! bootstrap the intervals, write metrics.json, report.md and any plot.

pub mod judgebench;
pub mod pairwise;
pub mod ppe;
pub mod rm_bench;
pub mod rmb;

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::bootstrap;
use crate::report;
use crate::run::{run_chunked, Compute, EvalConfig, ItemOutcome, Task};
use crate::EvalError;

/// What one benchmark knows.
pub(crate) trait Bench {
    type Stat;
    fn name(&self) -> &'static str;
    /// Settings that change the per-item decisions (a resumed run must have the same).
    fn settings(&self) -> Map<String, Value> {
        Map::new()
    }
    fn stat(&self, task: &Task, outcome: &ItemOutcome) -> Self::Stat;
    /// Fields of the per-item record (correct, category...).
    fn summary(&self, stat: &Self::Stat) -> Map<String, Value>;
    fn metrics(&self, stats: &[&Self::Stat]) -> Map<String, Value>;
    /// Writes a figure for curve metrics; returns the files written.
    fn plot(&self, _metrics: &Map<String, Value>, _dir: &std::path::Path) -> Result<Vec<PathBuf>, EvalError> {
        Ok(Vec::new())
    }
}

/// The result of one evaluation.
#[derive(Debug, Clone)]
pub struct Report {
    /// What metrics.json holds: the benchmark's metrics, then `source`, `ci95` (dotted path →
    /// [lo, hi]) and `bootstrap` settings.
    pub metrics: Map<String, Value>,
    /// One per item, in data order.
    pub outcomes: Vec<ItemOutcome>,
    /// Files written under `EvalConfig::out`.
    pub written: Vec<PathBuf>,
}

impl Report {
    /// A metric by dotted path (`"domains.chat.hard"`).
    pub fn get(&self, path: &str) -> Option<f64> {
        let mut v = self.metrics.get(path.split('.').next()?)?;
        for k in path.split('.').skip(1) {
            v = v.get(k)?;
        }
        v.as_f64()
    }
}

pub(crate) fn evaluate<B: Bench>(
    bench: &B,
    tasks: &[Task],
    source_name: &str,
    cfg: &EvalConfig,
    compute: &mut Compute<'_>,
) -> Result<Report, EvalError> {
    if tasks.is_empty() {
        return Err(EvalError::Invalid(format!("{}: no items to evaluate", bench.name())));
    }
    let mut run = Map::new();
    run.insert("benchmark".into(), bench.name().into());
    run.insert("source".into(), source_name.into());
    run.extend(bench.settings());
    if let Some(dir) = &cfg.out {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        report::check_and_write_run(dir, &run, cfg.resume)?;
    }
    let outcomes = run_chunked(tasks, cfg, compute, &|t, o| bench.summary(&bench.stat(t, o)))?;
    let stats: Vec<B::Stat> = tasks.iter().zip(&outcomes).map(|(t, o)| bench.stat(t, o)).collect();
    let all: Vec<&B::Stat> = stats.iter().collect();
    let metrics = bench.metrics(&all);
    let groups: Vec<&str> = tasks.iter().map(|t| t.group.as_str()).collect();
    let ci = bootstrap::intervals(&groups, cfg.bootstrap, cfg.seed, &|idx| {
        bench.metrics(&idx.iter().map(|&i| &stats[i]).collect::<Vec<_>>())
    });
    let mut full = metrics;
    full.insert("source".into(), source_name.into());
    let ci_map: Map<String, Value> = ci.iter().map(|(p, [lo, hi])| (p.clone(), vec![*lo, *hi].into())).collect();
    full.insert("ci95".into(), Value::Object(ci_map));
    full.insert(
        "bootstrap".into(),
        serde_json::json!({"resamples": cfg.bootstrap, "seed": cfg.seed, "stratified_by": "item group"}),
    );
    full.extend(cfg.extra.clone());
    let mut written = Vec::new();
    if let Some(dir) = &cfg.out {
        written.push(dir.join("items.jsonl"));
        written.extend(report::write_outputs(dir, &full)?);
        written.extend(bench.plot(&full, dir)?);
    }
    Ok(Report { metrics: full, outcomes, written })
}

/// Mean of booleans.
pub(crate) fn mean_bool<'a>(it: impl Iterator<Item = &'a bool>) -> Option<f64> {
    let (n, k) = it.fold((0usize, 0usize), |(n, k), &b| (n + 1, k + b as usize));
    (n > 0).then(|| k as f64 / n as f64)
}

/// Groups in order of first appearance.
pub(crate) fn group_order<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}
