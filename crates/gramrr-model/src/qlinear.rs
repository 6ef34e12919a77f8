//! Matmuls on quantized weights: gramrr's integer kernels and candle's GGML kernels.
//!
//! A few rows (decoding) go to gramrr's own kernels ([`crate::qkernels`]) for every block type
//! they cover, except where candle has its AVX512-VNNI tiled kernel (rows a multiple of 256
//! values; see [`candle_tiled`]), which is faster there. The rest of this note is about
//! candle's path, which also serves the block types our kernels do not cover.
//!
//! candle's quantized matmul quantizes the activations to 8 bits on the fly (Q8_0/Q8_1/Q8_K,
//! as llama.cpp does) and takes integer dot products; on x86 with AVX512-VNNI it repacks
//! Q4_K, Q6_K and Q8_0 weights into 16-row tiles for `vpdpbusd`. It threads on candle's own
//! barrier pool, which gramrr keeps at one thread (see [`crate::tune_threads`]): a spinning
//! pool beside rayon's costs more than it brings elsewhere. So the weight is cut here into
//! row slices, one per rayon thread, each its own [`QTensor`] (tiles and all), and the
//! slices run on rayon. Inside an engine worker's one-thread pool they simply run in turn.
//!
//! Many rows at once (prompt processing, scoring) go another way: each slice is dequantized
//! into a short-lived f32 buffer and multiplied by the f32 GEMM. Where candle has no tiled
//! integer kernel for the shape (rows that are not a multiple of 256 values, as in SmolLM2's
//! 576), its row-by-row integer dot products reach a fifth of the GEMM's speed; dequantizing
//! costs N·K once against the product's M·N·K, and the result is the f32 product of the
//! dequantized weights (no 8-bit rounding of the activations). Decoding (a few rows) stays on
//! the integer kernels, which read the weights at their quantized size.
//!
//! bf16 weights (`--dtype bf16`) are held here too, as one GGML `BF16` tensor (row-major bf16,
//! so the embedding lookup, dequantizing and exports work as for any block type), and are
//! multiplied by [`crate::bf16`]'s kernels at every row count: bf16 products with f32 sums
//! (AVX512-BF16 where the CPU has it). On a CPU without it, many rows go to the f32 GEMM on
//! the weight widened to f32 and the activations rounded to bf16: the same arithmetic, and
//! faster than an FMA loop on widened bf16.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::qkernels;

/// Rows per slice are a multiple of this, so that each slice keeps candle's 16-row tiling.
const ROW_ALIGN: usize = 16;
/// At most this many f32 values per slice, which bounds the buffer a dequantized slice takes
/// on the dense path (16 MiB).
const MAX_SLICE_VALUES: usize = 4 << 20;
/// From this many input rows on, matmuls dequantize and use the f32 GEMM.
pub const DENSE_MIN_ROWS: usize = 32;

/// The kernels to use for `dtype` on few rows, or None for candle's: `GRAMRR_QKERNELS=off`
/// keeps candle's (to compare), `=avx2` or `=scalar` caps the instruction set.
fn kernel_isa(dtype: GgmlDType) -> Option<qkernels::Isa> {
    static CHOICE: OnceLock<Option<qkernels::Isa>> = OnceLock::new();
    let isa = *CHOICE.get_or_init(|| {
        let best = qkernels::detected_isa();
        match std::env::var("GRAMRR_QKERNELS").unwrap_or_default().as_str() {
            "off" => None,
            "scalar" => Some(qkernels::Isa::Scalar),
            "avx2" if best != qkernels::Isa::Scalar => Some(qkernels::Isa::Avx2),
            _ => Some(best),
        }
    });
    isa.filter(|_| qkernels::supports(dtype))
}

/// Whether candle's kernel beats ours for this product of `m` input rows: where it has its
/// AVX512-VNNI 16-row tiled kernel (rows a multiple of 256 values, 16-row tiles: the test of
/// candle's `repack_x86::select`; our slices are multiples of 16 rows) and either several
/// input rows or Q6_K. Measured with `examples/qkernel_stream.rs`, one Zen 4 core, 576x1536
/// weights streamed from memory: one input row Q8_0 23 GB/s ours against 15, Q4_K 10 against
/// 8, Q6_K 11 against 15; eight rows Q8_0 5.1 against 5.5, Q4_K 2.5 against 3.2.
fn candle_tiled(dtype: GgmlDType, n: usize, k: usize, m: usize) -> bool {
    k.is_multiple_of(256)
        && n.is_multiple_of(16)
        && qkernels::detected_isa() == qkernels::Isa::Vnni
        && match dtype {
            GgmlDType::Q4K | GgmlDType::Q8_0 => m > 1,
            GgmlDType::Q6K => true,
            _ => false,
        }
}

