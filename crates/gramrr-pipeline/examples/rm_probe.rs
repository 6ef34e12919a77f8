//! Throwaway: the reward model's learning curve in the demo domain (sizing the demo).
//! Trains π_φ from a pretrained backbone on N pairs with the domain's canonical rationales for
//! S steps and reports test accuracy with the rationale's steps checked one by one.
//! usage: rm_probe BACKBONE_DIR N STEPS LR [M S1 NOISE]   (env SEED, WORKERS; REPLAY=K mixes K
//! pretraining documents into every phase; VERDICT=digits writes each verdict digit by digit;
//! SHOW prints four test rationales; WORK=x weights the worked steps and result x in the loss;
//! SAVE=DIR writes each phase-2 model under DIR)
use std::path::Path;
use std::time::Instant;

use gramrr_data::{Label, PreferencePair};
use rand::{Rng, SeedableRng};
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::weights::SafetensorsCheckpoint;
use gramrr_model::{Decoder, DecoderConfig, Engine, LoadOptions, WeightDType};
use gramrr_pipeline::demo::domain::{computation_correct, reversed, Domain, DomainSizes, Problem};
use gramrr_pipeline::eval::evaluate;
use gramrr_pipeline::format::compact::{parse_body, THINK, THINK_END};
use gramrr_pipeline::CompactFormat;
use gramrr_train::{train_sft, AdamWConfig, Scheduler, SftConfig, Silent, Truncate};

#[allow(dead_code)]
fn quality(pairs: &[PreferencePair], preds: &[gramrr_pipeline::eval::Prediction]) -> String {
    let (mut comp, mut cons, mut n) = (0, 0, 0);
    for (p, r) in pairs.iter().zip(preds) {
        n += 1;
        comp += computation_correct(&p.prompt.as_text(), &r.text) as usize;
        let body = r.text.find(THINK).and_then(|s| {
            let rest = &r.text[s + THINK.len()..];
            rest.find(THINK_END).map(|e| rest[..e].to_string())
        });
        if let Some(b) = body.and_then(|b| parse_body(&b).ok()) {
            cons += b.judged.iter().all(|(q, yes, _)| *yes == (*q == b.result)) as usize;
        }
    }
    format!("computation {:.1} verdicts {:.1}", 100.0 * comp as f64 / n as f64, 100.0 * cons as f64 / n as f64)
}

fn sft(steps: usize, lr: f64, batch: usize, workers: usize, seed: u64) -> SftConfig {
    SftConfig {
        max_steps: Some(steps),
        batch_size: batch,
        lr,
        scheduler: Scheduler::Cosine,
        warmup_ratio: 0.1,
        adam: AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-8, weight_decay: 0.05 },
        max_len: 160,
        truncate: Truncate::Skip,
        workers,
        seed,
        ..Default::default()
    }
}

