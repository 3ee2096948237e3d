use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;

use super::{as_gpt2, emit, ModelArgs};
use crate::checkpoint::{LoadOptions, Pretrained};
use crate::data::labeled::{label_set, read_examples, ClassifyBatches, Columns};
use crate::data::TokenBuffer;
use crate::models::Model;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to evaluate on (a file, a folder of .txt, or JSONL with `text`); for a
    /// classifier, CSV/TSV/JSONL with text and label columns.
    #[arg(long)]
    data: PathBuf,
    /// Classifier: the text column (default: text, sentence or sentence1).
    #[arg(long)]
    text_column: Option<String>,
    /// Classifier: a second text column, for sentence pairs.
    #[arg(long)]
    pair_column: Option<String>,
    /// Classifier: the label column.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Window length (default: the model's context).
    #[arg(long)]
    block_size: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Multi-label classifier: predict a label when its probability reaches this
    /// (default: the folder's thresholds.json, one per label, else 0.5).
    #[arg(long, value_parser = super::finite_f64)]
    threshold: Option<f64>,
    /// Multi-label classifier: choose each label's threshold on --data (the one that
    /// maximises its F1) and report the figures there.
    #[arg(long)]
    tune_thresholds: bool,
    /// With --tune-thresholds: write them to this file (put it in the model folder as
    /// thresholds.json for classify and eval to use).
    #[arg(long, requires = "tune_thresholds")]
    save_thresholds: Option<PathBuf>,
    /// Translator: targets are label sets (as trained with --labels-as-target); also
    /// reports micro-/macro-F1 and exact match of the decoded sets.
    #[arg(long)]
    labels_as_target: bool,
    /// With --labels-as-target: one label name per line, naming the data's numeric ids.
    #[arg(long)]
    label_names: Option<PathBuf>,
    /// Translator: beams for the BLEU translations (1 = greedy).
    #[arg(long, default_value_t = 1)]
    num_beams: usize,
    #[command(flatten)]
    decoding: super::DecodingArgs,
}

