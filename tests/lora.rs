//! LoRA end to end on the tiny fixtures: a run trains only the adapter (and a new head),
//! saves it in peft's layout, resumes exactly, and every command runs it as `--model`
//! or `--adapter`; `wick merge` folds it in with the same outputs; an adapter made by
//! peft loads with peft's logits.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn corpus(dir: &Path) -> PathBuf {
    let p = dir.join("corpus.txt");
    let text =
        "To be, or not to be, that is the question.\nWhether 'tis nobler in the mind to suffer\n"
            .repeat(40);
    std::fs::write(&p, text).unwrap();
    p
}

/// LoRA on the tiny GPT-2 into `out`; returns (code, stdout, stderr).
fn train_lora(data: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let model = fixture("tiny-gpt2");
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--batch-size",
        "4",
        "--block-size",
        "16",
        "--learning-rate",
        "0.02",
        "--warmup-iters",
        "2",
        "--log-every",
        "1",
        "--eval-every",
        "10",
        "--eval-iters",
        "2",
        "--sample-tokens",
        "0",
    ];
    args.extend_from_slice(extra);
    wick(&args)
}

fn score(args: &[&str]) -> Vec<f32> {
    let mut all = vec!["score", "--text", "To be, or not to be", "--json"];
    all.extend_from_slice(args);
    floats(&wick_json(&all)["logprobs"])
}

#[test]
fn a_lora_run_trains_only_the_adapter_saves_peft_layout_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("lora");
    let (code, stdout, e) = train_lora(&data, &out, &["--max-iters", "40"]);
    assert_eq!(code, 0, "{e}");
    assert!(stdout.contains("lora         r 4 alpha 8"), "{stdout}");
    let l: Vec<f64> = losses(&out).into_iter().map(|(_, l)| l).collect();
    let (first, last) = (l[0], l[l.len() - 5..].iter().sum::<f64>() / 5.0);
    assert!(last < first * 0.9, "the loss falls: {first} -> {last}");

    // peft's files and names, and nothing of the frozen base.
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["fan_in_fan_out"], true);
    assert_eq!(cfg["target_modules"], serde_json::json!(["c_attn"]));
    let names = safetensors_names(&out.join("adapter_model.safetensors"));
    assert_eq!(
        names,
        [
            "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight",
            "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight",
            "base_model.model.transformer.h.1.attn.c_attn.lora_A.weight",
            "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight",
        ]
    );
    assert!(!out.join("model.safetensors").exists());
    // The optimizer holds moments for the adapter alone: the base had no gradients.
    let ckpt = out.join("checkpoint-000030");
    let moments = safetensors_names(&ckpt.join("optimizer.safetensors"));
    assert_eq!(moments.len(), 8, "{moments:?}");
    assert!(moments.iter().all(|m| m.contains(".lora_")), "{moments:?}");

    // The adapter changes the model; as --model, as --adapter and merged it computes
    // the same.
    let base = fixture("tiny-gpt2");
    let plain = score(&["--model", base.to_str().unwrap()]);
    let adapted = score(&["--model", out.to_str().unwrap()]);
    let on_top = score(&[
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        out.to_str().unwrap(),
    ]);
    assert_eq!(adapted, on_top);
    let moved = plain
        .iter()
        .zip(&adapted)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "training moved the model: {moved}");
    let merged = dir.path().join("merged");
    let v = wick_json(&[
        "merge",
        "--model",
        out.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["merged_layers"], 2);
    assert!(!merged.join("adapter_config.json").exists());
    let folded = score(&["--model", merged.to_str().unwrap()]);
    assert_close(&folded, &adapted, 1e-5, "merged vs adapter on base");
    // Merging again onto the same folder is refused; an adapter's base cannot be quantized.
    wick_fails(
        &[
            "merge",
            "--model",
            out.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
        &["already holds a model"],
    );
    let q = dir.path().join("q");
    wick_fails(
        &[
            "quantize",
            "--model",
            out.to_str().unwrap(),
            "--out",
            q.to_str().unwrap(),
            "--format",
            "q8_0",
        ],
        &["wick merge"],
    );
    assert!(!q.exists());
}

#[test]
fn a_resumed_lora_run_repeats_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let (full, split) = (dir.path().join("full"), dir.path().join("split"));
    let (code, _, e) = train_lora(&data, &full, &["--max-iters", "20"]);
    assert_eq!(code, 0, "{e}");
    let (code, _, e) = train_lora(
        &data,
        &split,
        &["--max-iters", "10", "--lr-decay-iters", "20"],
    );
    assert_eq!(code, 0, "{e}");
    let (code, _, e) = wick(&[
        "train",
        "--out",
        split.to_str().unwrap(),
        "--resume",
        "--max-iters",
        "20",
    ]);
    assert_eq!(code, 0, "{e}");
    assert!(e.contains("from step 10"), "{e}");
    assert_eq!(losses(&full), losses(&split));
    let read = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(read(&full), read(&split), "the same adapter, bit for bit");
}

