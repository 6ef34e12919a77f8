//! Canonical records every reader produces and every consumer takes.

use gramrr_backend::{ChatMessage, Prompt};
use serde::{Deserialize, Serialize};

/// Which response is better. `Tie` exists because some sources have ties; most consumers drop them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Label {
    A,
    B,
    Tie,
}

impl Label {
    /// The label after swapping the two responses.
    pub fn flipped(self) -> Label {
        match self {
            Label::A => Label::B,
            Label::B => Label::A,
            Label::Tie => Label::Tie,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Label::A => "A",
            Label::B => "B",
            Label::Tie => "tie",
        }
    }
}

/// The user side of a comparison: plain text or a chat history ending with a user turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Conversation {
    Text(String),
    Messages(Vec<ChatMessage>),
}

impl Conversation {
    /// A single string for judge templates: the text itself, or the turns joined as
    /// `role: content` lines (the last user turn is what the responses answer).
    pub fn as_text(&self) -> String {
        match self {
            Conversation::Text(t) => t.clone(),
            Conversation::Messages(m) if m.len() == 1 => m[0].content.clone(),
            Conversation::Messages(m) => m
                .iter()
                .map(|t| format!("{}: {}", t.role, t.content))
                .collect::<Vec<_>>()
                .join("\n\n"),
        }
    }
    pub fn to_prompt(&self) -> Prompt {
        match self {
            Conversation::Text(t) => Prompt::Chat(vec![ChatMessage::user(t.clone())]),
            Conversation::Messages(m) => Prompt::Chat(m.clone()),
        }
    }
}

/// Two responses to one prompt, with an optional preference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub id: String,
    pub prompt: Conversation,
    pub response_a: String,
    pub response_b: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// Source-specific fields kept for reports (subset, category, source, style indices...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl PreferencePair {
    /// The same pair with A and B swapped (and the label flipped).
    pub fn swapped(&self) -> PreferencePair {
        PreferencePair {
            response_a: self.response_b.clone(),
            response_b: self.response_a.clone(),
            label: self.label.map(Label::flipped),
            ..self.clone()
        }
    }
}

/// n responses to one prompt (best-of-n, ranking).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateList {
    pub id: String,
    pub prompt: Conversation,
    pub responses: Vec<String>,
    /// Verifiable correctness per response, when the source has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<Vec<bool>>,
    /// Reference scores per response, when the source has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
    /// Index of the known best response, when the source marks one (RMB best-of-N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<usize>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}
