use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::{as_gpt2, emit, gather_texts, BeamArgs, ModelArgs};
use crate::checkpoint::LoadOptions;
use crate::generation::{generate, Flow, GenerateOptions, Generation, ProcessorConfig, TextStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Truncate {
    /// A prompt that does not fit is an error.
    Error,
    /// Drop the oldest prompt tokens so prompt and new tokens fit the context.
    Left,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A prompt; repeat the flag to run several as one left-padded batch.
    #[arg(long)]
    prompt: Vec<String>,
    /// A file with one prompt per line (added after any --prompt).
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    max_new_tokens: usize,
    /// End-of-sequence is forbidden before this many new tokens.
    #[arg(long, default_value_t = 0)]
    min_new_tokens: usize,
    /// 0 is greedy decoding; above 0, sampling from softmax(logits / temperature).
    /// Default: 0.8, or 0 with --num-beams (beam search does not sample).
    #[arg(long, value_parser = super::finite_f64)]
    temperature: Option<f64>,
    /// Sample only among the k most probable tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches p (nucleus).
    #[arg(long, value_parser = super::finite_f64)]
    top_p: Option<f64>,
    /// Drop tokens less probable than min_p times the most probable one.
    #[arg(long, value_parser = super::finite_f64)]
    min_p: Option<f64>,
    /// Locally typical sampling with mass p.
    #[arg(long, value_parser = super::finite_f64)]
    typical_p: Option<f64>,
    /// transformers' repetition penalty: >1 discourages any token already present.
    #[arg(long, value_parser = super::finite_f32, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Subtracted from a logit once per earlier occurrence in the generated text.
    #[arg(long, value_parser = super::finite_f32, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Subtracted from a logit once if the token was generated before.
    #[arg(long, value_parser = super::finite_f32, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// No n-gram of this size occurs twice.
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram_size: usize,
    /// Stop when this text appears (repeatable); the stop string is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Continuations per prompt.
    #[arg(long, default_value_t = 1)]
    num_return_sequences: usize,
    #[command(flatten)]
    beams: BeamArgs,
    /// Seed for sampling (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// What to do with a prompt too long for the context.
    #[arg(long, value_enum, default_value_t = Truncate::Error)]
    truncate: Truncate,
    /// Keep generating past the context window on the most recent tokens.
    #[arg(long)]
    slide: bool,
    /// No speed report on stderr.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let processors = processors(&args)?;
    let prompts = gather_texts(
        &args.prompt,
        args.prompts_file.as_deref(),
        ("--prompt", "--prompts-file"),
    )?;
    let p = args.model.load(LoadOptions::default())?;
    let model = as_gpt2(&p, "generate")?;
    let tok = p.tokenizer()?;
    let device = args.model.device()?;
    let context = model.config().n_positions;
    let eos = p.eos_token_ids()?;
    let mut prompt_ids = Vec::with_capacity(prompts.len());
    for (i, text) in prompts.iter().enumerate() {
        let mut ids = tok.encode(text, false)?;
        if ids.is_empty() {
            anyhow::bail!("prompt {} encodes to no tokens", i + 1);
        }
        let room = context.saturating_sub(args.max_new_tokens).max(1);
        if args.truncate == Truncate::Left && ids.len() > room {
            ids.drain(..ids.len() - room);
        }
        prompt_ids.push(ids);
    }
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        processors: ProcessorConfig {
            eos_token_ids: eos.clone(),
            ..processors
        },
        seed: args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        }),
        num_return_sequences: args.num_return_sequences,
        num_beams: args.beams.num_beams,
        length_penalty: args.beams.length_penalty,
        early_stopping: args.beams.early_stopping,
        pad_token_id: eos.first().copied().unwrap_or(0),
        slide: args.slide,
    };

    let rows = prompt_ids.len() * args.num_return_sequences;
    // Stream to stdout only when there is one continuation to show as it grows.
    let stream = !args.model.json && rows == 1 && args.beams.num_beams == 1;
    let mut streams: Vec<TextStream> = (0..rows)
        .map(|_| TextStream::new(tok, &args.stop))
        .collect();
    let start = Instant::now();
    let mut first_token: Option<Duration> = None;
    // The prompt is echoed with the first token, once generation has accepted it: a
    // prompt refused (too long for the context) prints nothing but the error.
    let echo = |first_token: &Option<Duration>| {
        if stream && first_token.is_none() {
            print!("{}", prompts[0]);
        }
    };
    let generations = generate(model, &prompt_ids, &opts, &device, |row, id| {
        echo(&first_token);
        first_token.get_or_insert_with(|| start.elapsed());
        let (delta, flow) = streams[row].push(id)?;
        if stream && !delta.is_empty() {
            print!("{delta}");
            let _ = std::io::stdout().flush();
        }
        Ok(flow)
    })
    .context("generating from --prompt")?;
    let elapsed = start.elapsed();
    echo(&first_token); // no token came (0 new tokens)

    // Final texts: streamed rows already know theirs; beams are decoded now.
    let mut results = vec![];
    for (pi, gens) in generations.iter().enumerate() {
        for (si, g) in gens.iter().enumerate() {
            let row = pi * args.num_return_sequences + si;
            let text = if args.beams.num_beams > 1 {
                let mut s = TextStream::new(tok, &args.stop);
                for &id in &g.ids {
                    if s.push(id)?.1 == Flow::Stop {
                        break;
                    }
                }
                s.text().to_string()
            } else {
                if stream {
                    print!("{}", streams[row].finish());
                    println!();
                }
                streams[row].text().to_string()
            };
            results.push(Continuation {
                prompt: pi,
                generation: g,
                text,
            });
        }
    }
    if args.model.json {
        print_json(&results, &prompt_ids)?;
    } else if !stream {
        for r in &results {
            match r.generation.score {
                Some(s) => println!("[prompt {} · score {s:.4}]", r.prompt + 1),
                None => println!("[prompt {}]", r.prompt + 1),
            }
            println!("{}{}\n", prompts[r.prompt], r.text);
        }
    }
    if !args.quiet {
        report_speed(&results, elapsed, first_token);
    }
    Ok(())
}

