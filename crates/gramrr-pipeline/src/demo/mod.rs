//! `gramrr demo`: the whole method in a small world built from nothing, on a CPU.
//!
//! 1. A seeded synthetic preference domain ([`domain`]): arithmetic questions with one right
//!    and one wrong answer in several styles; a small seed set with rationales, a larger
//!    labeled set without, a large unlabeled set (labels hidden but kept to measure
//!    pseudo-labels) and a held-out test set on questions nothing else uses.
//! 2. A tiny Qwen3-architecture backbone with a character tokenizer, saved in HF layout and
//!    pretrained as a plain language model on domain text: the stand-in for a pretrained LLM.
//! 3. The pipeline on it, with the compact format: prover, proof synthesis with Eq. 5,
//!    initial reward model, self-training, final fine-tune; plus the vanilla generative RM
//!    (backbone + seed rationales only) and the compute-matched control.
//! 4. A report: accuracies by stage, pseudo-label accuracy before and after denoising, Eq. 5
//!    against random proof selection, and the time taken.

pub mod domain;
pub mod report;
pub mod rl_act;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::Prompt;
use gramrr_model::init::{char_tokenizer_with_tokens, write_random_model, InitSpec, CHATML_TEMPLATE};
use gramrr_model::Architecture;
use gramrr_train::Segment;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::*;
use crate::data::{make_example, write_pairs};
use crate::error::{PipelineError, Result};
use crate::format::compact::{TAGS, THINK, THINK_END};
use crate::pipeline::Pipeline;
use crate::progress::note;
use crate::pseudo::PseudoItem;
use crate::run::{RunDir, StageStatus};
use crate::store::read_items;
use crate::synth::SynthItem;
use domain::{computation_correct, Domain, DomainSizes};
use report::{Accuracy, ProofSelection, PseudoLabelReport, RationaleQuality, Report};

/// How big a demo to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoSize {
    /// The real demonstration (≤ 20 minutes on 2 cores; 17.5 measured on an AMD EPYC).
    Full,
    /// The same report from a smaller world (≤ 3 minutes, for CI; about 1 measured). Its
    /// backbone is pretrained too briefly to compute, so its accuracies stay near chance.
    Quick,
    /// Smaller still, for the test suite: checks the plumbing, not the method.
    Tiny,
}

impl DemoSize {
    pub fn as_str(self) -> &'static str {
        match self {
            DemoSize::Full => "full",
            DemoSize::Quick => "quick",
            DemoSize::Tiny => "tiny",
        }
    }
}

/// The backbone's shape (Qwen3 architecture).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backbone {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

/// Everything the demo decides: data sizes, model shape, and every stage's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    pub sizes: DomainSizes,
    pub backbone: Backbone,
    pub pretrain: TrainConfig,
    pub prover: TrainConfig,
    pub reward_model: TrainConfig,
    pub baseline: TrainConfig,
    pub self_training: SelfTrainingConfig,
    pub final_tune: TrainConfig,
    pub synthesis: SynthesisConfig,
    pub engine: EngineConfig,
    pub max_chars: usize,
}

fn tc(steps: usize, lr: f64, batch: usize, warmup: f64) -> TrainConfig {
    TrainConfig {
        steps: Some(steps),
        lr,
        batch_size: batch,
        warmup_ratio: warmup,
        scheduler: "cosine".into(),
        // demo-notes: AdamW β = (0.9, 0.98), weight decay 0.05, clip 1.0.
        weight_decay: 0.05,
        beta2: 0.98,
        max_len: 160,
        // demo-notes #1: the right/wrong words and the label ×10.
        decision_weight: 10.0,
        // Length-grouped batches cost the backbone its arithmetic (800 pretraining steps: 5%
        // of test sums right with grouping, 100% without), so batches mix lengths.
        group_by_length: false,
        save_every: 100,
        workers: DEMO_WORKERS,
        // Same gradients as padded batches; the pretraining text (documents of 30–95 tokens)
        // trains 1.7× as fast without its padding.
        padding_free: true,
        ..TrainConfig::default()
    }
}