/// Whether many-row products on quantized weights run in bf16 (the CPU has AVX512-BF16 and
/// `GRAMRR_QUANT_PREFILL` is not `f32`) rather than on the f32 GEMM.
pub fn prefill_in_bf16() -> bool {
    static CHOICE: OnceLock<bool> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        crate::bf16::chosen_isa() == crate::bf16::Isa::Avx512Bf16
            && std::env::var("GRAMRR_QUANT_PREFILL").map_or(true, |v| v != "f32")
    })
}

/// The product a [`QuantLinear`] computes for a given number of input rows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// bf16 weights on the bf16 kernels (or the bf16 GEMM for many rows).
    Bf16(crate::bf16::Isa),
    /// bf16 weights, many rows, a CPU without bf16 dot products: the f32 GEMM.
    Bf16OnF32Gemm,
    /// Many rows: the weight dequantized slice by slice into a GEMM.
    Dense,
    /// Few rows on gramrr's integer kernels.
    Kernels(qkernels::Isa),
    /// candle's own quantized matmul.
    Candle,
}

/// A quantized (N, K) weight, applied as `x Wᵀ`.
#[derive(Clone)]
pub struct QuantLinear {
    /// Row slices in order, with their row counts.
    parts: Vec<(Arc<QTensor>, usize)>,
    n: usize,
    k: usize,
    dtype: GgmlDType,
}

impl std::fmt::Debug for QuantLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "QuantLinear[{}x{} {:?} in {} slices]", self.n, self.k, self.dtype, self.parts.len())
    }
}

impl QuantLinear {
    /// A dense (N, K) weight rounded to bf16 (round to nearest even) and held as bf16.
    pub fn bf16(w: &Tensor) -> Result<Self> {
        // One part: the bf16 kernels split the rows across threads themselves.
        Self::with_slices(QTensor::quantize(&w.to_dtype(DType::F32)?.contiguous()?, GgmlDType::BF16)?, 1)
    }

    /// Whether this weight's many-row products (scoring, prompts) run on the bf16 GEMM: a
    /// bf16 weight on AVX512-BF16, or a quantized one dequantized into it. Attention then
    /// computes its products in bf16 too.
    pub fn many_rows_in_bf16(&self) -> bool {
        match self.path(DENSE_MIN_ROWS, true) {
            Path::Bf16(isa) => isa == crate::bf16::Isa::Avx512Bf16,
            Path::Dense => prefill_in_bf16(),
            _ => false,
        }
    }

    /// Cuts `q` (N, K) into one slice per rayon thread.
    pub fn new(q: QTensor) -> Result<Self> {
        let (n, k) = q.shape().dims2()?;
        let by_size = (n * k).div_ceil(MAX_SLICE_VALUES);
        Self::with_slices(q, rayon::current_num_threads().max(by_size))
    }

