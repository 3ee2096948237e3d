//! Gradients of whole models against central finite differences, in f64: proof that
//! every op on the training path has a backward pass (candle-nn's fused LayerNorm and
//! softmax_last_dim do not, and would silently zero these).

use candle_core::{DType, Device, Tensor, Var, D};
use wick::checkpoint::WeightSource;
use wick::models::{BertHeads, Model, ModelConfig};

fn config(json: serde_json::Value) -> ModelConfig {
    ModelConfig::from_value(&json, std::path::Path::new("<test>")).unwrap()
}

/// Mean cross-entropy of logits (B, T, V) against targets (B, T).
fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = logits.dim(D::Minus1).unwrap();
    let logp = candle_nn::ops::log_softmax(&logits.reshape(((), v)).unwrap(), D::Minus1).unwrap();
    let picked = logp
        .gather(&targets.flatten_all().unwrap().unsqueeze(1).unwrap(), 1)
        .unwrap();
    picked.mean_all().unwrap().neg().unwrap()
}

fn check(vars: &[(String, Var)], loss: impl Fn() -> Tensor, names: &[&str]) {
    let grads = loss().backward().unwrap();
    for name in names {
        let (_, var) = vars
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no var {name}"));
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("no gradient reached {name}"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = orig.len();
        for &i in &[0, n / 3, n - 1] {
            let h = 1e-5;
            let at = |delta: f64| {
                let mut w = orig.clone();
                w[i] += delta;
                var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss().to_scalar::<f64>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let tol = 1e-6 + 1e-4 * fd.abs().max(g[i].abs());
            assert!(
                (g[i] - fd).abs() < tol,
                "{name}[{i}]: analytic {} vs finite difference {fd}",
                g[i]
            );
        }
    }
}

#[test]
fn gpt2_gradients_match_finite_differences() {
    let cfg = config(
        serde_json::json!({"model_type": "gpt2", "vocab_size": 11, "n_positions": 8,
        "n_embd": 8, "n_layer": 2, "n_head": 2}),
    );
    let w = WeightSource::from_scratch();
    let Model::Gpt2(m) = Model::build(&cfg, None, w.var_builder(DType::F64, &Device::Cpu)).unwrap()
    else {
        panic!()
    };
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1u32, 5, 2, 9, 3], [4, 4, 7, 0, 10]], &dev).unwrap();
    let y = Tensor::new(&[[5u32, 2, 9, 3, 1], [4, 7, 0, 10, 6]], &dev).unwrap();
    let loss = || cross_entropy(&m.forward(&x, None, None, false).unwrap(), &y);
    check(
        &w.vars(),
        loss,
        &[
            "transformer.wte.weight",
            "transformer.wpe.weight",
            "transformer.h.0.ln_1.weight",
            "transformer.h.0.ln_1.bias",
            "transformer.h.0.attn.c_attn.weight",
            "transformer.h.1.mlp.c_fc.weight",
            "transformer.h.1.mlp.c_proj.bias",
            "transformer.ln_f.weight",
        ],
    );
}

#[test]
fn bert_gradients_match_finite_differences() {
    let cfg = config(
        serde_json::json!({"model_type": "bert", "architectures": ["BertForPreTraining"],
        "vocab_size": 13, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 8, "layer_norm_eps": 1e-5}),
    );
    let w = WeightSource::from_scratch();
    // BERT's pretraining heads: masked LM and next-sentence prediction on the pooler.
    let heads = BertHeads {
        pooler: true,
        mlm: true,
        classifier: false,
        nsp: true,
    };
    let Model::Bert(m) =
        Model::build(&cfg, Some(heads), w.var_builder(DType::F64, &Device::Cpu)).unwrap()
    else {
        panic!()
    };
    let dev = Device::Cpu;
    let x = Tensor::new(&[[2u32, 5, 4, 9, 3], [2, 7, 4, 3, 0]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 1, 0]], &dev).unwrap();
    let tt = Tensor::new(&[[0u32, 0, 0, 1, 1], [0, 0, 1, 1, 1]], &dev).unwrap();
    let y = Tensor::new(&[[1u32, 6, 8, 12, 2], [11, 3, 5, 6, 1]], &dev).unwrap();
    let is_next = Tensor::new(&[0u32, 1], &dev).unwrap();
    let loss = || {
        let h = m.forward(&x, Some(&tt), Some(&mask), false).unwrap();
        let mlm = cross_entropy(&m.mlm_logits(&h).unwrap(), &y);
        let nsp = cross_entropy(&m.nsp_logits(&h).unwrap(), &is_next);
        (mlm + nsp).unwrap()
    };
    check(
        &w.vars(),
        loss,
        &[
            "bert.embeddings.word_embeddings.weight",
            "bert.embeddings.token_type_embeddings.weight",
            "bert.embeddings.LayerNorm.weight",
            "bert.encoder.layer.0.attention.self.query.weight",
            "bert.encoder.layer.0.attention.output.LayerNorm.bias",
            "bert.encoder.layer.1.intermediate.dense.weight",
            "cls.predictions.transform.dense.weight",
            "cls.predictions.bias",
            "bert.pooler.dense.weight",
            "cls.seq_relationship.weight",
            "cls.seq_relationship.bias",
        ],
    );
}

