//! The encoder-decoder's masks and cache: the decoder cannot see future target tokens,
//! source padding changes nothing, and incremental decoding with the KV cache computes
//! what one full pass computes. The non-autoregressive variant's decoder sees every
//! position, and Mask-Predict with one iteration is one parallel argmax.

use candle_core::{DType, Device, IndexOp, Tensor};
use wick::checkpoint::WeightSource;
use wick::models::{Model, ModelConfig, Seq2Seq};

fn model() -> Seq2Seq {
    model_with(serde_json::json!({}))
}

/// The non-autoregressive variant: targets up to 6 tokens, `<mask>` = 3.
fn nat_model() -> Seq2Seq {
    model_with(serde_json::json!({"nat_max_length": 6, "mask_token_id": 3}))
}

fn model_with(extra: serde_json::Value) -> Seq2Seq {
    let mut c = serde_json::json!({"model_type": "wick-seq2seq", "vocab_size": 20, "d_model": 16,
            "encoder_layers": 2, "decoder_layers": 2, "num_heads": 4, "d_ff": 32, "max_position_embeddings": 32});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    let cfg = ModelConfig::from_value(&c, std::path::Path::new("<test>")).unwrap();
    let w = WeightSource::from_scratch();
    match Model::build(&cfg, None, w.var_builder(DType::F32, &Device::Cpu)).unwrap() {
        Model::Seq2Seq(m) => m,
        _ => unreachable!(),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn decoder_cannot_see_future_targets() {
    let m = model();
    let dev = Device::Cpu;
    let src = Tensor::new(&[[5u32, 6, 7, 8, 2]], &dev).unwrap();
    let a = Tensor::new(&[[1u32, 10, 11, 12, 13]], &dev).unwrap();
    let b = Tensor::new(&[[1u32, 10, 11, 19, 3]], &dev).unwrap(); // differs from position 3 on
    let la = m.forward(&src, None, &a, None, false).unwrap();
    let lb = m.forward(&src, None, &b, None, false).unwrap();
    assert!(max_diff(&la.i((.., ..3)).unwrap(), &lb.i((.., ..3)).unwrap()) < 1e-6);
    assert!(max_diff(&la.i((.., 3..)).unwrap(), &lb.i((.., 3..)).unwrap()) > 1e-4);
}

#[test]
fn source_and_target_padding_change_nothing() {
    let m = model();
    let dev = Device::Cpu;
    let src = Tensor::new(&[[5u32, 6, 7, 2]], &dev).unwrap();
    let tgt = Tensor::new(&[[1u32, 10, 11]], &dev).unwrap();
    let alone = m.forward(&src, None, &tgt, None, false).unwrap();
    let src_pad = Tensor::new(&[[5u32, 6, 7, 2, 0, 0]], &dev).unwrap();
    let src_mask = Tensor::new(&[[1u32, 1, 1, 1, 0, 0]], &dev).unwrap();
    let tgt_pad = Tensor::new(&[[1u32, 10, 11, 0]], &dev).unwrap();
    let tgt_mask = Tensor::new(&[[1u32, 1, 1, 0]], &dev).unwrap();
    let padded = m
        .forward(&src_pad, Some(&src_mask), &tgt_pad, Some(&tgt_mask), false)
        .unwrap();
    assert!(max_diff(&alone, &padded.i((.., ..3)).unwrap()) < 1e-5);
    // Without the source mask the padding does leak in.
    let leaky = m.forward(&src_pad, None, &tgt, None, false).unwrap();
    assert!(max_diff(&alone, &leaky) > 1e-4);
}

#[test]
fn cached_incremental_decoding_equals_a_full_pass() {
    let m = model();
    let dev = Device::Cpu;
    let src = Tensor::new(&[[5u32, 6, 7, 2], [9, 8, 2, 0]], &dev).unwrap();
    let src_mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 1, 0]], &dev).unwrap();
    let tgt = Tensor::new(&[[1u32, 10, 11, 12], [1, 13, 14, 15]], &dev).unwrap();
    let full = m.forward(&src, Some(&src_mask), &tgt, None, false).unwrap();
    let memory = m.encode(&src, Some(&src_mask), false).unwrap();
    let mut cache = m.new_cache(2);
    for t in 0..4 {
        let step = m
            .decode(
                &tgt.i((.., t..t + 1)).unwrap(),
                &memory,
                Some(&src_mask),
                None,
                Some(&mut cache),
                false,
            )
            .unwrap();
        assert!(
            max_diff(&step, &full.i((.., t..t + 1)).unwrap()) < 1e-5,
            "step {t}"
        );
    }
    assert_eq!(cache.len(), 4);
}