/// One continuation: which prompt it continues, its ids and score, its text.
struct Continuation<'a> {
    prompt: usize,
    generation: &'a Generation,
    text: String,
}

/// The logits processors the flags ask for, checked.
fn processors(args: &Args) -> Result<ProcessorConfig> {
    let processors = ProcessorConfig {
        temperature: args
            .temperature
            .unwrap_or(if args.beams.num_beams > 1 { 0.0 } else { 0.8 }),
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        typical_p: args.typical_p,
        repetition_penalty: args.repetition_penalty,
        frequency_penalty: args.frequency_penalty,
        presence_penalty: args.presence_penalty,
        no_repeat_ngram_size: args.no_repeat_ngram_size,
        min_new_tokens: args.min_new_tokens,
        eos_token_ids: vec![],
        forced_eos: None,
        forced_bos: None,
    };
    processors.validate().map_err(anyhow::Error::msg)?;
    if args.beams.num_beams == 0 || args.num_return_sequences == 0 {
        anyhow::bail!("--num-beams and --num-return-sequences must be at least 1");
    }
    Ok(processors)
}

/// `--json`: the first continuation at the top level (as before several were possible),
/// and every continuation under `generations`.
fn print_json(results: &[Continuation], prompt_ids: &[Vec<u32>]) -> Result<()> {
    let first = &results[0];
    let all: Vec<_> = results
        .iter()
        .map(|r| {
            json!({"prompt_index": r.prompt, "prompt_ids": prompt_ids[r.prompt],
                   "token_ids": r.generation.ids, "text": r.text, "score": r.generation.score})
        })
        .collect();
    emit(
        true,
        &json!({"prompt_ids": prompt_ids[0], "token_ids": first.generation.ids,
                "text": first.text, "generations": all}),
        String::new,
    )
}

/// The speed report on stderr.
fn report_speed(results: &[Continuation], elapsed: Duration, first_token: Option<Duration>) {
    let lengths = results.iter().map(|r| r.generation.ids.len());
    let new_tokens: usize = lengths.clone().sum();
    let steps = lengths.max().unwrap_or(0);
    match first_token {
        // Streamed strategies: decode speed after the first token.
        Some(ttft) => {
            let decode = elapsed.saturating_sub(ttft).as_secs_f64();
            let rate = if steps > 1 && decode > 0.0 {
                (steps - 1) as f64 / decode
            } else {
                0.0
            };
            eprintln!(
                "[{new_tokens} new tokens in {:.2} s, time to first token {:.0} ms, \
                 {rate:.1} tokens/s per sequence]",
                elapsed.as_secs_f64(),
                ttft.as_secs_f64() * 1e3,
            );
        }
        // Beam search: only the whole search has a meaningful time.
        None => eprintln!(
            "[{new_tokens} new tokens in {:.2} s, {:.1} steps/s]",
            elapsed.as_secs_f64(),
            steps as f64 / elapsed.as_secs_f64().max(1e-9),
        ),
    }
}
