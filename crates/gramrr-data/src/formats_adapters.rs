//! One function per source schema: a raw record in, a canonical record out, or an error naming
//! the field.

use std::path::Path;

use gramrr_backend::ChatMessage;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{JudgeBenchOutput, Rec, RecordedJudgment, RmBenchRecord};
use crate::read::{describe, ReadError};
use crate::record::{CandidateList, Conversation, Label, PreferencePair};

pub(crate) fn serde_record<T: DeserializeOwned>(rec: &Rec) -> Result<T, ReadError> {
    serde_json::from_value(Value::Object(rec.obj.clone())).map_err(|e| ReadError::Record {
        path: rec.path.to_string(),
        loc: rec.loc,
        problem: format!("not a gramrr record: {e}"),
    })
}

fn default_id(rec: &Rec, field: &str) -> Result<String, ReadError> {
    Ok(match rec.opt_id(field)? {
        Some(id) => id,
        None => format!("{}/{}", rec.file_stem(), rec.index),
    })
}

/// `[{role, content}, ...]` as chat messages; other keys (RMB's `language`) are ignored.
fn messages(rec: &Rec, field: &str, v: &Value) -> Result<Vec<ChatMessage>, ReadError> {
    let expected = "expected a list of {role, content} messages";
    let Value::Array(items) = v else {
        return Err(rec.err(field, format!("{expected}, found {}", describe(v))));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str);
            let content = m.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(r), Some(c)) => Ok(ChatMessage::new(r, c)),
                _ => Err(rec.err(
                    &format!("{field}[{i}]"),
                    format!("expected an object with string \"role\" and \"content\", found {}", describe(m)),
                )),
            }
        })
        .collect()
}

fn conversation(rec: &Rec, field: &str) -> Result<Conversation, ReadError> {
    match rec.get(field)? {
        Value::String(s) => Ok(Conversation::Text(s.clone())),
        v @ Value::Array(_) => Ok(Conversation::Messages(messages(rec, field, v)?)),
        other => Err(rec.err(
            field,
            format!("expected a string or a list of messages, found {}", describe(other)),
        )),
    }
}

/// A response given as a string, or as a message list ending with the response (the
/// conversational form of TRL-style datasets); for the latter the earlier turns are returned too.
fn response(rec: &Rec, field: &str) -> Result<(String, Option<Vec<ChatMessage>>), ReadError> {
    match rec.get(field)? {
        Value::String(s) => Ok((s.clone(), None)),
        v @ Value::Array(_) => {
            let mut turns = messages(rec, field, v)?;
            match turns.pop() {
                Some(last) if last.role == "assistant" => Ok((last.content, Some(turns))),
                _ => Err(rec.err(field, "expected the message list to end with an assistant turn")),
            }
        }
        other => Err(rec.err(
            field,
            format!("expected a string or a list of messages, found {}", describe(other)),
        )),
    }
}

pub(crate) fn generic_pair(rec: &Rec) -> Result<PreferencePair, ReadError> {
    let prompt_field = ["prompt", "question", "instruction", "input"]
        .into_iter()
        .find(|f| rec.obj.contains_key(*f));
    let (chosen, chosen_turns) = response(rec, "chosen")?;
    let (rejected, _) = response(rec, "rejected")?;
    let prompt = match (prompt_field, chosen_turns) {
        (Some(f), _) => conversation(rec, f)?,
        (None, Some(turns)) if !turns.is_empty() => Conversation::Messages(turns),
        _ => return Err(rec.err("prompt", "missing (also looked for question, instruction, input)")),
    };
    let mut used = vec!["id", "chosen", "rejected"];
    used.extend(prompt_field);
    Ok(PreferencePair {
        id: default_id(rec, "id")?,
        prompt,
        response_a: chosen,
        response_b: rejected,
        label: Some(Label::A),
        rationale: None,
        metadata: rec.rest(&used),
    })
}

pub(crate) fn rm_bench(rec: &Rec) -> Result<RmBenchRecord, ReadError> {
    let domain = match rec.opt_string("domain")? {
        Some(d) => d,
        None => {
            let stem = rec.file_stem();
            stem.strip_suffix("_filtered").unwrap_or(&stem).to_string()
        }
    };
    let to3 = |v: Vec<String>| -> [String; 3] { v.try_into().expect("strings() checked the length") };
    Ok(RmBenchRecord {
        id: rec.id("id")?,
        domain,
        subset: rec.opt_string("subset")?.unwrap_or_default(),
        prompt: rec.string("prompt")?,
        chosen: to3(rec.strings("chosen", 3)?),
        rejected: to3(rec.strings("rejected", 3)?),
        metadata: rec.rest(&["id", "domain", "subset", "prompt", "chosen", "rejected"]),
    })
}

