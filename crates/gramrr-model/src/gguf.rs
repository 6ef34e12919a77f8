//! GGUF checkpoints (llama.cpp's single-file format): config, tokenizer, chat template and
//! weights from one file, for the Llama, Qwen2 and Qwen3 architectures.
//!
//! The header is parsed here rather than by candle's reader so that every refusal names what
//! it refuses: the metadata key, or the tensor, whose type, shape or extent is wrong. Tensor
//! data is read through a memory map and handed to candle as [`QTensor`]s, which stay
//! quantized for inference (matmuls through [`crate::qlinear::QuantLinear`]) or are
//! dequantized to f32 on request (training, `--dequantize`).
//!
//! GGUF names tensors its own way (`blk.3.attn_q.weight`); [`hf_name`] maps them to the
//! Hugging Face names the decoder loads. llama.cpp's converter permutes the rows of Llama's
//! q/k projections for its interleaved rotary embedding; they are permuted back here, as
//! transformers' GGUF loader does, so a GGUF and its safetensors source load the same model.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use memmap2::Mmap;

use crate::config::{Architecture, DecoderConfig};
use crate::error::{ModelError, Result};
use crate::model::WeightSource;
use crate::qlinear::QuantLinear;

const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF", little-endian
/// Sizes past which a header field is taken as corrupt rather than allocated.
const MAX_STRING: u64 = 1 << 24;
const MAX_ARRAY: u64 = 1 << 26;

/// The tensor types gramrr reads, with their GGML type ids.
pub fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Row-major dims, outermost first (GGUF stores them innermost first).
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub size: usize,
}

