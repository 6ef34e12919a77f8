//! `gramrr eval <benchmark>` and `gramrr data convert|inspect`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use gramrr_data::formats::{self, Format, Loaded, ReadOptions};
use gramrr_eval::{
    bench, EvalConfig, LengthBaseline, Mode, PairBench, RandomBaseline, Report, ScoresFile, Source,
    SCORES_FILE_HELP,
};
use serde_json::{Map, Value};

const OUTPUTS_HELP: &str = "\
Outputs in --out DIR:
  metrics.json  the benchmark's numbers (percentages, two decimals, as upstream prints them),
                with \"ci95\": 95% bootstrap intervals by metric path
  items.jsonl   one line per item: its decisions (scores, rationales when a judge wrote them)
                and whether it was correct; --resume continues from it after a kill
  report.md     the same numbers as Markdown tables with intervals
  run.json      benchmark and source, checked on --resume";

#[derive(Subcommand)]
pub enum EvalCommand {
    /// JudgeBench: objective-correctness pairs (knowledge, reasoning, math, coding).
    ///
    /// Scores either a judge-output file published by JudgeBench (--judgments), or the pairs
    /// (--data) with a source. Single game: a pair is correct when the (A, B) decision equals the
    /// label; a reward model decides A>B only when score A > score B, so a tie goes to B. Double
    /// game: judged as (A, B) and (B, A), the second flipped back; +1 for the label, -1 for the
    /// opposite, 0 for a tie or no verdict; correct when the sum is positive. Categories come from
    /// the pair's source; overall is pooled over pairs.
    ///
    /// Example: gramrr eval judgebench --judgments 'outputs/...Skywork-Reward-Llama-3.1-8B.jsonl'
    /// --mode single --out runs/jb
    #[command(after_long_help = format!("{OUTPUTS_HELP}\n\n{SCORES_FILE_HELP}"))]
    Judgebench(JudgeBenchArgs),
    /// RM-Bench: 3 chosen × 3 rejected styles; easy / normal / hard per domain.
    ///
    /// M[i][j] = 1 when chosen i beats rejected j strictly (a tie is wrong); hard = upper
    /// triangle (plainer chosen vs fancier rejected), normal = diagonal, easy = lower triangle.
    /// Safety pools safety-refuse and safety-response. Only the domains in the given files are
    /// reported; overall averages them.
    ///
    /// Example: gramrr eval rm-bench --data benchdata/rm-bench --baseline length --out runs/rmb
    #[command(after_long_help = format!("{OUTPUTS_HELP}\n\n{SCORES_FILE_HELP}"))]
    RmBench(BenchArgs),
    /// RewardBench: per-subset accuracy, sections weighted by upstream's example counts.
    ///
    /// Reads the RewardBench "filtered" split (Parquet, JSON or JSONL) and also the original
    /// LLMBar files, which are its llmbar-* subsets. Score = mean of the sections present
    /// (sections with no data are listed in missing_sections rather than counted as 0).
    #[command(after_long_help = format!("{OUTPUTS_HELP}\n\n{SCORES_FILE_HELP}"))]
    Rewardbench(BenchArgs),
    /// LLMBar: accuracy on the Natural and Adversarial sets, per set and pooled.
    #[command(after_long_help = format!("{OUTPUTS_HELP}\n\n{SCORES_FILE_HELP}"))]
    Llmbar(BenchArgs),
    /// Anthropic HH-RLHF: accuracy of score(chosen) > score(rejected) on the final turns.
    #[command(after_long_help = format!("{OUTPUTS_HELP}\n\n{SCORES_FILE_HELP}"))]
    HhRlhf(BenchArgs),
    /// RMB: pairwise accuracy and best-of-N accuracy (the best must beat every loser).
    ///
    /// Pairwise_set and BoN_set files can be given together; each is reported on its own.
    #[command(after_long_help = format!("{OUTPUTS_HELP}\n\n{SCORES_FILE_HELP}"))]
    Rmb(BenchArgs),
    /// PPE best-of-K: accuracy of the top-ranked of the first K samples, K = 1..32, as a curve.
    ///
    /// Writes best_of_k.png beside metrics.json. A scalar source ranks by score (earliest on a
    /// tie). A pairwise judge (--model) ranks by a running champion: each next sample challenges
    /// the current pick and replaces it only when the judge prefers it (K-1 comparisons per item).
    #[command(after_long_help = format!("{OUTPUTS_HELP}\n\n{SCORES_FILE_HELP}"))]
    Ppe(BenchArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Baseline {
    /// Score = response length in Unicode characters.
    Length,
    /// Score = a uniform number fixed by (--seed, item id, response key).
    Random,
}

#[derive(Args)]
pub struct SourceArgs {
    /// Scores from any reward model: JSONL keyed by item id and response key (format below).
    #[arg(long, value_name = "S.jsonl", group = "source")]
    pub scores: Option<PathBuf>,
    /// A built-in baseline scorer.
    #[arg(long, value_enum, group = "source")]
    pub baseline: Option<Baseline>,
    /// A gramrr judge model directory (HF layout), judged live; or its OpenAI-compatible
    /// servers, `http://host:port/v1[,http://…]` (then give --tokenizer).
    #[arg(long, value_name = "DIR|URL", group = "source")]
    pub model: Option<PathBuf>,
    /// With a server --model: the model's tokenizer directory, `org/name` or `.gguf` file
    /// [default: the served model's name where that is a .gguf file on this machine].
    #[arg(long, requires = "model")]
    pub tokenizer: Option<String>,
    /// With a server --model: the served model name [default: the first /v1/models lists].
    #[arg(long, requires = "model")]
    pub served_model: Option<String>,
    /// With --model: the judge format, a preset (gram-rr, mt-bench, rm-r1, rrm, compact for
    /// `gramrr demo` models) or a template file, as in `gramrr judge --template`.
    #[arg(long, default_value = "gram-rr", requires = "model")]
    pub template: String,
    /// Write the responses to score (id, response key, prompt, text) as JSONL to FILE and exit:
    /// the input for scoring with another tool, whose output goes back in with --scores.
    #[arg(long, value_name = "FILE")]
    pub write_requests: Option<PathBuf>,
}

#[derive(Args)]
pub struct RunArgs {
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "write_requests")]
    pub out: Option<PathBuf>,
    /// Seed of the random baseline, of the judge's position shuffling and of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bootstrap resamples for the 95% intervals (0 for none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Items sent to the source at once, and written to items.jsonl together.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Continue an interrupted run from DIR/items.jsonl (same benchmark, source and mode).
    #[arg(long)]
    pub resume: bool,
    /// Step over bad records, report how many, and score the rest (default: stop at the first).
    #[arg(long)]
    pub skip_bad: bool,
    /// The data format, when detection from the first record's fields is not wanted.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<Format>,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Data files or directories (walked for .json, .jsonl, .jsonl.gz and .parquet files).
    #[arg(long, value_name = "FILE_OR_DIR", num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args)]
pub struct JudgeBenchArgs {
    /// JudgeBench judge-output files (pairs plus recorded judgments): the recorded decisions are
    /// scored, no source needed.
    #[arg(long, value_name = "JUDGEBENCH_OUTPUT.jsonl", num_args = 1.., conflicts_with_all = ["data", "scores", "baseline", "model"], required_unless_present = "data")]
    pub judgments: Vec<PathBuf>,
    /// JudgeBench pair files, to be decided by a source.
    #[arg(long, value_name = "PAIRS.jsonl", num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// single or double game. [default: single for scores and baselines; double for judgment
    /// files that hold both orders, and for --model]
    #[arg(long, value_name = "MODE")]
    pub mode: Option<Mode>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(c: EvalCommand) -> anyhow::Result<()> {
    match c {
        EvalCommand::Judgebench(a) => judgebench(a),
        EvalCommand::RmBench(a) => {
            let loaded = formats::load_rm_bench(&a.data, &read_opts(&a.run))?;
            let extra = note_skipped(&loaded);
            let tasks = bench::rm_bench::tasks(&loaded.records);
            with_source(&a.source, &a.run, &tasks, extra, |src, cfg| gramrr_eval::eval_rm_bench(&loaded.records, src, cfg))
        }
        EvalCommand::Rewardbench(a) => pairwise(PairBench::RewardBench, a),
        EvalCommand::Llmbar(a) => pairwise(PairBench::LlmBar, a),
        EvalCommand::HhRlhf(a) => pairwise(PairBench::HhRlhf, a),
        EvalCommand::Rmb(a) => {
            let opts = read_opts(&a.run);
            let loaded = formats::load_any(&a.data, &opts)?;
            let extra = note_skipped(&loaded);
            let (mut pairs, mut lists) = (Vec::new(), Vec::new());
            for r in loaded.records {
                match r {
                    formats::AnyRecord::Pair(p) => pairs.push(p),
                    formats::AnyRecord::Candidates(c) => lists.push(c),
                }
            }
            let tasks = bench::rmb::tasks(&pairs, &lists)?;
            with_source(&a.source, &a.run, &tasks, extra, |src, cfg| gramrr_eval::eval_rmb(&pairs, &lists, src, cfg))
        }
        EvalCommand::Ppe(a) => {
            let loaded = formats::load_candidates(&a.data, &read_opts(&a.run))?;
            let extra = note_skipped(&loaded);
            let tasks = bench::ppe::tasks(&loaded.records);
            with_source(&a.source, &a.run, &tasks, extra, |src, cfg| gramrr_eval::eval_ppe(&loaded.records, src, cfg))
        }
    }
}

fn pairwise(b: PairBench, a: BenchArgs) -> anyhow::Result<()> {
    let loaded = formats::load_pairs(&a.data, &read_opts(&a.run))?;
    let extra = note_skipped(&loaded);
    let tasks = bench::pairwise::tasks(b, &loaded.records)?;
    with_source(&a.source, &a.run, &tasks, extra, |src, cfg| gramrr_eval::eval_pairwise(b, &loaded.records, src, cfg))
}

fn judgebench(a: JudgeBenchArgs) -> anyhow::Result<()> {
    let opts = read_opts(&a.run);
    if !a.judgments.is_empty() {
        let loaded = formats::load_judgebench_outputs(&a.judgments, &opts)?;
        let extra = note_skipped(&loaded);
        let cfg = config(&a.run, extra)?;
        let report = gramrr_eval::eval_judgebench_outputs(&loaded.records, a.mode, &cfg)?;
        return finish(&report);
    }
    let loaded = formats::load_pairs(&a.data, &opts)?;
    let extra = note_skipped(&loaded);
    // Reward models are scored in the single game upstream; judges in the double game.
    let mode = a.mode.unwrap_or(if a.source.model.is_some() { Mode::Double } else { Mode::Single });
    let tasks = bench::judgebench::tasks(&loaded.records, mode)?;
    with_source(&a.source, &a.run, &tasks, extra, |src, cfg| {
        gramrr_eval::eval_judgebench(&loaded.records, src, mode, cfg)
    })
}

fn read_opts(r: &RunArgs) -> ReadOptions {
    ReadOptions { format: r.format, skip_bad: r.skip_bad, keep_ties: false }
}

fn note_skipped<T>(loaded: &Loaded<T>) -> Map<String, Value> {
    let mut extra = Map::new();
    let files: Vec<Value> =
        loaded.files.iter().map(|(p, f)| serde_json::json!({"path": p, "format": f.name()})).collect();
    extra.insert("data".into(), Value::Array(files));
    if !loaded.skipped.is_empty() {
        eprintln!("skipped {} bad record(s); the first: {}", loaded.skipped.len(), loaded.skipped[0]);
        extra.insert("skipped_records".into(), loaded.skipped.len().into());
    }
    if loaded.dropped > 0 {
        extra.insert("dropped_ties".into(), loaded.dropped.into());
    }
    extra
}

fn config(r: &RunArgs, extra: Map<String, Value>) -> anyhow::Result<EvalConfig> {
    let Some(out) = r.out.clone() else { bail!("--out DIR is required") };
    Ok(EvalConfig {
        out: Some(out),
        batch: r.batch,
        resume: r.resume,
        progress: true,
        seed: r.seed,
        bootstrap: r.bootstrap,
        extra,
    })
}

fn with_source(
    s: &SourceArgs,
    r: &RunArgs,
    tasks: &[gramrr_eval::Task],
    extra: Map<String, Value>,
    eval: impl FnOnce(&Source, &EvalConfig) -> Result<Report, gramrr_eval::EvalError>,
) -> anyhow::Result<()> {
    if let Some(path) = &s.write_requests {
        let n = gramrr_eval::write_requests(tasks, path)?;
        eprintln!("wrote {n} responses of {} items to {}", tasks.len(), path.display());
        return Ok(());
    }
    let source = make_source(s, r.seed)?;
    let cfg = config(r, extra)?;
    let report = eval(&source, &cfg)?;
    finish(&report)
}

fn make_source(s: &SourceArgs, seed: u64) -> anyhow::Result<Source> {
    if let Some(p) = &s.scores {
        let file = ScoresFile::open(p).with_context(|| format!("reading scores from {}", p.display()))?;
        return Ok(Source::Scalar(Box::new(file)));
    }
    match s.baseline {
        Some(Baseline::Length) => return Ok(Source::Scalar(Box::new(LengthBaseline))),
        Some(Baseline::Random) => return Ok(Source::Scalar(Box::new(RandomBaseline { seed }))),
        None => {}
    }
    if let Some(dir) = &s.model {
        return model_source(dir, &s.template, s.tokenizer.as_deref(), s.served_model.as_deref());
    }
    bail!("no source: give --scores S.jsonl, --baseline length|random or --model DIR (or --write-requests FILE)")
}

/// The live-model source: the model judges each comparison with the chosen template in
/// `reason` mode (generate a rationale, parse the label), one order per call, greedy, at most
/// 1024 new tokens. The evaluator decides the orders (JudgeBench's double game, seeded random
/// placement elsewhere), so the judge itself does not swap. For votes or probability scoring,
/// run `gramrr judge` and bring its verdicts as scores.
fn model_source(dir: &Path, template: &str, tokenizer: Option<&str>, served_model: Option<&str>) -> anyhow::Result<Source> {
    use gramrr_judge::{JudgeConfig, PairwiseJudge};
    let spec = dir.to_string_lossy().to_string();
    let engine: std::sync::Arc<dyn gramrr_model::Backend> = if gramrr_remote::is_url(&spec) {
        let args = crate::cmd_model::ModelArgs {
            model: spec.clone(),
            tokenizer: tokenizer.map(str::to_string),
            served_model: served_model.map(str::to_string),
            max_in_flight: 16,
            request_timeout: 600,
            dequantize: false,
            dtype: gramrr_model::WeightDType::F32,
            device: Default::default(),
            batch_size: 8,
        };
        args.backend(gramrr_remote::Needs::GENERATE)?
    } else {
        std::sync::Arc::new(
            gramrr_model::Engine::load(&spec, &gramrr_model::LoadOptions::default())
                .with_context(|| format!("loading judge model {}", dir.display()))?,
        )
    };
    let config = JudgeConfig { both_orders: false, ..JudgeConfig::default() };
    let template = gramrr_data::prompt::JudgeTemplate::resolve(template).with_context(|| format!("judge template {template:?}"))?;
    let judge = PairwiseJudge::new(engine, template, config);
    Ok(Source::Judge(Box::new(LiveJudge { judge, name: format!("gramrr judge {}", dir.display()) })))
}

struct LiveJudge {
    judge: gramrr_judge::PairwiseJudge,
    name: String,
}

impl gramrr_eval::PairJudge for LiveJudge {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn judge(&self, pairs: &[gramrr_data::PreferencePair]) -> Result<Vec<gramrr_eval::PairDecision>, gramrr_eval::EvalError> {
        let inputs: Vec<gramrr_judge::PairInput> = pairs.iter().map(gramrr_judge::PairInput::from_pair).collect();
        let verdicts = self
            .judge
            .judge_batch(&inputs)
            .map_err(|e| gramrr_eval::EvalError::Source { source_name: self.name.clone(), message: e.to_string() })?;
        Ok(verdicts
            .into_iter()
            .map(|v| gramrr_eval::PairDecision {
                decision: v.label,
                p_a: Some(v.p_a),
                rationale: v.rationales().into_iter().next(),
                failure: v.failure(),
                ..Default::default()
            })
            .collect())
    }
}

fn finish(report: &Report) -> anyhow::Result<()> {
    let shown: Map<String, Value> = report
        .metrics
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "ci95" | "bootstrap" | "data"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    println!("{}", serde_json::to_string_pretty(&Value::Object(shown))?);
    for p in &report.written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Convert any supported format to gramrr's canonical JSONL (PreferencePair per line; best-of-N
    /// formats give CandidateList lines; RM-Bench records give their 9 chosen-vs-rejected pairs).
    ///
    /// Formats: gramrr, gramrr-candidates, pairs ({prompt, chosen, rejected}), rm-bench,
    /// judgebench, judgebench-output, rewardbench, llmbar, rmb-pairwise, rmb-bon, hh-rlhf,
    /// helpsteer3, ppe-bok. Files: .json, .jsonl, .jsonl.gz, .parquet.
    Convert(ConvertArgs),
    /// Print the detected format and record count of each file.
    Inspect(InspectArgs),
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The input format. [default: detected from each file's first record]
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<Format>,
    /// Input files or directories.
    #[arg(long, value_name = "IN", num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Output JSONL file.
    #[arg(long, value_name = "OUT.jsonl")]
    pub output: PathBuf,
    /// Step over bad records, report how many, and convert the rest.
    #[arg(long)]
    pub skip_bad: bool,
    /// Keep HelpSteer3 ties (overall_preference 0) with label "Tie" (dropped by default).
    #[arg(long)]
    pub keep_ties: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn data(c: DataCommand) -> anyhow::Result<()> {
    match c {
        DataCommand::Convert(a) => {
            let opts = ReadOptions { format: a.format, skip_bad: a.skip_bad, keep_ties: a.keep_ties };
            let loaded = formats::load_any(&a.input, &opts)?;
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(&a.output).with_context(|| format!("creating {}", a.output.display()))?,
            );
            for r in &loaded.records {
                use std::io::Write;
                serde_json::to_writer(&mut out, r)?;
                out.write_all(b"\n")?;
            }
            std::io::Write::flush(&mut out)?;
            if !loaded.skipped.is_empty() {
                eprintln!("skipped {} bad record(s); the first: {}", loaded.skipped.len(), loaded.skipped[0]);
            }
            if loaded.dropped > 0 {
                eprintln!("dropped {} tie(s) (--keep-ties keeps them)", loaded.dropped);
            }
            eprintln!("wrote {} records to {}", loaded.records.len(), a.output.display());
            Ok(())
        }
        DataCommand::Inspect(a) => {
            for file in gramrr_data::read::expand_paths(&a.paths)? {
                let (f, n) = formats::detect_format(&file)?;
                println!("{}", serde_json::json!({"path": file.display().to_string(), "format": f.name(), "records": n}));
            }
            Ok(())
        }
    }
}
