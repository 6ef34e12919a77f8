//! The engine worker: one blocking thread that owns every backend call. It takes the first
//! queued request, keeps collecting until `max_batch` items or `max_wait` have passed, and runs
//! them as few batches as possible: all pair comparisons with the same judge settings (from
//! `/v1/judge` and `/get_reward` alike) in one `judge_batch`, all rankings with the same
//! strategy and settings in one `rank_batch`.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gramrr_judge::{JudgeConfig, ListRanker, PairInput, PairVerdict, PairwiseJudge, RankInput, RankOutcome, StrategyKind};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::openai::{CompletionResult, CompletionWork};
use crate::reward::{RewardPlan, RewardResponse};

pub(crate) enum Work {
    Judge { pair: PairInput, config: JudgeConfig },
    Reward { pairs: Vec<PairInput>, plan: RewardPlan, config: JudgeConfig },
    Rank { input: RankInput, strategy: StrategyKind, config: JudgeConfig },
    /// An OpenAI-style `/v1/completions` request ([`crate::openai`]).
    Completion(Box<CompletionWork>),
}

pub(crate) enum Output {
    Judge(PairVerdict),
    Reward(RewardResponse),
    Rank(RankOutcome),
    Completion(CompletionResult),
}

pub(crate) struct Job {
    pub work: Work,
    /// Items, for `max_batch`: 1 per pair, candidate or query.
    pub size: usize,
    pub reply: oneshot::Sender<Result<Output, String>>,
}

pub(crate) struct WorkerConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
}

pub(crate) fn spawn(
    judge: PairwiseJudge,
    rx: Receiver<Job>,
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("gramrr-engine".into())
        .spawn(move || loop {
            let first = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(job) => job,
                // Queued jobs are always received before a timeout, so stopping here leaves
                // nothing accepted unanswered.
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => break,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let deadline = Instant::now() + cfg.max_wait;
            let mut size = first.size;
            let mut jobs = vec![first];
            while size < cfg.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(job) => {
                        size += job.size;
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            metrics.queue_depth.fetch_sub(jobs.len(), Ordering::SeqCst);
            run_batch(&judge, jobs, &metrics);
        })
        .expect("spawning the engine thread")
}

fn run_batch(judge: &PairwiseJudge, jobs: Vec<Job>, metrics: &Metrics) {
    // A client that went away no longer needs its answer: skip its work.
    let (live, gone): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| !j.reply.is_closed());
    if !gone.is_empty() {
        metrics.cancelled(gone.len());
    }
    if live.is_empty() {
        return;
    }
    let started = Instant::now();
    let (n_jobs, n_items) = (live.len(), live.iter().map(|j| j.size).sum::<usize>());

    // Group by settings; the key is the settings' JSON (f32 fields rule out Hash).
    let mut pair_groups: BTreeMap<String, (JudgeConfig, Vec<Job>)> = BTreeMap::new();
    let mut rank_groups: BTreeMap<String, (JudgeConfig, StrategyKind, Vec<Job>)> = BTreeMap::new();
    let mut completions: Vec<Job> = vec![];
    for job in live {
        match &job.work {
            Work::Completion(_) => completions.push(job),
            Work::Judge { config, .. } | Work::Reward { config, .. } => {
                let key = serde_json::to_string(config).unwrap_or_default();
                pair_groups.entry(key).or_insert_with(|| (config.clone(), vec![])).1.push(job);
            }
            Work::Rank { config, strategy, .. } => {
                let key = format!("{}{}", serde_json::to_string(config).unwrap_or_default(), serde_json::to_string(strategy).unwrap_or_default());
                rank_groups.entry(key).or_insert_with(|| (config.clone(), *strategy, vec![])).2.push(job);
            }
        }
    }

    for (_, (config, jobs)) in pair_groups {
        let mut all: Vec<PairInput> = vec![];
        let mut spans = vec![];
        for job in &jobs {
            let start = all.len();
            match &job.work {
                Work::Judge { pair, .. } => all.push(pair.clone()),
                Work::Reward { pairs, .. } => all.extend(pairs.iter().cloned()),
                Work::Rank { .. } | Work::Completion(_) => unreachable!("rank and completion jobs are grouped apart"),
            }
            spans.push(start..all.len());
        }
        let j = judge.with_config(config);
        let verdicts = guarded(|| j.judge_batch(&all).map_err(|e| e.to_string()));
        for (job, span) in jobs.into_iter().zip(spans) {
            let out = verdicts.as_ref().map_err(Clone::clone).map(|v| match job.work {
                Work::Judge { .. } => Output::Judge(v[span.start].clone()),
                Work::Reward { plan, .. } => Output::Reward(plan.finish(&v[span])),
                Work::Rank { .. } | Work::Completion(_) => unreachable!(),
            });
            let _ = job.reply.send(out);
        }
    }

    for (_, (config, strategy, jobs)) in rank_groups {
        let inputs: Vec<RankInput> = jobs
            .iter()
            .map(|j| match &j.work {
                Work::Rank { input, .. } => input.clone(),
                _ => unreachable!("only rank jobs here"),
            })
            .collect();
        let ranker = ListRanker::new(judge.with_config(config), strategy);
        let outcomes = guarded(|| ranker.rank_batch(&inputs).map_err(|e| e.to_string()));
        for (i, job) in jobs.into_iter().enumerate() {
            let _ = job.reply.send(outcomes.as_ref().map(|o| Output::Rank(o[i].clone())).map_err(Clone::clone));
        }
    }
    if !completions.is_empty() {
        let works: Vec<&CompletionWork> = completions
            .iter()
            .map(|j| match &j.work {
                Work::Completion(w) => w.as_ref(),
                _ => unreachable!("only completion jobs here"),
            })
            .collect();
        let n = works.len();
        let results = guarded(|| Ok(crate::openai::run_batch(&works)))
            .unwrap_or_else(|panic| (0..n).map(|_| Err(panic.clone())).collect());
        for (job, r) in completions.into_iter().zip(results) {
            let _ = job.reply.send(r.map(Output::Completion));
        }
    }
    metrics.batch(n_jobs, n_items, started.elapsed().as_secs_f64());
}

/// Runs engine work so that a panic in it answers the batch's requests with an error instead
/// of killing the only engine thread (and with it every request after).
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        Err(format!("the engine panicked: {msg}"))
    })
}
