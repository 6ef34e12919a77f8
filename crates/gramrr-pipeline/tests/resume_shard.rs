//! A generation stage interrupted midway and resumed, and the same stage split over two shard
//! workers and merged, both produce exactly the items of an uninterrupted run: nothing lost,
//! nothing duplicated, byte for byte.

use std::path::Path;

use candle_core::DType;
use gramrr_model::init::{char_tokenizer_with_tokens, write_random_model, InitSpec};
use gramrr_model::Architecture;
use gramrr_pipeline::data::write_pairs;
use gramrr_pipeline::demo::domain::{Domain, DomainSizes, ALPHABET};
use gramrr_pipeline::format::compact::TAGS;
use gramrr_pipeline::synth::SynthItem;
use gramrr_pipeline::{Pipeline, PipelineConfig, Shard};

fn setup(root: &Path) {
    let d = Domain::generate(11, &DomainSizes { seed: 12, labeled: 37, unlabeled: 20, test: 10, pretrain: 0 });
    let data = root.join("data");
    write_pairs(&data.join("seed.jsonl"), &d.seed).unwrap();
    write_pairs(&data.join("labeled.jsonl"), &d.labeled).unwrap();
    write_pairs(&data.join("unlabeled.jsonl"), &d.unlabeled).unwrap();
    let tok = char_tokenizer_with_tokens(ALPHABET, &TAGS).unwrap();
    let mut spec = InitSpec::tiny(Architecture::Qwen3);
    spec.hidden_size = 32;
    spec.intermediate_size = 64;
    spec.num_hidden_layers = 1;
    spec.num_attention_heads = 2;
    spec.num_key_value_heads = 1;
    spec.seed = 5;
    write_random_model(&root.join("model"), &spec, &tok, DType::F32).unwrap();
}

fn config(root: &Path, run: &str) -> (PipelineConfig, std::path::PathBuf) {
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
[engine]
batch_size = 16
[synthesis]
k = 3
max_new_tokens = 20
chunk = 5
[self_training]
iterations = 1
max_new_tokens = 20
[train]
steps = 2
batch_size = 4
lr = 1e-3
max_len = 200
"#
    );
    let origin = root.join(format!("{run}.toml"));
    std::fs::write(&origin, &text).unwrap();
    (PipelineConfig::from_file(&origin).unwrap(), origin)
}

fn items(root: &Path, run: &str) -> String {
    std::fs::read_to_string(root.join(run).join("synth/items.jsonl")).unwrap()
}

#[test]
fn interrupted_and_sharded_synthesis_match_the_uninterrupted_run() {
    gramrr_pipeline::progress::set_quiet(true);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);

    // Uninterrupted.
    let (cfg, origin) = config(root, "whole");
    let mut p = Pipeline::open(cfg, &origin, false).unwrap();
    p.stage_prover().unwrap();
    p.stage_synth().unwrap();
    let whole = items(root, "whole");
    let parsed: Vec<SynthItem> = whole.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed.len(), 37);
    assert!(parsed.iter().enumerate().all(|(i, it)| it.index == i && it.samples.len() == 3));

    // Interrupted after 3 of 8 chunks, then resumed by a new process.
    let (cfg, origin) = config(root, "resumed");
    let mut p = Pipeline::open(cfg.clone(), &origin, false).unwrap();
    p.stage_prover().unwrap();
    p.interrupt_after_chunks = Some(3);
    assert!(p.stage_synth().is_err());
    let part = root.join("resumed/synth/parts/shard-0-of-1.jsonl");
    assert_eq!(std::fs::read_to_string(&part).unwrap().lines().count(), 15, "three chunks of five survived");
    assert!(Pipeline::open(cfg.clone(), &origin, false).is_err(), "an existing run needs resume");
    assert!(Pipeline::open(cfg.clone(), &origin, true).is_err(), "one owner at a time");
    drop(p);
    let mut p = Pipeline::open(cfg, &origin, true).unwrap();
    p.stage_synth().unwrap();
    assert_eq!(std::fs::read_to_string(&part).unwrap().lines().count(), 37, "no item computed twice");
    assert_eq!(items(root, "resumed"), whole);

    // Two shard workers, then the owner merges.
    let (cfg, origin) = config(root, "sharded");
    let mut p = Pipeline::open(cfg.clone(), &origin, false).unwrap();
    p.stage_prover().unwrap();
    for i in [1, 0] {
        let mut w = Pipeline::open_worker(cfg.clone(), &origin, Shard { index: i, count: 2 }).unwrap();
        assert!(w.stage_synth().unwrap().is_none(), "a worker does not finish the stage");
    }
    drop(p);
    let mut p = Pipeline::open(cfg.clone(), &origin, true).unwrap();
    let rec = p.merge("synth").unwrap();
    assert_eq!(items(root, "sharded"), whole);
    assert_eq!(rec.stats["pairs"], 37);

    // A merge with a shard missing names what is missing.
    let (cfg, origin) = config(root, "partial");
    let mut p = Pipeline::open(cfg.clone(), &origin, false).unwrap();
    p.stage_prover().unwrap();
    Pipeline::open_worker(cfg.clone(), &origin, Shard { index: 0, count: 2 }).unwrap().stage_synth().unwrap();
    drop(p);
    let mut p = Pipeline::open(cfg, &origin, true).unwrap();
    let e = p.merge("synth").unwrap_err().to_string();
    assert!(e.contains("17 of 37 items have no output yet"), "{e}");
    assert!(p.run.record("synth").is_none_or(|r| r.status != gramrr_pipeline::run::StageStatus::Done));
}
