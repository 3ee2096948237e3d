//! Data parallelism on one CPU: a causal LM's batch split by rows into shards that run
//! side by side, one per thread, every op of a shard kept on its thread
//! ([`crate::nn::kernels::parallel`]). Here: their gradients; evaluation's forward-only
//! twin is [`crate::eval::mean_loss`].
//!
//! Why: at the default preset's sizes a single op is too small to split well across
//! threads (each hand-off costs about what it saves), while whole shards keep every
//! core busy from the first op to the last. Every position of a causal LM's batch is a
//! target, so the mean of the shards' mean losses is the batch's mean loss, and their
//! gradients, each scaled by 1 / shards, sum to its gradient. The sums follow the shard
//! count, which follows the thread count: the same machine repeats a run exactly.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};

use crate::error::Result;
use crate::models::Gpt2;
use crate::nn::kernels::parallel::{over_shards, shard_count};
use crate::nn::loss::lm_loss;
use crate::nn::recompute;

/// The mean of `loss` over a batch's rows (each of `rows` holding the batch's rows of
/// one input), with dropout seeded from `seed` shard by shard, and the gradients of
/// `vars` for it scaled by `weight`. `loss` must weigh every row the same (a mean over
/// rows), so that the mean of the shards' means is the batch's mean.
pub fn grads_over(
    rows: &[&Tensor],
    weight: f64,
    seed: u64,
    vars: &[(String, Var)],
    loss: impl Fn(&[Tensor]) -> Result<Tensor> + Sync,
) -> Result<(f64, GradStore)> {
    let shards = shard_count(rows[0].dim(0)?, rows[0].device());
    let per_shard = over_shards(rows, |s, t| {
        crate::nn::seed_dropout(seed ^ (s as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        backward(&loss(t)?, weight / shards as f64)
    })?;
    let (mut total, mut grads) = (0f64, None);
    for (l, g) in per_shard {
        total += l / shards as f64;
        accumulate(&mut grads, g, vars)?;
    }
    Ok((total, grads.expect("at least one shard")))
}

/// Mean next-token loss of (x, y) with dropout on, and the gradients of `vars` for that
/// loss scaled by `weight` ([`grads_over`]: every position of a causal LM's batch is a
/// target).
pub fn loss_and_grads(
    model: &Gpt2,
    x: &Tensor,
    y: &Tensor,
    weight: f64,
    seed: u64,
    vars: &[(String, Var)],
) -> Result<(f64, GradStore)> {
    grads_over(&[x, y], weight, seed, vars, |t| {
        Ok(lm_loss(&model.forward(&t[0], None, None, true)?, &t[1])?)
    })
}

/// The loss's value and the gradients of `loss · weight`.
pub fn backward(loss: &Tensor, weight: f64) -> Result<(f64, GradStore)> {
    let value = loss.to_scalar::<f32>()? as f64;
    Ok((value, recompute::backward(&loss.affine(weight, 0.0)?)?))
}

/// Adds the gradients of `vars` in `grads` into `into`, for shards and micro-batches
/// alike (the first store is kept whole). On the CPU the sums are made in place, in
/// the first store's tensors (each a fresh buffer of the backward pass, shared with
/// nothing): a + g as a new tensor would hold a third copy of the gradients, on the
/// summing thread's heap, at the step's peak (1.4 GB for GPT-2 355M).
pub fn accumulate(
    into: &mut Option<GradStore>,
    grads: GradStore,
    vars: &[(String, Var)],
) -> Result<()> {
    match into {
        None => *into = Some(grads),
        Some(acc) => {
            for (_, v) in vars {
                let Some(g) = grads.get(v) else {
                    continue;
                };
                match acc.get(v) {
                    Some(a) if summable_in_place(a, g) => a.inplace_op2(g, &AddInto)?,
                    Some(a) => {
                        let sum = (a + g)?;
                        acc.insert(v, sum);
                    }
                    None => {
                        acc.insert(v, g.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

fn summable_in_place(a: &Tensor, g: &Tensor) -> bool {
    a.device().is_cpu()
        && (a.dtype(), g.dtype()) == (DType::F32, DType::F32)
        && a.is_contiguous()
        && g.is_contiguous()
        && a.shape() == g.shape()
}

/// a ← a + g, elementwise: the same sum, in the same order, as `a + g`.
struct AddInto;

impl InplaceOp2 for AddInto {
    fn name(&self) -> &'static str {
        "wick-gradient-sum"
    }

    fn cpu_fwd(
        &self,
        a: &mut CpuStorage,
        la: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        use crate::train::optim::{slice, slice_mut};
        let (a, g) = (slice_mut(a, la)?, slice(g, lg)?);
        a.iter_mut().zip(g).for_each(|(a, g)| *a += g);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::WeightSource;
    use crate::eval::mean_loss;
    use crate::models::{Model, ModelConfig};
    use candle_core::{DType, Device};

    /// A tiny GPT-2 in f32 with its variables, and a batch of 4 rows.
    fn tiny() -> (Gpt2, Vec<(String, Var)>, Tensor, Tensor) {
        let cfg = serde_json::json!({"model_type": "gpt2", "vocab_size": 11, "n_positions": 8,
            "n_embd": 8, "n_layer": 2, "n_head": 2, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attn_pdrop": 0.0});
        let cfg = ModelConfig::from_value(&cfg, std::path::Path::new("<test>")).unwrap();
        let w = WeightSource::from_scratch().with_seed(3);
        let Model::Gpt2(m) =
            Model::build(&cfg, None, w.var_builder(DType::F32, &Device::Cpu)).unwrap()
        else {
            unreachable!()
        };
        let ids = |k: u32| (0..32u32).map(|i| (i * k + 1) % 11).collect::<Vec<_>>();
        let x = Tensor::from_vec(ids(7), (4, 8), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(ids(5), (4, 8), &Device::Cpu).unwrap();
        (m, w.vars(), x, y)
    }

    #[test]
    fn gradients_sum_in_place_as_a_plus_g_would() {
        let dev = Device::Cpu;
        let w = Var::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let u = Var::new(&[0.5f32, -1.], &dev).unwrap();
        let vars = vec![("w".to_string(), w.clone()), ("u".to_string(), u.clone())];
        let store = |k: f64| {
            let t = ((w.as_tensor() * k)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                + (u.as_tensor() * k)
                    .unwrap()
                    .exp()
                    .unwrap()
                    .sum_all()
                    .unwrap())
            .unwrap();
            crate::nn::recompute::backward(&t).unwrap()
        };
        let (a, b) = (store(0.3), store(1.7));
        let want: Vec<Vec<f32>> = [&w, &u]
            .iter()
            .map(|v| {
                (a.get(v).unwrap() + b.get(v).unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        let b_before = b
            .get(&w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut acc = None;
        accumulate(&mut acc, a, &vars).unwrap();
        let b_kept = b.get(&w).unwrap().clone();
        accumulate(&mut acc, b, &vars).unwrap();
        let acc = acc.unwrap();
        for (v, want) in [&w, &u].iter().zip(&want) {
            let got: Vec<f32> = acc
                .get(v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(&got, want);
        }
        // The store added in is read, never written.
        assert_eq!(
            b_kept.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b_before
        );
    }

    #[test]
    fn shards_give_the_whole_batch_loss_and_gradients() {
        let (m, vars, x, y) = tiny();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                assert_eq!(shard_count(4, &Device::Cpu), threads);
                let eval = mean_loss(&m, &x, &y).unwrap();
                let (loss, grads) = loss_and_grads(&m, &x, &y, 0.5, 0, &vars).unwrap();
                (eval, loss, grads)
            })
        };
        let (eval1, loss1, whole) = run(1);
        let (eval2, loss2, sharded) = run(2);
        assert!((loss1 - loss2).abs() < 1e-6, "{loss1} vs {loss2}");
        assert!((eval1 - eval2).abs() < 1e-6, "{eval1} vs {eval2}");
        assert!((loss1 - eval1).abs() < 1e-6, "no dropout in this config");
        for (name, v) in &vars {
            let values = |g: &GradStore| -> Vec<f32> {
                g.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap()
            };
            let (a, b) = (values(&whole), values(&sharded));
            let scale = a.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-5 * scale, "{name}: {p} vs {q}");
            }
        }
    }
}
