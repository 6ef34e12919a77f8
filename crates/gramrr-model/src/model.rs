//! The decoder: Llama 3.x, Qwen2 and Qwen3 in one readable file, top to bottom.
//!
//! The three families share one block: pre-norm attention with rotary embeddings and grouped
//! KV heads, then a SwiGLU MLP. They differ only in flags on [`DecoderConfig`]:
//! Qwen2 adds q/k/v biases, Qwen3 adds a per-head RMSNorm on q and k (and an explicit
//! `head_dim`), Llama 3.1+ rescales RoPE frequencies (`rope_type: "llama3"`).
//!
//! Two forward flavours share every line except three ops. With `train = true` the norm,
//! softmax and rotary embedding are compositions of differentiable primitives, because
//! candle's fused kernels for them record no backward and would silently cut gradients
//! (stack.md). With `train = false` the fused kernels run.
//!
//! Tensor shapes in comments: B batch, T new tokens, S keys (cache + new), H query heads,
//! K key/value heads, D head dim, C hidden size.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Tensor, D};
use rand::Rng;

use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::ops;
use crate::qlinear::QuantLinear;

/// Where weights come from: a safetensors checkpoint, or random initialisation.
pub trait WeightSource {
    /// The tensor called `name` (an HF parameter name), checked to have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether the source holds a tensor called `name` (for optional tensors like `lm_head`).
    fn contains(&self, name: &str) -> bool;
    /// The (out, in) weight `name` kept quantized, where the source holds it so and is asked
    /// to keep it (GGUF); `None`: load it dense with [`WeightSource::get`].
    fn get_quantized(&self, _name: &str, _shape: &[usize]) -> Result<Option<QuantLinear>> {
        Ok(None)
    }
}

/// What a quantized layer's dense `weight` field holds: a zero-sized-in-memory stand-in with
/// the right shape (a broadcast scalar), so that shape queries work. Its values are not the
/// weight's: [`Linear::dense_weight`] and the parameter visitors dequantize instead.
fn quantized_stand_in(q: &QuantLinear) -> Result<Tensor> {
    Ok(Tensor::zeros((), DType::F32, &q.device())?.broadcast_as(q.dims())?)
}

// ---------------------------------------------------------------------------------------------
// Linear layers, with an optional LoRA adapter and a frozen path that keeps no weight gradient.

/// A LoRA adapter on one linear layer: `y += scale · (dropout(x) Aᵀ) Bᵀ`, as PEFT computes it.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// (r, in)
    pub a: Tensor,
    /// (out, r)
    pub b: Tensor,
    /// `alpha / r`
    pub scale: f64,
    pub dropout: f32,
}

#[derive(Debug, Clone)]
pub struct Linear {
    /// (out, in), as stored in HF checkpoints.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    /// When set, the weight is a constant for backprop: gradients flow to the input only.
    pub frozen: bool,
    /// A quantized weight (GGUF, or bf16 with `--dtype bf16`; inference): the matmul runs on
    /// it, and `weight` is only a stand-in of the right shape.
    pub quant: Option<QuantLinear>,
}

/// `x Wᵀ` whose backward gives only the input gradient `g W`. candle's matmul backward always
/// computes (and keeps) the gradient of both operands, which under LoRA would cost a full
/// weight-gradient GEMM and a weight-sized buffer per layer for a weight nobody updates.
struct FrozenMatmul {
    weight: Tensor,
}

impl FrozenMatmul {
    fn fwd_storage(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, k2) = self.weight.dims2()?;
        if k != k2 {
            candle_core::bail!("frozen matmul: input has {k} features, weight expects {k2}")
        }
        let (ws, wl) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(ws) = &*ws else {
            candle_core::bail!("frozen matmul: weight and input are on different devices")
        };
        // A decoding step: gemm would pack all of W for a few rows (see few_rows.rs).
        if m <= crate::few_rows::FEW_ROWS {
            if let (CpuStorage::F32(xv), CpuStorage::F32(wv), Some((xa, xb)), Some((wa, wb))) =
                (x, ws, xl.contiguous_offsets(), wl.contiguous_offsets())
            {
                let y = crate::few_rows::matmul_few_rows(&xv[xa..xb], &wv[wa..wb], m, n, k);
                return Ok((CpuStorage::F32(y), Shape::from((m, n))));
            }
        }
        ops::matmul_storage(x, xl, ws, &wl.transpose(0, 1)?)
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd_storage(s, l)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = l.shape().dims2()?;
        let (n, _) = self.weight.dims2()?;
        let (ws, wl) = self.weight.storage_and_layout();
        let candle_core::Storage::Cuda(ws) = &*ws else {
            candle_core::bail!("frozen matmul: weight and input are on different devices")
        };
        let out = s.matmul(ws, (1, m, n, k), l, &wl.transpose(0, 1)?)?;
        Ok((out, Shape::from((m, n))))
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // (M, N) · (N, K) → (M, K)
        Ok(Some(ops::matmul_detached(grad, &self.weight)?))
    }
}

