//! The training recipe of GRAM-R² (paper Fig. 2), stage by stage, over a run directory.
//!
//! | stage | reads | writes |
//! |---|---|---|
//! | `prover` | human rationales, prover backbone | `prover/model` (π_ψ, Eq. 4) |
//! | `synth` | labeled pairs, π_ψ | `synth/items.jsonl` (every sample, score, rejection), `synth/data.jsonl` |
//! | `rm` | `synth/data.jsonl` (+ human rationales), backbone | `rm/model` (initial π_φ, Eq. 2) |
//! | `iterI/pseudo` | unlabeled batch I, previous π_φ | `iterI/pseudo/items.jsonl` (votes, confidence) |
//! | `iterI/prove` | kept pseudo-labels, π_ψ | `iterI/prove/items.jsonl`, `iterI/prove/data.jsonl` |
//! | `iterI/rm` | all synthesized data so far, previous π_φ | `iterI/rm/model` |
//! | `final` | human rationales, last π_φ | `final/model` |
//! | `baseline` (optional) | human rationales, backbone | `baseline/model` (vanilla generative RM) |
//! | `control` (optional) | initial π_φ and its own data | `control/model` (compute-matched) |
//! | `adapt/synth`, `adapt/train` (optional) | task set, π_ψ, final π_φ | `adapt/train/model` |
//! | `eval/NAME` (optional) | test pairs, each model | predictions and accuracy |
//!
//! Every stage is recorded in the manifest (see [`crate::run`]); the generation stages are
//! checkpointed per chunk of items and can be split across processes (see [`crate::store`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::{Backend, BackendError, SamplingParams};
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::weights::SafetensorsCheckpoint;
use gramrr_model::{Decoder, DecoderConfig, Engine, LoadOptions, WeightDType};
use gramrr_train::{train_sft, SftExample, TrainOutput, TrainReport};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{PipelineConfig, RetrainFrom, TrainConfig};
use crate::data::{canonical_seed, preference, prover_examples, read_pairs, rm_examples, write_pairs};
use crate::error::{PipelineError, Result};
use crate::eval::{evaluate, EvalSummary};
use crate::format::{self, PairFormat};
use crate::progress::{bar, note, TrainBar};
use crate::pseudo::{pseudo_label, pseudo_stats, PseudoItem};
use crate::run::{fingerprint_model, prepare_stage_dir, RunDir, StageRecord};
use crate::store::{merge_parts, read_items, run_chunks, Keyed, Shard};
use crate::synth::{synth_stats, synthesize, ProofTask, SynthItem};
use gramrr_judge::seed::{fnv1a, mix};

/// Who is running: the owner of the run directory (records stages in the manifest), or a
/// worker computing one shard of a generation stage (writes only its part file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Worker(Shard),
}

pub struct Pipeline {
    pub cfg: PipelineConfig,
    /// The config file (errors name it).
    pub origin: PathBuf,
    pub run: RunDir,
    pub format: Arc<dyn PairFormat>,
    pub opts: LoadOptions,
    role: Role,
    hashes: HashMap<PathBuf, String>,
    /// Test hook: an item stage fails after computing this many chunks, as a killed process
    /// would (the chunk in flight is lost, the ones before it are on disk).
    #[doc(hidden)]
    pub interrupt_after_chunks: Option<usize>,
    /// Set by [`Self::merge`]: item stages compute nothing and only merge what the shards wrote.
    merge_only: bool,
    /// Models trained elsewhere, by training stage (`--stage-model STAGE=DIR`): imported
    /// instead of trained (see [`crate::external_train`]).
    pub stage_models: BTreeMap<String, PathBuf>,
    /// `gramrr export-sft`: this stage writes its data and settings to this directory and stops.
    pub export_stage: Option<(String, PathBuf)>,
}

/// What an item stage does once every item is in: writes its outputs, returns them with stats.
type Finish<'a, T> = Box<dyn FnOnce(&Path, Vec<T>) -> Result<(Vec<(&'static str, PathBuf)>, Value)> + 'a>;

