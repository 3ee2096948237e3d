//! The encoder-decoder end to end: `wick train --objective seq2seq` learns a handful of
//! pairs by heart, `wick translate` reproduces them greedy and with beams, scheduled
//! sampling changes what the decoder sees, and BLEU equals sacreBLEU's.

mod common;

use common::*;
use wick::tasks::bleu::corpus_bleu;

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let fx = expected("bleu.json");
    for (name, set) in fx["sets"].as_object().unwrap() {
        let b = corpus_bleu(&strings(&set["hypotheses"]), &strings(&set["references"]));
        assert!(
            (b.score - set["score"].as_f64().unwrap()).abs() < 1e-6,
            "{name}: {b:?}"
        );
        assert_close(
            &b.precisions.map(|p| p as f32),
            &floats(&set["precisions"]),
            1e-4,
            name,
        );
        assert_eq!(b.sys_len as u64, set["sys_len"].as_u64().unwrap(), "{name}");
        assert_eq!(b.ref_len as u64, set["ref_len"].as_u64().unwrap(), "{name}");
    }
}

const PAIRS: &str = "Go.\tVa !\tattribution\nI won!\tJ'ai gagné !\nHe is tall.\tIl est grand.\nWe are here.\tNous sommes ici.\nThank you.\tMerci.\nWho are you?\tQui êtes-vous ?\n";

fn train(dir: &std::path::Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    train_on(dir, name, &PAIRS.repeat(3), extra)
}

fn train_on(dir: &std::path::Path, name: &str, pairs: &str, extra: &[&str]) -> std::path::PathBuf {
    let (out, stdout) = train_threads(dir, name, pairs, extra, None);
    assert!(
        stdout.contains("trained a") && stdout.contains("BPE"),
        "{stdout}"
    );
    out
}

/// The tiny encoder-decoder trained on `pairs` (with RAYON_NUM_THREADS=`threads` when
/// given): its folder and stdout.
fn train_threads(
    dir: &std::path::Path,
    name: &str,
    pairs: &str,
    extra: &[&str],
    threads: Option<&str>,
) -> (std::path::PathBuf, String) {
    let data = dir.join(format!("{name}-pairs.tsv"));
    std::fs::write(&data, pairs).unwrap();
    let cfg = dir.join("tiny-s2s.json");
    std::fs::write(
        &cfg,
        r#"{"name": "tiny-s2s", "model": {"model_type": "wick-seq2seq", "vocab_size": 300, "d_model": 32,
            "encoder_layers": 1, "decoder_layers": 1, "num_heads": 2, "d_ff": 64,
            "dropout": 0.0, "max_position_embeddings": 32},
            "tokenizer": "bpe",
            "train": {"objective": "seq2seq", "batch_size": 6, "block_size": 24,
            "learning_rate": 0.01, "warmup_iters": 10, "val_fraction": 0.0,
            "eval_every": 50, "log_every": 5, "save_every": 1000}}"#,
    )
    .unwrap();
    let out = dir.join(name);
    let args = [
        &[
            "train",
            "--model",
            cfg.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ][..],
        &["--out", out.to_str().unwrap(), "--sample-tokens", "0"],
        extra,
    ]
    .concat();
    let mut command = wick_command();
    if let Some(t) = threads {
        command.env("RAYON_NUM_THREADS", t);
    }
    let o = command.args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (out, stdout)
}

/// A batch split into shards side by side trains as one whole batch: the shards hold
/// different numbers of target tokens, so each shard's mean loss must be weighed by its
/// share of them (an unweighted mean of the shards' means would differ here).
#[test]
fn a_batch_in_shards_trains_as_one() {
    let dir = tempfile::tempdir().unwrap();
    assert_shards_train_as_one(|threads| {
        let name = format!("shards-{threads}");
        let extra = [
            "--max-iters",
            "12",
            "--log-every",
            "1",
            "--learning-rate",
            "0.003",
        ];
        let (out, stdout) =
            train_threads(dir.path(), &name, &PAIRS.repeat(3), &extra, Some(threads));
        (losses(&out), stdout)
    });
}

