use anyhow::Result;
use serde_json::json;

use super::{as_bert, emit, ModelArgs};
use crate::checkpoint::LoadOptions;
use crate::tasks::fill_mask::fill_mask;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text with one or more of the tokenizer's mask tokens ([MASK], <mask>).
    #[arg(long)]
    text: String,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
}

pub fn run(args: Args) -> Result<()> {
    if args.top_k == 0 {
        anyhow::bail!("--top-k must be at least 1");
    }
    let p = args.model.load(LoadOptions::default())?;
    let model = as_bert(&p, "fill-mask")?;
    let per_mask = fill_mask(
        model,
        p.tokenizer()?,
        &args.text,
        args.top_k,
        &args.model.device()?,
    )?;
    // `predictions` is for the first mask token; `per_mask` lists every one.
    let value = json!({"predictions": per_mask[0], "per_mask": per_mask});
    emit(args.model.json, &value, || {
        per_mask
            .iter()
            .enumerate()
            .map(|(i, preds)| {
                let lines: Vec<String> = preds
                    .iter()
                    .map(|p| format!("  {:>7.4}  {} ({})", p.score, p.token, p.token_id))
                    .collect();
                format!("mask #{}\n{}", i + 1, lines.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}
