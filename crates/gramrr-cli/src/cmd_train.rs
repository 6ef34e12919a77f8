//! `gramrr train ...` and `gramrr merge-lora` (in progress).
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum TrainCommand {}
#[derive(Args)]
pub struct MergeLoraArgs {}

pub fn run(c: TrainCommand) -> anyhow::Result<()> {
    match c {}
}
pub fn merge_lora(_a: MergeLoraArgs) -> anyhow::Result<()> {
    anyhow::bail!("gramrr merge-lora is not implemented yet")
}
