//! Quantized checkpoints for CPU inference. Decoding a small model is bound by how fast
//! the weights stream from memory, so storing the linear layers in ggml's block formats
//! (8.5 bits per weight for q8_0, 4.5 for q4k) and multiplying them with candle's
//! quantized kernels speeds generation up by about the size ratio.
//!
//! A quantized folder holds `model.gguf` (the linear weights as ggml blocks in (out, in)
//! orientation, every other tensor in f32, all under their Hugging Face names) beside the
//! usual config.json and tokenizer; `load` reads it like any checkpoint.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use super::store::{GGUF_ALIASES_KEY, GGUF_FORMAT_KEY, GGUF_TRANSPOSED_KEY};
use super::{Pretrained, TensorStore, WeightSource};
use crate::error::{Result, WickError};
use crate::files::atomic_write;
use crate::models::Model;
use crate::nn::Linear;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantFormat {
    /// 8-bit blocks of 32 weights with one f16 scale (8.5 bits per weight).
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit k-quant super-blocks of 256 weights (4.5 bits per weight).
    #[value(name = "q4k")]
    Q4K,
}

impl QuantFormat {
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4K => "q4k",
        }
    }

    /// Block types to try, best first: a row whose length is not a multiple of q4k's
    /// 256-weight super-block falls back to q8_0 (32), as llama.cpp does.
    fn candidates(self) -> &'static [GgmlDType] {
        match self {
            QuantFormat::Q8_0 => &[GgmlDType::Q8_0],
            QuantFormat::Q4K => &[GgmlDType::Q4K, GgmlDType::Q8_0],
        }
    }
}

/// What quantization did to each linear layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizedLayer {
    pub name: String,
    /// `None`: kept in f32 (its rows fit no block size).
    pub dtype: Option<String>,
}

fn linears_mut(model: &mut Model) -> Result<Vec<&mut Linear>> {
    match model {
        Model::Gpt2(m) => Ok(m.linears_mut()),
        other => Err(WickError::Unsupported(format!(
            "quantization supports GPT-2 models; this is a {}",
            other.architecture()
        ))),
    }
}

/// Quantizes every linear layer of `model` in place (the LM head included: it is the
/// largest matrix of a small GPT-2), dropping the dense copies `weights` kept.
pub fn quantize_model(
    model: &mut Model,
    weights: &WeightSource,
    format: QuantFormat,
) -> Result<Vec<QuantizedLayer>> {
    let mut done = Vec::new();
    for lin in linears_mut(model)? {
        let Some(w) = lin.weight_out_in() else {
            return Err(WickError::Unsupported(format!(
                "`{}` is already quantized",
                lin.name()
            )));
        };
        let in_dim = w.dim(1)?;
        let dtype = format
            .candidates()
            .iter()
            .copied()
            .find(|d| in_dim.is_multiple_of(d.block_size()));
        if let Some(dtype) = dtype {
            let q = QTensor::quantize(&w.to_device(&Device::Cpu)?.contiguous()?, dtype)?;
            lin.set_quantized(Arc::new(q))?;
            weights.forget_quantized(&format!("{}.weight", lin.name()));
        }
        done.push(QuantizedLayer {
            name: lin.name().to_string(),
            dtype: dtype.map(|d| format!("{d:?}").to_lowercase()),
        });
    }
    if let Model::Gpt2(m) = model {
        m.tie_embedding_to_quantized_head()?;
    }
    Ok(done)
}

/// Replaces the linear weights of a model built from a quantized checkpoint by the
/// blocks stored for them (the build itself read dequantized copies).
pub fn attach_quantized(
    model: &mut Model,
    store: &TensorStore,
    weights: &WeightSource,
    device: &Device,
) -> Result<()> {
    if store.quantization().is_none() {
        return Ok(());
    }
    for lin in linears_mut(model)? {
        let name = format!("{}.weight", lin.name());
        if let Some(q) = store.load_quantized(&name, device)? {
            lin.set_quantized(Arc::new(q))?;
            weights.forget_quantized(&name);
        }
    }
    Ok(())
}

/// The name of a GPT-2's token embedding when its LM head is tied to it and quantized.
fn tied_embedding<'a>(p: &Pretrained, dense: &'a [String]) -> Option<&'a str> {
    let Model::Gpt2(m) = &p.model else {
        return None;
    };
    if !m.config().tie_word_embeddings || m.lm_head_quantized().is_none() {
        return None;
    }
    dense
        .iter()
        .map(String::as_str)
        .find(|n| matches!(*n, "transformer.wte.weight" | "wte.weight"))
}

/// Writes a quantized checkpoint folder: `model.gguf`, the tokenizer, the model's
/// generation_config.json, then config.json (what makes a folder a checkpoint), each
/// atomically.
pub fn save_quantized(dir: &Path, p: &mut Pretrained, format: QuantFormat) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| WickError::io(dir, e))?;
    let gguf = dir.join("model.gguf");
    let mut quantized: Vec<(String, Arc<QTensor>)> = Vec::new();
    let mut transposed = Vec::new();
    for lin in linears_mut(&mut p.model)? {
        if let Some(q) = lin.quantized() {
            let name = format!("{}.weight", lin.name());
            // Conv1D weights are (in, out) in the checkpoint; the blocks are (out, in).
            if lin.is_conv1d() {
                transposed.push(gguf_file::Value::String(name.clone()));
            }
            quantized.push((name, q.clone()));
        }
    }
    let mut skip: HashSet<&str> = quantized.iter().map(|(n, _)| n.as_str()).collect();
    // A tied token embedding is the head's blocks dequantized: stored once, as the head.
    let dense_names: Vec<String> = p.weights.tensors().into_iter().map(|(n, _)| n).collect();
    let mut aliases = Vec::new();
    if let Some(wte) = tied_embedding(p, &dense_names) {
        skip.insert(wte);
        aliases.push(gguf_file::Value::String(format!("{wte}=lm_head.weight")));
    }
    let dense = p
        .weights
        .tensors()
        .into_iter()
        .filter(|(n, _)| !skip.contains(n.as_str()))
        .map(|(n, t)| {
            Ok((
                n,
                QTensor::quantize(&t.to_device(&Device::Cpu)?, GgmlDType::F32)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let tensors: Vec<(&str, &QTensor)> = quantized
        .iter()
        .map(|(n, q)| (n.as_str(), q.as_ref()))
        .chain(dense.iter().map(|(n, q)| (n.as_str(), q)))
        .collect();
    let format_value = gguf_file::Value::String(format.name().into());
    let transposed = gguf_file::Value::Array(transposed);
    let aliases = gguf_file::Value::Array(aliases);
    let metadata = [
        (GGUF_FORMAT_KEY, &format_value),
        (GGUF_TRANSPOSED_KEY, &transposed),
        (GGUF_ALIASES_KEY, &aliases),
    ];
    let mut bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata, &tensors).map_err(|e| WickError::BadWeights {
        path: gguf.clone(),
        message: e.to_string(),
    })?;
    atomic_write(&gguf, bytes.get_ref())?;
    if let Some(tok) = &p.tokenizer {
        tok.save(&dir.join("tokenizer.json"))?;
    }
    let generation = p.dir.join("generation_config.json");
    if generation.is_file() {
        let text = std::fs::read(&generation).map_err(|e| WickError::io(&generation, e))?;
        atomic_write(&dir.join("generation_config.json"), &text)?;
    }
    let json = serde_json::to_string_pretty(&p.config.to_json()).expect("config serialises");
    atomic_write(&dir.join("config.json"), json.as_bytes())
}
