//! AdamW with f32 moments, global-norm gradient clipping and learning-rate schedules, written
//! to the formulas of `torch.optim.AdamW(foreach=False)`, `clip_grad_norm_` and transformers'
//! schedulers (see tests/fixtures/README.md), because candle's `AdamW` keeps moments in the
//! parameter dtype and has no clipping.
//!
//! The weight-decay rule, stated once: parameters with two or more dimensions (matrices, the
//! embedding, LoRA A and B) decay; vectors (RMSNorm weights, biases) do not, as in
//! transformers' Trainer.

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::error::{Result, TrainError};

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Constant,
    #[default]
    Linear,
    Cosine,
}

impl std::str::FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "constant" => Ok(Scheduler::Constant),
            "linear" => Ok(Scheduler::Linear),
            "cosine" => Ok(Scheduler::Cosine),
            o => Err(format!("unknown scheduler {o:?} (expected constant, linear or cosine)")),
        }
    }
}

/// Warmup steps as transformers computes them: `ceil(ratio · total)`.
pub fn warmup_steps(ratio: f64, total: usize) -> usize {
    (ratio * total as f64).ceil() as usize
}

/// The multiplier λ(step) of transformers' `get_{constant,linear,cosine}_schedule_with_warmup`
/// (0-based optimizer step).
pub fn lr_lambda(s: Scheduler, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    match s {
        Scheduler::Constant => 1.0,
        Scheduler::Linear => ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0),
        Scheduler::Cosine => {
            let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments: host vectors on CPU (updated in place by one fused loop), device
/// tensors elsewhere.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

pub struct Param {
    pub name: String,
    pub var: Var,
    /// Whether weight decay applies (ndim ≥ 2).
    pub decay: bool,
    /// Adam step count of this parameter (torch keeps one per parameter).
    pub steps: u64,
    moments: Moments,
}

pub struct AdamW {
    pub params: Vec<Param>,
    pub cfg: AdamWConfig,
}

/// A contiguous f32 CPU tensor's data, or `None` on other devices.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(CpuStorage::F32(v)) => {
            let o = l.start_offset();
            Ok(Some(f(&v[o..o + t.elem_count()])))
        }
        _ => Ok(None),
    }
}

/// Σ g² over every gradient, accumulated in f64.
pub fn global_grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        let sq = match with_cpu_f32(g, |s| s.par_chunks(1 << 16).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).sum::<f64>())? {
            Some(v) => v,
            None => g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?,
        };
        total += sq;
    }
    Ok(total.sqrt())
}

/// `clip_grad_norm_`'s multiplier: `min(1, max_norm / (total + 1e-6))`, in f32 as torch does;
/// 1 when clipping is off (`max_norm <= 0`).
pub fn clip_coefficient(total_norm: f64, max_norm: f64) -> f32 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    let c = max_norm as f32 / (total_norm as f32 + 1e-6f32);
    c.min(1.0)
}

/// One parameter's fused AdamW update on CPU, in place on the parameter's storage.
struct AdamCpu<'a> {
    grad: &'a [f32],
    m: Mutex<&'a mut [f32]>,
    v: Mutex<&'a mut [f32]>,
    coef: f32,
    decay: Option<f32>,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bc2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
}