/// The demo's models are far too small for a threaded GEMM, so training and generation split
/// their batches over two CPU workers. Fixed, not the machine's core count: training results
/// depend on the split (float summation order), and a seed must give the same report anywhere.
const DEMO_WORKERS: usize = 2;

impl DemoConfig {
    pub fn new(size: DemoSize) -> Self {
        // Sizes: labels are scarce (seed ≪ labeled ≪ unlabeled), unlabeled data plentiful.
        let (sizes, backbone, steps) = match size {
            DemoSize::Full => (
                // The reward model's skill is comparing each answer with its own result, and it
                // is learned from examples: from a backbone, ~1,000 rationales trained to their
                // plateau (~350 steps of 64: the training loss is ~0, more steps add ~2 points)
                // give ~60% on held-out questions, while 2,500 (1,500 of them pseudo-labeled,
                // 12% wrong) give ~90% (`examples/rm_probe.rs`). So labels are few, unlabeled
                // pairs 4× as many, and every RM is trained to its plateau, which is also what
                // keeps the compute-matched control honest.
                DomainSizes { seed: 200, labeled: 1000, unlabeled: 4000, test: 1000, pretrain: 51_200 },
                // demo-notes: this shape computes 2-digit sums after ~800 steps of batch 64
                // (one epoch of the pretraining text), but that is not enough for what is
                // built on it: seed 64's backbone, the least trained of eight after one epoch,
                // kept 64.5% of the test sums through the vanilla RM's fine-tune where seed 0's
                // kept 80.4%, and its RL act failed; after two epochs it keeps 92.1% and meets
                // every target (BENCHMARKS.md, "Two epochs of pretraining"). Hence 1,600 steps.
                // Eight heads of 16, not four of 32 (the same weights and matmuls): with four,
                // the reward models lost the backbone's arithmetic as they learned their
                // verdicts — given the backbone's own worked result they judged the policy's
                // pairs 83–99% right on six seeds of seven, left to their own 65–90%; with eight
                // the self-trained RMs are better on every seed run and the RL act's targets
                // hold on five seeds of seven, against two of the six run with four (BENCHMARKS.md,
                // "Demo: what the numbers say", 2026-12-06). The paper's backbones have 24–32
                // heads.
                Backbone { hidden: 128, intermediate: 384, layers: 4, heads: 8, kv_heads: 8 },
                // pretrain, prover, rm, baseline, self-training per iteration, final
                [1600, 100, 350, 200, 200, 30],
            ),
            DemoSize::Quick => (
                DomainSizes { seed: 120, labeled: 400, unlabeled: 1200, test: 1000, pretrain: 9_600 },
                Backbone { hidden: 96, intermediate: 256, layers: 3, heads: 4, kv_heads: 4 },
                [150, 40, 80, 40, 40, 15],
            ),
            DemoSize::Tiny => (
                DomainSizes { seed: 24, labeled: 24, unlabeled: 48, test: 24, pretrain: 256 },
                Backbone { hidden: 32, intermediate: 64, layers: 1, heads: 2, kv_heads: 2 },
                [8, 4, 4, 4, 3, 2],
            ),
        };
        let bs = if size == DemoSize::Tiny { 8 } else { 64 };
        // The paper runs three self-training iterations. The smaller sizes run two to stay fast
        // (they check the plumbing; the quick demo runs in CI).
        let iterations = if size == DemoSize::Full { 3 } else { 2 };
        DemoConfig {
            sizes,
            backbone,
            // Unpacked, although 43% of these batches is padding: packed rows (`pack = true`,
            // 128 tokens) trained 1.75x faster, but their documents attend across each other
            // and start at any position, and that backbone's prover then wrote consistent
            // wrong arithmetic for wrong claims (seed 0: kept pseudo-labels 63.8% right,
            // against 85% from an unpacked backbone at the earlier sizes), which the rule
            // filters cannot catch.
            pretrain: tc(steps[0], 3e-3, bs, 0.08),
            prover: tc(steps[1], 1.5e-3, bs / 2, 0.1),
            reward_model: tc(steps[2], 1.5e-3, bs, 0.1),
            baseline: tc(steps[3], 1.5e-3, bs / 2, 0.1),
            self_training: SelfTrainingConfig {
                iterations,
                batch: 0,
                votes: 3,
                temperature: 0.8,
                top_p: 1.0,
                max_new_tokens: 72,
                threshold: 0.9,
                retrain_from: RetrainFrom::Previous,
                chunk: 160,
                train: tc(steps[4], 1e-3, bs, 0.1),
            },
            // The paper's last stage fine-tunes on the human rationales for 1–2 epochs at GRAM's
            // reference rate, 1e-5..2e-5: about 1/20 of its backbones' pretraining rate, so here
            // 1.5e-4 (pretraining: 3e-3). The self-trained RM already fits these rationales
            // (first loss ~0.002), and AdamW turns near-zero gradients into steps of the full
            // rate: at 5e-4 (1/6) the loss on the very rationales it trained on rose tenfold and
            // the stage cost 1.7–5.4 points of test accuracy on every seed and the arithmetic
            // the RM rewards a policy with; at the paper's ratio it moves test accuracy by
            // −0.6..+1.5 (BENCHMARKS.md, "Demo: what the numbers say", fifth session of
            // 2026-12-06).
            final_tune: TrainConfig { steps: None, epochs: 2.0, ..tc(steps[5], 1.5e-4, bs / 2, 0.1) },
            synthesis: SynthesisConfig { k: 4, temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 72, chunk: 128 },
            engine: EngineConfig { device: "cpu".into(), dtype: "f32".into(), batch_size: 512, max_batch_tokens: 65_536, workers: DEMO_WORKERS, ..EngineConfig::default() },
            max_chars: 160,
        }
    }

