//! Labelled examples for sequence classification: CSV, TSV or JSONL with a text column
//! (optionally a second text column for sentence pairs) and a label column. Labels may
//! be strings; they map to class ids through the model's label2id when it has one, else
//! in sorted order.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Result, WickError};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct Example {
    pub text: String,
    pub pair: Option<String>,
    pub label: String,
}

/// Which columns hold what.
#[derive(Debug, Clone)]
pub struct Columns {
    /// Default: the first of `text`, `sentence`, `sentence1`.
    pub text: Option<String>,
    pub pair: Option<String>,
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            text: None,
            pair: None,
            label: "label".into(),
        }
    }
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> WickError {
    WickError::Unsupported(format!("{}: {msg}", path.display()))
}

fn pick_text(path: &Path, cols: &Columns, present: &[String]) -> Result<String> {
    match &cols.text {
        Some(t) if present.contains(t) => Ok(t.clone()),
        Some(t) => Err(bad(
            path,
            format!("no text column `{t}` (columns: {})", present.join(", ")),
        )),
        None => ["text", "sentence", "sentence1"]
            .iter()
            .find(|c| present.iter().any(|p| p == *c))
            .map(|c| c.to_string())
            .ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "no text column: pass --text-column (columns: {})",
                        present.join(", ")
                    ),
                )
            }),
    }
}

/// A label cell, refused when blank: it would become a class named "".
fn nonempty_label(path: &Path, row: &str, cols: &Columns, label: String) -> Result<String> {
    if label.trim().is_empty() {
        return Err(bad(
            path,
            format!("{row}: empty label in column `{}`", cols.label),
        ));
    }
    Ok(label)
}

/// Reads labelled examples; the format follows the extension (.csv, .tsv, .jsonl).
pub fn read_examples(path: &Path, cols: &Columns) -> Result<Vec<Example>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let text = std::fs::read(path).map_err(|e| WickError::io(path, e))?;
    let text = String::from_utf8(text).map_err(|e| {
        bad(
            path,
            format!("not UTF-8 (offset {})", e.utf8_error().valid_up_to()),
        )
    })?;
    let mut out = Vec::new();
    if ext == "jsonl" || ext == "json" {
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| bad(path, format!("line {}: {e}", i + 1)))?;
            let keys: Vec<String> = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let tcol = pick_text(path, cols, &keys)?;
            let field = |c: &str| -> Result<String> {
                match v.get(c) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(serde_json::Value::Null) | None => {
                        Err(bad(path, format!("line {}: no `{c}`", i + 1)))
                    }
                    Some(other) => Ok(other.to_string()),
                }
            };
            out.push(Example {
                text: field(&tcol)?,
                pair: cols.pair.as_deref().map(field).transpose()?,
                label: nonempty_label(path, &format!("line {}", i + 1), cols, field(&cols.label)?)?,
            });
        }
    } else {
        let delimiter = match ext.as_str() {
            "tsv" | "tab" => b'\t',
            "csv" => b',',
            _ => return Err(bad(path, "expected a .csv, .tsv or .jsonl file")),
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .quoting(delimiter == b',')
            .flexible(true)
            .from_reader(text.as_bytes());
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| bad(path, e))?
            .iter()
            .map(String::from)
            .collect();
        let tcol = pick_text(path, cols, &headers)?;
        let idx = |c: &str| {
            headers.iter().position(|h| h == c).ok_or_else(|| {
                bad(
                    path,
                    format!("no column `{c}` (columns: {})", headers.join(", ")),
                )
            })
        };
        let (ti, li) = (idx(&tcol)?, idx(&cols.label)?);
        let pi = cols.pair.as_deref().map(idx).transpose()?;
        for (i, rec) in reader.records().enumerate() {
            let rec = rec.map_err(|e| bad(path, e))?;
            let get = |j: usize| {
                rec.get(j)
                    .map(String::from)
                    .ok_or_else(|| bad(path, format!("row {}: too few columns", i + 2)))
            };
            out.push(Example {
                text: get(ti)?,
                pair: pi.map(get).transpose()?,
                label: nonempty_label(path, &format!("row {}", i + 2), cols, get(li)?)?,
            });
        }
    }
    if out.is_empty() {
        return Err(bad(path, "no examples"));
    }
    Ok(out)
}