impl Pipeline {
    /// Opens the run directory as its owner. An existing run is continued only with `resume`.
    pub fn open(cfg: PipelineConfig, origin: &Path, resume: bool) -> Result<Self> {
        let config = serde_json::to_value(&cfg).expect("the config serializes");
        let run = RunDir::open(&cfg.run_dir, config, resume)?;
        gramrr_model::fsutil::write_atomic(&cfg.run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        Self::with_run(cfg, origin, run, Role::Owner)
    }

    /// Opens an existing run as a worker for one shard.
    pub fn open_worker(cfg: PipelineConfig, origin: &Path, shard: Shard) -> Result<Self> {
        let run = RunDir::open_existing(&cfg.run_dir)?;
        Self::with_run(cfg, origin, run, Role::Worker(shard))
    }

    fn with_run(cfg: PipelineConfig, origin: &Path, run: RunDir, role: Role) -> Result<Self> {
        let format: Arc<dyn PairFormat> = Arc::from(format::from_config(&cfg.format, &cfg.filter));
        let opts = cfg.engine.load_options(origin)?;
        Ok(Self { cfg, origin: origin.to_path_buf(), run, format, opts, role, hashes: HashMap::new(), interrupt_after_chunks: None, merge_only: false, stage_models: BTreeMap::new(), export_stage: None })
    }

    fn stage_seed(&self, name: &str) -> u64 {
        mix(&[self.cfg.seed, fnv1a(&[name])])
    }

    /// The sha256 of an input file, recorded in the manifest (hashed once per process).
    fn input(&mut self, name: &str, path: &Path) -> Result<String> {
        if let Some(h) = self.hashes.get(path) {
            return Ok(h.clone());
        }
        let h = if self.role == Role::Owner {
            self.run.input_hash(name, path)?
        } else {
            crate::run::hash_file(path)?.sha256
        };
        self.hashes.insert(path.to_path_buf(), h.clone());
        Ok(h)
    }

    fn model_hash(&mut self, dir: &Path) -> Result<String> {
        if let Some(h) = self.hashes.get(dir) {
            return Ok(h.clone());
        }
        let h = fingerprint_model(dir)?.sha256;
        self.hashes.insert(dir.to_path_buf(), h.clone());
        Ok(h)
    }

    fn resolve(&self, spec: &str) -> Result<PathBuf> {
        Ok(gramrr_model::hub::resolve_model_dir(spec)?)
    }

    fn done_output(&self, stage: &str, output: &str, needed_by: &str) -> Result<(PathBuf, String)> {
        let r = self.run.require_done(stage, needed_by)?;
        let h = r
            .outputs
            .get(output)
            .ok_or_else(|| PipelineError::stage(needed_by, format!("stage {stage:?} recorded no output {output:?}")))?;
        Ok((PathBuf::from(&h.path), h.sha256.clone()))
    }

    fn skip(&self, name: &str, key: &str) -> Option<StageRecord> {
        if self.run.is_done(name, key) {
            note(format!("{name}: done (skipped)"));
            self.run.record(name).cloned()
        } else {
            None
        }
    }

    // -----------------------------------------------------------------------------------------
    // Shared machinery

    /// Runs a training stage: skip when done, else train and record `model` (plus `extra`
    /// outputs) with stats.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn train_stage(
        &mut self,
        name: &str,
        settings: Value,
        inputs: BTreeMap<String, String>,
        init: &Path,
        examples: impl FnOnce(&Self, &TextTokenizer) -> Result<Vec<SftExample>>,
        tc: &TrainConfig,
        steps: Option<usize>,
    ) -> Result<StageRecord> {
        self.require_owner(name)?;
        let key = RunDir::stage_key(name, &settings, &inputs);
        if let Some(r) = self.skip(name, &key) {
            return Ok(r);
        }
        let t0 = Instant::now();
        let dir = self.run.begin(name, &key, inputs)?;
        note(format!("{name}: training"));
        let tok = TextTokenizer::from_dir(init)?;
        let mut ex = examples(self, &tok)?;
        if tc.pack {
            ex = gramrr_train::pack_examples(&ex, tc.max_len);
        }
        if ex.is_empty() {
            return Err(PipelineError::stage(name, "no training examples: its data sets are empty (for synthesized data: no proof passed the rule filters)"));
        }
        let report = self.train(name, init, &dir, &ex, tc, steps)?;
        let stats = train_stats(&ex, &report);
        note(format!(
            "{name}: {} examples, {} steps, final loss {:.4}, {:.0} tokens/s, {:.0}s",
            ex.len(),
            report.steps,
            report.final_loss.unwrap_or(f32::NAN),
            report.tokens_per_sec,
            t0.elapsed().as_secs_f64()
        ));
        self.run.finish(name, &[("model", dir.join("model"))], stats, t0.elapsed().as_secs_f64())
    }

    /// Trains from `init` into `stage_dir/model`. Checkpoints go to `stage_dir/train` so a
    /// killed stage resumes from its last checkpoint.
    fn train(&self, name: &str, init: &Path, stage_dir: &Path, examples: &[SftExample], tc: &TrainConfig, steps: Option<usize>) -> Result<TrainReport> {
        let table = name.replace('/', ".");
        let sft = tc.sft_config(self.stage_seed(name), steps, &self.origin, &table)?;
        if let Some(report) = self.train_elsewhere(name, init, stage_dir, examples, tc, &sft)? {
            return Ok(report);
        }
        let device = self.opts.device.device()?;
        let cfg = DecoderConfig::from_file(&init.join("config.json"))?;
        let decoder = {
            let ck = SafetensorsCheckpoint::open(init, &device, WeightDType::F32)?;
            Decoder::load(&cfg, &ck)?
        };
        let tok = TextTokenizer::from_dir(init)?;
        let out = TrainOutput { dir: stage_dir.join("train"), base_model_dir: Some(init.to_path_buf()), plot: true };
        let mut obs = TrainBar::new(name);
        let (decoder, report) = train_sft(decoder, &tok, examples, &sft, Some(&out), &mut obs)?;
        drop(obs);
        gramrr_train::checkpoint::save_hf_checkpoint(&decoder, &stage_dir.join("model"), Some(init), Some(&tok))?;
        // The model now lives in `model/`; the trainer's copy and (unless kept) its resumable
        // checkpoints are no longer needed.
        let dup = out.dir.join("model.safetensors");
        if dup.exists() {
            std::fs::remove_file(&dup).map_err(|e| PipelineError::io(&dup, e))?;
        }
        let ck = gramrr_train::checkpoint::checkpoints_dir(&out.dir);
        if !tc.keep_checkpoints && ck.exists() {
            std::fs::remove_dir_all(&ck).map_err(|e| PipelineError::io(&ck, e))?;
        }
        Ok(report)
    }