/// A classifier from an encoder: the new head trains fully and is saved as peft's
/// modules_to_save; `wick classify` on the adapter folder labels as the run learnt.
#[test]
fn a_lora_classifier_trains_its_new_head_and_classifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("sentence\tlabel\n");
    for w in [
        "quick brown fox",
        "the question",
        "to be",
        "a journey",
        "one step",
    ] {
        rows += &format!("the quick {w}\tpositive\nthe lazy {w}\tnegative\n");
    }
    let data = dir.path().join("sst.tsv");
    std::fs::write(&data, rows).unwrap();
    let out = dir.path().join("cls");
    let (code, stdout, e) =
        train_tiny_classifier(&data, &out, ["60", "0.01", "30", "10"], &["--lora-r", "4"]);
    assert_eq!(code, 0, "{e}");
    assert!(stdout.contains("accuracy     100.00%"), "{stdout}");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(cfg["target_modules"], serde_json::json!(["query", "value"]));
    let heads = cfg["modules_to_save"].as_array().unwrap();
    assert!(heads.contains(&Value::from("classifier")), "{cfg}");
    let names = safetensors_names(&out.join("adapter_model.safetensors"));
    assert!(
        names.contains(&"base_model.model.classifier.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(
            &"base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight".to_string()
        ),
        "{names:?}"
    );
    let v = wick_json(&[
        "classify",
        "--model",
        out.to_str().unwrap(),
        "--text",
        "the quick to be",
        "--text",
        "the lazy to be",
        "--json",
    ]);
    let labels: Vec<&str> = v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["positive", "negative"], "{v}");
}

/// LoRA with gradient checkpointing: the frozen blocks are recomputed for their
/// updates' gradients, and the losses are the run's without it.
#[test]
fn a_lora_run_with_gradient_checkpointing_gives_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["--max-iters", "8", "--lora-dropout", "0.1"];
        args.extend_from_slice(extra);
        let (code, _, e) = train_lora(&data, &out, &args);
        assert_eq!(code, 0, "{e}");
        losses(&out)
    };
    let plain = run("plain", &[]);
    let ckpt = run("ckpt", &["--gradient-checkpointing"]);
    assert_eq!(plain.len(), 8);
    for ((step, a), (_, b)) in plain.iter().zip(&ckpt) {
        assert!((a - b).abs() < 1e-5, "step {step}: {a} vs {b}");
    }
    assert_ne!(plain[0].1, plain[7].1, "the adapter learns");
}

#[test]
fn lora_flags_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("bad");
    let (code, _, e) = train_lora(&data, &out, &["--lora-targets", "q_proj"]);
    assert_ne!(code, 0);
    assert!(
        e.contains("q_proj") && e.contains("c_attn"),
        "names the layers there are: {e}"
    );
    let (code, _, e) = train_lora(&data, &out, &["--lora-dropout", "1.5"]);
    assert_ne!(code, 0);
    assert!(e.contains("--lora-dropout"), "{e}");
    wick_fails(
        &[
            "train",
            "--model",
            "shakespeare-char",
            "--lora-r",
            "4",
            "--max-iters",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        &["--lora-r", "from scratch"],
    );
    assert!(!out.exists(), "nothing written");
    let base = fixture("tiny-gpt2");
    wick_fails(
        &[
            "score",
            "--model",
            base.to_str().unwrap(),
            "--adapter",
            base.to_str().unwrap(),
            "--text",
            "hi",
        ],
        &["adapter_config.json"],
    );
}