    pub fn with_slices(q: QTensor, slices: usize) -> Result<Self> {
        let (n, k) = q.shape().dims2()?;
        let dtype = q.dtype();
        let device = q.device();
        let per = n.div_ceil(slices.max(1)).div_ceil(ROW_ALIGN) * ROW_ALIGN;
        if slices <= 1 || per >= n {
            return Ok(Self { parts: vec![(Arc::new(q), n)], n, k, dtype });
        }
        let bytes = q.data()?;
        let row_bytes = bytes.len() / n;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let rows = per.min(n - start);
            let slice = &bytes[start * row_bytes..(start + rows) * row_bytes];
            let storage = QStorage::from_data(Cow::Borrowed(slice), &device, dtype)?;
            parts.push((Arc::new(QTensor::new(storage, (rows, k))?), rows));
            start += rows;
        }
        Ok(Self { parts, n, k, dtype })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub fn device(&self) -> Device {
        self.parts[0].0.device()
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Bytes the weight takes.
    pub fn size_in_bytes(&self) -> usize {
        self.parts.iter().map(|(p, _)| p.storage_size_in_bytes()).sum()
    }

    /// The slices (for writing them back out).
    pub fn slices(&self) -> impl Iterator<Item = &QTensor> {
        self.parts.iter().map(|(p, _)| p.as_ref())
    }

    /// Which product [`Self::forward`] computes for `m` input rows; [`Self::forward_shared_input`]
    /// asks the same question, so the two cannot drift apart.
    fn path(&self, m: usize, cpu: bool) -> Path {
        if !cpu {
            return Path::Candle;
        }
        if self.dtype == GgmlDType::BF16 && self.parts.len() == 1 {
            let isa = crate::bf16::chosen_isa();
            if m >= DENSE_MIN_ROWS && isa != crate::bf16::Isa::Avx512Bf16 {
                return Path::Bf16OnF32Gemm;
            }
            return Path::Bf16(isa);
        }
        if m >= DENSE_MIN_ROWS && std::env::var_os("GRAMRR_QUANT_DENSE_OFF").is_none() {
            return Path::Dense;
        }
        match kernel_isa(self.dtype) {
            Some(isa) if !candle_tiled(self.dtype, self.n, self.k, m) => Path::Kernels(isa),
            _ => Path::Candle,
        }
    }

    /// x: (M, K) f32 → (M, N).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        if x.dim(candle_core::D::Minus1)? != self.k {
            return Err(ModelError::Input(format!("quantized matmul: input {:?} for a {}x{} weight", x.dims(), self.n, self.k)));
        }
        let m = x.elem_count() / self.k;
        match self.path(m, x.device().is_cpu()) {
            Path::Bf16OnF32Gemm => {
                // Without bf16 instructions the f32 GEMM on the widened weight beats an FMA
                // loop; with the activations rounded to bf16 first it is the same arithmetic
                // as the kernels' (exact products, f32 sums), so results do not depend on M.
                let xr = x.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.reshape((m, self.k))?;
                let y = crate::ops::linear(&xr, &self.parts[0].0.dequantize(&x.device().clone())?)?;
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("rank ≥ 1") = self.n;
                Ok(y.reshape(dims)?)
            }
            Path::Bf16(isa) => self.forward_bf16(&x, m, isa),
            Path::Dense if prefill_in_bf16() => self.forward_prefill_bf16(&x, m),
            Path::Dense => {
                let x2 = x.reshape((m, self.k))?;
                let mut outs = Vec::with_capacity(self.parts.len());
                for (p, _) in &self.parts {
                    let w = p.dequantize(&x.device().clone())?;
                    outs.push(crate::ops::linear(&x2, &w)?);
                }
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("rank ≥ 1") = self.n;
                Ok(Tensor::cat(&outs, 1)?.reshape(dims)?)
            }
            Path::Kernels(isa) => self.forward_kernels(&x, m, isa),
            Path::Candle if self.parts.len() == 1 => Ok(x.apply_op1_no_bwd(self.parts[0].0.as_ref())?),
            Path::Candle => {
                let outs: Vec<Tensor> = self
                    .parts
                    .par_iter()
                    .map(|(p, _)| x.apply_op1_no_bwd(p.as_ref()))
                    .collect::<candle_core::Result<_>>()?;
                Ok(Tensor::cat(&outs, x.rank() - 1)?)
            }
        }
    }

    /// Many input rows where the CPU has bf16 dot products: the weight dequantized and rounded
    /// to bf16 (slices in parallel), then the bf16 GEMM, which runs at 1.8–2.0× the f32 GEMM on
    /// prefill shapes (BENCHMARKS.md, bf16). Rounding the activations to bf16 (8 significant
    /// bits) loses less than llama.cpp's 8-bit activation blocks do, and a Q8_0/Q4 weight's
    /// value `q·d` rounds to bf16 within 2⁻⁹ of itself.
    fn forward_prefill_bf16(&self, x: &Tensor, m: usize) -> Result<Tensor> {
        let device = x.device().clone();
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let weights: Vec<Vec<u16>> = self
            .parts
            .par_iter()
            .map(|(p, _)| -> Result<Vec<u16>> {
                let w = p.dequantize(&device)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(w.iter().map(|&v| crate::bf16::to_bf16(v)).collect())
            })
            .collect::<Result<_>>()?;
        // One rounding and packing of x serves every slice.
        let slices: Vec<(&[u16], usize)> = self.parts.iter().zip(&weights).map(|((_, rows), w)| (w.as_slice(), *rows)).collect();
        let parts = crate::bf16::matmul_shared_input(&xs, m, &slices, self.k, crate::bf16::chosen_isa());
        let mut y = vec![0f32; m * self.n];
        let mut col = 0;
        for ((_, rows), part) in self.parts.iter().zip(&parts) {
            for (dst, src) in y.chunks_exact_mut(self.n).zip(part.chunks_exact(*rows)) {
                dst[col..col + rows].copy_from_slice(src);
            }
            col += rows;
        }
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = self.n;
        Ok(Tensor::from_vec(y, dims, &device)?)
    }

    /// The product on bf16 weights ([`crate::bf16`]).
    fn forward_bf16(&self, x: &Tensor, m: usize, isa: crate::bf16::Isa) -> Result<Tensor> {
        Ok(Self::forward_bf16_many(&[self], x, m, isa)?.remove(0))
    }

    /// [`Self::forward_bf16`] for bf16 weights that share the input, rounded and packed once.
    fn forward_bf16_many(weights: &[&QuantLinear], x: &Tensor, m: usize, isa: crate::bf16::Isa) -> Result<Vec<Tensor>> {
        let k = weights[0].k;
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let datas: Vec<Cow<[u8]>> = weights.iter().map(|w| w.parts[0].0.data()).collect::<candle_core::Result<_>>()?;
        let ws: Vec<(&[u16], usize)> = weights
            .iter()
            .zip(&datas)
            .map(|(w, bytes)| {
                // GGML BF16 storage is a Vec<bf16>: 2-aligned, n·k values.
                assert!(bytes.len() == 2 * w.n * w.k && (bytes.as_ptr() as usize).is_multiple_of(2), "BF16 weight storage");
                // SAFETY: checked just above: the bytes are n·k aligned u16 values.
                (unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const u16, w.n * w.k) }, w.n)
            })
            .collect();
        let ys = crate::bf16::matmul_shared_input(&xs, m, &ws, k, isa);
        let mut dims = x.dims().to_vec();
        weights
            .iter()
            .zip(ys)
            .map(|(w, y)| {
                *dims.last_mut().expect("rank ≥ 1") = w.n;
                Ok(Tensor::from_vec(y, dims.clone(), &x.device().clone())?)
            })
            .collect()
    }

    /// The few-rows product on gramrr's own integer kernels ([`crate::qkernels`]).
    fn forward_kernels(&self, x: &Tensor, m: usize, isa: qkernels::Isa) -> Result<Tensor> {
        Ok(Self::forward_kernels_many(&[self], x, m, isa)?.remove(0))
    }

    /// `x Wᵀ` for several weights of the same input width: the input is quantized once and the
    /// products run in one parallel region; bf16 weights share one rounding (and packing) of
    /// the input. Where the weights would not all take gramrr's few-rows kernels or all the
    /// bf16 ones (many rows, a mix, candle's tiled kernel, not on CPU), each goes through
    /// [`Self::forward`].
    pub fn forward_shared_input(weights: &[&QuantLinear], x: &Tensor) -> Result<Vec<Tensor>> {
        let x = x.contiguous()?;
        let k = x.dim(candle_core::D::Minus1)?;
        let m = x.elem_count() / k.max(1);
        let paths: Vec<Path> = weights.iter().map(|w| w.path(m, x.device().is_cpu())).collect();
        let same = weights.iter().all(|w| w.k == k) && paths.windows(2).all(|p| p[0] == p[1]);
        match paths.first() {
            Some(&Path::Kernels(isa)) if same => Self::forward_kernels_many(weights, &x, m, isa),
            Some(&Path::Bf16(isa)) if same => Self::forward_bf16_many(weights, &x, m, isa),
            _ => weights.iter().map(|w| w.forward(&x)).collect(),
        }
    }

    fn forward_kernels_many(weights: &[&QuantLinear], x: &Tensor, m: usize, isa: qkernels::Isa) -> Result<Vec<Tensor>> {
        let k = weights[0].k;
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let xq = qkernels::QuantizedRows::new(&xs, k);
        // (N, M) per weight: each weight row's results side by side, so threads write disjoint
        // slices.
        let mut outs: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; w.n * m]).collect();
        let datas: Vec<Vec<Cow<[u8]>>> =
            weights.iter().map(|w| w.parts.iter().map(|(p, _)| p.data()).collect::<candle_core::Result<_>>()).collect::<candle_core::Result<_>>()?;
        let mut jobs = Vec::new();
        for ((w, data), out) in weights.iter().zip(&datas).zip(outs.iter_mut()) {
            let mut rest = out.as_mut_slice();
            for ((_, rows), bytes) in w.parts.iter().zip(data) {
                let (mine, tail) = rest.split_at_mut(rows * m);
                jobs.push(qkernels::WeightRows { dtype: w.dtype, w: bytes, rows: *rows, out: mine });
                rest = tail;
            }
        }
        qkernels::matmul_t_many(&mut jobs, &xq, isa);
        drop(jobs);
        let mut dims = x.dims().to_vec();
        weights
            .iter()
            .zip(outs)
            .map(|(w, out_t)| {
                let out = if m == 1 {
                    out_t
                } else {
                    let mut out = vec![0f32; m * w.n];
                    for (i, row) in out_t.chunks_exact(m).enumerate() {
                        for (r, v) in row.iter().enumerate() {
                            out[r * w.n + i] = *v;
                        }
                    }
                    out
                };
                *dims.last_mut().expect("rank ≥ 1") = w.n;
                Ok(Tensor::from_vec(out, dims.clone(), &x.device().clone())?)
            })
            .collect()
    }

    /// Rows `ids` of the weight, dequantized: (len, K). The embedding lookup.
    pub fn embedding(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.n) {
            return Err(ModelError::Input(format!("row {bad} is outside the {} rows of the table", self.n)));
        }
        if self.parts.len() == 1 {
            let idx = Tensor::from_vec(ids.to_vec(), ids.len(), device)?;
            return Ok(self.parts[0].0.embedding(&idx)?);
        }
        // Look each id up in its slice, then put the rows back in the order asked.
        let mut pieces = Vec::new();
        let mut order = Vec::with_capacity(ids.len());
        let mut start = 0u32;
        for (p, rows) in &self.parts {
            let end = start + *rows as u32;
            let local: Vec<u32> =
                ids.iter().enumerate().filter(|(_, &i)| i >= start && i < end).map(|(pos, &i)| {
                    order.push(pos as u32);
                    i - start
                }).collect();
            if !local.is_empty() {
                let n = local.len();
                pieces.push(p.embedding(&Tensor::from_vec(local, n, device)?)?);
            }
            start = end;
        }
        let stacked = Tensor::cat(&pieces, 0)?;
        let mut inverse = vec![0u32; ids.len()];
        for (row, &pos) in order.iter().enumerate() {
            inverse[pos as usize] = row as u32;
        }
        Ok(stacked.index_select(&Tensor::from_vec(inverse, ids.len(), device)?, 0)?)
    }

    /// The whole weight in f32: (N, K).
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let parts: Vec<Tensor> =
            self.parts.iter().map(|(p, _)| p.dequantize(device)).collect::<candle_core::Result<_>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The weight as one QTensor again (for writing a GGUF file).
    pub fn to_qtensor(&self) -> Result<QTensor> {
        if self.parts.len() == 1 {
            let p = &self.parts[0].0;
            let storage = QStorage::from_data(p.data()?, &p.device(), self.dtype)?;
            return Ok(QTensor::new(storage, (self.n, self.k))?);
        }
        let mut bytes = Vec::new();
        for (p, _) in &self.parts {
            bytes.extend_from_slice(&p.data()?);
        }
        let storage = QStorage::from_data(Cow::Owned(bytes), &self.parts[0].0.device(), self.dtype)?;
        Ok(QTensor::new(storage, (self.n, self.k))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The few-rows path (our kernels, several slices, rows put back in order) and the many-rows
    /// one (the bf16 or f32 GEMM on the dequantized slices) against the f32 product of the
    /// dequantized weight.
    #[test]
    fn product_matches_the_dequantized_weight_across_slices() {
        let (n, k) = (100, 576);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4_1] {
            let ql = QuantLinear::with_slices(QTensor::quantize(&w, dtype).unwrap(), 3).unwrap();
            assert!(ql.parts.len() > 1);
            let wd = ql.dequantize(&Device::Cpu).unwrap();
            for m in [1, 2, 3, 4, 5, DENSE_MIN_ROWS + 8] {
                let x = Tensor::randn(0f32, 1.0, (1, m, k), &Device::Cpu).unwrap();
                let got = ql.forward(&x).unwrap();
                assert_eq!(got.dims(), &[1, m, n]);
                let want = x.reshape((m, k)).unwrap().matmul(&wd.t().unwrap()).unwrap();
                let got = got.reshape((m, n)).unwrap().to_vec2::<f32>().unwrap();
                let want = want.to_vec2::<f32>().unwrap();
                // 8-bit activations move each x by at most max|x|/254 ≈ 0.01 (max of 32
                // normal values ≈ 2.5), with random signs: over 576 terms with |w| ≈ 0.8 the
                // error is about √576·0.8·0.005 ≈ 0.1 (the worst case, all signs aligned, 4.6);
                // bf16 rounding of both operands (2⁻⁹ each) about half that.
                // A wrong row order or slice offset gives errors of √576 ≈ 24.
                for r in 0..m {
                    for j in 0..n {
                        assert!((got[r][j] - want[r][j]).abs() < 1.0, "{dtype:?} m={m} [{r},{j}]: {} vs {}", got[r][j], want[r][j]);
                    }
                }
            }
        }
    }

    /// Several weights on one input (one activation quantization, one parallel region): each
    /// output equals that weight's own `forward`, bit for bit, whatever the mix of types, row
    /// counts and slices; and a weight of another width is refused.
    #[test]
    fn shared_input_products_equal_each_weight_alone() {
        let k = 576;
        let make = |n: usize, dtype: GgmlDType, slices: usize| {
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            QuantLinear::with_slices(QTensor::quantize(&w, dtype).unwrap(), slices).unwrap()
        };
        let ws = [make(96, GgmlDType::Q8_0, 3), make(32, GgmlDType::Q5_0, 1), make(48, GgmlDType::Q4_1, 2)];
        let refs: Vec<&QuantLinear> = ws.iter().collect();
        for m in [1, 3] {
            let x = Tensor::randn(0f32, 1.0, (1, m, k), &Device::Cpu).unwrap();
            let got = QuantLinear::forward_shared_input(&refs, &x).unwrap();
            assert_eq!(got.len(), 3);
            for (w, y) in ws.iter().zip(&got) {
                assert_eq!(y.dims(), &[1, m, w.n]);
                let alone = w.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), alone, "{w:?} m={m}");
            }
        }
        // bf16 weights: one rounding and packing of the input, the same numbers as alone, on
        // the kernels (few rows) and the GEMM (many).
        let bws: Vec<QuantLinear> = [64usize, 24].iter().map(|&n| QuantLinear::bf16(&Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap()).unwrap()).collect();
        let brefs: Vec<&QuantLinear> = bws.iter().collect();
        for m in [1, DENSE_MIN_ROWS + 8] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let got = QuantLinear::forward_shared_input(&brefs, &x).unwrap();
            for (w, y) in bws.iter().zip(&got) {
                let alone = w.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), alone, "bf16 {w:?} m={m}");
            }
        }
        let narrow = make(16, GgmlDType::Q8_0, 1);
        let x = Tensor::randn(0f32, 1.0, (1, 64), &Device::Cpu).unwrap();
        assert!(QuantLinear::forward_shared_input(&[&ws[0], &narrow], &x).is_err());
    }

    /// A bf16 weight through `forward` (the kernels for few rows, the GEMM path for many,
    /// rank-3 input): the scalar bf16 oracle's numbers, up to f32 summation order.
    #[test]
    fn bf16_forward_matches_the_scalar_kernel_at_every_row_count() {
        let (n, k) = (70, 96);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let ql = QuantLinear::bf16(&w).unwrap();
        assert_eq!((ql.dtype(), ql.size_in_bytes()), (GgmlDType::BF16, 2 * n * k));
        let wb: Vec<u16> = w.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&v| crate::bf16::to_bf16(v)).collect();
        for m in [1, 5, 40] {
            let x = Tensor::randn(0f32, 1.0, (2, m, k), &Device::Cpu).unwrap();
            let got = ql.forward(&x).unwrap();
            assert_eq!(got.dims(), &[2, m, n]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = crate::bf16::matmul(&xs, 2 * m, &wb, n, k, crate::bf16::Isa::Scalar);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                // |x|, |w| ≈ 1 over 96 terms: Σ|wx| ≈ 60; f32 order differences ≤ 96·2^-24·60.
                assert!((a - b).abs() < 1e-3, "m={m} [{i}]: {a} vs {b}");
            }
        }
    }
}