    fn require_owner(&self, name: &str) -> Result<()> {
        match self.role {
            Role::Owner => Ok(()),
            Role::Worker(s) => Err(PipelineError::stage(name, format!("cannot run as shard {s}: only generation stages are sharded"))),
        }
    }

    /// Runs an item stage. The owner computes every missing chunk, merges all parts, finishes
    /// and records the stage; a worker computes its shard's chunks and returns `None`.
    #[allow(clippy::too_many_arguments)]
    fn item_stage<T>(
        &mut self,
        name: &str,
        settings: Value,
        inputs: BTreeMap<String, String>,
        ids: &[&str],
        chunk: usize,
        mut compute: impl FnMut(Range<usize>) -> Result<Vec<T>>,
        finish: Finish<'_, T>,
    ) -> Result<Option<StageRecord>>
    where
        T: Serialize + DeserializeOwned + Keyed,
    {
        let key = RunDir::stage_key(name, &settings, &inputs);
        if let Some(r) = self.skip(name, &key) {
            return Ok(Some(r));
        }
        let t0 = Instant::now();
        let (dir, shard) = match self.role {
            Role::Owner => (self.run.begin(name, &key, inputs)?, Shard::WHOLE),
            Role::Worker(s) => {
                let dir = self.run.stage_dir(name);
                prepare_stage_dir(&dir, &key, false)?;
                (dir, s)
            }
        };
        let pb = bar(ids.len() as u64, name);
        note(format!("{name}: {} items{}", ids.len(), if shard == Shard::WHOLE { String::new() } else { format!(", shard {shard}") }));
        let (limit, mut computed) = (self.interrupt_after_chunks, 0usize);
        let guarded = |r: Range<usize>| -> Result<Vec<T>> {
            if limit == Some(computed) {
                return Err(PipelineError::stage(name, "interrupted (test hook)"));
            }
            computed += 1;
            compute(r)
        };
        if !self.merge_only {
            run_chunks(&dir, ids, chunk, shard, guarded, |done, _| pb.set_position(done as u64))?;
        }
        pb.finish_and_clear();
        if self.role != Role::Owner {
            note(format!("{name}: shard {shard} finished in {:.0}s; merge with `gramrr pipeline merge`", t0.elapsed().as_secs_f64()));
            return Ok(None);
        }
        let items: Vec<T> = merge_parts(&dir, name, ids)?;
        let (outputs, stats) = finish(&dir, items)?;
        let outs: Vec<(&str, PathBuf)> = outputs.iter().map(|(k, p)| (*k, p.clone())).collect();
        let rec = self.run.finish(name, &outs, stats, t0.elapsed().as_secs_f64())?;
        note(format!("{name}: done in {:.0}s", t0.elapsed().as_secs_f64()));
        Ok(Some(rec))
    }

    /// A closure-friendly lazily loaded engine: loading waits until a chunk actually needs it.
    fn lazy_engine(&self, model: PathBuf) -> LazyEngine {
        // One log folder per checkpoint: its path inside the run, '/' as '_'.
        let name = model.strip_prefix(&self.run.root).unwrap_or(&model).to_string_lossy().trim_matches('/').replace(['/', '\\'], "_");
        LazyEngine {
            dir: model,
            opts: self.opts.clone(),
            remote: self.cfg.engine.clone(),
            log_dir: self.run.root.join("servers").join(name),
            backend: None,
            servers: None,
        }
    }

    fn synth_params(&self, stage: &str) -> SamplingParams {
        let s = &self.cfg.synthesis;
        SamplingParams {
            max_new_tokens: s.max_new_tokens,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            stop: vec![],
            seed: self.stage_seed(stage),
            ignore_eos: false,
        }
    }

    fn synth_settings(&self, stage: &str) -> Value {
        json!({
            "format": self.cfg.format, "filter": self.cfg.filter, "synthesis": self.cfg.synthesis,
            "seed": self.stage_seed(stage),
        })
    }

    /// A proof stage over `tasks` (pairs with the label to prove): samples, Eq. 5, rules.
    /// Writes `items.jsonl` and `data.jsonl` (the pairs that kept a proof, with the rationale).
    fn proof_stage(
        &mut self,
        name: &str,
        mut inputs: BTreeMap<String, String>,
        tasks: Vec<(PreferencePair, Label)>,
    ) -> Result<Option<StageRecord>> {
        let (prover, prover_hash) = self.done_output("prover", "model", name)?;
        inputs.insert("prover".into(), prover_hash);
        let settings = self.synth_settings(name);
        let params = self.synth_params(name);
        let k = self.cfg.synthesis.k;
        let format = self.format.clone();
        let mut engine = self.lazy_engine(prover);
        let ids: Vec<&str> = tasks.iter().map(|(p, _)| p.id.as_str()).collect();
        let tasks_ref = &tasks;
        let compute = |r: Range<usize>| -> Result<Vec<SynthItem>> {
            let t: Vec<ProofTask> = r.map(|i| ProofTask { index: i, pair: &tasks_ref[i].0, label: tasks_ref[i].1 }).collect();
            synthesize(engine.get()?, format.as_ref(), &t, k, &params)
        };
        let finish: Finish<SynthItem> = Box::new(move |dir: &Path, items: Vec<SynthItem>| {
            let data: Vec<PreferencePair> = items
                .iter()
                .filter_map(|it| {
                    it.rationale.as_ref().map(|z| {
                        let mut p = tasks_ref[it.index].0.clone();
                        p.label = Some(it.label);
                        p.rationale = Some(z.clone());
                        p
                    })
                })
                .collect();
            write_pairs(&dir.join("data.jsonl"), &data)?;
            let stats = synth_stats(&items);
            note(format!(
                "{}: {} of {} pairs kept a proof; {} of {} samples passed the rules; rejected {:?}",
                dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                stats.kept,
                stats.pairs,
                stats.samples_passed,
                stats.samples,
                stats.rejected
            ));
            Ok((vec![("items", dir.join("items.jsonl")), ("data", dir.join("data.jsonl"))], serde_json::to_value(stats).expect("stats serialize")))
        });
        let chunk = self.cfg.synthesis.chunk;
        self.item_stage(name, settings, inputs, &ids, chunk, compute, finish)
    }

