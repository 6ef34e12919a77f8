//! Safetensors checkpoints, single-file or sharded, read through a memory map.
//!
//! Each tensor is copied once from the map into the compute dtype (f32), and the pages it came
//! from are then released from our resident set, so loading never holds two copies of the
//! weights in memory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::error::{ModelError, Result};
use crate::model::WeightSource;
use crate::qlinear::QuantLinear;

/// Weight precision. `Bf16` rounds every weight to bf16 (what a bf16 checkpoint holds). On CPU
/// the matrices (the linear layers, the embedding and lm_head) are then held as bf16 and
/// multiplied by bf16 kernels with f32 sums ([`crate::bf16`]); norms, rotary tables, softmax
/// and the activations between layers stay f32. Training always loads `F32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum WeightDType {
    #[default]
    F32,
    Bf16,
}

impl std::str::FromStr for WeightDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(WeightDType::F32),
            "bf16" | "bfloat16" => Ok(WeightDType::Bf16),
            other => Err(format!("unknown dtype {other:?} (expected f32 or bf16)")),
        }
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// An opened checkpoint: which shard holds each tensor, and the maps.
pub struct SafetensorsCheckpoint {
    shards: Vec<Shard>,
    /// tensor name → shard index
    index: HashMap<String, usize>,
    device: Device,
    dtype: WeightDType,
}

impl SafetensorsCheckpoint {
    /// Opens `model.safetensors`, or every shard listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path, device: &Device, dtype: WeightDType) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::Json { path: index_path.clone(), source: e })?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
                ModelError::config(&index_path, "weight_map", "missing or not an object")
            })?;
            let files: std::collections::BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(ModelError::MissingFile { path: single });
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let mmap = map_file(&path)?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| ModelError::Weights { file: path.clone(), message: e.to_string() })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            shards.push(Shard { path, mmap });
        }
        Ok(Self { shards, index, device: device.clone(), dtype })
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.index.keys().cloned().collect();
        n.sort();
        n
    }

    fn file_for(&self, name: &str) -> PathBuf {
        match self.index.get(name) {
            Some(&i) => self.shards[i].path.clone(),
            None if self.shards.len() == 1 => self.shards[0].path.clone(),
            None => self.shards[0].path.parent().unwrap_or(Path::new(".")).join("model.safetensors.index.json"),
        }
    }

    /// Loads a tensor as stored (converted to f32), without a shape check.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let Some(&i) = self.index.get(name) else {
            return Err(ModelError::MissingTensor { file: self.file_for(name), tensor: name.to_string() });
        };
        let shard = &self.shards[i];
        let werr = |m: String| ModelError::Weights { file: shard.path.clone(), message: m };
        let st = SafeTensors::deserialize(&shard.mmap).map_err(|e| werr(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| werr(format!("tensor {name:?}: {e}")))?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::F64 => DType::F64,
            other => return Err(werr(format!("tensor {name:?}: dtype {other:?} is not supported (f32, bf16, f16, f64)"))),
        };
        let data = view.data();
        let t = Tensor::from_raw_buffer(data, dtype, view.shape(), &Device::Cpu)?;
        let t = match self.dtype {
            WeightDType::F32 => t.to_dtype(DType::F32)?,
            WeightDType::Bf16 => t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?,
        };
        let t = t.to_device(&self.device)?;
        release_pages(&shard.mmap, data);
        Ok(t)
    }
}

