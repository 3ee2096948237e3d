//! Fine-tuning RoBERTa, XLM-RoBERTa and DistilBERT with `wick train`: the loss falls,
//! and the checkpoint is saved as transformers writes that family's task model (its
//! config.json fields and class, the same tensor names as the transformers-made
//! fixture of that class), so `from_pretrained` reads it
//! (tests/fixtures/check_transformers_loads.py runs that side in Python).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use serde_json::Value;

const CORPUS: &str = "To be, or not to be, that is the question.\nWhether 'tis nobler in the mind to suffer\nA journey of a thousand miles begins with one step.\n";

fn tensor_names(dir: &Path) -> BTreeSet<String> {
    safetensors_names(&dir.join("model.safetensors"))
        .into_iter()
        .collect()
}

fn config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn train(model: &str, objective: &str, data: &Path, out: &Path, iters: &str) -> String {
    let model = fixture(model);
    let (code, stdout, stderr) = wick(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--objective",
        objective,
        "--data",
        data.to_str().unwrap(),
        "--eval-data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-iters",
        iters,
        "--batch-size",
        "6",
        "--block-size",
        "16",
        "--learning-rate",
        "0.003",
        "--warmup-iters",
        "2",
        "--log-every",
        "1",
        "--eval-iters",
        "2",
        "--eval-every",
        "1000",
    ]);
    assert_eq!(code, 0, "{objective} on {}: {stderr}", model.display());
    stdout
}

#[test]
fn masked_lm_fine_tunes_save_each_familys_masked_lm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("corpus.txt");
    std::fs::write(&data, CORPUS.repeat(40)).unwrap();
    for (fixture_dir, class, mask) in [
        ("tiny-roberta-mlm", "RobertaForMaskedLM", "<mask>"),
        ("tiny-xlm-roberta", "XLMRobertaForMaskedLM", "<mask>"),
        ("tiny-distilbert-mlm", "DistilBertForMaskedLM", "[MASK]"),
    ] {
        let out = dir.path().join(fixture_dir);
        train(fixture_dir, "mlm", &data, &out, "60");
        let l = losses(&out);
        let first: f64 = l[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
        let last: f64 = l[l.len() - 5..].iter().map(|x| x.1).sum::<f64>() / 5.0;
        assert!(last < first * 0.8, "{fixture_dir}: {first} -> {last}");
        let cfg = config(&out);
        assert_eq!(cfg["architectures"][0], class);
        assert_eq!(
            tensor_names(&out),
            tensor_names(&fixture(fixture_dir)),
            "{fixture_dir}: the names transformers wrote"
        );
        // The tokenizer's own mask token fills in the fine-tuned model.
        let text = format!("to be or {mask} to be");
        let v = wick_json(&[
            "fill-mask",
            "--model",
            out.to_str().unwrap(),
            "--text",
            &text,
            "--json",
        ]);
        assert!(
            v["predictions"].as_array().is_some_and(|p| !p.is_empty()),
            "{v}"
        );
        let outputs = serde_json::json!({"fill_mask": text, "wick": v});
        keep_saved(&out, fixture_dir, Some(outputs));
    }
}

#[test]
fn classification_fine_tunes_add_each_familys_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("sentence\tlabel\n");
    for w in [
        "quick brown fox",
        "the question",
        "to be",
        "a journey",
        "thousand miles",
        "one step",
    ] {
        rows += &format!("the quick {w}\tpositive\nthe lazy {w}\tnegative\n");
    }
    let data = dir.path().join("sst.tsv");
    std::fs::write(&data, rows).unwrap();
    // From a checkpoint without a head (a bare RobertaModel, a DistilBertForMaskedLM):
    // the head starts fresh, under the names of transformers' own class.
    for (base, like, class, fresh) in [
        (
            "tiny-roberta",
            "tiny-roberta-cls",
            "RobertaForSequenceClassification",
            "classifier.out_proj.weight",
        ),
        (
            "tiny-distilbert-mlm",
            "tiny-distilbert-cls",
            "DistilBertForSequenceClassification",
            "pre_classifier.weight",
        ),
    ] {
        let out = dir.path().join(like);
        let stdout = train(base, "classify", &data, &out, "40");
        assert!(
            stdout.contains(fresh),
            "{base}: says it initialised {fresh}: {stdout}"
        );
        assert!(stdout.contains("accuracy     100.00%"), "{base}: {stdout}");
        let cfg = config(&out);
        assert_eq!(cfg["architectures"][0], class);
        assert_eq!(cfg["id2label"]["1"], "positive");
        let mut want = tensor_names(&fixture(like));
        let got = tensor_names(&out);
        if base == "tiny-distilbert-mlm" {
            // DistilBERT's classifier does not use the masked-LM head, which wick keeps
            // out of a classifier's checkpoint as transformers' class has none.
            want.retain(|n| !n.starts_with("vocab_"));
        }
        assert_eq!(
            got, want,
            "{base}: the names transformers writes for {class}"
        );
        let v = wick_json(&[
            "classify",
            "--model",
            out.to_str().unwrap(),
            "--text",
            "the quick to be",
            "--text",
            "the lazy one step",
            "--json",
        ]);
        assert_eq!(v["predictions"][0]["label"], "positive");
        assert_eq!(v["predictions"][1]["label"], "negative");
        let texts = ["the quick to be", "the lazy one step"];
        let outputs = serde_json::json!({"classify": texts, "wick": v});
        keep_saved(&out, like, Some(outputs));
    }
}

#[test]
fn distilbert_config_is_written_in_its_own_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("corpus.txt");
    std::fs::write(&data, CORPUS.repeat(40)).unwrap();
    let out = dir.path().join("d");
    train("tiny-distilbert-mlm", "mlm", &data, &out, "3");
    let cfg = config(&out);
    assert_eq!(cfg["model_type"], "distilbert");
    for (k, v) in [
        ("dim", 32),
        ("n_layers", 2),
        ("n_heads", 4),
        ("hidden_dim", 64),
    ] {
        assert_eq!(cfg[k], v, "{k}");
    }
    assert!(cfg.get("hidden_size").is_none() && cfg.get("type_vocab_size").is_none());
}

#[test]
fn next_sentence_prediction_is_refused_for_roberta_and_distilbert() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("corpus.txt");
    std::fs::write(&data, CORPUS.repeat(40)).unwrap();
    for m in ["tiny-roberta-mlm", "tiny-distilbert-mlm"] {
        let model = fixture(m);
        wick_fails(
            &[
                "train",
                "--model",
                model.to_str().unwrap(),
                "--objective",
                "mlm+nsp",
                "--data",
                data.to_str().unwrap(),
                "--out",
                dir.path().join("x").to_str().unwrap(),
            ],
            &["--objective mlm+nsp does not fit"],
        );
    }
}
