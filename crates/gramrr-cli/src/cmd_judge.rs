//! `gramrr judge` and `gramrr rank` (in progress).
use clap::Args;

#[derive(Args)]
pub struct JudgeArgs {}
#[derive(Args)]
pub struct RankArgs {}

pub fn judge(_a: JudgeArgs) -> anyhow::Result<()> {
    anyhow::bail!("gramrr judge is not implemented yet")
}
pub fn rank(_a: RankArgs) -> anyhow::Result<()> {
    anyhow::bail!("gramrr rank is not implemented yet")
}
