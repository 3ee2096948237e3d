use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::{emit, ModelArgs};
use crate::checkpoint::{quantize_model, save_quantized, LoadOptions, QuantFormat};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder to write (model.gguf, config.json, tokenizer.json).
    #[arg(long)]
    out: PathBuf,
    /// Block format of the linear layers.
    #[arg(long, value_enum)]
    format: QuantFormat,
}

pub fn run(args: Args) -> Result<()> {
    super::refuse_model_out(&args.out)?;
    let mut p = args.model.load(LoadOptions::default())?;
    if let Some(a) = &p.adapter {
        anyhow::bail!(
            "--model carries the LoRA adapter {}: fold it in first with `wick merge --out DIR`, \
             then pass DIR",
            a.display()
        );
    }
    if p.weights.store().and_then(|s| s.quantization()).is_some() {
        anyhow::bail!(
            "--model {} is already quantized: quantize the original checkpoint",
            args.model.model
        );
    }
    let layers = quantize_model(&mut p.model, &p.weights, args.format)
        .with_context(|| format!("quantizing --model {}", args.model.model))?;
    save_quantized(&args.out, &mut p, args.format)
        .with_context(|| format!("writing --out {}", args.out.display()))?;
    let size = std::fs::metadata(args.out.join("model.gguf"))?.len();
    let kept: Vec<&str> = layers
        .iter()
        .filter(|l| l.dtype.is_none())
        .map(|l| l.name.as_str())
        .collect();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for l in &layers {
        *counts
            .entry(l.dtype.as_deref().unwrap_or("f32"))
            .or_default() += 1;
    }
    let value = json!({
        "out": args.out,
        "format": args.format.name(),
        "layers": layers,
        "bytes": size,
    });
    emit(args.model.json, &value, || {
        let mut s = format!(
            "quantized   {} linear layers: {}\nwrote       {} ({:.1} MiB)",
            layers.len(),
            counts
                .iter()
                .map(|(d, n)| format!("{n} {d}"))
                .collect::<Vec<_>>()
                .join(", "),
            args.out.join("model.gguf").display(),
            size as f64 / (1 << 20) as f64
        );
        if !kept.is_empty() {
            s += &format!(
                "\nkept f32    {} (rows fit no block size): {}",
                kept.len(),
                kept.join(", ")
            );
        }
        s
    })
}
