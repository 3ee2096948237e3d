//! The BERT-style encoders transformers ships, as small differences inside one model
//! definition ([`super::bert`]): where the weights live (`bert.`, `roberta.`,
//! `distilbert.`), what each layer's tensors are called, how positions are numbered,
//! whether there are token types, and which task heads sit on top.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncoderFamily {
    #[default]
    Bert,
    /// BERT with positions counted after the padding id and an `lm_head`/`classifier`
    /// with a dense + tanh before the labels.
    Roberta,
    /// RoBERTa's architecture under its own `model_type` (a sentencepiece vocabulary).
    XlmRoberta,
    /// No token types, no pooler, `q_lin`-style names, a ReLU `pre_classifier`.
    DistilBert,
}

/// The tensor names of one encoder layer, below `{prefix}.{stack}.N.`.
pub(crate) struct LayerNames {
    pub stack: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub attn_out: &'static str,
    pub attn_norm: &'static str,
    pub ffn_in: &'static str,
    pub ffn_out: &'static str,
    pub out_norm: &'static str,
}

const BERT_LAYER: LayerNames = LayerNames {
    stack: "encoder.layer",
    q: "attention.self.query",
    k: "attention.self.key",
    v: "attention.self.value",
    attn_out: "attention.output.dense",
    attn_norm: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    out_norm: "output.LayerNorm",
};

const DISTILBERT_LAYER: LayerNames = LayerNames {
    stack: "transformer.layer",
    q: "attention.q_lin",
    k: "attention.k_lin",
    v: "attention.v_lin",
    attn_out: "attention.out_lin",
    attn_norm: "sa_layer_norm",
    ffn_in: "ffn.lin1",
    ffn_out: "ffn.lin2",
    out_norm: "output_layer_norm",
};

/// The masked-LM head's tensors: dense, norm, tied decoder and its bias.
pub(crate) struct MlmNames {
    pub dense: &'static str,
    pub norm: &'static str,
    pub decoder: &'static str,
    pub bias: &'static str,
}

/// The classification head's tensors: the layer before the labels (BERT's is the
/// pooler, inside the encoder's prefix) and the label projection.
pub(crate) struct ClassifierNames {
    pub pre: &'static str,
    pub out: &'static str,
}

impl EncoderFamily {
    pub const ALL: [Self; 4] = [
        Self::Bert,
        Self::Roberta,
        Self::XlmRoberta,
        Self::DistilBert,
    ];

    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type)
    }

    /// config.json's `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::Roberta => "roberta",
            Self::XlmRoberta => "xlm-roberta",
            Self::DistilBert => "distilbert",
        }
    }

    /// The human name (`wick info`, the summary line).
    pub fn name(self) -> &'static str {
        match self {
            Self::Bert => "BERT",
            Self::Roberta => "RoBERTa",
            Self::XlmRoberta => "XLM-RoBERTa",
            Self::DistilBert => "DistilBERT",
        }
    }

    /// transformers' class for a head: `class("ForMaskedLM")` = "RobertaForMaskedLM".
    pub fn class(self, suffix: &str) -> String {
        let stem = match self {
            Self::Bert => "Bert",
            Self::Roberta => "Roberta",
            Self::XlmRoberta => "XLMRoberta",
            Self::DistilBert => "DistilBert",
        };
        format!("{stem}{suffix}")
    }

    /// The encoder's prefix in task models (`base_model_prefix`).
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::Roberta | Self::XlmRoberta => "roberta",
            Self::DistilBert => "distilbert",
        }
    }

    pub(crate) fn layer_names(self) -> &'static LayerNames {
        match self {
            Self::DistilBert => &DISTILBERT_LAYER,
            _ => &BERT_LAYER,
        }
    }

    pub(crate) fn mlm_names(self) -> MlmNames {
        match self {
            Self::Bert => MlmNames {
                dense: "cls.predictions.transform.dense",
                norm: "cls.predictions.transform.LayerNorm",
                decoder: "cls.predictions.decoder",
                bias: "cls.predictions.bias",
            },
            Self::Roberta | Self::XlmRoberta => MlmNames {
                dense: "lm_head.dense",
                norm: "lm_head.layer_norm",
                decoder: "lm_head.decoder",
                bias: "lm_head.bias",
            },
            Self::DistilBert => MlmNames {
                dense: "vocab_transform",
                norm: "vocab_layer_norm",
                decoder: "vocab_projector",
                bias: "vocab_projector.bias",
            },
        }
    }

    pub(crate) fn classifier_names(self) -> ClassifierNames {
        match self {
            Self::Bert => ClassifierNames {
                pre: "pooler.dense",
                out: "classifier",
            },
            Self::Roberta | Self::XlmRoberta => ClassifierNames {
                pre: "classifier.dense",
                out: "classifier.out_proj",
            },
            Self::DistilBert => ClassifierNames {
                pre: "pre_classifier",
                out: "classifier",
            },
        }
    }

    /// Segment embeddings (`token_type_embeddings`); DistilBERT has none.
    pub fn has_token_types(self) -> bool {
        self != Self::DistilBert
    }

    /// RoBERTa's architecture (RoBERTa and XLM-RoBERTa).
    pub fn is_roberta(self) -> bool {
        matches!(self, Self::Roberta | Self::XlmRoberta)
    }

    /// RoBERTa numbers real tokens from `pad_token_id + 1` (transformers'
    /// `create_position_ids_from_input_ids`), the others from 0.
    pub fn positions_after_padding(self) -> bool {
        self.is_roberta()
    }

    /// Whether the classifier reads the pooler (BERT) or its own layer on the first
    /// token (RoBERTa's dense + tanh, DistilBERT's pre_classifier + ReLU).
    pub fn classifier_uses_pooler(self) -> bool {
        self == Self::Bert
    }

    /// Tensor-name prefixes of the task heads and the pooler, which start fresh when a
    /// fine-tune adds them to a checkpoint that lacks them.
    pub fn head_prefixes(self) -> Vec<String> {
        let mut prefixes: Vec<String> = self
            .head_modules()
            .iter()
            .map(|m| format!("{m}."))
            .collect();
        if self != Self::DistilBert {
            prefixes.extend(["pooler.".to_string(), format!("{}.pooler.", self.prefix())]);
        }
        prefixes
    }

    /// The top-level (unprefixed) module names of the heads: everything else of a task
    /// model sits under [`Self::prefix`].
    pub fn head_modules(self) -> &'static [&'static str] {
        match self {
            Self::Bert => &["cls", "classifier"],
            Self::Roberta | Self::XlmRoberta => &["lm_head", "classifier"],
            Self::DistilBert => &[
                "vocab_transform",
                "vocab_layer_norm",
                "vocab_projector",
                "pre_classifier",
                "classifier",
            ],
        }
    }

    /// peft's default LoRA targets (its `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
    pub fn lora_targets(self) -> &'static [&'static str] {
        match self {
            Self::DistilBert => &["q_lin", "v_lin"],
            _ => &["query", "value"],
        }
    }
}
