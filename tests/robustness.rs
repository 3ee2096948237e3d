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

/// A small corpus and a one-layer GPT-2 config to train from scratch, in `dir`.
fn tiny_gpt2_run(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        "To be, or not to be, that is the question.\n".repeat(40),
    )
    .unwrap();
    let tiny = dir.join("tiny.json");
    std::fs::write(
        &tiny,
        r#"{"model_type": "gpt2", "vocab_size": 0, "n_positions": 16, "n_embd": 16,
            "n_layer": 1, "n_head": 2}"#,
    )
    .unwrap();
    (corpus, tiny)
}

#[test]
fn the_token_cache_stays_out_of_the_data_folder() {
    let data = tempfile::tempdir().unwrap();
    let (corpus, tiny) = tiny_gpt2_run(data.path());
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

#[test]
fn errors_stay_one_line_with_rust_backtrace_set() {
    let dir = copy_fixture("tiny-gpt2");
    let path = dir.path().join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c["n_layer"] = (c["n_layer"].as_u64().unwrap() + 1).into();
    std::fs::write(&path, c.to_string()).unwrap();
    let out = wick_command()
        .args([
            "score",
            "--model",
            dir.path().to_str().unwrap(),
            "--text",
            "To be",
        ])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is missing from the checkpoint"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn classification_data_needs_two_classes_and_no_blank_label() {
    let dir = tempfile::tempdir().unwrap();
    let bert = fixture("tiny-bert");
    let train = |name: &str, rows: &str, needles: &[&str]| {
        let data = dir.path().join(name);
        std::fs::write(&data, rows).unwrap();
        let out = dir.path().join(format!("{name}-run"));
        wick_fails(
            &[
                "train",
                "--model",
                bert.to_str().unwrap(),
                "--objective",
                "classify",
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--max-iters",
                "1",
            ],
            needles,
        );
        assert!(!out.exists(), "a refused run created {}", out.display());
    };
    train(
        "one.tsv",
        "sentence\tlabel\nthe quick fox\tpositive\nthe lazy dog\tpositive\n",
        &["one.tsv", "`positive`", "at least two classes"],
    );
    train(
        "blank.tsv",
        "sentence\tlabel\nthe quick fox\tpositive\nthe lazy dog\t\nto be\tnegative\n",
        &["blank.tsv", "row 3", "empty label"],
    );
    train(
        "blank.jsonl",
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \" \"}\n",
        &["blank.jsonl", "line 2", "empty label"],
    );
    // Data refused after the checks of flags and model (too short a corpus): the run's
    // folder, new for this run, goes again.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "abc").unwrap();
    let out = dir.path().join("short-run");
    wick_fails(
        &[
            "train",
            "--data",
            short.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-iters",
            "1",
        ],
        &["too few"],
    );
    assert!(!out.exists(), "a refused run left {}", out.display());
}

#[test]
fn flags_that_would_do_nothing_or_be_misread_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, tiny) = tiny_gpt2_run(dir.path());
    let out = dir.path().join("run");
    let (o, c) = (out.to_str().unwrap(), corpus.to_str().unwrap());
    let base = [
        "train",
        "--model",
        tiny.to_str().unwrap(),
        "--tokenizer",
        "char",
        "--data",
        c,
        "--batch-size",
        "2",
        "--block-size",
        "8",
        "--sample-tokens",
        "0",
        "--out",
        o,
    ];
    let run = |extra: &[&str]| wick(&[&base[..], extra].concat());
    // --eval-iters 0 would report a NaN validation loss.
    wick_fails(
        &[&base[..], &["--eval-iters", "0"]].concat(),
        &["--eval-iters"],
    );
    assert!(!out.exists());
    let (code, _, err) = run(&["--max-iters", "4", "--save-every", "4"]);
    assert_eq!(code, 0, "{err}");
    // Resuming a run at step 4 to --max-iters 2 would do nothing.
    wick_fails(
        &["train", "--resume", "--out", o, "--max-iters", "2"],
        &["at step 4", "--max-iters is 2", "nothing to train"],
    );
    // Fine-tuning a checkpoint: "char" is not a tokenizer file to read.
    wick_fails(
        &[
            "train",
            "--model",
            o,
            "--tokenizer",
            "char",
            "--data",
            c,
            "--out",
            dir.path().join("ft").to_str().unwrap(),
            "--max-iters",
            "1",
        ],
        &["--tokenizer char", "brings its own tokenizer"],
    );
    // fill-mask --top-k 0 would print nothing and succeed.
    let bert = fixture("tiny-bert-mlm");
    wick_fails(
        &[
            "fill-mask",
            "--model",
            bert.to_str().unwrap(),
            "--text",
            "the [MASK] fox",
            "--top-k",
            "0",
        ],
        &["--top-k"],
    );
}

/// Peak resident memory (bytes) of `wick args`, from wait4's rusage.
#[cfg(target_os = "linux")]
#[allow(clippy::zombie_processes)] // reaped by wait4 below
fn peak_rss(args: &[&str]) -> u64 {
    let child = wick_command()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child; `usage` is a valid out-pointer.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(r, child.id() as i32);
    assert_eq!(status, 0, "wick {args:?} failed");
    usage.ru_maxrss as u64 * 1024
}

/// Scoring a long single-line file: memory grows with the token ids (4 bytes each, a
/// few copies), not with the tokenizer's per-token records (~260 bytes each before).
/// `cargo test --release --test robustness -- --ignored` (about 15 s).
#[test]
#[ignore]
#[cfg(target_os = "linux")]
fn scoring_a_long_line_keeps_memory_near_the_token_ids() {
    let dir = tempfile::tempdir().unwrap();
    let line = "To be, or not to be, that is the question: whether 'tis nobler in the mind ";
    let write = |name: &str, bytes: usize| {
        let p = dir.path().join(name);
        std::fs::write(&p, line.repeat(bytes / line.len())).unwrap();
        p
    };
    let (small, big) = (write("small.txt", 40_000), write("big.txt", 4_000_000));
    let m = fx("tiny-gpt2");
    let run = |f: &std::path::Path| {
        peak_rss(&[
            "score",
            "--model",
            &m,
            "--file",
            f.to_str().unwrap(),
            "--stride",
            "48",
        ])
    };
    // Measured first: a child's peak counts this process's memory when it was forked.
    let (base, peak) = (run(&small), run(&big));
    let tok = wick::tokenizer::Tokenizer::from_file(&fixture("tiny-gpt2/tokenizer.json")).unwrap();
    let tokens = tok
        .encode(&std::fs::read_to_string(&big).unwrap(), false)
        .unwrap()
        .len();
    let per_token = peak.saturating_sub(base) as f64 / tokens as f64;
    eprintln!("{tokens} tokens: peak {peak} B, {per_token:.1} B a token above a short file");
    assert!(per_token < 40.0, "{per_token:.1} bytes a token");
}
