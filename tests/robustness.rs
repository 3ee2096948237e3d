//! The bad-input sweep's findings, each pinned through the binary: inputs that were
//! accepted but wrong, and writes that could lose a user's files.

mod common;

use common::*;

fn fx(name: &str) -> String {
    fixture(name).to_str().unwrap().to_string()
}

#[test]
fn a_huge_max_new_tokens_does_not_wrap_around() {
    let m = fx("tiny-gpt2");
    let max = u64::MAX.to_string();
    wick_fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "To be",
            "--max-new-tokens",
            &max,
        ],
        &["exceeds the model's context"],
    );
    wick_fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "To be",
            "--num-beams",
            "2",
            "--max-new-tokens",
            &max,
        ],
        &["exceeds the model's context"],
    );
}

#[test]
fn float_flags_refuse_nan_and_infinity() {
    let m = fx("tiny-gpt2");
    for (flag, value) in [
        ("--length-penalty", "NaN"),
        ("--temperature", "nan"),
        ("--top-p", "inf"),
        ("--repetition-penalty", "1e39"),
        ("--presence-penalty", "-inf"),
    ] {
        let arg = format!("{flag}={value}");
        wick_fails(
            &["generate", "--model", &m, "--prompt", "To be", &arg],
            &[flag],
        );
    }
    for (flag, value) in [("--learning-rate", "NaN"), ("--dropout", "inf")] {
        wick_fails(
            &["train", "--max-iters", "1", flag, value],
            &[flag, "finite"],
        );
    }
}

#[test]
fn generate_errors_name_its_own_flags() {
    let m = fx("tiny-gpt2");
    let err = wick_fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompts-file",
            "/nonexistent/prompts.txt",
        ],
        &["--prompts-file", "/nonexistent/prompts.txt"],
    );
    assert!(!err.contains("--file"), "{err}");
    let empty = tempfile::NamedTempFile::new().unwrap();
    let err = wick_fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompts-file",
            empty.path().to_str().unwrap(),
        ],
        &["--prompt", "--prompts-file"],
    );
    assert!(!err.contains("--text"), "{err}");
}

/// A folder with `files` (name → bytes), and a check that they are all still there,
/// unchanged, with nothing added.
fn folder_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, impl Fn()) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let path = dir.path().to_path_buf();
    let want: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect();
    let untouched = move || {
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected: Vec<String> = want.iter().map(|(n, _)| n.clone()).collect();
        expected.sort();
        assert_eq!(names, expected, "files added or removed");
        for (n, b) in &want {
            assert_eq!(&std::fs::read(path.join(n)).unwrap(), b, "{n} changed");
        }
    };
    (dir, untouched)
}

#[test]
fn train_leaves_a_folder_with_weights_or_a_tokenizer_alone() {
    for file in ["model.safetensors", "tokenizer.json", "pytorch_model.bin"] {
        let (dir, untouched) = folder_with(&[(file, b"precious")]);
        let out = dir.path().to_str().unwrap();
        wick_fails(
            &["train", "--max-iters", "1", "--out", out],
            &["holds another model", file, "nothing was overwritten"],
        );
        untouched();
    }
}

#[test]
fn quantize_does_not_overwrite_a_model_or_a_run() {
    let m = fx("tiny-gpt2");
    for file in ["config.json", "tokenizer.json", "trainer_state.json"] {
        let (dir, untouched) = folder_with(&[(file, b"{}")]);
        let out = dir.path().to_str().unwrap();
        wick_fails(
            &["quantize", "--model", &m, "--format", "q8_0", "--out", out],
            &["--out", file, "nothing was overwritten"],
        );
        untouched();
    }
    // Into the model's own folder.
    wick_fails(
        &["quantize", "--model", &m, "--format", "q8_0", "--out", &m],
        &["--out", "config.json"],
    );
}

#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused_at_load() {
    let dir = copy_fixture("tiny-gpt2");
    let path = dir.path().join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let added = tok["added_tokens"].as_array_mut().unwrap();
    for id in 320..330 {
        added.push(
            serde_json::json!({"id": id, "content": format!("<extra_{id}>"),
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false,
            "special": true}),
        );
    }
    std::fs::write(&path, tok.to_string()).unwrap();
    let m = dir.path().to_str().unwrap();
    for cmd in [
        &["score", "--model", m, "--text", "To be"][..],
        &["info", "--model", m],
    ] {
        wick_fails(cmd, &["config.json", "330 tokens", "vocab_size is 320"]);
    }
}

/// Names of the entries of `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn the_token_cache_stays_out_of_the_data_folder() {
    let data = tempfile::tempdir().unwrap();
    let corpus = data.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "To be, or not to be, that is the question.\n".repeat(40),
    )
    .unwrap();
    let tiny = data.path().join("tiny.json");
    std::fs::write(
        &tiny,
        r#"{"model_type": "gpt2", "vocab_size": 0, "n_positions": 16, "n_embd": 16,
            "n_layer": 1, "n_head": 2}"#,
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let train = |out: &str, cache: Option<&std::path::Path>| {
        let mut c = wick_command();
        c.args([
            "train",
            "--model",
            tiny.to_str().unwrap(),
            "--tokenizer",
            "char",
        ])
        .args([
            "--data",
            corpus.to_str().unwrap(),
            "--max-iters",
            "2",
            "--batch-size",
            "2",
        ])
        .args([
            "--block-size",
            "8",
            "--eval-every",
            "100",
            "--sample-tokens",
            "0",
        ])
        .arg("--out")
        .arg(work.path().join(out));
        match cache {
            Some(d) => c.env("WICK_CACHE_DIR", d),
            // No cache folder at all: the run's folder holds it.
            None => c
                .env_remove("WICK_CACHE_DIR")
                .env_remove("XDG_CACHE_HOME")
                .env_remove("HOME"),
        };
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    train("run1", Some(&cache));
    assert_eq!(names(data.path()), ["corpus.txt", "tiny.json"]);
    let cached = names(&cache.join("tokens"));
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(
        cached[0].starts_with("corpus.txt.wick-tokens-"),
        "{cached:?}"
    );
    train("run2", None);
    assert_eq!(names(data.path()), ["corpus.txt", "tiny.json"]);
    assert!(names(&work.path().join("run2"))
        .iter()
        .any(|n| n.contains(".wick-tokens-")));
}