    /// The pipeline configuration of the demo's run directory.
    pub fn pipeline_config(&self, out: &Path, seed: u64) -> PipelineConfig {
        let data = out.join("data");
        let run = out.join("run");
        let opt = |t: &TrainConfig| OptionalStage { enabled: true, train: t.clone() };
        PipelineConfig {
            run_dir: run.clone(),
            seed,
            format: FormatConfig::Compact { context_free: "\n".into() },
            data: DataConfig {
                seed_rationales: data.join("seed.jsonl"),
                labeled: data.join("labeled.jsonl"),
                unlabeled: Some(data.join("unlabeled.jsonl")),
            },
            model: ModelConfig { base: run.join("backbone").join("model").display().to_string(), prover_base: None },
            engine: self.engine.clone(),
            prover: StageTrain { train: self.prover.clone() },
            synthesis: self.synthesis.clone(),
            filter: FilterConfig { max_chars: Some(self.max_chars), max_words: None, require_nonempty_sections: true },
            reward_model: RewardModelConfig { include_seed: true, train: self.reward_model.clone() },
            self_training: self.self_training.clone(),
            final_tune: FinalConfig { enabled: true, train: self.final_tune.clone() },
            adapt: AdaptConfig::default(),
            baseline: opt(&self.baseline),
            control: opt(&self.self_training.train),
            eval: EvalConfig { data: Some(data.join("test.jsonl")), max_new_tokens: self.self_training.max_new_tokens },
            train: TrainConfig::default(),
        }
    }
}

/// Options of one demo invocation.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub out: PathBuf,
    pub seed: u64,
    pub size: DemoSize,
    /// Continue a run already in `out` (finished stages are skipped).
    pub resume: bool,
    /// Train every stage (the backbone's pretraining too) with this external command instead of
    /// the built-in trainer (`backend = "command"`; see `external_train`). It runs in `out`.
    pub train_command: Option<String>,
    /// After the reward models, the last act: GRPO on a policy with each reward
    /// ([`rl_act::run_rl_act`]).
    pub rl: bool,
}

