//! The CLI contract: subcommands, `--json` output (exactly one object on stdout), and
//! the numbers matching transformers' through the binary.

mod common;

use common::*;

fn fx(name: &str) -> String {
    fixture(name).to_str().unwrap().to_string()
}

#[test]
fn info_reports_sizes_and_parameters() {
    let v = wick_json(&["info", "--model", &fx("tiny-gpt2"), "--json"]);
    assert_eq!(v["model_type"], "gpt2");
    assert_eq!(v["layers"], 2);
    assert_eq!(v["hidden_size"], 32);
    assert_eq!(v["vocab_size"], 320);
    // wte 320·32 + wpe 64·32 + 2 layers · (2·LN 64 + c_attn 32·96+96 + c_proj 32·32+32
    // + c_fc 32·128+128 + c_proj 128·32+32) + ln_f 64
    let per_layer = 2 * 64 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32);
    assert_eq!(v["parameters"], 320 * 32 + 64 * 32 + 2 * per_layer + 64);
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["unused_tensors"].as_array().unwrap().len(), 0);
    let (code, human, _) = wick(&["info", "--model", &fx("tiny-bert-cls")]);
    assert_eq!(code, 0);
    assert!(human.contains("classification head"), "{human}");
}

#[test]
fn score_matches_transformers_logprobs() {
    let exp = expected("tiny-gpt2.json");
    let case = &exp["cases"][0];
    let v = wick_json(&[
        "score",
        "--model",
        &fx("tiny-gpt2"),
        "--text",
        case["text"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(ids(&v["token_ids"]), ids(&case["token_ids"]));
    assert_close(
        &floats(&v["logprobs"]),
        &floats(&case["logprobs"]),
        1e-4,
        "logprobs",
    );
    let lp = floats(&case["logprobs"]);
    let mean_nll = -lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64;
    assert!((v["mean_nll"].as_f64().unwrap() - mean_nll).abs() < 1e-4);
    assert!((v["perplexity"].as_f64().unwrap() - mean_nll.exp()).abs() < 1e-3);
}

#[test]
fn score_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.txt");
    std::fs::write(&f, "To be, or not to be").unwrap();
    let v = wick_json(&[
        "score",
        "--model",
        &fx("tiny-gpt2-hub"),
        "--file",
        f.to_str().unwrap(),
        "--json",
    ]);
    assert!(v["logprobs"].as_array().unwrap().len() > 3);
}

#[test]
fn greedy_generate_matches_transformers() {
    let exp = expected("tiny-gpt2.json");
    for case in exp["cases"].as_array().unwrap() {
        let v = wick_json(&[
            "generate",
            "--model",
            &fx("tiny-gpt2"),
            "--prompt",
            case["text"].as_str().unwrap(),
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
            "--json",
        ]);
        assert_eq!(ids(&v["prompt_ids"]), ids(&case["token_ids"]));
        assert_eq!(ids(&v["token_ids"]), ids(&case["greedy_new_ids"]));
        assert!(v["text"].is_string());
    }
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let run = |seed: &str| {
        wick_json(&[
            "generate",
            "--model",
            &fx("tiny-gpt2"),
            "--prompt",
            "To be",
            "--max-new-tokens",
            "8",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--json",
        ])["token_ids"]
            .clone()
    };
    assert_eq!(run("7"), run("7"));
}

/// A sentence-transformers folder's modules choose the pooling and normalisation when
/// the flags do not.
#[test]
fn embed_follows_a_sentence_transformers_folder() {
    let dir = copy_fixture("tiny-bert");
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    let st = dir.path().to_str().unwrap();
    let embed = |model: &str, flags: &[&str]| {
        let args = [
            &["embed", "--model", model, "--text", "a journey", "--json"][..],
            flags,
        ]
        .concat();
        floats(&wick_json(&args)["embeddings"][0])
    };
    assert_eq!(
        embed(st, &[]),
        embed(&fx("tiny-bert"), &["--pooling", "cls", "--normalize"])
    );
    assert_eq!(
        embed(st, &["--no-normalize"]),
        embed(&fx("tiny-bert"), &["--pooling", "cls"])
    );
    assert_eq!(
        embed(st, &["--pooling", "mean"]),
        embed(&fx("tiny-bert"), &["--pooling", "mean", "--normalize"])
    );
}

#[test]
fn embed_pools_and_normalises() {
    let v = wick_json(&[
        "embed",
        "--model",
        &fx("tiny-bert"),
        "--text",
        "to be or not to be",
        "--text",
        "a journey",
        "--pooling",
        "mean",
        "--normalize",
        "--json",
    ]);
    let e = v["embeddings"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    for row in e {
        let norm: f32 = floats(row).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(row.as_array().unwrap().len(), 32);
    }
    // [CLS] pooling without normalisation is the first hidden state (parity-tested).
    let exp = expected("tiny-bert.json");
    let v = wick_json(&[
        "embed",
        "--model",
        &fx("tiny-bert"),
        "--text",
        exp["texts"][0].as_str().unwrap(),
        "--pooling",
        "cls",
        "--json",
    ]);
    assert_close(
        &floats(&v["embeddings"][0]),
        &floats(&exp["last_hidden_state"][0][0]),
        1e-4,
        "cls",
    );
}

#[test]
fn fill_mask_returns_probabilities() {
    let v = wick_json(&[
        "fill-mask",
        "--model",
        &fx("tiny-bert-mlm"),
        "--text",
        "the quick [MASK] fox",
        "--top-k",
        "4",
        "--json",
    ]);
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 4);
    let scores: Vec<f32> = preds
        .iter()
        .map(|p| p["score"].as_f64().unwrap() as f32)
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores.iter().sum::<f32>() <= 1.0 + 1e-5);
    assert!(preds[0]["token"].is_string() && preds[0]["token_id"].is_u64());
}

#[test]
fn classify_labels_a_batch() {
    let v = wick_json(&[
        "classify",
        "--model",
        &fx("tiny-bert-cls"),
        "--text",
        "to be or not to be",
        "--text",
        "a",
        "--json",
    ]);
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    let total: f64 = preds[0]["scores"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-5);
}

#[test]
fn wrong_task_for_the_model_is_a_clear_error() {
    wick_fails(
        &[
            "score",
            "--model",
            &fx("tiny-bert"),
            "--text",
            "hello there",
        ],
        &["needs a causal LM"],
    );
    wick_fails(
        &[
            "fill-mask",
            "--model",
            &fx("tiny-bert"),
            "--text",
            "a [MASK]",
        ],
        &["no masked-LM head"],
    );
    wick_fails(
        &[
            "fill-mask",
            "--model",
            &fx("tiny-bert-mlm"),
            "--text",
            "no mask here",
        ],
        &["no [MASK]"],
    );
    wick_fails(
        &["embed", "--model", &fx("tiny-gpt2"), "--text", "x"],
        &["needs an encoder"],
    );
}

#[test]
fn invalid_flags_and_inputs_fail_cleanly() {
    wick_fails(
        &["info", "--model", &fx("tiny-gpt2"), "--device", "tpu"],
        &["--device tpu"],
    );
    wick_fails(
        &[
            "generate",
            "--model",
            &fx("tiny-gpt2"),
            "--prompt",
            "a",
            "--temperature=-1",
        ],
        &["--temperature"],
    );
    wick_fails(
        &["info", "--model", "./no/such/folder"],
        &["no such folder"],
    );
    // A hub id that is not cached, offline.
    wick_fails(
        &["info", "--model", "openai-community/gpt2"],
        &["HF_HUB_OFFLINE"],
    );
    // A prompt longer than the 64-token context.
    let long = "To be, or not to be, that is the question. ".repeat(10);
    wick_fails(
        &["score", "--model", &fx("tiny-gpt2"), "--text", &long],
        &["longer than the model's context"],
    );
    wick_fails(
        &["generate", "--model", &fx("tiny-gpt2"), "--prompt", &long],
        &["longer than the model's context"],
    );
}

#[test]
fn generation_slides_past_the_context_when_asked() {
    // 64-token context: a 10-token prompt plus 80 new tokens only fits by sliding.
    let v = wick_json(&[
        "generate",
        "--model",
        &fx("tiny-gpt2"),
        "--prompt",
        "To be, or not to be",
        "--max-new-tokens",
        "80",
        "--temperature",
        "0",
        "--slide",
        "--json",
    ]);
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 80);
    let refused = [
        "generate",
        "--model",
        &fx("tiny-gpt2"),
        "--prompt",
        "To be",
        "--max-new-tokens",
        "80",
    ];
    wick_fails(&refused, &["exceeds the model's context"]);
    // Not even the prompt is echoed before the refusal.
    assert_eq!(wick(&refused).1, "");
}

