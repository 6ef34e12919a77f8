//! Fused CPU kernels for the three ops candle fuses without a backward (RMSNorm, softmax,
//! rotary embedding), each with a backward, so training gets one pass per op instead of six
//! to ten elementwise passes and their allocations. On other devices the model falls back to
//! differentiable compositions of candle primitives (same math, more passes).
//!
//! Every kernel works on rows of the last dimension of a contiguous f32 tensor.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::attention::dot;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: expected f32") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Rows big enough to be worth a rayon task; small tensors run inline.
const PAR_MIN: usize = 1 << 14;

fn rows_mut(out: &mut [f32], c: usize) -> impl IndexedParallelIterator<Item = &mut [f32]> {
    out.par_chunks_mut(c).with_min_len((PAR_MIN / c.max(1)).max(1))
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x / sqrt(mean(x²) + eps) · w

pub struct RmsNormOp {
    pub eps: f32,
}

/// 1/√(mean(x²) + eps) of one row.
#[inline(always)]
fn rms_inv(x: &[f32], eps: f32) -> f32 {
    1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt()
}

#[inline(always)]
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (o, x) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        let inv = rms_inv(x, eps);
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x * inv * w;
        }
    }
}

/// dx of each row into `dx`, and Σ over the rows of g·x̂ (their part of the weight's
/// gradient) added into `dw` where the weight trains.
#[inline(always)]
fn rms_norm_bwd_rows(x: &[f32], g: &[f32], w: &[f32], eps: f32, dx: &mut [f32], mut dw: Option<&mut [f32]>) {
    let c = w.len();
    for ((d, x), g) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(g.chunks_exact(c)) {
        let inv = rms_inv(x, eps);
        // dx = inv · (g·w − x̂ · mean(g·w·x̂)), with g·w staged in dx.
        for ((d, &g), &w) in d.iter_mut().zip(g).zip(w) {
            *d = g * w;
        }
        let mean = dot(d, x) * inv / c as f32;
        for (d, &x) in d.iter_mut().zip(x) {
            *d = inv * (*d - x * inv * mean);
        }
        if let Some(dw) = dw.as_deref_mut() {
            for ((a, &g), &x) in dw.iter_mut().zip(g).zip(x) {
                *a += g * x * inv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rms_norm_rows_avx512(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_rows(x, w, eps, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rms_norm_bwd_rows_avx512(x: &[f32], g: &[f32], w: &[f32], eps: f32, dx: &mut [f32], dw: Option<&mut [f32]>) {
    rms_norm_bwd_rows(x, g, w, eps, dx, dw)
}

/// Rows per rayon task for rows of `c` values. The backward also sums the weight's gradient
/// per block of this many rows and then adds the blocks in order: a fixed block (rather than
/// rayon's split) keeps that sum, and so the trained weights, the same on any thread count.
fn rms_block_rows(c: usize) -> usize {
    (PAR_MIN / c.max(1)).max(1)
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "gramrr-rms-norm"
    }
    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, "rms_norm x")?;
        let w = f32_slice(ws, wl, "rms_norm w")?;
        let c = w.len();
        let mut out = vec![0f32; x.len()];
        let (eps, avx, block) = (self.eps, has_avx512(), rms_block_rows(c) * c);
        out.par_chunks_mut(block).zip(x.par_chunks(block)).for_each(|(o, x)| {
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: the CPU has AVX-512F (checked above).
                return unsafe { rms_norm_rows_avx512(x, w, eps, o) };
            }
            let _ = avx;
            rms_norm_rows(x, w, eps, o)
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // A frozen norm weight must get no gradient at all: candle would keep whatever we
        // return, and the LoRA path promises no weight gradients.
        let train_w = w.track_op();
        // One pass gives dx followed by dw (when it trains), in one flat tensor.
        let both = x.contiguous()?.apply_op2_no_bwd(&g.contiguous()?, &RmsNormBwd { eps: self.eps, w: w.clone(), train_w })?;
        let n = x.elem_count();
        let dx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = if train_w { Some(both.narrow(0, n, w.dim(0)?)?) } else { None };
        Ok((Some(dx), dw))
    }
}

struct RmsNormBwd {
    eps: f32,
    w: Tensor,
    train_w: bool,
}

impl CustomOp2 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "gramrr-rms-norm-bwd"
    }
    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, "rms_norm_bwd x")?;
        let g = f32_slice(gs, gl, "rms_norm_bwd g")?;
        let w = self.w.to_vec1::<f32>()?;
        let w = &w[..];
        let c = w.len();
        let block = rms_block_rows(c) * c;
        let blocks = x.len().div_ceil(block);
        let dw_len = if self.train_w { c } else { 0 };
        let mut out = vec![0f32; x.len() + dw_len];
        let mut partial = vec![0f32; blocks * dw_len];
        let (eps, avx) = (self.eps, has_avx512());
        let (dx, dw) = out.split_at_mut(x.len());
        let run = |d: &mut [f32], x: &[f32], g: &[f32], p: Option<&mut [f32]>| {
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: the CPU has AVX-512F (checked above).
                return unsafe { rms_norm_bwd_rows_avx512(x, g, w, eps, d, p) };
            }
            let _ = avx;
            rms_norm_bwd_rows(x, g, w, eps, d, p)
        };
        let rows = dx.par_chunks_mut(block).zip(x.par_chunks(block)).zip(g.par_chunks(block));
        if self.train_w {
            rows.zip(partial.par_chunks_mut(c)).for_each(|(((d, x), g), p)| run(d, x, g, Some(p)));
            for p in partial.chunks_exact(c) {
                dw.iter_mut().zip(p).for_each(|(a, &b)| *a += b);
            }
        } else {
            rows.for_each(|((d, x), g)| run(d, x, g, None));
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + dw_len)))
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dimension of scale·x, optionally causal.

