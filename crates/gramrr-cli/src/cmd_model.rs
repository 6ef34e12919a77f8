//! `gramrr init-model`, `train-tokenizer`, `logprobs`, `generate`, `bench` (in progress).
use clap::Args;

#[derive(Args)]
pub struct InitModelArgs {}
#[derive(Args)]
pub struct TrainTokenizerArgs {}
#[derive(Args)]
pub struct LogprobsArgs {}
#[derive(Args)]
pub struct GenerateArgs {}
#[derive(Args)]
pub struct BenchArgs {}

pub fn init_model(_a: InitModelArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
pub fn train_tokenizer(_a: TrainTokenizerArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
pub fn logprobs(_a: LogprobsArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
pub fn generate(_a: GenerateArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
pub fn bench(_a: BenchArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
