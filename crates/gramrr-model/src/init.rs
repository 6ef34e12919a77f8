//! Models and tokenizers made from nothing, in HF layout, so tests, the demo and benchmarks
//! never need a download: random decoders of any supported architecture and size, byte-level
//! BPE tokenizers trained on a text file, and character-level tokenizers for toy domains.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::config::{Architecture, DecoderConfig, Llama3RopeScaling};
use crate::error::{ModelError, Result};
use crate::fsutil::{write_atomic, write_json_atomic};
use crate::model::Decoder;
use crate::weights::{save_safetensors, TensorMap};

/// ChatML, as Qwen models use it, without the tool-calling branches.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\n{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n{{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

/// The special tokens of tokenizers made here: ChatML markers, with `<|im_end|>` as EOS and
/// `<|endoftext|>` as padding (Qwen's convention).
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const EOS_TOKEN: &str = "<|im_end|>";
pub const PAD_TOKEN: &str = "<|endoftext|>";

/// A few hundred words of built-in text, enough for a small BPE vocabulary when no corpus is
/// given.
pub const BUILTIN_CORPUS: &str = "The quick brown fox jumps over the lazy dog. \
Response A is better than Response B because it answers the question directly and correctly. \
Response B is better because it is accurate, concise and helpful. Which response is better? \
Feedback: the first response computes the sum step by step. Comparision: the second one makes an error. \
Conclusion: A is correct. <think> </think> <answer> A </answer> <answer> B </answer> \
Question: what is 12 + 35? Answer: 47. What is 63 - 15? It is 48. 7 * 8 = 56. 100 / 4 = 25. \
The user asked for a short poem about the sea. The assistant wrote four lines. \
Please read the following text carefully and answer the question. Count the letters in the word. \
Sort the numbers 5, 3, 9, 1 in increasing order: 1, 3, 5, 9. The capital of France is Paris. \
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 \
Hello! How can I help you today? I think the answer is yes, but let me check again. \
Instruction: summarize the paragraph in one sentence. Output: a single sentence summary.";

/// Shapes of a random model. `head_dim` defaults to hidden / heads.
#[derive(Debug, Clone)]
pub struct InitSpec {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: Option<usize>,
    /// Model vocabulary; at least the tokenizer's size (larger pads it, as Qwen does).
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub llama3_rope_scaling: bool,
    /// Standard deviation of the normal init of matrices (HF's `initializer_range`).
    pub init_std: f64,
    pub seed: u64,
}

impl InitSpec {
    pub fn tiny(architecture: Architecture) -> Self {
        Self {
            architecture,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: None,
            vocab_size: 0,
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            rope_theta: 1_000_000.0,
            llama3_rope_scaling: false,
            init_std: 0.02,
            seed: 0,
        }
    }

    /// Qwen3-0.6B's shape: the reference model of the benchmarks.
    pub fn qwen3_0_6b() -> Self {
        Self {
            architecture: Architecture::Qwen3,
            hidden_size: 1024,
            intermediate_size: 3072,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: Some(128),
            vocab_size: 151_936,
            max_position_embeddings: 40_960,
            tie_word_embeddings: true,
            rope_theta: 1_000_000.0,
            llama3_rope_scaling: false,
            init_std: 0.02,
            seed: 0,
        }
    }

    pub fn config(&self, tokenizer: &Tokenizer) -> DecoderConfig {
        let tok_vocab = tokenizer.get_vocab_size(true);
        let eos = tokenizer.token_to_id(EOS_TOKEN);
        let pad = tokenizer.token_to_id(PAD_TOKEN);
        DecoderConfig {
            architecture: self.architecture,
            vocab_size: self.vocab_size.max(tok_vocab),
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads),
            rms_norm_eps: 1e-6,
            rope_theta: self.rope_theta,
            rope_scaling: self.llama3_rope_scaling.then_some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.min(self.max_position_embeddings),
            }),
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: self.architecture == Architecture::Qwen2,
            o_bias: false,
            mlp_bias: false,
            qk_norm: self.architecture == Architecture::Qwen3,
            bos_token_id: None,
            eos_token_ids: eos.into_iter().collect(),
            pad_token_id: pad,
            dtype: Some("float32".into()),
        }
    }
}

