use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::{as_bert, emit, gather_texts, ModelArgs};
use crate::checkpoint::LoadOptions;
use crate::tasks::embed::{embed, Pooling};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A text to embed (repeatable).
    #[arg(long)]
    text: Vec<String>,
    /// One text per line.
    #[arg(long)]
    file: Option<PathBuf>,
    /// mean: average of the token states (sentence-transformers); cls: the [CLS] state.
    #[arg(long, value_enum, default_value = "mean")]
    pooling: Pooling,
    /// L2-normalise each embedding.
    #[arg(long)]
    normalize: bool,
    /// Truncate inputs to this many tokens (default: the model's context).
    #[arg(long)]
    max_length: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let texts = gather_texts(&args.text, args.file.as_deref())?;
    let p = args.model.load(LoadOptions::default())?;
    let model = as_bert(&p, "embed")?;
    if args.max_length == Some(0) {
        anyhow::bail!("--max-length must be at least 1");
    }
    let e = embed(
        model,
        p.tokenizer()?,
        &texts,
        args.pooling,
        args.normalize,
        args.max_length,
        &args.model.device()?,
    )?;
    emit(args.model.json, &json!({"embeddings": e}), || {
        e.iter()
            .zip(&texts)
            .map(|(v, t)| {
                let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.4}")).collect();
                format!("[{}, ...] ({} dims)  {t}", head.join(", "), v.len())
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}
