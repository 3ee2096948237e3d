//! The encoder-decoder's masks and cache: the decoder cannot see future target tokens,
//! source padding changes nothing, and incremental decoding with the KV cache computes
//! what one full pass computes.

use candle_core::{DType, Device, IndexOp, Tensor};
use wick::checkpoint::WeightSource;
use wick::models::{Model, ModelConfig, Seq2Seq};

fn model() -> Seq2Seq {
    let cfg = ModelConfig::from_value(
        &serde_json::json!({"model_type": "wick-seq2seq", "vocab_size": 20, "d_model": 16,
            "encoder_layers": 2, "decoder_layers": 2, "num_heads": 4, "d_ff": 32, "max_position_embeddings": 32}),
        std::path::Path::new("<test>"),
    )
    .unwrap();
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