/// The class id of a label: its position among the model's label names, or, for a model
/// with generic names (`LABEL_0`, ...), the label read as a class number.
pub fn label_id(label: &str, labels: &[String]) -> Option<u32> {
    labels
        .iter()
        .position(|l| l == label)
        .or_else(|| label.parse::<usize>().ok().filter(|&i| i < labels.len()))
        .map(|i| i as u32)
}

/// `--label-names`: one label name per line, blank lines skipped.
pub fn read_label_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() < 2 {
        return Err(WickError::Unsupported(format!(
            "--label-names {}: needs at least two label names, one per line",
            path.display()
        )));
    }
    Ok(names)
}

/// The labels a cell holds: one, or for multi-label data several, comma-separated.
pub fn label_parts(cell: &str, multi: bool) -> Vec<&str> {
    if !multi {
        return vec![cell];
    }
    cell.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Whether any example carries several comma-separated labels.
pub fn looks_multi_label(examples: &[Example]) -> bool {
    examples.iter().any(|e| e.label.contains(','))
}

/// Label names in class-id order: the model's own when it has them, else the labels of
/// `examples` (read from `source`), at least two, sorted (as numbers when all are).
pub fn label_set(
    examples: &[Example],
    existing: &[String],
    source: &Path,
    multi: bool,
) -> Result<Vec<String>> {
    if !existing.is_empty() {
        for e in examples {
            for part in label_parts(&e.label, multi) {
                if label_id(part, existing).is_none() {
                    return Err(WickError::Unsupported(format!(
                        "{}: label `{part}` is not one of the model's labels ({})",
                        source.display(),
                        existing.join(", ")
                    )));
                }
            }
        }
        return Ok(existing.to_vec());
    }
    let set: BTreeSet<&str> = examples
        .iter()
        .flat_map(|e| label_parts(&e.label, multi))
        .collect();
    if set.len() < 2 {
        // transformers would read num_labels = 1 as a regression head.
        return Err(WickError::Unsupported(format!(
            "{}: every example has the label `{}`: a classifier needs at least two classes",
            source.display(),
            set.first().copied().unwrap_or_default()
        )));
    }
    let mut labels: Vec<String> = set.into_iter().map(String::from).collect();
    if labels.iter().all(|l| l.parse::<u64>().is_ok()) {
        labels.sort_by_key(|l| l.parse::<u64>().unwrap_or(u64::MAX));
    }
    Ok(labels)
}

/// Tokenized examples served as padded batches, shuffled per epoch with a seed.
pub struct ClassifyBatches {
    ids: Vec<(Vec<u32>, Vec<u32>)>, // (token ids, token types)
    /// Each example's class ids (one, unless multi-label).
    labels: Vec<Vec<u32>>,
    /// Multi-label: the number of classes (targets are 0/1 rows of that width).
    multi_hot: Option<usize>,
    batch_size: usize,
    pad: u32,
    order: super::order::EpochOrder,
}

impl ClassifyBatches {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        examples: &[Example],
        labels: &[String],
        tok: &Tokenizer,
        max_len: usize,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
        pad: u32,
        multi_label: bool,
    ) -> Result<Self> {
        let mut ids = Vec::with_capacity(examples.len());
        let mut ys = Vec::with_capacity(examples.len());
        for e in examples {
            let (mut t, mut tt) = match &e.pair {
                Some(p) => tok.encode_pair(&e.text, p)?,
                None => {
                    let t = tok.encode(&e.text, true)?;
                    let n = t.len();
                    (t, vec![0; n])
                }
            };
            if t.len() > max_len {
                let last = *t.last().unwrap();
                t.truncate(max_len);
                tt.truncate(max_len);
                *t.last_mut().unwrap() = last;
            }
            ids.push((t, tt));
            let ids_of = label_parts(&e.label, multi_label)
                .into_iter()
                .map(|part| {
                    label_id(part, labels).ok_or_else(|| {
                        WickError::Unsupported(format!(
                            "label `{part}` is not one of the model's labels ({})",
                            labels.join(", ")
                        ))
                    })
                })
                .collect::<Result<Vec<u32>>>()?;
            ys.push(ids_of);
        }
        Ok(Self {
            ids,
            labels: ys,
            multi_hot: multi_label.then_some(labels.len()),
            batch_size,
            pad,
            order: super::order::EpochOrder::new(examples.len(), seed, shuffle),
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Batch `n`: (ids, token types, mask, labels); labels are class ids (B,) u32, or for
    /// multi-label 0/1 rows (B, classes) f32. The last batch of a pass over the data in
    /// order may be short.
    pub fn batch(&mut self, n: usize, device: &Device) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let picks = self.order.batch(n, self.batch_size);
        let seqs: Vec<Vec<u32>> = picks.iter().map(|&i| self.ids[i].0.clone()).collect();
        let types: Vec<Vec<u32>> = picks.iter().map(|&i| self.ids[i].1.clone()).collect();
        let (ids, mask) = super::pad_batch(&seqs, self.pad, super::Padding::Right, device)?;
        let (tt, _) = super::pad_batch(&types, 0, super::Padding::Right, device)?;
        let y = match self.multi_hot {
            None => Tensor::new(
                picks.iter().map(|&i| self.labels[i][0]).collect::<Vec<_>>(),
                device,
            )?,
            Some(c) => {
                let mut hot = vec![0f32; picks.len() * c];
                for (row, &i) in picks.iter().enumerate() {
                    for &l in &self.labels[i] {
                        hot[row * c + l as usize] = 1.0;
                    }
                }
                Tensor::from_vec(hot, (picks.len(), c), device)?
            }
        };
        Ok((ids, tt, mask, y))
    }

    /// Batches in one ordered pass.
    pub fn batches_per_pass(&self) -> usize {
        self.len().div_ceil(self.batch_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tsv_csv_jsonl_and_names_missing_columns() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(
            p.join("a.tsv"),
            "sentence\tlabel\ngood movie\t1\nbad, awful\t0\n",
        )
        .unwrap();
        let ex = read_examples(&p.join("a.tsv"), &Columns::default()).unwrap();
        assert_eq!(
            (ex[1].text.as_str(), ex[1].label.as_str()),
            ("bad, awful", "0")
        );
        std::fs::write(
            p.join("b.csv"),
            "text,label\n\"fine, really\",pos\nmeh,neg\n",
        )
        .unwrap();
        let ex = read_examples(&p.join("b.csv"), &Columns::default()).unwrap();
        assert_eq!(ex[0].text, "fine, really");
        assert_eq!(
            label_set(&ex, &[], Path::new("t.tsv"), false).unwrap(),
            vec!["neg", "pos"]
        );
        std::fs::write(p.join("c.jsonl"), "{\"text\": \"x\", \"label\": 2}\n").unwrap();
        assert_eq!(
            read_examples(&p.join("c.jsonl"), &Columns::default()).unwrap()[0].label,
            "2"
        );
        let cols = Columns {
            label: "stars".into(),
            ..Columns::default()
        };
        let e = read_examples(&p.join("a.tsv"), &cols)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.tsv") && e.contains("stars"), "{e}");
        assert!(label_set(&ex, &["neg".into()], Path::new("t.tsv"), false)
            .unwrap_err()
            .to_string()
            .contains("pos"));
    }
}
