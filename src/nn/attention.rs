//! Multi-head scaled dot-product attention: self-attention (queries, keys and values
//! from the same sequence) and cross-attention (queries from the decoder, keys and
//! values from the encoder output), with an additive mask bias and an optional KV cache.

use candle_core::{Result, Tensor, D};

use super::mask::Mask;
use super::{dropout, kernels, KvCache, Linear, Packing};

/// softmax(q·kᵀ·scale + mask)·v.
/// q: (B, H, Tq, D), k and v: (B, H, Tk, D); a bias mask broadcasts to (B, H, Tq, Tk).
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Mask,
    scale: f64,
    dropout_p: f64,
    train: bool,
) -> Result<Tensor> {
    let qk = q.matmul(&k.t()?)?; // (B, H, Tq, Tk)
    let probs = kernels::softmax(&qk, scale, mask)?;
    let probs = dropout(&probs, dropout_p, train)?;
    probs.matmul(v) // (B, H, Tq, D)
}

/// How queries, keys and values are projected: GPT-2 fuses the three into one
/// `c_attn` matrix; BERT and the encoder-decoder keep three.
#[derive(Debug, Clone)]
pub enum QkvProjection {
    Fused(Linear),
    Separate { q: Linear, k: Linear, v: Linear },
}

#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    qkv: QkvProjection,
    out: Linear,
    num_heads: usize,
    scale: f64,
    dropout: f64,
}

impl MultiHeadAttention {
    pub fn new(
        qkv: QkvProjection,
        out: Linear,
        num_heads: usize,
        scale: f64,
        dropout: f64,
    ) -> Self {
        Self {
            qkv,
            out,
            num_heads,
            scale,
            dropout,
        }
    }

    /// The projections, queries first, output last.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all = match &mut self.qkv {
            QkvProjection::Fused(qkv) => vec![qkv],
            QkvProjection::Separate { q, k, v } => vec![q, k, v],
        };
        all.push(&mut self.out);
        all
    }

    /// (B, T, C) -> (B, H, T, C/H)
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        x.reshape((b, t, self.num_heads, c / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn project_q(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.qkv {
            QkvProjection::Separate { q, .. } => q.forward_t(x, train),
            QkvProjection::Fused(_) => unreachable!("fused projections are used together"),
        }
    }

    fn project_kv(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        match &self.qkv {
            QkvProjection::Separate { k, v, .. } => {
                Ok((k.forward_t(x, train)?, v.forward_t(x, train)?))
            }
            QkvProjection::Fused(_) => unreachable!("fused projections are used together"),
        }
    }

    /// Self-attention over x: (B, T, C) -> (B, T, C). With a cache, x holds only the new
    /// positions and the bias must cover (T, past + T).
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Mask,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        if let (QkvProjection::Fused(qkv), None, Mask::Causal) = (&self.qkv, &cache, mask) {
            if self.dropout == 0.0 || !train {
                let qkv = qkv.forward_t(x, train)?; // (B, T, 3C)
                let y = kernels::causal_self_attention(&qkv, self.num_heads, self.scale)?;
                return self.out.forward_t(&y, train); // (B, T, C)
            }
        }
        let (q, k, v) = self.project_qkv(x, train)?; // (B, T, C) each
        let y = match cache {
            Some(cache) => {
                let (k, v) = cache.append(&self.split_heads(&k)?, &self.split_heads(&v)?)?;
                self.attend_split(&self.split_heads(&q)?, &k, &v, mask, train)?
            }
            None => self.attend(&q, &k, &v, mask, train)?,
        }; // (B, T, C)
        self.out.forward_t(&y, train)
    }

    /// Self-attention over packed real tokens x: (N, C) -> (N, C). The projections run
    /// on the N rows; the scores on the padded (B, T, C) view, under `mask`.
    pub fn forward_packed(
        &self,
        x: &Tensor,
        packing: &Packing,
        mask: &Mask,
        train: bool,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_qkv(x, train)?; // (N, C) each
        let (q, k, v) = (
            packing.unpack(&q)?,
            packing.unpack(&k)?,
            packing.unpack(&v)?,
        );
        let y = self.attend(&q, &k, &v, mask, train)?; // (B, T, C)
        self.out.forward_t(&packing.pack(&y)?, train) // (N, C)
    }

    /// Queries, keys and values of x: (..., C) -> three (..., C).
    fn project_qkv(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor, Tensor)> {
        match &self.qkv {
            QkvProjection::Fused(qkv) => {
                let c = x.dim(D::Minus1)?;
                let qkv = qkv.forward_t(x, train)?; // (..., 3C)
                let last = qkv.rank() - 1;
                Ok((
                    qkv.narrow(last, 0, c)?,
                    qkv.narrow(last, c, c)?,
                    qkv.narrow(last, 2 * c, c)?,
                ))
            }
            QkvProjection::Separate { .. } => {
                let (k, v) = self.project_kv(x, train)?;
                Ok((self.project_q(x, train)?, k, v))
            }
        }
    }

    /// Cross-attention: queries from x (B, Tq, C), keys and values from `memory`
    /// (B, Tk, C). The encoder output does not change while decoding, so with a cache
    /// its keys and values are projected once and reused.
    pub fn forward_cross(
        &self,
        x: &Tensor,
        memory: &Tensor,
        mask: &Mask,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let q = self.project_q(x, train)?; // (B, Tq, C)
        let y = match cache {
            Some(cache) => {
                let (k, v) = match cache.current()? {
                    Some(kv) => kv,
                    None => {
                        let (k, v) = self.project_kv(memory, train)?;
                        cache.append(&self.split_heads(&k)?, &self.split_heads(&v)?)?
                    }
                };
                self.attend_split(&self.split_heads(&q)?, &k, &v, mask, train)?
            }
            None => {
                let (k, v) = self.project_kv(memory, train)?; // (B, Tk, C) each
                self.attend(&q, &k, &v, mask, train)?
            }
        }; // (B, Tq, C)
        self.out.forward_t(&y, train)
    }

    /// Attention of q (B, Tq, C) over k and v (B, Tk, C) -> (B, Tq, C), heads merged,
    /// as one op ([`kernels::attention`]), attention dropout inside it (the split-head
    /// path only when dropout has no seeded generator to draw from).
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Mask,
        train: bool,
    ) -> Result<Tensor> {
        let dropout = match train && self.dropout > 0.0 {
            false => None,
            true => super::dropout_seed().map(|seed| (self.dropout, seed)),
        };
        if dropout.is_some() || !train || self.dropout == 0.0 {
            return kernels::attention(q, k, v, self.num_heads, self.scale, mask, dropout);
        }
        let (q, k, v) = (
            self.split_heads(q)?,
            self.split_heads(k)?,
            self.split_heads(v)?,
        );
        self.attend_split(&q, &k, &v, mask, train)
    }

    /// The same over split heads, q (B, H, Tq, D), k and v (B, H, Tk, D), as a KV cache
    /// holds them -> (B, Tq, C).
    fn attend_split(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Mask,
        train: bool,
    ) -> Result<Tensor> {
        let y = scaled_dot_product_attention(q, k, v, mask, self.scale, self.dropout, train)?;
        merge_heads(&y)
    }
}

