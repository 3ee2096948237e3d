//! Greedy decoding and sampling over a batch of prompts. Prompts of different lengths
//! are left-padded and masked ([`Padded`]; transformers' convention for decoder-only models), so
//! every row computes what it would alone; the prompt is prefilled in one pass and each
//! step then feeds one token per row through the KV cache.

use candle_core::Device;
use rand::{rngs::StdRng, SeedableRng};

use super::decoder::Decoder;
use super::{sampler, Flow, GenerateOptions};
use crate::data::padding::Padded;
use crate::error::{Result, WickError};

/// Checks that prompts fit the decoder's context (with room for the new tokens unless
/// the window may slide). Shared by every strategy.
pub(crate) fn check_prompts(
    prompts: &[Vec<u32>],
    max_len: usize,
    opts: &GenerateOptions,
) -> Result<()> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(WickError::Unsupported("a prompt is empty".into()));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest > max_len {
        return Err(WickError::TooLong {
            len: longest,
            max: max_len,
        });
    }
    if longest.saturating_add(opts.max_new_tokens) > max_len && !opts.slide {
        return Err(WickError::Unsupported(format!(
            "a prompt of {longest} tokens plus {} new tokens exceeds the model's context of \
             {max_len} tokens (use --slide to keep going on the most recent tokens, or \
             --truncate left to drop the oldest prompt tokens)",
            opts.max_new_tokens
        )));
    }
    Ok(())
}

/// Feeds what the decoder has not seen yet and returns the last logits (B, V) as rows.
/// When the window is full it restarts on the most recent `max_len - 1` tokens.
pub(crate) fn next_logits(
    dec: &mut dyn Decoder,
    padded: &Padded,
    fed: &mut usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let unfed = padded.len() - *fed;
    // The cache holds the columns just before `fed`; the mask must cover them too.
    let (start, window_start) = if dec.past_len() + unfed > dec.max_len() {
        dec.reset();
        let w = padded.len() + 1 - dec.max_len();
        (w, w)
    } else {
        (*fed, *fed - dec.past_len())
    };
    let ids = padded.tokens_from(start, device)?;
    let mask = padded.mask_from(window_start, device)?;
    let logits = dec.step(&ids, mask.as_ref())?;
    *fed = padded.len();
    Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

/// Greedy or sampled continuation of each prompt. `on_token(row, id)` sees every new
/// token as it is chosen and may end that row. Returns each row's new ids (an EOS that
/// ended a row included, as transformers does).
pub fn sample(
    dec: &mut dyn Decoder,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    device: &Device,
    on_token: &mut dyn FnMut(usize, u32) -> Result<Flow>,
) -> Result<Vec<Vec<u32>>> {
    check_prompts(prompts, dec.max_len(), opts)?;
    let cfg = &opts.processors;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut padded = Padded::new(prompts, opts.pad_token_id);
    let mut fed = 0;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut done = vec![false; prompts.len()];
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    for _ in 0..opts.max_new_tokens {
        let mut rows = next_logits(dec, &padded, &mut fed, device)?;
        let mut next = vec![opts.pad_token_id; prompts.len()];
        for (r, logits) in rows.iter_mut().enumerate() {
            if done[r] {
                continue;
            }
            let id = sampler::choose(cfg, logits, &history[r], &out[r], &mut rng);
            next[r] = id;
            out[r].push(id);
            history[r].push(id);
            let flow = on_token(r, id)?;
            done[r] = flow == Flow::Stop || cfg.eos_token_ids.contains(&id);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        padded.push(&next);
    }
    Ok(out)
}