    fn seed_pairs(&self) -> Result<Vec<PreferencePair>> {
        let path = &self.cfg.data.seed_rationales;
        canonical_seed(self.format.as_ref(), read_pairs(path)?, path)
    }

    // -----------------------------------------------------------------------------------------
    // Stages

    /// Stage 1: the preference-proving model π_ψ on the human rationales in proof form.
    pub fn stage_prover(&mut self) -> Result<StageRecord> {
        let base = self.resolve(self.cfg.prover_base())?;
        let mut inputs = BTreeMap::new();
        inputs.insert("seed_rationales".into(), self.input("seed_rationales", &self.cfg.data.seed_rationales.clone())?);
        inputs.insert("base".into(), self.model_hash(&base)?);
        let settings = json!({"format": self.cfg.format, "train": self.cfg.prover.train});
        let tc = self.cfg.prover.train.clone();
        self.train_stage(
            "prover",
            settings,
            inputs,
            &base,
            |s, tok| prover_examples(tok, s.format.as_ref(), &s.seed_pairs()?, tc.decision_weight),
            &tc.clone(),
            None,
        )
    }

    /// Stage 2: proofs for the rationale-free labeled pairs.
    pub fn stage_synth(&mut self) -> Result<Option<StageRecord>> {
        let path = self.cfg.data.labeled.clone();
        let mut inputs = BTreeMap::new();
        inputs.insert("labeled".into(), self.input("labeled", &path)?);
        let tasks: Vec<(PreferencePair, Label)> =
            read_pairs(&path)?.into_iter().filter_map(|p| preference(&p).map(|l| (p, l))).collect();
        if tasks.is_empty() {
            return Err(PipelineError::stage("synth", format!("{}: no pairs labeled A or B", path.display())));
        }
        self.proof_stage("synth", inputs, tasks)
    }

    /// The reward model's own training data: the synthesized set, plus the human rationales
    /// when `reward_model.include_seed`. Returns (named data files with hashes, pairs).
    fn rm_data(&mut self, needed_by: &str, iterations: usize) -> Result<(BTreeMap<String, String>, Vec<PreferencePair>)> {
        let mut inputs = BTreeMap::new();
        let mut pairs = Vec::new();
        let (synth, h) = self.done_output("synth", "data", needed_by)?;
        inputs.insert("synth".into(), h);
        pairs.extend(read_pairs(&synth)?);
        for i in 1..=iterations {
            let (p, h) = self.done_output(&format!("iter{i}/prove"), "data", needed_by)?;
            inputs.insert(format!("iter{i}"), h);
            pairs.extend(read_pairs(&p)?);
        }
        if self.cfg.reward_model.include_seed {
            inputs.insert("seed_rationales".into(), self.input("seed_rationales", &self.cfg.data.seed_rationales.clone())?);
            pairs.extend(self.seed_pairs()?);
        }
        Ok((inputs, pairs))
    }

    /// Stage 3: the initial reward model π_φ.
    pub fn stage_reward_model(&mut self) -> Result<StageRecord> {
        let base = self.resolve(&self.cfg.model.base.clone())?;
        let (mut inputs, pairs) = self.rm_data("rm", 0)?;
        inputs.insert("base".into(), self.model_hash(&base)?);
        let tc = self.cfg.reward_model.train.clone();
        let settings = json!({"format": self.cfg.format, "train": tc, "include_seed": self.cfg.reward_model.include_seed});
        self.train_stage("rm", settings, inputs, &base, |s, tok| rm_examples(tok, s.format.as_ref(), &pairs, tc.decision_weight), &tc.clone(), None)
    }

    /// The reward model a self-training iteration starts from.
    fn rm_before(&self, iteration: usize) -> String {
        if iteration <= 1 {
            "rm".into()
        } else {
            format!("iter{}/rm", iteration - 1)
        }
    }

    /// The unlabeled pairs of iteration `i` (1-based).
    fn unlabeled_batch(&mut self, i: usize) -> Result<(String, Vec<PreferencePair>, Range<usize>)> {
        let path = self.cfg.data.unlabeled.clone().ok_or_else(|| PipelineError::stage("self-training", "data.unlabeled is not set"))?;
        let h = self.input("unlabeled", &path)?;
        let all = read_pairs(&path)?;
        let m = self.cfg.self_training.iterations.max(1);
        let b = if self.cfg.self_training.batch > 0 { self.cfg.self_training.batch } else { all.len().div_ceil(m) };
        let r = ((i - 1) * b).min(all.len())..(i * b).min(all.len());
        if r.is_empty() {
            return Err(PipelineError::stage(
                format!("iter{i}/pseudo"),
                format!("{} has {} pairs: none left for iteration {i} at {b} per iteration", path.display(), all.len()),
            ));
        }
        let pairs = all[r.clone()]
            .iter()
            .map(|p| PreferencePair { label: None, rationale: None, ..p.clone() })
            .collect();
        Ok((h, pairs, r))
    }