/// `x Wᵀ + scale · (x Aᵀ) Bᵀ` with W frozen: the backward gives gradients for x, A and B only.
/// As one op, the graph keeps x (and the small A, B) rather than three (N, out) intermediates
/// per adapted projection, which under candle's keep-everything graph was most of LoRA's
/// activation memory.
struct FrozenLoraMatmul {
    weight: Tensor,
    scale: f64,
}

impl CustomOp3 for FrozenLoraMatmul {
    fn name(&self) -> &'static str {
        "frozen-lora-matmul"
    }
    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (r, k2) = al.shape().dims2()?;
        let (n, r2) = bl.shape().dims2()?;
        if k != k2 || r != r2 {
            candle_core::bail!("frozen lora matmul: x {:?}, A {:?}, B {:?} do not chain", xl.dims(), al.dims(), bl.dims())
        }
        let (out, _) = FrozenMatmul { weight: self.weight.clone() }.fwd_storage(x, xl)?; // (M, N)
        let (t, _) = ops::matmul_storage(x, xl, a, &al.transpose(0, 1)?)?; // (M, r)
        let out = match (crate::blas::get(), out, &t, b, bl.contiguous_offsets()) {
            (Some(blas), CpuStorage::F32(mut out), CpuStorage::F32(tv), CpuStorage::F32(bv), Some((b0, b1))) => {
                // out += scale · t Bᵀ in the product itself, without an (M, N) temporary.
                // SAFETY: t is (M, r), B is (N, r) contiguous at b0..b1, out is (M, N), all
                // owned by this call.
                unsafe {
                    blas.sgemm(false, true, (m, n, r), self.scale as f32, (tv.as_ptr(), r), (bv[b0..b1].as_ptr(), r), 1.0, (out.as_mut_ptr(), n));
                }
                return Ok((CpuStorage::F32(out), Shape::from((m, n))));
            }
            (_, out, ..) => out,
        };
        let (u, _) = ops::matmul_storage(&t, &Layout::contiguous((m, r)), b, &bl.transpose(0, 1)?)?; // (M, N)
        let (CpuStorage::F32(mut out), CpuStorage::F32(u)) = (out, u) else {
            candle_core::bail!("frozen lora matmul: f32 only")
        };
        let s = self.scale as f32;
        out.iter_mut().zip(u.iter()).for_each(|(o, &d)| *o += s * d);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mm = ops::matmul_detached;
        let gb = (mm(g, b)? * self.scale)?; // (M, N)·(N, r) → (M, r)
        let dx = (mm(g, &self.weight)? + mm(&gb, a)?)?; // (M, K)
        let da = mm(&gb.t()?, x)?; // (r, K)
        let t = mm(x, &a.t()?)?; // (M, r)
        let db = (mm(&g.t()?, &t)? * self.scale)?; // (N, r)
        Ok((Some(dx), Some(da), Some(db)))
    }
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias, lora: None, frozen: false, quant: None }
    }

    pub fn load(ws: &dyn WeightSource, name: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        let bias = if bias { Some(ws.get(&format!("{name}.bias"), &[out])?) } else { None };
        if let Some(q) = ws.get_quantized(&format!("{name}.weight"), &[out, inp])? {
            let mut lin = Self::new(quantized_stand_in(&q)?, bias);
            lin.quant = Some(q);
            return Ok(lin);
        }
        let weight = ws.get(&format!("{name}.weight"), &[out, inp])?;
        Ok(Self::new(weight, bias))
    }

    /// The weight in f32: dequantized if it is held quantized.
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.quant {
            Some(q) => q.dequantize(self.weight.device()),
            None => Ok(self.weight.clone()),
        }
    }

    /// x: (N, in) → (N, out)
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        if let Some(q) = &self.quant {
            let mut y = q.forward(x)?;
            if let Some(b) = &self.bias {
                y = y.broadcast_add(b)?;
            }
            if let Some(l) = &self.lora {
                let xd = ctx.dropout(x, l.dropout)?;
                let delta = ops::linear(&ops::linear(&xd, &l.a)?, &l.b)?;
                y = (y + (delta * l.scale)?)?;
            }
            return Ok(y);
        }
        // Frozen weight with an adapter and no dropout, on CPU: one op keeps only x for the
        // backward, instead of x Wᵀ, the low-rank product, its scaled copy and their sum.
        if let Some(l) = self.lora.as_ref().filter(|l| self.frozen && x.device().is_cpu() && !(ctx.train && l.dropout > 0.0)) {
            let mut y = x.contiguous()?.apply_op3(&l.a, &l.b, FrozenLoraMatmul { weight: self.weight.clone(), scale: l.scale })?;
            if let Some(b) = &self.bias {
                y = y.broadcast_add(b)?;
            }
            return Ok(y);
        }
        let mut y = if self.frozen || !self.weight.is_variable() {
            x.contiguous()?.apply_op1(FrozenMatmul { weight: self.weight.clone() })?
        } else {
            ops::linear(x, &self.weight)?
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            let xd = ctx.dropout(x, l.dropout)?;
            let delta = ops::linear(&ops::linear(&xd, &l.a)?, &l.b)?; // (N, r) → (N, out)
            y = (y + (delta * l.scale)?)?;
        }
        Ok(y)
    }

    /// `x Wᵀ` for linears that share their input (q, k, v; gate, up). Quantized or bf16 weights
    /// without adapters take one quantization (or bf16 rounding) of the input
    /// ([`QuantLinear::forward_shared_input`]); the rest go one by one.
    pub fn forward_shared<const N: usize>(lins: [&Linear; N], x: &Tensor, ctx: &mut ForwardCtx) -> Result<[Tensor; N]> {
        let quants: Option<Vec<&QuantLinear>> = lins.iter().map(|l| l.quant.as_ref().filter(|_| l.lora.is_none())).collect();
        let ys: Vec<Tensor> = match quants {
            Some(qs) => {
                let ys = QuantLinear::forward_shared_input(&qs, x)?;
                ys.into_iter()
                    .zip(lins)
                    .map(|(y, l)| match &l.bias {
                        Some(b) => Ok(y.broadcast_add(b)?),
                        None => Ok(y),
                    })
                    .collect::<Result<_>>()?
            }
            None => lins.iter().map(|l| l.forward(x, ctx)).collect::<Result<_>>()?,
        };
        Ok(ys.try_into().unwrap_or_else(|_| unreachable!("one output per linear")))
    }

    /// `W + scale · B A`: the weight a merged checkpoint carries.
    pub fn merged_weight(&self) -> Result<Tensor> {
        let w = self.dense_weight()?;
        match &self.lora {
            None => Ok(w),
            Some(l) => Ok((&w + (l.b.matmul(&l.a)? * l.scale)?)?),
        }
    }
}

