//! Times batched generation of a demo-sized decoder (throwaway measurement for planning).
use gramrr_model::backend::SamplingParams;
use gramrr_model::engine::{Engine, LoadOptions};
use gramrr_model::init::{char_tokenizer, InitSpec, random_weights};
use gramrr_model::model::Decoder;
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::Architecture;

fn main() -> anyhow::Result<()> {
    gramrr_model::tune_threads();
    gramrr_model::tune_allocator();
    let tok = char_tokenizer("0123456789+-*=?:. QAB<>/itsanwerIbcdfghjklmopquvxyz\n")?;
    let mut spec = InitSpec::tiny(Architecture::Qwen3);
    spec.hidden_size = 128; spec.intermediate_size = 384; spec.num_hidden_layers = 4; spec.num_attention_heads = 4; spec.num_key_value_heads = 4;
    let cfg = spec.config(&tok);
    let w = random_weights(&cfg, 0.02, 0)?;
    let dec = Decoder::load(&cfg, &w)?;
    let tt = TextTokenizer::from_tokenizer(tok, "mem".into());
    let b: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(256);
    let workers = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(1);
    let opts = LoadOptions { batch_size: b, max_batch_tokens: 1 << 30, workers, ..Default::default() };
    let eng = Engine::from_parts(dec, tt, "mem".into(), &opts)?;
    let prompts: Vec<Vec<u32>> = (0..b).map(|r| (0..40 + r % 7).map(|i| ((r * 7 + i * 3) % 40 + 4) as u32).collect()).collect();
    let offs: Vec<u64> = (0..b as u64).collect();
    let p = SamplingParams { max_new_tokens: 40, temperature: 1.0, ignore_eos: true, ..Default::default() };
    for it in 0..3 {
        let st = std::time::Instant::now();
        let o = eng.generate_ids(&prompts, &offs, &p)?;
        let n: usize = o.iter().map(|x| x.token_ids.len()).sum();
        let s = st.elapsed().as_secs_f64();
        println!("iter {it}: {n} tokens in {s:.2}s -> {:.0} tok/s", n as f64 / s);
    }
    Ok(())
}