#[test]
fn a_tiny_transformer_learns_pairs_by_heart_and_translates_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(dir.path(), "s2s", &["--max-iters", "150"]);
    assert!(!out.join("source_tokenizer.json").exists());
    assert_translates_the_pairs(dir.path(), &out);
}

/// Multi-label classification as generation: `--labels-as-target` turns label-id cells
/// into label names in one order; the model learns to write each text's set, and `wick
/// eval --labels-as-target` scores the decoded sets.
#[test]
fn label_sets_are_learnt_as_targets_and_scored_as_sets() {
    let dir = tempfile::tempdir().unwrap();
    let names = dir.path().join("labels.txt");
    std::fs::write(&names, "anger\njoy\nlove\n").unwrap();
    let rows = "I am so happy\t1\tx\nI love you\t2,1\tx\nThis is awful\t0\tx\nHow dare you\t0\tx\nYou are my joy\t1,2\tx\nGreat day\t1\tx\n";
    let out = train_on(
        dir.path(),
        "labels",
        &rows.repeat(3),
        &[
            "--max-iters",
            "150",
            "--labels-as-target",
            "--label-names",
            names.to_str().unwrap(),
        ],
    );
    std::fs::write(dir.path().join("test.tsv"), rows).unwrap();
    let v = wick_json(&[
        "translate",
        "--model",
        out.to_str().unwrap(),
        "--text",
        "I love you",
        "--json",
    ]);
    assert_eq!(v["translations"][0]["text"], "joy, love", "{v}");
    let v = wick_json(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        dir.path().join("test.tsv").to_str().unwrap(),
        "--labels-as-target",
        "--label-names",
        names.to_str().unwrap(),
        "--json",
    ]);
    assert_perfect_label_sets(&v);
}

/// With `--separate-vocab`, each side gets its own BPE (source_tokenizer.json beside
/// tokenizer.json) and the encoder its own embedding; the model still learns the pairs.
#[test]
fn separate_vocabularies_learn_and_translate_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(
        dir.path(),
        "sep",
        &["--max-iters", "150", "--separate-vocab"],
    );
    let vocab = |f: &str| -> serde_json::Value {
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap();
        t["model"]["vocab"].clone()
    };
    let (src, tgt) = (vocab("source_tokenizer.json"), vocab("tokenizer.json"));
    // Each side's merges come from its own language.
    let has = |v: &serde_json::Value, s: &str| v.as_object().unwrap().contains_key(s);
    assert!(has(&src, "ĠThank") && !has(&tgt, "ĠThank"), "{src}");
    assert!(has(&tgt, "ĠNous") && !has(&src, "ĠNous"), "{tgt}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["src_vocab_size"].as_u64().unwrap() as usize,
        src.as_object().unwrap().len()
    );
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let emb = st.tensor("encoder.embed_tokens.weight").unwrap();
    assert_eq!(emb.shape(), &[src.as_object().unwrap().len(), 32]);
    let info = wick_json(&["info", "--model", out.to_str().unwrap(), "--json"]);
    let side = &info["tokenizer"]["source_side"];
    assert_eq!(
        side["vocab_size"].as_u64().unwrap() as usize,
        src.as_object().unwrap().len()
    );
    assert_translates_the_pairs(dir.path(), &out);
    // The flag belongs to seq2seq.
    wick_fails(
        &[
            "train",
            "--objective",
            "clm",
            "--separate-vocab",
            "--max-iters",
            "1",
        ],
        &["--separate-vocab", "seq2seq"],
    );
}

