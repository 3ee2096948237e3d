//! A GPT-2 written as llama.cpp's own `gpt2` GGUF, so a model wick trained or fine-tuned
//! runs in llama.cpp and ollama: llama.cpp's tensor names (`token_embd`,
//! `position_embd`, `blk.N.attn_qkv`, …, `output`), its metadata keys
//! (`general.architecture = gpt2`, `gpt2.context_length`, …) and its tokenizer keys
//! (`tokenizer.ggml.model = gpt2`, tokens, token types, merges), as llama.cpp's
//! `convert_hf_to_gguf.py` writes them. (`wick quantize`'s model.gguf is wick's own
//! layout under Hugging Face names, read back by wick.)

use std::path::Path;

use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::Pretrained;
use crate::error::{Result, WickError};
use crate::files::atomic_write;
use crate::models::{Gpt2Config, ModelConfig};
use crate::nn::Activation;
use crate::tokenizer::Tokenizer;

/// The storage of the exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GgufType {
    F32,
    F16,
    /// Linear layers in 8-bit blocks of 32; embeddings f16.
    #[value(name = "q8_0")]
    Q8_0,
    /// Linear layers in 4-bit k-quant super-blocks of 256 (q8_0 where a row is
    /// shorter); embeddings f16.
    #[value(name = "q4k")]
    Q4K,
}

impl GgufType {
    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_*).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
            GgufType::Q4K => 14, // MOSTLY_Q4_K_S: every linear layer Q4_K
        }
    }

    /// Block types for a linear weight, best first, then for an embedding.
    fn linear(self) -> &'static [GgmlDType] {
        match self {
            GgufType::F32 => &[GgmlDType::F32],
            GgufType::F16 => &[GgmlDType::F16],
            GgufType::Q8_0 => &[GgmlDType::Q8_0, GgmlDType::F16],
            GgufType::Q4K => &[GgmlDType::Q4K, GgmlDType::Q8_0, GgmlDType::F16],
        }
    }

    fn embedding(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            _ => GgmlDType::F16,
        }
    }
}

/// One exported tensor: its llama.cpp name and the block type it was stored in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportedTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// Hugging Face GPT-2 names (without the optional `transformer.` prefix) to llama.cpp's,
/// and whether the tensor is a Conv1D weight stored (in, out) that llama.cpp wants (out,
/// in). None for a tensor llama.cpp does not read (the causal-mask buffers).
fn llama_name(hf: &str) -> Option<(String, bool)> {
    let fixed = match hf {
        "wte.weight" => Some("token_embd.weight"),
        "wpe.weight" => Some("position_embd.weight"),
        "ln_f.weight" => Some("output_norm.weight"),
        "ln_f.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some((n.to_string(), false));
    }
    let rest = hf.strip_prefix("h.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = part.rsplit_once('.')?;
    let (to, conv1d) = match module {
        "ln_1" => ("attn_norm", false),
        "attn.c_attn" => ("attn_qkv", true),
        "attn.c_proj" => ("attn_output", true),
        "ln_2" => ("ffn_norm", false),
        "mlp.c_fc" => ("ffn_up", true),
        "mlp.c_proj" => ("ffn_down", true),
        _ => return None,
    };
    Some((
        format!("blk.{layer}.{to}.{param}"),
        conv1d && param == "weight",
    ))
}

/// Refuses what llama.cpp's gpt2 graph would compute differently.
fn check_config(c: &Gpt2Config, config_path: &Path) -> Result<()> {
    let bad = |what: &str| {
        Err(WickError::Unsupported(format!(
            "{}: {what}; llama.cpp's gpt2 architecture cannot run it",
            config_path.display()
        )))
    };
    if c.activation_function != Activation::GeluNew {
        return bad("activation_function is not gelu_new (llama.cpp's GPT-2 uses the tanh GELU)");
    }
    if !c.scale_attn_weights || c.scale_attn_by_inverse_layer_idx {
        return bad("attention scores are not scaled by 1/sqrt(head size) alone");
    }
    if c.add_cross_attention {
        return bad("add_cross_attention is set");
    }
    Ok(())
}

/// The tokenizer as llama.cpp's `gpt2` (byte-level BPE) vocabulary: tokens by id, their
/// types (1 normal, 3 control), merges as "a b". A character-level vocabulary would map
/// onto a BPE without merges, but it has no end token, and llama.cpp then takes id 11
/// as one and stops generating there: refused.
fn vocabulary(tok: &Tokenizer) -> Result<(Vec<String>, Vec<i32>, Vec<String>)> {
    let json: serde_json::Value = serde_json::from_str(
        &tok.inner()
            .to_string(false)
            .map_err(|e| WickError::Unsupported(format!("tokenizer: {e}")))?,
    )
    .expect("tokenizers writes JSON");
    let model = &json["model"];
    let byte_level = json["pre_tokenizer"].to_string().contains("ByteLevel");
    let vocab = model["vocab"]
        .as_object()
        .filter(|_| model["type"] == "BPE" && byte_level);
    let vocab = vocab.ok_or_else(|| {
        WickError::Unsupported(format!(
            "{}: llama.cpp's gpt2 reads a byte-level BPE tokenizer (GPT-2's); this one is {} \
             (a character-level model has no end token for llama.cpp to stop on)",
            tok.source().display(),
            model["type"].as_str().unwrap_or("unknown")
        ))
    })?;
    let n = tok.vocab_size();
    let mut tokens = vec![String::new(); n];
    for (t, id) in vocab {
        if let Some(slot) = id.as_u64().and_then(|id| tokens.get_mut(id as usize)) {
            *slot = t.clone();
        }
    }
    let mut types = vec![1i32; n];
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let id = added["id"].as_u64().unwrap_or(u64::MAX) as usize;
        if id < n {
            tokens[id] = added["content"].as_str().unwrap_or_default().to_string();
            if added["special"].as_bool().unwrap_or(false) {
                types[id] = 3;
            }
        }
    }
    if let Some(id) = tokens.iter().position(String::is_empty) {
        return Err(WickError::Unsupported(format!(
            "{}: no token has id {id}",
            tok.source().display()
        )));
    }
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            // Newer tokenizer.json files store a merge as a pair.
            pair => pair
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok((tokens, types, merges))
}

