//! `backend = "command"`: fake trainer commands (small shell scripts) that copy a valid
//! checkpoint, fail, write nothing, write another architecture or vocabulary, or write a PEFT
//! adapter; `export-sft` and `--stage-model` through the library API. No Python needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gramrr_model::init::{char_tokenizer_with_tokens, write_random_model, InitSpec};
use gramrr_model::weights::SafetensorsCheckpoint;
use gramrr_model::{Architecture, Decoder, DecoderConfig, WeightDType};
use gramrr_pipeline::data::write_pairs;
use gramrr_pipeline::demo::domain::{Domain, DomainSizes, ALPHABET};
use gramrr_pipeline::format::compact::TAGS;
use gramrr_pipeline::run::StageStatus;
use gramrr_pipeline::{Pipeline, PipelineConfig, PipelineError};
use gramrr_train::{LoraConfig, LoraTarget};

fn spec(arch: Architecture, seed: u64) -> InitSpec {
    let mut s = InitSpec::tiny(arch);
    s.hidden_size = 32;
    s.intermediate_size = 64;
    s.num_hidden_layers = 1;
    s.num_attention_heads = 2;
    s.num_key_value_heads = 1;
    s.seed = seed;
    s
}

/// Data, the base model, and checkpoints a fake trainer can hand back.
fn setup(root: &Path) {
    let d = Domain::generate(11, &DomainSizes { seed: 12, labeled: 10, unlabeled: 4, test: 4, pretrain: 0 });
    let data = root.join("data");
    write_pairs(&data.join("seed.jsonl"), &d.seed).unwrap();
    write_pairs(&data.join("labeled.jsonl"), &d.labeled).unwrap();
    write_pairs(&data.join("unlabeled.jsonl"), &d.unlabeled).unwrap();
    let tok = char_tokenizer_with_tokens(ALPHABET, &TAGS).unwrap();
    write_random_model(&root.join("model"), &spec(Architecture::Qwen3, 5), &tok, DType::F32).unwrap();
    // "Trained elsewhere": same architecture and vocabulary, other weights.
    write_random_model(&root.join("other"), &spec(Architecture::Qwen3, 6), &tok, DType::F32).unwrap();
    write_random_model(&root.join("llama"), &spec(Architecture::Llama, 6), &tok, DType::F32).unwrap();
    let small = char_tokenizer_with_tokens("abc0123456789", &TAGS).unwrap();
    write_random_model(&root.join("vocab"), &spec(Architecture::Qwen3, 6), &small, DType::F32).unwrap();
}

/// A config whose prover and baseline train with `prover` and `baseline` commands.
fn config(root: &Path, run: &str, prover: &str, baseline: &str) -> (PipelineConfig, PathBuf) {
    let text = format!(
        r#"
run_dir = "{run}"
seed = 3
[format]
name = "compact"
[data]
seed_rationales = "data/seed.jsonl"
labeled = "data/labeled.jsonl"
unlabeled = "data/unlabeled.jsonl"
[model]
base = "model"
[train]
steps = 2
batch_size = 4
lr = 1e-3
max_len = 200
decision_weight = 3.0
backend = "command"
command = "exit 99"
[prover.train]
command = {prover:?}
[baseline.train]
command = {baseline:?}
"#
    );
    let origin = root.join(format!("{run}.toml"));
    std::fs::write(&origin, &text).unwrap();
    (PipelineConfig::from_file(&origin).unwrap(), origin)
}

fn tensors(dir: &Path) -> BTreeMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap().into_iter().collect()
}

