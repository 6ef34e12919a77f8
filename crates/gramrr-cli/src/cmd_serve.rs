//! `gramrr serve` (in progress).
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {}

pub fn serve(_a: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("gramrr serve is not implemented yet")
}
