//! The original Transformer ("Attention Is All You Need"): an encoder of post-LN
//! self-attention layers and a decoder of post-LN layers with masked self-attention,
//! cross-attention over the encoder output and a feed-forward network. Sinusoidal
//! positions; one embedding shared by source, target and the output projection (or,
//! with a separate source vocabulary, the source side's own).
//! Tensor names follow BART/Marian (`shared`, `encoder.layers.N.self_attn.q_proj`, ...).
//!
//! Marian is this model under a `model.` prefix with a bias on the output; BART differs
//! once more, at the embeddings: learned positions per side (row `pos + 2`, fairseq's
//! offset) and a LayerNorm (`layernorm_embedding`) on token + position before dropout.
//!
//! The non-autoregressive variant (Mask-Predict, Ghazvininejad et al. 2019) is the same
//! model with two differences: the decoder's self-attention has no causal mask (it reads
//! a whole target of `<mask>` placeholders and fills every position at once), and a
//! length predictor on the mean-pooled encoder output chooses how many positions, as
//! an offset from the source's length (fairseq's `--pred-length-offset`: a mean forgets
//! how long the source was, and the offset is what varies little).

use candle_core::{Device, Result, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::WickError;
use crate::nn::{
    dropout, recompute, residual, Activation, Embedding, FeedForward, KvCache, LayerNorm, Linear,
    Mask, MultiHeadAttention, NormPlacement, QkvProjection, SinusoidLayout, SinusoidalPositions,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seq2SeqConfig {
    pub vocab_size: usize,
    /// A source vocabulary of its own (a separate tokenizer): the encoder then embeds
    /// with `encoder.embed_tokens` of this size, and `shared` serves the target side
    /// and the output projection. Absent: one joint vocabulary for both sides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_vocab_size: Option<usize>,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub num_heads: usize,
    pub d_ff: usize,
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "defaults::relu")]
    pub activation: Activation,
    #[serde(default = "defaults::max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "defaults::bos")]
    pub bos_token_id: u32,
    #[serde(default = "defaults::eos")]
    pub eos_token_id: u32,
    /// Multiply embeddings by sqrt(d_model) before adding positions (paper §3.4).
    #[serde(default = "defaults::yes")]
    pub scale_embedding: bool,
    /// Non-autoregressive: the longest target (EOS included). Its presence makes the
    /// decoder attend both ways and adds `length_predictor`, one class per offset
    /// −max..=max of the target's length from the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_max_length: Option<usize>,
    /// Non-autoregressive: the placeholder the decoder reads at positions to predict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_token_id: Option<u32>,
    /// wick's own encoder-decoder or a Marian checkpoint (`model_type`).
    #[serde(skip)]
    pub family: Seq2SeqFamily,
    /// Marian's and BART's `forced_eos_token_id`: the token generation must end with at
    /// its length limit.
    #[serde(skip)]
    pub forced_eos_token_id: Option<u32>,
    /// BART's `forced_bos_token_id`: the first token generation must write (`<s>`).
    #[serde(skip)]
    pub forced_bos_token_id: Option<u32>,
    /// BART's `<s>`: each side's ids are `<s> ... </s>`, as its tokenizer frames them
    /// (Marian and wick: `... </s>`).
    #[serde(skip)]
    pub sequence_start_token_id: Option<u32>,
    /// Marian's dropout after the feed-forward activation, written back as read.
    #[serde(skip)]
    pub activation_dropout: f64,
}

/// The encoder-decoders that share this model definition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Seq2SeqFamily {
    /// `wick-seq2seq`: wick's own (sinusoids interleaved as in the paper, no prefix).
    #[default]
    Wick,
    /// `marian`: the `model.` prefix, sinusoids in two halves (sin, then cos),
    /// `final_logits_bias` on the output.
    Marian,
    /// `bart`: Marian's layout with learned positions and `layernorm_embedding`.
    Bart,
}

