//! BERT: token + position + token-type embeddings, a stack of post-LN encoder layers,
//! the [CLS] pooler, and the two task heads transformers defines: the masked-LM head
//! (`cls.predictions`, decoder tied to the word embeddings) and the sequence
//! classifier on the pooled [CLS] state. RoBERTa, XLM-RoBERTa and DistilBERT are the
//! same encoder with the differences [`EncoderFamily`] names: tensor names, position
//! numbering, token types, and the heads' layers.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, IndexOp, Result, Tensor};
use candle_nn::{Init, Module, VarBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::encoder_family::EncoderFamily;
use crate::error::WickError;
use crate::nn::{
    dropout, recompute, residual, Activation, Embedding, FeedForward, LayerNorm, Linear, Mask,
    MultiHeadAttention, NormPlacement, Packing, QkvProjection,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "defaults::gelu")]
    pub hidden_act: Activation,
    #[serde(default = "defaults::pdrop")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::pdrop")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "defaults::max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "defaults::absolute")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Label names by class index, as strings ("0": "negative") like transformers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, u32>>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default, with = "super::strict::token_ids")]
    pub eos_token_id: Vec<u32>,
    /// The masked-LM decoder shares the word embeddings unless this is false.
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    /// Which of the BERT-style encoders this is (from `model_type`).
    #[serde(skip)]
    pub family: EncoderFamily,
    /// DistilBERT's `sinusoidal_pos_embds`, written back as read.
    #[serde(skip)]
    pub sinusoidal_positions: bool,
    /// transformers' `architectures[0]`: which head the checkpoint is for.
    #[serde(skip)]
    pub architecture: Option<String>,
    /// transformers' `problem_type`: "multi_label_classification" for one sigmoid per
    /// label (any other value, or none, is one softmax over the labels).
    #[serde(skip)]
    pub problem_type: Option<String>,
}

/// transformers' `problem_type` of a multi-label classifier.
pub const MULTI_LABEL: &str = "multi_label_classification";

mod defaults {
    use crate::nn::Activation;
    pub fn gelu() -> Activation {
        Activation::Gelu
    }
    pub fn pdrop() -> f64 {
        0.1
    }
    pub fn max_positions() -> usize {
        512
    }
    pub fn type_vocab() -> usize {
        2
    }
    pub fn eps() -> f64 {
        1e-12
    }
    pub fn yes() -> bool {
        true
    }
    pub fn absolute() -> String {
        "absolute".into()
    }
}

impl BertConfig {
    /// Reads a BERT, RoBERTa or XLM-RoBERTa config.json (the same fields).
    pub fn from_json(
        obj: &Map<String, Value>,
        path: &Path,
        family: EncoderFamily,
    ) -> crate::error::Result<Self> {
        let mut cfg: Self = super::strict::parse_strict(obj, path, &[])?;
        cfg.family = family;
        if cfg.position_embedding_type != "absolute" {
            return Err(WickError::config(
                path,
                format!(
                    "position_embedding_type `{}` is not supported (absolute)",
                    cfg.position_embedding_type
                ),
            ));
        }
        let is_decoder = obj
            .get("is_decoder")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if cfg.add_cross_attention || is_decoder {
            return Err(WickError::config(
                path,
                format!(
                    "{} as a decoder (is_decoder / add_cross_attention) is not supported",
                    family.name()
                ),
            ));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(WickError::config(
                path,
                "hidden_size is not divisible by num_attention_heads",
            ));
        }
        if family.positions_after_padding() {
            let pad = cfg.pad_token_id.unwrap_or(1) as usize;
            if cfg.max_position_embeddings <= pad + 1 {
                return Err(WickError::config(
                    path,
                    format!(
                        "max_position_embeddings {} leaves no position after the padding id {pad}",
                        cfg.max_position_embeddings
                    ),
                ));
            }
        }
        cfg.read_task_fields(obj);
        Ok(cfg)
    }

    /// The fields every family reads the same way: the head's class, the problem type,
    /// and `num_labels` alone (no label names) as LABEL_0..LABEL_{n-1}, as transformers.
    pub(crate) fn read_task_fields(&mut self, obj: &Map<String, Value>) {
        self.architecture = obj
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .map(String::from);
        self.problem_type = obj
            .get("problem_type")
            .and_then(|p| p.as_str())
            .map(String::from);
        if self.id2label.is_none() {
            if let Some(n) = obj.get("num_labels").and_then(|n| n.as_u64()) {
                self.set_labels(&(0..n).map(|i| format!("LABEL_{i}")).collect::<Vec<_>>());
            }
        }
    }