/// A parsed GGUF file: metadata, tensor directory, and the map holding the data.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, GgufTensorInfo>,
    mmap: Mmap,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str, msg: impl std::fmt::Display) -> ModelError {
        ModelError::Weights { file: self.path.to_path_buf(), message: format!("{what}: {msg}") }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err(self.err(
                what,
                format!("file ends at byte {} while reading {n} bytes at {} (truncated file?)", self.data.len(), self.pos),
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(self.err(what, format!("string length {n} is implausible (corrupt header)")));
        }
        let b = self.take(n as usize, what)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, ty: u32, what: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.take(1, what)?[0]),
            1 => Value::I8(self.take(1, what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(self.take(2, what)?.try_into().expect("2"))),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => Value::Bool(self.take(1, what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                let inner = self.u32(what)?;
                let n = self.u64(what)?;
                if n > MAX_ARRAY {
                    return Err(self.err(what, format!("array length {n} is implausible (corrupt header)")));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(inner, what)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(self.err(what, format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mmap = crate::weights::map_file(path)?;
        let mut r = Reader { data: &mmap, pos: 0, path };
        let magic = r.u32("header")?;
        if magic != GGUF_MAGIC {
            return Err(r.err("header", format!("not a GGUF file (magic {magic:#010x})")));
        }
        let version = r.u32("header")?;
        if !(2..=3).contains(&version) {
            return Err(r.err("header", format!("GGUF version {version} is not supported (2 or 3)")));
        }
        let n_tensors = r.u64("header")?;
        let n_kv = r.u64("header")?;
        if n_tensors > MAX_ARRAY || n_kv > MAX_ARRAY {
            return Err(r.err("header", format!("{n_tensors} tensors / {n_kv} keys is implausible (corrupt header)")));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("metadata key {key:?}"))?;
            let v = r.value(ty, &format!("metadata key {key:?}"))?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor #{i} name"))?;
            let what = format!("tensor {name:?}");
            let n_dims = r.u32(&what)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(r.err(&what, format!("{n_dims} dimensions (expected 1 to 4)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&what)? as usize);
            }
            dims.reverse();
            let ty = r.u32(&what)?;
            let dtype = ggml_dtype(ty).ok_or_else(|| {
                r.err(
                    &what,
                    format!(
                        "tensor type {ty} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)"
                    ),
                )
            })?;
            let offset = r.u64(&what)? as usize;
            infos.push((name, dims, dtype, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => *a as usize,
            Some(v) => {
                return Err(r.err("metadata key \"general.alignment\"", format!("{v:?} is not a power of two")))
            }
        };
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, shape, dtype, rel) in infos {
            let what = format!("tensor {name:?}");
            let elems: usize = shape.iter().product();
            let block = dtype.block_size();
            let inner = *shape.last().expect("at least one dim");
            if inner % block != 0 {
                return Err(r.err(&what, format!("row length {inner} is not a multiple of {dtype:?}'s block of {block}")));
            }
            let size = elems / block * dtype.type_size();
            let offset = data_start + rel;
            if offset % 4 != 0 {
                return Err(r.err(&what, format!("data offset {offset} is not aligned")));
            }
            if offset.checked_add(size).is_none_or(|end| end > mmap.len()) {
                return Err(r.err(
                    &what,
                    format!(
                        "data ({size} bytes at offset {offset}) runs past the end of the file ({} bytes): truncated file",
                        mmap.len()
                    ),
                ));
            }
            tensors.insert(name.clone(), GgufTensorInfo { name, shape, dtype, offset, size });
        }
        Ok(Self { path: path.to_path_buf(), version, metadata, tensors, mmap })
    }

    fn key_err(&self, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::config(&self.path, key, msg)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.key_err(key, format!("expected a string, found {v:?}"))),
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(match self.get(key) {
            None => None,
            Some(Value::U8(x)) => Some(*x as u64),
            Some(Value::U16(x)) => Some(*x as u64),
            Some(Value::U32(x)) => Some(*x as u64),
            Some(Value::U64(x)) => Some(*x),
            Some(Value::I32(x)) if *x >= 0 => Some(*x as u64),
            Some(Value::I64(x)) if *x >= 0 => Some(*x as u64),
            Some(v) => return Err(self.key_err(key, format!("expected a non-negative integer, found {v:?}"))),
        })
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        Ok(match self.get(key) {
            None => None,
            Some(Value::F32(x)) => Some(*x as f64),
            Some(Value::F64(x)) => Some(*x),
            Some(v) => return Err(self.key_err(key, format!("expected a float, found {v:?}"))),
        })
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.key_err(key, format!("expected a bool, found {v:?}"))),
        }
    }

    fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)?.ok_or_else(|| self.key_err(key, "missing"))
    }

    /// `general.architecture`, checked against the ones the decoder implements.
    pub fn architecture(&self) -> Result<(Architecture, String)> {
        let key = "general.architecture";
        let name = self.get_str(key)?.ok_or_else(|| self.key_err(key, "missing"))?.to_string();
        let arch = match name.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            _ => {
                return Err(ModelError::UnsupportedArchitecture {
                    file: self.path.clone(),
                    found: format!("{key} = {name}"),
                    supported: "llama, qwen2, qwen3".into(),
                })
            }
        };
        Ok((arch, name))
    }

    /// The decoder config from `{arch}.*` metadata and which tensors are present.
    pub fn config(&self) -> Result<DecoderConfig> {
        let (architecture, a) = self.architecture()?;
        let hidden_size = self.require_u64(&format!("{a}.embedding_length"))? as usize;
        let num_attention_heads = self.require_u64(&format!("{a}.attention.head_count"))? as usize;
        let kv_key = format!("{a}.attention.head_count_kv");
        let num_key_value_heads = self.get_u64(&kv_key)?.map_or(num_attention_heads, |x| x as usize);
        if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(self.key_err(&kv_key, format!("{num_key_value_heads} does not divide {num_attention_heads} heads")));
        }
        let head_dim = match self.get_u64(&format!("{a}.attention.key_length"))? {
            Some(d) => d as usize,
            None => hidden_size / num_attention_heads,
        };
        let vocab_size = match self.get_u64(&format!("{a}.vocab_size"))? {
            Some(v) => v as usize,
            None => match self.tensors.get("token_embd.weight") {
                Some(t) => t.shape[0],
                None => return Err(self.tensor_missing("token_embd.weight")),
            },
        };
        let has = |n: &str| self.tensors.contains_key(n);
        let qkv_bias = has("blk.0.attn_q.bias");
        let o_bias = has("blk.0.attn_output.bias");
        let mlp_bias = has("blk.0.ffn_gate.bias");
        let qk_norm = has("blk.0.attn_q_norm.weight");
        if architecture == Architecture::Qwen2 && !qkv_bias {
            return Err(self.tensor_missing("blk.0.attn_q.bias"));
        }
        if architecture == Architecture::Qwen3 && !qk_norm {
            return Err(self.tensor_missing("blk.0.attn_q_norm.weight"));
        }
        let bos = self.get_u64("tokenizer.ggml.bos_token_id")?.map(|x| x as u32);
        let mut eos = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = self.get_u64(key)? {
                if !eos.contains(&(id as u32)) {
                    eos.push(id as u32);
                }
            }
        }
        let dtype = self.get_u64("general.file_type")?.map(|t| format!("gguf file_type {t}"));
        Ok(DecoderConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: self.require_u64(&format!("{a}.feed_forward_length"))? as usize,
            num_hidden_layers: self.require_u64(&format!("{a}.block_count"))? as usize,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.get_f64(&format!("{a}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
            rope_theta: self.get_f64(&format!("{a}.rope.freq_base"))?.unwrap_or(10000.0),
            // Llama 3.1's frequency scaling comes as the `rope_freqs.weight` tensor, applied by
            // `rope_frequency_factors`; the config keeps the unscaled frequencies.
            rope_scaling: None,
            max_position_embeddings: self.get_u64(&format!("{a}.context_length"))?.map_or(4096, |x| x as usize),
            tie_word_embeddings: !has("output.weight"),
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm,
            bos_token_id: bos,
            eos_token_ids: eos,
            pad_token_id: self.get_u64("tokenizer.ggml.padding_token_id")?.map(|x| x as u32),
            dtype,
        })
    }

    fn tensor_missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor { file: self.path.clone(), tensor: name.to_string() }
    }

    /// Per-frequency divisors of the rotary frequencies (`rope_freqs.weight`, Llama 3.1+).
    pub fn rope_frequency_factors(&self) -> Result<Option<Vec<f32>>> {
        if !self.tensors.contains_key("rope_freqs.weight") {
            return Ok(None);
        }
        let t = self.qtensor("rope_freqs.weight", &Device::Cpu)?.dequantize(&Device::Cpu)?;
        Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensors.get(name).ok_or_else(|| self.tensor_missing(name))?;
        Ok(&self.mmap[info.offset..info.offset + info.size])
    }

    /// A tensor as stored, in GGUF's row-major order.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = &self.tensors[name];
        let bytes = self.tensor_bytes(name)?;
        let storage = QStorage::from_data(Cow::Borrowed(bytes), device, info.dtype)?;
        Ok(QTensor::new(storage, info.shape.as_slice())?)
    }
}