impl Seq2SeqFamily {
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Wick => "wick-seq2seq",
            Self::Marian => "marian",
            Self::Bart => "bart",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Wick => "wick encoder-decoder",
            Self::Marian => "Marian",
            Self::Bart => "BART",
        }
    }

    /// The transformers class a saved checkpoint names in `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Wick => "WickSeq2Seq",
            Self::Marian => "MarianMTModel",
            Self::Bart => "BartForConditionalGeneration",
        }
    }
}

/// How a side's token ids are framed for the model: `[start] ids EOS`, cut to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub start: Option<u32>,
    pub eos: u32,
}

impl Framing {
    /// The ids framed and cut to `max_len` (the text's tokens give way, never the
    /// frame); and the framed length they had when they were cut (None when they fit).
    pub fn apply(&self, ids: Vec<u32>, max_len: usize) -> (Vec<u32>, Option<usize>) {
        let frame = 1 + usize::from(self.start.is_some());
        let full = ids.len() + frame;
        let keep = max_len.saturating_sub(frame).min(ids.len());
        let out: Vec<u32> = self
            .start
            .into_iter()
            .chain(ids[..keep].iter().copied())
            .chain(std::iter::once(self.eos))
            .collect();
        let cut = (full > out.len()).then_some(full);
        (out, cut)
    }
}

impl Seq2SeqConfig {
    /// Whether the decoder fills every position at once (Mask-Predict) rather than
    /// writing left to right.
    pub fn is_nat(&self) -> bool {
        self.nat_max_length.is_some()
    }

    /// How the source and the target are framed.
    pub fn framing(&self) -> Framing {
        Framing {
            start: self.sequence_start_token_id,
            eos: self.eos_token_id,
        }
    }
}

mod defaults {
    use crate::nn::Activation;
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn relu() -> Activation {
        Activation::Relu
    }
    pub fn max_positions() -> usize {
        512
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn bos() -> u32 {
        1
    }
    pub fn eos() -> u32 {
        2
    }
    pub fn yes() -> bool {
        true
    }
}

fn attention(cfg: &Seq2SeqConfig, vb: VarBuilder) -> Result<MultiHeadAttention> {
    let d = cfg.d_model;
    Ok(MultiHeadAttention::new(
        QkvProjection::Separate {
            q: Linear::load(d, d, true, vb.pp("q_proj"))?,
            k: Linear::load(d, d, true, vb.pp("k_proj"))?,
            v: Linear::load(d, d, true, vb.pp("v_proj"))?,
        },
        Linear::load(d, d, true, vb.pp("out_proj"))?,
        cfg.num_heads,
        1.0 / ((d / cfg.num_heads) as f64).sqrt(),
        cfg.attention_dropout,
    ))
}

fn feed_forward(cfg: &Seq2SeqConfig, vb: &VarBuilder) -> Result<FeedForward> {
    Ok(FeedForward::new(
        Linear::load(cfg.d_model, cfg.d_ff, true, vb.pp("fc1"))?,
        Linear::load(cfg.d_ff, cfg.d_model, true, vb.pp("fc2"))?,
        cfg.activation,
        cfg.dropout,
    ))
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
    dropout: f64,
}

impl EncoderLayer {
    fn load(cfg: &Seq2SeqConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: attention(cfg, vb.pp("self_attn"))?,
            self_attn_layer_norm: LayerNorm::load(
                cfg.d_model,
                cfg.layer_norm_eps,
                vb.pp("self_attn_layer_norm"),
            )?,
            ffn: feed_forward(cfg, &vb)?,
            final_layer_norm: LayerNorm::load(
                cfg.d_model,
                cfg.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            dropout: cfg.dropout,
        })
    }