/// A hub id resolves offline from hf-hub's cache layout under HF_HOME.
#[test]
fn hub_ids_resolve_offline_from_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--wick-test--tiny-gpt2");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-gpt2").join(f), snap.join(f)).unwrap();
    }
    let out = wick_command()
        .args(["info", "--model", "wick-test/tiny-gpt2", "--json"])
        .env("HF_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model_type"], "gpt2");
    assert!(v["path"].as_str().unwrap().contains(commit));
}

/// A stop string that arrives split over tokens ends generation and is not printed,
/// streamed or in --json.
#[test]
fn stop_strings_are_honoured_mid_token() {
    let base = [
        "generate",
        "--model",
        &fx("tiny-gpt2"),
        "--prompt",
        "To be, or not to be",
        "--max-new-tokens",
        "30",
        "--temperature",
        "0",
    ];
    let full = wick_json(&[&base[..], &["--json"]].concat());
    let text = full["text"].as_str().unwrap().to_string();
    // Stop on a piece that starts mid-way through the greedy text: the last two
    // characters of the 3rd..5th characters, so the stop straddles token boundaries.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 8, "greedy text too short: {text:?}");
    let stop: String = chars[3..6].iter().collect();
    let cut = text.find(&stop).unwrap();
    let v = wick_json(&[&base[..], &["--stop", &stop, "--json"]].concat());
    assert_eq!(v["text"].as_str().unwrap(), &text[..cut]);
    assert!(v["token_ids"].as_array().unwrap().len() < 30);
    let (code, stdout, _) = wick(&[&base[..], &["--stop", &stop, "--quiet"]].concat());
    assert_eq!(code, 0);
    assert_eq!(stdout, format!("To be, or not to be{}\n", &text[..cut]));
}

