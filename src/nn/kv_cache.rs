//! Key/value cache for incremental decoding. Buffers are preallocated and grown by
//! doubling, so appending a token writes in place instead of concatenating the whole
//! history every step.

use candle_core::{Result, Tensor};

#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Option<Tensor>, // (B, H, capacity, D)
    v: Option<Tensor>,
    len: usize,
    /// Capacity reserved on the first append; 0 means "exactly what is appended".
    reserve: usize,
}

impl KvCache {
    /// A cache that reserves room for `reserve` positions up front.
    pub fn with_capacity(reserve: usize) -> Self {
        Self {
            reserve,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn reset(&mut self) {
        self.k = None;
        self.v = None;
        self.len = 0;
    }

    /// The cached keys and values so far: (B, H, len, D) each.
    pub fn current(&self) -> Result<Option<(Tensor, Tensor)>> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) if self.len > 0 => {
                Ok(Some((k.narrow(2, 0, self.len)?, v.narrow(2, 0, self.len)?)))
            }
            _ => Ok(None),
        }
    }

    /// Appends k, v (B, H, T, D) and returns all keys and values (B, H, len + T, D).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        let needed = self.len + t;
        let capacity = self.k.as_ref().map(|k| k.dim(2)).transpose()?.unwrap_or(0);
        if needed > capacity {
            let new_cap = needed.max(2 * capacity).max(self.reserve);
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, h, new_cap, d), k.dtype(), k.device())?;
                if let Some(old) = old {
                    buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        let (kb, vb) = (self.k.as_ref().unwrap(), self.v.as_ref().unwrap());
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((kb.narrow(2, 0, needed)?, vb.narrow(2, 0, needed)?))
    }

    /// Keeps the rows `indices` of the batch (beam search reorders hypotheses).
    pub fn select_batch(&mut self, indices: &Tensor) -> Result<()> {
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            self.k = Some(k.index_select(indices, 0)?);
            self.v = Some(v.index_select(indices, 0)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn appends_grow_and_reset() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = KvCache::with_capacity(2);
        let step = |x: f32| Tensor::full(x, (1, 2, 1, 3), &dev);
        for i in 0..5 {
            let (k, v) = cache.append(&step(i as f32)?, &step(-(i as f32))?)?;
            assert_eq!(k.dims(), &[1, 2, i + 1, 3]);
            assert_eq!(v.i((0, 1, i, 2))?.to_scalar::<f32>()?, -(i as f32));
        }
        let (k, _) = cache.current()?.unwrap();
        let firsts: Vec<f32> = (0..5)
            .map(|t| k.i((0, 0, t, 0)).unwrap().to_scalar::<f32>().unwrap())
            .collect();
        assert_eq!(firsts, vec![0., 1., 2., 3., 4.]);
        cache.reset();
        assert!(cache.is_empty() && cache.current()?.is_none());
        Ok(())
    }
}