    /// x: (B, S, C) -> (B, S, C)
    fn forward(&self, x: &Tensor, mask: &Mask, train: bool) -> Result<Tensor> {
        let x = residual(x, &self.self_attn_layer_norm, NormPlacement::Post, |h| {
            dropout(
                &self.self_attn.forward(h, mask, None, train)?,
                self.dropout,
                train,
            )
        })?;
        residual(&x, &self.final_layer_norm, NormPlacement::Post, |h| {
            self.ffn.forward(h, train)
        })
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: MultiHeadAttention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
    dropout: f64,
}

/// Per decoder layer: the growing self-attention cache and the fixed cross-attention
/// keys/values of the encoder output.
#[derive(Debug, Clone, Default)]
pub struct Seq2SeqCache {
    self_attn: Vec<KvCache>,
    cross_attn: Vec<KvCache>,
}

impl Seq2SeqCache {
    pub fn len(&self) -> usize {
        self.self_attn.first().map_or(0, KvCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn select_batch(&mut self, indices: &Tensor) -> Result<()> {
        for c in self.self_attn.iter_mut().chain(self.cross_attn.iter_mut()) {
            c.select_batch(indices)?;
        }
        Ok(())
    }
}

impl DecoderLayer {
    fn load(cfg: &Seq2SeqConfig, vb: VarBuilder) -> Result<Self> {
        let ln = |name: &str| LayerNorm::load(cfg.d_model, cfg.layer_norm_eps, vb.pp(name));
        Ok(Self {
            self_attn: attention(cfg, vb.pp("self_attn"))?,
            self_attn_layer_norm: ln("self_attn_layer_norm")?,
            encoder_attn: attention(cfg, vb.pp("encoder_attn"))?,
            encoder_attn_layer_norm: ln("encoder_attn_layer_norm")?,
            ffn: feed_forward(cfg, &vb)?,
            final_layer_norm: ln("final_layer_norm")?,
            dropout: cfg.dropout,
        })
    }

    /// x: (B, T, C), memory: (B, S, C) -> (B, T, C)
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        self_mask: &Mask,
        cross_mask: &Mask,
        caches: Option<(&mut KvCache, &mut KvCache)>,
        train: bool,
    ) -> Result<Tensor> {
        let (self_cache, cross_cache) = match caches {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let p = self.dropout;
        let x = residual(x, &self.self_attn_layer_norm, NormPlacement::Post, |h| {
            dropout(
                &self.self_attn.forward(h, self_mask, self_cache, train)?,
                p,
                train,
            )
        })?;
        let x = residual(
            &x,
            &self.encoder_attn_layer_norm,
            NormPlacement::Post,
            |h| {
                dropout(
                    &self
                        .encoder_attn
                        .forward_cross(h, memory, cross_mask, cross_cache, train)?,
                    p,
                    train,
                )
            },
        )?;
        residual(&x, &self.final_layer_norm, NormPlacement::Post, |h| {
            self.ffn.forward(h, train)
        })
    }
}

/// Position encodings: one fixed table for both sides, or BART's learned table per side.
#[derive(Debug, Clone)]
enum Positions {
    Sinusoidal(SinusoidalPositions),
    Learned {
        encoder: Embedding,
        decoder: Embedding,
        max_len: usize,
    },
}

/// fairseq's learned positions start at row 2 (rows 0 and 1 were for padding).
const LEARNED_POSITION_OFFSET: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Encoder,
    Decoder,
}

impl Positions {
    fn max_len(&self) -> usize {
        match self {
            Self::Sinusoidal(p) => p.max_len(),
            Self::Learned { max_len, .. } => *max_len,
        }
    }

