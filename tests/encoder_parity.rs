//! RoBERTa, XLM-RoBERTa and DistilBERT against transformers (tests/fixtures/
//! make_fixtures.py, `make_encoders`): tokenizer ids, hidden states on a right-padded
//! batch and one text at a time, RoBERTa's pooler, masked-LM logits, fill-mask,
//! classification probabilities and mean-pooled embeddings, all within 1e-4.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use common::*;
use serde_json::Value;
use wick::checkpoint::{load, LoadOptions, Model};
use wick::models::{Bert, EncoderFamily};
use wick::tokenizer::Tokenizer;

const ALL: [&str; 6] = [
    "tiny-roberta",
    "tiny-roberta-mlm",
    "tiny-roberta-cls",
    "tiny-xlm-roberta",
    "tiny-distilbert-mlm",
    "tiny-distilbert-cls",
];

fn encoder(dir: &str) -> (Bert, Tokenizer) {
    let p = load(fixture(dir).to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert!(
        p.weights.unused().is_empty(),
        "{dir}: unused tensors {:?}",
        p.weights.unused()
    );
    let tok = p.tokenizer().unwrap().clone();
    match p.model {
        Model::Bert(m) => (m, tok),
        other => panic!("{dir}: expected an encoder, got {}", other.architecture()),
    }
}

fn case(dir: &str) -> Value {
    expected("encoders.json")[dir].clone()
}

fn texts() -> Vec<String> {
    expected("encoders.json")["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// The padded batch transformers ran: (ids, mask), each (B, T), and the real lengths.
fn batch(exp: &Value) -> (Tensor, Tensor, Vec<usize>) {
    let rows =
        |key: &str| -> Vec<Vec<u32>> { exp[key].as_array().unwrap().iter().map(ids).collect() };
    let mask = rows("attention_mask");
    let lens = mask
        .iter()
        .map(|m| m.iter().sum::<u32>() as usize)
        .collect();
    let dev = Device::Cpu;
    (
        Tensor::new(rows("input_ids"), &dev).unwrap(),
        Tensor::new(mask, &dev).unwrap(),
        lens,
    )
}

#[test]
fn families_and_classes_are_read_from_config() {
    let want = [
        (EncoderFamily::Roberta, "RobertaModel"),
        (EncoderFamily::Roberta, "RobertaForMaskedLM"),
        (EncoderFamily::Roberta, "RobertaForSequenceClassification"),
        (EncoderFamily::XlmRoberta, "XLMRobertaForMaskedLM"),
        (EncoderFamily::DistilBert, "DistilBertForMaskedLM"),
        (
            EncoderFamily::DistilBert,
            "DistilBertForSequenceClassification",
        ),
    ];
    for (dir, (family, class)) in ALL.iter().zip(want) {
        let (m, _) = encoder(dir);
        assert_eq!(m.family(), family, "{dir}");
        assert_eq!(m.config().architectures(), vec![class.to_string()], "{dir}");
    }
    // RoBERTa's 66 position rows hold 64 tokens after the padding id.
    assert_eq!(encoder("tiny-roberta").0.config().max_tokens(), 64);
    assert_eq!(encoder("tiny-distilbert-mlm").0.config().max_tokens(), 64);
}

#[test]
fn tokenizers_match() {
    for dir in ALL {
        let exp = case(dir);
        let (_, tok) = encoder(dir);
        let (_, _, lens) = batch(&exp);
        for (i, text) in texts().iter().enumerate() {
            let want = ids(&exp["input_ids"][i])[..lens[i]].to_vec();
            assert_eq!(tok.encode(text, true).unwrap(), want, "{dir}: {text:?}");
        }
    }
}

#[test]
fn hidden_states_match_batched_and_one_by_one() {
    let dev = Device::Cpu;
    for dir in ALL {
        let exp = case(dir);
        let (model, _) = encoder(dir);
        let (ids_t, mask, lens) = batch(&exp);
        let hidden = model.forward(&ids_t, None, Some(&mask), false).unwrap();
        for (b, &len) in lens.iter().enumerate() {
            let want = floats2(&exp["last_hidden_state"][b]);
            let one = Tensor::new(&ids(&exp["input_ids"][b])[..len], &dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let alone = model.forward(&one, None, None, false).unwrap();
            for (t, want_t) in want.iter().enumerate() {
                let got = hidden.i((b, t)).unwrap().to_vec1::<f32>().unwrap();
                assert_close(&got, want_t, 1e-4, &format!("{dir} hidden[{b},{t}]"));
                let got = alone.i((0, t)).unwrap().to_vec1::<f32>().unwrap();
                assert_close(&got, want_t, 1e-4, &format!("{dir} alone[{b},{t}]"));
            }
        }
    }
}

#[test]
fn roberta_pooler_matches() {
    let exp = case("tiny-roberta");
    let (model, _) = encoder("tiny-roberta");
    let (ids_t, mask, _) = batch(&exp);
    let hidden = model.forward(&ids_t, None, Some(&mask), false).unwrap();
    let pooled = model.pooled(&hidden).unwrap().to_vec2::<f32>().unwrap();
    for (b, want) in floats2(&exp["pooler_output"]).iter().enumerate() {
        assert_close(&pooled[b], want, 1e-4, "roberta pooler");
    }
}

#[test]
fn masked_lm_logits_and_fill_mask_match() {
    for dir in [
        "tiny-roberta-mlm",
        "tiny-xlm-roberta",
        "tiny-distilbert-mlm",
    ] {
        let exp = case(dir);
        let (model, tok) = encoder(dir);
        let (ids_t, mask, lens) = batch(&exp);
        let hidden = model.forward(&ids_t, None, Some(&mask), false).unwrap();
        let logits = model.mlm_logits(&hidden).unwrap();
        for (b, &len) in lens.iter().enumerate() {
            let want = floats2(&exp["mlm_logits"][b]);
            for (t, want_t) in want.iter().enumerate().take(len) {
                let got = logits.i((b, t)).unwrap().to_vec1::<f32>().unwrap();
                assert_close(&got, want_t, 1e-4, &format!("{dir} mlm[{b},{t}]"));
            }
        }
        // The tokenizer's own mask token (`<mask>`, `[MASK]`), as pipeline("fill-mask").
        let fill = &exp["fill_mask"];
        let got = wick::tasks::fill_mask::fill_mask(
            &model,
            &tok,
            fill["text"].as_str().unwrap(),
            5,
            &Device::Cpu,
        )
        .unwrap();
        let want = fill["predictions"].as_array().unwrap();
        assert_eq!(got.len(), 1, "{dir}: one mask");
        for (g, w) in got[0].iter().zip(want) {
            assert_eq!(
                g.token_id as u64,
                w["token"].as_u64().unwrap(),
                "{dir} fill-mask"
            );
            assert!(
                (g.score as f64 - w["score"].as_f64().unwrap()).abs() < 1e-4,
                "{dir} fill-mask score {} vs {}",
                g.score,
                w["score"]
            );
        }
    }
}

#[test]
fn classification_probabilities_match() {
    for dir in ["tiny-roberta-cls", "tiny-distilbert-cls"] {
        let exp = case(dir);
        let (model, tok) = encoder(dir);
        let got = wick::tasks::classify::classify(
            &model,
            &tok,
            &texts(),
            None,
            &wick::eval::Thresholds::All(0.5),
            &Device::Cpu,
        )
        .unwrap();
        for (b, want) in floats2(&exp["cls_probs"]).iter().enumerate() {
            let probs: Vec<f32> = ["negative", "neutral", "positive"]
                .iter()
                .map(|l| got[b].scores[*l])
                .collect();
            assert_close(&probs, want, 1e-4, &format!("{dir} probs[{b}]"));
            assert_close(
                &got[b].logits,
                &floats(&exp["cls_logits"][b]),
                1e-4,
                &format!("{dir} logits[{b}]"),
            );
        }
    }
}

#[test]
fn mean_pooled_embeddings_match() {
    for dir in ALL {
        let exp = case(dir);
        let (model, tok) = encoder(dir);
        let got = wick::tasks::embed::embed(
            &model,
            &tok,
            &texts(),
            wick::tasks::embed::Pooling::Mean,
            true,
            None,
            &Device::Cpu,
        )
        .unwrap();
        for (b, want) in floats2(&exp["mean_embedding"]).iter().enumerate() {
            assert_close(&got[b], want, 1e-4, &format!("{dir} embedding[{b}]"));
        }
    }
}

/// `wick info` names the family and what wick does with it; a DistilBERT config whose
/// `dim` does not split into its heads is refused naming the file.
#[test]
fn info_names_the_family_and_bad_configs_are_refused() {
    for (dir, family, task) in [
        ("tiny-roberta-mlm", "RoBERTa", "fill-mask"),
        ("tiny-xlm-roberta", "XLM-RoBERTa", "fill-mask"),
        ("tiny-distilbert-cls", "DistilBERT", "classify"),
    ] {
        let v = wick_json(&["info", "--model", fixture(dir).to_str().unwrap(), "--json"]);
        assert_eq!(v["family"], family, "{dir}");
        assert!(v["supported"].to_string().contains(task), "{dir}: {v}");
        assert!(
            !v["supported"].to_string().contains("mlm+nsp"),
            "{dir}: {v}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("tiny-distilbert-mlm"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let cfg_path = dir.path().join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["n_heads"] = 5.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    wick_fails(
        &["info", "--model", dir.path().to_str().unwrap()],
        &["config.json", "dim is not divisible by n_heads"],
    );
}