/// Per-call state: whether to build a differentiable graph, and the dropout RNG.
pub struct ForwardCtx {
    pub train: bool,
    pub rng: Option<rand_chacha::ChaCha8Rng>,
}

impl ForwardCtx {
    pub fn inference() -> Self {
        Self { train: false, rng: None }
    }
    pub fn training(rng: Option<rand_chacha::ChaCha8Rng>) -> Self {
        Self { train: true, rng }
    }

    fn dropout(&mut self, x: &Tensor, p: f32) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return Ok(x.clone());
        }
        let Some(rng) = self.rng.as_mut() else { return Ok(x.clone()) };
        // The mask is drawn on the host from the seeded RNG so that a resumed run replays it.
        let n = x.elem_count();
        let keep = 1.0 / (1.0 - p);
        let mask: Vec<f32> = (0..n).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }).collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        Ok((x * mask)?)
    }
}

/// A matrix that may stay quantized: (stand-in, Some(quantized)) or (dense, None).
fn load_matrix(ws: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<(Tensor, Option<QuantLinear>)> {
    match ws.get_quantized(name, shape)? {
        Some(q) => Ok((quantized_stand_in(&q)?, Some(q))),
        None => Ok((ws.get(name, shape)?, None)),
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(ws: &dyn WeightSource, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: ws.get(&format!("{name}.weight"), &[size])?, eps })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.device().is_cpu() {
            return Ok(x.contiguous()?.apply_op2(&self.weight, ops::RmsNormOp { eps: self.eps as f32 })?);
        }
        if train {
            let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
            let x = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
            Ok(x.broadcast_mul(&self.weight)?)
        } else {
            Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?)
        }
    }
}

