//! Saving writes the Hugging Face layout, and loading it back gives identical outputs.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use wick::checkpoint::{load, save_pretrained, LoadOptions, Model};

fn roundtrip(
    name: &str,
) -> (
    wick::checkpoint::Pretrained,
    wick::checkpoint::Pretrained,
    tempfile::TempDir,
) {
    let a = load(fixture(name).to_str().unwrap(), &LoadOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_pretrained(
        out.path(),
        &a.config,
        &a.weights.tensors(),
        a.tokenizer.as_ref(),
    )
    .unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.path().join(f).is_file(), "{f}");
    }
    let b = load(out.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(a.config, b.config);
    // For tests/fixtures/check_transformers_loads.py: keep what was saved.
    if let Some(keep) = std::env::var_os("WICK_KEEP_SAVED") {
        let keep = std::path::Path::new(&keep).join(name);
        std::fs::create_dir_all(&keep).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(out.path().join(f), keep.join(f)).unwrap();
        }
    }
    (a, b, out)
}

#[test]
fn gpt2_roundtrips_with_identical_logits() {
    let (a, b, _dir) = roundtrip("tiny-gpt2-hub");
    let x = Tensor::new(&[[3u32, 100, 7, 250]], &Device::Cpu).unwrap();
    let (Model::Gpt2(ma), Model::Gpt2(mb)) = (&a.model, &b.model) else {
        panic!()
    };
    let la = ma
        .forward(&x, None, None, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let lb = mb
        .forward(&x, None, None, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(la, lb);
    assert_eq!(
        b.tokenizer.unwrap().encode("To be", false).unwrap(),
        a.tokenizer.unwrap().encode("To be", false).unwrap()
    );
}

#[test]
fn bert_classifier_roundtrips_with_labels() {
    let (a, b, dir) = roundtrip("tiny-bert-cls");
    let (Model::Bert(ma), Model::Bert(mb)) = (&a.model, &b.model) else {
        panic!()
    };
    assert!(mb.has_classifier());
    assert_eq!(
        mb.config().labels(),
        vec!["negative", "neutral", "positive"]
    );
    let x = Tensor::new(&[[2u32, 50, 60, 3]], &Device::Cpu).unwrap();
    let ha = ma
        .classifier_logits(&ma.forward(&x, None, None, false).unwrap(), false)
        .unwrap();
    let hb = mb
        .classifier_logits(&mb.forward(&x, None, None, false).unwrap(), false)
        .unwrap();
    assert_eq!(ha.to_vec2::<f32>().unwrap(), hb.to_vec2::<f32>().unwrap());
    // The file is what transformers writes: same tensor names, architectures and labels.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["2"], "positive");
    let saved =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let original =
        candle_core::safetensors::load(fixture("tiny-bert-cls/model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<_> = saved.keys().collect();
    let mut want: Vec<_> = original.keys().collect();
    names.sort();
    want.sort();
    assert_eq!(names, want);
}