/// `tensor` in the first of `types` its rows fit (a block format needs a row length
/// that is a multiple of its block).
fn store(tensor: &Tensor, types: &[GgmlDType]) -> Result<QTensor> {
    let row = tensor.dims().last().copied().unwrap_or(0);
    let ty = types
        .iter()
        .copied()
        .find(|t| row % t.block_size() == 0)
        .unwrap_or(GgmlDType::F32);
    Ok(QTensor::quantize(tensor, ty)?)
}

/// Writes the GPT-2 `p` to `out` as llama.cpp's gpt2 GGUF; returns what was stored.
pub fn export_gguf(p: &Pretrained, out: &Path, ty: GgufType) -> Result<Vec<ExportedTensor>> {
    let ModelConfig::Gpt2(c) = &p.config else {
        return Err(WickError::Unsupported(format!(
            "GGUF export is for GPT-2 models; {} is a {}",
            p.dir.display(),
            p.model.architecture()
        )));
    };
    check_config(c, &p.dir.join("config.json"))?;
    if p.weights.store().and_then(|s| s.quantization()).is_some() {
        return Err(WickError::Unsupported(format!(
            "{} is quantized by wick: export the original checkpoint",
            p.dir.display()
        )));
    }
    let tok = p.tokenizer()?;
    let (tokens, types, merges) = vocabulary(tok)?;

    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut embedding = None;
    for (hf, t) in p.weights.tensors() {
        let short = hf.strip_prefix("transformer.").unwrap_or(&hf);
        let Some((name, conv1d)) = llama_name(short) else {
            continue;
        };
        let t = t
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?;
        // Conv1D weights are (in, out) in the checkpoint; llama.cpp wants (out, in).
        let t = if conv1d { t.t()?.contiguous()? } else { t };
        let q = match name.as_str() {
            _ if t.rank() == 1 => store(&t, &[GgmlDType::F32])?,
            "token_embd.weight" | "position_embd.weight" => store(&t, &[ty.embedding()])?,
            _ => store(&t, ty.linear())?,
        };
        if name == "token_embd.weight" {
            embedding = Some(t);
        }
        tensors.push((name, q));
    }
    // GPT-2 ties its output to the token embedding; llama.cpp reads `output` itself.
    if !tensors.iter().any(|(n, _)| n == "output.weight") {
        let wte = embedding.ok_or_else(|| WickError::BadWeights {
            path: p.dir.clone(),
            message: "no wte.weight".into(),
        })?;
        tensors.push(("output.weight".into(), store(&wte, ty.linear())?));
    }

    let arch = "gpt2";
    let u32v = |v: usize| Value::U32(v as u32);
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(
                p.dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "wick".into()),
            ),
        ),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        (format!("{arch}.block_count"), u32v(c.n_layer)),
        (format!("{arch}.context_length"), u32v(c.n_positions)),
        (format!("{arch}.embedding_length"), u32v(c.n_embd)),
        (format!("{arch}.feed_forward_length"), u32v(c.inner_dim())),
        (format!("{arch}.attention.head_count"), u32v(c.n_head)),
        (
            format!("{arch}.attention.layer_norm_epsilon"),
            Value::F32(c.layer_norm_epsilon as f32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    let eos = c.eos_token_id.first().copied();
    for (key, id) in [
        ("bos", c.bos_token_id.or(eos)),
        ("eos", eos),
        ("padding", c.pad_token_id),
    ] {
        if let Some(id) = id {
            metadata.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
        }
    }

    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let mut bytes = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut bytes, &meta, &refs).map_err(|e| {
        WickError::BadWeights {
            path: out.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    atomic_write(out, bytes.get_ref())?;
    Ok(tensors
        .iter()
        .map(|(n, q)| ExportedTensor {
            name: n.clone(),
            dtype: format!("{:?}", q.dtype()).to_lowercase(),
            shape: q.shape().dims().to_vec(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(
            llama_name("wte.weight"),
            Some(("token_embd.weight".into(), false))
        );
        assert_eq!(
            llama_name("h.3.attn.c_attn.weight"),
            Some(("blk.3.attn_qkv.weight".into(), true))
        );
        assert_eq!(
            llama_name("h.0.mlp.c_proj.bias"),
            Some(("blk.0.ffn_down.bias".into(), false))
        );
        assert_eq!(
            llama_name("h.0.ln_2.weight"),
            Some(("blk.0.ffn_norm.weight".into(), false))
        );
        assert_eq!(llama_name("h.0.attn.bias"), None);
    }
}
