//! Where a training step of the default preset (shakespeare-char: 4 layers, n_embd 128,
//! batch 12 x block 64) spends its time: forward and backward (the batch as shards side
//! by side, as `wick train` runs it; `WICK_BENCH_SHARDS=1` runs it whole), optimizer. The end-to-end
//! figure (tokens/s, peak RSS) comes from `just bench-train`, which runs `wick train`.

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{DType, Device, Tensor};
use wick::checkpoint::WeightSource;
use wick::models::{Model, ModelConfig};
use wick::nn::loss::lm_loss;
use wick::train::optim::{AdamW, AdamWConfig};
use wick::train::shards::loss_and_grads;
use wick::train::Preset;

fn main() -> anyhow::Result<()> {
    wick::runtime::init().expect("runtime settings");
    eprintln!("cpu: {}", wick::runtime::cpu_features());
    let preset = Preset::find("shakespeare-char").unwrap()?;
    let mut cfg = preset.model.clone();
    cfg["vocab_size"] = 65.into();
    let cfg = ModelConfig::from_value(&cfg, std::path::Path::new("preset"))?;
    let w = WeightSource::from_scratch().with_seed(0);
    let Model::Gpt2(m) = Model::build(&cfg, None, w.var_builder(DType::F32, &Device::Cpu))? else {
        unreachable!()
    };
    let mut opt = AdamW::new(
        w.vars(),
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        true,
    )?;
    let (b, t) = (12usize, 64usize);
    let steps: usize = std::env::var("WICK_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let whole = std::env::var("WICK_BENCH_SHARDS").is_ok_and(|s| s == "1");
    if !whole {
        wick::runtime::candle_ops_on_caller();
    }
    let vars = w.vars();
    let (mut f, mut bw, mut o) = (0f64, 0f64, 0f64);
    for i in 0..steps + 3 {
        let x = Tensor::from_vec(
            (0..b * t)
                .map(|k| ((k * 31 + i * 7) % 65) as u32)
                .collect::<Vec<_>>(),
            (b, t),
            &Device::Cpu,
        )?;
        let y = Tensor::from_vec(
            (0..b * t)
                .map(|k| ((k * 17 + i * 3) % 65) as u32)
                .collect::<Vec<_>>(),
            (b, t),
            &Device::Cpu,
        )?;
        let s0 = Instant::now();
        let (s1, grads) = if whole {
            let loss = lm_loss(&m.forward(&x, None, None, true)?, &y)?;
            let _ = loss.to_scalar::<f32>()?;
            (Instant::now(), loss.backward()?)
        } else {
            // Forward and backward run inside each shard: timed together.
            let (_, grads) = loss_and_grads(&m, &x, &y, 1.0, i as u64, &vars)?;
            (s0, grads)
        };
        let s2 = Instant::now();
        let norm = opt.grad_norm(&grads)?;
        opt.step(&grads, 1e-3, if norm > 1.0 { 1.0 / norm } else { 1.0 })?;
        let s3 = Instant::now();
        if i >= 3 {
            f += (s1 - s0).as_secs_f64();
            bw += (s2 - s1).as_secs_f64();
            o += (s3 - s2).as_secs_f64();
        }
    }
    let n = steps as f64;
    let total = (f + bw + o) / n;
    let how = if whole {
        "whole"
    } else {
        "as shards side by side"
    };
    println!("shakespeare-char step (batch {b} x block {t}, {how}), mean of {steps}:");
    if whole {
        println!("  forward   {:7.1} ms", f / n * 1e3);
        println!("  backward  {:7.1} ms", bw / n * 1e3);
    } else {
        println!("  forward + backward {:7.1} ms", bw / n * 1e3);
    }
    println!("  optimizer {:7.1} ms", o / n * 1e3);
    println!(
        "  total     {:7.1} ms  ({:.0} tokens/s)",
        total * 1e3,
        (b * t) as f64 / total
    );
    Ok(())
}
