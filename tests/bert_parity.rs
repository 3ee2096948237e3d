//! BERT against transformers: BertModel (no prefix, pooler), BertForMaskedLM (`bert.`
//! prefix, tied decoder) and BertForSequenceClassification, on a padded batch.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use common::*;
use wick::checkpoint::{load, LoadOptions, Model};
use wick::models::Bert;

fn bert(dir: &str) -> (Bert, wick::tokenizer::Tokenizer) {
    let p = load(fixture(dir).to_str().unwrap(), &LoadOptions::default()).unwrap();
    let tok = p.tokenizer().unwrap().clone();
    match p.model {
        Model::Bert(m) => (m, tok),
        other => panic!("expected BERT, got {}", other.architecture()),
    }
}

fn batch(exp: &serde_json::Value) -> (Tensor, Tensor) {
    let rows = |key: &str| -> Vec<Vec<u32>> {
        exp[key]
            .as_array()
            .unwrap()
            .iter()
            .map(common::ids)
            .collect()
    };
    let dev = Device::Cpu;
    (
        Tensor::new(rows("input_ids"), &dev).unwrap(),
        Tensor::new(rows("attention_mask"), &dev).unwrap(),
    )
}

fn lengths(exp: &serde_json::Value) -> Vec<usize> {
    exp["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ids(m).iter().sum::<u32>() as usize)
        .collect()
}

#[test]
fn tokenizer_matches() {
    let exp = expected("tiny-bert.json");
    let (_, tok) = bert("tiny-bert");
    for (i, text) in exp["texts"].as_array().unwrap().iter().enumerate() {
        let want: Vec<u32> = ids(&exp["input_ids"][i])
            .into_iter()
            .filter(|&x| x != 0)
            .collect();
        assert_eq!(tok.encode(text.as_str().unwrap(), true).unwrap(), want);
    }
    // vocab.txt alone builds the same WordPiece tokenizer.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny-bert/vocab.txt"), dir.path().join("vocab.txt")).unwrap();
    let from_vocab = wick::tokenizer::Tokenizer::from_dir(dir.path()).unwrap();
    let text = exp["texts"][0].as_str().unwrap();
    assert_eq!(
        from_vocab.encode(text, true).unwrap(),
        tok.encode(text, true).unwrap()
    );
}

#[test]
fn hidden_states_and_pooler_match() {
    let exp = expected("tiny-bert.json");
    let (model, _) = bert("tiny-bert");
    let (ids, mask) = batch(&exp);
    let hidden = model.forward(&ids, None, Some(&mask), false).unwrap();
    for (b, len) in lengths(&exp).into_iter().enumerate() {
        let want = floats2(&exp["last_hidden_state"][b]);
        for (t, want_t) in want.iter().enumerate().take(len) {
            let got = hidden.i((b, t)).unwrap().to_vec1::<f32>().unwrap();
            assert_close(&got, want_t, 1e-4, &format!("hidden[{b},{t}]"));
        }
    }
    let pooled = model.pooled(&hidden).unwrap().to_vec2::<f32>().unwrap();
    for (b, want) in floats2(&exp["pooler_output"]).iter().enumerate() {
        assert_close(&pooled[b], want, 1e-4, "pooler");
    }
}

#[test]
fn token_types_of_a_sentence_pair_match() {
    let exp = expected("tiny-bert.json");
    let (model, tok) = bert("tiny-bert");
    let texts = exp["texts"].as_array().unwrap();
    let (pair_ids, types) = tok
        .encode_pair(texts[0].as_str().unwrap(), texts[1].as_str().unwrap())
        .unwrap();
    assert_eq!(pair_ids, ids(&exp["pair"]["input_ids"]));
    assert_eq!(types, ids(&exp["pair"]["token_type_ids"]));
    let dev = Device::Cpu;
    let x = Tensor::new(pair_ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let tt = Tensor::new(types.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let hidden = model
        .forward(&x, Some(&tt), None, false)
        .unwrap()
        .i(0)
        .unwrap();
    for (t, want) in floats2(&exp["pair"]["last_hidden_state"])
        .iter()
        .enumerate()
    {
        assert_close(
            &hidden.i(t).unwrap().to_vec1::<f32>().unwrap(),
            want,
            1e-4,
            "pair hidden",
        );
    }
}

#[test]
fn masked_lm_logits_match() {
    let exp = expected("tiny-bert.json");
    let (model, _) = bert("tiny-bert-mlm");
    assert!(model.has_mlm_head());
    let (ids, mask) = batch(&exp);
    let logits = model
        .mlm_logits(&model.forward(&ids, None, Some(&mask), false).unwrap())
        .unwrap();
    for (b, len) in lengths(&exp).into_iter().enumerate() {
        let want = floats2(&exp["mlm_logits"][b]);
        for (t, want_t) in want.iter().enumerate().take(len) {
            let got = logits.i((b, t)).unwrap().to_vec1::<f32>().unwrap();
            assert_close(&got, want_t, 1e-4, &format!("mlm[{b},{t}]"));
        }
    }
}

#[test]
fn classification_logits_match_and_labels_load() {
    let exp = expected("tiny-bert.json");
    let (model, _) = bert("tiny-bert-cls");
    assert_eq!(
        model.config().labels(),
        vec!["negative", "neutral", "positive"]
    );
    let (ids, mask) = batch(&exp);
    let hidden = model.forward(&ids, None, Some(&mask), false).unwrap();
    let logits = model
        .classifier_logits(&hidden, false)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (b, want) in floats2(&exp["cls_logits"]).iter().enumerate() {
        assert_close(&logits[b], want, 1e-4, "classifier logits");
    }
}
