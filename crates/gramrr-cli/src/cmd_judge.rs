//! `gramrr judge` (pairs) and `gramrr rank` (candidate lists).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use gramrr_data::formats::{self, Format, ReadOptions};
use gramrr_data::prompt::JudgeTemplate;
use gramrr_data::{CandidateList, PreferencePair};
use gramrr_judge::{JudgeConfig, JudgeMode, JudgeSummary, ListRanker, PairInput, PairwiseJudge, RankInput, StrategyKind};
use gramrr_model::backend::{Backend, SamplingParams};
use serde_json::json;

use crate::cmd_model::ModelArgs;
use crate::io::{progress_bar, JsonlWriter};

/// How each pair is judged; shared by `judge`, `rank` and `serve`.
#[derive(Args, Clone, Debug)]
pub struct JudgeOptions {
    /// Judge format: a preset (gram-rr, mt-bench, rm-r1, rrm) or a template file: `.json` with
    /// any template fields over a preset (`"base"`), or a text file holding the user message
    /// with {user_input}, {response_1} and {response_2}.
    #[arg(long, default_value = "gram-rr")]
    pub template: String,
    /// reason: write a rationale, parse its label. prob: no generation, the softmax over the
    /// two label tokens at the answer position (GRAM v1). prob-after-reason: both.
    #[arg(long, default_value = "reason")]
    pub mode: JudgeMode,
    /// Sampled judgments per order (voting@k); the majority decides. Sampling stops early once
    /// the remaining votes cannot change the majority.
    #[arg(long, default_value_t = 1)]
    pub votes: usize,
    /// Judge each pair in one order only (placed at random, seeded) instead of (A, B) and (B, A).
    #[arg(long)]
    pub one_order: bool,
    /// Run all votes even when the majority is already settled.
    #[arg(long)]
    pub no_early_stop: bool,
    /// Sampling temperature [default: 0 (greedy) with one vote; with more votes, 0 means 0.7
    /// (gramrr_judge::DEFAULT_VOTE_TEMPERATURE), as in the server and the pipeline].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Longest rationale, in tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Seed for sampling and for one-order placement. Each pair's generations depend only on
    /// the seed and the pair's text, never on batch composition.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl JudgeOptions {
    pub fn config(&self) -> JudgeConfig {
        // The judge turns a greedy temperature into its vote temperature when votes > 1.
        let temperature = self.temperature.unwrap_or(0.0);
        JudgeConfig {
            mode: self.mode,
            both_orders: !self.one_order,
            votes: self.votes,
            early_stop: !self.no_early_stop,
            sampling: SamplingParams {
                max_new_tokens: self.max_new_tokens,
                temperature,
                top_p: self.top_p,
                seed: self.seed,
                ..SamplingParams::default()
            },
        }
    }

    /// What a remote server must offer for this mode: generation for rationales, log-probs
    /// for label probabilities.
    pub fn needs(&self) -> gramrr_remote::Needs {
        gramrr_remote::Needs {
            generate: self.mode != JudgeMode::Prob,
            score: false,
            labels: self.mode != JudgeMode::Reason,
        }
    }

    pub fn build(&self, backend: Arc<dyn Backend>) -> Result<PairwiseJudge> {
        let template = JudgeTemplate::resolve(&self.template).with_context(|| format!("judge template {:?}", self.template))?;
        let config = self.config();
        config.validate()?;
        Ok(PairwiseJudge::new(backend, template, config))
    }
}

/// The model behind every judge command.
pub(crate) fn load_backend(model: &ModelArgs, judge: &JudgeOptions) -> Result<Arc<dyn Backend>> {
    model.backend(judge.needs())
}

/// Where the records come from: any format the data crate reads.
#[derive(Args, Clone, Debug)]
pub struct InputArgs {
    /// Input files or directories (JSONL, JSON, Parquet, .gz; any supported format, detected
    /// from the first record unless --format is given).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// The input format, when detection is not wanted (see `gramrr data formats`).
    #[arg(long)]
    pub format: Option<Format>,
    /// Step over malformed records (reported on stderr) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
}