/// softmax(scale · x) over the last dimension; with `causal`, query `i` of a (…, T, S) tensor
/// only sees keys `j ≤ offset + i`.
fn scaled_softmax(x: &Tensor, scale: f64, causal: Option<ops::Causal>, train: bool) -> Result<Tensor> {
    if x.device().is_cpu() {
        return Ok(x.contiguous()?.apply_op1(ops::SoftmaxOp { scale: scale as f32, causal })?);
    }
    let mut x = (x * scale)?;
    if let Some(c) = causal {
        let s = x.dim(D::Minus1)?;
        let m: Vec<f32> = (0..c.t * s).map(|k| if k % s > c.offset + k / s { -1e30 } else { 0.0 }).collect();
        let dims = x.dims().to_vec();
        let x5 = x.reshape(((), c.t, s))?;
        x = x5.broadcast_add(&Tensor::from_vec(m, (1, c.t, s), x.device())?)?.reshape(dims)?;
    }
    if train {
        let max = x.max_keepdim(D::Minus1)?;
        let e = x.broadcast_sub(&max)?.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings

/// Inverse frequencies, computed in f32 exactly as transformers does (including Llama 3's
/// frequency-dependent rescaling), so positions map to the same angles bit for bit.
pub fn rope_inv_freq(cfg: &DecoderConfig) -> Vec<f32> {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta as f32;
    let mut inv: Vec<f32> =
        (0..dim).step_by(2).map(|i| 1.0f32 / base.powf(i as f32 / dim as f32)).collect();
    if let Some(s) = &cfg.rope_scaling {
        let factor = s.factor as f32;
        let (lo, hi) = (s.low_freq_factor as f32, s.high_freq_factor as f32);
        let old = s.original_max_position_embeddings as f32;
        let low_freq_wavelen = old / lo;
        let high_freq_wavelen = old / hi;
        for f in inv.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *f;
            let scaled = if wavelen > low_freq_wavelen { *f / factor } else { *f };
            let medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            *f = if medium {
                let smooth = (old / wavelen - lo) / (hi - lo);
                (1.0 - smooth) * scaled / factor + smooth * scaled
            } else {
                scaled
            };
        }
    }
    inv
}

/// cos and sin tables for the given positions: (B, T, D), halves duplicated as in HF's
/// rotate-half convention.
fn rope_tables(inv_freq: &[f32], positions: &[Vec<u32>], dev: &Device) -> Result<(Tensor, Tensor)> {
    let b = positions.len();
    let t = positions.first().map_or(0, |p| p.len());
    let half = inv_freq.len();
    let d = 2 * half;
    let mut cos = Vec::with_capacity(b * t * d);
    let mut sin = Vec::with_capacity(b * t * d);
    for row in positions {
        for &p in row {
            let angles: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
    }
    Ok((Tensor::from_vec(cos, (b, t, d), dev)?, Tensor::from_vec(sin, (b, t, d), dev)?))
}

/// x: (B, T, heads, D), tables (B, T, D)
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return Ok(x.contiguous()?.apply_op3(cos, sin, ops::RopeOp { inverse: false })?);
    }
    let (cos, sin) = (cos.unsqueeze(2)?, sin.unsqueeze(2)?); // (B, T, 1, D)
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

// ---------------------------------------------------------------------------------------------
// KV cache

/// Preallocated keys and values for every layer: (B, K, capacity, D) each. Generation writes
/// new positions in place, so decoding allocates nothing per step for the cache.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    pub len: usize,
    pub capacity: usize,
}

impl KvCache {
    pub fn new(cfg: &DecoderConfig, batch: usize, capacity: usize, dev: &Device) -> Result<Self> {
        let shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim);
        let mut k = Vec::with_capacity(cfg.num_hidden_layers);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            k.push(Tensor::zeros(shape, DType::F32, dev)?);
            v.push(Tensor::zeros(shape, DType::F32, dev)?);
        }
        Ok(Self { k, v, len: 0, capacity })
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