/// Every parameter of `cfg`, drawn as transformers' `_init_weights` does: normal(0, std) for
/// matrices and embeddings, zeros for biases, ones for norms.
pub fn random_weights(cfg: &DecoderConfig, std: f64, seed: u64) -> Result<TensorMap> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, std as f32).map_err(|e| ModelError::Input(e.to_string()))?;
    let mut mat = |shape: &[usize]| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    };
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu);
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu);
    let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv, d) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.head_dim);
    let mut m = BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_string(), mat(&[cfg.vocab_size, c])?);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        m.insert(format!("{p}.input_layernorm.weight"), ones(c)?);
        m.insert(format!("{p}.post_attention_layernorm.weight"), ones(c)?);
        for (name, out, inp) in [("q_proj", q, c), ("k_proj", kv, c), ("v_proj", kv, c), ("o_proj", c, q)] {
            m.insert(format!("{p}.self_attn.{name}.weight"), mat(&[out, inp])?);
        }
        if cfg.qkv_bias {
            m.insert(format!("{p}.self_attn.q_proj.bias"), zeros(q)?);
            m.insert(format!("{p}.self_attn.k_proj.bias"), zeros(kv)?);
            m.insert(format!("{p}.self_attn.v_proj.bias"), zeros(kv)?);
        }
        if cfg.o_bias {
            m.insert(format!("{p}.self_attn.o_proj.bias"), zeros(c)?);
        }
        if cfg.mlp_bias {
            m.insert(format!("{p}.mlp.gate_proj.bias"), zeros(i)?);
            m.insert(format!("{p}.mlp.up_proj.bias"), zeros(i)?);
            m.insert(format!("{p}.mlp.down_proj.bias"), zeros(c)?);
        }
        if cfg.qk_norm {
            m.insert(format!("{p}.self_attn.q_norm.weight"), ones(d)?);
            m.insert(format!("{p}.self_attn.k_norm.weight"), ones(d)?);
        }
        m.insert(format!("{p}.mlp.gate_proj.weight"), mat(&[i, c])?);
        m.insert(format!("{p}.mlp.up_proj.weight"), mat(&[i, c])?);
        m.insert(format!("{p}.mlp.down_proj.weight"), mat(&[c, i])?);
    }
    m.insert("model.norm.weight".to_string(), ones(c)?);
    if !cfg.tie_word_embeddings {
        m.insert("lm_head.weight".to_string(), mat(&[cfg.vocab_size, c])?);
    }
    Ok(TensorMap(m))
}

/// Writes `config.json`, `model.safetensors` and `generation_config.json` of a decoder.
pub fn save_decoder(decoder: &Decoder, dir: &Path, dtype: DType) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut cfg = decoder.cfg.clone();
    cfg.dtype = Some(if dtype == DType::BF16 { "bfloat16" } else { "float32" }.into());
    write_json_atomic(&dir.join("config.json"), &cfg.to_hf_json())?;
    save_safetensors(&decoder.named_parameters(), &dir.join("model.safetensors"), dtype)?;
    let mut gen = serde_json::Map::new();
    match cfg.eos_token_ids.as_slice() {
        [] => {}
        [e] => {
            gen.insert("eos_token_id".into(), json!(e));
        }
        es => {
            gen.insert("eos_token_id".into(), json!(es));
        }
    }
    if let Some(p) = cfg.pad_token_id {
        gen.insert("pad_token_id".into(), json!(p));
    }
    gen.insert("do_sample".into(), json!(false));
    write_json_atomic(&dir.join("generation_config.json"), &Value::Object(gen))
}

/// Writes `tokenizer.json` and a `tokenizer_config.json` that transformers'
/// `AutoTokenizer` reads (PreTrainedTokenizerFast, ChatML template, EOS and PAD).
pub fn save_tokenizer(tokenizer: &Tokenizer, dir: &Path, chat_template: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let path = dir.join("tokenizer.json");
    let text = tokenizer
        .to_string(true)
        .map_err(|e| ModelError::Tokenizer { path: path.clone(), message: e.to_string() })?;
    write_atomic(&path, text.as_bytes())?;
    let mut added = serde_json::Map::new();
    for tok in SPECIAL_TOKENS {
        if let Some(id) = tokenizer.token_to_id(tok) {
            added.insert(
                id.to_string(),
                json!({"content": tok, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}),
            );
        }
    }
    let cfg = json!({
        "added_tokens_decoder": added,
        "bos_token": null,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": chat_template,
    });
    write_json_atomic(&dir.join("tokenizer_config.json"), &cfg)
}

/// A byte-level BPE tokenizer (GPT-2/Llama 3/Qwen style) trained on `texts` to `vocab_size`
/// tokens, with the ChatML special tokens.
pub fn train_bpe_tokenizer<I, S>(texts: I, vocab_size: usize) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerImpl};
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(t.to_string(), true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tk: TokenizerImpl<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper> =
        TokenizerImpl::new(BPE::default());
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    tk.with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)));
    tk.train(&mut trainer, texts).map_err(|e| ModelError::Tokenizer { path: "<training>".into(), message: e.to_string() })?;
    Ok(Tokenizer::from(tk))
}

/// One token per character of `alphabet` (plus the ChatML specials and `<unk>`): the smallest
/// possible vocabulary for toy domains, where every character matters (digits of arithmetic).
pub fn char_tokenizer(alphabet: &str) -> Result<Tokenizer> {
    let mut chars: Vec<char> = alphabet.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    let mut id = 0u32;
    for tok in SPECIAL_TOKENS.iter().chain(["<unk>"].iter()) {
        vocab.insert(tok.to_string(), json!(id));
        added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
        id += 1;
    }
    for c in chars {
        vocab.insert(c.to_string(), json!(id));
        id += 1;
    }
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| ModelError::Tokenizer { path: "<char tokenizer>".into(), message: e.to_string() })
}

