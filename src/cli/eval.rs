use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;

use super::{as_gpt2, emit, ModelArgs};
use crate::checkpoint::LoadOptions;
use crate::data::TokenBuffer;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to evaluate on (a file, a folder of .txt, or JSONL with `text`).
    #[arg(long)]
    data: PathBuf,
    /// Window length (default: the model's context).
    #[arg(long)]
    block_size: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

pub fn run(args: Args) -> Result<()> {
    let p = args.model.load(LoadOptions::default())?;
    let model = as_gpt2(&p, "eval")?;
    let tok = p.tokenizer()?;
    let docs = crate::data::read_documents(&args.data)
        .with_context(|| format!("--data {}", args.data.display()))?;
    let mut ids = Vec::new();
    for d in &docs {
        ids.extend(tok.encode(d, false)?);
    }
    let block = args
        .block_size
        .unwrap_or(p.config.max_positions())
        .min(p.config.max_positions());
    let n = ids.len();
    let loss = crate::train::evaluate::lm_loss_over(
        model,
        Arc::new(TokenBuffer::Owned(ids)),
        0,
        n,
        block,
        args.batch_size.max(1),
        &args.model.device()?,
    )
    .with_context(|| format!("evaluating on --data {}", args.data.display()))?;
    let v = json!({"loss": loss, "perplexity": loss.exp(), "tokens": n, "block_size": block});
    emit(args.model.json, &v, || {
        format!(
            "loss        {loss:.4}\nperplexity  {:.3}\ntokens      {n}",
            loss.exp()
        )
    })
}
