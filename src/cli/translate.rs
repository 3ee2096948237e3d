use anyhow::{Context, Result};
use serde_json::json;

use super::{emit, BeamArgs, DecodingArgs, ModelArgs, TextArgs};
use crate::checkpoint::LoadOptions;
use crate::generation::GenerateOptions;
use crate::models::Model;
use crate::tasks::translate::translate;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: TextArgs,
    #[command(flatten)]
    beams: BeamArgs,
    #[command(flatten)]
    decoding: DecodingArgs,
    /// Longest output, in tokens (autoregressive decoding; Mask-Predict's lengths go up
    /// to the model's nat_max_length).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sentences per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

pub fn run(args: Args) -> Result<()> {
    if args.beams.num_beams == 0 || args.batch_size == 0 {
        anyhow::bail!("--num-beams and --batch-size must be at least 1");
    }
    let texts = args.input.texts()?;
    let p = args.model.load(LoadOptions::default())?;
    let Model::Seq2Seq(model) = &p.model else {
        anyhow::bail!(
            "`wick translate` needs an encoder-decoder; {} is a {}",
            p.dir.display(),
            p.model.architecture()
        )
    };
    let (tok, device) = (p.tokenizer()?, args.model.device()?);
    let decoding = args.decoding.decoding(
        model,
        GenerateOptions {
            max_new_tokens: args.max_new_tokens,
            num_beams: args.beams.num_beams,
            length_penalty: args.beams.length_penalty,
            early_stopping: args.beams.early_stopping,
            ..Default::default()
        },
    )?;
    let batch = super::BatchArgs {
        batch_size: args.batch_size,
        max_length: None,
    };
    let out = batch
        .run(&texts, &device, "translating", |b| {
            translate(model, tok, b, &decoding, &device)
        })
        .context("translating")?;
    let context = model.config().max_position_embeddings;
    for (i, t) in out.iter().enumerate() {
        if let Some(n) = t.source_truncated_from {
            eprintln!(
                "warning: input {} is {n} tokens, over the model's context of {context}: only \
                 its first {context} were translated",
                i + 1
            );
        }
    }
    let items: Vec<_> = texts
        .iter()
        .zip(&out)
        .map(|(s, t)| {
            json!({"source": s, "text": t.text, "token_ids": t.token_ids, "score": t.score,
                   "source_truncated_from": t.source_truncated_from})
        })
        .collect();
    emit(args.model.json, &json!({"translations": items}), || {
        out.iter()
            .map(|t| t.text.clone())
            .collect::<Vec<_>>()
            .join("\n")
    })
}