impl Attention {
    fn load(ws: &dyn WeightSource, p: &str, cfg: &DecoderConfig) -> Result<Self> {
        let (c, h, k, d) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let qk_norm = |n: &str| -> Result<Option<RmsNorm>> {
            if cfg.qk_norm {
                Ok(Some(RmsNorm::load(ws, &format!("{p}.{n}"), d, cfg.rms_norm_eps)?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            q_proj: Linear::load(ws, &format!("{p}.q_proj"), h * d, c, cfg.qkv_bias)?,
            k_proj: Linear::load(ws, &format!("{p}.k_proj"), k * d, c, cfg.qkv_bias)?,
            v_proj: Linear::load(ws, &format!("{p}.v_proj"), k * d, c, cfg.qkv_bias)?,
            o_proj: Linear::load(ws, &format!("{p}.o_proj"), c, h * d, cfg.o_bias)?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            n_heads: h,
            n_kv: k,
            head_dim: d,
        })
    }

    /// x: (B·T, C) → (B·T, C). `mask` is additive, (B, 1, 1, T, S) or broadcastable; `starts`
    /// (B·T, for the fused path) is where each query's document begins in a padding-free row.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        rope: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        starts: Option<&Arc<Vec<u32>>>,
        cache: Option<(&Tensor, &Tensor, usize)>,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (h, kh, d) = (self.n_heads, self.n_kv, self.head_dim);
        let [q, k, v] = Linear::forward_shared([&self.q_proj, &self.k_proj, &self.v_proj], x, ctx)?;
        let q = q.reshape((b, t, h, d))?;
        let k = k.reshape((b, t, kh, d))?;
        let v = v.reshape((b, t, kh, d))?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q, ctx.train)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(&k, ctx.train)?,
            None => k,
        };
        let scale = 1.0 / (d as f64).sqrt();
        // Where the projections' many-row products run in bf16 (a bf16 model, as torch does; a
        // quantized one's prefill), so do attention's (inference only).
        let products = if !ctx.train && self.q_proj.quant.as_ref().is_some_and(|w| w.many_rows_in_bf16()) {
            crate::attention::Products::Bf16
        } else {
            crate::attention::Products::F32
        };
        if mask.is_none() && cache.is_none() && crate::attention::applies(&q) {
            // Scoring and training: causality alone, fused, on (B, T, heads, D) as they are.
            let q = apply_rope(&q, &rope.0, &rope.1)?;
            let k = apply_rope(&k, &rope.0, &rope.1)?;
            let out = crate::attention::causal_attention_with(&q, &k, &v, scale as f32, starts.cloned(), products)?; // (B, T, H, D)
            return self.o_proj.forward(&out.reshape((b * t, h * d))?, ctx);
        }
        if (mask.is_none() || starts.is_some()) && crate::attention::applies(&q) {
            if let Some((ck, cv, offset)) = cache {
                // Decoding: the new keys go into the cache, and the fused op reads the cache's
                // first offset + T positions in place, as (B, S, K, D) views, with left padding as
                // each row's first visible key. The composed path below costs two GEMM calls, a
                // softmax and four copies per layer.
                let q = apply_rope(&q, &rope.0, &rope.1)?;
                let k = apply_rope(&k, &rope.0, &rope.1)?.transpose(1, 2)?; // (B, K, T, D)
                ck.slice_set(&k.contiguous()?, 2, offset)?;
                cv.slice_set(&v.transpose(1, 2)?.contiguous()?, 2, offset)?;
                let s = offset + t;
                let (k, v) = (ck.narrow(2, 0, s)?.transpose(1, 2)?, cv.narrow(2, 0, s)?.transpose(1, 2)?);
                let out = crate::attention::causal_attention_with(&q, &k, &v, scale as f32, starts.cloned(), products)?; // (B, T, H, D)
                return self.o_proj.forward(&out.reshape((b * t, h * d))?, ctx);
            }
        }
        let q = apply_rope(&q, &rope.0, &rope.1)?.transpose(1, 2)?; // (B, H, T, D)
        let k = apply_rope(&k, &rope.0, &rope.1)?.transpose(1, 2)?.contiguous()?; // (B, K, T, D)
        let v = v.transpose(1, 2)?.contiguous()?; // (B, K, T, D)

        let (k, v) = match cache {
            None => (k, v),
            Some((ck, cv, offset)) => {
                ck.slice_set(&k, 2, offset)?;
                cv.slice_set(&v, 2, offset)?;
                let s = offset + t;
                // Views into the cache, not copies: the matmuls read strided batches directly.
                (ck.narrow(2, 0, s)?, cv.narrow(2, 0, s)?) // (B, K, S, D)
            }
        };
        let s = k.dim(2)?;

        // Grouped-query attention without copying keys: the `rep` query heads that share a KV
        // head are stacked along the time axis, so one batched matmul serves the whole group.
        let rep = h / kh;
        let q = q.contiguous()?.reshape((b, kh, rep * t, d))?; // (B, K, rep·T, D)
        let scores = ops::matmul(&q, &k.t()?)?; // (B, K, rep·T, S)
        let probs = match mask {
            // Padding: an explicit additive mask (B, 1, 1, T, S).
            Some(m) => {
                let scores = (scores * scale)?.reshape((b, kh, rep, t, s))?.broadcast_add(m)?;
                scaled_softmax(&scores, 1.0, None, ctx.train)?.reshape((b, kh, rep * t, s))?
            }
            // No padding among the keys: causality alone, fused into the softmax.
            None => scaled_softmax(&scores, scale, Some(ops::Causal { t, offset: s - t }), ctx.train)?,
        };
        let out = ops::matmul(&probs, &v)?; // (B, K, rep·T, D)
        let out = out.reshape((b, h, t, d))?.transpose(1, 2)?.reshape((b * t, h * d))?;
        self.o_proj.forward(&out, ctx)
    }
}

