//! Padding-free encoding. A batch of sentences padded to its longest is mostly padding
//! (SST-2: 13 real tokens per row of 40 on average), and an encoder's linear layers,
//! LayerNorms and feed-forward treat every position alone: run on the real tokens
//! packed into N rows, they compute the same values for a third of the work. Only
//! attention mixes positions, so it sees the rows unpacked into (B, T, C) again, where
//! the padding mask keeps padded keys out as before. (MosaicBERT's "unpadding", and
//! what transformers' `DataCollatorWithFlattening` does for its flash-attention path.)

use candle_core::{DType, Result, Tensor};

/// Where the real tokens of a padded (B, T) batch sit.
#[derive(Debug, Clone)]
pub struct Packing {
    /// (N,): flat index b·T + t of each real token, in order.
    rows: Tensor,
    /// (B·T,): for each position, its row among the N packed ones. Padding points at
    /// row 0: its keys are masked and its queries' outputs dropped when packing again,
    /// so what it holds never reaches a real token, nor does its gradient.
    positions: Tensor,
    b: usize,
    t: usize,
}

impl Packing {
    /// From a (B, T) attention mask (1 = token, 0 = padding); `None` when nothing is
    /// padding, where packing would only copy.
    pub fn from_mask(mask: &Tensor) -> Result<Option<Self>> {
        let (b, t) = mask.dims2()?;
        let flags = mask.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
        let mut rows = Vec::with_capacity(flags.len());
        let mut positions = Vec::with_capacity(flags.len());
        for (i, &m) in flags.iter().enumerate() {
            if m > 0 {
                positions.push(rows.len() as u32);
                rows.push(i as u32);
            } else {
                positions.push(0);
            }
        }
        if rows.len() == flags.len() || rows.is_empty() {
            return Ok(None);
        }
        let dev = mask.device();
        Ok(Some(Self {
            rows: Tensor::new(rows, dev)?,
            positions: Tensor::new(positions, dev)?,
            b,
            t,
        }))
    }

    /// Real tokens: (B, T, C) -> (N, C).
    pub fn pack(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(2)?;
        x.reshape((self.b * self.t, c))?.index_select(&self.rows, 0)
    }

    /// Back to the padded batch: (N, C) -> (B, T, C); padded positions hold a copy of
    /// row 0 (meaningless, as a padded position's output is in transformers too).
    pub fn unpack(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(1)?;
        x.index_select(&self.positions, 0)?
            .reshape((self.b, self.t, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn packs_real_tokens_and_unpacks_them_in_place() -> Result<()> {
        let dev = Device::Cpu;
        let mask = Tensor::new(&[[1u32, 1, 0], [1, 1, 1]], &dev)?;
        let p = Packing::from_mask(&mask)?.expect("the batch has padding");
        let x = Tensor::arange(0f32, 6., &dev)?.reshape((2, 3, 1))?;
        let packed = p.pack(&x)?;
        assert_eq!(
            packed.flatten_all()?.to_vec1::<f32>()?,
            [0., 1., 3., 4., 5.]
        );
        let back = p.unpack(&packed)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(back, [0., 1., 0., 3., 4., 5.]); // the padded slot holds row 0
        assert!(Packing::from_mask(&Tensor::ones((2, 3), DType::U32, &dev)?)?.is_none());
        Ok(())
    }

    #[test]
    fn gradients_reach_real_tokens_only() -> Result<()> {
        let dev = Device::Cpu;
        let mask = Tensor::new(&[[1u32, 0], [1, 1]], &dev)?;
        let p = Packing::from_mask(&mask)?.unwrap();
        let x = Var::from_tensor(&Tensor::new(&[[[1f32], [2.]], [[3.], [4.]]], &dev)?)?;
        // Through pack, unpack (duplicating row 0 into the padding) and pack again.
        let y = p.pack(&p.unpack(&p.pack(x.as_tensor())?)?)?;
        let w = Tensor::new(&[[10f32], [20.], [30.]], &dev)?;
        let grads = (y * w)?.sum_all()?.backward()?;
        let g = grads.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(g, [10., 0., 20., 30.]);
        Ok(())
    }
}
