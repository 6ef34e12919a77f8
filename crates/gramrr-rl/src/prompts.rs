//! The prompts a policy is trained on: JSONL, one record per line.
//!
//! `{"prompt": str}` or `{"messages": [{"role", "content"}, ...]}`, with an optional
//! `"reference"` answer (the judge then compares each response with it) and an optional `"id"`.

use std::path::Path;

use gramrr_model::backend::{ChatMessage, Prompt};
use serde_json::Value;

use crate::error::{Result, RlError};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromptRecord {
    pub id: String,
    pub prompt: Prompt,
    pub reference: Option<String>,
}

impl PromptRecord {
    /// The prompt as the judge and reward commands see it: the text, or the last user
    /// message of a chat (earlier turns joined above it as `role: content`).
    pub fn judge_text(&self) -> String {
        match &self.prompt {
            Prompt::Raw(t) => t.clone(),
            Prompt::Chat(m) if m.len() == 1 => m[0].content.clone(),
            Prompt::Chat(m) => m.iter().map(|x| format!("{}: {}", x.role, x.content)).collect::<Vec<_>>().join("\n"),
        }
    }
}

/// Reads a prompts file. With `chat`, `"prompt"` strings become one user message (rendered
/// with the policy's chat template); otherwise they are raw text.
pub fn read_prompts(path: &Path, chat: bool) -> Result<Vec<PromptRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| RlError::io(path, e))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: String| RlError::Data { file: path.to_path_buf(), line: i + 1, message: m };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let prompt = match (v.get("prompt"), v.get("messages")) {
            (Some(Value::String(s)), None) if chat => Prompt::Chat(vec![ChatMessage::user(s.clone())]),
            (Some(Value::String(s)), None) => Prompt::Raw(s.clone()),
            (None, Some(m)) => Prompt::Chat(
                serde_json::from_value(m.clone())
                    .map_err(|e| bad(format!("\"messages\" must be a list of {{\"role\", \"content\"}} objects: {e}")))?,
            ),
            (Some(_), Some(_)) => return Err(bad("give \"prompt\" or \"messages\", not both".into())),
            (Some(_), None) => return Err(bad("\"prompt\" must be a string".into())),
            (None, None) => return Err(bad("no \"prompt\" or \"messages\" field".into())),
        };
        if matches!(&prompt, Prompt::Raw(s) if s.is_empty()) || matches!(&prompt, Prompt::Chat(m) if m.is_empty()) {
            return Err(bad("the prompt is empty".into()));
        }
        let reference = match v.get("reference") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("\"reference\" must be a string".into())),
        };
        let id = match v.get("id") {
            None | Some(Value::Null) => format!("{}", i + 1),
            Some(Value::String(s)) => s.clone(),
            Some(x) => x.to_string(),
        };
        out.push(PromptRecord { id, prompt, reference });
    }
    if out.is_empty() {
        return Err(RlError::Data { file: path.to_path_buf(), line: 0, message: "no prompts".into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_shapes_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(&p, "{\"prompt\": \"2+2=\", \"reference\": \"4\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"id\": 7}\n").unwrap();
        let r = read_prompts(&p, false).unwrap();
        assert_eq!(r[0].prompt, Prompt::Raw("2+2=".into()));
        assert_eq!(r[0].reference.as_deref(), Some("4"));
        assert_eq!(r[1].id, "7");
        assert_eq!(r[1].judge_text(), "hi");
        assert!(matches!(read_prompts(&p, true).unwrap()[0].prompt, Prompt::Chat(_)));
        std::fs::write(&p, "{\"prompt\": \"a\"}\n{\"prompt\": 3}\n").unwrap();
        let e = read_prompts(&p, false).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:2:") && e.contains("\"prompt\" must be a string"), "{e}");
    }
}
