//! `wick train` end to end on a tiny model: the loss falls, a resumed run repeats the
//! uninterrupted one exactly, checkpoints round-trip and survive a crash mid-save, and
//! bad input is refused without touching anything.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const TINY: &str = r#"{"model_type": "gpt2", "vocab_size": 0, "n_positions": 32, "n_embd": 32,
    "n_layer": 2, "n_head": 2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}"#;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tiny.json"), TINY).unwrap();
        let text = "To be, or not to be, that is the question.\nWhether 'tis nobler in the mind to suffer\n".repeat(40);
        std::fs::write(dir.path().join("corpus.txt"), text).unwrap();
        Self { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn train(&self, out: &str, extra: &[&str]) -> (i32, String, String) {
        let model = self.p("tiny.json");
        let data = self.p("corpus.txt");
        let out = self.p(out);
        let defaults = [
            ("--model", model.to_str().unwrap()),
            ("--tokenizer", "char"),
            ("--data", data.to_str().unwrap()),
            ("--out", out.to_str().unwrap()),
            ("--batch-size", "4"),
            ("--block-size", "16"),
            ("--learning-rate", "0.003"),
            ("--warmup-iters", "5"),
            ("--log-every", "1"),
            ("--eval-every", "10"),
            ("--eval-iters", "2"),
            ("--sample-tokens", "0"),
        ];
        wick(&with_defaults("train", &defaults, extra))
    }
}