/// Causal structure of a (…, T, S) score tensor: query `i` (row index mod T) sees keys
/// `j ≤ offset + i`.
#[derive(Clone, Copy, Debug)]
pub struct Causal {
    pub t: usize,
    pub offset: usize,
}

pub struct SoftmaxOp {
    pub scale: f32,
    pub causal: Option<Causal>,
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "gramrr-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax")?;
        let n = *l.shape().dims().last().expect("rank ≥ 1");
        let mut out = vec![0f32; x.len()];
        let (scale, causal) = (self.scale, self.causal);
        rows_mut(&mut out, n).enumerate().for_each(|(r, o)| {
            let xr = &x[r * n..(r + 1) * n];
            let valid = match causal {
                Some(c) => (c.offset + r % c.t + 1).min(n),
                None => n,
            };
            let mut max = f32::NEG_INFINITY;
            for &v in &xr[..valid] {
                max = max.max(v * scale);
            }
            let mut sum = 0f32;
            for j in 0..valid {
                let e = (xr[j] * scale - max).exp();
                o[j] = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            for v in &mut o[..valid] {
                *v *= inv;
            }
            // Masked keys stay exactly zero, in the forward and so in the backward.
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd { scale: self.scale })?))
    }
}

struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "gramrr-softmax-bwd"
    }
    fn cpu_fwd(&self, ys: &CpuStorage, yl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(ys, yl, "softmax_bwd y")?;
        let g = f32_slice(gs, gl, "softmax_bwd g")?;
        let n = *yl.shape().dims().last().expect("rank ≥ 1");
        let mut out = vec![0f32; y.len()];
        let scale = self.scale;
        rows_mut(&mut out, n).enumerate().for_each(|(r, o)| {
            let yr = &y[r * n..(r + 1) * n];
            let gr = &g[r * n..(r + 1) * n];
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for j in 0..n {
                o[j] = scale * yr[j] * (gr[j] - dot);
            }
        });
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding, HF rotate-half convention, on (B, T, H, D) with tables (B, T, D).

pub struct RopeOp {
    /// Rotate by −θ: the transpose of the rotation, which is its backward.
    pub inverse: bool,
}

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "gramrr-rope"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, "rope x")?;
        let cos = f32_slice(cs, cl, "rope cos")?;
        let sin = f32_slice(ss, sl, "rope sin")?;
        let dims = xl.shape().dims();
        let (h, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let half = d / 2;
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        // One chunk per (b, t): all heads share that position's angles.
        out.par_chunks_mut(h * d).with_min_len((PAR_MIN / (h * d)).max(1)).enumerate().for_each(|(bt, o)| {
            let c = &cos[bt * d..(bt + 1) * d];
            let s = &sin[bt * d..(bt + 1) * d];
            for hh in 0..h {
                let base = bt * h * d + hh * d;
                let xr = &x[base..base + d];
                let or = &mut o[hh * d..(hh + 1) * d];
                for i in 0..half {
                    let (x1, x2) = (xr[i], xr[i + half]);
                    or[i] = x1 * c[i] - sign * x2 * s[i];
                    or[i + half] = x2 * c[i + half] + sign * x1 * s[i + half];
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = g.contiguous()?.apply_op3_no_bwd(cos, sin, &RopeOp { inverse: !self.inverse })?;
        Ok((Some(dx), None, None))
    }
}

/// e^x for x ≤ 0 (Cephes' expf polynomial after reduction by ln 2; relative error ≈ 1e-7),
/// branch-free so that loops over it vectorise. Below −87 it flushes towards zero (NaN too).
#[inline(always)]
#[allow(clippy::manual_clamp)] // clamp would keep NaN, which the conversion below must not see
pub fn exp_f32(x: f32) -> f32 {
    // The upper clamp only keeps n in range for the conversion below; the function is for x ≤ 0.
    let x = x.max(-87.0).min(88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // SAFETY: x is finite and within [−87, 88], so n is an integer in [−126, 127]. `as i32`
    // would saturate and map NaN to 0, which LLVM compiled to a scalar conversion and a
    // branch per lane (perf: most of the softmax's time); the unchecked one vectorises.
    let n_int: i32 = unsafe { n.to_int_unchecked() };
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n_int + 127) as u32) << 23)
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: silu(gate) · up, the MLP's activation, in one pass.
//
// As two candle ops the graph keeps silu(gate) as well as gate and up (12 MB per layer for two
// 512-token rows of Qwen3-0.6B); the backward needs only gate and up.

/// σ(x), from e^(−|x|) so that the exponential never overflows.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

pub struct SwiGluOp;

#[inline(always)]
fn swiglu_fwd_rows(g: &[f32], u: &[f32], o: &mut [f32]) {
    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn swiglu_fwd_rows_avx512(g: &[f32], u: &[f32], o: &mut [f32]) {
    swiglu_fwd_rows(g, u, o)
}

/// d gate and d up of silu(gate) · up, side by side in `o` (2 × len). Inlined into its AVX-512
/// twin: called there as a function, it kept the baseline target, where `floor` is a libm call
/// per element and nothing vectorises (perf: 8% of the demo's pretraining step).
#[inline(always)]
fn swiglu_bwd_rows(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for i in 0..g.len() {
        let s = sigmoid(g[i]);
        let silu = g[i] * s;
        du[i] = dy[i] * silu;
        dg[i] = dy[i] * u[i] * (s + silu * (1.0 - s));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn swiglu_bwd_rows_avx512(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    swiglu_bwd_rows(g, u, dy, dg, du)
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[allow(unreachable_code)]
    false
}

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "gramrr-swiglu"
    }
    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(gs, gl, "swiglu gate")?;
        let u = f32_slice(us, ul, "swiglu up")?;
        if g.len() != u.len() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ", gl.dims(), ul.dims())
        }
        let mut out = vec![0f32; g.len()];
        let avx = has_avx512();
        out.par_chunks_mut(PAR_MIN).zip(g.par_chunks(PAR_MIN)).zip(u.par_chunks(PAR_MIN)).for_each(|((o, g), u)| {
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: the CPU has AVX-512F (checked above).
                return unsafe { swiglu_fwd_rows_avx512(g, u, o) };
            }
            let _ = avx;
            swiglu_fwd_rows(g, u, o)
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
    fn bwd(&self, gate: &Tensor, up: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op2_no_bwd(&dy.contiguous()?, &SwiGluBwd { up: up.clone() })?;
        let n = gate.elem_count();
        let dg = both.narrow(0, 0, n)?.reshape(gate.shape())?;
        let du = both.narrow(0, n, n)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

struct SwiGluBwd {
    up: Tensor,
}

impl CustomOp2 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "gramrr-swiglu-bwd"
    }
    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ds: &CpuStorage, dl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(gs, gl, "swiglu_bwd gate")?;
        let dy = f32_slice(ds, dl, "swiglu_bwd grad")?;
        let (us, ul) = self.up.storage_and_layout();
        let candle_core::Storage::Cpu(us) = &*us else { candle_core::bail!("swiglu_bwd: up is not on the CPU") };
        let u = f32_slice(us, ul, "swiglu_bwd up")?;
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        let avx = has_avx512();
        dg.par_chunks_mut(PAR_MIN)
            .zip(du.par_chunks_mut(PAR_MIN))
            .zip(g.par_chunks(PAR_MIN).zip(u.par_chunks(PAR_MIN)).zip(dy.par_chunks(PAR_MIN)))
            .for_each(|((dg, du), ((g, u), dy))| {
                #[cfg(target_arch = "x86_64")]
                if avx {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { swiglu_bwd_rows_avx512(g, u, dy, dg, du) };
                }
                let _ = avx;
                swiglu_bwd_rows(g, u, dy, dg, du)
            });
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }
}

/// silu(gate) · up, differentiable; fused on the CPU.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.device().is_cpu() && gate.dtype() == candle_core::DType::F32 && up.dtype() == candle_core::DType::F32 {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGluOp);
    }
    gate.silu()? * up
}

