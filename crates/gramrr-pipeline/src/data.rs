//! Preference pairs on disk (JSONL of gramrr-data's canonical [`PreferencePair`]) and the
//! training examples every stage builds from them.

use std::collections::HashSet;
use std::path::Path;

use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::Prompt;
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_train::{Segment, SftExample};

use crate::error::{PipelineError, Result};
use crate::format::PairFormat;

/// Reads a JSONL file of preference pairs. Ids must be unique: every stage keys its outputs by
/// id. Errors name the file and the 1-based line.
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>> {
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::io(path, e))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let derr = |message: String| PipelineError::Data { path: path.into(), line: i + 1, message };
        let p: PreferencePair = serde_json::from_str(line).map_err(|e| derr(format!("not a preference pair: {e}")))?;
        if !seen.insert(p.id.clone()) {
            return Err(derr(format!("duplicate id {:?}: every pair needs its own id", p.id)));
        }
        out.push(p);
    }
    Ok(out)
}

pub fn write_pairs(path: &Path, pairs: &[PreferencePair]) -> Result<()> {
    let mut buf = Vec::new();
    for p in pairs {
        serde_json::to_writer(&mut buf, p).expect("pairs serialize");
        buf.push(b'\n');
    }
    Ok(gramrr_model::fsutil::write_atomic(path, &buf)?)
}

/// A pair's label as A or B, or `None` for ties and unlabeled pairs.
pub fn preference(p: &PreferencePair) -> Option<Label> {
    p.label.filter(|l| *l != Label::Tie)
}

/// Prompt token ids exactly as the engine encodes them: raw text with the tokenizer's special
/// tokens, or a chat rendered with the generation prompt and encoded without them.
pub fn encode_prompt(tok: &TextTokenizer, prompt: &Prompt) -> Result<Vec<u32>> {
    Ok(match prompt {
        Prompt::Raw(t) => tok.encode(t, true)?,
        Prompt::Chat(m) => {
            let text = tok.apply_chat_template(m, true, &Default::default())?;
            tok.encode(&text, false)?
        }
    })
}

/// One training example: the prompt, then the weighted segments, then EOS (weight 1: a model
/// that never sees EOS never learns to stop).
pub fn make_example(tok: &TextTokenizer, prompt: &Prompt, segments: &[Segment]) -> Result<SftExample> {
    let eos = tok.eos_token_id.ok_or_else(|| {
        PipelineError::stage("training data", "the tokenizer has no eos_token (tokenizer_config.json), which ends every target")
    })?;
    let prompt_ids = encode_prompt(tok, prompt)?;
    let mut completion_ids = Vec::new();
    let mut completion_weights = Vec::new();
    for s in segments {
        let ids = tok.encode(&s.text, false)?;
        completion_weights.extend(std::iter::repeat_n(s.weight, ids.len()));
        completion_ids.extend(ids);
    }
    completion_ids.push(eos);
    completion_weights.push(1.0);
    Ok(SftExample { prompt_ids, completion_ids, completion_weights, label: None })
}

/// Reward-model examples `s → z` (Eq. 2) from pairs carrying a canonical rationale.
pub fn rm_examples(tok: &TextTokenizer, format: &dyn PairFormat, pairs: &[PreferencePair], w: f32) -> Result<Vec<SftExample>> {
    pairs
        .iter()
        .map(|p| {
            let z = p.rationale.as_deref().ok_or_else(|| PipelineError::stage("reward model data", format!("pair {:?} has no rationale", p.id)))?;
            make_example(tok, &format.judge_prompt(p), &format.rm_segments(z, w))
        })
        .collect()
}

/// Prover examples `(s, l) → ẑ` (Eq. 4) from pairs carrying a canonical rationale.
pub fn prover_examples(tok: &TextTokenizer, format: &dyn PairFormat, pairs: &[PreferencePair], w: f32) -> Result<Vec<SftExample>> {
    pairs
        .iter()
        .map(|p| {
            let z = p.rationale.as_deref().ok_or_else(|| PipelineError::stage("prover data", format!("pair {:?} has no rationale", p.id)))?;
            let ferr = |e: crate::format::FormatError| PipelineError::Format { format: format.name().into(), message: format!("pair {:?}: {e}", p.id) };
            let (z, label) = format.canonical_rationale(z).map_err(ferr)?;
            let proof = format.rationale_to_proof(&z).map_err(ferr)?;
            let prompt = format.prover_prompt(p, label).map_err(ferr)?;
            make_example(tok, &prompt, &format.prover_segments(&proof, w))
        })
        .collect()
}

/// The rationale-annotated pairs of a seed file with their rationales in canonical form. A
/// rationale whose label disagrees with the pair's label is an error naming the pair.
pub fn canonical_seed(format: &dyn PairFormat, pairs: Vec<PreferencePair>, path: &Path) -> Result<Vec<PreferencePair>> {
    let mut out = Vec::with_capacity(pairs.len());
    for (i, mut p) in pairs.into_iter().enumerate() {
        let derr = |message: String| PipelineError::Data { path: path.into(), line: i + 1, message };
        let z = p.rationale.as_deref().ok_or_else(|| derr(format!("pair {:?} has no \"rationale\"", p.id)))?;
        let (z, label) = format.canonical_rationale(z).map_err(|e| derr(format!("pair {:?}: {e}", p.id)))?;
        match preference(&p) {
            Some(l) if l != label => {
                return Err(derr(format!("pair {:?}: the rationale concludes {label:?} but the label is {l:?}", p.id)))
            }
            None => p.label = Some(label),
            _ => {}
        }
        p.rationale = Some(z);
        out.push(p);
    }
    Ok(out)
}