fn judgebench_label(rec: &Rec, field: &str) -> Result<Label, ReadError> {
    match rec.get(field)? {
        Value::String(s) if s == "A>B" => Ok(Label::A),
        Value::String(s) if s == "B>A" => Ok(Label::B),
        other => Err(rec.err(field, format!("expected \"A>B\" or \"B>A\", found {other}"))),
    }
}

pub(crate) fn judgebench_pair(rec: &Rec) -> Result<PreferencePair, ReadError> {
    Ok(PreferencePair {
        id: rec.string("pair_id")?,
        prompt: Conversation::Text(rec.string("question")?),
        response_a: rec.string("response_A")?,
        response_b: rec.string("response_B")?,
        label: Some(judgebench_label(rec, "label")?),
        rationale: None,
        metadata: rec.rest(&[
            "pair_id",
            "question",
            "response_A",
            "response_B",
            "label",
            "judgments",
            "judge_name",
        ]),
    })
}

/// JudgeBench's decision strings. Anything else (null, a malformed verdict) is no decision,
/// which the upstream metric scores 0.
pub fn judgebench_decision(s: Option<&str>) -> Option<Label> {
    match s? {
        "A>B" => Some(Label::A),
        "B>A" => Some(Label::B),
        "A=B" => Some(Label::Tie),
        _ => None,
    }
}

pub(crate) fn judgebench_output(rec: &Rec) -> Result<JudgeBenchOutput, ReadError> {
    let pair = judgebench_pair(rec)?;
    let Value::Array(items) = rec.get("judgments")? else {
        return Err(rec.err("judgments", format!("expected a list, found {}", describe(&rec.obj["judgments"]))));
    };
    let mut judgments = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("judgments[{i}]");
        let obj = match item {
            Value::Null => {
                judgments.push(None);
                continue;
            }
            Value::Object(o) => o,
            other => return Err(rec.err(&field, format!("expected an object or null, found {}", describe(other)))),
        };
        let raw_decision = match obj.get("decision") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(rec.err(
                    &format!("{field}.decision"),
                    format!("expected a string or null, found {}", describe(other)),
                ))
            }
        };
        let inner = obj.get("judgment").and_then(Value::as_object);
        let inner_str = |k: &str| {
            inner.and_then(|j| j.get(k)).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
        };
        let scores = match inner.and_then(|j| j.get("scores")) {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(Value::as_f64)
                    .collect::<Option<Vec<f64>>>()
                    .ok_or_else(|| rec.err(&format!("{field}.judgment.scores"), "expected a list of numbers"))?,
            ),
            Some(other) => {
                return Err(rec.err(
                    &format!("{field}.judgment.scores"),
                    format!("expected a list of numbers, found {}", describe(other)),
                ))
            }
        };
        judgments.push(Some(RecordedJudgment {
            decision: judgebench_decision(raw_decision.as_deref()),
            raw_decision,
            judge_model: inner_str("judge_model"),
            response: inner_str("response"),
            scores,
        }));
    }
    Ok(JudgeBenchOutput { pair, judge_name: rec.opt_string("judge_name")?, judgments })
}

pub(crate) fn rewardbench(rec: &Rec) -> Result<PreferencePair, ReadError> {
    Ok(PreferencePair {
        id: default_id(rec, "id")?,
        prompt: conversation(rec, "prompt")?,
        response_a: rec.string("chosen")?,
        response_b: rec.string("rejected")?,
        label: Some(Label::A),
        rationale: None,
        metadata: {
            let mut m = rec.rest(&["id", "prompt", "chosen", "rejected"]);
            m.insert("subset".into(), rec.string("subset")?.into());
            m
        },
    })
}

/// The LLMBar set a file belongs to, from its path: `Natural`, `Adversarial/Neighbor`, ...
/// (the repository's `Dataset/LLMBar/<set>/dataset.json` layout).
pub fn llmbar_set_from_path(path: &Path) -> Option<String> {
    let parts: Vec<&str> = path
        .parent()?
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    let start = parts.iter().position(|p| matches!(*p, "Natural" | "Adversarial" | "CaseStudy"))?;
    Some(parts[start..].join("/"))
}