#[test]
fn seq2seq_gradients_match_finite_differences() {
    let cfg = config(
        serde_json::json!({"model_type": "wick-seq2seq", "vocab_size": 12, "d_model": 8,
        "encoder_layers": 1, "decoder_layers": 2, "num_heads": 2, "d_ff": 16, "max_position_embeddings": 16}),
    );
    let w = WeightSource::from_scratch();
    let Model::Seq2Seq(m) =
        Model::build(&cfg, None, w.var_builder(DType::F64, &Device::Cpu)).unwrap()
    else {
        panic!()
    };
    let dev = Device::Cpu;
    let src = Tensor::new(&[[5u32, 6, 7, 2], [8, 9, 2, 0]], &dev).unwrap();
    let src_mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 1, 0]], &dev).unwrap();
    let tgt_in = Tensor::new(&[[1u32, 10, 11], [1, 4, 3]], &dev).unwrap();
    let tgt_out = Tensor::new(&[[10u32, 11, 2], [4, 3, 2]], &dev).unwrap();
    let loss = || {
        cross_entropy(
            &m.forward(&src, Some(&src_mask), &tgt_in, None, false)
                .unwrap(),
            &tgt_out,
        )
    };
    check(
        &w.vars(),
        loss,
        &[
            "shared.weight",
            "encoder.layers.0.self_attn.k_proj.weight",
            "encoder.layers.0.final_layer_norm.weight",
            "decoder.layers.0.encoder_attn.v_proj.weight",
            "decoder.layers.1.self_attn.q_proj.bias",
            "decoder.layers.1.fc2.weight",
            "decoder.layers.1.encoder_attn_layer_norm.bias",
        ],
    );
}

