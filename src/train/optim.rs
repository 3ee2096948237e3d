//! AdamW with parameter groups, gradient-norm clipping folded into the update, and a
//! state (moments and step) that is saved with every checkpoint so a resumed run
//! continues bit for bit.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, IndexOp, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    /// First and second moments packed as (2, numel) f32, updated in place on the CPU.
    mv: Tensor,
}

pub(crate) fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("an in-place update needs contiguous f32"),
    }
}

pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("an in-place update needs contiguous f32"),
    }
}

/// Σ g², read in place for CPU f32 gradients: the composed version is four small
/// ops per parameter, ~200 pool hand-offs a step for the default preset.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    if g.dtype() == DType::F32 {
        let (storage, layout) = g.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            if let Ok(x) = slice(cpu, layout) {
                return Ok(x.iter().map(|&v| v as f64 * v as f64).sum());
            }
        }
    }
    Ok(g.to_dtype(DType::F32)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()? as f64)
}

/// m ← β1·m + (1−β1)·g·s, v ← β2·v + (1−β2)·(g·s)², in place on the packed moments.
struct MomentsUpdate {
    beta1: f32,
    beta2: f32,
    grad_scale: f32,
}

impl InplaceOp2 for MomentsUpdate {
    fn name(&self) -> &'static str {
        "wick-adamw-moments"
    }

    fn cpu_fwd(
        &self,
        mv: &mut CpuStorage,
        lmv: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<()> {
        let (mv, g) = (slice_mut(mv, lmv)?, slice(g, lg)?);
        if mv.len() != 2 * g.len() {
            candle_core::bail!(
                "AdamW moments hold {} values for {} gradients",
                mv.len(),
                g.len()
            )
        }
        let (m, v) = mv.split_at_mut(g.len());
        for i in 0..g.len() {
            let gi = g[i] * self.grad_scale;
            m[i] = self.beta1 * m[i] + (1.0 - self.beta1) * gi;
            v[i] = self.beta2 * v[i] + (1.0 - self.beta2) * gi * gi;
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        mv: &mut candle_core::CudaStorage,
        lmv: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<()> {
        let args = [self.beta1, self.beta2, self.grad_scale];
        super::adamw_cuda::moments(mv, lmv, g, lg, args)
    }
}

/// w ← w·(1 − lr·wd) − lr · m̂ / (√v̂ + ε), in place on the parameter.
struct ApplyUpdate {
    lr: f32,
    decay_factor: f32,
    bc1: f32,
    bc2: f32,
    eps: f32,
}

impl InplaceOp2 for ApplyUpdate {
    fn name(&self) -> &'static str {
        "wick-adamw-apply"
    }

    fn cpu_fwd(
        &self,
        w: &mut CpuStorage,
        lw: &Layout,
        mv: &CpuStorage,
        lmv: &Layout,
    ) -> Result<()> {
        let (w, mv) = (slice_mut(w, lw)?, slice(mv, lmv)?);
        let (m, v) = mv.split_at(w.len());
        for i in 0..w.len() {
            let update = (m[i] / self.bc1) / ((v[i] / self.bc2).sqrt() + self.eps);
            w[i] = w[i] * self.decay_factor - self.lr * update;
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        w: &mut candle_core::CudaStorage,
        lw: &Layout,
        mv: &candle_core::CudaStorage,
        lmv: &Layout,
    ) -> Result<()> {
        let args = [self.lr, self.decay_factor, self.bc1, self.bc2, self.eps];
        super::adamw_cuda::apply(w, lw, mv, lmv, args)
    }
}

/// Whether AdamW updates `w` in place with its own kernels: f32 on the CPU, or on a
/// GPU in a CUDA build; other tensors take the composed path.
fn updates_in_place(w: &Tensor) -> bool {
    let kernels = w.device().is_cpu() || (cfg!(feature = "cuda") && w.device().is_cuda());
    kernels && w.dtype() == DType::F32 && w.is_contiguous()
}

pub struct AdamW {
    params: Vec<Param>,
    cfg: AdamWConfig,
    /// Number of updates taken (for bias correction).
    t: u64,
}

/// Which parameters get weight decay: matrices do; biases and LayerNorm gains do not
/// (they are 1-D); embeddings do unless `decay_embeddings` is false.
pub fn decays(name: &str, var: &Var, decay_embeddings: bool) -> bool {
    let is_embedding = name.contains("wte")
        || name.contains("wpe")
        || name.contains("embeddings")
        || name.starts_with("shared");
    var.rank() >= 2 && (decay_embeddings || !is_embedding)
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig, decay_embeddings: bool) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let mv = Tensor::zeros((2, var.elem_count()), DType::F32, var.device())?;
                let decay = decays(&name, &var, decay_embeddings);
                Ok(Param {
                    name,
                    var,
                    decay,
                    mv,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { params, cfg, t: 0 })
    }

    /// (decayed, not decayed) parameter counts, for the run summary.
    pub fn group_sizes(&self) -> (usize, usize) {
        self.params.iter().fold((0, 0), |(d, n), p| {
            if p.decay {
                (d + p.var.elem_count(), n)
            } else {
                (d, n + p.var.elem_count())
            }
        })
    }

    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// Global L2 norm of the gradients.
    /// Parameters are read in parallel and their sums added in a fixed order, so the
    /// norm does not depend on the thread count.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        if let Some(p) = self.params.first().filter(|p| !p.var.device().is_cpu()) {
            // On a GPU: one read back for all parameters, not one per parameter.
            let mut sums = vec![Tensor::zeros((), DType::F32, p.var.device())?];
            for g in self.params.iter().filter_map(|p| grads.get(&p.var)) {
                sums.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
            }
            let total = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f32>()?;
            return Ok((total as f64).sqrt());
        }
        let sums = self
            .params
            .par_iter()
            .map(|p| grads.get(&p.var).map_or(Ok(0.0), sum_of_squares))
            .collect::<Result<Vec<f64>>>()?;
        Ok(sums.iter().sum::<f64>().sqrt())
    }

    /// One decoupled-weight-decay Adam update with learning rate `lr`, gradients scaled
    /// by `grad_scale` (the clipping factor).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        // Parameters update independently: on the CPU in parallel, each one whole on one
        // thread; on a GPU in order, each a launch or two on the device's stream.
        let update = |p: &mut Param| -> Result<()> {
            let Some(g) = grads.get(&p.var) else {
                return Ok(());
            };
            // Gradients can carry their own autograd history: detach so the moments
            // never keep earlier steps' graphs alive.
            let g = g.detach();
            let w = p.var.as_tensor();
            let decay_factor = if p.decay {
                1.0 - lr * weight_decay
            } else {
                1.0
            };
            if updates_in_place(w) {
                let g = g.to_dtype(DType::F32)?.contiguous()?.flatten_all()?;
                let moments = MomentsUpdate {
                    beta1: beta1 as f32,
                    beta2: beta2 as f32,
                    grad_scale: grad_scale as f32,
                };
                p.mv.inplace_op2(&g, &moments)?;
                let apply = ApplyUpdate {
                    lr: lr as f32,
                    decay_factor: decay_factor as f32,
                    bc1: bc1 as f32,
                    bc2: bc2 as f32,
                    eps: eps as f32,
                };
                w.inplace_op2(&p.mv, &apply)?;
            } else {
                let g = (g.to_dtype(DType::F32)?.flatten_all()? * grad_scale)?;
                let m = ((p.mv.i(0)? * beta1)? + (&g * (1.0 - beta1))?)?;
                let v = ((p.mv.i(1)? * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + eps)?)?.reshape(w.shape())?;
                let new_w = ((w.detach() * decay_factor)? - (update * lr)?.to_dtype(w.dtype())?)?;
                p.var.set(&new_w)?;
                p.mv = Tensor::stack(&[m, v], 0)?;
            }
            Ok(())
        };
        match self.params.first().is_some_and(|p| p.var.device().is_cpu()) {
            true => self.params.par_iter_mut().try_for_each(update),
            false => self.params.iter_mut().try_for_each(update),
        }
    }

    /// Moments as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) for saving.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                let moment = |i: usize| {
                    p.mv.i(i)
                        .and_then(|m| m.reshape(p.var.shape()))
                        .expect("moments match the parameter")
                };
                [
                    (format!("exp_avg.{}", p.name), moment(0)),
                    (format!("exp_avg_sq.{}", p.name), moment(1)),
                ]
            })
            .collect()
    }

    /// Restores moments saved by `state_tensors` and the step count.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, t: u64) -> Result<()> {
        for p in &mut self.params {
            let mut take = |key: String| -> Result<Tensor> {
                let t = tensors.remove(&key).ok_or_else(|| {
                    candle_core::Error::msg(format!("optimizer state has no `{key}`"))
                })?;
                if t.shape() != p.var.shape() {
                    candle_core::bail!(
                        "optimizer state `{key}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        p.var.dims()
                    )
                }
                t.to_device(p.var.device())?.to_dtype(DType::F32)
            };
            let m = take(format!("exp_avg.{}", p.name))?.flatten_all()?;
            let v = take(format!("exp_avg_sq.{}", p.name))?.flatten_all()?;
            p.mv = Tensor::stack(&[m, v], 0)?.contiguous()?;
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps on a scalar, against the AdamW formulas written out by hand.
    #[test]
    fn matches_hand_computed_adamw() -> Result<()> {
        let w = Var::new(&[[1.0f32, -2.0]], &Device::Cpu)?;
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![("h.0.w".into(), w.clone())], cfg, true)?;
        let (mut m, mut v, mut x) = ([0f64; 2], [0f64; 2], [1.0f64, -2.0]);
        for t in 1..=2 {
            let loss = (w.as_tensor().sqr()?.sum_all()? * 0.5)?; // grad = w
            let grads = loss.backward()?;
            opt.step(&grads, 0.01, 0.5)?;
            for i in 0..2 {
                let g = x[i] * 0.5;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.99 * v[i] + 0.01 * g * g;
                let upd = (m[i] / (1.0 - 0.9f64.powi(t)))
                    / ((v[i] / (1.0 - 0.99f64.powi(t))).sqrt() + 1e-8);
                x[i] = x[i] * (1.0 - 0.01 * 0.1) - 0.01 * upd;
            }
        }
        let got = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for i in 0..2 {
            assert!(
                (got[i] as f64 - x[i]).abs() < 1e-6,
                "{} vs {}",
                got[i],
                x[i]
            );
        }
        Ok(())
    }

    #[test]
    fn biases_and_norms_are_not_decayed() -> Result<()> {
        let d = Device::Cpu;
        assert!(decays(
            "transformer.h.0.attn.c_attn.weight",
            &Var::zeros((2, 2), DType::F32, &d)?,
            true
        ));
        assert!(!decays(
            "transformer.h.0.ln_1.weight",
            &Var::zeros(2, DType::F32, &d)?,
            true
        ));
        assert!(!decays(
            "transformer.h.0.attn.c_attn.bias",
            &Var::zeros(2, DType::F32, &d)?,
            true
        ));
        assert!(decays(
            "transformer.wte.weight",
            &Var::zeros((2, 2), DType::F32, &d)?,
            true
        ));
        assert!(!decays(
            "transformer.wte.weight",
            &Var::zeros((2, 2), DType::F32, &d)?,
            false
        ));
        Ok(())
    }
}