/// RewardBench's names for the LLMBar sets it includes.
fn rewardbench_subset_of_llmbar(set: &str) -> Option<&'static str> {
    Some(match set {
        "Natural" => "llmbar-natural",
        "Adversarial/Neighbor" => "llmbar-adver-neighbor",
        "Adversarial/GPTInst" => "llmbar-adver-GPTInst",
        "Adversarial/GPTOut" => "llmbar-adver-GPTOut",
        "Adversarial/Manual" => "llmbar-adver-manual",
        _ => return None,
    })
}

pub(crate) fn llmbar(rec: &Rec) -> Result<PreferencePair, ReadError> {
    let set = llmbar_set_from_path(rec.file).unwrap_or_else(|| rec.file_stem());
    let label = match rec.get("label")? {
        Value::Number(n) if n.as_i64() == Some(1) => Label::A,
        Value::Number(n) if n.as_i64() == Some(2) => Label::B,
        other => return Err(rec.err("label", format!("expected 1 or 2, found {other}"))),
    };
    let mut metadata = rec.rest(&["input", "output_1", "output_2", "label"]);
    metadata.insert("llmbar_set".into(), set.clone().into());
    if let Some(s) = rewardbench_subset_of_llmbar(&set) {
        metadata.insert("subset".into(), s.into());
    }
    Ok(PreferencePair {
        id: format!("{set}/{}", rec.index),
        prompt: Conversation::Text(rec.string("input")?),
        response_a: rec.string("output_1")?,
        response_b: rec.string("output_2")?,
        label: Some(label),
        rationale: None,
        metadata,
    })
}

/// An RMB `{llm_name, answer}` object.
fn rmb_answer(rec: &Rec, field: &str, v: &Value) -> Result<(String, Option<String>), ReadError> {
    let answer = v.get("answer").and_then(Value::as_str);
    match answer {
        Some(a) => Ok((a.to_string(), v.get("llm_name").and_then(Value::as_str).map(str::to_string))),
        None => Err(rec.err(
            &format!("{field}.answer"),
            format!("expected a string, found {}", v.get("answer").map(describe).unwrap_or("nothing".into())),
        )),
    }
}

fn rmb_common(rec: &Rec, uid_field: &str) -> Result<(String, Conversation, String), ReadError> {
    let uid = rec.id(uid_field)?;
    let category = rec.opt_string("category_path")?.unwrap_or_else(|| rec.file_stem());
    let prompt = Conversation::Messages(messages(rec, "conversation_input", rec.get("conversation_input")?)?);
    Ok((format!("{category}/{uid}"), prompt, category))
}

pub(crate) fn rmb_pairwise(rec: &Rec) -> Result<PreferencePair, ReadError> {
    let (id, prompt, category) = rmb_common(rec, "pair_uid")?;
    let (chosen, chosen_model) = rmb_answer(rec, "chosen", rec.get("chosen")?)?;
    let (rejected, rejected_model) = rmb_answer(rec, "reject", rec.get("reject")?)?;
    let mut metadata = Map::new();
    metadata.insert("category_path".into(), category.into());
    metadata.insert("pair_uid".into(), rec.id("pair_uid")?.into());
    metadata.insert("chosen_model".into(), chosen_model.into());
    metadata.insert("rejected_model".into(), rejected_model.into());
    Ok(PreferencePair {
        id,
        prompt,
        response_a: chosen,
        response_b: rejected,
        label: Some(Label::A),
        rationale: None,
        metadata,
    })
}

pub(crate) fn rmb_bon(rec: &Rec) -> Result<CandidateList, ReadError> {
    let (id, prompt, category) = rmb_common(rec, "bon_uid")?;
    let (best, best_model) = rmb_answer(rec, "bon_best", rec.get("bon_best")?)?;
    let losers = match rec.get("loser_list")? {
        Value::Array(a) if !a.is_empty() => a,
        other => return Err(rec.err("loser_list", format!("expected a non-empty list, found {}", describe(other)))),
    };
    let mut responses = vec![best];
    let mut models = vec![Value::from(best_model)];
    for (i, l) in losers.iter().enumerate() {
        let (a, m) = rmb_answer(rec, &format!("loser_list[{i}]"), l)?;
        responses.push(a);
        models.push(m.into());
    }
    let mut metadata = Map::new();
    metadata.insert("category_path".into(), category.into());
    metadata.insert("bon_uid".into(), rec.id("bon_uid")?.into());
    metadata.insert("models".into(), Value::Array(models));
    Ok(CandidateList { id, prompt, responses, correct: None, scores: None, best: Some(0), metadata })
}