    /// Positions offset..offset + t of `side`, for b rows: (B, T, C).
    fn forward(
        &self,
        side: Side,
        b: usize,
        t: usize,
        offset: usize,
        dev: &Device,
    ) -> Result<Tensor> {
        match self {
            Self::Sinusoidal(p) => p.forward(&crate::nn::position_ids(b, t, offset, dev)?),
            Self::Learned {
                encoder, decoder, ..
            } => {
                let table = if side == Side::Encoder {
                    encoder
                } else {
                    decoder
                };
                let ids = crate::nn::position_ids(b, t, offset + LEARNED_POSITION_OFFSET, dev)?;
                table.forward(&ids)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Seq2Seq {
    shared: Embedding,
    /// Marian's and BART's `final_logits_bias` (1, V), added to the output logits; a
    /// buffer in transformers, so it is not trained.
    final_logits_bias: Option<Tensor>,
    /// The source side's own embedding, when its vocabulary is separate.
    src_embed: Option<Embedding>,
    positions: Positions,
    /// BART's `layernorm_embedding` of the encoder and of the decoder.
    embedding_norms: Option<(LayerNorm, LayerNorm)>,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    /// Non-autoregressive: pooled encoder output -> logits over target lengths 0..=max.
    length_predictor: Option<Linear>,
    cfg: Seq2SeqConfig,
    /// Training recomputes each layer in the backward pass ([`crate::nn::recompute`]).
    gradient_checkpointing: bool,
}

impl Seq2Seq {
    pub fn load(cfg: &Seq2SeqConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.num_heads == 0 || !cfg.d_model.is_multiple_of(cfg.num_heads) {
            candle_core::bail!(
                "d_model {} is not divisible by num_heads {}",
                cfg.d_model,
                cfg.num_heads
            )
        }
        if let Some(max) = cfg.nat_max_length {
            if max == 0 || max > cfg.max_position_embeddings {
                candle_core::bail!(
                    "nat_max_length {max} must be in 1..={} (max_position_embeddings)",
                    cfg.max_position_embeddings
                )
            }
            if cfg
                .mask_token_id
                .is_none_or(|m| m as usize >= cfg.vocab_size)
            {
                candle_core::bail!(
                    "a non-autoregressive model needs a mask_token_id below vocab_size {}",
                    cfg.vocab_size
                )
            }
        }
        // Marian and BART nest the model under `model.`, beside the bias of its output
        // (absent from a bare BartModel checkpoint: zeros, as transformers starts it).
        let (vb, final_logits_bias) = match cfg.family {
            Seq2SeqFamily::Wick => (vb, None),
            Seq2SeqFamily::Marian | Seq2SeqFamily::Bart => {
                // When absent: zeros, through the builder when it may start them (a
                // fine-tune then saves them), else plain.
                let shape = (1, cfg.vocab_size);
                let bias = match vb.contains_tensor("final_logits_bias") {
                    true => vb.get(shape, "final_logits_bias")?,
                    false => vb
                        .get_with_hints(shape, "final_logits_bias", candle_nn::Init::Const(0.0))
                        .or_else(|_| Tensor::zeros(shape, vb.dtype(), vb.device()))?,
                }
                .detach();
                (vb.pp("model"), Some(bias))
            }
        };
        let sinusoids = |layout| {
            let table = SinusoidalPositions::new(
                cfg.max_position_embeddings,
                cfg.d_model,
                layout,
                vb.dtype(),
                vb.device(),
            )?;
            Ok::<_, candle_core::Error>(Positions::Sinusoidal(table))
        };
        let positions = match cfg.family {
            Seq2SeqFamily::Wick => sinusoids(SinusoidLayout::Interleaved)?,
            Seq2SeqFamily::Marian => sinusoids(SinusoidLayout::Halves)?,
            Seq2SeqFamily::Bart => {
                let rows = cfg.max_position_embeddings + LEARNED_POSITION_OFFSET;
                let table = |side: &str| {
                    Embedding::load(rows, cfg.d_model, vb.pp(format!("{side}.embed_positions")))
                };
                Positions::Learned {
                    encoder: table("encoder")?,
                    decoder: table("decoder")?,
                    max_len: cfg.max_position_embeddings,
                }
            }
        };
        let embedding_norms = match cfg.family {
            Seq2SeqFamily::Bart => {
                let ln = |side: &str| {
                    LayerNorm::load(
                        cfg.d_model,
                        cfg.layer_norm_eps,
                        vb.pp(format!("{side}.layernorm_embedding")),
                    )
                };
                Some((ln("encoder")?, ln("decoder")?))
            }
            _ => None,
        };
        Ok(Self {
            shared: Embedding::load(cfg.vocab_size, cfg.d_model, vb.pp("shared"))?,
            final_logits_bias,
            src_embed: cfg
                .src_vocab_size
                .map(|v| Embedding::load(v, cfg.d_model, vb.pp("encoder.embed_tokens")))
                .transpose()?,
            positions,
            embedding_norms,
            encoder: (0..cfg.encoder_layers)
                .map(|i| EncoderLayer::load(cfg, vb.pp(format!("encoder.layers.{i}"))))
                .collect::<Result<_>>()?,
            decoder: (0..cfg.decoder_layers)
                .map(|i| DecoderLayer::load(cfg, vb.pp(format!("decoder.layers.{i}"))))
                .collect::<Result<_>>()?,
            length_predictor: cfg
                .nat_max_length
                .map(|max| Linear::load(cfg.d_model, 2 * max + 1, true, vb.pp("length_predictor")))
                .transpose()?,
            cfg: cfg.clone(),
            gradient_checkpointing: false,
        })
    }

    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
    }

    /// Every linear layer: the encoder's, the decoder's, then the length predictor.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all: Vec<&mut Linear> = vec![];
        for l in &mut self.encoder {
            all.extend(l.self_attn.linears_mut());
            all.extend(l.ffn.linears_mut());
        }
        for l in &mut self.decoder {
            all.extend(l.self_attn.linears_mut());
            all.extend(l.encoder_attn.linears_mut());
            all.extend(l.ffn.linears_mut());
        }
        all.extend(self.length_predictor.as_mut());
        all
    }

    pub fn config(&self) -> &Seq2SeqConfig {
        &self.cfg
    }

    pub fn new_cache(&self, capacity: usize) -> Seq2SeqCache {
        Seq2SeqCache {
            self_attn: (0..self.cfg.decoder_layers)
                .map(|_| KvCache::with_capacity(capacity))
                .collect(),
            cross_attn: (0..self.cfg.decoder_layers)
                .map(|_| KvCache::default())
                .collect(),
        }
    }

    /// Token embedding (scaled) of `side` plus position, BART's LayerNorm, then dropout.
    fn embed(&self, side: Side, ids: &Tensor, offset: usize, train: bool) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if offset + t > self.positions.max_len() {
            return Err(candle_core::Error::wrap(WickError::TooLong {
                len: offset + t,
                max: self.positions.max_len(),
            }));
        }
        let scale = if self.cfg.scale_embedding {
            (self.cfg.d_model as f64).sqrt()
        } else {
            1.0
        };
        let table = match (side, &self.src_embed) {
            (Side::Encoder, Some(src)) => src,
            _ => &self.shared,
        };
        let tok = (table.forward(ids)? * scale)?; // (B, T, C)
        let pos = self.positions.forward(side, b, t, offset, ids.device())?; // (B, T, C)
        let x = (tok + pos)?;
        let x = match (&self.embedding_norms, side) {
            (Some((enc, _)), Side::Encoder) => enc.forward(&x)?,
            (Some((_, dec)), Side::Decoder) => dec.forward(&x)?,
            (None, _) => x,
        };
        dropout(&x, self.cfg.dropout, train)
    }

    /// src ids and mask: (B, S) -> memory (B, S, C).
    pub fn encode(&self, src: &Tensor, src_mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let s = src.dim(1)?;
        let mut x = self.embed(Side::Encoder, src, 0, train)?;
        let mask = Mask::new(s, s, false, src_mask, x.dtype(), x.device())?;
        for layer in &self.encoder {
            x = if train && self.gradient_checkpointing {
                let (layer, mask) = (layer.clone(), mask.clone());
                recompute::segment(&x, move |x| layer.forward(x, &mask, true))?
            } else {
                layer.forward(&x, &mask, train)?
            };
        }
        Ok(x)
    }

    /// Next-token logits for target ids (B, T) given the encoder memory: (B, T, V).
    /// `tgt_mask` (B, past + T) marks target padding; the causal mask is applied unless
    /// the model is non-autoregressive, whose logits at t are then the token *at* t.
    pub fn decode(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        src_mask: Option<&Tensor>,
        tgt_mask: Option<&Tensor>,
        cache: Option<&mut Seq2SeqCache>,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self.decode_hidden(tgt, memory, src_mask, tgt_mask, cache, train)?;
        self.output_logits(&hidden)
    }

    /// The decoder's last hidden states (B, T, C), before the output projection: for
    /// callers that need the vocabulary at only some positions.
    pub fn decode_hidden(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        src_mask: Option<&Tensor>,
        tgt_mask: Option<&Tensor>,
        mut cache: Option<&mut Seq2SeqCache>,
        train: bool,
    ) -> Result<Tensor> {
        let t = tgt.dim(1)?;
        let s = memory.dim(1)?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embed(Side::Decoder, tgt, past, train)?;
        let causal = !self.cfg.is_nat();
        let self_mask = Mask::new(t, past + t, causal, tgt_mask, x.dtype(), x.device())?;
        let cross_mask = Mask::new(t, s, false, src_mask, x.dtype(), x.device())?;
        for (i, layer) in self.decoder.iter().enumerate() {
            let caches = cache.as_deref_mut().map(|c| {
                let Seq2SeqCache {
                    self_attn,
                    cross_attn,
                } = c;
                (&mut self_attn[i], &mut cross_attn[i])
            });
            x = match caches {
                None if train && self.gradient_checkpointing => {
                    let (layer, memory) = (layer.clone(), memory.clone());
                    let (self_mask, cross_mask) = (self_mask.clone(), cross_mask.clone());
                    recompute::segment(&x, move |x| {
                        layer.forward(x, &memory, &self_mask, &cross_mask, None, true)
                    })?
                }
                caches => layer.forward(&x, memory, &self_mask, &cross_mask, caches, train)?,
            };
        }
        Ok(x)
    }

    /// Logits over the target vocabulary of hidden states (.., C): the shared embedding,
    /// transposed.
    pub fn output_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = Linear::new(self.shared.weight().clone(), None, false).forward(hidden)?;
        match &self.final_logits_bias {
            Some(bias) => logits.broadcast_add(bias), // (.., V) + (1, V)
            None => Ok(logits),
        }
    }

