//! `gramrr pipeline ...` and `gramrr demo` (in progress).
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum PipelineCommand {}
#[derive(Args)]
pub struct DemoArgs {}

pub fn run(c: PipelineCommand) -> anyhow::Result<()> {
    match c {}
}
pub fn demo(_a: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("gramrr demo is not implemented yet")
}