/// Hugging Face name → GGUF name, for the tensors the decoder loads.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, param) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{param}"))
}

/// GGUF name → Hugging Face name (inverse of [`gguf_name`]).
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, param) = rest.rsplit_once('.')?;
    let h = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{h}.{param}"))
}

/// Reorders the rows of a (heads·D, …) tensor between Hugging Face's rotate-half layout and
/// llama.cpp's interleaved one. `to_hf = true` undoes the converter's permutation: GGUF row
/// `2j + s` of a head is Hugging Face row `s·D/2 + j`. Rows move whole, so quantized rows
/// (blocks run along a row) are permuted without dequantizing.
pub fn permute_rows(bytes: &[u8], n_rows: usize, heads: usize, to_hf: bool) -> Vec<u8> {
    let row = bytes.len() / n_rows;
    let d = n_rows / heads;
    let half = d / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let gguf_row = h * d + 2 * j + s;
                let hf_row = h * d + s * half + j;
                let (src, dst) = if to_hf { (gguf_row, hf_row) } else { (hf_row, gguf_row) };
                out[dst * row..(dst + 1) * row].copy_from_slice(&bytes[src * row..(src + 1) * row]);
            }
        }
    }
    out
}

/// A GGUF checkpoint as a [`WeightSource`]: every tensor by its Hugging Face name, with
/// Llama's q/k permutation undone. With `quantized`, 2-D quantized weights are also offered
/// as [`QuantLinear`]s; f32/f16/bf16 tensors and 1-D ones are always dense f32.
pub struct GgufCheckpoint {
    pub file: GgufFile,
    pub config: DecoderConfig,
    device: Device,
    quantized: bool,
    /// HF name → GGUF name
    names: HashMap<String, String>,
}

