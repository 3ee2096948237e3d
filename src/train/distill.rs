//! Sequence-level knowledge distillation (Kim & Rush 2016), the standard recipe for
//! non-autoregressive students (Gu et al. 2018; Mask-Predict): the student learns the
//! teacher's translations of the training sources, which are more consistent than
//! human references (one way to say a thing), instead of the references. The teacher is
//! a trained wick encoder-decoder, decoding as it was trained to (greedy, or
//! Mask-Predict's defaults for a non-autoregressive teacher). Its outputs are kept in
//! `<out>/distilled.tsv`, so a resumed run reads them rather than translating again.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;

use crate::checkpoint::{load, LoadOptions};
use crate::error::{Result, WickError};
use crate::generation::{GenerateOptions, MaskPredictOptions};
use crate::models::Model;
use crate::tasks::translate::{translate, Decoding};

/// Sources per batch when the teacher translates.
const BATCH: usize = 64;

/// Replaces the target of every pair with `teacher`'s translation of its source.
pub fn distill(
    teacher: &Path,
    pairs: &mut [(String, String)],
    out: &Path,
    device: &Device,
) -> Result<()> {
    let cache = out.join("distilled.tsv");
    let sources: Vec<String> = pairs.iter().map(|(s, _)| s.clone()).collect();
    if let Some(targets) = cached(&cache, &sources)? {
        for (p, t) in pairs.iter_mut().zip(targets) {
            p.1 = t;
        }
        println!(
            "distilled    {} targets read from {}",
            pairs.len(),
            cache.display()
        );
        return Ok(());
    }
    let name = teacher.to_string_lossy();
    let opts = LoadOptions {
        device: device.clone(),
        ..Default::default()
    };
    let flag = |e: WickError| WickError::Unsupported(format!("--distill-from {name}: {e}"));
    let p = load(&name, &opts).map_err(flag)?;
    let Model::Seq2Seq(model) = &p.model else {
        return Err(flag(WickError::Unsupported(format!(
            "a {} is not an encoder-decoder",
            p.model.architecture()
        ))));
    };
    let tok = p.tokenizer().map_err(flag)?;
    let decoding = match model.config().is_nat() {
        true => Decoding::MaskPredict(MaskPredictOptions::default()),
        false => Decoding::Autoregressive(GenerateOptions {
            max_new_tokens: 64,
            ..Default::default()
        }),
    };
    let started = Instant::now();
    let outputs =
        crate::tasks::map_batches_shown(&sources, BATCH, device.is_cpu(), "distilling", |b| {
            translate(model, tok, b, &decoding, device)
        })?;
    let mut tsv = String::new();
    for (p, t) in pairs.iter_mut().zip(outputs) {
        // One line per pair: a tab or newline in an output would split it.
        p.1 = t.text.replace(['\t', '\n', '\r'], " ");
        tsv.push_str(&format!("{}\t{}\n", p.0, p.1));
    }
    crate::files::atomic_write(&cache, tsv.as_bytes())?;
    println!(
        "distilled    {} targets from {name} in {:.1} s -> {}",
        pairs.len(),
        started.elapsed().as_secs_f64(),
        cache.display()
    );
    Ok(())
}

/// The targets in `cache` when it holds exactly these sources, in order.
fn cached(cache: &Path, sources: &[String]) -> Result<Option<Vec<String>>> {
    if !cache.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(cache).map_err(|e| WickError::io(cache, e))?;
    // Not read_pairs: a teacher may have written an empty translation.
    let pairs: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('\t')).collect();
    let same = pairs.len() == sources.len() && pairs.iter().zip(sources).all(|(p, s)| p.0 == s);
    Ok(same.then(|| pairs.into_iter().map(|(_, t)| t.to_string()).collect()))
}
