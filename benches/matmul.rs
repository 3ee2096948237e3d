//! GFLOP/s of the fused linear op on the GPT-2 124M products of a training shard
//! (512 rows), forward and backward, f32 (gemm's kernels) against
//! `--matmul-precision bf16` (AMX tiles, where the CPU has them). Run with
//! `cargo bench --bench matmul`. The peer is torch's `x @ w` under the same shapes with and
//! without CPU autocast (benches/peers/matmul_torch.py).

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor, Var};
use wick::nn::kernels::{self, MatmulPrecision};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    wick::runtime::init().expect("runtime settings");
    let rows = 512;
    // (name, in, out, in_out): GPT-2's Conv1D weights are (in, out); the tied lm_head is (out, in).
    let shapes = [
        ("c_attn", 768, 2304, true),
        ("c_fc", 768, 3072, true),
        ("mlp c_proj", 3072, 768, true),
        ("lm_head", 768, 50257, false),
    ];
    let mut precisions = vec![MatmulPrecision::F32];
    if kernels::amx_available() {
        precisions.push(MatmulPrecision::Bf16);
    }
    for p in precisions {
        kernels::set_matmul_precision(p).map_err(anyhow::Error::msg)?;
        println!("{} ({})", p.name(), wick::runtime::cpu_features());
        for &(name, inp, out, in_out) in &shapes {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (rows, inp), &Device::Cpu)?)?;
            let w_shape = if in_out { (inp, out) } else { (out, inp) };
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.02, w_shape, &Device::Cpu)?)?;
            let flops = 2.0 * (rows * inp * out) as f64;
            let (mut fwd, mut bwd) = (vec![], vec![]);
            for _ in 0..5 {
                let t = Instant::now();
                let y = kernels::linear(x.as_tensor(), w.as_tensor(), None, in_out)?;
                fwd.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let g = y.sum_all()?.backward()?;
                std::hint::black_box(g.get(&w));
                bwd.push(t.elapsed().as_secs_f64());
            }
            let (f, b) = (median(fwd), median(bwd));
            println!(
                "  {name:<11} ({rows}x{inp}) . ({inp}x{out}): forward {:6.1} ms {:5.0} GFLOP/s, backward {:6.1} ms {:5.0} GFLOP/s",
                f * 1e3,
                flops / f / 1e9,
                b * 1e3,
                2.0 * flops / b / 1e9
            );
        }
    }
    Ok(())
}