    /// Stage 4a: π_φ labels a batch of unlabeled pairs by majority vote; the confidence
    /// threshold keeps the sure ones.
    pub fn stage_pseudo(&mut self, i: usize) -> Result<Option<StageRecord>> {
        let name = format!("iter{i}/pseudo");
        let (h, pairs, range) = self.unlabeled_batch(i)?;
        let (rm, rm_hash) = self.done_output(&self.rm_before(i), "model", &name)?;
        let mut inputs = BTreeMap::new();
        inputs.insert("unlabeled".into(), h);
        inputs.insert("reward_model".into(), rm_hash);
        let st = self.cfg.self_training.clone();
        let settings = json!({
            "format": self.cfg.format, "votes": st.votes, "temperature": st.temperature, "top_p": st.top_p,
            "max_new_tokens": st.max_new_tokens, "threshold": st.threshold, "range": [range.start, range.end],
            "seed": self.stage_seed(&name),
        });
        let params = SamplingParams {
            max_new_tokens: st.max_new_tokens,
            temperature: st.temperature,
            top_p: st.top_p,
            seed: self.stage_seed(&name),
            ..Default::default()
        };
        let format = self.format.clone();
        let mut engine = self.lazy_engine(rm);
        let ids: Vec<&str> = pairs.iter().map(|p| p.id.as_str()).collect();
        let pairs_ref = &pairs;
        let compute = |r: Range<usize>| -> Result<Vec<PseudoItem>> {
            let chunk: Vec<(usize, &PreferencePair)> = r.map(|j| (j, &pairs_ref[j])).collect();
            pseudo_label(engine.get()?, format.as_ref(), &chunk, st.votes, &params, st.threshold)
        };
        let finish: Finish<PseudoItem> = Box::new(|dir: &Path, items: Vec<PseudoItem>| {
            let s = pseudo_stats(&items);
            Ok((vec![("items", dir.join("items.jsonl"))], serde_json::to_value(s).expect("stats serialize")))
        });
        self.item_stage(&name, settings, inputs, &ids, st.chunk, compute, finish)
    }

    /// Stage 4b: π_ψ writes proofs for the kept pseudo-labels; the rule filters run on them.
    pub fn stage_prove(&mut self, i: usize) -> Result<Option<StageRecord>> {
        let name = format!("iter{i}/prove");
        let (items_path, h) = self.done_output(&format!("iter{i}/pseudo"), "items", &name)?;
        let (_, pairs, _) = self.unlabeled_batch(i)?;
        let items: Vec<PseudoItem> = read_items(items_path.parent().expect("items live in a stage directory"))?;
        let by_id: HashMap<&str, &PreferencePair> = pairs.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut tasks = Vec::new();
        for it in items.iter().filter(|it| it.kept) {
            let l = it.majority.expect("a kept pair has a majority label");
            let mut p = (*by_id.get(it.id.as_str()).ok_or_else(|| PipelineError::stage(&name, format!("pseudo-label for unknown pair {:?}", it.id)))?).clone();
            p.label = Some(l);
            p.metadata.insert("pseudo_label".into(), Value::Bool(true));
            tasks.push((p, l));
        }
        let mut inputs = BTreeMap::new();
        inputs.insert("pseudo".into(), h);
        if tasks.is_empty() {
            note(format!("{name}: no pseudo-label passed the vote and the threshold; this iteration adds no data (lower self_training.threshold?)"));
        }
        self.proof_stage(&name, inputs, tasks)
    }

    /// Stage 4c: retrain π_φ on everything synthesized so far.
    pub fn stage_retrain(&mut self, i: usize) -> Result<StageRecord> {
        let name = format!("iter{i}/rm");
        let (mut inputs, pairs) = self.rm_data(&name, i)?;
        let init = match self.cfg.self_training.retrain_from {
            RetrainFrom::Previous => self.done_output(&self.rm_before(i), "model", &name)?.0,
            RetrainFrom::Base => self.resolve(&self.cfg.model.base.clone())?,
        };
        inputs.insert("init".into(), self.model_hash(&init)?);
        let tc = self.cfg.self_training.train.clone();
        let settings = json!({"format": self.cfg.format, "train": tc, "from": self.cfg.self_training.retrain_from});
        let rec = self.train_stage(&name, settings, inputs, &init, |s, tok| rm_examples(tok, s.format.as_ref(), &pairs, tc.decision_weight), &tc.clone(), None)?;
        Ok(rec)
    }

    /// One self-training iteration: pseudo-label, prove, retrain; logs the counts per filter.
    pub fn self_train_iteration(&mut self, i: usize) -> Result<IterationLog> {
        let pseudo = self.stage_pseudo(i)?.expect("the owner finishes stages");
        let prove = self.stage_prove(i)?.expect("the owner finishes stages");
        let rm = self.stage_retrain(i)?;
        let log = IterationLog::from_stats(i, &pseudo.stats, &prove.stats, &rm.stats);
        note(format!(
            "iteration {i}: {} pairs → {} with a majority vote → {} above the threshold → {} with a proof passing the rules (rejected samples: {:?})",
            log.pairs, log.voted, log.confident, log.kept, log.rejected
        ));
        Ok(log)
    }

