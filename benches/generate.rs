//! Decode speed of the GPT-2 124M geometry (the hub `gpt2` config, random weights) on
//! the CPU: batch 1, a 16-token prompt, 128 new tokens, greedy — the setting of
//! benches/peers/generate_transformers.py — in f32, then with the linear layers
//! quantized to q8_0 and q4k as `wick quantize` does. Reports time to first token
//! (prefill + one step) and tokens/s after it; median of runs after a warm-up.
//! `just bench-generate`.

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{DType, Device};
use wick::checkpoint::{quantize_model, QuantFormat, WeightSource};
use wick::generation::{generate, Flow, GenerateOptions};
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
    let model = Model::build(&cfg, None, weights.var_builder(DType::F32, &Device::Cpu))?;
    for format in [None, Some(QuantFormat::Q8_0), Some(QuantFormat::Q4K)] {
        let mut m = model.clone();
        if let Some(f) = format {
            quantize_model(&mut m, &weights, f)?;
        }
        let Model::Gpt2(m) = m else {
            anyhow::bail!("gpt2-124m.json is not a GPT-2 config")
        };
        bench(&m, format.map_or("f32", QuantFormat::name))?;
    }
    Ok(())
}

fn bench(model: &wick::models::Gpt2, label: &str) -> anyhow::Result<()> {
    let runs: usize = std::env::var("WICK_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let new_tokens = 128;
    let prompt: Vec<u32> = (0..16).map(|i| (i * 7919 % 50257) as u32).collect();
    let opts = GenerateOptions {
        max_new_tokens: new_tokens,
        ..Default::default()
    };
    println!(
        "wick generate: GPT-2 124M geometry, {label}, CPU, {} threads, batch 1, 16-token prompt, {new_tokens} new tokens, greedy",
        candle_core::utils::get_num_threads()
    );
    let mut ttfts = vec![];
    let mut rates = vec![];
    for run in 0..=runs {
        let start = Instant::now();
        let mut first = None;
        let out = generate(
            model,
            std::slice::from_ref(&prompt),
            &opts,
            &Device::Cpu,
            |_, _| {
                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
                Ok(Flow::Continue)
            },
        )?;
        let total = start.elapsed().as_secs_f64();
        let n = out[0][0].ids.len();
        let ttft = first.unwrap_or(total);
        if run > 0 {
            ttfts.push(ttft);
            rates.push((n - 1) as f64 / (total - ttft));
        }
    }
    println!(
        "time to first token {:7.1} ms   decode {:6.1} tokens/s",
        median(ttfts) * 1e3,
        median(rates)
    );
    Ok(())
}
