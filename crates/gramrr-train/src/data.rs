//! SFT data: JSONL records → token ids with per-token loss weights.
//!
//! A record is `{"prompt": str, "completion": str}`, or with weighted segments
//! `{"prompt": str, "completion": [{"text": str, "weight": float}, ...]}`, or a conversation
//! `{"messages": [{"role", "content"}, ...]}` whose final assistant message is the completion.
//! Any record may carry `"label"` (one of the configured label tokens, or its index) for the
//! label loss; a record with a label may omit the completion.
//!
//! Tokenisation follows TRL's prompt-completion convention, and the parity fixtures:
//! prompt ids = `tok(prompt, add_special_tokens=True)`; each completion segment is encoded on
//! its own without special tokens; then the tokenizer's EOS is appended with weight 1, because
//! a model that never sees EOS in training never learns to stop.

use std::path::{Path, PathBuf};

use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::ChatMessage;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// A piece of completion text with its loss weight.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub text: String,
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

/// A label for the label loss: a label token's text, or its index in the configured list.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelRef {
    Text(String),
    Index(usize),
}

/// One parsed line of an SFT data file.
#[derive(Debug, Clone, PartialEq)]
pub enum SftRecord {
    Completion { prompt: String, segments: Vec<Segment>, label: Option<LabelRef> },
    Chat { messages: Vec<ChatMessage>, label: Option<LabelRef> },
}

/// A tokenised training example. `completion_weights[i]` is the loss weight of
/// `completion_ids[i]`; prompt tokens are never in the loss.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SftExample {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    pub completion_weights: Vec<f32>,
    /// Index into the label-loss tokens; the label is predicted at the last prompt position.
    pub label: Option<usize>,
}

impl SftExample {
    /// An example whose completion tokens all have weight 1.
    pub fn new(prompt_ids: Vec<u32>, completion_ids: Vec<u32>) -> Self {
        let completion_weights = vec![1.0; completion_ids.len()];
        Self { prompt_ids, completion_ids, completion_weights, label: None }
    }

    pub fn len(&self) -> usize {
        self.prompt_ids.len() + self.completion_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole sequence.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.prompt_ids.iter().chain(self.completion_ids.iter()).copied()
    }

    /// Weight of sequence position `t` (0 on the prompt).
    pub fn weight_at(&self, t: usize) -> f32 {
        let p = self.prompt_ids.len();
        if t < p {
            0.0
        } else {
            self.completion_weights[t - p]
        }
    }

    /// Sum of the weights of the predicted positions (t ≥ 1): the normaliser this example
    /// contributes. Position 0 has no context, so it is never a target.
    pub fn target_weight(&self) -> f64 {
        (1..self.len()).map(|t| self.weight_at(t) as f64).sum()
    }
}

/// What to do with an example longer than `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncate {
    /// Drop tokens from the start of the prompt (the completion is kept whole).
    #[default]
    Left,
    /// Leave the example out.
    Skip,
}

impl std::str::FromStr for Truncate {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "left" => Ok(Truncate::Left),
            "skip" => Ok(Truncate::Skip),
            o => Err(format!("unknown truncation {o:?} (expected left or skip)")),
        }
    }
}

/// Counts reported after loading data.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataStats {
    pub records: usize,
    pub kept: usize,
    /// Kept with the prompt cut from the left.
    pub truncated: usize,
    /// Left out: too long under `--truncate skip`, or a completion that alone does not fit.
    pub skipped: usize,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// The examples that fit `max_len` (truncated or skipped per `truncate`, as [`fit_length`] says),
/// with the counts. The built-in trainer and the export for external trainers both keep exactly
/// these, so the two train on the same data.
pub fn fit_examples(examples: &[SftExample], max_len: usize, truncate: Truncate) -> (Vec<SftExample>, DataStats) {
    let mut stats = DataStats { records: examples.len(), ..Default::default() };
    let mut kept = Vec::with_capacity(examples.len());
    for ex in examples {
        match fit_length(ex.clone(), max_len, truncate) {
            None => stats.skipped += 1,
            Some((ex, cut)) => {
                stats.truncated += cut as usize;
                stats.kept += 1;
                stats.prompt_tokens += ex.prompt_ids.len();
                stats.completion_tokens += ex.completion_ids.len();
                kept.push(ex);
            }
        }
    }
    (kept, stats)
}