// ---------------------------------------------------------------------------------------------
// MLP and block

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn load(ws: &dyn WeightSource, p: &str, cfg: &DecoderConfig) -> Result<Self> {
        let (c, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Linear::load(ws, &format!("{p}.gate_proj"), i, c, bias)?,
            up_proj: Linear::load(ws, &format!("{p}.up_proj"), i, c, bias)?,
            down_proj: Linear::load(ws, &format!("{p}.down_proj"), c, i, bias)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let [gate, up] = Linear::forward_shared([&self.gate_proj, &self.up_proj], x, ctx)?;
        self.down_proj.forward(&ops::swiglu(&gate, &up)?, ctx)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

// ---------------------------------------------------------------------------------------------
// The model

#[derive(Debug, Clone)]
pub struct Decoder {
    pub cfg: DecoderConfig,
    /// (vocab, C)
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// (vocab, C); `None` when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    /// The embedding table kept quantized (GGUF); `embed_tokens` is then a stand-in.
    pub embed_quant: Option<QuantLinear>,
    /// An untied output matrix kept quantized; `lm_head` is then a stand-in.
    pub lm_head_quant: Option<QuantLinear>,
    inv_freq: Vec<f32>,
}

/// What one forward pass is asked to compute.
pub struct ForwardInput<'a> {
    /// (B, T) token ids, row-major.
    pub ids: &'a [Vec<u32>],
    /// (B, T) rotary positions of the new tokens.
    pub positions: &'a [Vec<u32>],
    /// Additive attention mask (B, 1, 1, T, S) for batches with padding among the keys (left
    /// padding in generation). `None` means plain causal attention: right-padded or unpadded
    /// rows, where real tokens never see padding; it runs fused and is the training path.
    pub mask: Option<&'a Tensor>,
    /// Padding-free rows, several documents each (B, T): the index in the row where each
    /// token's document begins; attention stays inside a document (with `positions` restarting
    /// at each one, a row computes exactly what its documents would on rows of their own).
    /// `None`: one document per row. Not with `mask` or a KV cache.
    pub doc_starts: Option<&'a [Vec<u32>]>,
    /// With a KV cache and a `mask` that hides only left padding (generation): how many padding
    /// keys lead each row. The fused attention then runs with these as each row's first visible
    /// key, and the mask serves only the composed path.
    pub left_padding: Option<&'a [u32]>,
}

impl Decoder {
    pub fn load(cfg: &DecoderConfig, ws: &dyn WeightSource) -> Result<Self> {
        let c = cfg.hidden_size;
        let (embed_tokens, embed_quant) = load_matrix(ws, "model.embed_tokens.weight", &[cfg.vocab_size, c])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Block {
                input_layernorm: RmsNorm::load(ws, &format!("{p}.input_layernorm"), c, cfg.rms_norm_eps)?,
                self_attn: Attention::load(ws, &format!("{p}.self_attn"), cfg)?,
                post_attention_layernorm: RmsNorm::load(
                    ws,
                    &format!("{p}.post_attention_layernorm"),
                    c,
                    cfg.rms_norm_eps,
                )?,
                mlp: Mlp::load(ws, &format!("{p}.mlp"), cfg)?,
            });
        }
        let norm = RmsNorm::load(ws, "model.norm", c, cfg.rms_norm_eps)?;
        // Some tied checkpoints still carry lm_head.weight; the tie decides, as in transformers.
        let (lm_head, lm_head_quant) = if cfg.tie_word_embeddings {
            (None, None)
        } else {
            let (w, q) = load_matrix(ws, "lm_head.weight", &[cfg.vocab_size, c])?;
            (Some(w), q)
        };
        Ok(Self { cfg: cfg.clone(), embed_tokens, layers, norm, lm_head, embed_quant, lm_head_quant, inv_freq: rope_inv_freq(cfg) })
    }

    /// Divides each rotary frequency by its factor (GGUF's `rope_freqs.weight`: Llama 3.1's
    /// frequency scaling as llama.cpp stores it).
    pub fn set_rope_frequency_factors(&mut self, factors: &[f32]) -> Result<()> {
        if factors.len() != self.inv_freq.len() {
            return Err(ModelError::Input(format!(
                "{} rope frequency factors for {} frequencies",
                factors.len(),
                self.inv_freq.len()
            )));
        }
        self.inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        Ok(())
    }

    /// Whether any weight is held quantized (inference only; training dequantizes).
    pub fn is_quantized(&self) -> bool {
        self.embed_quant.is_some()
            || self.lm_head_quant.is_some()
            || self.layers.iter().any(|l| l.linears().iter().any(|(_, lin)| lin.quant.is_some()))
    }

    /// Replaces every quantized weight by its f32 dequantization.
    pub fn dequantize(&mut self) -> Result<()> {
        self.map_parameters(&mut |_, t| Ok(t.clone()))
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The final hidden states after the last norm: (B·T, C). Logits are left to the caller,
    /// who applies `lm_head` only where it needs them (full-vocabulary logits at every position
    /// are the memory peak of training).
    pub fn forward_hidden(
        &self,
        input: &ForwardInput,
        mut cache: Option<&mut KvCache>,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let b = input.ids.len();
        let t = input.ids.first().map_or(0, |r| r.len());
        if b == 0 || t == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        let dev = self.device();
        let flat: Vec<u32> = input.ids.iter().flatten().copied().collect();
        if let Some(&bad) = flat.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary ({})", self.cfg.vocab_size)));
        }
        let mut x = match &self.embed_quant {
            Some(q) => q.embedding(&flat, dev)?,
            None => self.embed_tokens.embedding(&Tensor::from_vec(flat, b * t, dev)?)?,
        }; // (B·T, C)
        let rope = rope_tables(&self.inv_freq, input.positions, dev)?;
        let offset = cache.as_ref().map_or(0, |c| c.len);
        if let Some(c) = cache.as_ref() {
            if offset + t > c.capacity {
                return Err(ModelError::Input(format!("KV cache capacity {} exceeded", c.capacity)));
            }
        }
        // Documents inside padding-free rows: the fused attention takes their starts, the
        // composed path an additive block-diagonal causal mask.
        let (mut starts, mut doc_mask) = (None, None);
        if let Some(ds) = input.doc_starts {
            if input.mask.is_some() || cache.is_some() {
                return Err(ModelError::Input("document starts go with neither a mask nor a KV cache".into()));
            }
            if ds.len() != b || ds.iter().any(|r| r.len() != t || r.iter().enumerate().any(|(i, &s)| s as usize > i)) {
                return Err(ModelError::Input(format!("document starts must be {b} rows of {t}, each at most its own index")));
            }
            if crate::attention::applies(&x) {
                starts = Some(Arc::new(ds.iter().flatten().copied().collect::<Vec<u32>>()));
            } else {
                doc_mask = Some(document_mask(ds, dev)?);
            }
        }
        if let (Some(lp), Some(_)) = (input.left_padding, cache.as_ref()) {
            if lp.len() != b {
                return Err(ModelError::Input(format!("left padding given for {} rows of {b}", lp.len())));
            }
            if crate::attention::applies(&x) {
                starts = Some(Arc::new(lp.iter().flat_map(|&n| std::iter::repeat_n(n, t)).collect::<Vec<u32>>()));
            }
        }
        let mask = input.mask.or(doc_mask.as_ref());
        for (i, layer) in self.layers.iter().enumerate() {
            let kv = cache.as_ref().map(|c| (&c.k[i], &c.v[i], offset));
            let h = layer.input_layernorm.forward(&x, ctx.train)?;
            let h = layer.self_attn.forward(&h, b, t, &rope, mask, starts.as_ref(), kv, ctx)?;
            x = (x + h)?;
            let h = layer.post_attention_layernorm.forward(&x, ctx.train)?;
            let h = layer.mlp.forward(&h, ctx)?;
            x = (x + h)?;
        }
        if let Some(c) = cache.as_mut() {
            c.len += t;
        }
        self.norm.forward(&x, ctx.train)
    }

    /// hidden: (N, C) → logits (N, vocab)
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let quant = if self.lm_head.is_some() { self.lm_head_quant.as_ref() } else { self.embed_quant.as_ref() };
        if let Some(q) = quant {
            return q.forward(hidden);
        }
        let w = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        if !w.is_variable() && hidden.device().is_cpu() && hidden.rank() == 2 {
            // A constant weight (inference, LoRA): the frozen op, with its few-rows path.
            return Ok(hidden.contiguous()?.apply_op1(FrozenMatmul { weight: w.clone() })?);
        }
        Ok(ops::linear(hidden, w)?)
    }

    /// Every parameter with its HF name, in checkpoint order. LoRA tensors are not included.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit_parameters(&mut |name, t| out.push((name.to_string(), t.clone())));
        out
    }

    /// Quantized weights are visited dequantized (so exports and training see real values).
    pub fn visit_parameters(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        let dense = |q: &Option<QuantLinear>, t: &Tensor| -> Tensor {
            match q {
                Some(q) => q.dequantize(t.device()).expect("dequantizing a loaded quantized weight"),
                None => t.clone(),
            }
        };
        f("model.embed_tokens.weight", &dense(&self.embed_quant, &self.embed_tokens));
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            f(&format!("{p}.input_layernorm.weight"), &l.input_layernorm.weight);
            for (n, lin) in l.linears() {
                f(&format!("{p}.{n}.weight"), &dense(&lin.quant, &lin.weight));
                if let Some(b) = &lin.bias {
                    f(&format!("{p}.{n}.bias"), b);
                }
            }
            if let Some(n) = &l.self_attn.q_norm {
                f(&format!("{p}.self_attn.q_norm.weight"), &n.weight);
            }
            if let Some(n) = &l.self_attn.k_norm {
                f(&format!("{p}.self_attn.k_norm.weight"), &n.weight);
            }
            f(&format!("{p}.post_attention_layernorm.weight"), &l.post_attention_layernorm.weight);
        }
        f("model.norm.weight", &self.norm.weight);
        if let Some(h) = &self.lm_head {
            f("lm_head.weight", &dense(&self.lm_head_quant, h));
        }
    }

    /// Replaces every parameter through `f(name, old) -> new` (e.g. with `Var`-backed tensors
    /// for training, or converted dtypes).
    /// Quantized weights are passed dequantized, and come back dense.
    pub fn map_parameters(&mut self, f: &mut dyn FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<()> {
        if let Some(q) = self.embed_quant.take() {
            self.embed_tokens = q.dequantize(self.embed_tokens.device())?;
        }
        if let (Some(q), Some(h)) = (self.lm_head_quant.take(), self.lm_head.as_mut()) {
            *h = q.dequantize(h.device())?;
        }
        for l in self.layers.iter_mut() {
            for (_, lin) in l.linears_mut() {
                if let Some(q) = lin.quant.take() {
                    lin.weight = q.dequantize(lin.weight.device())?;
                }
            }
        }
        self.embed_tokens = f("model.embed_tokens.weight", &self.embed_tokens)?;
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            l.input_layernorm.weight = f(&format!("{p}.input_layernorm.weight"), &l.input_layernorm.weight)?;
            for (n, lin) in l.linears_mut() {
                lin.weight = f(&format!("{p}.{n}.weight"), &lin.weight)?;
                if let Some(b) = &lin.bias {
                    lin.bias = Some(f(&format!("{p}.{n}.bias"), b)?);
                }
            }
            if let Some(n) = l.self_attn.q_norm.as_mut() {
                n.weight = f(&format!("{p}.self_attn.q_norm.weight"), &n.weight)?;
            }
            if let Some(n) = l.self_attn.k_norm.as_mut() {
                n.weight = f(&format!("{p}.self_attn.k_norm.weight"), &n.weight)?;
            }
            l.post_attention_layernorm.weight =
                f(&format!("{p}.post_attention_layernorm.weight"), &l.post_attention_layernorm.weight)?;
        }
        self.norm.weight = f("model.norm.weight", &self.norm.weight)?;
        if let Some(h) = &self.lm_head {
            self.lm_head = Some(f("lm_head.weight", h)?);
        }
        Ok(())
    }
}