fn write_truth(path: &Path, ids: &[PreferencePair], labels: &[Label]) -> Result<()> {
    let mut buf = Vec::new();
    for (p, l) in ids.iter().zip(labels) {
        serde_json::to_writer(&mut buf, &json!({"id": p.id, "label": l})).expect("serializes");
        buf.push(b'\n');
    }
    Ok(gramrr_model::fsutil::write_atomic(path, &buf)?)
}

/// Writes the domain's files under `out/data` (deterministic: rewriting gives the same bytes).
fn write_domain(d: &Domain, dir: &Path) -> Result<()> {
    write_pairs(&dir.join("seed.jsonl"), &d.seed)?;
    write_pairs(&dir.join("labeled.jsonl"), &d.labeled)?;
    write_pairs(&dir.join("unlabeled.jsonl"), &d.unlabeled)?;
    write_pairs(&dir.join("test.jsonl"), &d.test)?;
    write_truth(&dir.join("unlabeled_truth.jsonl"), &d.unlabeled, &d.unlabeled_truth)?;
    let mut lists = Vec::new();
    for c in &d.candidates {
        serde_json::to_writer(&mut lists, c).expect("serializes");
        lists.push(b'\n');
    }
    gramrr_model::fsutil::write_atomic(&dir.join("candidates.jsonl"), &lists)?;
    let mut buf = Vec::new();
    for (p, c) in &d.pretrain {
        serde_json::to_writer(&mut buf, &json!({"prompt": p, "completion": c})).expect("serializes");
        buf.push(b'\n');
    }
    Ok(gramrr_model::fsutil::write_atomic(&dir.join("pretrain.jsonl"), &buf)?)
}

/// Stage `policy`, the RL act's starting policy: the backbone fine-tuned on answers from
/// careless writers, who drop carries and borrows in `careless` of their worked answers (work and
/// result consistent with each other, wrong wherever a carry was needed) and work the rest out
/// right. It keeps the skill and learns the habit, as a model does from noisy human SFT data, so
/// it starts well below the backbone and GRPO has a behaviour to correct.
pub(crate) fn stage_policy(p: &mut Pipeline, cfg: &DemoConfig, seed: u64, questions: &[String], act: &rl_act::RlActConfig) -> Result<PathBuf> {
    use rand::{Rng, SeedableRng};
    let mut inputs = BTreeMap::new();
    inputs.insert("questions".into(), crate::run::hash_json(&json!(questions)));
    let mut tcfg = cfg.prover.clone();
    tcfg.steps = Some(act.policy_steps);
    let settings = json!({"careless": act.careless, "train": tcfg, "seed": seed});
    let backbone = p.run.stage_dir("backbone").join("model");
    let careless = act.careless;
    let qs = questions.to_vec();
    let examples = move |_: &Pipeline, tok: &gramrr_model::tokenizer::TextTokenizer| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_CA7E);
        qs.iter()
            .filter_map(|q| domain::Problem::parse(q))
            .map(|pr| {
                let (work, result) = if rng.random::<f64>() < careless { (pr.careless_work(), pr.no_carry()) } else { (pr.work(), pr.answer()) };
                let text = format!("{THINK}{work} so {result}.{THINK_END}");
                make_example(tok, &Prompt::Raw(format!("Q: {} ", pr.question())), &[Segment { text, weight: 1.0 }])
            })
            .collect()
    };
    p.train_stage("policy", settings, inputs, &backbone, examples, &tcfg, None)?;
    Ok(p.run.stage_dir("policy").join("model"))
}

