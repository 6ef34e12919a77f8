//! Throwaway: how many pretraining steps the demo backbone needs to compute (sizing the demo).
//! usage: backbone_probe HIDDEN LAYERS STEPS BATCH LR
use std::time::Instant;

use gramrr_model::backend::{Prompt, SamplingParams};
use gramrr_model::init::{char_tokenizer_with_tokens, random_weights, InitSpec};
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::{Architecture, Decoder, Engine, LoadOptions};
use gramrr_pipeline::data::{encode_prompt, make_example};
use gramrr_pipeline::demo::domain::{computation_correct, Domain, DomainSizes, ALPHABET};
use gramrr_pipeline::format::compact::TAGS;
use gramrr_train::{train_sft, Segment, SftConfig, Silent, AdamWConfig, Scheduler};

fn main() -> anyhow::Result<()> {
    gramrr_model::tune_threads();
    gramrr_model::tune_allocator();
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (hidden, layers, steps, batch): (usize, usize, usize, usize) = (a[0].parse()?, a[1].parse()?, a[2].parse()?, a[3].parse()?);
    let lr: f64 = a[4].parse()?;
    let tok = char_tokenizer_with_tokens(ALPHABET, &TAGS)?;
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
    let d = Domain::generate(0, &DomainSizes { seed: 0, labeled: 0, unlabeled: 0, test: 300, pretrain: steps * batch });
    let ex: Vec<_> = d.pretrain.iter().map(|(q, c)| make_example(&ttok, &Prompt::Raw(q.clone()), &[Segment { text: c.clone(), weight: 1.0 }]).unwrap()).collect();
    let sft = SftConfig {
        max_steps: Some(steps),
        batch_size: batch,
        lr,
        scheduler: Scheduler::Cosine,
        warmup_ratio: 0.08,
        adam: AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-8, weight_decay: 0.05 },
        group_by_length: true,
        workers: std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(1),
        ..Default::default()
    };
    let t = Instant::now();
    let (dec, rep) = train_sft(dec, &ttok, &ex, &sft, None, &mut Silent)?;
    let train_s = t.elapsed().as_secs_f64();
    let engine = Engine::from_parts(dec, ttok, "mem".into(), &LoadOptions { batch_size: 512, max_batch_tokens: 1 << 20, ..Default::default() })?;
    let t = Instant::now();
    let mut report = String::new();
    for (name, make) in [
        ("plain", Box::new(|p: &gramrr_data::PreferencePair| format!("Q: {} ", p.prompt.as_text())) as Box<dyn Fn(&gramrr_data::PreferencePair) -> String>),
        ("judge", Box::new(|p: &gramrr_data::PreferencePair| format!("A: {}\nB: {}\nQ: {} ", p.response_a, p.response_b, p.prompt.as_text()))),
        ("claim", Box::new(|p: &gramrr_data::PreferencePair| format!("A: {}\nB: {}\nClaim A.\nQ: {} ", p.response_a, p.response_b, p.prompt.as_text()))),
    ] {
        let prompts: Vec<Vec<u32>> = d.test.iter().map(|p| encode_prompt(&engine.tokenizer, &Prompt::Raw(make(p))).unwrap()).collect();
        let offs: Vec<u64> = (0..prompts.len() as u64).collect();
        let out = engine.generate_ids(&prompts, &offs, &SamplingParams { max_new_tokens: 40, ..Default::default() })?;
        let ok = d.test.iter().zip(&out).filter(|(p, o)| computation_correct(&p.prompt.as_text(), &o.text)).count();
        report.push_str(&format!("{name} {:.1}% ", 100.0 * ok as f64 / d.test.len() as f64));
    }
    let gen_s = t.elapsed().as_secs_f64();
    println!(
        "hidden {hidden} layers {layers} steps {steps} batch {batch} lr {lr}: loss {:.3}, arithmetic {report}, train {train_s:.0}s ({:.0} tok/s), gen {gen_s:.1}s",
        rep.final_loss.unwrap_or(f32::NAN),
        rep.tokens_per_sec,
    );
    Ok(())
}