#[test]
fn prompts_run_as_one_batch_with_beams_and_return_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "First Citizen:\nHéllo café\n").unwrap();
    let v = wick_json(&[
        "generate",
        "--model",
        &fx("tiny-gpt2"),
        "--prompt",
        "To be",
        "--prompts-file",
        file.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--num-beams",
        "3",
        "--num-return-sequences",
        "2",
        "--json",
    ]);
    let gens = v["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 6);
    assert_eq!(gens[4]["prompt_index"], 2);
    assert!(gens[0]["score"].as_f64().unwrap() >= gens[1]["score"].as_f64().unwrap());
}

#[test]
fn truncate_left_keeps_the_most_recent_prompt_tokens() {
    let long = "To be, or not to be, that is the question. ".repeat(10);
    let v = wick_json(&[
        "generate",
        "--model",
        &fx("tiny-gpt2"),
        "--prompt",
        &long,
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
        "--truncate",
        "left",
        "--json",
    ]);
    assert_eq!(v["prompt_ids"].as_array().unwrap().len(), 60);
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 4);
}

#[test]
fn invalid_decoding_flags_fail_cleanly() {
    let m = fx("tiny-gpt2");
    let g = |extra: &[&str], needle: &str| {
        wick_fails(
            &[&["generate", "--model", &m, "--prompt", "To be"][..], extra].concat(),
            &[needle],
        );
    };
    g(&["--top-p", "1.5"], "--top-p");
    g(&["--top-k", "0"], "--top-k");
    g(&["--repetition-penalty", "0"], "--repetition-penalty");
    g(
        &[
            "--num-beams",
            "2",
            "--num-return-sequences",
            "3",
            "--temperature",
            "0",
        ],
        "--num-return-sequences",
    );
    g(
        &["--num-beams", "2", "--temperature", "0.7"],
        "deterministic",
    );
    g(
        &["--num-return-sequences", "2", "--temperature", "0"],
        "identical copies",
    );
    g(&["--truncate", "middle"], "--truncate");
}