/// Stage `backbone`: a random Qwen3-shaped model with the demo's character tokenizer,
/// pretrained as a language model on domain text.
fn stage_backbone(p: &mut Pipeline, cfg: &DemoConfig, seed: u64, domain: &Domain, pretrain_file: &Path) -> Result<()> {
    let name = "backbone";
    let mut inputs = BTreeMap::new();
    inputs.insert("pretrain".into(), crate::run::hash_file(pretrain_file)?.sha256);
    let settings = json!({"backbone": cfg.backbone, "train": cfg.pretrain, "seed": seed});
    let key = RunDir::stage_key(name, &settings, &inputs);
    let init = p.run.stage_dir("backbone-init");
    // The random initial model is the base the pretraining starts from; it is cheap and a pure
    // function of the seed, so it is rewritten whenever the backbone stage runs.
    if !p.run.is_done(name, &key) {
        let tok = char_tokenizer_with_tokens(domain::ALPHABET, &TAGS)?;
        let mut spec = InitSpec::tiny(Architecture::Qwen3);
        spec.hidden_size = cfg.backbone.hidden;
        spec.intermediate_size = cfg.backbone.intermediate;
        spec.num_hidden_layers = cfg.backbone.layers;
        spec.num_attention_heads = cfg.backbone.heads;
        spec.num_key_value_heads = cfg.backbone.kv_heads;
        spec.max_position_embeddings = 512;
        spec.seed = seed;
        write_random_model(&init, &spec, &tok, DType::F32)?;
        let _ = CHATML_TEMPLATE;
    }
    let lines = domain.pretrain.clone();
    let examples = move |_: &Pipeline, tok: &gramrr_model::tokenizer::TextTokenizer| {
        lines
            .iter()
            .map(|(q, c)| make_example(tok, &Prompt::Raw(q.clone()), &[Segment { text: c.clone(), weight: 1.0 }]))
            .collect()
    };
    p.train_stage(name, settings, inputs, &init, examples, &cfg.pretrain, None)?;
    Ok(())
}

fn pct(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        100.0 * num as f64 / den as f64
    }
}

/// Pseudo-label accuracy before and after denoising, per iteration.
fn pseudo_report(run: &RunDir, iterations: usize, truth: &HashMap<String, Label>) -> Result<Vec<PseudoLabelReport>> {
    let mut out = Vec::new();
    for i in 1..=iterations {
        let pseudo: Vec<PseudoItem> = read_items(&run.stage_dir(&format!("iter{i}/pseudo")))?;
        let proved: Vec<SynthItem> = read_items(&run.stage_dir(&format!("iter{i}/prove")))?;
        let right = |id: &str, l: Option<Label>| l.is_some() && truth.get(id).copied() == l;
        let all_right = pseudo.iter().filter(|p| right(&p.id, p.majority)).count();
        let conf: Vec<&PseudoItem> = pseudo.iter().filter(|p| p.kept).collect();
        let conf_right = conf.iter().filter(|p| right(&p.id, p.majority)).count();
        let kept: Vec<&SynthItem> = proved.iter().filter(|s| s.selected.is_some()).collect();
        let kept_right = kept.iter().filter(|s| right(&s.id, Some(s.label))).count();
        out.push(PseudoLabelReport {
            iteration: i,
            n: pseudo.len(),
            kept: kept.len(),
            accuracy_all: pct(all_right, pseudo.len()),
            accuracy_kept: pct(kept_right, kept.len()),
            confident: conf.len(),
            accuracy_confident: pct(conf_right, conf.len()),
        });
    }
    Ok(out)
}

/// Eq. 5 against a random pick, among all samples and among those that passed the rules,
/// measured by whether the proof's stated computation is correct.
fn proof_selection(run: &RunDir, pairs: &[PreferencePair]) -> Result<ProofSelection> {
    let items: Vec<SynthItem> = read_items(&run.stage_dir("synth"))?;
    let question: HashMap<&str, String> = pairs.iter().map(|p| (p.id.as_str(), p.prompt.as_text())).collect();
    // (Eq. 5 pick correct, share of correct samples) over a candidate set.
    let compare = |q: &str, cands: &[&crate::synth::ProofSample]| -> Option<(f64, f64)> {
        // The first of the best, as the pipeline's selection breaks ties.
        let best = cands.iter().filter(|c| c.score.is_some()).fold(None, |b: Option<&&crate::synth::ProofSample>, c| match b {
            Some(b) if b.score >= c.score => Some(b),
            _ => Some(c),
        })?;
        let ok = cands.iter().filter(|c| computation_correct(q, &c.text)).count() as f64;
        Some((computation_correct(q, &best.text) as u8 as f64, ok / cands.len() as f64))
    };
    let mut s = ProofSelection::default();
    let (mut e_all, mut r_all, mut e_pass, mut r_pass) = (0.0, 0.0, 0.0, 0.0);
    for it in &items {
        let q = &question[it.id.as_str()];
        let all: Vec<&crate::synth::ProofSample> = it.samples.iter().collect();
        if let Some((e, r)) = compare(q, &all) {
            s.pairs += 1;
            e_all += e;
            r_all += r;
        }
        let passing: Vec<&crate::synth::ProofSample> = it.samples.iter().filter(|x| x.rejection.is_none()).collect();
        if let Some((e, r)) = compare(q, &passing) {
            s.pairs_passing += 1;
            e_pass += e;
            r_pass += r;
        }
    }
    s.eq5 = pct_f(e_all, s.pairs);
    s.random = pct_f(r_all, s.pairs);
    s.eq5_passing = pct_f(e_pass, s.pairs_passing);
    s.random_passing = pct_f(r_pass, s.pairs_passing);
    Ok(s)
}

