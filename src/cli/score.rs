use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{as_gpt2, emit, ModelArgs};
use crate::checkpoint::LoadOptions;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score (encoded without special tokens).
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    text: Option<String>,
    /// Score the contents of this file instead.
    #[arg(long)]
    file: Option<PathBuf>,
    /// For a text longer than the context: score it in context-sized windows that
    /// advance this many tokens (each token is scored once, with at least
    /// context - stride tokens before it).
    #[arg(long)]
    stride: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let p = args.model.load(LoadOptions::default())?;
    let model = as_gpt2(&p, "score")?;
    let tok = p.tokenizer()?;
    // Read and encoded piece by piece: memory follows the token ids, not the text.
    let ids = match (&args.text, &args.file) {
        (Some(t), _) => tok.encode_stream(t.as_bytes(), Path::new("--text"))?,
        (None, Some(f)) => {
            let file = std::fs::File::open(f).with_context(|| format!("--file {}", f.display()))?;
            tok.encode_stream(std::io::BufReader::new(file), f)
                .with_context(|| format!("--file {}", f.display()))?
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let s = crate::tasks::score::score_strided(model, &ids, args.stride, &args.model.device()?)
        .with_context(|| match args.stride {
            None => "scoring --text/--file (give --stride to score a longer text in windows)",
            Some(_) => "scoring --text/--file with --stride",
        })?;
    emit(args.model.json, &s, || {
        format!(
            "tokens      {}\nmean NLL    {:.4}\nperplexity  {:.3}",
            s.token_ids.len(),
            s.mean_nll,
            s.perplexity
        )
    })
}
