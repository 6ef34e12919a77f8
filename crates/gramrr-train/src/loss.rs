//! Micro-batches and their losses.
//!
//! Only target positions go through `lm_head`: full-vocabulary logits at every position are the
//! memory peak of training. The log-softmax is built from max/exp/sum/log, because candle's fused
//! softmax records no backward (stack.md).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, D};
use gramrr_model::engine::log_sum_exp;
use gramrr_model::ops::exp_f32;
use rayon::prelude::*;
use gramrr_model::model::{Decoder, ForwardCtx, ForwardInput, Linear};

use crate::data::SftExample;
use crate::error::Result;

/// Right-padded rows plus the flat indices of the hidden rows that carry a loss.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    pub ids: Vec<Vec<u32>>,
    pub positions: Vec<Vec<u32>>,
    /// Padding-free rows: where each token's example begins in its row (see
    /// `ForwardInput::doc_starts`); `None` when every row holds one example.
    pub doc_starts: Option<Vec<Vec<u32>>>,
    /// Padded length T.
    pub t: usize,
    /// Hidden row `r·T + t` predicts `targets[i]` with weight `weights[i]`.
    pub rows: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
    /// Rows of the last prompt token of labelled examples, and their label indices.
    pub label_rows: Vec<u32>,
    pub labels: Vec<usize>,
    /// Real (non-padding) tokens.
    pub tokens: usize,
}

/// Builds a right-padded micro-batch, one example per row (padding gets weight 0 and is never
/// attended to by real tokens under the causal mask). Positions with weight 0 are left out of the
/// loss rows: they add nothing to the loss or its normaliser.
pub fn build_micro_batch(examples: &[&SftExample], pad_id: u32) -> MicroBatch {
    let rows: Vec<Vec<usize>> = (0..examples.len()).map(|i| vec![i]).collect();
    assemble(examples, &rows, pad_id, false)
}

/// Builds a padding-free micro-batch (TRL's `padding_free`): the examples, in order, go first-fit
/// into rows no longer than the longest of them, each with positions from 0 and attention only
/// within itself. Every example computes exactly what it would on a row of its own, so the loss
/// and gradients equal [`build_micro_batch`]'s up to float summation order, on fewer padded
/// positions: a batch of mixed lengths pads every row to the longest.
pub fn build_padding_free_micro_batch(examples: &[&SftExample], pad_id: u32) -> MicroBatch {
    let cap = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    for (i, e) in examples.iter().enumerate() {
        match free.iter().position(|&f| f >= e.len()) {
            Some(r) => {
                rows[r].push(i);
                free[r] -= e.len();
            }
            None => {
                rows.push(vec![i]);
                free.push(cap - e.len());
            }
        }
    }
    assemble(examples, &rows, pad_id, true)
}

/// `rows[r]` lists the examples placed, in order, in row `r`.
fn assemble(examples: &[&SftExample], rows: &[Vec<usize>], pad_id: u32, documents: bool) -> MicroBatch {
    let t = rows.iter().map(|r| r.iter().map(|&i| examples[i].len()).sum::<usize>()).max().unwrap_or(0);
    let mut mb = MicroBatch {
        ids: Vec::with_capacity(rows.len()),
        positions: Vec::with_capacity(rows.len()),
        doc_starts: documents.then(Vec::new),
        t,
        rows: vec![],
        targets: vec![],
        weights: vec![],
        label_rows: vec![],
        labels: vec![],
        tokens: 0,
    };
    for (r, members) in rows.iter().enumerate() {
        let (mut ids, mut positions, mut starts) = (Vec::with_capacity(t), Vec::with_capacity(t), Vec::with_capacity(t));
        for &i in members {
            let ex = examples[i];
            let at = ids.len();
            ids.extend(ex.ids());
            positions.extend(0..ex.len() as u32);
            starts.extend(std::iter::repeat_n(at as u32, ex.len()));
            for pos in 1..ex.len() {
                let w = ex.weight_at(pos);
                if w > 0.0 {
                    mb.rows.push((r * t + at + pos - 1) as u32);
                    mb.targets.push(ids[at + pos]);
                    mb.weights.push(w);
                }
            }
            if let Some(l) = ex.label {
                mb.label_rows.push((r * t + at + ex.prompt_ids.len() - 1) as u32);
                mb.labels.push(l);
            }
            mb.tokens += ex.len();
        }
        // Padding continues the positions and, in padding-free rows, is a document of its own.
        let used = ids.len();
        ids.resize(t, pad_id);
        positions.extend(positions.last().map_or(0, |&p| p + 1)..(positions.last().map_or(0, |&p| p + 1) + (t - used) as u32));
        starts.resize(t, used as u32);
        mb.ids.push(ids);
        mb.positions.push(positions);
        if let Some(ds) = mb.doc_starts.as_mut() {
            ds.push(starts);
        }
    }
    mb
}