impl GgufCheckpoint {
    pub fn open(path: &Path, device: &Device, quantized: bool) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = file.config()?;
        let mut names = HashMap::new();
        for g in file.tensors.keys() {
            if let Some(h) = hf_name(g) {
                names.insert(h, g.clone());
            }
        }
        Ok(Self { file, config, device: device.clone(), quantized, names })
    }

    fn gguf_for(&self, hf: &str) -> Result<&str> {
        match self.names.get(hf) {
            Some(g) => Ok(g),
            None => Err(ModelError::MissingTensor {
                file: self.file.path.clone(),
                tensor: gguf_name(hf).map_or_else(|| hf.to_string(), |g| format!("{g} ({hf})")),
            }),
        }
    }

    /// How many heads to un-permute the rows of `hf` over, if it is Llama's q or k.
    fn permuted_heads(&self, hf: &str) -> Option<usize> {
        if self.config.architecture != Architecture::Llama {
            return None;
        }
        if hf.contains(".self_attn.q_proj.") {
            Some(self.config.num_attention_heads)
        } else if hf.contains(".self_attn.k_proj.") {
            Some(self.config.num_key_value_heads)
        } else {
            None
        }
    }

    /// The tensor with HF name `hf` as a QTensor in Hugging Face row order, shape-checked.
    fn load_q(&self, hf: &str, shape: &[usize]) -> Result<(QTensor, GgmlDType)> {
        let g = self.gguf_for(hf)?;
        let info = &self.file.tensors[g];
        if info.shape != shape {
            return Err(ModelError::ShapeMismatch {
                file: self.file.path.clone(),
                tensor: format!("{g} ({hf})"),
                found: info.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        let bytes = self.file.tensor_bytes(g)?;
        let q = match self.permuted_heads(hf) {
            Some(heads) => {
                let rows = info.shape[0];
                if rows % heads != 0 || (rows / heads) % 2 != 0 {
                    return Err(ModelError::Weights {
                        file: self.file.path.clone(),
                        message: format!("tensor {g:?}: {rows} rows do not split into {heads} heads of even size"),
                    });
                }
                let p = permute_rows(bytes, rows, heads, true);
                QTensor::new(QStorage::from_data(Cow::Owned(p), &self.device, info.dtype)?, info.shape.as_slice())?
            }
            None => self.file.qtensor(g, &self.device)?,
        };
        Ok((q, info.dtype))
    }
}

fn is_dense(d: GgmlDType) -> bool {
    matches!(d, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

impl WeightSource for GgufCheckpoint {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (q, _) = self.load_q(name, shape)?;
        Ok(q.dequantize(&self.device)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
    fn get_quantized(&self, name: &str, shape: &[usize]) -> Result<Option<QuantLinear>> {
        if !self.quantized || shape.len() != 2 {
            return Ok(None);
        }
        let g = self.gguf_for(name)?;
        if is_dense(self.file.tensors[g].dtype) {
            return Ok(None);
        }
        let (q, _) = self.load_q(name, shape)?;
        Ok(Some(QuantLinear::new(q)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// Llama 3's split regex (llama.cpp `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (llama.cpp `qwen2`): digits one at a time.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values gramrr builds, with the pre-tokenizer, normalizer and
/// `ignore_merges` of the Hugging Face tokenizer.json each one stands for.
pub const SUPPORTED_PRE_TOKENIZERS: [&str; 6] = ["llama-bpe", "llama3", "qwen2", "smollm", "gpt2", "default"];

fn pre_tokenizer(pre: &str) -> Option<(serde_json::Value, serde_json::Value, bool)> {
    use serde_json::json;
    let split_then_bytes = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
    };
    Some(match pre {
        "llama-bpe" | "llama3" => (split_then_bytes(LLAMA3_REGEX), serde_json::Value::Null, true),
        "qwen2" => (split_then_bytes(QWEN2_REGEX), json!({"type": "NFC"}), false),
        // SmolLM/StarCoder: single digits, then GPT-2's byte-level split.
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}),
            serde_json::Value::Null,
            false,
        ),
        "gpt2" | "default" => (
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            serde_json::Value::Null,
            false,
        ),
        _ => return None,
    })
}

fn string_array<'a>(f: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    match f.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(f.key_err(key, format!("element {i} is {other:?}, not a string"))),
            })
            .collect(),
        Some(other) => Err(f.key_err(key, format!("expected an array of strings, found {:?}", other.value_type()))),
        None => Err(f.key_err(key, "missing")),
    }
}

/// Builds the tokenizer, chat template and special tokens from `tokenizer.ggml.*` metadata:
/// the byte-level BPE (`tokenizer.ggml.model = gpt2`) of Llama 3, Qwen and SmolLM. Other
/// tokenizer models (SentencePiece `llama`, …) are refused by name.
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<crate::tokenizer::TextTokenizer> {
    use serde_json::json;
    let model_key = "tokenizer.ggml.model";
    let model = f.get_str(model_key)?.ok_or_else(|| f.key_err(model_key, "missing"))?;
    if model != "gpt2" {
        return Err(f.key_err(
            model_key,
            format!("tokenizer model {model:?} is not supported (only \"gpt2\", the byte-level BPE of Llama 3, Qwen and SmolLM)"),
        ));
    }
    let pre_key = "tokenizer.ggml.pre";
    let pre = f.get_str(pre_key)?.unwrap_or("default");
    let (pre_tok, normalizer, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
        f.key_err(pre_key, format!("pre-tokenizer {pre:?} is not supported (supported: {})", SUPPORTED_PRE_TOKENIZERS.join(", ")))
    })?;
    let tokens = string_array(f, "tokenizer.ggml.tokens")?;
    let merges = string_array(f, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::I32(x) => *x as i64,
                Value::U32(x) => *x as i64,
                Value::I8(x) => *x as i64,
                Value::U8(x) => *x as i64,
                _ => 1,
            })
            .collect(),
        _ => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(f.key_err(
            "tokenizer.ggml.token_type",
            format!("{} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        vocab.insert(tok.to_string(), json!(id));
        // 3 = control, 4 = user-defined: added tokens, matched before the BPE sees the text.
        if ty == 3 || ty == 4 {
            added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == 3}));
        }
    }
    let id_of = |key: &str| -> Result<Option<u32>> {
        let id = f.get_u64(key)?;
        match id {
            Some(i) if i as usize >= tokens.len() => {
                Err(f.key_err(key, format!("token id {i} is outside the vocabulary of {}", tokens.len())))
            }
            Some(i) => Ok(Some(i as u32)),
            None => Ok(None),
        }
    };
    let bos = id_of("tokenizer.ggml.bos_token_id")?;
    let eos = id_of("tokenizer.ggml.eos_token_id")?;
    let pad = id_of("tokenizer.ggml.padding_token_id")?;
    let unk = id_of("tokenizer.ggml.unknown_token_id")?;
    let add_bos = f.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let post_processor = match (add_bos, bos) {
        (true, Some(b)) => {
            let t = tokens[b as usize];
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {t: {"id": t, "ids": [b], "tokens": [t]}}})
        }
        _ => json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
    };
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tok,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": merges},
    });
    let inner: tokenizers::Tokenizer = spec.to_string().parse().map_err(|e: tokenizers::Error| ModelError::Tokenizer {
        path: f.path.clone(),
        message: format!("building the tokenizer from tokenizer.ggml.*: {e}"),
    })?;
    let mut special = serde_json::Map::new();
    for (key, id) in [("bos_token", bos), ("eos_token", eos), ("pad_token", pad), ("unk_token", unk)] {
        if let Some(id) = id {
            special.insert(key.to_string(), serde_json::Value::String(tokens[id as usize].to_string()));
        }
    }
    let chat_template = f.get_str("tokenizer.chat_template")?.map(str::to_string);
    Ok(crate::tokenizer::TextTokenizer::from_parts(inner, f.path.clone(), chat_template, special, eos, pad))
}

