//! Damaged checkpoints fail with an error naming the file (and tensor), a non-zero exit
//! and no panic.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::*;

fn tensors(dir: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn save(dir: &std::path::Path, ts: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(ts, dir.join("model.safetensors")).unwrap();
}

fn info(dir: &std::path::Path) -> Vec<String> {
    vec![
        "info".into(),
        "--model".into(),
        dir.to_str().unwrap().into(),
    ]
}

fn fails(dir: &std::path::Path, needles: &[&str]) -> String {
    let args = info(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    wick_fails(&args, needles)
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let d = copy_fixture("tiny-gpt2");
    let mut ts = tensors(d.path());
    ts.remove("transformer.h.1.mlp.c_fc.weight").unwrap();
    save(d.path(), &ts);
    fails(
        d.path(),
        &[
            "model.safetensors",
            "transformer.h.1.mlp.c_fc.weight",
            "missing",
        ],
    );
}

#[test]
fn wrong_shape_names_both_shapes() {
    let d = copy_fixture("tiny-gpt2");
    let mut ts = tensors(d.path());
    ts.insert(
        "transformer.ln_f.weight".into(),
        Tensor::ones(31, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    save(d.path(), &ts);
    fails(
        d.path(),
        &[
            "model.safetensors",
            "transformer.ln_f.weight",
            "[31]",
            "[32]",
        ],
    );
}

#[test]
fn truncated_weights_name_the_file() {
    let d = copy_fixture("tiny-bert");
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    fails(d.path(), &["model.safetensors"]);
}

#[test]
fn garbage_weights_name_the_file() {
    let d = copy_fixture("tiny-bert");
    std::fs::write(
        d.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    fails(d.path(), &["model.safetensors"]);
}

fn edit_config(
    dir: &std::path::Path,
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn config_field_of_the_wrong_type_is_named() {
    let d = copy_fixture("tiny-gpt2");
    edit_config(d.path(), |c| {
        c.insert("n_layer".into(), "two".into());
    });
    fails(d.path(), &["config.json", "n_layer"]);
}

#[test]
fn unknown_config_field_is_named() {
    let d = copy_fixture("tiny-bert");
    edit_config(d.path(), |c| {
        c.insert("num_hidden_layerz".into(), 3.into());
    });
    fails(d.path(), &["config.json", "num_hidden_layerz"]);
}

#[test]
fn config_that_disagrees_with_weights_is_a_shape_error() {
    let d = copy_fixture("tiny-bert");
    edit_config(d.path(), |c| {
        c.insert("intermediate_size".into(), 80.into());
    });
    fails(
        d.path(),
        &[
            "model.safetensors",
            "intermediate.dense.weight",
            "[64, 32]",
            "[80, 32]",
        ],
    );
}

#[test]
fn missing_and_malformed_files() {
    let d = copy_fixture("tiny-gpt2");
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    fails(d.path(), &["config.json"]);
    let d = copy_fixture("tiny-gpt2");
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    fails(d.path(), &["config.json", "not valid JSON"]);
    let d = copy_fixture("tiny-gpt2");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    fails(d.path(), &["no weights"]);
    let d = copy_fixture("tiny-gpt2");
    std::fs::write(d.path().join("tokenizer.json"), "{}").unwrap();
    fails(d.path(), &["tokenizer.json"]);
    let d = copy_fixture("tiny-gpt2");
    edit_config(d.path(), |c| {
        c.insert("model_type".into(), "llama".into());
    });
    fails(d.path(), &["config.json", "llama"]);
}