impl InputArgs {
    fn options(&self) -> ReadOptions {
        ReadOptions { format: self.format, skip_bad: self.skip_bad, keep_ties: false }
    }
    fn report<T>(&self, loaded: &formats::Loaded<T>, what: &str) {
        for e in &loaded.skipped {
            eprintln!("skipped: {e}");
        }
        eprintln!(
            "read {} {what} from {} file(s) ({} skipped, {} dropped)",
            loaded.records.len(),
            loaded.files.len(),
            loaded.skipped.len(),
            loaded.dropped
        );
    }
}

fn read_pairs(input: &InputArgs) -> Result<Vec<PreferencePair>> {
    let loaded = formats::load_pairs(&input.input, &input.options())?;
    input.report(&loaded, "pairs");
    Ok(loaded.records)
}

fn read_lists(input: &InputArgs) -> Result<Vec<CandidateList>> {
    let loaded = formats::load_candidates(&input.input, &input.options())?;
    input.report(&loaded, "candidate lists");
    Ok(loaded.records)
}

#[derive(Args)]
#[command(after_long_help = "Output: one JSON object per pair, in input order: id, label (\"A\", \"B\" or null), \
p_a (P(A better)), consistent (both orders agree; null with --one-order), gold and correct when the input \
has labels, votes, failure (why there is no label), judgments (each order and vote: rationale, parsed label \
or parse failure, probability, tokens, seconds) and usage. A summary (accuracy, position bias, failures by \
kind, tokens, time) goes to stderr and to --summary.\n\n\
Example: gramrr judge --model ./GRAM-RR-LLaMA-3.2-3B --input pairs.jsonl --output verdicts.jsonl --votes 5")]
pub struct JudgeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Verdicts, one JSON object per line.
    #[arg(long)]
    pub output: PathBuf,
    /// Also write the summary JSON here.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Pairs handed to the engine per batch (each is also a progress step).
    #[arg(long, default_value_t = 64)]
    pub chunk_size: usize,
    #[command(flatten)]
    pub judge: JudgeOptions,
}

pub fn judge(a: JudgeArgs) -> Result<()> {
    let pairs = read_pairs(&a.input)?;
    let model = a.model.connect(a.judge.needs())?;
    let judge = a.judge.build(model.backend.clone())?;
    let mut out = JsonlWriter::create(&a.output)?;
    let pb = progress_bar(pairs.len() as u64, "judging");
    let mut verdicts = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(a.chunk_size.max(1)) {
        let inputs: Vec<PairInput> = chunk.iter().map(PairInput::from_pair).collect();
        let vs = judge.judge_batch(&inputs)?;
        for (p, v) in chunk.iter().zip(&vs) {
            out.write(&json!({
                "id": p.id,
                "label": v.label,
                "p_a": v.p_a,
                "consistent": v.consistent,
                "gold": p.label,
                "correct": p.label.filter(|l| *l != gramrr_data::Label::Tie).map(|g| v.label == Some(g)),
                "votes": v.votes,
                "failure": v.failure(),
                "judgments": v.judgments,
                "usage": v.usage,
            }))?;
        }
        pb.set_message(model.label("judging"));
        pb.inc(chunk.len() as u64);
        verdicts.extend(vs);
    }
    pb.finish_and_clear();
    out.finish()?;
    let gold: Vec<_> = pairs.iter().map(|p| p.label).collect();
    let summary = JudgeSummary::new(&verdicts, &gold);
    let text = serde_json::to_string_pretty(&json!({
        "model": judge.backend().name(),
        "template": judge.template.name,
        "config": judge.config,
        "summary": summary,
    }))?;
    eprintln!("{text}");
    if let Some(p) = &a.summary {
        std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[derive(Args)]
#[command(after_long_help = "Strategies: linear (the paper's: the current best meets each remaining candidate, \
n-1 comparisons), knockout (single elimination with byes, each round one batch, n-1 comparisons), sort (a \
full ranking by merge sort), selection (a full ranking by repeated knockout, results cached), round-robin \
(every pair, or --opponents K per candidate, fitted to Bradley-Terry scores).\n\n\
Output: one JSON object per list: id, best, ranking (best first), scores (Bradley-Terry log-strength for \
round-robin; n-1-position for sort and selection; wins for linear and knockout), win_rate, wins, \
comparisons, rounds, matches, usage, and best_is_marked / best_is_correct when the input says which is best \
or which are correct.\n\n\
Example: gramrr rank --model ./GRAM-RR-LLaMA-3.2-3B --input lists.jsonl --strategy knockout --output ranks.jsonl")]
pub struct RankArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// linear, knockout, sort, selection or round-robin.
    #[arg(long, default_value = "linear")]
    pub strategy: StrategyKind,
    /// With round-robin: opponents per candidate (a sparse design) instead of all.
    #[arg(long)]
    pub opponents: Option<usize>,
    /// Rankings, one JSON object per line.
    #[arg(long)]
    pub output: PathBuf,
    /// Also write the summary JSON here.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Lists ranked together (each round of all of them is one engine batch).
    #[arg(long, default_value_t = 16)]
    pub chunk_size: usize,
    #[command(flatten)]
    pub judge: JudgeOptions,
}

