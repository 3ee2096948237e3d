//! Forward-pass timings of the GPT-2 124M geometry (the hub `gpt2` config, random
//! weights) on the CPU: one prefill of 8×256 tokens (scoring throughput) and a single
//! 1×128 pass. Run with `cargo bench --bench forward` (or `just bench`); the peer is
//! benches/peers/forward_transformers.py. Median of several runs after a warm-up.

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{DType, Device, Tensor};
use wick::checkpoint::WeightSource;
use wick::models::{Model, ModelConfig};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    wick::runtime::init().expect("runtime settings");
    eprintln!("cpu: {}", wick::runtime::cpu_features());
    let cfg_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gpt2-124m.json");
    let cfg = ModelConfig::from_file(&cfg_path)?;
    let weights = WeightSource::new(None, wick::checkpoint::InitPolicy::All, false);
    let Model::Gpt2(model) =
        Model::build(&cfg, None, weights.var_builder(DType::F32, &Device::Cpu))?
    else {
        anyhow::bail!("gpt2-124m.json is not a GPT-2 config")
    };
    let runs: usize = std::env::var("WICK_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!(
        "GPT-2 124M geometry, f32, CPU, {} threads, {} params",
        candle_core::utils::get_num_threads(),
        weights.num_parameters()
    );
    for (b, t) in [(1usize, 128usize), (8, 256)] {
        let ids = Tensor::from_vec(
            (0..b * t)
                .map(|i| (i * 7919 % 50257) as u32)
                .collect::<Vec<_>>(),
            (b, t),
            &Device::Cpu,
        )?;
        model.forward(&ids, None, None, false)?; // warm-up
        let times: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                model
                    .forward(&ids, None, None, false)
                    .map(|_| start.elapsed().as_secs_f64())
            })
            .collect::<candle_core::Result<_>>()?;
        let s = median(times);
        println!(
            "forward {b}x{t}: {:8.1} ms  {:8.1} tokens/s",
            s * 1e3,
            (b * t) as f64 / s
        );
    }
    Ok(())
}
