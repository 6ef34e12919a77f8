//! `gramrr`: the command-line tool. Each subcommand lives in its own `cmd_*` module; this file
//! only parses the command line and dispatches.

mod cmd_eval;
mod cmd_judge;
mod cmd_model;
mod cmd_pipeline;
mod cmd_serve;
mod cmd_train;
mod io;

use clap::{Parser, Subcommand};

/// gramrr: train, run, evaluate and serve generative reward models that reason (GRAM-R²).
#[derive(Parser)]
#[command(name = "gramrr", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a random model of a given architecture and size, with a tokenizer, in HF layout.
    InitModel(cmd_model::InitModelArgs),
    /// Train a byte-level BPE tokenizer on a text file.
    TrainTokenizer(cmd_model::TrainTokenizerArgs),
    /// Teacher-forced log-probabilities of completions given prompts.
    Logprobs(cmd_model::LogprobsArgs),
    /// Batched generation (greedy or sampled).
    Generate(cmd_model::GenerateArgs),
    /// Training commands.
    #[command(subcommand)]
    Train(cmd_train::TrainCommand),
    /// Merge a LoRA adapter into its base model and write a full HF checkpoint.
    MergeLora(cmd_train::MergeLoraArgs),
    /// Judge preference pairs with a generative reward model.
    Judge(cmd_judge::JudgeArgs),
    /// Rank candidate lists (best-of-n) with a pairwise judge.
    Rank(cmd_judge::RankArgs),
    /// Score reward models on public benchmarks.
    #[command(subcommand)]
    Eval(cmd_eval::EvalCommand),
    /// Convert and inspect preference data files.
    #[command(subcommand)]
    Data(cmd_eval::DataCommand),
    /// Serve a reward model over HTTP (OpenRLHF /get_reward, /v1/judge, /v1/rank).
    Serve(cmd_serve::ServeArgs),
    /// The GRAM-R² training pipeline.
    #[command(subcommand)]
    Pipeline(cmd_pipeline::PipelineCommand),
    /// Write a training stage's data (TRL, LLaMA-Factory and token formats) and hyperparameters
    /// without training, to train it elsewhere and bring the model back with `pipeline run
    /// --resume --stage-model STAGE=DIR`.
    ExportSft(cmd_pipeline::ExportSftArgs),
    /// Run the whole method end to end in a built-in synthetic domain, from scratch, on CPU.
    ///
    /// Builds a seeded world of 2-digit arithmetic preference pairs (a few with human-style
    /// rationales, more with labels only, many unlabeled, 1,000 held out), pretrains a tiny
    /// Qwen3-architecture backbone on domain text, then runs GRAM-R² on it: the preference-proving
    /// model, proof synthesis with Eq. 5, the reward model, three self-training rounds (two at --quick) and the
    /// final fine-tune, beside a vanilla generative RM and a compute-matched control. Then its
    /// last act puts the reward models to work: GRPO on a policy with each of them and with the
    /// gold verifier, and best-of-n curves (skip with --no-rl). Writes OUT/report.md (tables,
    /// targets, a plot), OUT/report.json, OUT/accuracy.png and OUT/rl/ (report.md, rl.png).
    /// The whole demo takes about 18 minutes on 2 cores of an AMD EPYC (1035–1081 s per seed),
    /// the last act's minute included (--quick: about 1.5 minutes there; on a Xeon, before the
    /// last rounds' changes, 2.5).
    /// Interrupted runs continue with --resume.
    Demo(cmd_pipeline::DemoArgs),
    /// Measure engine speed and memory (writes JSON for BENCHMARKS.md).
    Bench(cmd_model::BenchArgs),
    /// Write a model as a GGUF file (f16, q8_0 or q4_k) for llama.cpp and Ollama.
    ExportGguf(cmd_model::ExportGgufArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Demo(_)) && std::env::var_os("GRAMRR_BLAS").is_none() {
        // The demo's models are far too small for a BLAS to matter, and its report is only
        // reproducible under one GEMM (libraries sum in different orders): the gemm crate is the
        // one every machine has. Set before any thread exists, which reading it requires.
        std::env::set_var("GRAMRR_BLAS", "gemm");
    }
    gramrr_model::tune_threads();
    gramrr_model::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tracing::info!("f32 matmuls use {}", gramrr_model::blas::describe());
    match cli.command {
        Command::InitModel(a) => cmd_model::init_model(a),
        Command::TrainTokenizer(a) => cmd_model::train_tokenizer(a),
        Command::Logprobs(a) => cmd_model::logprobs(a),
        Command::Generate(a) => cmd_model::generate(a),
        Command::Bench(a) => cmd_model::bench(a),
        Command::ExportGguf(a) => cmd_model::export_gguf(a),
        Command::Train(c) => cmd_train::run(c),
        Command::MergeLora(a) => cmd_train::merge_lora(a),
        Command::Judge(a) => cmd_judge::judge(a),
        Command::Rank(a) => cmd_judge::rank(a),
        Command::Eval(c) => cmd_eval::run(c),
        Command::Data(c) => cmd_eval::data(c),
        Command::Serve(a) => cmd_serve::serve(a),
        Command::Pipeline(c) => cmd_pipeline::run(c),
        Command::ExportSft(a) => cmd_pipeline::export_sft(a),
        Command::Demo(a) => cmd_pipeline::demo(a),
    }
}