fn max_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(k, t)| (t - &b[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
        .fold(0.0, f32::max)
}

fn err_text(e: PipelineError) -> String {
    e.to_string()
}

#[test]
fn a_command_that_leaves_a_checkpoint_trains_the_stage_and_failures_are_refused() {
    gramrr_pipeline::progress::set_quiet(true);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);

    // The prover's command copies a valid checkpoint (and counts its runs); the baseline's
    // exits non-zero after printing.
    let good = "echo run >> prover_runs.txt; test -s {data}/tokens.jsonl && cp other/* {out}/";
    let failing = "for i in $(seq 1 30); do echo line $i; done; echo 'CUDA out of memory' >&2; exit 3";
    let (cfg, origin) = config(root, "run", good, failing);
    let mut p = Pipeline::open(cfg, &origin, false).unwrap();
    let rec = p.stage_prover().unwrap();
    let model = PathBuf::from(&rec.outputs["model"].path);
    assert_eq!(max_diff(&tensors(&model), &tensors(&root.join("other"))), 0.0, "the stage's model is what the command left");
    assert!(p.run.is_done("prover", &rec.key), "the manifest records the stage");
    assert!(root.join("run/prover/train/command.log").exists());
    assert_eq!(rec.stats["steps"], 2);

    let e = err_text(p.stage_baseline().unwrap_err());
    assert!(e.contains("exited with status 3") && e.contains("CUDA out of memory"), "{e}");
    assert!(e.contains("line 30") && !e.contains("\nline 5\n"), "the last 20 lines only: {e}");
    assert!(p.run.record("baseline").is_none_or(|r| r.status != StageStatus::Done), "a failed stage records no model");
    drop(p);

    // --resume with a fixed baseline command: the prover is not run again, the baseline is.
    let (cfg, origin) = config(root, "run", good, "cp other/* {out}/");
    let mut p = Pipeline::open(cfg, &origin, true).unwrap();
    p.stage_prover().unwrap();
    let rec = p.stage_baseline().unwrap();
    assert!(PathBuf::from(&rec.outputs["model"].path).join("config.json").exists());
    assert_eq!(std::fs::read_to_string(root.join("prover_runs.txt")).unwrap().lines().count(), 1, "the done stage was skipped");
    drop(p);

    // Nothing written, another architecture, another vocabulary: each refused, naming why.
    let cases = [
        ("true", vec!["no usable model", "an empty directory"]),
        ("cp llama/* {out}/", vec!["architecture Llama", "Qwen3"]),
        ("cp vocab/* {out}/", vec!["vocab_size"]),
        ("cp other/config.json {out}/", vec!["no *.safetensors"]),
    ];
    for (i, (cmd, want)) in cases.iter().enumerate() {
        let (cfg, origin) = config(root, &format!("bad{i}"), cmd, "exit 1");
        let mut p = Pipeline::open(cfg, &origin, false).unwrap();
        let e = err_text(p.stage_prover().unwrap_err());
        for w in want {
            assert!(e.contains(w), "{cmd}: expected {w:?} in: {e}");
        }
        assert!(p.run.record("prover").is_none_or(|r| r.status != StageStatus::Done), "{cmd}: the stage is not done");
    }
}

#[test]
fn a_peft_adapter_is_merged_into_the_stage_base() {
    gramrr_pipeline::progress::set_quiet(true);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    // A PEFT-layout adapter with non-zero B (a fresh adapter merges to nothing).
    let base = root.join("model");
    let cfg = DecoderConfig::from_file(&base.join("config.json")).unwrap();
    let load = || Decoder::load(&cfg, &SafetensorsCheckpoint::open(&base, &Device::Cpu, WeightDType::F32).unwrap()).unwrap();
    let mut d = load();
    let lc = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec![LoraTarget::Q, LoraTarget::Down] };
    gramrr_train::lora::attach_lora(&mut d, &lc, 1).unwrap();
    gramrr_train::lora::map_lora(&mut d, &mut |name, t| Ok(if name.contains("lora_B") { (t.ones_like()? * 0.05)? } else { t.clone() })).unwrap();
    gramrr_train::save_adapter(&d, &lc, &root.join("adapter"), "model").unwrap();
    let mut want = load();
    gramrr_train::load_adapter(&mut want, &root.join("adapter")).unwrap();
    gramrr_train::merge_lora(&mut want).unwrap();
    gramrr_train::checkpoint::save_hf_checkpoint(&want, &root.join("want"), Some(&base), None).unwrap();

    let (cfg, origin) = config(root, "run", "cp adapter/* {out}/", "exit 1");
    let mut p = Pipeline::open(cfg, &origin, false).unwrap();
    let rec = p.stage_prover().unwrap();
    let got = tensors(Path::new(&rec.outputs["model"].path));
    assert_eq!(max_diff(&got, &tensors(&root.join("want"))), 0.0, "merged as merge-lora does");
    assert!(max_diff(&got, &tensors(&base)) > 1e-3, "the adapter changed the model");
}