impl Block {
    /// The seven projections with their module paths relative to the layer, in HF order.
    pub fn linears(&self) -> [(&'static str, &Linear); 7] {
        [
            ("self_attn.q_proj", &self.self_attn.q_proj),
            ("self_attn.k_proj", &self.self_attn.k_proj),
            ("self_attn.v_proj", &self.self_attn.v_proj),
            ("self_attn.o_proj", &self.self_attn.o_proj),
            ("mlp.gate_proj", &self.mlp.gate_proj),
            ("mlp.up_proj", &self.mlp.up_proj),
            ("mlp.down_proj", &self.mlp.down_proj),
        ]
    }
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        [
            ("self_attn.q_proj", &mut self.self_attn.q_proj),
            ("self_attn.k_proj", &mut self.self_attn.k_proj),
            ("self_attn.v_proj", &mut self.self_attn.v_proj),
            ("self_attn.o_proj", &mut self.self_attn.o_proj),
            ("mlp.gate_proj", &mut self.mlp.gate_proj),
            ("mlp.up_proj", &mut self.mlp.up_proj),
            ("mlp.down_proj", &mut self.mlp.down_proj),
        ]
    }
}

/// Additive causal mask with key padding: (B, 1, 1, T, S). Query `i` of row `r` (at cache
/// offset `offset`) sees key `j` when `j <= offset + i` and key `j` is not padding.
/// Masked entries get a large negative number rather than -inf, so a padding query whose keys
/// are all masked yields a uniform row instead of NaN.
pub fn attention_mask(key_valid: &[Vec<bool>], t: usize, offset: usize, dev: &Device) -> Result<Tensor> {
    let b = key_valid.len();
    let s = offset + t;
    let mut m = vec![0f32; b * t * s];
    for (r, valid) in key_valid.iter().enumerate() {
        for i in 0..t {
            for j in 0..s {
                if j > offset + i || !valid[j] {
                    m[(r * t + i) * s + j] = -1e30;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, 1, t, s), dev)?)
}

/// Additive block-diagonal causal mask for padding-free rows: (B, 1, 1, T, T). Query `i` of row
/// `r` sees key `j` when `starts[r][i] ≤ j ≤ i`.
pub fn document_mask(starts: &[Vec<u32>], dev: &Device) -> Result<Tensor> {
    let b = starts.len();
    let t = starts.first().map_or(0, |r| r.len());
    let mut m = vec![-1e30f32; b * t * t];
    for (r, row) in starts.iter().enumerate() {
        for (i, &s) in row.iter().enumerate() {
            m[(r * t + i) * t + s as usize..(r * t + i) * t + i + 1].fill(0.0);
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, 1, t, t), dev)?)
}

/// Causal mask for unpadded (or right-padded) rows: (1, 1, 1, T, T).
pub fn causal_mask(t: usize, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t * t).map(|k| if k % t > k / t { -1e30 } else { 0.0 }).collect();
    Ok(Tensor::from_vec(m, (1, 1, 1, t, t), dev)?)
}