/// Drops the already-copied pages of `data` from this process's resident set. The mapping is
/// read-only and file-backed, so the kernel can re-read them if anyone touches them again.
fn release_pages(mmap: &Mmap, data: &[u8]) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let base = mmap.as_ptr() as usize;
        let start = data.as_ptr() as usize - base;
        let end = start + data.len();
        let aligned_start = start.div_ceil(PAGE) * PAGE;
        let aligned_end = end / PAGE * PAGE;
        if aligned_end > aligned_start {
            // SAFETY: DontNeed on a private read-only file mapping only discards cached pages;
            // later reads fault them back in from the file. No Rust reference into this range
            // is used afterwards by this loader.
            unsafe {
                let _ = mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    aligned_start,
                    aligned_end - aligned_start,
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (mmap, data);
}

impl WeightSource for SafetensorsCheckpoint {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.load(name)?;
        if t.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                file: self.file_for(name),
                tensor: name.to_string(),
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    /// With `Bf16` on CPU, matrices stay bf16 (half the memory) for the bf16 kernels.
    fn get_quantized(&self, name: &str, shape: &[usize]) -> Result<Option<QuantLinear>> {
        if self.dtype != WeightDType::Bf16 || !self.device.is_cpu() {
            return Ok(None);
        }
        Ok(Some(QuantLinear::bf16(&self.get(name, shape)?)?))
    }
}

/// In-memory weights (random initialisation, tests, merged LoRA).
pub struct TensorMap(pub BTreeMap<String, Tensor>);

impl WeightSource for TensorMap {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { file: PathBuf::from("<memory>"), tensor: name.to_string() })?;
        if t.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                file: PathBuf::from("<memory>"),
                tensor: name.to_string(),
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(t.clone())
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Writes tensors as one safetensors file, atomically (temporary file, then rename), with
/// `{"format": "pt"}` metadata so transformers accepts it.
pub fn save_safetensors(tensors: &[(String, Tensor)], path: &Path, dtype: DType) -> Result<()> {
    let mut converted = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        converted.push((name.clone(), t.to_dtype(dtype)?.to_device(&Device::Cpu)?.contiguous()?));
    }
    let data: Vec<(&str, &Tensor)> = converted.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::tensor::serialize(data.iter().map(|(n, t)| (*n, TensorBytes(t))), Some(meta))
        .map_err(|e| ModelError::Weights { file: path.to_path_buf(), message: e.to_string() })?;
    crate::fsutil::write_atomic(path, &bytes)
}

struct TensorBytes<'a>(&'a Tensor);

impl safetensors::View for TensorBytes<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.0.dtype() {
            DType::F32 => safetensors::Dtype::F32,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F16 => safetensors::Dtype::F16,
            DType::F64 => safetensors::Dtype::F64,
            DType::U32 => safetensors::Dtype::U32,
            DType::I64 => safetensors::Dtype::I64,
            DType::U8 => safetensors::Dtype::U8,
            _ => safetensors::Dtype::F32,
        }
    }
    fn shape(&self) -> &[usize] {
        self.0.dims()
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(tensor_to_bytes(self.0))
    }
    fn data_len(&self) -> usize {
        self.0.elem_count() * self.0.dtype().size_in_bytes()
    }
}

fn tensor_to_bytes(t: &Tensor) -> Vec<u8> {
    fn bytes<T: candle_core::WithDType + Copy>(t: &Tensor, f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
        t.flatten_all().and_then(|x| x.to_vec1::<T>()).map(|v| v.into_iter().flat_map(f).collect()).unwrap_or_default()
    }
    match t.dtype() {
        DType::F32 => bytes::<f32>(t, |x| x.to_le_bytes().to_vec()),
        DType::BF16 => bytes::<half::bf16>(t, |x| x.to_le_bytes().to_vec()),
        DType::F16 => bytes::<half::f16>(t, |x| x.to_le_bytes().to_vec()),
        DType::F64 => bytes::<f64>(t, |x| x.to_le_bytes().to_vec()),
        DType::U32 => bytes::<u32>(t, |x| x.to_le_bytes().to_vec()),
        DType::I64 => bytes::<i64>(t, |x| x.to_le_bytes().to_vec()),
        DType::U8 => bytes::<u8>(t, |x| vec![x]),
        _ => vec![],
    }
}

/// Reads every tensor of a safetensors file (small files: adapters, optimizer state).
pub fn load_safetensors_file(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let ck = SafetensorsCheckpoint::open_file(path, device)?;
    let mut out = BTreeMap::new();
    for n in ck.names() {
        out.insert(n.clone(), ck.load(&n)?);
    }
    Ok(out)
}

/// Maps a weights file (safetensors or GGUF) read-only; a missing file is `MissingFile`.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile { path: path.to_path_buf() }
        } else {
            ModelError::io(path, e)
        }
    })?;
    // SAFETY: the file is opened read-only; a concurrent writer truncating it would make reads
    // fault, which is the usual contract of memory-mapped model loading.
    unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))
}

impl SafetensorsCheckpoint {
    /// Opens one safetensors file under any name.
    pub fn open_file(path: &Path, device: &Device) -> Result<Self> {
        let mmap = map_file(path)?;
        let st = SafeTensors::deserialize(&mmap)
            .map_err(|e| ModelError::Weights { file: path.to_path_buf(), message: e.to_string() })?;
        let index = st.names().into_iter().map(|n| (n.to_string(), 0)).collect();
        Ok(Self { shards: vec![Shard { path: path.to_path_buf(), mmap }], index, device: device.clone(), dtype: WeightDType::F32 })
    }
}