#[test]
fn export_sft_writes_every_format_and_stage_model_brings_the_checkpoint_back() {
    gramrr_pipeline::progress::set_quiet(true);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let (mut cfg, origin) = config(root, "run", "exit 1", "exit 1");
    // The exported settings are the stage's own whatever its backend.
    cfg.prover.train.backend = Default::default();
    cfg.prover.train.grad_accum = 2;
    let out = root.join("export");
    let mut p = Pipeline::open(cfg.clone(), &origin, false).unwrap();
    p.export_stage = Some(("prover".into(), out.clone()));
    let s = match p.stage_prover() {
        Err(PipelineError::Exported(s)) => s,
        other => panic!("expected an export, got {other:?}"),
    };
    assert!(p.run.record("prover").is_none_or(|r| r.status != StageStatus::Done), "exporting does not finish the stage");
    let n = d_lines(&out.join("tokens.jsonl"));
    assert_eq!(n, s.examples);
    for f in ["prompt_completion.jsonl", "messages.jsonl", "llamafactory/alpaca.jsonl", "llamafactory/sharegpt.jsonl"] {
        assert_eq!(d_lines(&out.join(f)), n, "{f}");
    }
    let row: serde_json::Value = serde_json::from_str(std::fs::read_to_string(out.join("tokens.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    let w: Vec<f64> = row["weights"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(w.len(), row["input_ids"].as_array().unwrap().len());
    assert!(w.contains(&3.0) && w.contains(&1.0) && w[0] == 0.0, "prompt 0, decision tokens 3, others 1: {w:?}");
    assert!(s.weighted_examples > 0 && s.text_round_trip == n, "{s:?}");
    let tc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("train_config.json")).unwrap()).unwrap();
    assert_eq!((tc["max_steps"].as_u64(), tc["gradient_accumulation_steps"].as_u64(), tc["learning_rate"].as_f64()), (Some(2), Some(2), Some(1e-3)));
    let sched: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("schedule.json")).unwrap()).unwrap();
    let steps = sched["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    // 12 examples in micro-batches of 4, two per step: steps never span epochs, so the second
    // step has the epoch's last micro-batch alone.
    let sizes: Vec<usize> = steps.iter().map(|s| s.as_array().unwrap().len()).collect();
    assert_eq!(sizes, [2, 1]);
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("llamafactory/dataset_info.json")).unwrap()).unwrap();
    assert_eq!(info["gramrr_sharegpt"]["formatting"], "sharegpt");
    assert!(std::fs::read_to_string(out.join("README.md")).unwrap().contains("decision_weight"));
    drop(p);

    // Bring a checkpoint back for the unfinished stage.
    let mut p = Pipeline::open(cfg, &origin, true).unwrap();
    p.stage_models.insert("prover".into(), root.join("other"));
    let rec = p.stage_prover().unwrap();
    assert_eq!(max_diff(&tensors(Path::new(&rec.outputs["model"].path)), &tensors(&root.join("other"))), 0.0);
    assert_eq!(rec.stats["steps"], 2);
}

fn d_lines(p: &Path) -> usize {
    std::fs::read_to_string(p).unwrap().lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn bad_commands_in_the_config_are_refused_when_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("data")).unwrap();
    let base = "run_dir = \"r\"\n[data]\nseed_rationales = \"s\"\nlabeled = \"l\"\n[model]\nbase = \"m\"\n[self_training]\niterations = 0\n";
    let e = PipelineConfig::from_toml(&format!("{base}[train]\nbackend = \"command\"\n"), &root.join("c.toml")).unwrap_err();
    assert!(e.to_string().contains("prover.train.command"), "{e}");
    let e = PipelineConfig::from_toml(&format!("{base}[reward_model.train]\nbackend = \"command\"\ncommand = \"t {{mdl}}\"\n"), &root.join("c.toml")).unwrap_err();
    assert!(e.to_string().contains("reward_model.train.command") && e.to_string().contains("{mdl}"), "{e}");
}
