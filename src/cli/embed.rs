use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::{as_bert, emit, BatchArgs, ModelArgs, TextArgs};
use crate::checkpoint::LoadOptions;
use crate::files::atomic_write;
use crate::tasks::embed::{embed, Pooling};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: TextArgs,
    /// mean: average of the token states (sentence-transformers); cls: the [CLS] state.
    /// Default: a sentence-transformers folder's own (1_Pooling/config.json), else mean.
    #[arg(long, value_enum)]
    pooling: Option<Pooling>,
    /// L2-normalise each embedding (the default for a sentence-transformers folder with
    /// a Normalize module, as `wick serve` does).
    #[arg(long, conflicts_with = "no_normalize")]
    normalize: bool,
    /// Do not normalise, even where the folder's modules.json would.
    #[arg(long)]
    no_normalize: bool,
    #[command(flatten)]
    batch: BatchArgs,
    /// Write the embeddings to this file instead of stdout: `.npy` (an N x H float32
    /// matrix, rows in input order) or `.jsonl` (one {"text", "embedding"} per line).
    #[arg(long)]
    output: Option<PathBuf>,
}

enum Format {
    Npy,
    Jsonl,
}

pub fn run(args: Args) -> Result<()> {
    args.batch.check()?;
    let format = match &args.output {
        None => None,
        Some(p) => match p.extension().and_then(|e| e.to_str()) {
            Some("npy") => Some(Format::Npy),
            Some("jsonl") => Some(Format::Jsonl),
            _ => anyhow::bail!(
                "--output {}: the extension must be .npy or .jsonl",
                p.display()
            ),
        },
    };
    let texts = args.input.texts()?;
    let p = args.model.load(LoadOptions::default())?;
    let model = as_bert(&p, "embed")?;
    let (tok, device) = (p.tokenizer()?, args.model.device()?);
    let (folder_pooling, folder_normalize) = crate::tasks::embed::folder_pooling(&p.dir);
    let pooling = args.pooling.unwrap_or(folder_pooling);
    let normalize = args.normalize || (folder_normalize && !args.no_normalize);
    let e = args.batch.run(&texts, &device, "embedding", |b| {
        embed(
            model,
            tok,
            b,
            pooling,
            normalize,
            args.batch.max_length,
            &device,
        )
    })?;
    if let (Some(path), Some(format)) = (&args.output, format) {
        let bytes = match format {
            Format::Npy => crate::data::npy::npy_f32(&e),
            Format::Jsonl => texts
                .iter()
                .zip(&e)
                .map(|(t, v)| json!({"text": t, "embedding": v}).to_string() + "\n")
                .collect::<String>()
                .into_bytes(),
        };
        atomic_write(path, &bytes).with_context(|| format!("--output {}", path.display()))?;
        let dims = e.first().map_or(0, Vec::len);
        return emit(
            args.model.json,
            &json!({"output": path, "count": e.len(), "dims": dims}),
            || {
                format!(
                    "{} embeddings of {dims} dims -> {}",
                    e.len(),
                    path.display()
                )
            },
        );
    }
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
