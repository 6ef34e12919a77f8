//! `gramrr pipeline ...` (the GRAM-R² training recipe, stage by stage or all at once) and
//! `gramrr demo` (the whole method in a built-in synthetic world, from scratch, on CPU).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use gramrr_pipeline::demo::{run_demo, DemoOptions, DemoSize};
use gramrr_pipeline::{Pipeline, PipelineConfig, Shard};

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Run every stage of CONFIG.toml in order: prover, synth, reward model, self-training
    /// iterations, final fine-tune, and the optional baseline, control, adaptation and
    /// evaluation. Writes everything to the config's run_dir.
    Run(RunArgs),
    /// Stage 1: train the preference-proving model π_ψ on the human rationales (proof form).
    Prover(ConfigArg),
    /// Stage 2: sample k proofs per labeled pair, score them with Eq. 5, filter and select.
    Synth(ShardArgs),
    /// Stage 3: train the initial reward model π_φ on the synthesized rationales.
    RewardModel(ConfigArg),
    /// Stage 4a: pseudo-label iteration I's batch of unlabeled pairs (vote + threshold).
    PseudoLabel(IterShardArgs),
    /// Stage 4b: proofs for iteration I's kept pseudo-labels, through the rule filters.
    Prove(IterShardArgs),
    /// Stage 4c: retrain the reward model on everything synthesized up to iteration I.
    Retrain(IterArgs),
    /// Stage 5a: fine-tune the last reward model on the human rationale data.
    Final(ConfigArg),
    /// Stage 5b: task adaptation on [adapt] data (proofs are synthesized for pairs without a
    /// rationale).
    Adapt(ConfigArg),
    /// The vanilla generative RM: the backbone trained on the human rationales only.
    Baseline(ConfigArg),
    /// The compute-matched control: the initial RM trained on its own data for as many extra
    /// steps as self-training used.
    Control(ConfigArg),
    /// Merge the shard outputs of a generation stage (synth, iterI/pseudo, iterI/prove,
    /// adapt/synth) after every shard has finished; fails naming the missing items otherwise.
    Merge(MergeArgs),
    /// Print the run's stages with their status, time and statistics (JSON).
    Status(ConfigArg),
}

#[derive(Args)]
pub struct ConfigArg {
    /// The pipeline configuration (TOML; see examples/pipeline.toml). A stage command continues
    /// the run in the config's run_dir, skipping what is already done.
    pub config: PathBuf,
}

#[derive(Args)]
pub struct RunArgs {
    /// The pipeline configuration (TOML; see examples/pipeline.toml).
    pub config: PathBuf,
    /// Continue the run already in run_dir: finished stages are skipped, an interrupted stage
    /// resumes at the chunk or checkpoint it reached. Without it an existing run is an error.
    #[arg(long)]
    pub resume: bool,
    /// A model trained elsewhere for a training stage, e.g. `--stage-model rm=/ckpt/rm`
    /// (repeatable). DIR holds an HF checkpoint (config.json + safetensors, same architecture
    /// and vocabulary as the stage's starting model) or a PEFT LoRA adapter, which is merged.
    /// The stage is recorded from it instead of training. Stages: prover, rm, iterI/rm, final,
    /// baseline, control/roundJ, adapt/train. Get their data with `gramrr export-sft`.
    #[arg(long, value_name = "STAGE=DIR")]
    pub stage_model: Vec<String>,
}