/// Everything a GGUF file gives: config, tokenizer and decoder (quantized weights kept
/// quantized unless `dequantize`).
pub fn load(path: &Path, device: &Device, dequantize: bool) -> Result<(DecoderConfig, crate::tokenizer::TextTokenizer, crate::model::Decoder)> {
    let ck = GgufCheckpoint::open(path, device, !dequantize)?;
    let tokenizer = tokenizer_from_gguf(&ck.file)?;
    let mut decoder = crate::model::Decoder::load(&ck.config, &ck)?;
    if let Some(factors) = ck.file.rope_frequency_factors()? {
        decoder.set_rope_frequency_factors(&factors)?;
    }
    Ok((ck.config.clone(), tokenizer, decoder))
}

/// Whether a model argument names a GGUF file.
pub fn is_gguf_path(model: &str) -> bool {
    model.to_ascii_lowercase().ends_with(".gguf")
}

// ---------------------------------------------------------------------------------------------
// Writing

/// The tensor types `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    F16,
    Q8_0,
    /// Q4_K for the projections, Q6_K for the embedding/output matrix (llama.cpp's Q4_K_M
    /// choice for `output.weight`).
    Q4K,
}

impl std::str::FromStr for ExportType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            "q4_k" | "q4_k_m" => Ok(Self::Q4K),
            other => Err(format!("unknown GGUF type {other:?} (expected f16, q8_0 or q4_k)")),
        }
    }
}