/// [`char_tokenizer`] plus `extra` tokens that each encode to a single id (for example
/// `<think>` or `<answer>`), so a toy format's tags cost one position instead of one per
/// character. The extras are added tokens but not *special*: decoding with
/// `skip_special_tokens` keeps them, since a verdict parser has to read them back.
pub fn char_tokenizer_with_tokens(alphabet: &str, extra: &[&str]) -> Result<Tokenizer> {
    let base = char_tokenizer(alphabet)?;
    let mut spec: Value = base
        .to_string(false)
        .map_err(|e| ModelError::Tokenizer { path: "<char tokenizer>".into(), message: e.to_string() })?
        .parse::<Value>()
        .map_err(|e| ModelError::Tokenizer { path: "<char tokenizer>".into(), message: e.to_string() })?;
    let mut id = base.get_vocab_size(true) as u32;
    for tok in extra {
        if base.token_to_id(tok).is_some() {
            return Err(ModelError::Input(format!("extra token {tok:?} is already in the vocabulary")));
        }
        spec["model"]["vocab"][*tok] = json!(id);
        spec["added_tokens"]
            .as_array_mut()
            .expect("added_tokens is a list")
            .push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}));
        id += 1;
    }
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| ModelError::Tokenizer { path: "<char tokenizer>".into(), message: e.to_string() })
}

/// Writes a complete random model directory: weights, config, tokenizer, chat template and
/// generation config.
pub fn write_random_model(dir: &Path, spec: &InitSpec, tokenizer: &Tokenizer, dtype: DType) -> Result<DecoderConfig> {
    let cfg = spec.config(tokenizer);
    let weights = random_weights(&cfg, spec.init_std, spec.seed)?;
    let decoder = Decoder::load(&cfg, &weights)?;
    save_decoder(&decoder, dir, dtype)?;
    save_tokenizer(tokenizer, dir, CHATML_TEMPLATE)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, ChatMessage, Prompt, ScoreRequest};
    use crate::engine::{Engine, LoadOptions};

    #[test]
    fn char_tokenizer_round_trips_and_maps_each_char_to_one_token() {
        let tok = char_tokenizer("0123456789+-=? QA:").unwrap();
        let enc = tok.encode("12+35=?", false).unwrap();
        assert_eq!(enc.get_ids().len(), 7);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "12+35=?");
        let enc = tok.encode("<|im_start|>Q: 1<|im_end|>", false).unwrap();
        assert_eq!(enc.get_ids().len(), 6);
        assert_eq!(enc.get_ids()[0], tok.token_to_id("<|im_start|>").unwrap());
    }

    #[test]
    fn extra_tokens_are_single_ids_and_survive_decoding() {
        let tok = char_tokenizer_with_tokens("0123456789AB ", &["<think>", "</think>"]).unwrap();
        let ids = tok.encode("<think>12 A</think>", false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), 6);
        assert_eq!(ids[0], tok.token_to_id("<think>").unwrap());
        assert_eq!(tok.decode(&ids, true).unwrap(), "<think>12 A</think>");
        assert!(char_tokenizer_with_tokens("ab", &["a"]).is_err());
    }

    #[test]
    fn random_model_in_hf_layout_loads_and_scores_for_every_architecture() {
        let tok = train_bpe_tokenizer(std::iter::once(BUILTIN_CORPUS), 300).unwrap();
        assert!(tok.get_vocab_size(true) > 256);
        for arch in [Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3] {
            let tmp = tempfile::tempdir().unwrap();
            let mut spec = InitSpec::tiny(arch);
            spec.tie_word_embeddings = arch != Architecture::Llama;
            spec.llama3_rope_scaling = arch == Architecture::Llama;
            let cfg = write_random_model(tmp.path(), &spec, &tok, DType::F32).unwrap();
            let engine = Engine::load(tmp.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
            assert_eq!(engine.model.cfg, DecoderConfig { dtype: Some("float32".into()), ..cfg.clone() });
            let out = engine
                .score(&[ScoreRequest { prompt: Prompt::Chat(vec![ChatMessage::user("What is 12 + 35?")]), completion: " 47".into() }])
                .unwrap();
            assert!(out[0].completion_tokens >= 1);
            // A random model is close to uniform: each token's log-prob is near -ln(vocab).
            let uniform = -(cfg.vocab_size as f32).ln();
            for lp in &out[0].token_logprobs {
                assert!((lp - uniform).abs() < 1.0, "{lp} vs {uniform}");
            }
            let rendered = engine.render_prompt(&Prompt::Chat(vec![ChatMessage::user("hi")])).unwrap();
            assert_eq!(rendered, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        }
    }
}