// ---------------------------------------------------------------------------------------------
// Matrix products through the run-time BLAS (crate::blas), with backward.
//
// candle's matmul backward computes both operands' gradients whatever they are needed for, and
// its GEMM is the slower one; these ops compute only the gradients of operands that track, with
// every product of forward and backward going to the BLAS. Without a BLAS the callers keep
// candle's own matmul, so that path is exactly what it was.

fn blas_applies(a: &Tensor, b: &Tensor) -> bool {
    a.device().is_cpu()
        && a.dtype() == candle_core::DType::F32
        && b.dtype() == candle_core::DType::F32
        && crate::blas::get().is_some()
}

/// `a · b` of CPU storages with candle layouts (…, m, k)·(…, k, n): the BLAS when it is in use
/// and the layouts suit it, candle's GEMM otherwise.
pub(crate) fn matmul_storage(a: &CpuStorage, al: &Layout, b: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    if let (CpuStorage::F32(av), CpuStorage::F32(bv)) = (a, b) {
        if let Some((c, dims)) = crate::blas::matmul_f32(av, al, bv, bl) {
            return Ok((CpuStorage::F32(c), Shape::from(dims)));
        }
    }
    let (ad, bd) = (al.dims(), bl.dims());
    let r = ad.len();
    if r < 2 || bd.len() != r || ad[..r - 2] != bd[..r - 2] || ad[r - 1] != bd[r - 2] {
        candle_core::bail!("matmul: shapes {ad:?} and {bd:?} do not chain")
    }
    let batch: usize = ad[..r - 2].iter().product();
    let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
    let c = a.matmul(b, (batch, m, n, k), al, bl)?;
    let mut dims = ad[..r - 2].to_vec();
    dims.extend([m, n]);
    Ok((c, Shape::from(dims)))
}