/// Fits an example into `max_len` tokens. Returns `None` when it must be skipped, and whether it
/// was truncated. At least one prompt token is kept, so the first completion token has context.
pub fn fit_length(mut ex: SftExample, max_len: usize, truncate: Truncate) -> Option<(SftExample, bool)> {
    if ex.len() <= max_len {
        return Some((ex, false));
    }
    match truncate {
        Truncate::Skip => None,
        Truncate::Left => {
            let room = max_len.checked_sub(ex.completion_ids.len())?;
            if room == 0 || ex.prompt_ids.is_empty() {
                return None;
            }
            let cut = ex.prompt_ids.len() - room.min(ex.prompt_ids.len());
            ex.prompt_ids.drain(..cut);
            Some((ex, true))
        }
    }
}

/// Packs examples, in order, into rows of at most `max_len` tokens, as language-model
/// pretraining does (TRL's `packing`): padding in a batch of mixed lengths is compute spent on
/// nothing, and packed rows are all about the same length. Each example keeps its own loss
/// weights and its prompt stays out of the loss; a row's later examples see the earlier ones
/// (no attention reset), as in GPT-style packing. Examples that carry a label for the label loss
/// (predicted at the end of their prompt) and examples already longer than `max_len` are left
/// in rows of their own.
pub fn pack_examples(examples: &[SftExample], max_len: usize) -> Vec<SftExample> {
    let mut rows: Vec<SftExample> = Vec::new();
    let mut open: Option<SftExample> = None;
    for ex in examples {
        if ex.label.is_some() || ex.len() >= max_len {
            rows.push(ex.clone());
            continue;
        }
        match open.as_mut() {
            Some(row) if row.len() + ex.len() <= max_len => {
                row.completion_ids.extend(&ex.prompt_ids);
                row.completion_weights.extend(std::iter::repeat_n(0.0, ex.prompt_ids.len()));
                row.completion_ids.extend(&ex.completion_ids);
                row.completion_weights.extend(&ex.completion_weights);
            }
            _ => {
                rows.extend(open.take());
                open = Some(ex.clone());
            }
        }
    }
    rows.extend(open);
    rows
}

fn label_ref(v: Option<&Value>) -> std::result::Result<Option<LabelRef>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(LabelRef::Text(s.clone()))),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|i| Some(LabelRef::Index(i as usize)))
            .ok_or_else(|| format!("\"label\" = {n} is not a non-negative integer")),
        Some(other) => Err(format!("\"label\" must be a string or an index, found {other}")),
    }
}

/// Parses one JSON record; the error says which field is wrong and what was expected.
pub fn parse_record(v: &Value) -> std::result::Result<SftRecord, String> {
    let obj = v.as_object().ok_or_else(|| "expected a JSON object".to_string())?;
    let label = label_ref(obj.get("label"))?;
    if let Some(m) = obj.get("messages") {
        let list = m.as_array().ok_or("\"messages\" must be a list of {\"role\", \"content\"}")?;
        let mut messages = Vec::with_capacity(list.len());
        for (i, msg) in list.iter().enumerate() {
            let role = msg.get("role").and_then(|r| r.as_str());
            let content = msg.get("content").and_then(|r| r.as_str());
            match (role, content) {
                (Some(r), Some(c)) => messages.push(ChatMessage::new(r, c)),
                _ => return Err(format!("\"messages\"[{i}] needs string fields \"role\" and \"content\"")),
            }
        }
        match messages.last() {
            Some(m) if m.role == "assistant" => {}
            _ => return Err("\"messages\" must end with an assistant message (it is the completion)".into()),
        }
        if messages.len() < 2 {
            return Err("\"messages\" needs at least one message before the final assistant message".into());
        }
        return Ok(SftRecord::Chat { messages, label });
    }
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("\"prompt\" must be a string".into()),
        None => return Err("missing \"prompt\" (or \"messages\")".into()),
    };
    let segments = match obj.get("completion") {
        Some(Value::String(s)) => vec![Segment { text: s.clone(), weight: 1.0 }],
        Some(Value::Array(a)) => {
            let mut segs = Vec::with_capacity(a.len());
            for (i, s) in a.iter().enumerate() {
                let text = s.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                    format!("\"completion\"[{i}]: expected {{\"text\": str, \"weight\": float}}")
                })?;
                let weight = match s.get("weight") {
                    None => 1.0,
                    Some(w) => w.as_f64().ok_or_else(|| format!("\"completion\"[{i}].weight must be a number"))?,
                };
                if !(weight.is_finite() && weight >= 0.0) {
                    return Err(format!("\"completion\"[{i}].weight = {weight} must be finite and non-negative"));
                }
                segs.push(Segment { text: text.to_string(), weight: weight as f32 });
            }
            segs
        }
        Some(_) => return Err("\"completion\" must be a string or a list of {\"text\", \"weight\"}".into()),
        None if label.is_some() => vec![],
        None => return Err("missing \"completion\"".into()),
    };
    Ok(SftRecord::Completion { prompt, segments, label })
}

