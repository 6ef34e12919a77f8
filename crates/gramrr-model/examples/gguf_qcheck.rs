//! Compares the quantized matmul of every 2-D tensor in a GGUF file with f32 arithmetic on
//! its dequantized values: `cargo run --release -p gramrr-model --example gguf_qcheck FILE`.
use candle_core::{Device, Tensor};
use gramrr_model::gguf::GgufFile;
use gramrr_model::qlinear::QuantLinear;

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).expect("usage: gguf_qcheck FILE.gguf");
    let f = GgufFile::open(std::path::Path::new(&path))?;
    let mut seen = std::collections::BTreeSet::new();
    for (name, info) in &f.tensors {
        if info.shape.len() != 2 || !seen.insert((format!("{:?}", info.dtype), info.shape.clone())) {
            continue;
        }
        let q = f.qtensor(name, &Device::Cpu)?;
        let w = q.dequantize(&Device::Cpu)?;
        let k = info.shape[1];
        let x = Tensor::randn(0f32, 1.0, (3, k), &Device::Cpu)?;
        let want = x.matmul(&w.t()?)?;
        for slices in [1, 2] {
            let ql = QuantLinear::with_slices(f.qtensor(name, &Device::Cpu)?, slices)?;
            let got = ql.forward(&x)?;
            let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            let ids = [0u32, 5, (info.shape[0] - 1) as u32];
            let e = ql.embedding(&ids, &Device::Cpu)?;
            let e_want = w.index_select(&Tensor::new(&ids[..], &Device::Cpu)?, 0)?;
            let e_err = (&e - &e_want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            println!("{name} {:?} {:?} slices {slices}: matmul max err {err:.3e} (max |y| {scale:.3e}), embedding err {e_err:.1e}", info.dtype, info.shape);
        }
    }
    Ok(())
}