/// Label-loss settings resolved to token ids.
#[derive(Debug, Clone)]
pub struct LabelLoss {
    pub label_ids: Vec<u32>,
    pub smoothing: f64,
    pub weight: f64,
}

/// The pieces of one micro-batch's loss, already divided by the optimizer step's normalisers.
pub struct MicroLoss {
    /// What backpropagates.
    pub total: Tensor,
    pub token: Option<Tensor>,
    pub label: Option<Tensor>,
}

/// `Σ w · nll` over rows of `logits` (N, V), with `nll = logsumexp(logits) − logits[target]`.
/// On the CPU as one op ([`FusedNll`]), elsewhere as the composition.
pub fn weighted_nll_sum(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 && logits.rank() == 2 {
        let op = FusedNll { targets: targets.to_vec1::<u32>()?, weights: weights.to_vec1::<f32>()? };
        return Ok(logits.contiguous()?.apply_op1(op)?);
    }
    weighted_nll_sum_composed(logits, targets, weights)
}

/// The composition of candle ops [`FusedNll`] replaces (any device).
pub fn weighted_nll_sum_composed(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    // The max only shifts for stability; as a constant it needs no backward.
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?; // (N, V)
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // (N, 1)
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?; // (N, 1)
    let nll = (lse - picked)?.squeeze(1)?; // (N)
    Ok((nll * weights)?.sum_all()?)
}

/// `Σ_i w_i (logsumexp(z_i) − z_i[t_i])` over the rows of logits z (N, V), as one op. The
/// composition (max, shift, exp, sum, log, gather) keeps three (N, V) tensors for the backward,
/// 930 MB for 510 target tokens of a 152k vocabulary, and makes four more in it; this keeps z
/// alone and makes one gradient, `w_i (softmax(z_i) − onehot(t_i))`.
struct FusedNll {
    targets: Vec<u32>,
    weights: Vec<f32>,
}

fn cpu_rows<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: expected f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{what}: expected a contiguous tensor") };
    let (_, cols) = l.shape().dims2()?;
    Ok((&v[a..b], cols))
}

impl FusedNll {
    fn check(&self, rows: usize, cols: usize) -> candle_core::Result<()> {
        if self.targets.len() != rows || self.weights.len() != rows {
            candle_core::bail!("nll: {rows} rows, {} targets, {} weights", self.targets.len(), self.weights.len())
        }
        if let Some(t) = self.targets.iter().find(|&&t| t as usize >= cols) {
            candle_core::bail!("nll: target {t} outside the {cols} logits")
        }
        Ok(())
    }
}

impl CustomOp1 for FusedNll {
    fn name(&self) -> &'static str {
        "gramrr-weighted-nll"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, v) = cpu_rows(s, l, "nll")?;
        self.check(z.len() / v.max(1), v)?;
        let total: f64 = z
            .par_chunks(v)
            .zip(self.targets.par_iter().zip(self.weights.par_iter()))
            .map(|(row, (&t, &w))| w as f64 * (log_sum_exp(row) - row[t as usize]) as f64)
            .sum();
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }
    fn bwd(&self, z: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let scale = g.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let op = FusedNllBwd { targets: self.targets.clone(), weights: self.weights.iter().map(|w| w * scale).collect() };
        Ok(Some(z.apply_op1_no_bwd(&op)?))
    }
}

struct FusedNllBwd {
    targets: Vec<u32>,
    weights: Vec<f32>,
}

