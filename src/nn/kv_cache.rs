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

    /// Stacks `other`'s rows under this cache's, both aligned on their last position:
    /// the shorter side gets leading zero columns, which the caller's key-padding mask
    /// must hide (continuous batching: a sequence joins a running batch).
    pub fn join(&mut self, other: &KvCache) -> Result<()> {
        let Some((kb, vb)) = other.current()? else {
            return Ok(());
        };
        let Some((ka, va)) = self.current()? else {
            self.set(kb, vb)?;
            return Ok(());
        };
        let len = self.len.max(other.len);
        let k = Tensor::cat(&[&pad_front(&ka, len)?, &pad_front(&kb, len)?], 0)?;
        let v = Tensor::cat(&[&pad_front(&va, len)?, &pad_front(&vb, len)?], 0)?;
        self.set(k, v)
    }

    /// Drops the first `n` positions of every row (columns that have become padding in
    /// every row once the sequences that held them left).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let Some((k, v)) = self.current()? else {
            return Ok(());
        };
        let keep = self.len.saturating_sub(n);
        self.set(
            k.narrow(2, n.min(self.len), keep)?,
            v.narrow(2, n.min(self.len), keep)?,
        )
    }

    /// Replaces the contents with k, v (B, H, len, D), leaving room to append.
    fn set(&mut self, k: Tensor, v: Tensor) -> Result<()> {
        let (b, h, len, d) = k.dims4()?;
        let cap = len + JOIN_HEADROOM;
        let buf = |t: &Tensor| -> Result<Tensor> {
            let out = Tensor::zeros((b, h, cap, d), t.dtype(), t.device())?;
            out.slice_set(&t.contiguous()?, 2, 0)?;
            Ok(out)
        };
        self.k = Some(buf(&k)?);
        self.v = Some(buf(&v)?);
        self.len = len;
        Ok(())
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

/// Free positions left after a join, so the next steps append in place rather than
/// reallocating at once.
const JOIN_HEADROOM: usize = 64;

/// t (B, H, T, D) with `len - T` zero positions in front: (B, H, len, D).
fn pad_front(t: &Tensor, len: usize) -> Result<Tensor> {
    let (b, h, n, d) = t.dims4()?;
    if n >= len {
        return Ok(t.clone());
    }
    let zeros = Tensor::zeros((b, h, len - n, d), t.dtype(), t.device())?;
    Tensor::cat(&[&zeros, t], 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};

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

    #[test]
    fn join_right_aligns_rows_and_drop_front_trims() -> Result<()> {
        let dev = Device::Cpu;
        let filled = |b: usize, t: usize, base: f32| -> Result<KvCache> {
            let mut c = KvCache::default();
            for i in 0..t {
                let x = Tensor::full(base + i as f32, (b, 1, 1, 2), &dev)?;
                c.append(&x, &x.neg()?)?;
            }
            Ok(c)
        };
        let mut a = filled(1, 2, 10.0)?; // positions 10, 11
        a.join(&filled(2, 4, 20.0)?)?; // two rows of 20..=23
        assert_eq!(a.len(), 4);
        let (k, v) = a.current()?.unwrap();
        assert_eq!(k.dims(), &[3, 1, 4, 2]);
        let row = |t: &Tensor, r: usize| -> Vec<f32> {
            t.i((r, 0, .., 0)).unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(row(&k, 0), vec![0., 0., 10., 11.]);
        assert_eq!(row(&k, 2), vec![20., 21., 22., 23.]);
        assert_eq!(row(&v, 1), vec![-20., -21., -22., -23.]);
        // Appending after a join writes the next column of every row.
        let (k, _) = a.append(
            &Tensor::full(7f32, (3, 1, 1, 2), &dev)?,
            &Tensor::zeros((3, 1, 1, 2), DType::F32, &dev)?,
        )?;
        assert_eq!(row(&k, 0), vec![0., 0., 10., 11., 7.]);
        a.drop_front(2)?;
        let (k, _) = a.current()?.unwrap();
        assert_eq!(row(&k, 0), vec![10., 11., 7.]);
        assert_eq!(row(&k, 1), vec![22., 23., 7.]);
        // Joining into an empty cache takes the other's rows as they are.
        let mut empty = KvCache::default();
        empty.join(&filled(1, 3, 1.0)?)?;
        assert_eq!(row(&empty.current()?.unwrap().0, 0), vec![1., 2., 3.]);
        Ok(())
    }
}