/// A pseudo-labelled pair whose label is wrong, with the proof a prover writes for it that
/// passes the rules: a computation that ends at the wrong answer.
fn mislabeled(p: &PreferencePair) -> PreferencePair {
    let prob = Problem::parse(&p.prompt.as_text()).unwrap();
    let value = |r: &str| -> u32 { r.chars().filter(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap() };
    let (va, vb) = (value(&p.response_a), value(&p.response_b));
    let (label, w) = if p.label == Some(Label::A) { (Label::B, vb) } else { (Label::A, va) };
    let yes = |v: u32| if v == w { "yes" } else { "no" };
    let work = prob.work();
    let work = format!("{}={}", &work[..work.find('=').unwrap()], reversed(w));
    let _ = yes;
    let z = rationale_text(&work, w, va, vb, label);
    PreferencePair { label: Some(label), rationale: Some(z), ..p.clone() }
}

fn report(tag: &str, engine: &Engine, f: &CompactFormat, d: &Domain, loss: f32, secs: f64) -> anyhow::Result<()> {
    let (s, preds) = evaluate(engine, f, &d.test, 72, 1000, |_| {})?;
    if std::env::var("SHOW").is_ok() {
        for (p, r) in d.test.iter().zip(&preds).take(4) {
            println!("  {} | {} | {} | {:?}", p.prompt.as_text(), p.response_a, p.response_b, r.text);
        }
    }
    println!("{tag}: loss {loss:.4} | test {:.1} ({}) | {secs:.0}s", s.accuracy, quality(&d.test, &preds));
    Ok(())
}

/// usage: rm_probe BACKBONE N S0 LR [M S1 NOISE]: phase 1 on N pairs for S0 steps; then, from
/// that model, S1 more steps on the same N (the control) and on N + M pairs of which a share
/// NOISE is mislabeled (self-training).
fn main() -> anyhow::Result<()> {
    gramrr_model::tune_threads();
    gramrr_model::tune_allocator();
    let a: Vec<String> = std::env::args().skip(1).collect();
    let dir = Path::new(&a[0]);
    let (n, steps, lr): (usize, usize, f64) = (a[1].parse()?, a[2].parse()?, a[3].parse()?);
    let (m, s1, noise): (usize, usize, f64) = match a.get(4) {
        Some(_) => (a[4].parse()?, a[5].parse()?, a[6].parse()?),
        None => (0, 0, 0.0),
    };
    let batch = 64;
    let seed: u64 = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let workers: usize = std::env::var("WORKERS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    // REPLAY=K: K pretraining documents mixed into every phase's data (forgetting probe).
    let replay: usize = std::env::var("REPLAY").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut d = Domain::generate(seed, &DomainSizes { seed: n, labeled: m, unlabeled: 0, test: 1000, pretrain: replay });
    let f = CompactFormat::default();
    let tok = TextTokenizer::from_dir(dir)?;
    let cfg = DecoderConfig::from_file(&dir.join("config.json"))?;
    let dev = candle_core::Device::Cpu;
    let opts = LoadOptions { batch_size: 512, max_batch_tokens: 1 << 20, workers, ..Default::default() };
    let dec = Decoder::load(&cfg, &SafetensorsCheckpoint::open(dir, &dev, WeightDType::F32)?)?;
    let w = 10.0;
    let replay_ex: Vec<gramrr_train::SftExample> = d
        .pretrain
        .iter()
        .map(|(q, c)| gramrr_pipeline::data::make_example(&tok, &gramrr_model::backend::Prompt::Raw(q.clone()), &[gramrr_train::Segment { text: c.clone(), weight: 1.0 }]))
        .collect::<Result<_, _>>()?;
    for p in d.seed.iter_mut() {
        p.rationale = Some(rationale_for(p));
    }
    let base = [probe_examples(&tok, &f, &d.seed, w)?, replay_ex].concat();
    let t = Instant::now();
    let (dec, rep) = train_sft(dec, &tok, &base, &sft(steps, lr, batch, workers, seed + 1), None, &mut Silent)?;
    let secs = t.elapsed().as_secs_f64();
    if std::env::var("NOEVAL").is_ok() {
        println!("{} steps in {secs:.1}s, {:.0} tok/s", rep.steps, rep.tokens_per_sec);
        return Ok(());
    }
    let engine = Engine::from_parts(dec, TextTokenizer::from_dir(dir)?, dir.to_path_buf(), &opts)?;
    report(&format!("N={n} S={steps} lr={lr}"), &engine, &f, &d, rep.final_loss.unwrap_or(f32::NAN), secs)?;
    if s1 == 0 {
        return Ok(());
    }
    let dec = engine.model;
    // Pseudo-labelled pairs: rationales for the labeled set, a share of them wrong.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 7);
    for p in d.labeled.iter_mut() {
        p.rationale = Some(rationale_for(p));
        if rng.random_bool(noise) {
            *p = mislabeled(p);
        }
    }
    let extra = probe_examples(&tok, &f, &d.labeled, w)?;
    for (tag, data) in [("control", base.clone()), ("self-training", [base.clone(), extra].concat())] {
        let t = Instant::now();
        let (dec2, rep) = train_sft(dec.clone(), &tok, &data, &sft(s1, lr * 2.0 / 3.0, batch, workers, seed + 2), None, &mut Silent)?;
        // SAVE=DIR: each phase-2 model as an HF checkpoint under DIR/<tag>.
        if let Ok(save) = std::env::var("SAVE") {
            gramrr_train::checkpoint::save_hf_checkpoint(&dec2, &Path::new(&save).join(tag), Some(dir), None)?;
        }
        let engine = Engine::from_parts(dec2, TextTokenizer::from_dir(dir)?, dir.to_path_buf(), &opts)?;
        report(&format!("  {tag} (+{s1} steps, {} examples, noise {noise})", data.len()), &engine, &f, &d, rep.final_loss.unwrap_or(f32::NAN), t.elapsed().as_secs_f64())?;
    }
    Ok(())
}

fn rationale_for(p: &PreferencePair) -> String {
    let prob = Problem::parse(&p.prompt.as_text()).unwrap();
    let value = |r: &str| -> u32 { r.chars().filter(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap() };
    let (va, vb) = (value(&p.response_a), value(&p.response_b));
    rationale_text(&prob.work(), prob.answer(), va, vb, if va == prob.answer() { Label::A } else { Label::B })
}


/// VERDICT=digits: each verdict compares the two numbers digit by digit, right-aligned and
/// zero-padded (`A 49 vs 48: 4=4 9x8 no`), so equality is decided on adjacent characters.
fn digits() -> bool {
    std::env::var("VERDICT").map(|v| v == "digits").unwrap_or(false)
}

fn judged(v: u32, c: u32) -> String {
    let yes = if v == c { "yes" } else { "no" };
    if !digits() {
        return format!("{v} vs {c} {yes}");
    }
    let (sv, sc) = (v.to_string(), c.to_string());
    let n = sv.len().max(sc.len());
    let (pv, pc) = (format!("{sv:0>n$}"), format!("{sc:0>n$}"));
    let pairs: Vec<String> = pv.chars().zip(pc.chars()).map(|(x, y)| format!("{x}{}{y}", if x == y { '=' } else { 'x' })).collect();
    format!("{v} vs {c}: {} {yes}", pairs.join(" "))
}

fn rationale_text(work: &str, c: u32, va: u32, vb: u32, label: Label) -> String {
    format!("{THINK}{work} so {c}. A {}. B {}.{THINK_END}<answer>{}</answer>", judged(va, c), judged(vb, c), label.as_str())
}

/// RM examples with the decision words (yes/no and the label) weighted `w`: the pipeline's
/// own for the canonical form, found by text for the digit-wise one (which the format does not parse).
fn probe_examples(tok: &TextTokenizer, f: &CompactFormat, pairs: &[PreferencePair], w: f32) -> anyhow::Result<Vec<gramrr_train::SftExample>> {
    use gramrr_pipeline::PairFormat;
    // WORK=x: the worked steps and the result (`<think>36-51=84 so 48.`) weighted x.
    let work_w: Option<f32> = std::env::var("WORK").ok().and_then(|s| s.parse().ok());
    if !digits() && work_w.is_none() {
        return Ok(gramrr_pipeline::data::rm_examples(tok, f, pairs, w)?);
    }
    pairs
        .iter()
        .map(|p| {
            let z = p.rationale.as_deref().unwrap();
            let mut segs = vec![];
            let mut rest = z;
            if let Some(x) = work_w {
                let i = rest.find(". A ").unwrap() + 1;
                segs.push(gramrr_train::Segment { text: THINK.to_string(), weight: 1.0 });
                segs.push(gramrr_train::Segment { text: rest[THINK.len()..i].to_string(), weight: x });
                rest = &rest[i..];
            }
            loop {
                let hit = [" yes.", " no."].iter().filter_map(|k| rest.find(k).map(|i| (i, k.len()))).min();
                let Some((i, k)) = hit else { break };
                segs.push(gramrr_train::Segment { text: rest[..i + 1].to_string(), weight: 1.0 });
                segs.push(gramrr_train::Segment { text: rest[i + 1..i + k - 1].to_string(), weight: w });
                rest = &rest[i + k - 1..];
            }
            let l = rest.rfind("</answer>").unwrap();
            segs.push(gramrr_train::Segment { text: rest[..l - 1].to_string(), weight: 1.0 });
            segs.push(gramrr_train::Segment { text: rest[l - 1..l].to_string(), weight: w });
            segs.push(gramrr_train::Segment { text: rest[l..].to_string(), weight: 1.0 });
            Ok(gramrr_pipeline::data::make_example(tok, &f.judge_prompt(p), &segs)?)
        })
        .collect()
}
