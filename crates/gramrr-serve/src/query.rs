//! Turning OpenRLHF's `query` strings back into a user prompt and a response.
//!
//! OpenRLHF decodes each sample's token ids (prompt and response together, chat template
//! included) and posts the text as `query`; with `prompts` it also posts the prompt text the
//! response was generated from. The judge wants the user's question and the bare response, so:
//! - with a prompt: the response is what follows it in the query (the prompt is searched for,
//!   not only matched at the start, because a decoded query may carry leading pad or BOS text);
//! - without: the query is split at the last assistant header of a Llama 3 or ChatML template;
//! - the user question is the last user turn of a Llama 3 or ChatML prompt, else the prompt text;
//! - end-of-turn and padding tokens at either end of the response are removed, as OpenRLHF's own
//!   reward server strips pad and EOS.

/// Special-token text removed from the ends of a response.
pub const END_TOKENS: [&str; 7] = ["<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>", "<pad>", "<|finetune_right_pad_id|>"];

const LLAMA3_USER: &str = "<|start_header_id|>user<|end_header_id|>\n\n";
const LLAMA3_ASSISTANT: &str = "<|start_header_id|>assistant<|end_header_id|>\n\n";
const CHATML_USER: &str = "<|im_start|>user\n";
const CHATML_ASSISTANT: &str = "<|im_start|>assistant\n";

fn strip_end_tokens(mut s: &str) -> &str {
    loop {
        let before = s.len();
        s = s.trim();
        for t in END_TOKENS {
            s = s.strip_suffix(t).unwrap_or(s);
            s = s.strip_prefix(t).unwrap_or(s);
        }
        if s.len() == before {
            return s;
        }
    }
}

/// The last user turn of a templated prompt, or the prompt itself.
pub fn user_text(prompt: &str) -> String {
    for (header, end) in [(LLAMA3_USER, "<|eot_id|>"), (CHATML_USER, "<|im_end|>")] {
        if let Some(pos) = prompt.rfind(header) {
            let rest = &prompt[pos + header.len()..];
            let content = rest.find(end).map_or(rest, |e| &rest[..e]);
            return content.trim().to_string();
        }
    }
    strip_end_tokens(prompt).to_string()
}

/// `(user question, response)` for one query.
pub fn split_query(query: &str, prompt: Option<&str>) -> (String, String) {
    if let Some(p) = prompt.filter(|p| !p.is_empty()) {
        let response = match query.find(p) {
            Some(pos) => &query[pos + p.len()..],
            None => query,
        };
        return (user_text(p), strip_end_tokens(response).to_string());
    }
    for header in [LLAMA3_ASSISTANT, CHATML_ASSISTANT] {
        if let Some(pos) = query.rfind(header) {
            let (p, r) = (&query[..pos], &query[pos + header.len()..]);
            return (user_text(p), strip_end_tokens(r).to_string());
        }
    }
    (String::new(), strip_end_tokens(query).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_prompt_prefix() {
        let p = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        let q = format!("{p}It is 4.<|eot_id|>");
        assert_eq!(split_query(&q, Some(p)), ("What is 2+2?".into(), "It is 4.".into()));
        // Without prompts, the Llama 3 assistant header splits it.
        assert_eq!(split_query(&q, None), ("What is 2+2?".into(), "It is 4.".into()));
        // Leading padding before the prompt.
        let padded = format!("<pad><pad>{q}");
        assert_eq!(split_query(&padded, Some(p)).1, "It is 4.");
    }

    #[test]
    fn chatml_and_plain_text() {
        let p = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n";
        let q = format!("{p}Hello!<|im_end|>\n<|endoftext|>");
        assert_eq!(split_query(&q, None), ("Hi?".into(), "Hello!".into()));
        assert_eq!(split_query("Q: hi\nA: yo", Some("Q: hi\nA:")), ("Q: hi\nA:".into(), "yo".into()));
        assert_eq!(split_query("just text</s>", None), (String::new(), "just text".into()));
    }
}
