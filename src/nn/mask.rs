//! Attention masks as one additive bias: 0 where a query may attend to a key, the
//! dtype's most negative finite value where it may not. Masks are combined as booleans
//! before becoming a bias, so two masked reasons never add up to -inf (and a row with
//! every key masked, a left-padding query, yields a uniform row instead of NaN).

use candle_core::{DType, Device, Result, Tensor};

/// The most negative finite value of `dtype`, used for masked scores.
pub fn min_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => half::bf16::MIN.to_f64(),
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// What a query may attend to. A plain causal mask stays symbolic so the fused softmax
/// can apply it without materialising a (Tq, Tk) bias.
#[derive(Debug, Clone)]
pub enum Mask {
    /// Every key.
    None,
    /// Keys up to the query's own position (the queries are the last Tq of Tk).
    Causal,
    /// An additive bias (B or 1, 1, Tq, Tk) from [`attention_bias`].
    Bias(Tensor),
}

impl Mask {
    /// The mask for `tq` queries over `tk` keys, causal or not, with optional key padding
    /// (B, Tk) of 1 for tokens and 0 for padding.
    pub fn new(
        tq: usize,
        tk: usize,
        causal: bool,
        key_padding: Option<&Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if causal && key_padding.is_none() {
            return Ok(Mask::Causal);
        }
        Ok(
            match attention_bias(tq, tk, causal, key_padding, dtype, device)? {
                Some(b) => Mask::Bias(b),
                None => Mask::None,
            },
        )
    }
}

/// Builds the bias (B or 1, 1, Tq, Tk) added to attention scores, or `None` when nothing
/// is masked.
///
/// - `causal`: query i (absolute position Tk - Tq + i, so a KV cache of Tk - Tq past keys
///   is accounted for) sees keys 0..=that position.
/// - `key_padding`: (B, Tk) with 1 for real tokens and 0 for padding; padding keys get no
///   weight.
pub fn attention_bias(
    tq: usize,
    tk: usize,
    causal: bool,
    key_padding: Option<&Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let causal_allowed = if causal {
        let past = tk.saturating_sub(tq);
        let allowed: Vec<u8> = (0..tq)
            .flat_map(|i| (0..tk).map(move |j| u8::from(j <= past + i)))
            .collect();
        Some(Tensor::from_vec(allowed, (1, 1, tq, tk), device)?)
    } else {
        None
    };
    let padding_allowed = match key_padding {
        Some(mask) => {
            let b = mask.dim(0)?;
            let allowed = mask.ne(0u32)?.reshape((b, 1, 1, tk))?; // (B, 1, 1, Tk) u8
            Some(allowed.broadcast_as((b, 1, tq, tk))?)
        }
        None => None,
    };
    let allowed = match (causal_allowed, padding_allowed) {
        (None, None) => return Ok(None),
        (Some(c), None) => c,
        (None, Some(p)) => p,
        (Some(c), Some(p)) => p.broadcast_mul(&c)?,
    };
    let shape = allowed.shape().clone();
    let zeros = Tensor::zeros(&shape, dtype, device)?;
    let masked = Tensor::full(min_value(dtype), &shape, device)?.to_dtype(dtype)?;
    Ok(Some(allowed.where_cond(&zeros, &masked)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(bias: &Tensor) -> Vec<Vec<Vec<bool>>> {
        let b = bias.squeeze(1).unwrap().to_vec3::<f32>().unwrap();
        b.into_iter()
            .map(|m| {
                m.into_iter()
                    .map(|r| r.into_iter().map(|v| v == 0.0).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn causal_mask_hides_the_future() -> Result<()> {
        let bias = attention_bias(3, 3, true, None, DType::F32, &Device::Cpu)?.unwrap();
        let a = allowed(&bias);
        assert_eq!(
            a[0],
            vec![
                vec![true, false, false],
                vec![true, true, false],
                vec![true, true, true]
            ]
        );
        let masked = bias.flatten_all()?.to_vec1::<f32>()?[1];
        assert_eq!(masked, f32::MIN);
        Ok(())
    }

    #[test]
    fn causal_mask_with_a_cache_offsets_queries() -> Result<()> {
        // Two new queries after three cached keys.
        let bias = attention_bias(2, 5, true, None, DType::F32, &Device::Cpu)?.unwrap();
        assert_eq!(
            allowed(&bias)[0],
            vec![vec![true, true, true, true, false], vec![true; 5]]
        );
        Ok(())
    }

    #[test]
    fn padding_and_causal_combine() -> Result<()> {
        let dev = Device::Cpu;
        let pad = Tensor::new(&[[0u32, 1, 1], [1, 1, 1]], &dev)?; // row 0 left-padded
        let bias = attention_bias(3, 3, true, Some(&pad), DType::F32, &dev)?.unwrap();
        assert_eq!(bias.dims(), &[2, 1, 3, 3]);
        let a = allowed(&bias);
        assert_eq!(
            a[0],
            vec![
                vec![false, false, false],
                vec![false, true, false],
                vec![false, true, true]
            ]
        );
        assert_eq!(a[1][1], vec![true, true, false]);
        // Combining never produces -inf.
        assert!(bias
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite()));
        assert!(attention_bias(2, 2, false, None, DType::F32, &dev)?.is_none());
        Ok(())
    }
}