/// Step-by-step quality of each evaluated model's test rationales (see [`RationaleQuality`]).
fn rationale_quality(run: &RunDir, stages: &[(String, String)], pairs: &[PreferencePair]) -> Result<Vec<RationaleQuality>> {
    use crate::format::compact::{parse_body, THINK, THINK_END};
    let question: HashMap<&str, String> = pairs.iter().map(|p| (p.id.as_str(), p.prompt.as_text())).collect();
    let mut out = Vec::new();
    for (stage, model) in stages {
        let path = run.stage_dir(&format!("eval/{stage}")).join("predictions.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let (mut n, mut comp, mut cons, mut follows) = (0usize, 0usize, 0usize, 0usize);
        for (i, line) in text.lines().enumerate() {
            let p: crate::eval::Prediction = serde_json::from_str(line)
                .map_err(|e| PipelineError::stage("demo", format!("{}:{}: {e}", path.display(), i + 1)))?;
            n += 1;
            comp += question.get(p.id.as_str()).is_some_and(|q| computation_correct(q, &p.text)) as usize;
            let body = p.text.find(THINK).and_then(|s| {
                let rest = &p.text[s + THINK.len()..];
                rest.find(THINK_END).map(|e| &rest[..e])
            });
            let Some(b) = body.and_then(|b| parse_body(b).ok()) else { continue };
            cons += b.judged.iter().all(|(quote, yes, _)| *yes == (*quote == b.result)) as usize;
            let yes: Vec<Label> = [Label::A, Label::B].into_iter().zip(&b.judged).filter(|(_, j)| j.1).map(|(l, _)| l).collect();
            // The verdicts name the responses as shown; the label is in the pair's orientation.
            let shown = p.label.map(|l| if p.swapped { l.flipped() } else { l });
            follows += (yes.len() == 1 && shown == Some(yes[0])) as usize;
        }
        out.push(RationaleQuality {
            model: model.clone(),
            computation_correct: pct(comp, n),
            verdicts_consistent: pct(cons, n),
            label_follows_verdicts: pct(follows, n),
        });
    }
    Ok(out)
}

/// Percent of `pairs`' questions the pretrained backbone works out right, greedily.
fn backbone_arithmetic(p: &Pipeline, pairs: &[PreferencePair]) -> Result<f64> {
    let dir = p.run.stage_dir("backbone").join("model");
    let engine = gramrr_model::Engine::load(&dir.display().to_string(), &p.opts)?;
    Ok(computes_after(&engine, pairs, |x| format!("Q: {} ", x.prompt.as_text()), 40)?.0)
}

/// Greedy continuations of `prompt(pair)` for every pair, and the share (%) whose stated
/// computation is right for the pair's question: what a model can work out in a given context.
pub fn computes_after(
    engine: &gramrr_model::Engine,
    pairs: &[PreferencePair],
    prompt: impl Fn(&PreferencePair) -> String,
    max_new_tokens: usize,
) -> Result<(f64, Vec<String>)> {
    let prompts = pairs.iter().map(|x| engine.encode_prompt(&Prompt::Raw(prompt(x)))).collect::<std::result::Result<Vec<_>, _>>()?;
    let offsets: Vec<u64> = (0..prompts.len() as u64).collect();
    let params = gramrr_model::backend::SamplingParams { max_new_tokens, ..Default::default() };
    let texts: Vec<String> = engine.generate_ids(&prompts, &offsets, &params)?.into_iter().map(|o| o.text).collect();
    let right = pairs.iter().zip(&texts).filter(|(x, t)| computation_correct(&x.prompt.as_text(), t)).count();
    Ok((pct(right, pairs.len()), texts))
}

fn pct_f(x: f64, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        100.0 * x / n as f64
    }
}

