//! GPT-2 (GPT2LMHeadModel): a decoder-only stack of pre-LN blocks over token plus
//! learned position embeddings, with the output projection tied to the token embedding.

use std::path::Path;

use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::WickError;
use crate::nn::{
    dropout, recompute, residual, Activation, Embedding, FeedForward, KvCache, LayerNorm, Linear,
    Mask, MultiHeadAttention, NormPlacement, QkvProjection,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    #[serde(default = "defaults::n_positions")]
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Feed-forward width; `null` means 4·n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "defaults::gelu_new")]
    pub activation_function: Activation,
    #[serde(default = "defaults::eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "defaults::pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "defaults::pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "defaults::pdrop")]
    pub attn_pdrop: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default, with = "super::strict::token_ids")]
    pub eos_token_id: Vec<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    #[serde(default = "defaults::yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
}

mod defaults {
    use crate::nn::Activation;
    pub fn n_positions() -> usize {
        1024
    }
    pub fn gelu_new() -> Activation {
        Activation::GeluNew
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn pdrop() -> f64 {
        0.1
    }
    pub fn yes() -> bool {
        true
    }
}

/// GPT-2 config fields that do not affect this model: the sequence-summary head of
/// GPT2DoubleHeadsModel, the legacy `n_ctx`, and an fp16 upcasting switch that is a
/// no-op in f32.
const IGNORED: &[&str] = &[
    "n_ctx",
    "summary_type",
    "summary_use_proj",
    "summary_activation",
    "summary_proj_to_labels",
    "summary_first_dropout",
    "reorder_and_upcast_attn",
];

impl Gpt2Config {
    pub fn from_json(obj: &Map<String, Value>, path: &Path) -> crate::error::Result<Self> {
        let cfg: Self = super::strict::parse_strict(obj, path, IGNORED)?;
        if cfg.add_cross_attention {
            return Err(WickError::config(
                path,
                "add_cross_attention is not supported",
            ));
        }
        if cfg.n_head == 0 || !cfg.n_embd.is_multiple_of(cfg.n_head) {
            return Err(WickError::config(
                path,
                format!(
                    "n_embd {} is not divisible by n_head {}",
                    cfg.n_embd, cfg.n_head
                ),
            ));
        }
        Ok(cfg)
    }

    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

/// One pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
#[derive(Debug, Clone)]
pub struct Gpt2Block {
    ln_1: LayerNorm,
    attn: MultiHeadAttention,
    ln_2: LayerNorm,
    mlp: FeedForward,
    resid_pdrop: f64,
}

impl Gpt2Block {
    fn load(cfg: &Gpt2Config, layer_idx: usize, vb: VarBuilder) -> Result<Self> {
        let c = cfg.n_embd;
        // GPT-2 scales the init of residual projections by 1/sqrt(2·n_layer).
        let proj_std = crate::nn::linear::INIT_STD / (2.0 * cfg.n_layer as f64).sqrt();
        let head_dim = (c / cfg.n_head) as f64;
        let mut scale = if cfg.scale_attn_weights {
            1.0 / head_dim.sqrt()
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer_idx + 1) as f64;
        }
        let attn = MultiHeadAttention::new(
            QkvProjection::Fused(Linear::load_conv1d(c, 3 * c, vb.pp("attn.c_attn"))?),
            Linear::load_conv1d_std(c, c, proj_std, vb.pp("attn.c_proj"))?,
            cfg.n_head,
            scale,
            cfg.attn_pdrop,
        );
        let mlp = FeedForward::new(
            Linear::load_conv1d(c, cfg.inner_dim(), vb.pp("mlp.c_fc"))?,
            Linear::load_conv1d_std(cfg.inner_dim(), c, proj_std, vb.pp("mlp.c_proj"))?,
            cfg.activation_function,
            cfg.resid_pdrop,
        );
        Ok(Self {
            ln_1: LayerNorm::load(c, cfg.layer_norm_epsilon, vb.pp("ln_1"))?,
            attn,
            ln_2: LayerNorm::load(c, cfg.layer_norm_epsilon, vb.pp("ln_2"))?,
            mlp,
            resid_pdrop: cfg.resid_pdrop,
        })
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all = self.attn.linears_mut();
        all.extend(self.mlp.linears_mut());
        all
    }

    /// x: (B, T, C) -> (B, T, C)
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Mask,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let x = residual(x, &self.ln_1, NormPlacement::Pre, |h| {
            dropout(
                &self.attn.forward(h, mask, cache, train)?,
                self.resid_pdrop,
                train,
            )
        })?;
        residual(&x, &self.ln_2, NormPlacement::Pre, |h| {
            self.mlp.forward(h, train)
        })
    }
}

/// One KV cache per layer, plus the attention mask of everything cached so far.
#[derive(Debug, Clone, Default)]
pub struct Gpt2Cache {
    layers: Vec<KvCache>,
}

impl Gpt2Cache {
    pub fn new(n_layer: usize, capacity: usize) -> Self {
        Self {
            layers: (0..n_layer)
                .map(|_| KvCache::with_capacity(capacity))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(KvCache::reset);
    }

    pub fn select_batch(&mut self, indices: &Tensor) -> Result<()> {
        self.layers
            .iter_mut()
            .try_for_each(|c| c.select_batch(indices))
    }

    /// Stacks `other`'s rows under these, aligned on the last position
    /// ([`KvCache::join`]).
    pub fn join(&mut self, other: &Gpt2Cache) -> Result<()> {
        if self.layers.is_empty() {
            self.layers = vec![KvCache::default(); other.layers.len()];
        }
        self.layers
            .iter_mut()
            .zip(&other.layers)
            .try_for_each(|(a, b)| a.join(b))
    }

    /// Forgets the first `n` positions of every row ([`KvCache::drop_front`]).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        self.layers.iter_mut().try_for_each(|c| c.drop_front(n))
    }
}