#[test]
fn the_nat_decoder_sees_every_position() {
    let (at, nat) = (model(), nat_model());
    let dev = Device::Cpu;
    let src = Tensor::new(&[[5u32, 6, 7, 8, 2]], &dev).unwrap();
    let a = Tensor::new(&[[3u32, 10, 3, 12, 2]], &dev).unwrap();
    let b = Tensor::new(&[[3u32, 10, 3, 19, 2]], &dev).unwrap(); // differs at position 3
    for (m, sees_ahead) in [(&at, false), (&nat, true)] {
        let la = m.forward(&src, None, &a, None, false).unwrap();
        let lb = m.forward(&src, None, &b, None, false).unwrap();
        let earlier = max_diff(&la.i((.., ..3)).unwrap(), &lb.i((.., ..3)).unwrap());
        assert_eq!(
            earlier > 1e-6,
            sees_ahead,
            "earlier positions moved by {earlier}"
        );
    }
    // One length class per offset −6..=6 of the target's length from the source's.
    let memory = nat.encode(&src, None, false).unwrap();
    let lengths = nat.predict_length(&memory, None).unwrap();
    assert_eq!(lengths.dims(), &[1, 13]);
    assert_eq!(nat.length_class(5, 3), 4);
    assert_eq!(nat.length_of_class(5, 4), 3);
    assert_eq!(
        (nat.length_class(2, 30), nat.length_of_class(2, 0)),
        (12, 1)
    );
    assert!(at.predict_length(&memory, None).is_err());
}

#[test]
fn mask_predict_with_one_iteration_is_one_parallel_argmax() {
    use wick::generation::{mask_predict, MaskPredictOptions};
    let m = nat_model();
    let dev = Device::Cpu;
    let src = Tensor::new(&[[5u32, 6, 7, 8, 2], [9, 8, 2, 0, 0]], &dev).unwrap();
    let src_mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &dev).unwrap();
    let one = MaskPredictOptions {
        iterations: 1,
        length_beam: 1,
    };
    let got = mask_predict(&m, &src, &src_mask, &one).unwrap();
    let memory = m.encode(&src, Some(&src_mask), false).unwrap();
    let lengths = m.predict_length(&memory, Some(&src_mask)).unwrap();
    for (row, out) in got.iter().enumerate() {
        // The likeliest length (at least 1), all placeholders, one pass, each
        // position's likeliest token other than padding, BOS and the placeholder.
        let scores = lengths.i(row).unwrap().to_vec1::<f32>().unwrap();
        let class = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
            .unwrap();
        let src_len = [5, 3][row];
        let len = m.length_of_class(src_len, class);
        assert_eq!(out.length, len);
        let tgt = Tensor::new(vec![3u32; len], &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = m
            .decode(
                &tgt,
                &memory.i(row..row + 1).unwrap(),
                Some(&src_mask.i(row..row + 1).unwrap()),
                None,
                None,
                false,
            )
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let argmax: Vec<u32> = logits
            .iter()
            .map(|l| {
                (0..l.len() as u32)
                    .filter(|t| ![0, 1, 3].contains(t))
                    .max_by(|&a, &b| l[a as usize].total_cmp(&l[b as usize]).then(b.cmp(&a)))
                    .unwrap()
            })
            .collect();
        let until_eos: Vec<u32> = argmax.iter().copied().take_while(|&t| t != 2).collect();
        assert_eq!(out.ids, until_eos, "row {row}");
    }
    // More iterations and lengths still give one output per source.
    let more = mask_predict(&m, &src, &src_mask, &MaskPredictOptions::default()).unwrap();
    assert_eq!(more.len(), 2);
}
