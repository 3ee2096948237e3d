//! The pretrained encoder-decoder families against transformers
//! (tests/fixtures/make_fixtures.py, `make_marian` and `make_bart`):
//! - a tiny random MarianMTModel in the opus-mt layout, whose folder has source.spm,
//!   target.spm and vocab.json and no tokenizer.json (wick reads the sentencepiece
//!   models itself);
//! - a tiny random BartForConditionalGeneration with a byte-level BPE tokenizer.json, and
//!   the same weights as a bare BartModel (facebook/bart-base's layout).
//!
//! Their ids, teacher-forced logits on a padded batch, and greedy and beam-4 generate()
//! ids, batched and one by one, are held to transformers'.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use common::*;
use serde_json::Value;
use wick::checkpoint::{load, LoadOptions, Model};
use wick::generation::GenerateOptions;
use wick::models::{Seq2Seq, Seq2SeqFamily};
use wick::tasks::translate::{translate, Decoding};
use wick::tokenizer::Tokenizer;

fn model(name: &str) -> (Seq2Seq, Tokenizer) {
    let p = load(fixture(name).to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert!(
        p.weights.unused().is_empty(),
        "unused {:?}",
        p.weights.unused()
    );
    let tok = p.tokenizer().unwrap().clone();
    match p.model {
        Model::Seq2Seq(m) => (m, tok),
        other => panic!("expected an encoder-decoder, got {}", other.architecture()),
    }
}

fn marian() -> (Seq2Seq, Tokenizer) {
    model("tiny-marian")
}

fn exp() -> Value {
    expected("marian.json")
}

fn sources(e: &Value) -> Vec<String> {
    e["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(ids).collect()
}

#[test]
fn config_and_sentencepiece_tokenizers_match() {
    let e = exp();
    let (m, tok) = marian();
    let c = m.config();
    assert_eq!(c.family, Seq2SeqFamily::Marian);
    assert_eq!(
        (c.pad_token_id, c.eos_token_id, c.bos_token_id),
        (113, 0, 113)
    );
    // Source ids (with </s>) from source.spm mapped onto vocab.json.
    let masks = rows(&e["attention_mask"]);
    for (i, (s, want)) in sources(&e).iter().zip(rows(&e["input_ids"])).enumerate() {
        let len = masks[i].iter().sum::<u32>() as usize;
        assert_eq!(
            tok.source_side().encode(s, true).unwrap(),
            want[..len],
            "{s:?}"
        );
    }
    // Target ids from target.spm, and their decoding back to text.
    for ((t, want), text) in sources(&e)
        .iter()
        .zip(rows(&e["target_ids"]))
        .zip(e["target_text"].as_array().unwrap())
    {
        assert_eq!(tok.encode(&t.to_lowercase(), true).unwrap(), want, "{t:?}");
        assert_eq!(tok.decode(&want, true).unwrap(), text.as_str().unwrap());
    }
}

#[test]
fn teacher_forced_logits_match_on_a_padded_batch() {
    teacher_forced_logits_match(&marian().0, &exp(), "logits");
    teacher_forced_logits_match(&model("tiny-bart").0, &expected("bart.json"), "logits");
    // The bare BartModel: no final_logits_bias (zeros), the tied copies not needed.
    let bare = expected("bart.json");
    teacher_forced_logits_match(&model("tiny-bart-base").0, &bare, "logits_bare");
}

fn teacher_forced_logits_match(m: &Seq2Seq, e: &Value, key: &str) {
    let dev = Device::Cpu;
    let t = |k: &str| Tensor::new(rows(&e[k]), &dev).unwrap();
    let logits = m
        .forward(
            &t("input_ids"),
            Some(&t("attention_mask")),
            &t("decoder_input_ids"),
            Some(&t("decoder_attention_mask")),
            false,
        )
        .unwrap();
    for (b, want) in e[key].as_array().unwrap().iter().enumerate() {
        for (pos, want_t) in floats2(want).iter().enumerate() {
            let got = logits.i((b, pos)).unwrap().to_vec1::<f32>().unwrap();
            assert_close(&got, want_t, 1e-4, &format!("{key}[{b},{pos}]"));
        }
    }
}

#[test]
fn greedy_and_beam_generation_match_batched_and_one_by_one() {
    for (name, exp) in [("tiny-marian", "marian.json"), ("tiny-bart", "bart.json")] {
        let (m, tok) = model(name);
        generation_matches(&m, &tok, &expected(exp));
    }
}

fn generation_matches(m: &Seq2Seq, tok: &Tokenizer, e: &Value) {
    let src = sources(e);
    for (beams, key) in [(1, "greedy"), (4, "beam4")] {
        let opts = GenerateOptions {
            max_new_tokens: 10,
            num_beams: beams,
            ..Default::default()
        };
        let decoding = Decoding::Autoregressive(opts);
        let batched = translate(m, tok, &src, &decoding, &Device::Cpu).unwrap();
        for (i, want) in rows(&e[key]).iter().enumerate() {
            assert_eq!(&batched[i].token_ids, want, "{key} batched, source {i}");
            let alone = translate(m, tok, &src[i..i + 1], &decoding, &Device::Cpu).unwrap();
            let want_alone = &rows(&e[format!("{key}_one_by_one")])[i];
            assert_eq!(&alone[0].token_ids, want_alone, "{key} alone, source {i}");
        }
        if beams == 1 {
            // wick trims the text; transformers keeps a byte-level BPE's leading space.
            for (t, want) in batched.iter().zip(e["greedy_text"].as_array().unwrap()) {
                assert_eq!(t.text, want.as_str().unwrap().trim());
            }
        }
    }
}

/// Fine-tunes the fixture `name` for 40 steps on its sources paired with their lower
/// case (the loss must fall by a fifth) and returns the run folder (in `dir`).
fn fine_tune(name: &str, e: &Value, dir: &std::path::Path) -> std::path::PathBuf {
    let pairs: String = sources(e)
        .iter()
        .map(|s| format!("{s}\t{}\n", s.to_lowercase()))
        .collect::<String>()
        .repeat(20);
    let data = dir.join("pairs.tsv");
    std::fs::write(&data, pairs).unwrap();
    let out = dir.join("run");
    let (code, _, stderr) = wick(&[
        "train",
        "--model",
        fixture(name).to_str().unwrap(),
        "--objective",
        "seq2seq",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-iters",
        "40",
        "--batch-size",
        "6",
        "--block-size",
        "32",
        "--learning-rate",
        "0.003",
        "--warmup-iters",
        "2",
        "--log-every",
        "1",
        "--eval-every",
        "1000",
        "--sample-tokens",
        "0",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let l = losses(&out);
    assert!(l.last().unwrap().1 < l[0].1 * 0.8, "the loss falls: {l:?}");
    out
}

fn json_file(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The run's translation of `text` (for the Python-side check) and the run kept there.
fn translate_and_keep(out: &std::path::Path, text: &str, keep_as: &str) {
    let v = wick_json(&[
        "translate",
        "--model",
        out.to_str().unwrap(),
        "--text",
        text,
        "--json",
    ]);
    assert!(v.to_string().contains("text"), "{v}");
    // For tests/fixtures/check_transformers_loads.py: the run and wick's translation.
    let outputs = serde_json::json!({"translate": text, "wick": v});
    keep_saved(out, keep_as, Some(outputs));
}

/// A seq2seq fine-tune of the Marian fixture saves a Marian checkpoint: its config.json
/// in Marian's names, the fixture's tensor names, the sentencepiece files and vocab.json
/// beside tokenizer.json (what transformers' MarianTokenizer opens), and it translates.
#[test]
fn fine_tuning_saves_a_marian_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = fine_tune("tiny-marian", &exp(), dir.path());
    let cfg = json_file(&out.join("config.json"));
    assert_eq!(cfg["model_type"], "marian");
    assert_eq!(cfg["architectures"][0], "MarianMTModel");
    assert_eq!(cfg["decoder_start_token_id"], 113);
    assert_eq!(cfg["forced_eos_token_id"], 0);
    let names = |d: &std::path::Path| safetensors_names(&d.join("model.safetensors"));
    assert_eq!(names(&out), names(&fixture("tiny-marian")));
    for f in ["source.spm", "target.spm", "vocab.json"] {
        assert!(out.join(f).is_file(), "{f} copied beside tokenizer.json");
    }
    let tc = json_file(&out.join("tokenizer_config.json"));
    assert_eq!(tc["tokenizer_class"], "MarianTokenizer");
    translate_and_keep(&out, "To be, or not to be", "tiny-marian-ft");
}

/// BART's framing: each side `<s> ... </s>` (the ids its tokenizer gives with special
/// tokens), the decoder started from `</s>` and forced to `<s>` (generation_config.json).
#[test]
fn bart_frames_both_sides_and_reads_its_generation_ids() {
    let e = expected("bart.json");
    let (m, tok) = model("tiny-bart");
    let c = m.config();
    assert_eq!(c.family, Seq2SeqFamily::Bart);
    assert_eq!(
        (c.pad_token_id, c.eos_token_id, c.bos_token_id),
        (1, 2, 2),
        "the decoder starts from </s>"
    );
    assert_eq!(
        c.forced_bos_token_id,
        Some(0),
        "from generation_config.json"
    );
    let masks = rows(&e["attention_mask"]);
    for (i, (s, want)) in sources(&e).iter().zip(rows(&e["input_ids"])).enumerate() {
        let len = masks[i].iter().sum::<u32>() as usize;
        let framed = c.framing().apply(tok.encode(s, false).unwrap(), 64).0;
        assert_eq!(framed, want[..len], "{s:?}");
    }
    for (t, want) in sources(&e).iter().zip(rows(&e["target_ids"])) {
        let framed = c
            .framing()
            .apply(tok.encode(&t.to_lowercase(), false).unwrap(), 64);
        assert_eq!(framed.0, want, "{t:?}");
    }
    // A source longer than the positions is cut inside the frame.
    let (long, cut) = c.framing().apply(vec![50; 100], 64);
    assert_eq!((long.len(), long[0], long[63], cut), (64, 0, 2, Some(102)));
}

/// A seq2seq fine-tune of BART, from the bare BartModel as from facebook/bart-base,
/// saves a BartForConditionalGeneration: transformers' exact tensor names (the
/// `model.` prefix and final_logits_bias added), its config and generation ids, and a
/// tokenizer_config.json naming `<s>` as bos.
#[test]
fn fine_tuning_bart_from_a_bare_model_saves_the_generation_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = fine_tune("tiny-bart-base", &expected("bart.json"), dir.path());
    let cfg = json_file(&out.join("config.json"));
    assert_eq!(cfg["model_type"], "bart");
    assert_eq!(cfg["architectures"][0], "BartForConditionalGeneration");
    assert_eq!(
        (&cfg["bos_token_id"], &cfg["decoder_start_token_id"]),
        (&Value::from(0), &Value::from(2))
    );
    let g = json_file(&out.join("generation_config.json"));
    assert_eq!(
        (&g["forced_bos_token_id"], &g["forced_eos_token_id"]),
        (&Value::from(0), &Value::from(2))
    );
    let names = |d: &std::path::Path| safetensors_names(&d.join("model.safetensors"));
    assert_eq!(names(&out), names(&fixture("tiny-bart")));
    let tc = json_file(&out.join("tokenizer_config.json"));
    assert_eq!(
        (&tc["bos_token"], &tc["mask_token"]),
        (&"<s>".into(), &"<mask>".into())
    );
    translate_and_keep(&out, "To be, or not to be", "tiny-bart-ft");
    // `wick eval` frames the pairs as training did: its teacher-forced loss on the
    // training pairs is near the last training loss, far below the first.
    let data = dir.path().join("pairs.tsv");
    let (out_s, data_s) = (out.to_str().unwrap(), data.to_str().unwrap());
    let v = wick_json(&["eval", "--model", out_s, "--data", data_s, "--json"]);
    let l = losses(&out);
    assert!(v["loss"].as_f64().unwrap() < l[0].1 * 0.8, "{v} vs {l:?}");
    let v = wick_json(&["info", "--model", out.to_str().unwrap(), "--json"]);
    assert_eq!(v["family"], "BART");
    assert!(v["supported"].to_string().contains("translate"), "{v}");
}

/// A damaged or missing sentencepiece file is refused naming the file, never a panic.
#[test]
fn a_damaged_sentencepiece_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("tiny-marian")).unwrap().flatten() {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let spm = dir.path().join("source.spm");
    let bytes = std::fs::read(&spm).unwrap();
    std::fs::write(&spm, &bytes[..bytes.len() / 3]).unwrap();
    let model = dir.path().to_str().unwrap();
    wick_fails(
        &["translate", "--model", model, "--text", "To be"],
        &["source.spm", "not a sentencepiece model"],
    );
    std::fs::write(&spm, b"").unwrap();
    wick_fails(
        &["translate", "--model", model, "--text", "To be"],
        &["source.spm"],
    );
    let v = wick_json(&[
        "info",
        "--model",
        fixture("tiny-marian").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["family"], "Marian");
    assert!(v["supported"].to_string().contains("translate"), "{v}");
}