    /// The tokens of the positions the embeddings cover: RoBERTa spends
    /// `pad_token_id + 1` of them before the first token (514 rows for 512 tokens).
    pub fn max_tokens(&self) -> usize {
        if self.family.positions_after_padding() {
            self.max_position_embeddings - self.roberta_pad() - 1
        } else {
            self.max_position_embeddings
        }
    }

    /// RoBERTa's padding id, from which its positions are counted.
    fn roberta_pad(&self) -> usize {
        self.pad_token_id.unwrap_or(1) as usize
    }

    pub fn architectures(&self) -> Vec<String> {
        vec![self
            .architecture
            .clone()
            .unwrap_or_else(|| self.family.class("Model"))]
    }

    /// Whether the classifier scores each label on its own (a sigmoid per label).
    pub fn multi_label(&self) -> bool {
        self.problem_type.as_deref() == Some(MULTI_LABEL)
    }

    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(0, |m| m.len())
    }

    /// Label names in class-index order.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<(usize, String)> = self
            .id2label
            .iter()
            .flatten()
            .map(|(k, v)| (k.parse().unwrap_or(usize::MAX), v.clone()))
            .collect();
        labels.sort();
        labels.into_iter().map(|(_, v)| v).collect()
    }

    pub fn set_labels(&mut self, labels: &[String]) {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as u32))
                .collect(),
        );
    }
}

#[derive(Debug, Clone)]
struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    /// Segment embeddings; DistilBERT has none.
    token_type_embeddings: Option<Embedding>,
    layer_norm: LayerNorm,
    dropout: f64,
    /// RoBERTa's padding id, positions counted after it; `None`: positions from 0.
    positions_after: Option<u32>,
    /// One token type: the ids given are ignored.
    single_type: bool,
}