#[test]
fn loss_falls_and_the_run_is_saved_in_the_hf_layout() {
    let s = Setup::new();
    let (code, stdout, stderr) = s.train("run", &["--max-iters", "60"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("parameters") && stdout.contains("per step"),
        "derived numbers up front: {stdout}"
    );
    let l = losses(&s.p("run"));
    assert_eq!(l.len(), 60);
    let first: f64 = l[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
    let last: f64 = l[55..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    assert!(last < first * 0.75, "loss should fall: {first} -> {last}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_config.json",
        "loss.svg",
        "best/model.safetensors",
    ] {
        assert!(s.p("run").join(f).is_file(), "{f}");
    }
    assert!(s.p("run/checkpoint-000060/optimizer.safetensors").is_file());
    let svg = std::fs::read_to_string(s.p("run/loss.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("polyline"),
        "a plotted curve"
    );
    // The saved model is an ordinary checkpoint: `wick eval` on the training text
    // gives a loss close to the final training loss.
    let v = wick_json(&[
        "eval",
        "--model",
        s.p("run").to_str().unwrap(),
        "--data",
        s.p("corpus.txt").to_str().unwrap(),
        "--json",
    ]);
    assert!(v["loss"].as_f64().unwrap() < first * 0.75);
}

#[test]
fn resuming_repeats_the_uninterrupted_run_exactly() {
    let s = Setup::new();
    let (code, _, e) = s.train("full", &["--max-iters", "40"]);
    assert_eq!(code, 0, "{e}");
    let (code, _, e) = s.train("split", &["--max-iters", "20", "--lr-decay-iters", "40"]);
    assert_eq!(code, 0, "{e}");
    let (code, _, e) = s.train("split", &["--max-iters", "40", "--resume"]);
    assert_eq!(code, 0, "{e}");
    assert!(e.contains("from step 20"), "{e}");
    let (full, split) = (losses(&s.p("full")), losses(&s.p("split")));
    assert_eq!(full.len(), 40);
    assert_eq!(full, split, "identical loss at every step");
}

/// Dropout masks are seeded: with dropout on, a run repeats itself and a resumed run
/// repeats the uninterrupted one; another seed draws other masks.
#[test]
fn dropout_is_seeded_and_resumes_exactly() {
    let s = Setup::new();
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec!["--dropout", "0.2", "--lr-decay-iters", "20"];
        args.extend_from_slice(extra);
        let (code, _, e) = s.train(out, &args);
        assert_eq!(code, 0, "{e}");
        losses(&s.p(out))
    };
    let a = run("a", &["--max-iters", "20"]);
    let b = run("b", &["--max-iters", "20"]);
    assert_eq!(a, b, "same seed, same masks");
    run("split", &["--max-iters", "10"]);
    assert_eq!(run("split", &["--max-iters", "20", "--resume"]), a);
    let other = run("other", &["--max-iters", "20", "--seed", "7"]);
    assert_ne!(other, a);
    // Dropout is on: the same run without it gives other losses.
    let (code, _, e) = s.train("none", &["--max-iters", "20", "--lr-decay-iters", "20"]);
    assert_eq!(code, 0, "{e}");
    assert_ne!(losses(&s.p("none"))[5..], a[5..]);
}

/// Gradient checkpointing recomputes each block in the backward pass (with the same
/// dropout masks), so a run with it gives the losses of the run without.
#[test]
fn gradient_checkpointing_gives_the_same_losses() {
    let s = Setup::new();
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec!["--dropout", "0.2", "--max-iters", "12"];
        args.extend_from_slice(extra);
        let (code, stdout, e) = s.train(out, &args);
        assert_eq!(code, 0, "{e}");
        (losses(&s.p(out)), stdout)
    };
    let (plain, stdout) = run("plain", &[]);
    assert!(!stdout.contains("gradient checkpointing"), "{stdout}");
    let (ckpt, stdout) = run("ckpt", &["--gradient-checkpointing"]);
    assert!(
        stdout.contains("memory       gradient checkpointing"),
        "{stdout}"
    );
    assert_eq!(plain.len(), ckpt.len());
    for ((step, a), (_, b)) in plain.iter().zip(&ckpt) {
        assert!((a - b).abs() < 1e-5, "step {step}: {a} vs {b}");
    }
    assert!(plain.last().unwrap().1 < plain[0].1 - 0.1, "the loss falls");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.p("ckpt/train_config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["gradient_checkpointing"], true);
}

/// `--matmul-precision bf16` runs the products on AMX tiles with bf16 operands: the
/// losses follow the f32 run closely without being its bits, and the choice is stored
/// with the checkpoint. Without AMX the flag is refused by name.
#[test]
fn bf16_matrix_products_follow_the_f32_losses() {
    let s = Setup::new();
    let args = ["--max-iters", "12", "--matmul-precision", "bf16"];
    if !wick::nn::kernels::amx_available() {
        let (code, _, e) = s.train("bf16", &args);
        assert_ne!(code, 0);
        assert!(e.contains("--matmul-precision") && e.contains("AMX"), "{e}");
        return;
    }
    let (code, _, e) = s.train("f32", &args[..2]);
    assert_eq!(code, 0, "{e}");
    let (code, stdout, e) = s.train("bf16", &args);
    assert_eq!(code, 0, "{e}");
    assert!(stdout.contains("matmul bf16 on amx"), "{stdout}");
    let (f32s, bf16s) = (losses(&s.p("f32")), losses(&s.p("bf16")));
    assert_eq!(f32s.len(), bf16s.len());
    for ((step, a), (_, b)) in f32s.iter().zip(&bf16s) {
        assert!((a - b).abs() < 0.02 * a, "step {step}: f32 {a} vs bf16 {b}");
    }
    assert_ne!(f32s, bf16s, "bf16 operands change the bits");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.p("bf16/train_config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["matmul_precision"], "bf16");
}

#[test]
fn a_crash_mid_save_leaves_the_last_complete_checkpoint() {
    let s = Setup::new();
    let (code, _, e) = s.train(
        "run",
        &[
            "--max-iters",
            "20",
            "--lr-decay-iters",
            "40",
            "--save-every",
            "10",
        ],
    );
    assert_eq!(code, 0, "{e}");
    // A save that died half-way: the hidden temporary folder and a folder without its
    // final trainer_state.json.
    std::fs::create_dir_all(s.p("run/.checkpoint-000030.tmp")).unwrap();
    std::fs::write(
        s.p("run/.checkpoint-000030.tmp/model.safetensors"),
        b"partial",
    )
    .unwrap();
    std::fs::create_dir_all(s.p("run/checkpoint-000030")).unwrap();
    std::fs::write(s.p("run/checkpoint-000030/model.safetensors"), b"partial").unwrap();
    let (code, _, e) = s.train("run", &["--max-iters", "25", "--resume"]);
    assert_eq!(code, 0, "{e}");
    assert!(
        e.contains("from step 20"),
        "resumed from the last complete checkpoint: {e}"
    );
}

#[test]
fn bad_input_is_refused_and_nothing_is_overwritten() {
    let s = Setup::new();
    let fails = |args: &[&str], needle: &str| {
        let (code, _, e) = s.train("bad", args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(!e.contains("panicked"), "{e}");
        assert!(e.contains(needle), "{args:?}: {e}");
    };
    std::fs::write(s.p("empty.txt"), "").unwrap();
    fails(&["--data", s.p("empty.txt").to_str().unwrap()], "empty");
    std::fs::write(s.p("short.txt"), "abc").unwrap();
    fails(&["--data", s.p("short.txt").to_str().unwrap()], "too few");
    std::fs::write(s.p("latin1.txt"), [b'a', 0xe9, b'b']).unwrap();
    fails(
        &["--data", s.p("latin1.txt").to_str().unwrap()],
        "not UTF-8",
    );
    fails(&["--block-size", "64"], "over the model's context");
    fails(&["--data", s.p("nope.txt").to_str().unwrap()], "nope.txt");
    fails(&["--learning-rate", "0"], "--learning-rate");
    // An output folder holding another model is left alone.
    let other = s.p("bad");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(fixture("tiny-gpt2/config.json"), other.join("config.json")).unwrap();
    fails(&["--max-iters", "2"], "holds another model");
    assert_eq!(
        std::fs::read(other.join("config.json")).unwrap(),
        std::fs::read(fixture("tiny-gpt2/config.json")).unwrap()
    );
    assert!(!other.join("model.safetensors").exists());
    // --resume with nothing to resume, or only a trainer state and no checkpoint-*.
    fails(
        &["--resume", "--out", s.p("nothing").to_str().unwrap()],
        "no checkpoint",
    );
    let state_only = s.p("state-only");
    std::fs::create_dir_all(&state_only).unwrap();
    std::fs::write(state_only.join("trainer_state.json"), "{}").unwrap();
    fails(
        &["--resume", "--out", state_only.to_str().unwrap()],
        "no checkpoint-* folder",
    );
}

#[test]
fn fine_tuning_starts_from_a_checkpoint_and_keeps_its_tokenizer() {
    let s = Setup::new();
    let out = s.p("ft");
    let (code, stdout, e) = wick(&[
        "train",
        "--model",
        fixture("tiny-gpt2").to_str().unwrap(),
        "--data",
        s.p("corpus.txt").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-iters",
        "5",
        "--batch-size",
        "2",
        "--block-size",
        "32",
        "--sample-tokens",
        "0",
        "--eval-iters",
        "1",
    ]);
    assert_eq!(code, 0, "{e}");
    assert!(stdout.contains("tokenizer    320 tokens"), "{stdout}");
    wick_json(&[
        "score",
        "--model",
        out.to_str().unwrap(),
        "--text",
        "To be, or not",
        "--json",
    ]);
}

/// Multi-label classification: label cells with comma-separated names make the head a
/// sigmoid per label; a tiny separable set is learnt to 100% exact match, the config
/// says `multi_label_classification`, `wick classify` returns each label over the
/// threshold and `wick eval` the set metrics.
#[test]
fn multi_label_fine_tuning_learns_label_sets() {
    let s = Setup::new();
    // Words decide labels independently: "quick" → fast, "fox" → animal, "red" → colour.
    let mut rows = String::new();
    for (text, labels) in [
        ("the quick fox", "fast,animal"),
        ("the quick car", "fast"),
        ("the red fox", "animal,colour"),
        ("the red car", "colour"),
        ("the quick red fox", "fast,animal,colour"),
        ("the slow car", "none"),
    ] {
        rows += &format!("{text}\t{labels}\n");
    }
    std::fs::write(
        s.p("ml.tsv"),
        format!("sentence\tlabel\n{}", rows.repeat(2)),
    )
    .unwrap();
    let out = s.p("ml");
    let data = s.p("ml.tsv");
    let (code, stdout, e) = train_tiny_classifier(&data, &out, ["300", "0.005", "100", "50"], &[]);
    assert_eq!(code, 0, "{e}");
    assert!(stdout.contains("multi-label"), "{stdout}");
    assert!(stdout.contains("exact match  100.00%"), "{stdout}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["problem_type"], "multi_label_classification");
    assert_eq!(cfg["id2label"].as_object().unwrap().len(), 4);
    let v = wick_json(&[
        "classify",
        "--model",
        out.to_str().unwrap(),
        "--text",
        "the quick red fox",
        "--text",
        "the slow car",
        "--json",
    ]);
    let labels = |i: usize| -> Vec<String> {
        let mut l: Vec<String> = v["predictions"][i]["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        l.sort();
        l
    };
    assert_eq!(labels(0), ["animal", "colour", "fast"]);
    assert_eq!(labels(1), ["none"]);
    let p = v["predictions"][0]["scores"]["fast"].as_f64().unwrap();
    assert!(p > 0.5 && p < 1.0, "a sigmoid probability: {p}");
    let v = wick_json(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert_perfect_label_sets(&v);
}

/// Classification fine-tuning: BERT + a fresh linear head on [CLS] learns a tiny
/// separable set to 100% accuracy, with string labels saved as id2label, and the saved
/// classifier round-trips through `wick classify`.
#[test]
fn classification_fine_tuning_learns_a_separable_set() {
    let s = Setup::new();
    let mut rows = String::from("sentence\tlabel\n");
    for (i, w) in [
        "quick brown fox",
        "the question",
        "to be",
        "a journey",
        "thousand miles",
        "one step",
    ]
    .iter()
    .enumerate()
    {
        rows += &format!("the quick {w}\tpositive\nthe lazy {w}\tnegative\n");
        let _ = i;
    }
    std::fs::write(s.p("sst.tsv"), rows).unwrap();
    let out = s.p("cls");
    let (code, stdout, e) =
        train_tiny_classifier(&s.p("sst.tsv"), &out, ["40", "0.003", "20", "5"], &[]);
    assert_eq!(code, 0, "{e}");
    assert!(
        stdout.contains("initialised") && stdout.contains("classifier.weight"),
        "says it initialised the head: {stdout}"
    );
    assert!(stdout.contains("accuracy     100.00%"), "{stdout}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["1"], "positive");
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
    let last = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(
        last.contains("\"accuracy\":1.0") && last.contains("\"macro_f1\":1.0"),
        "accuracy and macro-F1 in metrics.jsonl"
    );
    // `wick eval` on the saved classifier: the same held-out figures.
    let v = wick_json(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        s.p("sst.tsv").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        (v["accuracy"].as_f64(), v["macro_f1"].as_f64()),
        (Some(1.0), Some(1.0))
    );
    assert_eq!(v["examples"], 12);
    // A file classified in batches of 1 and of 32 gives the same predictions.
    std::fs::write(
        s.p("texts.txt"),
        "the quick to be\nthe lazy one step\nthe quick a journey\n",
    )
    .unwrap();
    let by = |n: &str| {
        wick_json(&[
            "classify",
            "--model",
            out.to_str().unwrap(),
            "--file",
            s.p("texts.txt").to_str().unwrap(),
            "--batch-size",
            n,
            "--json",
        ])["predictions"]
            .clone()
    };
    let (one, all) = (by("1"), by("32"));
    assert_eq!(one.as_array().unwrap().len(), 3);
    for (a, b) in one.as_array().unwrap().iter().zip(all.as_array().unwrap()) {
        assert_eq!(a["label"], b["label"]);
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-5);
    }
}

/// A classifier's batch split into shards side by side (one per thread) trains the
/// model one whole batch does: the same losses, step by step, to float summation order.
#[test]
fn a_classifier_batch_in_shards_trains_as_one() {
    let s = Setup::new();
    let rows: String = (0..24)
        .map(|i| {
            format!(
                "the {} word {i}\t{}\n",
                ["quick", "lazy"][i % 2],
                ["pos", "neg"][i % 2]
            )
        })
        .collect();
    std::fs::write(s.p("cls.tsv"), format!("sentence\tlabel\n{rows}")).unwrap();
    let run = |threads: &str| {
        let out = s.p(&format!("cls-{threads}"));
        let (data, model) = (s.p("cls.tsv"), fixture("tiny-bert"));
        let args = [
            "train",
            "--model",
            model.to_str().unwrap(),
            "--objective",
            "classify",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-iters",
            "15",
            "--batch-size",
            "6",
            "--block-size",
            "16",
            "--learning-rate",
            "0.003",
            "--warmup-iters",
            "2",
            "--eval-every",
            "1000",
            "--log-every",
            "1",
            "--dropout",
            "0",
        ];
        let o = wick_command()
            .env("RAYON_NUM_THREADS", threads)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (losses(&out), stdout)
    };
    assert_shards_train_as_one(run);
}

/// Trains the tiny BERT fixture for 60 steps with `objective` on `data`.
fn train_tiny_bert(objective: &str, data: &Path, out: &Path) -> (i32, String, String) {
    wick(&[
        "train",
        "--model",
        fixture("tiny-bert-mlm").to_str().unwrap(),
        "--objective",
        objective,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-iters",
        "60",
        "--batch-size",
        "8",
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
        "30",
    ])
}

/// The mean of the last five logged losses is under 80% of the first five's.
#[track_caller]
fn assert_loss_falls_by_a_fifth(out: &Path) {
    let l = losses(out);
    let first: f64 = l[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
    let last: f64 = l[l.len() - 5..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    assert!(last < first * 0.8, "{first} -> {last}");
}

/// Masked-LM training of a BERT: the loss on masked positions falls.
#[test]
fn masked_lm_training_lowers_the_loss() {
    let s = Setup::new();
    let out = s.p("mlm");
    let (code, _, e) = train_tiny_bert("mlm", &s.p("corpus.txt"), &out);
    assert_eq!(code, 0, "{e}");
    assert_loss_falls_by_a_fifth(&out);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForMaskedLM");
    wick_json(&[
        "fill-mask",
        "--model",
        out.to_str().unwrap(),
        "--text",
        "to be or [MASK] to be",
        "--json",
    ]);
}

/// BERT's original pretraining, masked LM plus next-sentence prediction, on a corpus of
/// documents separated by blank lines: the summed loss falls, NSP accuracy is reported,
/// and the checkpoint is a BertForPreTraining with its `cls.seq_relationship` head.
#[test]
fn mlm_plus_nsp_pretraining_runs_on_documents() {
    let s = Setup::new();
    // 20 documents, each of sentences over its own three letters.
    let letters: Vec<char> = ('a'..='z').collect();
    let mut corpus = String::new();
    for d in 0..20 {
        for i in 0..8 {
            let words: Vec<String> = (0..6)
                .map(|j| letters[(d + (i * 7 + j * 3) % 3) % 26].to_string())
                .collect();
            corpus.push_str(&words.join(" "));
            corpus.push('\n');
        }
        corpus.push('\n');
    }
    std::fs::write(s.p("docs.txt"), &corpus).unwrap();
    let out = s.p("nsp");
    let (code, o, e) = train_tiny_bert("mlm+nsp", &s.p("docs.txt"), &out);
    assert_eq!(code, 0, "{e}");
    assert!(o.contains("18 documents, 126 sentence pairs"), "{o}");
    assert_loss_falls_by_a_fifth(&out);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let acc = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["accuracy"].as_f64())
        .next_back()
        .expect("NSP accuracy at evals");
    assert!((0.0..=1.0).contains(&acc));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForPreTraining");
    let info = wick_json(&["info", "--model", out.to_str().unwrap(), "--json"]);
    assert!(info.to_string().contains("next-sentence head"), "{info}");
    let st =
        candle_core::safetensors::load(out.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(st["cls.seq_relationship.weight"].dims(), &[2, 32]);
    assert!(st.contains_key("bert.pooler.dense.weight"));

    // One document cannot give NotNext pairs: a clear error naming the file.
    std::fs::write(s.p("one.txt"), "a b c\nd e f\n").unwrap();
    let (code, _, e) = train_tiny_bert("mlm+nsp", &s.p("one.txt"), &s.p("nsp-bad"));
    assert_ne!(code, 0);
    assert!(e.contains("one.txt") && e.contains("two documents"), "{e}");
}

/// A loss that turns NaN stops the run with a message naming the last good checkpoint,
/// exits non-zero, and leaves that checkpoint and the saved model as they were.
#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let s = Setup::new();
    let (code, _, e) = s.train("nan", &["--max-iters", "4", "--save-every", "2"]);
    assert_eq!(code, 0, "{e}");
    let model = s.p("nan/model.safetensors");
    let before = std::fs::read(&model).unwrap();
    // Resumed with an absurd learning rate, the first update blows the weights up.
    let (code, _, e) = s.train(
        "nan",
        &[
            "--resume",
            "--max-iters",
            "10",
            "--save-every",
            "2",
            "--learning-rate",
            "1e30",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        e.contains("the loss became") && e.contains("checkpoint-000004"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    assert!(!s.p("nan/checkpoint-000006").exists());
    assert_eq!(std::fs::read(&model).unwrap(), before);
    let v = wick_json(&[
        "score",
        "--model",
        s.p("nan/checkpoint-000004").to_str().unwrap(),
        "--text",
        "To be",
        "--json",
    ]);
    assert!(v["mean_nll"].as_f64().unwrap().is_finite());
}

/// Ctrl-C (SIGINT) mid-run saves a checkpoint, exits with 130, and `--resume` goes on
/// from it; so does SIGTERM (what kill, systemd, docker and job schedulers send).
#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resume_continues() {
    for signal in ["-INT", "-TERM"] {
        interrupt_saves_and_resumes(signal);
    }
}

#[cfg(unix)]
fn interrupt_saves_and_resumes(signal: &str) {
    let s = Setup::new();
    let out = s.p("int");
    let child = wick_command()
        .args([
            "train",
            "--model",
            s.p("tiny.json").to_str().unwrap(),
            "--tokenizer",
            "char",
            "--data",
            s.p("corpus.txt").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "4",
            "--block-size",
            "16",
            "--max-iters",
            "1000000",
            "--log-every",
            "1",
            "--eval-every",
            "1000000",
            "--save-every",
            "1000000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until steps are being logged, so the handler is installed and training runs.
    let metrics = out.join("metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 3 {
        assert!(start.elapsed().as_secs() < 60, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
    let done = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{signal}: {e}");
    assert!(e.contains("interrupted: saved"), "{signal}: {e}");
    let steps = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|d| d.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("checkpoint-")?.parse::<usize>().ok())
        .max()
        .expect("a checkpoint saved on interrupt");
    assert!(steps >= 3);
    let target = (steps + 2).to_string();
    let (code, _, e) = s.train("int", &["--resume", "--max-iters", &target]);
    assert_eq!(code, 0, "{e}");
    let l = losses(&out);
    assert_eq!(l.last().unwrap().0 as usize, steps + 2);
}