    /// The last reward model before the final fine-tune.
    fn last_rm(&self) -> String {
        match self.cfg.self_training.iterations {
            0 => "rm".into(),
            m => format!("iter{m}/rm"),
        }
    }

    /// Stage 5a: fine-tune on the human rationale data.
    pub fn stage_final(&mut self) -> Result<StageRecord> {
        let (init, h) = self.done_output(&self.last_rm(), "model", "final")?;
        let mut inputs = BTreeMap::new();
        inputs.insert("init".into(), h);
        inputs.insert("seed_rationales".into(), self.input("seed_rationales", &self.cfg.data.seed_rationales.clone())?);
        let tc = self.cfg.final_tune.train.clone();
        let settings = json!({"format": self.cfg.format, "train": tc});
        self.train_stage("final", settings, inputs, &init, |s, tok| rm_examples(tok, s.format.as_ref(), &s.seed_pairs()?, tc.decision_weight), &tc.clone(), None)
    }

    /// The vanilla generative RM: the backbone trained on the human rationales only.
    pub fn stage_baseline(&mut self) -> Result<StageRecord> {
        let base = self.resolve(&self.cfg.model.base.clone())?;
        let mut inputs = BTreeMap::new();
        inputs.insert("base".into(), self.model_hash(&base)?);
        inputs.insert("seed_rationales".into(), self.input("seed_rationales", &self.cfg.data.seed_rationales.clone())?);
        let tc = self.cfg.baseline.train.clone();
        let settings = json!({"format": self.cfg.format, "train": tc});
        self.train_stage("baseline", settings, inputs, &base, |s, tok| rm_examples(tok, s.format.as_ref(), &s.seed_pairs()?, tc.decision_weight), &tc.clone(), None)
    }

