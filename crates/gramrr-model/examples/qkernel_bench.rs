//! Times one quantized matmul per type and shape, gramrr's kernels against candle's, fastest
//! of several runs (the machine is shared): `cargo run --release -p gramrr-model --example
//! qkernel_bench [ROWS_OF_INPUT]`. Threads: RAYON_NUM_THREADS.
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Module, Tensor};
use gramrr_model::qkernels::{self, QuantizedRows};

fn best<F: FnMut()>(mut f: F) -> f64 {
    let mut t = f64::MAX;
    for _ in 0..20 {
        let s = Instant::now();
        f();
        t = t.min(s.elapsed().as_secs_f64());
    }
    t
}

fn main() -> anyhow::Result<()> {
    let m: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let isa = qkernels::detected_isa();
    println!("isa {isa:?}, {} threads, {m} input rows", rayon::current_num_threads());
    let only: Option<usize> = std::env::args().nth(2).map(|s| s.parse()).transpose()?;
    for (n, k) in [(1536usize, 576usize), (576, 1536), (49152, 576), (2048, 2048)] {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4_1, GgmlDType::Q4K, GgmlDType::Q6K] {
            if k % dtype.block_size() != 0 {
                continue;
            }
            let q = QTensor::quantize(&w, dtype)?;
            let bytes = q.data()?.into_owned();
            let mut out = vec![0f32; n * m];
            let ours = best(|| {
                let xq = QuantizedRows::new(&xs, k);
                qkernels::matmul_t(dtype, &bytes, n, &xq, &mut out, isa);
            });
            let qm = candle_core::quantized::QMatMul::from_qtensor(q)?;
            let theirs = best(|| {
                qm.forward(&x).unwrap();
            });
            let gb = bytes.len() as f64 / 1e9;
            println!(
                "{n:>6}x{k:<5} {dtype:?}: gramrr {:8.1} us ({:5.1} GB/s)  candle {:8.1} us  ({:.2}x)",
                ours * 1e6, gb / ours, theirs * 1e6, theirs / ours
            );
        }
    }
    Ok(())
}