impl BertEmbeddings {
    fn load(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let family = cfg.family;
        Ok(Self {
            word_embeddings: Embedding::load(cfg.vocab_size, h, vb.pp("word_embeddings"))?,
            position_embeddings: Embedding::load(
                cfg.max_position_embeddings,
                h,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: family
                .has_token_types()
                .then(|| Embedding::load(cfg.type_vocab_size, h, vb.pp("token_type_embeddings")))
                .transpose()?,
            // RoBERTa's one token type: its tokenizer's pair ids are all zeros.
            single_type: cfg.type_vocab_size <= 1,
            layer_norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
            positions_after: family
                .positions_after_padding()
                .then(|| cfg.roberta_pad() as u32),
        })
    }

    /// Position ids: (B, T). RoBERTa's, as transformers'
    /// `create_position_ids_from_input_ids`: padding tokens sit at the padding id, real
    /// ones count up from the id after it.
    fn positions(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let Some(pad) = self.positions_after else {
            return crate::nn::position_ids(b, t, 0, ids.device());
        };
        let rows = ids.to_vec2::<u32>()?;
        let pos: Vec<u32> = rows
            .iter()
            .flat_map(|row| {
                let mut seen = 0;
                row.iter()
                    .map(move |&id| {
                        if id == pad {
                            pad
                        } else {
                            seen += 1;
                            pad + seen
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Tensor::from_vec(pos, (b, t), ids.device())
    }

    /// ids, token types: (B, T) -> (B, T, H)
    fn forward(
        &self,
        ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let pos = self.positions(ids)?;
        let mut x =
            (self.word_embeddings.forward(ids)? + self.position_embeddings.forward(&pos)?)?;
        if let Some(table) = &self.token_type_embeddings {
            let types = match token_type_ids {
                Some(tt) if !self.single_type => tt.clone(),
                _ => Tensor::zeros((b, t), DType::U32, ids.device())?,
            };
            x = (x + table.forward(&types)?)?;
        }
        dropout(&self.layer_norm.forward(&x)?, self.dropout, train)
    }
}

/// One post-LN encoder layer: LN(x + attn(x)), then LN(x + ffn(x)).
#[derive(Debug, Clone)]
struct BertLayer {
    attention: MultiHeadAttention,
    attention_norm: LayerNorm,
    ffn: FeedForward,
    output_norm: LayerNorm,
    dropout: f64,
}

impl BertLayer {
    fn load(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let n = cfg.family.layer_names();
        let attention = MultiHeadAttention::new(
            QkvProjection::Separate {
                q: Linear::load(h, h, true, vb.pp(n.q))?,
                k: Linear::load(h, h, true, vb.pp(n.k))?,
                v: Linear::load(h, h, true, vb.pp(n.v))?,
            },
            Linear::load(h, h, true, vb.pp(n.attn_out))?,
            cfg.num_attention_heads,
            1.0 / ((h / cfg.num_attention_heads) as f64).sqrt(),
            cfg.attention_probs_dropout_prob,
        );
        let ffn = FeedForward::new(
            Linear::load(h, cfg.intermediate_size, true, vb.pp(n.ffn_in))?,
            Linear::load(cfg.intermediate_size, h, true, vb.pp(n.ffn_out))?,
            cfg.hidden_act,
            cfg.hidden_dropout_prob,
        );
        Ok(Self {
            attention,
            attention_norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp(n.attn_norm))?,
            ffn,
            output_norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp(n.out_norm))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// x: (B, T, H) -> (B, T, H), or packed real tokens (N, H) -> (N, H) with a packing.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Mask,
        packing: Option<&Packing>,
        train: bool,
    ) -> Result<Tensor> {
        let x = residual(x, &self.attention_norm, NormPlacement::Post, |h| {
            let a = match packing {
                Some(p) => self.attention.forward_packed(h, p, mask, train)?,
                None => self.attention.forward(h, mask, None, train)?,
            };
            dropout(&a, self.dropout, train)
        })?;
        residual(&x, &self.output_norm, NormPlacement::Post, |h| {
            self.ffn.forward(h, train)
        })
    }
}

/// The masked-LM head: dense + activation + LayerNorm, then the tied decoder.
#[derive(Debug, Clone)]
struct BertMlmHead {
    dense: Linear,
    activation: Activation,
    layer_norm: LayerNorm,
    decoder: Linear,
}

impl BertMlmHead {
    fn load(cfg: &BertConfig, word_embeddings: &Tensor, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let n = cfg.family.mlm_names();
        let (bias_module, bias_name) = n.bias.rsplit_once('.').unwrap_or(("", n.bias));
        let bias_vb = if bias_module.is_empty() {
            vb.clone()
        } else {
            vb.pp(bias_module)
        };
        let bias = bias_vb.get_with_hints(cfg.vocab_size, bias_name, Init::Const(0.0))?;
        let decoder_weight = if cfg.tie_word_embeddings {
            word_embeddings.clone()
        } else {
            vb.pp(n.decoder).get((cfg.vocab_size, h), "weight")?
        };
        Ok(Self {
            dense: Linear::load(h, h, true, vb.pp(n.dense))?,
            // RoBERTa's lm_head applies GELU whatever `hidden_act` says.
            activation: match cfg.family.is_roberta() {
                true => Activation::Gelu,
                false => cfg.hidden_act,
            },
            layer_norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp(n.norm))?,
            decoder: Linear::new(decoder_weight, Some(bias), false),
        })
    }

    /// (B, T, H) -> (B, T, V)
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.activation.forward(&self.dense.forward(hidden)?)?;
        self.decoder.forward(&self.layer_norm.forward(&h)?)
    }
}

/// The sequence classifier on the first token's state: BERT's pooler (dense + tanh,
/// shared with next-sentence prediction), RoBERTa's dense + tanh after a dropout,
/// DistilBERT's pre_classifier + ReLU; then dropout and the label projection.
#[derive(Debug, Clone)]
struct ClassifierHead {
    /// RoBERTa's own dense + tanh, DistilBERT's pre_classifier + ReLU; BERT: `None`
    /// (it reads the pooler).
    pre: Option<(Linear, Activation)>,
    /// RoBERTa drops out the first token's state before its dense layer as well.
    dropout_first: bool,
    out: Linear,
    dropout: f64,
}

impl ClassifierHead {
    fn load(cfg: &BertConfig, vb: &VarBuilder) -> Result<Self> {
        if cfg.num_labels() == 0 {
            candle_core::bail!(
                "a classification head needs labels (id2label or num_labels in config.json)"
            )
        }
        let h = cfg.hidden_size;
        let n = cfg.family.classifier_names();
        let pre = match cfg.family {
            EncoderFamily::Bert => None,
            EncoderFamily::DistilBert => Some(Activation::Relu),
            EncoderFamily::Roberta | EncoderFamily::XlmRoberta => Some(Activation::Tanh),
        };
        Ok(Self {
            pre: pre
                .map(|act| {
                    Ok::<_, candle_core::Error>((Linear::load(h, h, true, vb.pp(n.pre))?, act))
                })
                .transpose()?,
            dropout_first: cfg.family.is_roberta(),
            out: Linear::load(h, cfg.num_labels(), true, vb.pp(n.out))?,
            dropout: cfg.classifier_dropout.unwrap_or(cfg.hidden_dropout_prob),
        })
    }

    /// The first token's state, or BERT's pooled one: (B, H) -> (B, num_labels).
    fn forward(&self, first: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = first.clone();
        if let Some((dense, act)) = &self.pre {
            if self.dropout_first {
                x = dropout(&x, self.dropout, train)?;
            }
            x = act.forward(&dense.forward(&x)?)?;
        }
        self.out.forward(&dropout(&x, self.dropout, train)?)
    }
}

/// Which parts of the encoder to build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BertHeads {
    pub pooler: bool,
    pub mlm: bool,
    pub classifier: bool,
    /// Next-sentence prediction (`cls.seq_relationship`, BertForPreTraining).
    pub nsp: bool,
}

#[derive(Debug, Clone)]
pub struct Bert {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    pooler: Option<Linear>,
    mlm: Option<BertMlmHead>,
    classifier: Option<ClassifierHead>,
    /// IsNext / NotNext logits from the pooled [CLS] state.
    nsp: Option<Linear>,
    cfg: BertConfig,
    /// Training recomputes each layer in the backward pass ([`crate::nn::recompute`]).
    gradient_checkpointing: bool,
}

impl BertHeads {
    /// The heads a checkpoint holds (and, for a fresh model, its architecture implies).
    pub fn detect(cfg: &BertConfig, vb: &VarBuilder) -> Self {
        let family = cfg.family;
        let arch = cfg
            .architecture
            .clone()
            .unwrap_or_else(|| family.class("Model"));
        let prefix = family.prefix();
        let has = |n: &str| vb.contains_tensor(n) || vb.contains_tensor(&format!("{prefix}.{n}"));
        let pretraining = family == EncoderFamily::Bert && arch == "BertForPreTraining";
        let classifying = arch == family.class("ForSequenceClassification");
        Self {
            pooler: has("pooler.dense.weight")
                || (family.classifier_uses_pooler() && classifying)
                || pretraining,
            mlm: vb.contains_tensor(family.mlm_names().bias)
                || arch == family.class("ForMaskedLM")
                || pretraining,
            classifier: vb.contains_tensor(&format!("{}.weight", family.classifier_names().out))
                || classifying,
            nsp: family == EncoderFamily::Bert
                && (vb.contains_tensor("cls.seq_relationship.weight") || pretraining),
        }
    }
}

impl Bert {
    pub fn load(cfg: &BertConfig, heads: BertHeads, vb: VarBuilder) -> Result<Self> {
        let family = cfg.family;
        // Task models (BertFor*, RobertaFor*, ...) put the encoder under the family's
        // prefix, the bare model (BertModel) does not; a task model built on a bare
        // checkpoint reads it unprefixed and saves it prefixed (checkpoint/source.rs).
        let prefix = family.prefix();
        let task = heads.mlm || heads.classifier || heads.nsp;
        let word = "embeddings.word_embeddings.weight";
        let prefixed =
            task || (vb.contains_tensor(&format!("{prefix}.{word}")) && !vb.contains_tensor(word));
        let vb_b = if prefixed { vb.pp(prefix) } else { vb.clone() };
        let h = cfg.hidden_size;
        let embeddings = BertEmbeddings::load(cfg, vb_b.pp("embeddings"))?;
        let stack = family.layer_names().stack;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::load(cfg, vb_b.pp(format!("{stack}.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        if heads.pooler && family == EncoderFamily::DistilBert {
            candle_core::bail!("DistilBERT has no pooler")
        }
        let pooler = heads
            .pooler
            .then(|| Linear::load(h, h, true, vb_b.pp("pooler.dense")))
            .transpose()?;
        let mlm = heads
            .mlm
            .then(|| BertMlmHead::load(cfg, embeddings.word_embeddings.weight(), vb.clone()))
            .transpose()?;
        if heads.classifier && family.classifier_uses_pooler() && pooler.is_none() {
            candle_core::bail!("BERT's classifier needs the pooler")
        }
        let classifier = heads
            .classifier
            .then(|| ClassifierHead::load(cfg, &vb))
            .transpose()?;
        if heads.nsp && (family != EncoderFamily::Bert || pooler.is_none()) {
            candle_core::bail!("next-sentence prediction needs BERT's pooler")
        }
        let nsp = heads
            .nsp
            .then(|| Linear::load(h, 2, true, vb.pp("cls.seq_relationship")))
            .transpose()?;
        Ok(Self {
            embeddings,
            layers,
            pooler,
            mlm,
            classifier,
            nsp,
            cfg: cfg.clone(),
            gradient_checkpointing: false,
        })
    }

    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
    }

    /// Every linear layer: the encoder's, then the pooler's and the heads'.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all: Vec<&mut Linear> = vec![];
        for l in &mut self.layers {
            all.extend(l.attention.linears_mut());
            all.extend(l.ffn.linears_mut());
        }
        all.extend(self.pooler.as_mut());
        if let Some(m) = &mut self.mlm {
            all.extend([&mut m.dense, &mut m.decoder]);
        }
        if let Some(c) = &mut self.classifier {
            all.extend(c.pre.as_mut().map(|(dense, _)| dense));
            all.push(&mut c.out);
        }
        all.extend(self.nsp.as_mut());
        all
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    pub fn family(&self) -> EncoderFamily {
        self.cfg.family
    }

    pub fn has_mlm_head(&self) -> bool {
        self.mlm.is_some()
    }

    pub fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    pub fn has_nsp_head(&self) -> bool {
        self.nsp.is_some()
    }

    /// Last hidden states. ids, token types, mask: (B, T) -> (B, T, H).
    pub fn forward(
        &self,
        ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if t > self.cfg.max_tokens() {
            return Err(candle_core::Error::wrap(WickError::TooLong {
                len: t,
                max: self.cfg.max_tokens(),
            }));
        }
        let x = self.embeddings.forward(ids, token_type_ids, train)?; // (B, T, H)
        let mask = Mask::new(t, t, false, attention_mask, x.dtype(), x.device())?;
        // With padding, every layer runs on the real tokens only (nn/packing.rs).
        let packing = match attention_mask {
            Some(m) => Packing::from_mask(m)?,
            None => None,
        };
        let mut x = match &packing {
            Some(p) => p.pack(&x)?, // (N, H)
            None => x,
        };
        for layer in &self.layers {
            x = if train && self.gradient_checkpointing {
                let (layer, mask, packing) = (layer.clone(), mask.clone(), packing.clone());
                recompute::segment(&x, move |x| layer.forward(x, &mask, packing.as_ref(), true))?
            } else {
                layer.forward(&x, &mask, packing.as_ref(), train)?
            };
        }
        match &packing {
            Some(p) => p.unpack(&x), // (B, T, H)
            None => Ok(x),
        }
    }

    /// tanh(W·h_[CLS] + b): (B, T, H) -> (B, H).
    pub fn pooled(&self, hidden: &Tensor) -> Result<Tensor> {
        let pooler = self.pooler.as_ref().ok_or_else(|| {
            candle_core::Error::msg(format!(
                "this {} checkpoint has no pooler",
                self.cfg.family.name()
            ))
        })?;
        pooler.forward(&hidden.i((.., 0))?)?.tanh()
    }

    /// Masked-LM logits: (B, T, H) -> (B, T, V).
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.mlm.as_ref().ok_or_else(|| {
            let n = self.cfg.family.mlm_names();
            candle_core::Error::msg(format!(
                "this {} checkpoint has no masked-LM head ({}, {})",
                self.cfg.family.name(),
                n.dense,
                n.bias
            ))
        })?;
        head.forward(hidden)
    }

    /// Next-sentence logits from the pooled [CLS] state, (B, T, H) -> (B, 2): index 0 is
    /// "B follows A", 1 "B is a random sentence" (transformers' convention; no dropout,
    /// as in BertPreTrainingHeads).
    pub fn nsp_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let nsp = self.nsp.as_ref().ok_or_else(|| {
            candle_core::Error::msg(
                "this BERT checkpoint has no next-sentence head (cls.seq_relationship.*)",
            )
        })?;
        nsp.forward(&self.pooled(hidden)?)
    }

    /// Classification logits from the first token's state (BERT: the pooled one):
    /// (B, T, H) -> (B, num_labels).
    pub fn classifier_logits(&self, hidden: &Tensor, train: bool) -> Result<Tensor> {
        let classifier = self.classifier.as_ref().ok_or_else(|| {
            candle_core::Error::msg(format!(
                "this {} checkpoint has no classification head ({}.*)",
                self.cfg.family.name(),
                self.cfg.family.classifier_names().out
            ))
        })?;
        let first = if self.cfg.family.classifier_uses_pooler() {
            self.pooled(hidden)?
        } else {
            hidden.i((.., 0))?
        };
        classifier.forward(&first, train)
    }
}
