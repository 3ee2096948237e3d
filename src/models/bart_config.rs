//! BART's config.json (`model_type: bart`) and Marian's (`marian`, the Helsinki-NLP
//! `opus-mt-*` translators, the original Transformer in BART's field names): read into a
//! [`Seq2SeqConfig`] of family [`Seq2SeqFamily::Bart`] or [`Seq2SeqFamily::Marian`] and
//! written back in the same names, so transformers reads wick's fine-tunes as
//! `BartForConditionalGeneration` or `MarianMTModel`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::seq2seq::{Seq2SeqConfig, Seq2SeqFamily};
use crate::error::{Result, WickError};
use crate::nn::Activation;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BartConfig {
    vocab_size: usize,
    #[serde(default)]
    decoder_vocab_size: Option<usize>,
    #[serde(default = "defaults::max_positions")]
    max_position_embeddings: usize,
    encoder_layers: usize,
    encoder_ffn_dim: usize,
    encoder_attention_heads: usize,
    decoder_layers: usize,
    decoder_ffn_dim: usize,
    decoder_attention_heads: usize,
    #[serde(default)]
    encoder_layerdrop: f64,
    #[serde(default)]
    decoder_layerdrop: f64,
    #[serde(default = "defaults::gelu")]
    activation_function: Activation,
    d_model: usize,
    #[serde(default = "defaults::dropout")]
    dropout: f64,
    #[serde(default)]
    attention_dropout: f64,
    #[serde(default)]
    activation_dropout: f64,
    /// A generic field (strict.rs drops it): read from the object itself.
    #[serde(default)]
    decoder_start_token_id: Option<u32>,
    #[serde(default)]
    scale_embedding: bool,
    pad_token_id: u32,
    eos_token_id: u32,
    #[serde(default)]
    bos_token_id: Option<u32>,
    /// A generic field too.
    #[serde(default)]
    forced_eos_token_id: Option<u32>,
    #[serde(default = "defaults::yes")]
    share_encoder_decoder_embeddings: bool,
    #[serde(default = "defaults::yes")]
    tie_word_embeddings: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    init_std: Option<f64>,
}

mod defaults {
    use crate::nn::Activation;
    pub fn max_positions() -> usize {
        1024
    }
    pub fn gelu() -> Activation {
        Activation::Gelu
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn yes() -> bool {
        true
    }
}

/// nn.LayerNorm's default: BART's and Marian's layer norms take no eps from the config.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Reads a `model_type: bart` or `marian` config.json, refusing what the one model
/// definition does not compute (different encoder and decoder widths, a separate
/// decoder vocabulary, untied embeddings), by field name. The legacy fields of old BART
/// configs (`normalize_before`, `add_final_layer_norm`, ...) are ignored, as
/// transformers ignores them.
pub fn read(obj: &Map<String, Value>, path: &Path, family: Seq2SeqFamily) -> Result<Seq2SeqConfig> {
    let m: BartConfig = super::strict::parse_strict(
        obj,
        path,
        &[
            "num_hidden_layers",
            "bad_words_ids",
            "id2label",
            "label2id",
            "normalize_embedding",
            "static_position_embeddings",
            "add_bias_logits",
            "normalize_before",
            "extra_pos_embeddings",
            "add_final_layer_norm",
            "classifier_dropout",
            "gradient_checkpointing",
            "classif_dropout",
            "output_past",
            "force_bos_token_to_be_generated",
            "add_cross_attention",
            "vocab_type",
        ],
    )?;
    let mut m = m;
    let id = |k: &str| obj.get(k).and_then(Value::as_u64).map(|v| v as u32);
    m.decoder_start_token_id = id("decoder_start_token_id");
    m.forced_eos_token_id = id("forced_eos_token_id");
    let forced_bos_token_id = id("forced_bos_token_id");
    let refuse = |m: &str| Err(WickError::config(path, m.to_string()));
    if m.encoder_ffn_dim != m.decoder_ffn_dim {
        return refuse("encoder_ffn_dim and decoder_ffn_dim differ (one d_ff is supported)");
    }
    if m.encoder_attention_heads != m.decoder_attention_heads {
        return refuse("encoder_attention_heads and decoder_attention_heads differ");
    }
    if m.decoder_vocab_size.is_some_and(|v| v != m.vocab_size) {
        return refuse("a decoder_vocab_size other than vocab_size is not supported");
    }
    if !m.share_encoder_decoder_embeddings || !m.tie_word_embeddings {
        return refuse("untied embeddings (share_encoder_decoder_embeddings / tie_word_embeddings false) are not supported");
    }
    if m.d_model == 0
        || m.encoder_attention_heads == 0
        || !m.d_model.is_multiple_of(m.encoder_attention_heads)
    {
        return refuse("d_model is not divisible by the attention heads");
    }
    Ok(Seq2SeqConfig {
        vocab_size: m.vocab_size,
        src_vocab_size: None,
        d_model: m.d_model,
        encoder_layers: m.encoder_layers,
        decoder_layers: m.decoder_layers,
        num_heads: m.encoder_attention_heads,
        d_ff: m.encoder_ffn_dim,
        dropout: m.dropout,
        attention_dropout: m.attention_dropout,
        activation: m.activation_function,
        max_position_embeddings: m.max_position_embeddings,
        layer_norm_eps: LAYER_NORM_EPS,
        pad_token_id: m.pad_token_id,
        // The decoder starts from decoder_start_token_id (the padding id in opus-mt,
        // `</s>` in BART).
        bos_token_id: m.decoder_start_token_id.unwrap_or(m.pad_token_id),
        eos_token_id: m.eos_token_id,
        scale_embedding: m.scale_embedding,
        nat_max_length: None,
        mask_token_id: None,
        family,
        forced_eos_token_id: m.forced_eos_token_id,
        // BART's tokenizer frames each side `<s> ... </s>`.
        sequence_start_token_id: match family {
            Seq2SeqFamily::Bart => Some(m.bos_token_id.unwrap_or(0)),
            _ => None,
        },
        forced_bos_token_id,
        activation_dropout: m.activation_dropout,
    })
}

/// The config.json fields transformers' BartConfig or MarianConfig reads.
pub fn write(c: &Seq2SeqConfig) -> Value {
    let m = BartConfig {
        vocab_size: c.vocab_size,
        decoder_vocab_size: Some(c.vocab_size),
        max_position_embeddings: c.max_position_embeddings,
        encoder_layers: c.encoder_layers,
        encoder_ffn_dim: c.d_ff,
        encoder_attention_heads: c.num_heads,
        decoder_layers: c.decoder_layers,
        decoder_ffn_dim: c.d_ff,
        decoder_attention_heads: c.num_heads,
        encoder_layerdrop: 0.0,
        decoder_layerdrop: 0.0,
        activation_function: c.activation,
        d_model: c.d_model,
        dropout: c.dropout,
        attention_dropout: c.attention_dropout,
        activation_dropout: c.activation_dropout,
        decoder_start_token_id: Some(c.bos_token_id),
        scale_embedding: c.scale_embedding,
        pad_token_id: c.pad_token_id,
        eos_token_id: c.eos_token_id,
        bos_token_id: c.sequence_start_token_id,
        forced_eos_token_id: c.forced_eos_token_id,
        share_encoder_decoder_embeddings: true,
        tie_word_embeddings: true,
        init_std: None,
    };
    let mut v = serde_json::to_value(m).unwrap_or_default();
    v["is_encoder_decoder"] = true.into();
    if let Some(id) = c.forced_bos_token_id {
        v["forced_bos_token_id"] = id.into();
    }
    v
}
