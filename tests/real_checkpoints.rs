//! The real pretrained checkpoints in ../shared/data against what sentence-transformers
//! and transformers compute on them (fixtures written by tests/fixtures/make_fixtures.py,
//! and the categorium model's own expected.json).

mod common;

use candle_core::{Device, Tensor, D};
use common::*;
use wick::checkpoint::{load, LoadOptions, Model};
use wick::tasks::{classify::classify, embed::embed, embed::Pooling, score::score};

fn load_shared(name: &str) -> Option<wick::checkpoint::Pretrained> {
    let dir = shared(name)?;
    Some(load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap())
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// all-MiniLM-L6-v2: mean pooling + L2 normalisation, batched, as sentence-transformers.
#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let Some(p) = load_shared("all-minilm-l6-v2") else {
        return;
    };
    let Model::Bert(bert) = &p.model else {
        panic!("not BERT")
    };
    let exp = expected("all-minilm-l6-v2.json");
    let texts = strings(&exp["texts"]);
    let tok = p.tokenizer().unwrap();
    // Its tokenizer.json pads everything to 128; a user's batch must not be.
    assert_eq!(tok.encode("hi", true).unwrap().len(), 3);
    let got = embed(bert, tok, &texts, Pooling::Mean, true, None, &Device::Cpu).unwrap();
    for (g, w) in got.iter().zip(floats2(&exp["embeddings"])) {
        let dot: f32 = g.iter().zip(&w).map(|(a, b)| a * b).sum();
        let (ng, nw) = (
            g.iter().map(|a| a * a).sum::<f32>().sqrt(),
            w.iter().map(|a| a * a).sum::<f32>().sqrt(),
        );
        let cos = dot / (ng * nw);
        assert!(cos >= 0.99999, "cosine {cos}");
        assert_close(g, &w, 1e-4, "embedding");
    }
}

/// gpt2-shakespeare-small: hub layout (no prefix), fp16 weights, tied head.
#[test]
fn gpt2_shakespeare_scores_and_greedy_match_transformers() {
    let Some(p) = load_shared("gpt2-shakespeare-small") else {
        return;
    };
    let Model::Gpt2(gpt2) = &p.model else {
        panic!("not GPT-2")
    };
    let tok = p.tokenizer().unwrap();
    let dev = Device::Cpu;
    for case in expected("gpt2-shakespeare-small.json")["cases"]
        .as_array()
        .unwrap()
    {
        let ids = tok.encode(case["text"].as_str().unwrap(), false).unwrap();
        assert_eq!(ids, common::ids(&case["token_ids"]));
        let s = score(gpt2, &ids, &dev).unwrap();
        assert_close(&s.logprobs, &floats(&case["logprobs"]), 1e-4, "logprobs");
        assert!((s.mean_nll - case["mean_nll"].as_f64().unwrap()).abs() < 1e-4);

        let want = common::ids(&case["greedy_new_ids"]);
        let mut cache = gpt2.new_cache(ids.len() + want.len());
        let mut input = Tensor::new(ids.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut got = vec![];
        while got.len() < want.len() {
            let logits = gpt2.forward(&input, None, Some(&mut cache), false).unwrap();
            let t = logits.dim(1).unwrap();
            let next = logits
                .narrow(1, t - 1, 1)
                .unwrap()
                .argmax(D::Minus1)
                .unwrap();
            let next = next.flatten_all().unwrap().to_vec1::<u32>().unwrap()[0];
            got.push(next);
            input = Tensor::new(&[[next]], &dev).unwrap();
        }
        assert_eq!(got, want);
    }
}

/// bert-topic-categorium-en: a trained classification head; its expected.json holds
/// transformers' logits. Run as one padded batch.
#[test]
fn categorium_classifier_logits_match_batched() {
    let Some(p) = load_shared("bert-topic-categorium-en") else {
        return;
    };
    let Model::Bert(bert) = &p.model else {
        panic!("not BERT")
    };
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.dir.join("expected.json")).unwrap())
            .unwrap();
    let cases = exp["cases"].as_array().unwrap();
    let texts: Vec<String> = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let tok = p.tokenizer().unwrap();
    for (t, c) in texts.iter().zip(cases) {
        assert_eq!(tok.encode(t, true).unwrap(), common::ids(&c["input_ids"]));
    }
    let all = wick::eval::Thresholds::All(0.5);
    let got = classify(bert, tok, &texts, None, &all, &Device::Cpu).unwrap();
    for (g, c) in got.iter().zip(cases) {
        assert_close(&g.logits, &floats(&c["logits"]), 1e-4, "logits");
        assert_eq!(g.label, c["label"].as_str().unwrap());
    }
}
