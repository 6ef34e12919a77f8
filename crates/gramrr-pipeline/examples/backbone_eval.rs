//! Diagnostic: what a pretrained demo backbone can do on held-out questions: compute (plain, in
//! the judge prompt, in the prover prompt) and read the two answers back.
//! usage: backbone_eval BACKBONE_DIR [SEED]
use gramrr_data::PreferencePair;
use gramrr_model::backend::{Prompt, SamplingParams};
use gramrr_model::{Engine, LoadOptions};
use gramrr_pipeline::data::encode_prompt;
use gramrr_pipeline::demo::domain::{computation_correct, Domain, DomainSizes};

fn main() -> anyhow::Result<()> {
    gramrr_model::tune_threads();
    let a: Vec<String> = std::env::args().skip(1).collect();
    let seed: u64 = a.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let engine = Engine::load(&a[0], &LoadOptions { batch_size: 512, max_batch_tokens: 1 << 20, workers: 2, ..Default::default() })?;
    let d = Domain::generate(seed, &DomainSizes { seed: 0, labeled: 0, unlabeled: 0, test: 1000, pretrain: 0 });
    let num = |r: &str| r.chars().filter(|c| c.is_ascii_digit()).collect::<String>();
    type Make = Box<dyn Fn(&PreferencePair) -> String>;
    let forms: Vec<(&str, Make)> = vec![
        ("plain", Box::new(|p| format!("Q: {} ", p.prompt.as_text()))),
        ("judge", Box::new(|p| format!("A: {}\nB: {}\nQ: {} ", p.response_a, p.response_b, p.prompt.as_text()))),
        ("claim", Box::new(|p| format!("A: {}\nB: {}\nClaim A.\nQ: {} ", p.response_a, p.response_b, p.prompt.as_text()))),
    ];
    let mut line = String::new();
    for (name, make) in forms {
        let prompts: Vec<Vec<u32>> = d.test.iter().map(|p| encode_prompt(&engine.tokenizer, &Prompt::Raw(make(p))).unwrap()).collect();
        let offs: Vec<u64> = (0..prompts.len() as u64).collect();
        let out = engine.generate_ids(&prompts, &offs, &SamplingParams { max_new_tokens: 60, ..Default::default() })?;
        let ok = d.test.iter().zip(&out).filter(|(p, o)| computation_correct(&p.prompt.as_text(), &o.text)).count();
        line.push_str(&format!("{name}: computes {:.1}% ", ok as f64 / 10.0));
        if name == "judge" {
            let read = d
                .test
                .iter()
                .zip(&out)
                .filter(|(p, o)| o.text.contains(&format!(" A {}. B {}.", num(&p.response_a), num(&p.response_b))))
                .count();
            line.push_str(&format!("(reads both answers back {:.1}%) ", read as f64 / 10.0));
        }
    }
    println!("{}: {line}", a[0]);
    Ok(())
}