/// `embed --output` writes every input line's embedding, in input order, as .npy or
/// .jsonl; batching changes nothing.
#[test]
fn embed_writes_npy_and_jsonl_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(
        &input,
        "to be or not to be\nthe quick brown fox jumps\na journey\n",
    )
    .unwrap();
    let inline = wick_json(&[
        "embed",
        "--model",
        &fx("tiny-bert"),
        "--file",
        input.to_str().unwrap(),
        "--json",
    ]);
    let want = floats2(&inline["embeddings"]);
    let npy = dir.path().join("e.npy");
    let v = wick_json(&[
        "embed",
        "--model",
        &fx("tiny-bert"),
        "--file",
        input.to_str().unwrap(),
        "--batch-size",
        "2",
        "--output",
        npy.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        (v["count"].as_u64(), v["dims"].as_u64()),
        (Some(3), Some(32))
    );
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data: Vec<f32> = bytes[10 + hlen..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for (r, row) in want.iter().enumerate() {
        assert_close(&data[r * 32..(r + 1) * 32], row, 1e-5, "npy row");
    }
    let jsonl = dir.path().join("e.jsonl");
    wick_json(&[
        "embed",
        "--model",
        &fx("tiny-bert"),
        "--file",
        input.to_str().unwrap(),
        "--batch-size",
        "1",
        "--output",
        jsonl.to_str().unwrap(),
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[2]["text"], "a journey");
    assert_close(&floats(&lines[2]["embedding"]), &want[2], 1e-5, "jsonl row");
    wick_fails(
        &[
            "embed",
            "--model",
            &fx("tiny-bert"),
            "--text",
            "x",
            "--output",
            "e.csv",
        ],
        &["--output e.csv", ".npy or .jsonl"],
    );
}

#[test]
fn quantize_writes_a_folder_every_command_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q");
    let q = out.to_str().unwrap();
    let v = wick_json(&[
        "quantize",
        "--model",
        &fx("tiny-gpt2"),
        "--out",
        q,
        "--format",
        "q4k",
        "--json",
    ]);
    assert_eq!(v["format"], "q4k");
    assert_eq!(v["layers"].as_array().unwrap().len(), 9);
    let info = wick_json(&["info", "--model", q, "--json"]);
    assert!(info["dtype"].as_str().unwrap().starts_with("q4k"), "{info}");
    assert_eq!(
        info["parameters"],
        wick_json(&["info", "--model", &fx("tiny-gpt2"), "--json"])["parameters"]
    );
    assert_eq!(info["unused_tensors"].as_array().unwrap().len(), 0);
    let g = wick_json(&[
        "generate",
        "--model",
        q,
        "--prompt",
        "To be",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--json",
    ]);
    assert_eq!(ids(&g["token_ids"]).len(), 5);
    // Quantizing a quantized folder, a BERT, or an unknown format: clear errors (into a
    // new folder: `q` itself is refused as an --out that holds a model).
    let fresh = dir.path().join("fresh");
    let (q_model, q) = (q, fresh.to_str().unwrap());
    let (code, _, err) = wick(&[
        "quantize", "--model", q_model, "--out", q, "--format", "q8_0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("already quantized"), "{err}");
    let (code, _, err) = wick(&[
        "quantize",
        "--model",
        &fx("tiny-bert"),
        "--out",
        q,
        "--format",
        "q8_0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("GPT-2"), "{err}");
    let (code, _, err) = wick(&[
        "quantize",
        "--model",
        &fx("tiny-gpt2"),
        "--out",
        q,
        "--format",
        "q2",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--format"), "{err}");
    assert!(
        !fresh.exists(),
        "a refused quantize wrote {}",
        fresh.display()
    );
}

#[test]
fn score_needs_a_stride_for_texts_longer_than_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("long.txt");
    std::fs::write(&f, "To be, or not to be, that is the question. ".repeat(20)).unwrap();
    let file = f.to_str().unwrap();
    let (code, _, err) = wick(&["score", "--model", &fx("tiny-gpt2"), "--file", file]);
    assert_ne!(code, 0);
    assert!(err.contains("--stride"), "{err}");
    let v = wick_json(&[
        "score",
        "--model",
        &fx("tiny-gpt2"),
        "--file",
        file,
        "--stride",
        "32",
        "--json",
    ]);
    let n = v["token_ids"].as_array().unwrap().len();
    assert!(n > 64);
    assert_eq!(v["logprobs"].as_array().unwrap().len(), n - 1);
}