    /// The compute-matched control: the initial reward model trained on its own data for as
    /// many extra rounds and steps as self-training used, with self-training's settings.
    pub fn stage_control(&mut self) -> Result<StageRecord> {
        let name = "control";
        self.require_owner(name)?;
        let (init, h) = self.done_output("rm", "model", name)?;
        let m = self.cfg.self_training.iterations;
        let mut steps = Vec::with_capacity(m);
        for i in 1..=m {
            let r = self.run.require_done(&format!("iter{i}/rm"), name)?;
            steps.push(r.stats.get("steps").and_then(|s| s.as_u64()).unwrap_or(0) as usize);
        }
        let (mut inputs, pairs) = self.rm_data(name, 0)?;
        inputs.insert("init".into(), h);
        let tc = self.cfg.self_training.train.clone();
        let settings = json!({"format": self.cfg.format, "train": tc, "rounds": steps});
        let key = RunDir::stage_key(name, &settings, &inputs);
        if let Some(r) = self.skip(name, &key) {
            return Ok(r);
        }
        let t0 = Instant::now();
        let dir = self.run.begin(name, &key, inputs)?;
        let tok = TextTokenizer::from_dir(&init)?;
        let ex = rm_examples(&tok, self.format.as_ref(), &pairs, tc.decision_weight)?;
        let mut cur = init.clone();
        let mut reports = Vec::new();
        for (j, &s) in steps.iter().enumerate() {
            let round = dir.join(format!("round{}", j + 1));
            if round.join("model").join("config.json").exists() && round.join("train").join("train_report.json").exists() {
                cur = round.join("model");
                continue;
            }
            note(format!("control: round {} of {m}, {s} steps", j + 1));
            let r = self.train(&format!("control/round{}", j + 1), &cur, &round, &ex, &tc, Some(s))?;
            reports.push(r);
            cur = round.join("model");
        }
        let final_dir = dir.join("model");
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| PipelineError::io(&final_dir, e))?;
        }
        copy_dir(&cur, &final_dir)?;
        let stats = json!({"examples": ex.len(), "steps": steps.iter().sum::<usize>(), "rounds": steps});
        self.run.finish(name, &[("model", final_dir)], stats, t0.elapsed().as_secs_f64())
    }

    /// Stage 5b: task adaptation. Task pairs without a rationale get a synthesized proof
    /// (`adapt/synth`); the foundation RM is fine-tuned on the result (`adapt/train`).
    pub fn stage_adapt(&mut self) -> Result<Option<StageRecord>> {
        let Some(path) = self.cfg.adapt.data.clone() else { return Ok(None) };
        let h = self.input("task", &path)?;
        let all: Vec<PreferencePair> = read_pairs(&path)?.into_iter().filter(|p| preference(p).is_some()).collect();
        let (with, without): (Vec<PreferencePair>, Vec<PreferencePair>) = all.into_iter().partition(|p| p.rationale.is_some());
        let with = canonical_seed(self.format.as_ref(), with, &path)?;
        let mut pairs = with;
        let mut inputs = BTreeMap::new();
        inputs.insert("task".into(), h.clone());
        if !without.is_empty() {
            let tasks: Vec<(PreferencePair, Label)> = without.into_iter().map(|p| (p.clone(), preference(&p).expect("filtered"))).collect();
            let mut si = BTreeMap::new();
            si.insert("task".into(), h);
            let rec = self.proof_stage("adapt/synth", si, tasks)?.expect("the owner finishes stages");
            let data = rec.outputs.get("data").expect("proof stages record data");
            inputs.insert("synth".into(), data.sha256.clone());
            pairs.extend(read_pairs(Path::new(&data.path))?);
        }
        let from = if self.cfg.final_tune.enabled { "final".to_string() } else { self.last_rm() };
        let (init, ih) = self.done_output(&from, "model", "adapt/train")?;
        inputs.insert("init".into(), ih);
        let tc = self.cfg.adapt.train.clone();
        let settings = json!({"format": self.cfg.format, "train": tc});
        self.train_stage("adapt/train", settings, inputs, &init, |s, tok| rm_examples(tok, s.format.as_ref(), &pairs, tc.decision_weight), &tc.clone(), None)
            .map(Some)
    }

    /// Pairwise accuracy of a trained model on `eval.data`, as stage `eval/LABEL`.
    pub fn stage_eval(&mut self, label: &str, model_stage: &str) -> Result<Option<EvalSummary>> {
        let Some(path) = self.cfg.eval.data.clone() else { return Ok(None) };
        self.require_owner("eval")?;
        let name = format!("eval/{label}");
        let (model, mh) = self.done_output(model_stage, "model", &name)?;
        let mut inputs = BTreeMap::new();
        inputs.insert("test".into(), self.input("test", &path)?);
        inputs.insert("model".into(), mh);
        let max_new = if self.cfg.eval.max_new_tokens > 0 { self.cfg.eval.max_new_tokens } else { self.cfg.self_training.max_new_tokens };
        let settings = json!({"format": self.cfg.format, "max_new_tokens": max_new});
        let key = RunDir::stage_key(&name, &settings, &inputs);
        if let Some(r) = self.skip(&name, &key) {
            return Ok(Some(serde_json::from_value(r.stats).map_err(|e| PipelineError::stage(&name, e.to_string()))?));
        }
        let t0 = Instant::now();
        let dir = self.run.begin(&name, &key, inputs)?;
        let pairs = read_pairs(&path)?;
        let mut engine = self.lazy_engine(model);
        let pb = bar(pairs.len() as u64, &name);
        let (summary, preds) = evaluate(engine.get()?, self.format.as_ref(), &pairs, max_new, self.opts.batch_size.max(1) * 4, |d| pb.set_position(d as u64))?;
        pb.finish_and_clear();
        let mut buf = Vec::new();
        for p in &preds {
            serde_json::to_writer(&mut buf, p).expect("predictions serialize");
            buf.push(b'\n');
        }
        let out = dir.join("predictions.jsonl");
        gramrr_model::fsutil::write_atomic(&out, &buf)?;
        note(format!("{name}: accuracy {:.2}% on {} pairs ({})", summary.accuracy, summary.pairs, unparsed_note(&summary.failures)));
        self.run.finish(&name, &[("predictions", out)], serde_json::to_value(&summary).expect("summary serializes"), t0.elapsed().as_secs_f64())?;
        Ok(Some(summary))
    }

    /// Every stage in order; a rerun skips what is done and continues what was interrupted.
    pub fn run_all(&mut self) -> Result<RunSummary> {
        let t0 = Instant::now();
        let mut summary = RunSummary::default();
        let eval = |p: &mut Self, label: &str, stage: &str, s: &mut RunSummary| -> Result<()> {
            if let Some(e) = p.stage_eval(label, stage)? {
                s.accuracy.insert(label.to_string(), e.accuracy);
            }
            Ok(())
        };
        self.stage_prover()?;
        self.stage_synth()?;
        self.stage_reward_model()?;
        if self.cfg.baseline.enabled {
            self.stage_baseline()?;
            eval(self, "baseline", "baseline", &mut summary)?;
        }
        eval(self, "rm", "rm", &mut summary)?;
        for i in 1..=self.cfg.self_training.iterations {
            let log = self.self_train_iteration(i)?;
            summary.iterations.push(log);
            eval(self, &format!("iter{i}"), &format!("iter{i}/rm"), &mut summary)?;
        }
        gramrr_model::fsutil::write_json_atomic(
            &self.run.root.join("self_training.json"),
            &serde_json::to_value(&summary.iterations).expect("logs serialize"),
        )?;
        if self.cfg.final_tune.enabled {
            self.stage_final()?;
            eval(self, "final", "final", &mut summary)?;
        }
        if self.cfg.control.enabled {
            self.stage_control()?;
            eval(self, "control", "control", &mut summary)?;
        }
        if self.stage_adapt()?.is_some() {
            eval(self, "adapt", "adapt/train", &mut summary)?;
        }
        summary.seconds = t0.elapsed().as_secs_f64();
        gramrr_model::fsutil::write_json_atomic(&self.run.root.join("summary.json"), &serde_json::to_value(&summary).expect("summary serializes"))?;
        Ok(summary)
    }

    /// Merges the shard parts of a generation stage (`synth`, `iterI/pseudo`, `iterI/prove`,
    /// `adapt/synth`) and records it as done: every item must be present.
    pub fn merge(&mut self, stage: &str) -> Result<StageRecord> {
        self.require_owner(stage)?;
        self.merge_only = true;
        let rec = self.merge_stage(stage);
        self.merge_only = false;
        rec
    }

    fn merge_stage(&mut self, stage: &str) -> Result<StageRecord> {
        let rec = if stage == "synth" {
            self.stage_synth()?
        } else if stage == "adapt/synth" {
            self.stage_adapt()?;
            self.run.record("adapt/synth").cloned()
        } else if let Some(i) = stage.strip_prefix("iter").and_then(|s| s.strip_suffix("/pseudo")).and_then(|s| s.parse().ok()) {
            self.stage_pseudo(i)?
        } else if let Some(i) = stage.strip_prefix("iter").and_then(|s| s.strip_suffix("/prove")).and_then(|s| s.parse().ok()) {
            self.stage_prove(i)?
        } else {
            return Err(PipelineError::stage(stage, "not a sharded stage (synth, iterI/pseudo, iterI/prove, adapt/synth)"));
        };
        rec.ok_or_else(|| PipelineError::stage(stage, "not finished"))
    }
}