fn resolve_label(label: &Option<LabelRef>, label_tokens: &[String]) -> std::result::Result<Option<usize>, String> {
    match label {
        None => Ok(None),
        Some(_) if label_tokens.is_empty() => {
            Err("the record has a \"label\" but no label tokens are configured (--label-tokens)".into())
        }
        Some(LabelRef::Index(i)) if *i < label_tokens.len() => Ok(Some(*i)),
        Some(LabelRef::Index(i)) => Err(format!("\"label\" = {i} is out of range for {} label tokens", label_tokens.len())),
        Some(LabelRef::Text(t)) => label_tokens
            .iter()
            .position(|l| l == t)
            .map(Some)
            .ok_or_else(|| format!("\"label\" = {t:?} is not one of the label tokens {label_tokens:?}")),
    }
}

/// Tokenises a record (see the module docs for the exact convention).
pub fn tokenize_record(
    rec: &SftRecord,
    tok: &TextTokenizer,
    label_tokens: &[String],
) -> std::result::Result<SftExample, String> {
    let eos = tok.eos_token_id.ok_or("the tokenizer has no eos_token (tokenizer_config.json), which ends every completion")?;
    let e = |err: gramrr_model::ModelError| err.to_string();
    match rec {
        SftRecord::Completion { prompt, segments, label } => {
            let prompt_ids = tok.encode(prompt, true).map_err(e)?;
            let mut completion_ids = Vec::new();
            let mut completion_weights = Vec::new();
            for s in segments {
                let ids = tok.encode(&s.text, false).map_err(e)?;
                completion_weights.extend(std::iter::repeat_n(s.weight, ids.len()));
                completion_ids.extend(ids);
            }
            // A label-only record trains the label and nothing else.
            if !(segments.is_empty() && label.is_some()) {
                completion_ids.push(eos);
                completion_weights.push(1.0);
            }
            let label = resolve_label(label, label_tokens)?;
            Ok(SftExample { prompt_ids, completion_ids, completion_weights, label })
        }
        SftRecord::Chat { messages, label } => {
            let kw = Default::default();
            let n = messages.len();
            let prompt = tok.apply_chat_template(&messages[..n - 1], true, &kw).map_err(e)?;
            let full = tok.apply_chat_template(messages, false, &kw).map_err(e)?;
            // The template writes the end-of-turn token itself, so no EOS is appended here.
            let Some(completion) = full.strip_prefix(&prompt) else {
                return Err("the chat template renders the conversation without the generation prompt as a prefix, \
                            so the final assistant message cannot be isolated"
                    .into());
            };
            let prompt_ids = tok.encode(&prompt, false).map_err(e)?;
            let completion_ids = tok.encode(completion, false).map_err(e)?;
            let completion_weights = vec![1.0; completion_ids.len()];
            let label = resolve_label(label, label_tokens)?;
            Ok(SftExample { prompt_ids, completion_ids, completion_weights, label })
        }
    }
}

/// Reads a JSONL file of records. Blank lines are ignored; a bad line is an error naming the file
/// and the (1-based) line.
pub fn read_sft_jsonl(path: &Path) -> Result<Vec<(usize, SftRecord)>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let derr = |message: String| TrainError::Data { file: path.to_path_buf(), line: line_no, message };
        let v: Value = serde_json::from_str(line).map_err(|e| derr(format!("invalid JSON: {e}")))?;
        out.push((line_no, parse_record(&v).map_err(derr)?));
    }
    if out.is_empty() {
        return Err(TrainError::Data { file: path.to_path_buf(), line: 0, message: "no records".into() });
    }
    Ok(out)
}

