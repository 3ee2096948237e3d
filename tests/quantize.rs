//! Quantized checkpoints (`wick quantize`): the quantized model computes nearly what the
//! f32 one does, what is saved loads back to the very same numbers, and perplexity over
//! texts longer than the context is scored in strided windows.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use wick::checkpoint::Model;
use wick::checkpoint::{
    load, quantize_model, save_quantized, LoadOptions, Pretrained, QuantFormat,
};
use wick::tasks::score::{score, score_strided};

fn load_dir(dir: &std::path::Path) -> Pretrained {
    load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn logits(p: &Pretrained, ids: &[u32]) -> Vec<f32> {
    let Model::Gpt2(m) = &p.model else {
        panic!("not GPT-2")
    };
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&x, None, None, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// ||a - b|| / ||a||
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f32 = a.iter().map(|x| x * x).sum();
    (diff / norm).sqrt()
}

#[test]
fn q8_0_stays_close_to_f32_and_round_trips_exactly() {
    let mut p = load_dir(&fixture("tiny-gpt2"));
    let ids = p
        .tokenizer()
        .unwrap()
        .encode("To be, or not to be", false)
        .unwrap();
    let dense = logits(&p, &ids);
    let params = p.weights.num_parameters();

    let layers = quantize_model(&mut p.model, &p.weights, QuantFormat::Q8_0).unwrap();
    // 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj) + the tied LM head.
    assert_eq!(layers.len(), 9);
    assert!(layers.iter().all(|l| l.dtype.as_deref() == Some("q8_0")));
    assert_eq!(layers[8].name, "lm_head");
    let quant = logits(&p, &ids);
    let err = relative_error(&dense, &quant);
    assert!(err > 0.0, "the weights were not quantized");
    // tiny-gpt2's random weights (std 0.3) amplify errors layer to layer: 2.3% here;
    // the real checkpoint below shows what it does to a trained model's perplexity.
    assert!(err < 0.04, "q8_0 relative error {err}");

    let dir = tempfile::tempdir().unwrap();
    save_quantized(dir.path(), &mut p, QuantFormat::Q8_0).unwrap();
    assert!(dir.path().join("model.gguf").is_file());
    assert!(!dir.path().join("model.safetensors").exists());
    // The tied token embedding is stored once, as the LM head's blocks.
    let mut f = std::fs::File::open(dir.path().join("model.gguf")).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    assert!(content.tensor_infos.contains_key("lm_head.weight"));
    assert!(!content
        .tensor_infos
        .keys()
        .any(|n| n.ends_with("wte.weight")));
    let back = load_dir(dir.path());
    assert_eq!(
        logits(&back, &ids),
        quant,
        "the saved blocks are not what ran"
    );
    assert_eq!(back.weights.num_parameters(), params);
    assert!(
        back.weights.unused().is_empty(),
        "{:?}",
        back.weights.unused()
    );
    assert_eq!(back.weights.store().unwrap().quantization(), Some("q8_0"));
    assert_eq!(
        back.tokenizer()
            .unwrap()
            .encode("To be, or not to be", false)
            .unwrap(),
        ids
    );
}

#[test]
fn q4k_falls_back_to_q8_0_for_rows_that_fit_no_super_block() {
    // tiny-gpt2's rows are 32 or 128 long: none is a multiple of q4k's 256.
    let mut p = load_dir(&fixture("tiny-gpt2"));
    let layers = quantize_model(&mut p.model, &p.weights, QuantFormat::Q4K).unwrap();
    assert!(layers.iter().all(|l| l.dtype.as_deref() == Some("q8_0")));
    // A quantized model cannot be quantized again.
    assert!(quantize_model(&mut p.model, &p.weights, QuantFormat::Q8_0).is_err());
}

#[test]
fn quantizing_a_bert_is_a_clear_error() {
    let mut p = load_dir(&fixture("tiny-bert"));
    let err = quantize_model(&mut p.model, &p.weights, QuantFormat::Q8_0).unwrap_err();
    assert!(err.to_string().contains("GPT-2"), "{err}");
}

/// The real trained GPT-2: q4k where rows allow (mlp.c_proj, 768 wide), q8_0 elsewhere,
/// and perplexity on Shakespeare barely moves.
#[test]
fn q4k_perplexity_of_the_real_gpt2_stays_within_two_percent() {
    let Some(dir) = shared("gpt2-shakespeare-small") else {
        return;
    };
    let Some(text) = shared("tinyshakespeare/input.txt") else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let mut p = load_dir(&dir);
    let ids = p.tokenizer().unwrap().encode(&text[..4000], false).unwrap();
    let Model::Gpt2(m) = &p.model else { panic!() };
    let f32_ppl = score_strided(m, &ids, Some(128), &Device::Cpu)
        .unwrap()
        .perplexity;
    let layers = quantize_model(&mut p.model, &p.weights, QuantFormat::Q4K).unwrap();
    for l in &layers {
        let want = if l.name.ends_with("mlp.c_proj") {
            "q4k"
        } else {
            "q8_0"
        };
        assert_eq!(l.dtype.as_deref(), Some(want), "{}", l.name);
    }
    let Model::Gpt2(m) = &p.model else { panic!() };
    let q_ppl = score_strided(m, &ids, Some(128), &Device::Cpu)
        .unwrap()
        .perplexity;
    assert!(q_ppl != f32_ppl);
    assert!(
        (q_ppl / f32_ppl - 1.0).abs() < 0.02,
        "f32 {f32_ppl}, q4k {q_ppl}"
    );
}

#[test]
fn strided_scoring_scores_every_token_once_with_enough_context() {
    let p = load_dir(&fixture("tiny-gpt2"));
    let Model::Gpt2(m) = &p.model else { panic!() };
    let ids: Vec<u32> = (0..150u32).map(|i| (i * 37 + 11) % 320).collect();
    let dev = Device::Cpu;
    // Longer than the 64-token context: an error unless a stride is given.
    assert!(score(m, &ids, &dev).is_err());
    assert!(score_strided(m, &ids, Some(64), &dev).is_err());
    assert!(score_strided(m, &ids, Some(0), &dev).is_err());
    let s = score_strided(m, &ids, Some(16), &dev).unwrap();
    assert_eq!(s.logprobs.len(), ids.len() - 1);
    // The first window scores tokens 1..64 as one pass over it does.
    let first = score(m, &ids[..64], &dev).unwrap();
    assert_close(&s.logprobs[..63], &first.logprobs, 1e-5, "first window");
    // Token 64 is scored by the second window, which starts at token 16.
    let second = score(m, &ids[16..65], &dev).unwrap();
    assert_close(
        &s.logprobs[63..64],
        &second.logprobs[47..],
        1e-5,
        "token 64",
    );
    // The last token by the window that ends the text.
    let last_begin = 16 * ((ids.len() - 64).div_ceil(16));
    let last = score(m, &ids[last_begin..], &dev).unwrap();
    assert_close(
        &s.logprobs[s.logprobs.len() - 1..],
        &last.logprobs[last.logprobs.len() - 1..],
        1e-5,
        "last token",
    );
}