pub fn rank(a: RankArgs) -> Result<()> {
    let mut strategy = a.strategy;
    if let Some(k) = a.opponents {
        match &mut strategy {
            StrategyKind::RoundRobin { opponents } => *opponents = Some(k),
            _ => anyhow::bail!("--opponents only applies to --strategy round-robin"),
        }
    }
    let lists = read_lists(&a.input)?;
    let judge = a.judge.build(load_backend(&a.model, &a.judge)?)?;
    let ranker = ListRanker::new(judge, strategy);
    let mut out = JsonlWriter::create(&a.output)?;
    let pb = progress_bar(lists.len() as u64, "ranking");
    let (mut comparisons, mut marked, mut marked_hit, mut graded, mut graded_hit) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut usage = gramrr_judge::Usage::default();
    for chunk in lists.chunks(a.chunk_size.max(1)) {
        let inputs: Vec<RankInput> = chunk.iter().map(RankInput::from_list).collect();
        let outcomes = ranker.rank_batch(&inputs)?;
        for (list, o) in chunk.iter().zip(&outcomes) {
            let best = o.ranking.best;
            let best_is_marked = list.best.map(|b| b == best);
            let best_is_correct = list.correct.as_ref().and_then(|c| c.get(best).copied());
            comparisons += o.ranking.comparisons;
            usage += o.usage;
            if let Some(h) = best_is_marked {
                marked += 1;
                marked_hit += h as usize;
            }
            if let Some(h) = best_is_correct {
                graded += 1;
                graded_hit += h as usize;
            }
            let mut v = serde_json::to_value(o)?;
            v["best_is_marked"] = json!(best_is_marked);
            v["best_is_correct"] = json!(best_is_correct);
            out.write(&v)?;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    out.finish()?;
    let rate = |hit: usize, n: usize| (n > 0).then(|| hit as f64 / n as f64);
    let text = serde_json::to_string_pretty(&json!({
        "model": ranker.judge.backend().name(),
        "template": ranker.judge.template.name,
        "strategy": strategy.name(),
        "config": ranker.judge.config,
        "lists": lists.len(),
        "comparisons": comparisons,
        "best_matches_marked": rate(marked_hit, marked),
        "best_is_correct": rate(graded_hit, graded),
        "usage": usage,
    }))?;
    eprintln!("{text}");
    if let Some(p) = &a.summary {
        std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
