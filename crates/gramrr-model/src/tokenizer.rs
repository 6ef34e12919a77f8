//! `tokenizer.json` + `tokenizer_config.json` + chat template, behaving as transformers'
//! `PreTrainedTokenizerFast` and `apply_chat_template` do.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Value as JinjaValue};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::backend::ChatMessage;
use crate::error::{ModelError, Result};

pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pub chat_template: Option<String>,
    /// Special-token strings from tokenizer_config.json, passed to the chat template
    /// (`bos_token`, `eos_token`, `pad_token`, `unk_token`).
    pub special: serde_json::Map<String, Value>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let v = serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
    Ok(Some(v))
}

impl TextTokenizer {
    /// Loads the tokenizer files of a model directory. The chat template is taken, as in
    /// transformers 4.43+, from `chat_template.jinja`, else `chat_template.json`, else the
    /// `chat_template` field of `tokenizer_config.json` (a string, or a list of named templates
    /// of which "default" is used).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::MissingFile { path });
        }
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?.unwrap_or(Value::Null);

        let mut chat_template = None;
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?);
        }
        if chat_template.is_none() {
            if let Some(v) = read_json(&dir.join("chat_template.json"))? {
                chat_template = v.get("chat_template").and_then(template_from_field);
            }
        }
        if chat_template.is_none() {
            chat_template = cfg.get("chat_template").and_then(template_from_field);
        }

        let mut special = serde_json::Map::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(s) = cfg.get(key).and_then(token_string) {
                special.insert(key.to_string(), Value::String(s));
            }
        }
        let id_of = |key: &str| special.get(key).and_then(|v| v.as_str()).and_then(|s| inner.token_to_id(s));
        let eos_token_id = id_of("eos_token");
        let pad_token_id = id_of("pad_token");
        Ok(Self { inner, path, chat_template, special, eos_token_id, pad_token_id })
    }

    /// A tokenizer assembled elsewhere (from GGUF metadata): `special` holds the token strings
    /// the chat template sees (`bos_token`, `eos_token`, …).
    pub fn from_parts(
        inner: Tokenizer,
        path: PathBuf,
        chat_template: Option<String>,
        special: serde_json::Map<String, Value>,
        eos_token_id: Option<u32>,
        pad_token_id: Option<u32>,
    ) -> Self {
        Self { inner, path, chat_template, special, eos_token_id, pad_token_id }
    }

    pub fn from_tokenizer(inner: Tokenizer, path: PathBuf) -> Self {
        Self { inner, path, chat_template: None, special: Default::default(), eos_token_id: None, pad_token_id: None }
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`. `add_special_tokens` applies the post-processor (Llama 3's BOS),
    /// as `tokenizer(text, add_special_tokens=...)` does in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer { path: self.path.clone(), message: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer { path: self.path.clone(), message: e.to_string() })
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`, with extra
    /// template variables in `kwargs` (e.g. `enable_thinking`, `date_string`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, Value>,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::ChatTemplate(format!(
                "the tokenizer next to {} has no chat template (chat_template.jinja, chat_template.json or \
                 tokenizer_config.json \"chat_template\"); pass raw prompts instead",
                self.path.display()
            ))
        })?;
        render_chat_template(template, messages, add_generation_prompt, &self.special, kwargs)
    }
}

fn template_from_field(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// Renders a chat template with Jinja2 semantics as transformers sets them up: `trim_blocks`,
/// `lstrip_blocks`, loop controls, Python string methods, `raise_exception`, `strftime_now`,
/// and a `tojson` that matches Python's `json.dumps` (key order kept, `", "`/`": "`
/// separators, no ASCII escaping) rather than minijinja's HTML-safe default.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    special: &serde_json::Map<String, Value>,
    kwargs: &serde_json::Map<String, Value>,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<JinjaValue, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> String { chrono::Local::now().format(&fmt).to_string() });
    env.add_filter("tojson", tojson_filter);
    env.add_template("chat", template).map_err(|e| ModelError::ChatTemplate(format!("parse: {e:#}")))?;
    let tmpl = env.get_template("chat").map_err(|e| ModelError::ChatTemplate(e.to_string()))?;

    let mut ctx = serde_json::Map::new();
    for (k, v) in special {
        ctx.insert(k.clone(), v.clone());
    }
    ctx.insert("messages".into(), serde_json::to_value(messages).expect("messages serialize"));
    ctx.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
    for (k, v) in kwargs {
        ctx.insert(k.clone(), v.clone());
    }
    tmpl.render(JinjaValue::from(minijinja::value::Serde(Value::Object(ctx))))
        .map_err(|e| ModelError::ChatTemplate(format!("render: {e:#}")))
}

fn tojson_filter(
    value: JinjaValue,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<JinjaValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let v: Value = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    python_json(&v, indent, 0, &mut out);
    Ok(JinjaValue::from_safe_string(out))
}

/// `json.dumps(v, ensure_ascii=False, indent=indent)`.
pub fn python_json(v: &Value, indent: Option<usize>, level: usize, out: &mut String) {
    let (item_sep, newline) = match indent {
        Some(_) => (",", true),
        None => (", ", false),
    };
    let pad = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // Python prints floats with a fractional part or exponent, e.g. 1.0.
                if f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else {
                    out.push_str(&n.to_string());
                }
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => out.push_str(&serde_json::to_string(s).expect("strings serialize")),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                if newline {
                    pad(out, level + 1);
                }
                python_json(x, indent, level + 1, out);
            }
            if newline {
                pad(out, level);
            }
            out.push(']');
        }
        Value::Object(o) => {
            if o.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                if newline {
                    pad(out, level + 1);
                }
                out.push_str(&serde_json::to_string(k).expect("strings serialize"));
                out.push_str(": ");
                python_json(x, indent, level + 1, out);
            }
            if newline {
                pad(out, level);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_matches_python_json_dumps() {
        let v: Value = serde_json::from_str(r#"{"b": [1, 2.5, "é<x>"], "a": {"k": null, "t": true}}"#).unwrap();
        let mut s = String::new();
        python_json(&v, None, 0, &mut s);
        assert_eq!(s, r#"{"b": [1, 2.5, "é<x>"], "a": {"k": null, "t": true}}"#);
        let mut s = String::new();
        python_json(&serde_json::json!({"a": [1]}), Some(2), 0, &mut s);
        assert_eq!(s, "{\n  \"a\": [\n    1\n  ]\n}");
    }

    #[test]
    fn chatml_template_renders_with_trim_and_lstrip_blocks() {
        let t = "{% for m in messages %}\n  {{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}\n{% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let out = render_chat_template(
            t,
            &[ChatMessage::user("Hi \"there\"")],
            true,
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
        // What Python's jinja2 gives for this template: lstrip_blocks leaves `{{ }}` lines alone,
        // trim_blocks eats the newline after each `{% %}` tag.
        assert_eq!(out, "  <|im_start|>user\nHi \"there\"<|im_end|>\n\n<|im_start|>assistant\n");
    }
}