/// Whether the last two dims of `t` have a unit stride (what a BLAS can read in place).
fn blas_readable(t: &Tensor) -> bool {
    let st = t.stride();
    let r = st.len();
    r >= 2 && (st[r - 1] == 1 || st[r - 2] == 1)
}

/// `a · b` without a backward, for gradients.
fn matmul_no_bwd(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = if blas_readable(a) { a.clone() } else { a.contiguous()? };
    let b = if blas_readable(b) { b.clone() } else { b.contiguous()? };
    a.apply_op2_no_bwd(&b, &BlasMatmul)
}

struct BlasMatmul;

impl CustomOp2 for BlasMatmul {
    fn name(&self) -> &'static str {
        "gramrr-blas-matmul"
    }
    fn cpu_fwd(&self, a: &CpuStorage, al: &Layout, b: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        matmul_storage(a, al, b, bl)
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let r = a.rank();
        let ga = if a.track_op() { Some(matmul_no_bwd(g, &b.transpose(r - 2, r - 1)?)?) } else { None };
        let gb = if b.track_op() { Some(matmul_no_bwd(&a.transpose(r - 2, r - 1)?, g)?) } else { None };
        Ok((ga, gb))
    }
}

/// `a · b`, (…, m, k)·(…, k, n) with equal batch dims, differentiable.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !blas_applies(a, b) || a.rank() < 2 || a.rank() != b.rank() {
        return a.matmul(b);
    }
    let a = if blas_readable(a) { a.clone() } else { a.contiguous()? };
    let b = if blas_readable(b) { b.clone() } else { b.contiguous()? };
    a.apply_op2(&b, BlasMatmul)
}