/// Greedy, 1-beam and 4-beam translations reproduce the training pairs; `wick eval`
/// gives BLEU 100.
fn assert_translates_the_pairs(dir: &std::path::Path, out: &std::path::Path) {
    let sources: Vec<&str> = PAIRS
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    let targets: Vec<&str> = PAIRS
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    let mut args = vec!["translate", "--model", out.to_str().unwrap(), "--json"];
    for s in &sources {
        args.extend(["--text", s]);
    }
    let greedy = wick_json(&args);
    let got: Vec<String> = greedy["translations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, targets, "exact reproduction of the training pairs");
    assert!(greedy["translations"][0]["source_truncated_from"].is_null());
    // A source longer than the context (32) is cut, and the user is told.
    let long = "We are here. ".repeat(20);
    let (code, stdout, stderr) = wick(&[
        "translate",
        "--model",
        out.to_str().unwrap(),
        "--json",
        "--text",
        "Go.",
        "--text",
        &long,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let from = v["translations"][1]["source_truncated_from"]
        .as_u64()
        .unwrap();
    assert!(from > 32, "{v}");
    assert!(
        v["translations"][0]["source_truncated_from"].is_null(),
        "{v}"
    );
    assert!(
        stderr.contains(&format!(
            "input 2 is {from} tokens, over the model's context of 32"
        )),
        "{stderr}"
    );
    // One beam is greedy; four beams find the same memorised translations.
    for beams in ["1", "4"] {
        let mut a = args.clone();
        a.extend(["--num-beams", beams]);
        let v = wick_json(&a);
        for (g, b) in greedy["translations"]
            .as_array()
            .unwrap()
            .iter()
            .zip(v["translations"].as_array().unwrap())
        {
            assert_eq!(g["token_ids"], b["token_ids"], "{beams} beam(s)");
        }
    }
    // `wick eval` on the pairs: BLEU 100.
    std::fs::write(dir.join("test.tsv"), PAIRS).unwrap();
    let v = wick_json(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        dir.join("test.tsv").to_str().unwrap(),
        "--json",
    ]);
    assert!((v["bleu"].as_f64().unwrap() - 100.0).abs() < 1e-6, "{v}");
    assert!(v["loss"].as_f64().unwrap() < 1.0);
}

#[test]
fn scheduled_sampling_changes_what_the_decoder_is_fed() {
    let dir = tempfile::tempdir().unwrap();
    let loss = |out: &std::path::Path| -> Vec<f64> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let base = [
        "--max-iters",
        "10",
        "--log-every",
        "1",
        "--learning-rate",
        "0.003",
    ];
    let plain = loss(&train(dir.path(), "plain", &base));
    let again = loss(&train(
        dir.path(),
        "again",
        &[&base[..], &["--scheduled-sampling", "0"]].concat(),
    ));
    let mixed = loss(&train(
        dir.path(),
        "mixed",
        &[&base[..], &["--scheduled-sampling", "1"]].concat(),
    ));
    assert_eq!(plain, again, "p = 0 is teacher forcing");
    assert_eq!(plain.len(), mixed.len());
    assert_ne!(plain, mixed, "p = 1 feeds the model's own predictions");
    wick_fails(
        &[
            &["train", "--model", "transformer-tiny", "--data", "x.tsv"][..],
            &["--scheduled-sampling", "1.5"],
        ]
        .concat(),
        &["--scheduled-sampling"],
    );
}

/// `--objective nat`: the decoder learns the pairs as a conditional masked LM and the
/// length predictor their lengths (a source's length class, exact on these pairs);
/// Mask-Predict then reproduces them, and `wick eval` reports it.
#[test]
fn a_tiny_nat_model_learns_the_pairs_and_their_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(
        dir.path(),
        "nat",
        &["--objective", "nat", "--max-iters", "300"],
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["nat_max_length"], 24, "the block size: {config}");
    let mask = config["mask_token_id"].as_u64().unwrap();
    let tok = wick::tokenizer::Tokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.id_to_token(mask as u32).as_deref(), Some("<mask>"));
    std::fs::write(dir.path().join("test.tsv"), PAIRS).unwrap();
    let eval = |extra: &[&str]| {
        let m = out.to_str().unwrap();
        let test = dir.path().join("test.tsv");
        wick_json(
            &[
                &[
                    "eval",
                    "--model",
                    m,
                    "--data",
                    test.to_str().unwrap(),
                    "--json",
                ],
                extra,
            ]
            .concat(),
        )
    };
    // One length each: on six pairs a length names a pair, so a wrong length's
    // candidate is another pair written just as confidently, and a length beam (the
    // default 5) may prefer it; on real data it helps (docs/benchmarks.md).
    let v = eval(&["--length-beam", "1"]);
    assert_eq!(v["decoding"], "nat", "{v}");
    assert_eq!(v["length_accuracy"], 1.0, "{v}");
    assert!((v["bleu"].as_f64().unwrap() - 100.0).abs() < 1e-6, "{v}");
    // One pass is enough for pairs learnt by heart.
    let v = eval(&["--iterations", "1", "--length-beam", "1"]);
    assert!((v["bleu"].as_f64().unwrap() - 100.0).abs() < 1e-6, "{v}");
    let v = wick_json(&[
        "translate",
        "--model",
        out.to_str().unwrap(),
        "--json",
        "--length-beam",
        "1",
        "--text",
        "He is tall.",
        "--text",
        "Thank you.",
    ]);
    assert_eq!(v["translations"][0]["text"], "Il est grand.", "{v}");
    assert_eq!(v["translations"][1]["text"], "Merci.", "{v}");
    let m = out.to_str().unwrap();
    wick_fails(
        &[
            "translate",
            "--model",
            m,
            "--text",
            "Go.",
            "--decoding",
            "autoregressive",
        ],
        &["non-autoregressive", "--decoding nat"],
    );
    wick_fails(
        &[
            "translate",
            "--model",
            m,
            "--text",
            "Go.",
            "--iterations",
            "0",
        ],
        &["--iterations"],
    );
    // An autoregressive model is not decoded in parallel, nor trained as one.
    let at = train(dir.path(), "at", &["--max-iters", "2"]);
    let a = at.to_str().unwrap();
    wick_fails(
        &[
            "translate",
            "--model",
            a,
            "--text",
            "Go.",
            "--decoding",
            "nat",
        ],
        &["--decoding nat", "--objective nat"],
    );
    let data = dir.path().join("at-pairs.tsv");
    wick_fails(
        &[
            "train",
            "--model",
            a,
            "--data",
            data.to_str().unwrap(),
            "--objective",
            "nat",
        ],
        &["--objective nat", "<mask>"],
    );
    wick_fails(
        &[
            "train",
            "--model",
            m,
            "--data",
            data.to_str().unwrap(),
            "--objective",
            "seq2seq",
        ],
        &["non-autoregressive", "--objective nat"],
    );
}