impl ExportType {
    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_MOSTLY_*).
    fn file_type(self) -> u32 {
        match self {
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4K => 15,
        }
    }

    /// The type a (rows, k) matrix gets: quantized types need k to be a multiple of their
    /// block (256 for k-quants, 32 for Q8_0); where it is not, the next finer type that fits,
    /// as llama.cpp's quantizer falls back.
    fn for_matrix(self, k: usize, is_embedding: bool) -> GgmlDType {
        let want = match self {
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K if is_embedding => GgmlDType::Q6K,
            Self::Q4K => GgmlDType::Q4K,
        };
        [want, GgmlDType::Q8_0, GgmlDType::F16]
            .into_iter()
            .find(|t| k % t.block_size() == 0)
            .unwrap_or(GgmlDType::F16)
    }
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
    /// tensor type → count
    pub types: BTreeMap<String, usize>,
}

/// The `tokenizer.ggml.pre` name of a tokenizer.json pre-tokenizer, if it is one we write.
fn pre_name(pre: &serde_json::Value, normalizer: &serde_json::Value) -> Option<&'static str> {
    for name in ["llama-bpe", "qwen2", "smollm", "gpt2"] {
        let (p, n, _) = pre_tokenizer(name)?;
        // add_prefix_space/trim_offsets do not change ids; compare the splitting.
        if strip_flags(&p) == strip_flags(pre) && (n.is_null() || n == *normalizer) {
            return Some(name);
        }
    }
    None
}

