use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::{emit, ModelArgs};
use crate::checkpoint::{adapter, save_pretrained, side_files, LoadOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder to write: a plain checkpoint (config.json, model.safetensors, tokenizer).
    #[arg(long)]
    out: PathBuf,
}

/// Folds a LoRA adapter into its base (W + α/r·B·A) and writes a checkpoint that every
/// command, `quantize` and `export` among them, and transformers load without peft.
pub fn run(args: Args) -> Result<()> {
    super::refuse_model_out(&args.out)?;
    let mut p = args.model.load(LoadOptions::default())?;
    let Some(adapter_dir) = p.adapter.clone() else {
        anyhow::bail!(
            "--model {} carries no LoRA adapter: give an adapter folder as --model, or --adapter",
            args.model.model
        );
    };
    if p.weights.store().and_then(|s| s.quantization()).is_some() {
        anyhow::bail!(
            "the base of {} is quantized: merge into the f32 base",
            adapter_dir.display()
        );
    }
    let layers = adapter::count(&mut p.model);
    let tensors = adapter::merged_tensors(&mut p.model, p.weights.tensors())
        .with_context(|| format!("merging {}", adapter_dir.display()))?;
    let tmp = args.out.with_file_name(format!(
        ".{}.merging",
        args.out.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    save_pretrained(&tmp, &p.config, &tensors, p.tokenizer.as_ref())
        .and_then(|()| side_files::carry_sentence_transformers(&p.dir, &tmp))
        .with_context(|| format!("writing --out {}", args.out.display()))?;
    if args.out.exists() {
        // An empty folder, or one holding no model (holds_model said so): files beside ours stay.
        // (a module folder such as 1_Pooling moves whole)
        for e in std::fs::read_dir(&tmp)? {
            let e = e?;
            std::fs::rename(e.path(), args.out.join(e.file_name()))?;
        }
        std::fs::remove_dir(&tmp)?;
    } else {
        std::fs::rename(&tmp, &args.out)
            .with_context(|| format!("writing --out {}", args.out.display()))?;
    }
    let v = json!({"out": args.out, "adapter": adapter_dir, "merged_layers": layers});
    emit(args.model.json, &v, || {
        format!(
            "merged      {layers} LoRA updates of {} into {}\nwrote       {}",
            adapter_dir.display(),
            p.dir.display(),
            args.out.display()
        )
    })
}
