use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use super::{as_gpt2, emit, ModelArgs};
use crate::checkpoint::LoadOptions;
use crate::generation::{generate, GenerateOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 50)]
    max_new_tokens: usize,
    /// 0 is greedy decoding; above 0, sampling from softmax(logits / temperature).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Seed for sampling (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// No speed report on stderr.
    #[arg(long)]
    quiet: bool,
    /// Keep generating past the context window on the most recent tokens (otherwise a
    /// prompt plus --max-new-tokens beyond the context is an error).
    #[arg(long)]
    slide: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.temperature < 0.0 || !args.temperature.is_finite() {
        anyhow::bail!("--temperature must be >= 0, got {}", args.temperature);
    }
    let p = args.model.load(LoadOptions::default())?;
    let model = as_gpt2(&p, "generate")?;
    let tok = p.tokenizer()?;
    let device = args.model.device()?;
    let prompt_ids = tok.encode(&args.prompt, false)?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        seed: args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        }),
        eos_token_ids: p.config.eos_token_ids(),
        slide: args.slide,
    };
    let start = Instant::now();
    let mut first_token = None;
    let mut new_ids = vec![];
    let mut printed = 0usize;
    let stream = !args.model.json;
    if stream {
        print!("{}", args.prompt);
    }
    let ids = generate(model, &prompt_ids, &opts, &device, |id| {
        first_token.get_or_insert_with(|| start.elapsed());
        new_ids.push(id);
        if stream {
            // Print only complete characters: byte-level BPE can split one across tokens.
            let text = tok.decode(&new_ids, true)?;
            if !text.ends_with('\u{fffd}') && text.len() > printed {
                print!("{}", &text[printed..]);
                let _ = std::io::stdout().flush();
                printed = text.len();
            }
        }
        Ok(())
    })
    .context("generating from --prompt with --max-new-tokens")?;
    let elapsed = start.elapsed();
    let text = tok.decode(&ids, true)?;
    if stream {
        if text.len() > printed {
            print!("{}", &text[printed..]);
        }
        println!();
    } else {
        emit(
            true,
            &json!({"prompt_ids": prompt_ids, "token_ids": ids, "text": text}),
            String::new,
        )?;
    }
    if !args.quiet {
        let ttft = first_token.unwrap_or(elapsed);
        let decode = elapsed.saturating_sub(ttft).as_secs_f64();
        let rate = if ids.len() > 1 && decode > 0.0 {
            (ids.len() - 1) as f64 / decode
        } else {
            0.0
        };
        eprintln!(
            "[{} new tokens, time to first token {:.0} ms, {:.1} tokens/s]",
            ids.len(),
            ttft.as_secs_f64() * 1e3,
            rate
        );
    }
    Ok(())
}