fn strip_flags(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(o) => serde_json::Value::Object(
            o.iter().filter(|(k, _)| *k != "trim_offsets").map(|(k, v)| (k.clone(), strip_flags(v))).collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(strip_flags).collect()),
        other => other.clone(),
    }
}

/// Writes `decoder` and its tokenizer as one GGUF file that llama.cpp loads: Llama's q/k rows
/// permuted for its RoPE, 1-D tensors in f32, matrices in `ty`, Llama 3.1 RoPE scaling as
/// `rope_freqs.weight`. Atomic (temporary file, then rename).
pub fn export(
    decoder: &crate::model::Decoder,
    tokenizer: &crate::tokenizer::TextTokenizer,
    name: &str,
    out: &Path,
    ty: ExportType,
) -> Result<ExportReport> {
    let cfg = &decoder.cfg;
    let werr = |m: String| ModelError::Weights { file: out.to_path_buf(), message: m };
    let arch = cfg.architecture.model_type();
    // Tokenizer, from its own JSON (the BPE merges are not otherwise public).
    let tj: serde_json::Value = serde_json::from_str(&tokenizer.inner().to_string(false).map_err(|e| werr(e.to_string()))?)
        .map_err(|e| werr(format!("tokenizer JSON: {e}")))?;
    if tj["model"]["type"] != "BPE" {
        return Err(werr(format!("only byte-level BPE tokenizers can be written to GGUF (this one is {})", tj["model"]["type"])));
    }
    let pre = pre_name(&tj["pre_tokenizer"], &tj["normalizer"]).ok_or_else(|| {
        werr(format!("the tokenizer's pre-tokenizer has no llama.cpp equivalent that gramrr knows: {}", tj["pre_tokenizer"]))
    })?;
    let mut by_id: BTreeMap<u32, (String, i32)> = BTreeMap::new();
    if let Some(v) = tj["model"]["vocab"].as_object() {
        for (t, id) in v {
            by_id.insert(id.as_u64().unwrap_or(0) as u32, (t.clone(), 1));
        }
    }
    if let Some(a) = tj["added_tokens"].as_array() {
        for t in a {
            let id = t["id"].as_u64().unwrap_or(0) as u32;
            let special = t["special"].as_bool().unwrap_or(false);
            by_id.insert(id, (t["content"].as_str().unwrap_or("").to_string(), if special { 3 } else { 4 }));
        }
    }
    let (mut tokens, mut types) = (Vec::new(), Vec::new());
    for i in 0..cfg.vocab_size as u32 {
        let (t, ty) = by_id.remove(&i).unwrap_or_else(|| (format!("[PAD{i}]"), 5));
        tokens.push(Value::String(t));
        types.push(Value::I32(ty));
    }
    if let Some((id, _)) = by_id.into_iter().next() {
        return Err(werr(format!("token id {id} is outside the model's vocab_size {}", cfg.vocab_size)));
    }
    let merges: Vec<Value> = tj["model"]["merges"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| match m {
                    serde_json::Value::Array(p) => {
                        Value::String(p.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" "))
                    }
                    other => Value::String(other.as_str().unwrap_or("").to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    let add_bos = tj["post_processor"].to_string().contains("TemplateProcessing");

    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (format!("{arch}.context_length"), Value::U32(cfg.max_position_embeddings as u32)),
        (format!("{arch}.embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (format!("{arch}.block_count"), Value::U32(cfg.num_hidden_layers as u32)),
        (format!("{arch}.feed_forward_length"), Value::U32(cfg.intermediate_size as u32)),
        (format!("{arch}.attention.head_count"), Value::U32(cfg.num_attention_heads as u32)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(cfg.num_key_value_heads as u32)),
        (format!("{arch}.attention.key_length"), Value::U32(cfg.head_dim as u32)),
        (format!("{arch}.attention.value_length"), Value::U32(cfg.head_dim as u32)),
        (format!("{arch}.rope.dimension_count"), Value::U32(cfg.head_dim as u32)),
        (format!("{arch}.rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
        (format!("{arch}.vocab_size"), Value::U32(cfg.vocab_size as u32)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)),
    ];
    if let Some(b) = cfg.bos_token_id {
        meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(e) = tokenizer.eos_token_id.or(cfg.eos_token_ids.first().copied()) {
        meta.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    if let Some(p) = cfg.pad_token_id.or(tokenizer.pad_token_id) {
        meta.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(p)));
    }
    if let Some(t) = &tokenizer.chat_template {
        meta.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }

    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let cpu = Device::Cpu;
    if let Some(s) = &cfg.rope_scaling {
        // convert_hf_to_gguf.py's factors for rope_type "llama3".
        let base: Vec<f32> = (0..cfg.head_dim)
            .step_by(2)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf(i as f32 / cfg.head_dim as f32))
            .collect();
        let (lo_wl, hi_wl) = (
            s.original_max_position_embeddings as f64 / s.low_freq_factor,
            s.original_max_position_embeddings as f64 / s.high_freq_factor,
        );
        let factors: Vec<f32> = base
            .iter()
            .map(|&f| {
                let wl = 2.0 * std::f64::consts::PI / f as f64;
                if wl < hi_wl {
                    1.0
                } else if wl > lo_wl {
                    s.factor as f32
                } else {
                    let smooth = (s.original_max_position_embeddings as f64 / wl - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 / ((1.0 - smooth) / s.factor + smooth)) as f32
                }
            })
            .collect();
        let n = factors.len();
        tensors.push(("rope_freqs.weight".into(), QTensor::quantize(&Tensor::from_vec(factors, n, &cpu)?, GgmlDType::F32)?));
    }
    let mut types_count: BTreeMap<String, usize> = BTreeMap::new();
    for (hf, t) in decoder.named_parameters() {
        let g = gguf_name(&hf).ok_or_else(|| werr(format!("no GGUF name for tensor {hf:?}")))?;
        let t = t.to_device(&cpu)?.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let q = if t.rank() == 1 {
            QTensor::quantize(&t, GgmlDType::F32)?
        } else {
            let (rows, k) = t.dims2()?;
            let heads = match hf.as_str() {
                h if cfg.architecture == Architecture::Llama && h.contains(".self_attn.q_proj.") => Some(cfg.num_attention_heads),
                h if cfg.architecture == Architecture::Llama && h.contains(".self_attn.k_proj.") => Some(cfg.num_key_value_heads),
                _ => None,
            };
            let t = match heads {
                Some(h) => {
                    let bytes: Vec<u8> = t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let p = permute_rows(&bytes, rows, h, false);
                    let v: Vec<f32> = p.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect();
                    Tensor::from_vec(v, (rows, k), &cpu)?
                }
                None => t,
            };
            let is_emb = g == "token_embd.weight" || g == "output.weight";
            QTensor::quantize(&t, ty.for_matrix(k, is_emb))?
        };
        *types_count.entry(format!("{:?}", q.dtype())).or_default() += 1;
        tensors.push((g, q));
    }
    let tmp = out.with_extension("gguf.tmp");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?);
        let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        candle_core::quantized::gguf_file::write(&mut w, &m, &t)?;
        use std::io::Write;
        w.flush().map_err(|e| ModelError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))?;
    let bytes = std::fs::metadata(out).map_err(|e| ModelError::io(out, e))?.len();
    Ok(ExportReport { path: out.to_path_buf(), tensors: tensors.len(), bytes, types: types_count })
}
