//! `gramrr eval ...` (in progress).
use clap::Subcommand;

#[derive(Subcommand)]
pub enum EvalCommand {}

pub fn run(c: EvalCommand) -> anyhow::Result<()> {
    match c {}
}
