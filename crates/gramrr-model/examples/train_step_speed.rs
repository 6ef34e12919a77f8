//! Times forward+backward of a demo-sized decoder (throwaway measurement for planning).
use candle_core::{DType, Device, Tensor, Var};
use gramrr_model::init::{char_tokenizer, InitSpec, random_weights};
use gramrr_model::model::{Decoder, ForwardCtx, ForwardInput};
use gramrr_model::Architecture;

fn main() -> anyhow::Result<()> {
    if std::env::var("NO_TUNE").is_err() { gramrr_model::tune_allocator(); }
    let tok = char_tokenizer("0123456789+-*=?:. QAB<>/itsanwerIbcdfghjklmopquvxyz\n")?;
    let mut spec = InitSpec::tiny(Architecture::Qwen3);
    spec.hidden_size = 128; spec.intermediate_size = 384; spec.num_hidden_layers = 4; spec.num_attention_heads = 4; spec.num_key_value_heads = 4;
    let cfg = spec.config(&tok);
    let w = random_weights(&cfg, 0.02, 0)?;
    let mut dec = Decoder::load(&cfg, &w)?;
    let mut vars = Vec::new();
    dec.map_parameters(&mut |_, t| { let v = Var::from_tensor(t)?; let t = v.as_tensor().clone(); vars.push(v); Ok(t) })?;
    let (b, t) = (64usize, 90usize);
    let ids: Vec<Vec<u32>> = (0..b).map(|r| (0..t).map(|i| ((r * 7 + i * 3) % 40 + 4) as u32).collect()).collect();
    let pos: Vec<Vec<u32>> = (0..b).map(|_| (0..t as u32).collect()).collect();
    for it in 0..6 {
        let st = std::time::Instant::now();
        let input = ForwardInput { ids: &ids, positions: &pos, mask: None, doc_starts: None, left_padding: None };
        let h = dec.forward_hidden(&input, None, &mut ForwardCtx::training(None))?;
        let logits = dec.logits(&h)?;
        let lse = logits.exp()?.sum_keepdim(1)?.log()?;
        let loss = (lse.mean_all()? - logits.mean_all()?)?;
        let f = st.elapsed().as_secs_f64();
        let g = loss.backward()?;
        let total = st.elapsed().as_secs_f64();
        let _ = g; let _ = DType::F32; let _ = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
        println!("iter {it}: fwd {f:.3}s total {total:.3}s -> {:.0} tok/s", (b * t) as f64 / total);
    }
    Ok(())
}
