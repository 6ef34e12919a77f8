//! Throwaway: training and generation speed of demo-sized models (for sizing the demo).
use std::time::Instant;

use gramrr_model::backend::SamplingParams;
use gramrr_model::init::{char_tokenizer_with_tokens, random_weights, InitSpec};
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::{Architecture, Decoder, Engine, LoadOptions};
use gramrr_train::{train_sft, SftConfig, SftExample, Silent};

fn main() -> anyhow::Result<()> {
    gramrr_model::tune_allocator();
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (hidden, layers, seq, batch, gen_batch) = (args[0], args[1], args[2], args[3], args[4]);
    let tok = char_tokenizer_with_tokens("0123456789+-=?:.,* ABQIisthewranoyk\n", &["<think>", "</think>", "<answer>", "</answer>"])?;
    let mut spec = InitSpec::tiny(Architecture::Qwen3);
    spec.hidden_size = hidden;
    spec.intermediate_size = hidden * 3;
    spec.num_hidden_layers = layers;
    spec.num_attention_heads = 4;
    spec.num_key_value_heads = 4;
    let cfg = spec.config(&tok);
    let dec = Decoder::load(&cfg, &random_weights(&cfg, 0.02, 0)?)?;
    let mut ttok = TextTokenizer::from_tokenizer(tok.clone(), "mem".into());
    ttok.eos_token_id = tok.token_to_id("<|im_end|>");
    let examples: Vec<SftExample> = (0..512)
        .map(|i| SftExample::new((0..seq / 2).map(|j| ((i + j) % 30 + 5) as u32).collect(), (0..seq / 2).map(|j| ((i * 3 + j) % 30 + 5) as u32).collect()))
        .collect();
    let sft = SftConfig { max_steps: Some(15), batch_size: batch, lr: 1e-3, ..Default::default() };
    let t = Instant::now();
    let (dec, rep) = train_sft(dec, &ttok, &examples, &sft, None, &mut Silent)?;
    println!("train: {:.1}s for 15 steps, {:.0} tok/s (report {:.0})", t.elapsed().as_secs_f64(), (15 * batch * seq) as f64 / t.elapsed().as_secs_f64(), rep.tokens_per_sec);
    let engine = Engine::from_parts(dec, ttok, "mem".into(), &LoadOptions { batch_size: gen_batch, max_batch_tokens: 1 << 20, ..Default::default() })?;
    let prompts: Vec<Vec<u32>> = (0..gen_batch).map(|i| (0..seq / 2).map(|j| ((i + j) % 30 + 5) as u32).collect()).collect();
    let offs: Vec<u64> = (0..gen_batch as u64).collect();
    let params = SamplingParams { max_new_tokens: seq / 2, temperature: 1.0, ignore_eos: true, ..Default::default() };
    let t = Instant::now();
    let out = engine.generate_ids(&prompts, &offs, &params)?;
    let n: usize = out.iter().map(|o| o.token_ids.len()).sum();
    println!("generate: {n} tokens in {:.1}s = {:.0} tok/s", t.elapsed().as_secs_f64(), n as f64 / t.elapsed().as_secs_f64());
    let items: Vec<(Vec<u32>, Vec<u32>)> = prompts.iter().map(|p| (p.clone(), p.clone())).collect();
    let t = Instant::now();
    let _ = engine.score_ids(&items)?;
    println!("score: {} tokens in {:.2}s", items.len() * seq, t.elapsed().as_secs_f64());
    Ok(())
}