/// Copies a model directory's files (not subdirectories).
/// "none unparsed", or "3 unparsed: no verdict 2, unfinished 1" for the eval log line.
fn unparsed_note(failures: &BTreeMap<String, usize>) -> String {
    let total: usize = failures.values().sum();
    if total == 0 {
        return "none unparsed".into();
    }
    let kinds: Vec<String> = failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total} unparsed: {}", kinds.join(", "))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| PipelineError::io(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| PipelineError::io(from, e))? {
        let e = e.map_err(|e| PipelineError::io(from, e))?;
        if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let dst = to.join(e.file_name());
            std::fs::copy(e.path(), &dst).map_err(|err| PipelineError::io(&dst, err))?;
        }
    }
    Ok(())
}

fn train_stats(ex: &[SftExample], r: &TrainReport) -> Value {
    json!({
        "examples": ex.len(),
        "steps": r.steps,
        "final_loss": r.final_loss,
        "tokens": r.tokens,
        "tokens_per_sec": r.tokens_per_sec,
        "train_seconds": r.seconds,
    })
}

/// The backend of one stage, made on first use: the local engine, the configured servers
/// (`engine.urls`), or servers launched on the stage's checkpoint (`engine.launch`), which stop
/// when this value is dropped at the end of the stage, on error too.
pub struct LazyEngine {
    dir: PathBuf,
    opts: LoadOptions,
    remote: crate::config::EngineConfig,
    log_dir: PathBuf,
    backend: Option<Box<dyn Backend>>,
    servers: Option<gramrr_remote::launch::LaunchedServers>,
}

impl LazyEngine {
    pub fn get(&mut self) -> Result<&dyn Backend> {
        if self.backend.is_none() {
            let e = &self.remote;
            let urls = if let Some(template) = &e.launch {
                note(format!("starting {} server(s): {}", e.replicas, template.replace("{model}", &self.dir.display().to_string())));
                let s = gramrr_remote::launch::LaunchedServers::start(
                    template,
                    &self.dir,
                    e.replicas,
                    &self.log_dir,
                    std::time::Duration::from_secs(e.startup_timeout_s),
                )
                .map_err(BackendError::from)?;
                let urls = s.urls.clone();
                self.servers = Some(s);
                urls
            } else {
                e.urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect()
            };
            self.backend = Some(if urls.is_empty() {
                Box::new(Engine::load(&self.dir.display().to_string(), &self.opts)?)
            } else {
                let mut cfg = gramrr_remote::RemoteConfig::new(urls, self.dir.display().to_string());
                cfg.served_model = e.served_model.clone();
                cfg.pool.max_in_flight = e.max_in_flight;
                cfg.pool.request_timeout = std::time::Duration::from_secs(e.request_timeout_s.max(1));
                cfg.pool.api_key = std::env::var("GRAMRR_API_KEY").or_else(|_| std::env::var("OPENAI_API_KEY")).ok().filter(|k| !k.is_empty());
                Box::new(gramrr_remote::RemoteBackend::connect(cfg).map_err(BackendError::from)?)
            });
        }
        Ok(self.backend.as_deref().expect("just made"))
    }
}

/// How many pairs each filter of one self-training iteration kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct IterationLog {
    pub iteration: usize,
    /// Unlabeled pairs in the batch.
    pub pairs: usize,
    /// With a majority vote.
    pub voted: usize,
    /// At or above the confidence threshold.
    pub confident: usize,
    /// With a proof that passed the rule filters: the pairs added to the training data.
    pub kept: usize,
    /// Rejected proof samples by reason.
    pub rejected: BTreeMap<String, usize>,
    pub train_examples: usize,
    pub train_steps: usize,
}

impl IterationLog {
    fn from_stats(i: usize, pseudo: &Value, prove: &Value, rm: &Value) -> Self {
        let n = |v: &Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as usize;
        IterationLog {
            iteration: i,
            pairs: n(pseudo, "pairs"),
            voted: n(pseudo, "voted"),
            confident: n(pseudo, "confident"),
            kept: n(prove, "kept"),
            rejected: prove.get("rejected").and_then(|r| serde_json::from_value(r.clone()).ok()).unwrap_or_default(),
            train_examples: n(rm, "examples"),
            train_steps: n(rm, "steps"),
        }
    }
}

/// What `run_all` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct RunSummary {
    /// Test accuracy (percent) by model, when `eval.data` is set.
    pub accuracy: BTreeMap<String, f64>,
    pub iterations: Vec<IterationLog>,
    pub seconds: f64,
}

#[cfg(test)]
mod unparsed_tests {
    #[test]
    fn eval_log_line_counts_unparsed_outputs_by_kind() {
        let mut f = std::collections::BTreeMap::new();
        assert_eq!(super::unparsed_note(&f), "none unparsed");
        f.insert("no verdict".to_string(), 2);
        f.insert("unfinished".to_string(), 1);
        assert_eq!(super::unparsed_note(&f), "3 unparsed: no verdict 2, unfinished 1");
    }
}