const HUMAN: &str = "\n\nHuman:";
const ASSISTANT: &str = "\n\nAssistant:";

/// Splits an HH-RLHF chosen/rejected pair of whole dialogues into the shared prompt (as chat
/// turns) and the two final responses. The prompt ends at the last `"\n\nAssistant:"` both
/// dialogues share: in a few records the differing response itself runs into another turn, so
/// splitting each dialogue at its own last marker would give two different prompts.
pub fn hh_split(chosen: &str, rejected: &str) -> Option<(Vec<ChatMessage>, String, String)> {
    let common = chosen
        .char_indices()
        .zip(rejected.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| chosen.len().min(rejected.len()));
    let cut = chosen[..common].rfind(ASSISTANT)?;
    let body = cut + ASSISTANT.len();
    let strip = |s: &str| s.strip_prefix(' ').unwrap_or(s).to_string();
    Some((hh_turns(&chosen[..cut]), strip(&chosen[body..]), strip(&rejected[body..])))
}

fn hh_turns(text: &str) -> Vec<ChatMessage> {
    let mut marks: Vec<(usize, &str, &str)> = Vec::new();
    for (m, role) in [(HUMAN, "user"), (ASSISTANT, "assistant")] {
        marks.extend(text.match_indices(m).map(|(i, _)| (i, m, role)));
    }
    marks.sort_by_key(|m| m.0);
    let mut turns = Vec::new();
    let lead = &text[..marks.first().map_or(text.len(), |m| m.0)];
    if !lead.trim().is_empty() {
        turns.push(ChatMessage::user(lead.trim()));
    }
    for (k, &(start, m, role)) in marks.iter().enumerate() {
        let end = marks.get(k + 1).map_or(text.len(), |n| n.0);
        turns.push(ChatMessage::new(role, text[start + m.len()..end].trim()));
    }
    turns
}

pub(crate) fn hh_rlhf(rec: &Rec) -> Result<PreferencePair, ReadError> {
    let chosen = rec.string("chosen")?;
    let rejected = rec.string("rejected")?;
    let (turns, a, b) = hh_split(&chosen, &rejected).ok_or_else(|| {
        rec.err("chosen", "chosen and rejected share no \"\\n\\nAssistant:\" turn to split the prompt at")
    })?;
    let set = rec.file.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("hh-rlhf");
    Ok(PreferencePair {
        id: format!("{set}/{}/{}", rec.file_stem(), rec.index),
        prompt: Conversation::Messages(turns),
        response_a: a,
        response_b: b,
        label: Some(Label::A),
        rationale: None,
        metadata: {
            let mut m = rec.rest(&["chosen", "rejected"]);
            m.insert("subset".into(), set.into());
            m
        },
    })
}

/// `None` for a tie that is not kept.
pub(crate) fn helpsteer3(rec: &Rec, keep_ties: bool) -> Result<Option<PreferencePair>, ReadError> {
    let pref = match rec.get("overall_preference")? {
        Value::Number(n) => n.as_f64().filter(|x| x.fract() == 0.0 && (-3.0..=3.0).contains(x)),
        _ => None,
    }
    .ok_or_else(|| {
        rec.err(
            "overall_preference",
            format!("expected an integer from -3 to 3, found {}", rec.obj["overall_preference"]),
        )
    })?;
    // Negative means response1 is better.
    let label = match pref {
        p if p < 0.0 => Label::A,
        p if p > 0.0 => Label::B,
        _ if keep_ties => Label::Tie,
        _ => return Ok(None),
    };
    let mut reasons = Vec::new();
    let mut scores = Vec::new();
    if let Some(v) = rec.obj.get("individual_preference").filter(|v| !v.is_null()) {
        let Value::Array(items) = v else {
            return Err(rec.err("individual_preference", format!("expected a list, found {}", describe(v))));
        };
        for (i, it) in items.iter().enumerate() {
            let field = format!("individual_preference[{i}]");
            let reasoning = it.get("reasoning").and_then(Value::as_str);
            let score = it.get("score").and_then(Value::as_f64);
            match (reasoning, score) {
                (r, Some(s)) => {
                    scores.push(s);
                    if let Some(r) = r.map(str::trim).filter(|r| !r.is_empty()) {
                        reasons.push(r.to_string());
                    }
                }
                _ => return Err(rec.err(&field, format!("expected {{score, reasoning}}, found {}", describe(it)))),
            }
        }
    }
    let mut metadata = rec.rest(&["id", "context", "response1", "response2", "individual_preference"]);
    metadata.insert("individual_scores".into(), scores.into());
    Ok(Some(PreferencePair {
        id: default_id(rec, "id")?,
        prompt: conversation(rec, "context")?,
        response_a: rec.string("response1")?,
        response_b: rec.string("response2")?,
        label: Some(label),
        // The annotators' reasons are the human-written rationales the method learns from.
        rationale: (!reasons.is_empty()).then(|| reasons.join("\n\n")),
        metadata,
    }))
}

