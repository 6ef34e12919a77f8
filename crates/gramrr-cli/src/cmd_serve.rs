//! `gramrr serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use gramrr_judge::reward::GroupNorm;
use gramrr_judge::StrategyKind;
use gramrr_serve::openai::CompletionModel;
use gramrr_serve::ServeConfig;

use crate::cmd_judge::{load_backend, JudgeOptions};
use crate::cmd_model::ModelArgs;

#[derive(Args)]
#[command(after_long_help = "Endpoints:\n\
  POST /get_reward  OpenRLHF remote reward model: {\"query\": [...], \"prompts\"?: [...], \"labels\"?: [...]} -> \
{\"rewards\", \"scores\", \"extra_logs\"}. A query with a non-empty label is judged against the label as a \
reference response (reward = P(query's response better)); queries without labels that share a prompt are \
judged against each other (round robin, reward = soft win rate). The response is what follows the prompt in \
the query; without prompts the query is split at the last Llama 3 or ChatML assistant header.\n\
  POST /v1/judge    {\"prompt\", \"response_a\", \"response_b\", \"mode\"?, \"votes\"?, \"both_orders\"?}\n\
  POST /v1/rank     {\"prompt\", \"responses\": [...], \"strategy\"?, \"opponents\"?}\n\
  POST /v1/completions, GET /v1/models  the OpenAI API of vLLM and llama.cpp's server (local --model only): \
prompt as text or token ids, max_tokens (0 with echo), temperature, top_p, top_k, seed, stop, n, echo, \
logprobs (<= 20); the openai Python client works unchanged. gramrr's own --model http://... backend uses it.\n\
  GET  /health, GET /metrics (Prometheus)\n\n\
Requests from all clients are combined into engine batches of up to --max-batch items, waiting at most \
--max-wait-ms for more. A full queue answers 503 with Retry-After. Ctrl-C or SIGTERM stops accepting \
connections and finishes the accepted requests.\n\n\
Example: gramrr serve --model ./GRAM-RR-LLaMA-3.2-3B --mode prob --port 5000\n\
then in OpenRLHF: --remote_rm_url http://127.0.0.1:5000/get_reward")]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on. The default accepts only local clients.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` (or `X-API-Key: KEY`) on every endpoint but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Items (pairs, candidates, queries) combined into one engine batch.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// How long to wait for more requests once one has arrived, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub max_wait_ms: u64,
    /// Requests that may wait for the engine; beyond that new ones get 503.
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Largest request body, in bytes (413 beyond).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Longest list in a request: queries, prompts, labels or responses (413 beyond).
    #[arg(long, default_value_t = 4096)]
    pub max_items: usize,
    /// Most votes a /v1/judge request may ask for.
    #[arg(long, default_value_t = 64)]
    pub max_votes: usize,
    /// /v1/rank's strategy when a request names none: linear, knockout, sort, selection, round-robin.
    #[arg(long, default_value = "linear")]
    pub strategy: StrategyKind,
    /// /get_reward: normalise rewards within each prompt group: none, center, zscore or rank.
    /// `scores` always holds the raw [0, 1] values.
    #[arg(long, default_value = "none")]
    pub reward_norm: GroupNorm,
    /// /get_reward: opponents per response within a prompt group [default: all others].
    #[arg(long)]
    pub reward_opponents: Option<usize>,
    #[command(flatten)]
    pub judge: JudgeOptions,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    // A local model also answers the OpenAI routes; a remote one only the judge routes.
    let (backend, completions) = if a.model.is_remote() {
        (load_backend(&a.model, &a.judge)?, None)
    } else {
        let engine = Arc::new(a.model.load()?);
        let name = a.model.served_model.clone().unwrap_or_else(|| a.model.model.clone());
        (engine.clone() as Arc<dyn gramrr_model::Backend>, Some(CompletionModel { engine, name }))
    };
    let judge = a.judge.build(backend)?;
    let config = ServeConfig {
        host: a.host,
        port: a.port,
        api_key: a.api_key,
        max_batch: a.max_batch,
        max_wait: Duration::from_millis(a.max_wait_ms),
        queue: a.queue,
        max_body_bytes: a.max_body_bytes,
        max_items: a.max_items,
        max_votes: a.max_votes,
        strategy: a.strategy,
        reward_norm: a.reward_norm,
        reward_opponents: a.reward_opponents,
    };
    gramrr_serve::run(config, judge, completions)?;
    Ok(())
}