/// Reads, tokenises and length-fits a JSONL file.
pub fn load_sft_jsonl(
    path: &Path,
    tok: &TextTokenizer,
    label_tokens: &[String],
    max_len: usize,
    truncate: Truncate,
) -> Result<(Vec<SftExample>, DataStats)> {
    let records = read_sft_jsonl(path)?;
    let mut stats = DataStats { records: records.len(), ..Default::default() };
    let mut out = Vec::with_capacity(records.len());
    for (line, rec) in &records {
        let derr = |message: String| TrainError::Data { file: PathBuf::from(path), line: *line, message };
        let ex = tokenize_record(rec, tok, label_tokens).map_err(derr)?;
        if ex.label.is_some() && ex.prompt_ids.is_empty() {
            return Err(derr("a labelled record needs a non-empty prompt (the label is predicted after it)".into()));
        }
        match fit_length(ex, max_len, truncate) {
            None => stats.skipped += 1,
            Some((ex, truncated)) => {
                stats.truncated += truncated as usize;
                stats.kept += 1;
                stats.prompt_tokens += ex.prompt_ids.len();
                stats.completion_tokens += ex.completion_ids.len();
                out.push(ex);
            }
        }
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_record_accepts_text_segments_and_messages() {
        let r = parse_record(&serde_json::json!({"prompt": "p", "completion": "c"})).unwrap();
        assert_eq!(r, SftRecord::Completion { prompt: "p".into(), segments: vec![Segment { text: "c".into(), weight: 1.0 }], label: None });
        let r = parse_record(&serde_json::json!({"prompt": "p", "completion": [{"text": "a", "weight": 2}, {"text": "b"}]})).unwrap();
        let SftRecord::Completion { segments, .. } = r else { panic!() };
        assert_eq!(segments[0].weight, 2.0);
        assert_eq!(segments[1].weight, 1.0);
        let r = parse_record(&serde_json::json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}));
        assert!(matches!(r, Ok(SftRecord::Chat { .. })));
    }

    #[test]
    fn parse_record_errors_name_the_field() {
        let e = parse_record(&serde_json::json!({"prompt": 3, "completion": "c"})).unwrap_err();
        assert!(e.contains("\"prompt\""), "{e}");
        let e = parse_record(&serde_json::json!({"prompt": "p"})).unwrap_err();
        assert!(e.contains("completion"), "{e}");
        let e = parse_record(&serde_json::json!({"prompt": "p", "completion": [{"text": "a", "weight": -1}]})).unwrap_err();
        assert!(e.contains("weight"), "{e}");
        let e = parse_record(&serde_json::json!({"messages": [{"role": "user", "content": "q"}]})).unwrap_err();
        assert!(e.contains("assistant"), "{e}");
    }

    #[test]
    fn left_truncation_cuts_the_prompt_and_keeps_the_completion() {
        let ex = SftExample::new(vec![1, 2, 3, 4, 5], vec![6, 7, 8]);
        let (t, cut) = fit_length(ex.clone(), 5, Truncate::Left).unwrap();
        assert!(cut);
        assert_eq!(t.prompt_ids, vec![4, 5]);
        assert_eq!(t.completion_ids, vec![6, 7, 8]);
        assert!(fit_length(ex.clone(), 5, Truncate::Skip).is_none());
        assert!(fit_length(ex.clone(), 3, Truncate::Left).is_none(), "a completion that fills max_len leaves no context");
        assert_eq!(fit_length(ex.clone(), 8, Truncate::Skip).unwrap(), (ex, false));
    }

    #[test]
    fn target_weight_skips_position_zero() {
        let mut ex = SftExample::new(vec![], vec![1, 2, 3]);
        ex.completion_weights = vec![5.0, 1.0, 2.0];
        assert_eq!(ex.target_weight(), 3.0);
    }

    #[test]
    fn packing_concatenates_in_order_and_keeps_every_weight() {
        let mut a = SftExample::new(vec![1, 2], vec![3, 4]);
        a.completion_weights = vec![1.0, 10.0];
        let b = SftExample::new(vec![5], vec![6, 7]);
        let c = SftExample::new(vec![8, 9], vec![10]);
        let long = SftExample::new(vec![1; 6], vec![2; 4]);
        let mut labeled = SftExample::new(vec![11], vec![12]);
        labeled.label = Some(0);
        let rows = pack_examples(&[a.clone(), b.clone(), c.clone(), long.clone(), labeled.clone(), b.clone()], 8);
        assert_eq!(rows.len(), 4, "{rows:?}");
        // a + b fill 7 of 8 tokens; c does not fit after them.
        assert_eq!(rows[0].prompt_ids, vec![1, 2]);
        assert_eq!(rows[0].completion_ids, vec![3, 4, 5, 6, 7]);
        assert_eq!(rows[0].completion_weights, vec![1.0, 10.0, 0.0, 1.0, 1.0]);
        // The target weight of a row is the sum of its examples' (the prompt of b is out of it).
        assert_eq!(rows[0].target_weight(), a.target_weight() + 2.0);
        assert_eq!(rows[1], long, "an example at max_len stays alone");
        assert_eq!(rows[2], labeled, "label-loss examples are not packed");
        assert_eq!(rows[3].prompt_ids, vec![8, 9]);
        assert_eq!(rows[3].completion_ids, vec![10, 5, 6, 7], "c, then the last b");
        assert_eq!(rows[3].completion_weights, vec![1.0, 0.0, 1.0, 1.0]);
        let tokens = |v: &[SftExample]| v.iter().map(|e| e.len()).sum::<usize>();
        let input = [a, b.clone(), c, long, labeled, b];
        assert_eq!(tokens(&rows), tokens(&input), "no token lost or added");
    }
}