/// The gradients of every variable for `loss` (dropout on, seeded), with and without
/// gradient checkpointing: the same to float noise, and not all zero.
fn assert_checkpointing_keeps_gradients(
    mut model: Model,
    blocks: usize,
    vars: &[(String, Var)],
    loss: impl Fn(&Model) -> Tensor,
) {
    let grads = |model: &mut Model, on: bool| {
        model.set_gradient_checkpointing(on);
        wick::nn::seed_dropout(5);
        let l = loss(model);
        assert_eq!(wick::nn::recompute::recorded(), if on { blocks } else { 0 });
        let g = wick::nn::recompute::backward(&l).unwrap();
        let all: Vec<Vec<f64>> = vars
            .iter()
            .map(|(n, v)| {
                let g = g
                    .get(v)
                    .unwrap_or_else(|| panic!("no gradient reached {n}"));
                g.flatten_all().unwrap().to_vec1().unwrap()
            })
            .collect();
        (l.to_scalar::<f64>().unwrap(), all)
    };
    let (plain_loss, plain) = grads(&mut model, false);
    let (ckpt_loss, ckpt) = grads(&mut model, true);
    assert_eq!(
        plain_loss, ckpt_loss,
        "the same forward pass, the same dropout masks"
    );
    for ((name, _), (a, b)) in vars.iter().zip(plain.iter().zip(&ckpt)) {
        for (p, q) in a.iter().zip(b) {
            assert!(
                (p - q).abs() <= 1e-12 * p.abs().max(1.0),
                "{name}: {p} vs {q}"
            );
        }
    }
    assert!(plain.iter().flatten().filter(|g| **g != 0.0).count() > plain.len());
    // Dropout did draw masks: another seed gives another loss.
    wick::nn::seed_dropout(6);
    assert_ne!(loss(&model).to_scalar::<f64>().unwrap(), plain_loss);
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients_in_every_family() {
    let dev = Device::Cpu;
    let build = |json: serde_json::Value, heads: Option<BertHeads>| {
        let w = WeightSource::from_scratch();
        let m = Model::build(&config(json), heads, w.var_builder(DType::F64, &dev)).unwrap();
        (m, w.vars())
    };

    let (gpt2, vars) = build(
        serde_json::json!({"model_type": "gpt2", "vocab_size": 11, "n_positions": 8,
        "n_embd": 8, "n_layer": 3, "n_head": 2, "resid_pdrop": 0.2, "attn_pdrop": 0.2,
        "embd_pdrop": 0.2}),
        None,
    );
    let x = Tensor::new(&[[1u32, 5, 2, 9, 3], [4, 4, 7, 0, 10]], &dev).unwrap();
    let y = Tensor::new(&[[5u32, 2, 9, 3, 1], [4, 7, 0, 10, 6]], &dev).unwrap();
    assert_checkpointing_keeps_gradients(gpt2, 3, &vars, |m| {
        let Model::Gpt2(m) = m else { unreachable!() };
        cross_entropy(&m.forward(&x, None, None, true).unwrap(), &y)
    });

    let heads = BertHeads {
        pooler: true,
        mlm: true,
        classifier: false,
        nsp: true,
    };
    let (bert, vars) = build(
        serde_json::json!({"model_type": "bert", "architectures": ["BertForPreTraining"],
        "vocab_size": 13, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 8, "hidden_dropout_prob": 0.2,
        "attention_probs_dropout_prob": 0.2}),
        Some(heads),
    );
    let x = Tensor::new(&[[2u32, 5, 4, 9, 3], [2, 7, 4, 3, 0]], &dev).unwrap();
    // Padding: the layers run on packed real tokens, which the recomputation repeats.
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 1, 0]], &dev).unwrap();
    let y = Tensor::new(&[[1u32, 6, 8, 12, 2], [11, 3, 5, 6, 1]], &dev).unwrap();
    let is_next = Tensor::new(&[0u32, 1], &dev).unwrap();
    assert_checkpointing_keeps_gradients(bert, 2, &vars, |m| {
        let Model::Bert(m) = m else { unreachable!() };
        let h = m.forward(&x, None, Some(&mask), true).unwrap();
        let mlm = cross_entropy(&m.mlm_logits(&h).unwrap(), &y);
        (mlm + cross_entropy(&m.nsp_logits(&h).unwrap(), &is_next)).unwrap()
    });

    let (seq2seq, vars) = build(
        serde_json::json!({"model_type": "wick-seq2seq", "vocab_size": 12, "d_model": 8,
        "encoder_layers": 2, "decoder_layers": 2, "num_heads": 2, "d_ff": 16,
        "max_position_embeddings": 16, "dropout": 0.2}),
        None,
    );
    let src = Tensor::new(&[[5u32, 6, 7, 2], [8, 9, 2, 0]], &dev).unwrap();
    let src_mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 1, 0]], &dev).unwrap();
    let tgt_in = Tensor::new(&[[1u32, 10, 11], [1, 4, 3]], &dev).unwrap();
    let tgt_out = Tensor::new(&[[10u32, 11, 2], [4, 3, 2]], &dev).unwrap();
    // The decoder's layers read the encoder's last one: its gradient sums theirs.
    assert_checkpointing_keeps_gradients(seq2seq, 4, &vars, |m| {
        let Model::Seq2Seq(m) = m else { unreachable!() };
        let logits = m
            .forward(&src, Some(&src_mask), &tgt_in, None, true)
            .unwrap();
        cross_entropy(&logits, &tgt_out)
    });
}