#[derive(Debug, Clone)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    /// Shares `wte`'s weight when tied (the checkpoint then has no `lm_head.weight`).
    lm_head: Linear,
    cfg: Gpt2Config,
    /// Training recomputes each block in the backward pass ([`crate::nn::recompute`]).
    gradient_checkpointing: bool,
}

/// Position of each token: with an attention mask (left padding), positions count real
/// tokens only, as transformers' `generate` does, so a padded row computes what it
/// would alone.
fn positions(
    mask: Option<&Tensor>,
    b: usize,
    past: usize,
    t: usize,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    match mask {
        None => crate::nn::position_ids(b, t, past, dev),
        Some(mask) => {
            let rows = mask.to_dtype(candle_core::DType::U32)?.to_vec2::<u32>()?;
            let mut pos = Vec::with_capacity(b * t);
            for row in rows {
                if row.len() != past + t {
                    candle_core::bail!(
                        "attention mask covers {} positions, expected {}",
                        row.len(),
                        past + t
                    )
                }
                // cumsum(mask) - 1, and 1 at padding (transformers' convention).
                let mut seen = 0u32;
                let all: Vec<u32> = row
                    .iter()
                    .map(|&m| {
                        if m > 0 {
                            seen += 1;
                            seen - 1
                        } else {
                            1
                        }
                    })
                    .collect();
                pos.extend_from_slice(&all[past..]);
            }
            Tensor::from_vec(pos, (b, t), dev)
        }
    }
}

impl Gpt2 {
    pub fn load(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        // transformers 5 saves `transformer.`-prefixed keys; the hub's original gpt2 has
        // none. A fresh model uses the prefix.
        let vb_t =
            if vb.contains_tensor("wte.weight") && !vb.contains_tensor("transformer.wte.weight") {
                vb.clone()
            } else {
                vb.pp("transformer")
            };
        let wte = Embedding::load(cfg.vocab_size, cfg.n_embd, vb_t.pp("wte"))?;
        let wpe = Embedding::load(cfg.n_positions, cfg.n_embd, vb_t.pp("wpe"))?;
        let h = (0..cfg.n_layer)
            .map(|i| Gpt2Block::load(cfg, i, vb_t.pp(format!("h.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::load(cfg.n_embd, cfg.layer_norm_epsilon, vb_t.pp("ln_f"))?;
        let head = if cfg.tie_word_embeddings {
            wte.weight().clone()
        } else {
            vb.get((cfg.vocab_size, cfg.n_embd), "lm_head.weight")?
        };
        let lm_head = Linear::new(head, None, false).named(vb.pp("lm_head").prefix());
        Ok(Self {
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
            cfg: cfg.clone(),
            gradient_checkpointing: false,
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.cfg
    }

    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
    }

    /// Every linear layer, the LM head last (what quantization replaces).
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all: Vec<&mut Linear> = self.h.iter_mut().flat_map(|b| b.linears_mut()).collect();
        all.push(&mut self.lm_head);
        all
    }

    pub fn lm_head_quantized(&self) -> Option<&std::sync::Arc<candle_core::quantized::QTensor>> {
        self.lm_head.quantized()
    }

    /// After quantization of a tied model: the token embedding becomes the dequantized
    /// LM head, which is how a quantized checkpoint stores it (once, as the head's
    /// blocks), so a model quantized in memory computes what its saved folder does.
    /// Returns whether it did (the head is tied and quantized).
    pub fn tie_embedding_to_quantized_head(&mut self) -> Result<bool> {
        if !self.cfg.tie_word_embeddings {
            return Ok(false);
        }
        let Some(q) = self.lm_head.quantized() else {
            return Ok(false);
        };
        let w = q.dequantize(self.wte.weight().device())?;
        self.wte = Embedding::new(w);
        Ok(true)
    }

    pub fn new_cache(&self, capacity: usize) -> Gpt2Cache {
        Gpt2Cache::new(self.cfg.n_layer, capacity)
    }

    /// Final hidden states. ids: (B, T); `attention_mask`: (B, past + T) with 1 for
    /// tokens and 0 for padding; with a cache, ids are only the new tokens.
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut Gpt2Cache>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if past + t > self.cfg.n_positions {
            return Err(candle_core::Error::wrap(WickError::TooLong {
                len: past + t,
                max: self.cfg.n_positions,
            }));
        }
        let pos = positions(attention_mask, b, past, t, ids.device())?; // (B, T)
        let x = (self.wte.forward(ids)? + self.wpe.forward(&pos)?)?; // (B, T, C)
        let mut x = dropout(&x, self.cfg.embd_pdrop, train)?;
        let mask = Mask::new(t, past + t, true, attention_mask, x.dtype(), x.device())?;
        for (i, block) in self.h.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = match layer_cache {
                None if train && self.gradient_checkpointing => {
                    let (block, mask) = (block.clone(), mask.clone());
                    recompute::segment(&x, move |x| block.forward(x, &mask, None, true))?
                }
                layer_cache => block.forward(&x, &mask, layer_cache, train)?,
            };
        }
        self.ln_f.forward(&x) // (B, T, C)
    }

    /// Projects hidden states (B, T, C) onto the vocabulary: (B, T, V).
    pub fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Next-token logits for every position: (B, T, V).
    pub fn forward(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut Gpt2Cache>,
        train: bool,
    ) -> Result<Tensor> {
        self.lm_logits(&self.hidden_states(ids, attention_mask, cache, train)?)
    }
}