/// `gramrr export-sft`: write a training stage's data and settings without training.
#[derive(Args)]
#[command(after_long_help = "\
Writes OUT/tokens.jsonl (exact token ids, completion mask, loss weights), OUT/schedule.json \
(gramrr's micro-batch order), OUT/prompt_completion.jsonl and OUT/messages.jsonl (TRL), \
OUT/llamafactory/ (dataset_info.json, alpaca and sharegpt files, train.json), \
OUT/train_config.json (every hyperparameter) and OUT/README.md (the fields, and what each \
format loses). The stages before STAGE must be done; STAGE itself must not be.

Train elsewhere, e.g. `accelerate launch tools/trl_sft.py --data OUT --model BASE --out CKPT`, \
then bring the model back: `gramrr pipeline run CONFIG --resume --stage-model STAGE=CKPT`.")]
pub struct ExportSftArgs {
    /// The pipeline configuration (TOML; see examples/pipeline.toml).
    pub config: PathBuf,
    /// The training stage: prover, rm, iterI/rm, final, baseline, control/round1 or adapt/train.
    #[arg(long)]
    pub stage: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// Parses `--stage-model STAGE=DIR` values.
fn stage_models(specs: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut out = std::collections::BTreeMap::new();
    for s in specs {
        let Some((stage, dir)) = s.split_once('=') else {
            anyhow::bail!("--stage-model {s:?}: expected STAGE=DIR");
        };
        if !gramrr_pipeline::external_train::is_training_stage(stage) {
            anyhow::bail!("--stage-model {s:?}: {stage:?} is not a training stage (prover, rm, iterI/rm, final, baseline, control/roundJ, adapt/train)");
        }
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            anyhow::bail!("--stage-model {s:?}: {} is not a directory", dir.display());
        }
        out.insert(stage.to_string(), dir.canonicalize()?);
    }
    Ok(out)
}

pub fn export_sft(a: ExportSftArgs) -> anyhow::Result<()> {
    use gramrr_pipeline::PipelineError;
    let stage = a.stage.as_str();
    if !gramrr_pipeline::external_train::is_training_stage(stage) {
        anyhow::bail!("--stage {stage:?}: not a training stage (prover, rm, iterI/rm, final, baseline, control/round1, adapt/train)");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut p = owner(&a.config)?;
    p.export_stage = Some((stage.to_string(), a.out.canonicalize()?));
    let iteration = |s: &str| s.strip_prefix("iter").and_then(|s| s.strip_suffix("/rm")).and_then(|n| n.parse::<usize>().ok());
    let result = match stage {
        "prover" => p.stage_prover().map(Some),
        "rm" => p.stage_reward_model().map(Some),
        "final" => p.stage_final().map(Some),
        "baseline" => p.stage_baseline().map(Some),
        "adapt/train" => p.stage_adapt(),
        s if s.starts_with("control/") => p.stage_control().map(Some),
        s => p.stage_retrain(iteration(s).expect("checked above")).map(Some),
    };
    match result {
        Err(PipelineError::Exported(summary)) => print_json(&summary),
        Err(e) => Err(e.into()),
        Ok(_) => anyhow::bail!(
            "stage {stage} is already done in {}: its data was not written again (export before training, or use a new run_dir)",
            p.cfg.run_dir.display()
        ),
    }
}

#[derive(Args)]
pub struct ShardArgs {
    pub config: PathBuf,
    /// Compute only chunks c with c % n == i (e.g. 0/4), writing parts/shard-i-of-n.jsonl; run
    /// `gramrr pipeline merge` when every shard is done. Default: the whole stage, merged.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

#[derive(Args)]
pub struct IterShardArgs {
    pub config: PathBuf,
    /// Self-training iteration (1-based).
    #[arg(long)]
    pub iteration: usize,
    /// Compute only chunks c with c % n == i (see `synth --shard`). Default: the whole stage.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

#[derive(Args)]
pub struct IterArgs {
    pub config: PathBuf,
    /// Self-training iteration (1-based).
    #[arg(long)]
    pub iteration: usize,
}

#[derive(Args)]
pub struct MergeArgs {
    pub config: PathBuf,
    /// The stage to merge: synth, iterI/pseudo, iterI/prove or adapt/synth.
    #[arg(long)]
    pub stage: String,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Output directory: data/, run/ (every stage, with its manifest), report.json, report.md
    /// and accuracy.png.
    #[arg(long)]
    pub out: PathBuf,
    /// A smaller world that finishes in 1 to 2.5 minutes on 2 cores (69 s on an AMD EPYC, 151 s on
    /// an Intel Xeon) with the same report, as a smoke run:
    /// its backbone is too briefly trained to compute, so the accuracies stay near chance. It
    /// shows that every stage runs, not that the method works.
    #[arg(long)]
    pub quick: bool,
    /// Seeds everything: data, initialisation, batch order, sampling. Same seed, same report.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue a demo already in --out (finished stages are skipped).
    #[arg(long)]
    pub resume: bool,
    /// Size of the world: full, quick or tiny (tiny is for tests: plumbing, not results).
    /// Overrides --quick.
    #[arg(long, hide = true)]
    pub size: Option<String>,
    /// Run nothing: read the report.json of finished demos in these folders (one per seed) and
    /// write one accuracy.png over all of them into --out: bars at the mean, each seed a dot, its
    /// spread (min to max) a whisker. `bash tools/bench_demo.sh 0 1 2` does this for BENCHMARKS.md.
    #[arg(long, num_args = 1.., value_name = "DEMO_DIR")]
    pub combine: Vec<PathBuf>,
    /// Train every stage with this command instead of the built-in trainer (placeholders as in
    /// `[train] command`, it runs in --out), e.g.
    /// "python3 /path/to/gramrr/tools/trl_sft.py --data {data} --model {model} --out {out}".
    #[arg(long, value_name = "COMMAND")]
    pub train_command: Option<String>,
    /// Skip the last act. By default, after the reward models, the demo trains a policy with
    /// GRPO three times (rewarded by GRAM-R², the vanilla RM and the gold verifier) from a
    /// checkpoint with a careless habit, and reports gold accuracy before and after, gold and
    /// proxy reward over the steps and best-of-n curves in OUT/rl/report.md and rl.png (about
    /// 2.5 minutes on 2 cores)
    #[arg(long)]
    pub no_rl: bool,
}

fn load(config: &Path) -> anyhow::Result<PipelineConfig> {
    PipelineConfig::from_file(config).with_context(|| format!("reading {}", config.display()))
}

fn owner(config: &Path) -> anyhow::Result<Pipeline> {
    Ok(Pipeline::open(load(config)?, config, true)?)
}

fn with_shard(config: &Path, shard: Option<Shard>) -> anyhow::Result<Pipeline> {
    match shard {
        None => owner(config),
        Some(s) => Ok(Pipeline::open_worker(load(config)?, config, s)?),
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn run(c: PipelineCommand) -> anyhow::Result<()> {
    match c {
        PipelineCommand::Run(a) => {
            let models = stage_models(&a.stage_model)?;
            let mut p = Pipeline::open(load(&a.config)?, &a.config, a.resume)?;
            p.stage_models = models;
            let summary = p.run_all()?;
            print_json(&summary)?;
        }
        PipelineCommand::Prover(a) => print_json(&owner(&a.config)?.stage_prover()?)?,
        PipelineCommand::Synth(a) => {
            if let Some(r) = with_shard(&a.config, a.shard)?.stage_synth()? {
                print_json(&r)?;
            }
        }
        PipelineCommand::RewardModel(a) => print_json(&owner(&a.config)?.stage_reward_model()?)?,
        PipelineCommand::PseudoLabel(a) => {
            if let Some(r) = with_shard(&a.config, a.shard)?.stage_pseudo(a.iteration)? {
                print_json(&r)?;
            }
        }
        PipelineCommand::Prove(a) => {
            if let Some(r) = with_shard(&a.config, a.shard)?.stage_prove(a.iteration)? {
                print_json(&r)?;
            }
        }
        PipelineCommand::Retrain(a) => print_json(&owner(&a.config)?.stage_retrain(a.iteration)?)?,
        PipelineCommand::Final(a) => print_json(&owner(&a.config)?.stage_final()?)?,
        PipelineCommand::Adapt(a) => match owner(&a.config)?.stage_adapt()? {
            Some(r) => print_json(&r)?,
            None => anyhow::bail!("{}: [adapt] data is not set", a.config.display()),
        },
        PipelineCommand::Baseline(a) => print_json(&owner(&a.config)?.stage_baseline()?)?,
        PipelineCommand::Control(a) => print_json(&owner(&a.config)?.stage_control()?)?,
        PipelineCommand::Merge(a) => print_json(&owner(&a.config)?.merge(&a.stage)?)?,
        PipelineCommand::Status(a) => {
            let cfg = load(&a.config)?;
            let run = gramrr_pipeline::run::RunDir::open_existing(&cfg.run_dir)?;
            print_json(&run.manifest.stages)?;
        }
    }
    Ok(())
}

pub fn demo(a: DemoArgs) -> anyhow::Result<()> {
    if !a.combine.is_empty() {
        let mut reports = Vec::new();
        for dir in &a.combine {
            let path = dir.join("report.json");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {} (is the demo there finished?)", path.display()))?;
            let report: gramrr_pipeline::demo::report::Report =
                serde_json::from_str(&text).with_context(|| format!("{}: not a demo report", path.display()))?;
            reports.push(report);
        }
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
        let png = a.out.join("accuracy.png");
        gramrr_pipeline::demo::report::plot_accuracy_seeds(&reports, &png)?;
        eprintln!("wrote {} ({} seeds)", png.display(), reports.len());
        return Ok(());
    }
    let size = match a.size.as_deref() {
        None if a.quick => DemoSize::Quick,
        None => DemoSize::Full,
        Some("full") => DemoSize::Full,
        Some("quick") => DemoSize::Quick,
        Some("tiny") => DemoSize::Tiny,
        Some(o) => anyhow::bail!("--size {o:?}: expected full, quick or tiny"),
    };
    let report = run_demo(&DemoOptions { out: a.out.clone(), seed: a.seed, size, resume: a.resume, train_command: a.train_command, rl: !a.no_rl })
        .with_context(|| format!("demo in {}", a.out.display()))?;
    println!("{}", report.to_markdown());
    if !a.no_rl {
        let md = a.out.join("rl").join("report.md");
        println!("{}", std::fs::read_to_string(&md).with_context(|| format!("reading {}", md.display()))?);
    }
    Ok(())
}