    /// Non-autoregressive: logits over length classes (B, 2·max + 1), target length minus
    /// source length plus max ([`Self::length_class`]), from the mean of the encoder
    /// output over the source's real positions (fairseq's NAT models pool the same way;
    /// the length loss then trains the encoder too, weighted down).
    pub fn predict_length(&self, memory: &Tensor, src_mask: Option<&Tensor>) -> Result<Tensor> {
        let Some(head) = &self.length_predictor else {
            candle_core::bail!(
                "this encoder-decoder has no length predictor (not non-autoregressive)"
            )
        };
        let pooled = match src_mask {
            Some(m) => {
                let m = m.to_dtype(memory.dtype())?.unsqueeze(2)?; // (B, S, 1); memory (B, S, C)
                memory
                    .broadcast_mul(&m)?
                    .sum(1)?
                    .broadcast_div(&m.sum(1)?.clamp(1.0, f64::INFINITY)?)?
            }
            None => memory.mean(1)?,
        }; // (B, C)
        head.forward(&pooled)
    }

    /// The length class of a target of `tgt_len` tokens for a source of `src_len` (both
    /// with EOS): their difference, shifted to start at 0 and clamped to the classes.
    pub fn length_class(&self, src_len: usize, tgt_len: usize) -> u32 {
        let max = self.cfg.nat_max_length.unwrap_or(0) as i64;
        (tgt_len as i64 - src_len as i64 + max).clamp(0, 2 * max) as u32
    }

    /// The target length class `class` means for a source of `src_len` tokens, in
    /// 1..=max.
    pub fn length_of_class(&self, src_len: usize, class: usize) -> usize {
        let max = self.cfg.nat_max_length.unwrap_or(1) as i64;
        (src_len as i64 + class as i64 - max).clamp(1, max) as usize
    }

    /// Teacher-forced logits: encode the source, decode the shifted target.
    pub fn forward(
        &self,
        src: &Tensor,
        src_mask: Option<&Tensor>,
        tgt: &Tensor,
        tgt_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let memory = self.encode(src, src_mask, train)?;
        self.decode(tgt, &memory, src_mask, tgt_mask, None, train)
    }
}