impl InplaceOp1 for AdamCpu<'_> {
    fn name(&self) -> &'static str {
        "adamw-step"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(p) = s else { candle_core::bail!("adamw: parameters must be f32") };
        if !l.is_contiguous() {
            candle_core::bail!("adamw: parameter is not contiguous")
        }
        let o = l.start_offset();
        let p = &mut p[o..o + self.grad.len()];
        let mut m = self.m.lock().expect("moments lock");
        let mut v = self.v.lock().expect("moments lock");
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(self.grad.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    let g = g[i] * self.coef;
                    let mut x = p[i];
                    if let Some(d) = self.decay {
                        x *= d;
                    }
                    // torch's lerp for weight < 0.5: m + w (g - m)
                    m[i] += self.one_minus_beta1 * (g - m[i]);
                    v[i] = v[i] * self.beta2 + self.one_minus_beta2 * g * g;
                    let denom = v[i].sqrt() / self.bc2_sqrt + self.eps;
                    p[i] = x + self.neg_step_size * (m[i] / denom);
                }
            });
        Ok(())
    }
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let mut out = Vec::with_capacity(params.len());
        for (name, var) in params {
            let t = var.as_tensor();
            if t.dtype() != DType::F32 {
                return Err(TrainError::Config(format!("parameter {name} is {:?}; training runs in f32", t.dtype())));
            }
            let moments = if t.device().is_cpu() {
                Moments::Host { m: vec![0.0; t.elem_count()], v: vec![0.0; t.elem_count()] }
            } else {
                Moments::Device { m: t.zeros_like()?, v: t.zeros_like()? }
            };
            out.push(Param { decay: t.rank() >= 2, name, var, steps: 0, moments });
        }
        Ok(Self { params: out, cfg })
    }

    /// Applies one update. `grads[i]` belongs to `params[i]`; a parameter without a gradient is
    /// left alone (as torch skips `p.grad is None`). `coef` is the clipping multiplier.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, coef: f32) -> Result<()> {
        let c = self.cfg;
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            p.steps += 1;
            let k = p.steps as i32;
            let bc1 = 1.0 - c.beta1.powi(k);
            let bc2 = 1.0 - c.beta2.powi(k);
            let step_size = lr / bc1;
            let bc2_sqrt = bc2.sqrt();
            let wd = if p.decay && c.weight_decay != 0.0 { Some(1.0 - lr * c.weight_decay) } else { None };
            match &mut p.moments {
                Moments::Host { m, v } => {
                    let g = g.contiguous()?;
                    let (gs, gl) = g.storage_and_layout();
                    let Storage::Cpu(CpuStorage::F32(gv)) = &*gs else {
                        return Err(TrainError::Config(format!("gradient of {} is not an f32 CPU tensor", p.name)));
                    };
                    let o = gl.start_offset();
                    let op = AdamCpu {
                        grad: &gv[o..o + g.elem_count()],
                        m: Mutex::new(m.as_mut_slice()),
                        v: Mutex::new(v.as_mut_slice()),
                        coef,
                        decay: wd.map(|d| d as f32),
                        one_minus_beta1: (1.0 - c.beta1) as f32,
                        beta2: c.beta2 as f32,
                        one_minus_beta2: (1.0 - c.beta2) as f32,
                        bc2_sqrt: bc2_sqrt as f32,
                        eps: c.eps as f32,
                        neg_step_size: -(step_size as f32),
                    };
                    p.var.as_tensor().inplace_op1(&op)?;
                }
                Moments::Device { m, v } => {
                    let g = (g * coef as f64)?;
                    let mut x = p.var.as_detached_tensor();
                    if let Some(d) = wd {
                        x = (x * d)?;
                    }
                    *m = (&*m + ((&g - &*m)? * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
                    let x = (x + ((&*m / denom)? * -step_size)?)?;
                    p.var.set(&x)?;
                }
            }
        }
        Ok(())
    }

    /// Moments as named f32 tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) for checkpoints.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            let shape = p.var.as_tensor().shape().clone();
            let (m, v) = match &p.moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, shape.clone(), &candle_core::Device::Cpu)?,
                    Tensor::from_slice(v, shape, &candle_core::Device::Cpu)?,
                ),
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("exp_avg.{}", p.name), m));
            out.push((format!("exp_avg_sq.{}", p.name), v));
        }
        Ok(out)
    }

    pub fn param_steps(&self) -> Vec<u64> {
        self.params.iter().map(|p| p.steps).collect()
    }

    /// Restores moments saved by [`state_tensors`](Self::state_tensors) and the step counts.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::BTreeMap<String, Tensor>,
        steps: &[u64],
    ) -> std::result::Result<(), String> {
        if steps.len() != self.params.len() {
            return Err(format!("optimizer state has {} step counts for {} parameters", steps.len(), self.params.len()));
        }
        for (p, &k) in self.params.iter_mut().zip(steps) {
            let get = |key: String| -> std::result::Result<Tensor, String> {
                let t = tensors.get(&key).ok_or_else(|| format!("missing tensor {key:?}"))?;
                if t.dims() != p.var.as_tensor().dims() {
                    return Err(format!("{key:?} has shape {:?}, expected {:?}", t.dims(), p.var.as_tensor().dims()));
                }
                Ok(t.clone())
            };
            let m = get(format!("exp_avg.{}", p.name))?;
            let v = get(format!("exp_avg_sq.{}", p.name))?;
            p.moments = match &p.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())?,
                    v: v.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())?,
                },
                Moments::Device { .. } => {
                    let dev = p.var.as_tensor().device();
                    Moments::Device {
                        m: m.to_device(dev).map_err(|e| e.to_string())?,
                        v: v.to_device(dev).map_err(|e| e.to_string())?,
                    }
                }
            };
            p.steps = k;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cosine_schedule_matches_the_fixture_lrs() {
        let lrs: Vec<f64> = (0..4).map(|s| 1e-2 * lr_lambda(Scheduler::Cosine, s, warmup_steps(0.25, 4), 4)).collect();
        let want = [0.0, 0.01, 0.0075, 0.0025000000000000014];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{lrs:?}");
        }
        assert_eq!(lr_lambda(Scheduler::Linear, 3, 1, 5), 0.5);
        assert_eq!(lr_lambda(Scheduler::Constant, 0, 2, 5), 0.0);
        assert_eq!(lr_lambda(Scheduler::Constant, 3, 2, 5), 1.0);
    }

    /// The fused CPU update and the tensor-op update (used on other devices) agree.
    #[test]
    fn fused_cpu_update_matches_tensor_ops() {
        let dev = Device::Cpu;
        let w0 = Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap();
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let a = Var::from_tensor(&w0).unwrap();
        let b = Var::from_tensor(&w0).unwrap();
        let mut oa = AdamW::new(vec![("w".into(), a.clone())], cfg).unwrap();
        let mut ob = AdamW::new(vec![("w".into(), b.clone())], cfg).unwrap();
        ob.params[0].moments = Moments::Device { m: w0.zeros_like().unwrap(), v: w0.zeros_like().unwrap() };
        for s in 0..3 {
            let g = Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap();
            oa.step(&[Some(g.clone())], 1e-2 * (s + 1) as f64, 0.5).unwrap();
            ob.step(&[Some(g)], 1e-2 * (s + 1) as f64, 0.5).unwrap();
        }
        let d = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{d}");
    }
}