pub(crate) fn ppe_bok(rec: &Rec) -> Result<CandidateList, ReadError> {
    let mut responses = Vec::new();
    while let Some(v) = rec.obj.get(&format!("response_{}", responses.len() + 1)) {
        let field = format!("response_{}", responses.len() + 1);
        match v {
            Value::String(s) => responses.push(s.clone()),
            other => return Err(rec.err(&field, format!("expected a string, found {}", describe(other)))),
        }
    }
    if responses.is_empty() {
        return Err(rec.err("response_1", "missing"));
    }
    let n = responses.len();
    let correct = match rec.obj.get("scores") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.len() == n => Some(
            a.iter()
                .map(|v| match v {
                    Value::Bool(b) => Some(*b),
                    Value::Number(x) => x.as_f64().map(|x| x > 0.0),
                    _ => None,
                })
                .collect::<Option<Vec<bool>>>()
                .ok_or_else(|| rec.err("scores", "expected booleans (or 0/1)"))?,
        ),
        Some(Value::Array(a)) => {
            return Err(rec.err("scores", format!("expected a list of {n} correctness values (one per response), found {}", a.len())))
        }
        Some(other) => return Err(rec.err("scores", format!("expected a list, found {}", describe(other)))),
    };
    let prompt_field = if rec.obj.contains_key("prompt") { "prompt" } else { "question" };
    let qid = rec.id("question_id")?;
    let id = match rec.opt_string("model_name")? {
        // PPE holds 32 samples per prompt per generating model: the pair is the item.
        Some(m) => format!("{qid}/{m}"),
        None => qid,
    };
    let mut used: Vec<String> = (1..=n).map(|i| format!("response_{i}")).collect();
    used.extend(["scores", prompt_field].map(String::from));
    let used: Vec<&str> = used.iter().map(String::as_str).collect();
    Ok(CandidateList {
        id,
        prompt: conversation(rec, prompt_field)?,
        responses,
        correct,
        scores: None,
        best: None,
        metadata: rec.rest(&used),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hh_split_keeps_turns_and_strips_the_marker_space() {
        let c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: Like this.";
        let r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: No.";
        let (turns, a, b) = hh_split(c, r).unwrap();
        let roles: Vec<&str> = turns.iter().map(|t| t.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(turns[2].content, "how?");
        assert_eq!((a.as_str(), b.as_str()), ("Like this.", "No."));
    }

    #[test]
    fn hh_split_cuts_at_the_shared_assistant_turn_when_a_response_runs_on() {
        let c = "\n\nHuman: q\n\nAssistant: yes.  Human: more?\n\nAssistant: sure";
        let r = "\n\nHuman: q\n\nAssistant: no";
        let (turns, a, b) = hh_split(c, r).unwrap();
        assert_eq!(turns.len(), 1);
        assert_eq!(a, "yes.  Human: more?\n\nAssistant: sure");
        assert_eq!(b, "no");
    }

    #[test]
    fn llmbar_set_comes_from_the_repository_layout() {
        let p = Path::new("x/llmbar/Adversarial/GPTInst/dataset.json");
        assert_eq!(llmbar_set_from_path(p).as_deref(), Some("Adversarial/GPTInst"));
        assert_eq!(llmbar_set_from_path(Path::new("a/b.json")), None);
    }
}
