//! Lookup-table embeddings (token, learned position, token type) and the fixed
//! sinusoidal position encoding of the original Transformer.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    pub fn new(weight: Tensor) -> Self {
        Self { weight }
    }

    /// `{prefix}.weight`, (num, dim), initialised from N(0, 0.02).
    pub fn load(num: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: super::linear::INIT_STD,
        };
        Ok(Self::new(vb.get_with_hints((num, dim), "weight", init)?))
    }

    /// The table itself, shared with a tied output projection.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl candle_nn::Module for Embedding {
    /// ids: (B, T) integer -> (B, T, C). `index_select` has a backward (index_add).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?;
        let out = self.weight.index_select(&flat, 0)?;
        let mut shape = dims;
        shape.push(self.weight.dim(1)?);
        out.reshape(shape)
    }
}

/// PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)):
/// sine and cosine interleaved, as in "Attention Is All You Need" §3.5.
pub fn sinusoidal_table(max_len: usize, dim: usize, device: &Device) -> Result<Tensor> {
    sinusoidal_table_with(max_len, dim, SinusoidLayout::Interleaved, device)
}

/// Where the sine and cosine of each frequency go in a position's vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinusoidLayout {
    /// sin, cos, sin, cos, ... (the paper; wick's own encoder-decoder).
    Interleaved,
    /// Every sine first, then every cosine (Marian's `MarianSinusoidalPositionalEmbedding`).
    Halves,
}

/// The sinusoid table (max_len, dim) in `layout`: frequency i has angle
/// pos / 10000^(2i/dim).
pub fn sinusoidal_table_with(
    max_len: usize,
    dim: usize,
    layout: SinusoidLayout,
    device: &Device,
) -> Result<Tensor> {
    let mut table = vec![0f32; max_len * dim];
    let sines = dim.div_ceil(2);
    for pos in 0..max_len {
        let row = &mut table[pos * dim..(pos + 1) * dim];
        for i in 0..sines {
            let angle = pos as f64 / 10000f64.powf((2 * i) as f64 / dim as f64);
            let (sin_at, cos_at) = match layout {
                SinusoidLayout::Interleaved => (2 * i, 2 * i + 1),
                SinusoidLayout::Halves => (i, sines + i),
            };
            row[sin_at] = angle.sin() as f32;
            if cos_at < dim {
                row[cos_at] = angle.cos() as f32;
            }
        }
    }
    Tensor::from_vec(table, (max_len, dim), device)
}

/// Fixed (not learned) position encodings; no weights, nothing to save.
#[derive(Debug, Clone)]
pub struct SinusoidalPositions {
    table: Tensor,
}

impl SinusoidalPositions {
    pub fn new(
        max_len: usize,
        dim: usize,
        layout: SinusoidLayout,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            table: sinusoidal_table_with(max_len, dim, layout, device)?.to_dtype(dtype)?,
        })
    }

    pub fn max_len(&self) -> usize {
        self.table.dim(0).unwrap_or(0)
    }

    /// positions: (B, T) integer -> (B, T, C).
    pub fn forward(&self, positions: &Tensor) -> Result<Tensor> {
        // The table is a plain tensor, so the lookup is an embedding without a Var.
        candle_nn::Module::forward(&Embedding::new(self.table.clone()), positions)
    }
}

/// Positions offset..offset+T for every row: (B, T) u32.
pub fn position_ids(batch: usize, len: usize, offset: usize, device: &Device) -> Result<Tensor> {
    Tensor::arange(offset as u32, (offset + len) as u32, device)?
        .unsqueeze(0)?
        .repeat((batch, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::Module;

    #[test]
    fn sinusoidal_follows_the_paper() -> Result<()> {
        let d = 6;
        let t = sinusoidal_table(50, d, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(t[0], vec![0., 1., 0., 1., 0., 1.]);
        let pos = 37f64;
        for i in 0..3 {
            let angle = pos / 10000f64.powf(2.0 * i as f64 / d as f64);
            assert!((t[37][2 * i] as f64 - angle.sin()).abs() < 1e-6);
            assert!((t[37][2 * i + 1] as f64 - angle.cos()).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn lookup_gathers_rows() -> Result<()> {
        let dev = Device::Cpu;
        let e = Embedding::new(Tensor::new(&[[0f32, 1.], [10., 11.], [20., 21.]], &dev)?);
        let ids = Tensor::new(&[[2u32, 0], [1, 1]], &dev)?;
        let y = e.forward(&ids)?;
        assert_eq!(
            y.to_vec3::<f32>()?,
            vec![
                vec![vec![20., 21.], vec![0., 1.]],
                vec![vec![10., 11.], vec![10., 11.]]
            ]
        );
        let p = position_ids(2, 3, 4, &dev)?.to_vec2::<u32>()?;
        assert_eq!(p, vec![vec![4, 5, 6], vec![4, 5, 6]]);
        Ok(())
    }
}