impl CustomOp1 for FusedNllBwd {
    fn name(&self) -> &'static str {
        "gramrr-weighted-nll-bwd"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, v) = cpu_rows(s, l, "nll_bwd")?;
        let mut out = vec![0f32; z.len()];
        out.par_chunks_mut(v).zip(z.par_chunks(v)).zip(self.targets.par_iter().zip(self.weights.par_iter())).for_each(
            |((o, row), (&t, &w))| {
                let lse = log_sum_exp(row);
                for (o, &x) in o.iter_mut().zip(row) {
                    *o = w * exp_f32(x - lse);
                }
                o[t as usize] -= w;
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Cross entropy over the label tokens only, with label smoothing, summed over rows:
/// `−Σ_rows Σ_k target_k · log_softmax(z)_k`, target = (1 − ε)·onehot + ε/K.
pub fn label_ce_sum(z: &Tensor, labels: &[usize], smoothing: f64) -> Result<Tensor> {
    let (m, k) = z.dims2()?;
    let max = z.max_keepdim(D::Minus1)?.detach();
    let shifted = z.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?; // (M, K)
    let mut target = vec![(smoothing / k as f64) as f32; m * k];
    for (r, &l) in labels.iter().enumerate() {
        target[r * k + l] += (1.0 - smoothing) as f32;
    }
    let target = Tensor::from_vec(target, (m, k), z.device())?;
    Ok((logp * target)?.sum_all()?.neg()?)
}

/// The output projection, frozen (no weight gradient) when the decoder's weights are not being
/// trained.
pub(crate) fn head_logits(decoder: &Decoder, hidden: &Tensor, frozen: bool, ctx: &mut ForwardCtx) -> Result<Tensor> {
    let w = decoder.lm_head.as_ref().unwrap_or(&decoder.embed_tokens);
    if frozen {
        let lin = Linear { weight: w.clone(), bias: None, lora: None, frozen: true, quant: None };
        Ok(lin.forward(hidden, ctx)?)
    } else {
        Ok(decoder.logits(hidden)?)
    }
}

/// Forward pass and loss of one micro-batch. `token_norm` is the target weight of the whole
/// optimizer step and `label_norm` its number of labelled examples, so that gradient
/// accumulation sums to exactly the loss of the step.
pub fn micro_batch_loss(
    decoder: &Decoder,
    mb: &MicroBatch,
    ctx: &mut ForwardCtx,
    frozen_head: bool,
    token_norm: f64,
    label: Option<(&LabelLoss, f64)>,
    dev: &Device,
) -> Result<MicroLoss> {
    // Right padding: causal attention alone keeps real tokens off the padding (fused path).
    let input = ForwardInput { ids: &mb.ids, positions: &mb.positions, mask: None, doc_starts: mb.doc_starts.as_deref(), left_padding: None };
    let hidden = decoder.forward_hidden(&input, None, ctx)?; // (B·T, C)
    let mut token = None;
    if !mb.rows.is_empty() && token_norm > 0.0 {
        let rows = Tensor::from_slice(&mb.rows, mb.rows.len(), dev)?;
        let sel = hidden.index_select(&rows, 0)?; // (N, C)
        let logits = head_logits(decoder, &sel, frozen_head, ctx)?; // (N, V)
        let targets = Tensor::from_slice(&mb.targets, mb.targets.len(), dev)?;
        let weights = Tensor::from_slice(&mb.weights, mb.weights.len(), dev)?;
        token = Some((weighted_nll_sum(&logits, &targets, &weights)? / token_norm)?);
    }
    let mut lab = None;
    if let Some((cfg, norm)) = label {
        if !mb.label_rows.is_empty() && norm > 0.0 {
            let rows = Tensor::from_slice(&mb.label_rows, mb.label_rows.len(), dev)?;
            let sel = hidden.index_select(&rows, 0)?; // (M, C)
            let w = decoder.lm_head.as_ref().unwrap_or(&decoder.embed_tokens);
            let ids = Tensor::from_slice(&cfg.label_ids, cfg.label_ids.len(), dev)?;
            let wl = w.index_select(&ids, 0)?; // (K, C)
            let z = sel.matmul(&wl.t()?)?; // (M, K)
            lab = Some((label_ce_sum(&z, &mb.labels, cfg.smoothing)? * (cfg.weight / norm))?);
        }
    }
    let total = match (&token, &lab) {
        (Some(a), Some(b)) => (a + b)?,
        (Some(a), None) => a.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) => Tensor::zeros((), DType::F32, dev)?,
    };
    Ok(MicroLoss { total, token, label: lab })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn fused_nll_matches_the_composition_forward_and_backward() {
        let dev = Device::Cpu;
        let z = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (7, 1001), &dev).unwrap())).unwrap();
        let targets = Tensor::new(&[0u32, 1000, 5, 5, 77, 999, 3], &dev).unwrap();
        let weights = Tensor::new(&[1f32, 0.5, 2.0, 0.0, 1.0, 1.0, 0.25], &dev).unwrap();
        let fused = weighted_nll_sum(&z, &targets, &weights).unwrap();
        let comp = weighted_nll_sum_composed(&z, &targets, &weights).unwrap();
        let (a, b) = (fused.to_scalar::<f32>().unwrap(), comp.to_scalar::<f32>().unwrap());
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        let gf = (fused * 1.5).unwrap().backward().unwrap();
        let gc = (comp * 1.5).unwrap().backward().unwrap();
        let d = (gf.get(&z).unwrap() - gc.get(&z).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }
}
