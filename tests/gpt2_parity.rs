//! GPT-2 against transformers on the same weights, in every key layout and weight format.

mod common;

use candle_core::{Device, IndexOp, Tensor, D};
use common::*;
use wick::checkpoint::{load, LoadOptions, Model};
use wick::models::Gpt2;

fn gpt2(dir: &str) -> (Gpt2, wick::tokenizer::Tokenizer) {
    let p = load(fixture(dir).to_str().unwrap(), &LoadOptions::default()).unwrap();
    let tok = p.tokenizer().unwrap().clone();
    match p.model {
        Model::Gpt2(m) => (m, tok),
        other => panic!("expected GPT-2, got {}", other.architecture()),
    }
}

fn check_logits(dir: &str, expected_file: &str) {
    let (model, tok) = gpt2(dir);
    for case in expected(expected_file)["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want_ids = ids(&case["token_ids"]);
        assert_eq!(
            tok.encode(text, false).unwrap(),
            want_ids,
            "{dir}: token ids of {text:?}"
        );
        let x = Tensor::new(want_ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&x, None, None, false).unwrap().i(0).unwrap();
        for (t, row) in floats2(&case["logits"]).iter().enumerate() {
            let got = logits.i(t).unwrap().to_vec1::<f32>().unwrap();
            assert_close(&got, row, 1e-4, &format!("{dir} logits[{t}]"));
        }
    }
}

#[test]
fn transformers5_layout_matches() {
    check_logits("tiny-gpt2", "tiny-gpt2.json");
}

#[test]
fn hub_layout_without_prefix_with_buffers_and_vocab_files_matches() {
    check_logits("tiny-gpt2-hub", "tiny-gpt2.json");
}

#[test]
fn pytorch_bin_matches() {
    check_logits("tiny-gpt2-bin", "tiny-gpt2.json");
}

#[test]
fn sharded_safetensors_matches() {
    check_logits("tiny-gpt2-sharded", "tiny-gpt2.json");
}

#[test]
fn untied_head_exact_gelu_and_n_inner_match() {
    check_logits("tiny-gpt2-untied", "tiny-gpt2-untied.json");
}

/// Greedy continuation with the KV cache equals transformers' `generate`.
#[test]
fn greedy_with_kv_cache_matches_transformers() {
    let (model, _) = gpt2("tiny-gpt2");
    for case in expected("tiny-gpt2.json")["cases"].as_array().unwrap() {
        let prompt = ids(&case["token_ids"]);
        let want = ids(&case["greedy_new_ids"]);
        let mut cache = model.new_cache(prompt.len() + want.len());
        let mut input = Tensor::new(prompt.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut got = vec![];
        for _ in 0..want.len() {
            let logits = model
                .forward(&input, None, Some(&mut cache), false)
                .unwrap();
            let next = logits
                .i((0, logits.dim(1).unwrap() - 1))
                .unwrap()
                .argmax(D::Minus1)
                .unwrap();
            let next = next.to_scalar::<u32>().unwrap();
            got.push(next);
            input = Tensor::new(&[[next]], &Device::Cpu).unwrap();
        }
        assert_eq!(got, want, "greedy ids for {:?}", case["text"]);
    }
}

/// A left-padded batch gives each row what it gives alone (positions count real tokens,
/// padding keys get no weight).
#[test]
fn padded_batch_equals_each_sequence_alone() {
    let (model, tok) = gpt2("tiny-gpt2");
    let texts = ["To be, or not to be", "Héllo café 🙂 and more words here"];
    let seqs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tok.encode(t, false).unwrap())
        .collect();
    let len = seqs.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![];
    let mut mask = vec![];
    for s in &seqs {
        ids.extend(std::iter::repeat_n(0u32, len - s.len()).chain(s.iter().copied()));
        mask.extend(
            std::iter::repeat_n(0u32, len - s.len()).chain(std::iter::repeat_n(1, s.len())),
        );
    }
    let dev = Device::Cpu;
    let ids = Tensor::from_vec(ids, (2, len), &dev).unwrap();
    let mask = Tensor::from_vec(mask, (2, len), &dev).unwrap();
    let batched = model.forward(&ids, Some(&mask), None, false).unwrap();
    for (b, s) in seqs.iter().enumerate() {
        let alone = model
            .forward(
                &Tensor::new(s.as_slice(), &dev)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                None,
                None,
                false,
            )
            .unwrap()
            .i(0)
            .unwrap();
        let rows = batched.i((b, len - s.len()..)).unwrap();
        let diff = (rows - alone)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "row {b}: {diff}");
    }
    // And the mask matters: without it the padded row differs.
    let unmasked = model.forward(&ids, None, None, false).unwrap();
    let d = (unmasked.i(0).unwrap() - batched.i(0).unwrap())
        .unwrap()
        .abs()
        .unwrap();
    assert!(d.max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-3);
}