/// Adapters peft saved (tests/fixtures/make_peft_fixtures.py) load in wick with peft's
/// outputs: GPT-2's Conv1D layers (fan_in_fan_out) with updates on c_attn and c_proj,
/// and a BERT classifier whose head is a modules_to_save copy.
#[test]
fn adapters_made_by_peft_compute_peft_outputs() {
    let want = expected("peft.json");
    let g = &want["gpt2"];
    let adapter = fixture("peft-tiny-gpt2");
    let v = wick_json(&[
        "score",
        "--model",
        adapter.to_str().unwrap(),
        "--text",
        g["text"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(ids(&v["token_ids"]), ids(&g["ids"]));
    assert_close(
        &floats(&v["logprobs"]),
        &floats(&g["logprobs"]),
        1e-4,
        "peft gpt2 logprobs",
    );
    // Without the adapter the numbers are others: the update is not nothing.
    let base = wick_json(&[
        "score",
        "--model",
        fixture("tiny-gpt2").to_str().unwrap(),
        "--text",
        g["text"].as_str().unwrap(),
        "--json",
    ]);
    let d = floats(&base["logprobs"])
        .iter()
        .zip(floats(&g["logprobs"]))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d > 1e-2, "{d}");

    let c = &want["bert_cls"];
    let adapter = fixture("peft-tiny-bert-cls");
    for (text, probs) in c["texts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(c["probs"].as_array().unwrap())
    {
        let v = wick_json(&[
            "classify",
            "--model",
            adapter.to_str().unwrap(),
            "--text",
            text.as_str().unwrap(),
            "--json",
        ]);
        let scores = v["predictions"][0]["scores"].as_object().unwrap();
        let got: Vec<f32> = ["LABEL_0", "LABEL_1"]
            .iter()
            .map(|l| scores[*l].as_f64().unwrap() as f32)
            .collect();
        assert_close(
            &got,
            &floats(probs),
            1e-4,
            "peft bert classifier probabilities",
        );
    }
}

/// LoRA on RoBERTa and DistilBERT classifiers: peft's default targets for the family
/// (`query`/`value`, `q_lin`/`v_lin`), adapter keys under the family's prefix, the new
/// head in modules_to_save, and the adapter folder classifies as the run learnt
/// (`make_peft_fixtures.py --check` loads such a folder in peft).
#[test]
fn lora_classifiers_on_roberta_and_distilbert_use_the_familys_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("sentence\tlabel\n");
    for w in [
        "quick brown fox",
        "the question",
        "to be",
        "a journey",
        "one step",
    ] {
        rows += &format!("the quick {w}\tpositive\nthe lazy {w}\tnegative\n");
    }
    let data = dir.path().join("sst.tsv");
    std::fs::write(&data, rows).unwrap();
    for (base, targets, lora_key, head) in [
        (
            "tiny-roberta",
            ["query", "value"],
            "base_model.model.roberta.encoder.layer.0.attention.self.query.lora_A.weight",
            "base_model.model.classifier.out_proj.weight",
        ),
        (
            "tiny-distilbert-mlm",
            ["q_lin", "v_lin"],
            "base_model.model.distilbert.transformer.layer.0.attention.q_lin.lora_A.weight",
            "base_model.model.pre_classifier.weight",
        ),
    ] {
        let out = dir.path().join(base);
        let model = fixture(base);
        let (code, stdout, e) = wick(&[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--objective",
            "classify",
            "--data",
            data.to_str().unwrap(),
            "--eval-data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-iters",
            "60",
            "--batch-size",
            "6",
            "--block-size",
            "16",
            "--learning-rate",
            "0.01",
            "--warmup-iters",
            "2",
            "--eval-every",
            "30",
            "--log-every",
            "10",
            "--lora-r",
            "4",
        ]);
        assert_eq!(code, 0, "{base}: {e}");
        assert!(stdout.contains("accuracy     100.00%"), "{base}: {stdout}");
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["target_modules"], serde_json::json!(targets), "{base}");
        let names = safetensors_names(&out.join("adapter_model.safetensors"));
        for key in [lora_key, head] {
            assert!(
                names.contains(&key.to_string()),
                "{base}: {key} in {names:?}"
            );
        }
        let v = wick_json(&[
            "classify",
            "--model",
            out.to_str().unwrap(),
            "--text",
            "the quick to be",
            "--text",
            "the lazy to be",
            "--json",
        ]);
        assert_eq!(v["predictions"][0]["label"], "positive", "{base}: {v}");
        assert_eq!(v["predictions"][1]["label"], "negative", "{base}: {v}");
        keep_saved(&out, &format!("lora-{base}"), None);
    }
}

/// A chat model keeps its chat template, and a sentence-transformers model its pooling
/// and normalisation, through a LoRA run and `wick merge` (as through peft's
/// `merge_and_unload` and a save): the written folders carry them from the base.
#[test]
fn chat_templates_and_sentence_transformers_files_survive_training_and_merging() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let json = |p: &Path| serde_json::from_str::<serde_json::Value>(&read(p)).unwrap();
    let train_and_merge = |model: &Path, name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["train", "--model", model.to_str().unwrap(), "--data"];
        args.extend([data.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend(["--lora-r", "4", "--max-iters", "4", "--batch-size", "4"]);
        args.extend([
            "--block-size",
            "16",
            "--sample-tokens",
            "0",
            "--eval-every",
            "100",
        ]);
        args.extend_from_slice(extra);
        let (code, _, e) = wick(&args);
        assert_eq!(code, 0, "{e}");
        let merged = dir.path().join(format!("{name}-merged"));
        let (m, o) = (out.to_str().unwrap(), merged.to_str().unwrap());
        let (code, _, e) = wick(&["merge", "--model", m, "--out", o]);
        assert_eq!(code, 0, "{e}");
        (out, merged)
    };

    // A GPT-2 with a ChatML template.
    let chat = copy_fixture("tiny-gpt2");
    let template =
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    std::fs::write(
        chat.path().join("tokenizer_config.json"),
        serde_json::json!({"chat_template": template}).to_string(),
    )
    .unwrap();
    let (out, merged) = train_and_merge(chat.path(), "chat", &[]);
    for folder in [&out, &merged] {
        let t = json(&folder.join("tokenizer_config.json"));
        assert_eq!(t["chat_template"], template, "{}", folder.display());
    }

    // A BERT as a SentenceTransformer: [CLS] pooling, then Normalize.
    let st = copy_fixture("tiny-bert-mlm");
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        {"idx": 3, "name": "3", "path": "../outside", "type": "sentence_transformers.models.Dense"}
    ]);
    std::fs::write(st.path().join("modules.json"), modules.to_string()).unwrap();
    std::fs::create_dir(st.path().join("1_Pooling")).unwrap();
    let pooling = r#"{"word_embedding_dimension": 32, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#;
    std::fs::write(st.path().join("1_Pooling/config.json"), pooling).unwrap();
    std::fs::write(
        st.path().join("sentence_bert_config.json"),
        r#"{"max_seq_length": 16}"#,
    )
    .unwrap();
    let (out, merged) = train_and_merge(st.path(), "st", &["--objective", "mlm"]);
    for folder in [&out, &merged] {
        for f in [
            "modules.json",
            "1_Pooling/config.json",
            "sentence_bert_config.json",
        ] {
            assert_eq!(
                read(&folder.join(f)),
                read(&st.path().join(f)),
                "{f} in {}",
                folder.display()
            );
        }
        assert!(!folder.join("2_Normalize").exists() && !dir.path().join("outside").exists());
    }
    // The merged folder embeds as its modules say: [CLS] pooling, unit length.
    let m = merged.to_str().unwrap();
    let own = wick_json(&["embed", "--model", m, "--text", "the quick fox", "--json"]);
    let cls = wick_json(&[
        "embed",
        "--model",
        m,
        "--text",
        "the quick fox",
        "--pooling",
        "cls",
        "--normalize",
        "--json",
    ]);
    assert_eq!(own["embeddings"], cls["embeddings"]);
    let v: Vec<f64> = own["embeddings"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-5);
}