pub fn run(args: Args) -> Result<()> {
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let p = args.model.load(LoadOptions::default())?;
    if matches!(&p.model, Model::Bert(b) if b.has_classifier()) {
        return eval_classifier(&args, &p);
    }
    if let Model::Seq2Seq(m) = &p.model {
        return eval_translator(&args, &p, m);
    }
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
    let loss = crate::eval::lm_loss_over(
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

/// Loss, accuracy and macro-F1 of a BERT classifier on labelled examples.
fn eval_classifier(args: &Args, p: &Pretrained) -> Result<()> {
    let Model::Bert(model) = &p.model else {
        unreachable!("checked by the caller")
    };
    let cols = Columns {
        text: args.text_column.clone(),
        pair: args.pair_column.clone(),
        label: args.label_column.clone(),
    };
    let data = || format!("--data {}", args.data.display());
    let examples = read_examples(&args.data, &cols).with_context(data)?;
    let labels = model.config().labels();
    let multi = model.config().multi_label();
    label_set(&examples, &labels, &args.data, multi).with_context(data)?;
    let max_len = args
        .block_size
        .unwrap_or(p.config.max_positions())
        .min(p.config.max_positions());
    let pad = model.config().pad_token_id.unwrap_or(0);
    let mut batches = ClassifyBatches::new(
        &examples,
        &labels,
        p.tokenizer()?,
        max_len,
        args.batch_size,
        0,
        false,
        pad,
        multi,
    )?;
    if multi {
        let device = args.model.device()?;
        let s = if args.tune_thresholds {
            let s =
                crate::eval::tune_thresholds(model, &mut batches, &device).with_context(data)?;
            if let Some(f) = &args.save_thresholds {
                s.threshold
                    .save(f, &model.config().labels())
                    .with_context(|| format!("--save-thresholds {}", f.display()))?;
            }
            s
        } else {
            let t = super::thresholds(p, args.threshold)?;
            crate::eval::multi_label_over(model, &mut batches, &t, &device).with_context(data)?
        };
        let shown = match &s.threshold {
            crate::eval::Thresholds::All(t) => format!("threshold {t}"),
            crate::eval::Thresholds::PerLabel(_) => "a threshold per label".into(),
        };
        return emit(args.model.json, &s, || {
            format!(
                "loss         {:.4}\nmicro-F1     {:.4}\nmacro-F1     {:.4}\nexact match  {:.2}%\nexamples     {} ({shown})",
                s.loss,
                s.micro_f1,
                s.macro_f1,
                s.exact_match * 100.0,
                s.examples,
            )
        });
    }
    if args.tune_thresholds {
        anyhow::bail!("--tune-thresholds applies to a multi-label classifier");
    }
    let s = crate::eval::classify_over(model, &mut batches, &args.model.device()?)
        .with_context(data)?;
    emit(args.model.json, &s, || {
        format!(
            "loss        {:.4}\naccuracy    {:.2}%\nmacro-F1    {:.4}\nexamples    {}",
            s.loss,
            s.accuracy * 100.0,
            s.macro_f1,
            s.examples
        )
    })
}

/// Token loss (teacher-forced) and corpus BLEU (sacreBLEU's definition) of an
/// encoder-decoder on `source<TAB>target` pairs.
fn eval_translator(args: &Args, p: &Pretrained, model: &crate::models::Seq2Seq) -> Result<()> {
    use crate::data::nat::NatBatches;
    use crate::data::pairs::{encode_pairs, read_pairs, PairBatches};
    use crate::tasks::translate::Decoding;
    let data = || format!("--data {}", args.data.display());
    let mut pairs = read_pairs(&args.data).with_context(data)?;
    let names = args
        .label_names
        .as_deref()
        .map(crate::data::labeled::read_label_names)
        .transpose()?;
    if args.labels_as_target {
        crate::data::pairs::labels_as_target(&mut pairs, names.as_deref()).with_context(data)?;
    }
    let (tok, device, c) = (p.tokenizer()?, args.model.device()?, model.config());
    let decoding = args.decoding.decoding(
        model,
        crate::generation::GenerateOptions {
            max_new_tokens: 64,
            num_beams: args.num_beams.max(1),
            ..Default::default()
        },
    )?;
    // The held-out loss is the one the model trained on: teacher-forced next-token
    // cross-entropy, or the non-autoregressive masked-target loss (fixed masks).
    let (loss, length_accuracy) = if c.is_nat() {
        let max = c.nat_max_length.unwrap_or(c.max_position_embeddings);
        let mask = c.mask_token_id.unwrap_or(c.pad_token_id);
        let encoded = encode_pairs(tok, &pairs, c.framing(), max)?;
        let mut batches = NatBatches::new(encoded, args.batch_size, 0, false, c.pad_token_id, mask);
        let (loss, acc) =
            crate::eval::nat_loss_over(model, &mut batches, &device).with_context(data)?;
        (loss, Some(acc))
    } else {
        let encoded = encode_pairs(tok, &pairs, c.framing(), c.max_position_embeddings)?;
        let mut batches = PairBatches::new(
            encoded,
            args.batch_size,
            0,
            false,
            c.pad_token_id,
            c.bos_token_id,
        );
        let loss =
            crate::eval::seq2seq_loss_over(model, &mut batches, &device).with_context(data)?;
        (loss, None)
    };
    let sources: Vec<String> = pairs.iter().map(|(s, _)| s.clone()).collect();
    let batch = super::BatchArgs {
        batch_size: args.batch_size.max(1) * 4,
        max_length: None,
    };
    let hyps: Vec<String> = batch
        .run(&sources, &device, "translating", |b| {
            crate::tasks::translate::translate(model, tok, b, &decoding, &device)
        })?
        .into_iter()
        .map(|t| t.text)
        .collect();
    let refs: Vec<String> = pairs.into_iter().map(|(_, t)| t).collect();
    let bleu = crate::tasks::bleu::corpus_bleu(&hyps, &refs);
    let (decoded, how) = match &decoding {
        Decoding::Autoregressive(o) => (
            json!({"decoding": "autoregressive", "num_beams": o.num_beams}),
            format!("{} beam(s)", o.num_beams),
        ),
        Decoding::MaskPredict(o) => (
            json!({"decoding": "nat", "iterations": o.iterations, "length_beam": o.length_beam,
                   "length_accuracy": length_accuracy}),
            format!(
                "Mask-Predict, {} iteration(s), {} length(s)",
                o.iterations, o.length_beam
            ),
        ),
    };
    let mut v = json!({"loss": loss, "perplexity": loss.exp(), "bleu": bleu.score,
                   "bleu_detail": bleu, "pairs": refs.len()});
    for (k, x) in decoded.as_object().into_iter().flatten() {
        v[k] = x.clone();
    }
    let mut sets = String::new();
    if args.labels_as_target {
        let s = label_set_scores(&hyps, &refs, names.as_deref().unwrap_or(&[]));
        sets = format!(
            "\nmicro-F1    {:.4}\nmacro-F1    {:.4}\nexact match {:.2}% (label sets)",
            s.0,
            s.1,
            s.2 * 100.0
        );
        v["micro_f1"] = s.0.into();
        v["macro_f1"] = s.1.into();
        v["exact_match"] = s.2.into();
        v["per_label"] = serde_json::to_value(&s.3)?;
    }
    emit(args.model.json, &v, || {
        format!(
            "loss        {loss:.4}\nperplexity  {:.3}\nBLEU        {:.2} (sacreBLEU 13a, {how})\npairs       {}{sets}",
            loss.exp(),
            bleu.score,
            refs.len()
        )
    })
}

/// Set metrics of decoded label sets against the references' (micro-F1, macro-F1, exact
/// match, per label), over `names` and every label either side writes.
fn label_set_scores(
    hyps: &[String],
    refs: &[String],
    names: &[String],
) -> (f64, f64, f64, Vec<crate::eval::LabelF1>) {
    use crate::data::pairs::label_set_of;
    let (h, r): (Vec<Vec<String>>, Vec<Vec<String>>) = (
        hyps.iter().map(|t| label_set_of(t)).collect(),
        refs.iter().map(|t| label_set_of(t)).collect(),
    );
    let mut universe: Vec<String> = names.to_vec();
    let mut seen: Vec<String> = h.iter().chain(&r).flatten().cloned().collect();
    seen.sort();
    seen.dedup();
    universe.extend(seen.into_iter().filter(|l| !names.contains(l)));
    let rows = |sets: &[Vec<String>]| -> Vec<Vec<bool>> {
        sets.iter()
            .map(|s| universe.iter().map(|l| s.contains(l)).collect())
            .collect()
    };
    crate::eval::multi_label_scores(&rows(&r), &rows(&h), &universe)
}