/// (B, H, T, D) -> (B, T, H·D)
fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = y.dims4()?;
    y.transpose(1, 2)?.reshape((b, t, h * d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    /// The worked example: X = [[1,2],[3,4]], W_Q = W_K = W_V = I, d_k = 2.
    #[test]
    fn worked_example_of_self_attention() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[1f64, 2.], [3., 4.]]]], &dev)?; // (1, 1, 2, 2)
        let scores = x.matmul(&x.t()?)?.i((0, 0))?.to_vec2::<f64>()?;
        assert_eq!(scores, vec![vec![5., 11.], vec![11., 25.]]);

        let scale = 1.0 / 2f64.sqrt();
        let z = scaled_dot_product_attention(&x, &x, &x, &Mask::None, scale, 0.0, false)?;
        let z = z.i((0, 0))?.to_vec2::<f64>()?;
        // Exact values: row softmax of scores/sqrt(2), then a weighted sum of X's rows.
        let x_rows = [[1f64, 2.], [3., 4.]];
        for (i, row) in [[5f64, 11.], [11., 25.]].iter().enumerate() {
            let e: Vec<f64> = row.iter().map(|s| (s * scale).exp()).collect();
            let p: Vec<f64> = e.iter().map(|v| v / (e[0] + e[1])).collect();
            for j in 0..2 {
                let want = p[0] * x_rows[0][j] + p[1] * x_rows[1][j];
                assert!((z[i][j] - want).abs() < 1e-12);
            }
        }
        // The figures quoted in the model issue, to 1e-4.
        let quoted = [[2.9717, 3.9717], [2.9999, 3.9999]];
        for i in 0..2 {
            for j in 0..2 {
                assert!(
                    (z[i][j] - quoted[i][j]).abs() < 1e-4,
                    "{} vs {}",
                    z[i][j],
                    quoted[i][j]
                );
            }
        }
        let p0 = 1.0 / (1.0 + (6.0 * scale).exp());
        assert!((p0 - 0.0142).abs() < 1e-4);
        Ok(())
    }

    #[test]
    fn masked_keys_get_no_weight() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::new(&[[[[1f32, 0.]]]], &dev)?; // (1, 1, 1, 2)
        let k = Tensor::new(&[[[[1f32, 0.], [5., 5.]]]], &dev)?;
        let v = Tensor::new(&[[[[1f32, 1.], [100., 100.]]]], &dev)?;
        let bias = Tensor::new(&[[[[0f32, f32::MIN]]]], &dev)?;
        let z = scaled_dot_product_attention(&q, &k, &v, &Mask::Bias(bias), 1.0, 0.0, false)?;
        assert_eq!(z.flatten_all()?.to_vec1::<f32>()?, vec![1., 1.]);
        Ok(())
    }
}
