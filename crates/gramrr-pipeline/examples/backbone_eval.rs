//! Diagnostic: what a pretrained demo backbone can do on held-out questions: compute (plain, in
//! the judge prompt, in the prover prompt), read the two answers back, and tell whether they agree.
//! usage: backbone_eval BACKBONE_DIR [SEED]
use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::Prompt;
use gramrr_model::{Engine, LoadOptions};
use gramrr_pipeline::demo::computes_after;
use gramrr_pipeline::demo::domain::{Domain, DomainSizes};
use gramrr_pipeline::format::{CompactFormat, PairFormat};

/// The pipeline's own prompts, so this measures exactly what the judge and the prover are asked.
fn raw(prompt: Prompt) -> String {
    match prompt {
        Prompt::Raw(s) => s,
        Prompt::Chat(_) => unreachable!("the compact format writes raw prompts"),
    }
}

fn judge_prompt(p: &PreferencePair) -> String {
    raw(CompactFormat::default().judge_prompt(p))
}

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
        ("judge", Box::new(judge_prompt)),
        ("claim", Box::new(|p| raw(CompactFormat::default().prover_prompt(p, Label::A).expect("A is a label")))),
    ];
    let mut line = String::new();
    for (name, make) in forms {
        let (computes, out) = computes_after(&engine, &d.test, make, 60)?;
        line.push_str(&format!("{name}: computes {computes:.1}% "));
        if name == "judge" {
            let read = d.test.iter().zip(&out).filter(|(p, o)| o.contains(&format!(" A {}. B {}.", num(&p.response_a), num(&p.response_b)))).count();
            line.push_str(&format!("(reads both answers back {:.1}%) ", 100.0 * read as f64 / d.test.len() as f64));
            // Equality, the skill the reward model's verdicts (`A 180 vs 181 no`) rest on. Test
            // pairs always differ; then the same questions with B saying what A says.
            let differ = out.iter().filter(|o| o.contains("They differ.")).count();
            line.push_str(&format!("(says they differ {:.1}%", 100.0 * differ as f64 / d.test.len() as f64));
            let same: Vec<PreferencePair> = d.test.iter().map(|p| PreferencePair { response_b: format!("It is {}.", num(&p.response_a)), ..p.clone() }).collect();
            let (_, out2) = computes_after(&engine, &same, judge_prompt, 60)?;
            let agree = out2.iter().filter(|o| o.contains("They agree.")).count();
            line.push_str(&format!(", agree {:.1}%) ", 100.0 * agree as f64 / same.len() as f64));
        }
    }
    println!("{}: {line}", a[0]);
    Ok(())
}