/// Runs the demo and writes `report.json`, `report.md` and `accuracy.png` into `opts.out`.
pub fn run_demo(opts: &DemoOptions) -> Result<Report> {
    let t0 = Instant::now();
    let mut cfg = DemoConfig::new(opts.size);
    if let Some(command) = &opts.train_command {
        for t in [&mut cfg.pretrain, &mut cfg.prover, &mut cfg.reward_model, &mut cfg.baseline, &mut cfg.self_training.train, &mut cfg.final_tune] {
            t.backend = crate::config::TrainBackend::Command;
            t.command = Some(command.clone());
        }
    }
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(|e| PipelineError::io(out, e))?;
    note(format!("demo ({}, seed {}): generating the domain", opts.size.as_str(), opts.seed));
    let domain = Domain::generate(opts.seed, &cfg.sizes);
    let data_dir = out.join("data");
    write_domain(&domain, &data_dir)?;

    let pcfg = cfg.pipeline_config(out, opts.seed);
    let origin = out.join("pipeline.toml");
    gramrr_model::fsutil::write_atomic(&origin, pcfg.to_toml().as_bytes())?;
    let mut p = Pipeline::open(pcfg.clone(), &origin, opts.resume)?;
    p.run.manifest.config = json!({"pipeline": serde_json::to_value(&pcfg).expect("serializes"), "demo": cfg, "size": opts.size});
    p.run.save()?;

    stage_backbone(&mut p, &cfg, opts.seed, &domain, &data_dir.join("pretrain.jsonl"))?;
    let summary = p.run_all()?;

    let truth: HashMap<String, Label> =
        domain.unlabeled.iter().zip(&domain.unlabeled_truth).map(|(p, l)| (p.id.clone(), *l)).collect();
    let acc = |k: &str| summary.accuracy.get(k).copied().unwrap_or(f64::NAN);
    let m = cfg.self_training.iterations;
    let mut report = Report {
        accuracy: Accuracy {
            vanilla_rm: acc("baseline"),
            gram_rr_initial: acc("rm"),
            gram_rr_self_training: (1..=m).map(|i| acc(&format!("iter{i}"))).collect(),
            gram_rr_final: acc("final"),
            control_extra_steps: acc("control"),
        },
        pseudo_labels: pseudo_report(&p.run, m, &truth)?,
        proof_selection: proof_selection(&p.run, &domain.labeled)?,
        backbone_arithmetic: backbone_arithmetic(&p, &domain.test)?,
        rationale_quality: Vec::new(),
        seconds: t0.elapsed().as_secs_f64(),
        seed: opts.seed,
        size: opts.size.as_str().into(),
        stage_seconds: 0.0,
        stage_times: vec![],
        test_pairs: domain.test.len(),
        targets: vec![],
        config: serde_json::to_value(&cfg).expect("serializes"),
    };
    let mut evaluated: Vec<(String, String)> = vec![("baseline".into(), "vanilla RM".into()), ("rm".into(), "GRAM-R² initial".into())];
    evaluated.extend((1..=m).map(|i| (format!("iter{i}"), format!("self-training {i}"))));
    evaluated.push(("final".into(), "GRAM-R² final".into()));
    evaluated.push(("control".into(), "control (extra steps)".into()));
    report.rationale_quality = rationale_quality(&p.run, &evaluated, &domain.test)?;
    for (name, r) in &p.run.manifest.stages {
        if r.status == StageStatus::Done {
            report.stage_times.push((name.clone(), r.seconds));
            report.stage_seconds += r.seconds;
        }
    }
    report.check_targets();
    gramrr_model::fsutil::write_json_atomic(&out.join("report.json"), &serde_json::to_value(&report).expect("serializes"))?;
    gramrr_model::fsutil::write_atomic(&out.join("report.md"), report.to_markdown().as_bytes())?;
    if let Err(e) = report::plot_accuracy(&report, &out.join("accuracy.png")) {
        note(format!("accuracy plot not drawn: {e}"));
    }
    if opts.rl {
        let act = rl_act::RlActConfig::for_size(opts.size).map_err(|e| PipelineError::Config { path: out.clone(), message: e })?;
        let questions = rl_act::act_questions(&domain, &act).1;
        let policy = stage_policy(&mut p, &cfg, opts.seed, &questions, &act)?;
        drop(p);
        rl_act::run_rl_act(out, opts.size, opts.seed, &domain, &policy)?;
    }
    note(format!("demo finished in {:.0}s: {}", t0.elapsed().as_secs_f64(), out.join("report.md").display()));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rationale_quality_separates_computation_comparison_and_label() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::open(tmp.path(), json!({}), false).unwrap();
        let dir = run.stage_dir("eval/rm");
        std::fs::create_dir_all(&dir).unwrap();
        let pair = |id: &str| PreferencePair {
            id: id.into(),
            prompt: gramrr_data::Conversation::Text("63-15?".into()),
            response_a: "49".into(),
            response_b: "48".into(),
            label: Some(Label::B),
            rationale: None,
            metadata: Default::default(),
        };
        let texts = [
            // All right.
            ("1", "<think>36-51=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think><answer>B</answer>", Some(Label::B)),
            // Right computation, a verdict that contradicts it.
            ("2", "<think>36-51=84 so 48. A 49 vs 48 yes. B 48 vs 48 yes.</think><answer>A</answer>", Some(Label::A)),
            // Wrong computation, consistent verdicts, a label against them.
            ("3", "<think>36-51=94 so 49. A 49 vs 49 yes. B 48 vs 49 no.</think><answer>B</answer>", Some(Label::B)),
            // Unparseable.
            ("4", "<think>36", None),
        ];
        let mut buf = String::new();
        for (id, text, label) in texts {
            let p = crate::eval::Prediction { id: id.into(), label, truth: Label::B, text: text.into(), swapped: false };
            buf.push_str(&serde_json::to_string(&p).unwrap());
            buf.push('\n');
        }
        // Shown as (B, A): the rationale's "A" is response_b (48), so its shown-A verdict is the
        // pair's label B, and the label follows the verdicts.
        let shown_swapped = "<think>36-51=84 so 48. A 48 vs 48 yes. B 49 vs 48 no.</think><answer>A</answer>";
        let p = crate::eval::Prediction { id: "5".into(), label: Some(Label::B), truth: Label::B, text: shown_swapped.into(), swapped: true };
        buf.push_str(&serde_json::to_string(&p).unwrap());
        buf.push('\n');
        std::fs::write(dir.join("predictions.jsonl"), buf).unwrap();
        let pairs: Vec<PreferencePair> = ["1", "2", "3", "4", "5"].into_iter().map(pair).collect();
        let stages = [("rm".to_string(), "initial".to_string()), ("missing".to_string(), "skipped".to_string())];
        let q = rationale_quality(&run, &stages, &pairs).unwrap();
        assert_eq!(q.len(), 1, "a stage without predictions is left out");
        assert_eq!(q[0].model, "initial");
        assert_eq!(q[0].computation_correct, 60.0);
        assert_eq!(q[0].verdicts_consistent, 60.0);
        assert_eq!(q[0].label_follows_verdicts, 40.0, "1 and the swapped 5");
    }
}