/// `--distill-from`: the student trains on the teacher's translations of the training
/// sources (kept in distilled.tsv, read back on resume); held-out pairs keep references.
#[test]
fn distillation_trains_on_the_teachers_translations() {
    let dir = tempfile::tempdir().unwrap();
    // A barely trained teacher, so that its outputs differ from the references.
    let teacher = train(dir.path(), "teacher", &["--max-iters", "30"]);
    let t = teacher.to_str().unwrap();
    let flags = [
        "--objective",
        "nat",
        "--distill-from",
        t,
        "--max-iters",
        "2",
    ];
    let student = train(dir.path(), "student", &flags);
    let distilled = std::fs::read_to_string(student.join("distilled.tsv")).unwrap();
    let (sources, targets): (Vec<&str>, Vec<&str>) = distilled
        .lines()
        .map(|l| l.split_once('\t').unwrap())
        .unzip();
    assert_eq!(sources.len(), 18, "every training pair: {distilled}");
    let mut args = vec!["translate", "--model", t, "--json"];
    for s in &sources {
        args.extend(["--text", s]);
    }
    let v = wick_json(&args);
    let teacher_says: Vec<&str> = v["translations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(targets, teacher_says);
    let references: Vec<(&str, &str)> = PAIRS
        .lines()
        .map(|l| {
            let mut c = l.split('\t');
            (c.next().unwrap(), c.next().unwrap())
        })
        .collect();
    assert!(
        sources
            .iter()
            .zip(&targets)
            .any(|(&s, &t)| !references.contains(&(s, t))),
        "the teacher is not the references: {distilled}"
    );
    let (code, stdout, e) = wick(&[
        "train",
        "--resume",
        "--out",
        student.to_str().unwrap(),
        "--max-iters",
        "3",
    ]);
    assert_eq!(code, 0, "{e}");
    assert!(stdout.contains("targets read from"), "{stdout}");
    let data = dir.path().join("teacher-pairs.tsv");
    wick_fails(
        &[
            "train",
            "--model",
            "transformer-tiny",
            "--data",
            data.to_str().unwrap(),
            "--distill-from",
            dir.path().join("nowhere").to_str().unwrap(),
        ],
        &["--distill-from"],
    );
}
