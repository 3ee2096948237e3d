use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::{emit, ModelArgs};
use crate::checkpoint::gguf_export::{export_gguf, GgufType};
use crate::checkpoint::LoadOptions;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The GGUF file to write (llama.cpp's gpt2 layout); must not exist yet.
    #[arg(long)]
    out: PathBuf,
    /// Storage of the weights: f32, f16, or the linear layers in q8_0 or q4k blocks.
    #[arg(long, value_enum, default_value_t = GgufType::F16)]
    dtype: GgufType,
}

pub fn run(args: Args) -> Result<()> {
    if args.out.exists() {
        anyhow::bail!(
            "--out {} already exists: choose a new file; nothing was overwritten",
            args.out.display()
        );
    }
    let p = args.model.load(LoadOptions::default())?;
    if let Some(a) = &p.adapter {
        anyhow::bail!(
            "--model carries the LoRA adapter {}: fold it in first with `wick merge --out DIR`, \
             then pass DIR",
            a.display()
        );
    }
    let tensors = export_gguf(&p, &args.out, args.dtype)
        .with_context(|| format!("exporting --model {} to GGUF", args.model.model))?;
    let size = std::fs::metadata(&args.out)?.len();
    let v = json!({"out": args.out, "tensors": tensors, "bytes": size});
    emit(args.model.json, &v, || {
        format!(
            "wrote       {} ({} tensors, {:.1} MiB), llama.cpp's gpt2 layout",
            args.out.display(),
            tensors.len(),
            size as f64 / (1 << 20) as f64
        )
    })
}