/// The product of a linear layer: x (N, in) · Wᵀ with W (out, in) as stored, differentiable.
/// As one op its weight gradient gᵀ·x comes out (out, in) and contiguous, where `x.matmul(&w.t())`
/// would give the transpose's gradient and a strided view of it.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !blas_applies(x, w) || x.rank() != 2 || w.rank() != 2 {
        return x.matmul(&w.t()?);
    }
    let x = if blas_readable(x) { x.clone() } else { x.contiguous()? };
    let w = if blas_readable(w) { w.clone() } else { w.contiguous()? };
    x.apply_op2(&w, BlasLinear)
}

struct BlasLinear;

impl CustomOp2 for BlasLinear {
    fn name(&self) -> &'static str {
        "gramrr-blas-linear"
    }
    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        matmul_storage(x, xl, w, &wl.transpose(0, 1)?)
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() { Some(matmul_no_bwd(g, w)?) } else { None }; // (N, out)·(out, in)
        let dw = if w.track_op() { Some(matmul_no_bwd(&g.t()?, x)?) } else { None }; // (out, N)·(N, in)
        Ok((dx, dw))
    }
}

/// `a · b` for gradients and other graph-free products: the BLAS when in use, candle otherwise.
pub fn matmul_detached(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !blas_applies(a, b) || a.rank() < 2 || a.rank() != b.rank() {
        return a.matmul(b);
    }
    matmul_no_bwd(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d < tol, "max diff {d}");
    }

    /// The BLAS products (when a BLAS is loaded) equal candle's matmul, forward and backward,
    /// on the layouts the model hands them: transposed weights, narrowed cache views, batches.
    #[test]
    fn blas_products_match_candle_matmul() {
        let dev = Device::Cpu;
        eprintln!("matmul backend: {}", crate::blas::describe());
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (37, 70), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (150, 70), &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (37, 150), &dev).unwrap();
        let fast = linear(&x, &w).unwrap();
        let refr = crate::blas::without_blas(|| linear(&x, &w).unwrap());
        close(&fast, &refr, 1e-4);
        close(&fast, &x.matmul(&w.t().unwrap()).unwrap(), 1e-4);
        let gf = (fast * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (refr * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gr.get(&x).unwrap(), 1e-4);
        close(gf.get(&w).unwrap(), gr.get(&w).unwrap(), 1e-4);

        // Attention-shaped: (B, K, T, D) against a narrowed (B, K, cap, D) cache, transposed.
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 16), &dev).unwrap()).unwrap();
        let cache = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 40, 16), &dev).unwrap()).unwrap();
        let k = cache.narrow(2, 0, 33).unwrap();
        let p = Tensor::randn(0f32, 1.0, (2, 3, 5, 33), &dev).unwrap();
        let fast = matmul(&q, &k.t().unwrap()).unwrap();
        let refr = q.matmul(&k.t().unwrap()).unwrap();
        close(&fast, &refr, 1e-4);
        let gf = (fast * &p).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (refr * &p).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&q).unwrap(), gr.get(&q).unwrap(), 1e-4);
        close(gf.get(&cache).unwrap(), gr.get(&cache).unwrap(), 1e-4);
        let v = cache.narrow(2, 0, 33).unwrap();
        close(&matmul(&p, &v).unwrap(), &p.matmul(&v).unwrap(), 1e-4);

        // Large enough to be split over threads, and a product with the columns split.
        let a = Tensor::randn(0f32, 1.0, (300, 256), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (1000, 256), &dev).unwrap();
        close(&linear(&a, &b).unwrap(), &a.matmul(&b.t().unwrap()).unwrap(), 1e-3);
        close(&matmul_detached(&b, &a.t().unwrap()).unwrap(), &b.matmul(&a.t().unwrap()).unwrap(), 1e-3);
    }

    #[test]
    fn swiglu_matches_silu_times_up() {
        let dev = Device::Cpu;
        // Past ±88 as well, where a naive e^(−x) overflows.
        let g0 = Tensor::randn(0f32, 4.0, (3, 40000), &dev).unwrap();
        let g0 = Tensor::cat(&[&g0, &Tensor::new(&[[-100f32, 100.0, 0.0, -1e-3]], &dev).unwrap().broadcast_as((3, 4)).unwrap()], 1).unwrap();
        let g = Var::from_tensor(&g0).unwrap();
        let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, g0.shape(), &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, g0.shape(), &dev).unwrap();
        let fused = swiglu(&g, &u).unwrap();
        let comp = (g.silu().unwrap() * u.as_tensor()).unwrap();
        close(&fused, &comp, 1e-4);
        let gf = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (comp * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&g).unwrap(), gc.get(&g).unwrap(), 1e-4);
        close(gf.get(&u).unwrap(), gc.get(&u).unwrap(), 1e-4);
    }

    /// RMSNorm as candle primitives: the reference the fused op must match.
    fn rms_norm_composed(x: &Tensor, w: &Tensor) -> Tensor {
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        x.broadcast_div(&(ms + 1e-6).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(w).unwrap()
    }

    /// The fused RMSNorm against the composition under `probe`: output, dx, and dw where `w`
    /// trains. Returns the fused op's gradients.
    fn check_rms_norm(x: &Var, w: &Tensor, probe: &Tensor, dw_tol: f32) -> candle_core::backprop::GradStore {
        let fused = x.as_tensor().apply_op2(w, RmsNormOp { eps: 1e-6 }).unwrap();
        let comp = rms_norm_composed(x.as_tensor(), w);
        close(&fused, &comp, 1e-5);
        let gf = (fused * probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (comp * probe).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(x).unwrap(), gc.get(x).unwrap(), 1e-4);
        if let Some(dw) = gc.get(w) {
            close(gf.get(w).expect("a trained norm weight got no gradient"), dw, dw_tol);
        }
        gf
    }

    /// RMSNorm over many rows: several row blocks and a short last one (the weight's gradient
    /// is summed per block), a width that is no multiple of 16, and a frozen weight.
    #[test]
    fn rms_norm_matches_composition_over_row_blocks() {
        let dev = Device::Cpu;
        let (rows, c) = (3 * rms_block_rows(200) + 7, 200);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, c), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.2, c, &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (rows, c), &dev).unwrap();
        // dw sums ~250 terms of size ~1: f32 rounding of either order stays far below 1e-3.
        let grads = check_rms_norm(&x, w.as_tensor(), &probe, 1e-3);
        assert!(grads.get(&w).is_some());
        let frozen = Tensor::randn(1f32, 0.2, c, &dev).unwrap();
        let grads = check_rms_norm(&x, &frozen, &probe, 1e-3);
        assert!(grads.get(&frozen).is_none(), "a frozen norm weight got a gradient");
    }

    /// Gradients of the fused ops equal those of the candle compositions they replace.
    #[test]
    fn fused_ops_match_compositions_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 8), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.2, 8, &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 4, 8), &dev).unwrap();

        check_rms_norm(&x, w.as_tensor(), &probe, 1e-4);

        // Causal scaled softmax on (B, H, T, S) with T = S = 4 and cache offset 0, and with offset 2.
        for (t, offset) in [(4usize, 0usize), (2, 2)] {
            let s = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, t, 4), &dev).unwrap()).unwrap();
            let p = Tensor::randn(0f32, 1.0, (2, 3, t, 4), &dev).unwrap();
            let fused = s.as_tensor().apply_op1(SoftmaxOp { scale: 0.5, causal: Some(Causal { t, offset }) }).unwrap();
            let m: Vec<f32> = (0..t * 4).map(|k| if k % 4 > offset + k / 4 { -1e30 } else { 0.0 }).collect();
            let m = Tensor::from_vec(m, (1, 1, t, 4), &dev).unwrap();
            let z = (s.as_tensor() * 0.5).unwrap().broadcast_add(&m).unwrap();
            let e = z.broadcast_sub(&z.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
            let comp = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
            close(&fused, &comp, 1e-6);
            let gf = (fused * &p).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (comp * &p).unwrap().sum_all().unwrap().backward().unwrap();
            close(gf.get(&s).unwrap(), gc.get(&s).unwrap(), 1e-5);
        }

        // RoPE on (B, T, H, D) with (B, T, D) tables.
        let ang = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev).unwrap();
        let ang = Tensor::cat(&[&ang, &ang], 2).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let fused = x.as_tensor().apply_op3(&cos, &sin, RopeOp { inverse: false }).unwrap();
        let (c4, s4) = (cos.unsqueeze(2).unwrap(), sin.unsqueeze(2).unwrap());
        let x1 = x.narrow(3, 0, 4).unwrap();
        let x2 = x.narrow(3, 4, 4).unwrap();
        let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], 3).unwrap();
        let comp = (x.broadcast_mul(&c4).unwrap() + rot.broadcast_mul(&s4).unwrap()).unwrap();
        close(&fused, &comp, 1e-6);
        let gf = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (comp * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gc.get(&x).unwrap(), 1e-5);
    }
}
