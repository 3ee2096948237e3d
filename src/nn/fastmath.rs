//! Branch-free f32 `exp` and `tanh` for the fused kernels, and [`simd_fn!`], which
//! compiles a row kernel a second time for AVX2+FMA and picks it at run time.
//!
//! Why: libm's `expf`/`tanhf` are calls the compiler cannot vectorise, and a training
//! step of the default preset spent about a sixth of its time in GELU and softmax
//! exponentials. These versions are plain arithmetic and bit casts, so a loop over a row
//! becomes 8-wide AVX2 code. No fused multiply-add is written out, and Rust never
//! contracts `a * b + c` on its own, so the AVX2 and the baseline builds of a kernel give
//! bit-identical results: a run does not depend on which CPU it landed on.

// The polynomial coefficients are written as published (Cephes, Eigen), some with
// more digits than an f32 holds.
#![allow(clippy::excessive_precision)]

/// e^x to within 2 ulp (Cephes' `expf`: a range reduction by ln 2 and a degree-6
/// polynomial). Inputs below -87 give exactly 0 and inputs above 88 are clamped, so a
/// result is never subnormal and never +inf; NaN stays NaN.
///
/// Why exactly 0: a masked attention key has a score near f32::MIN, and a clamped
/// e^-87 ≈ 1.6e-38 made its probability ~1e-39, a subnormal. On Intel cores every FMA
/// that reads a subnormal takes a microcode assist, which made the products with the
/// probabilities (P·V and its backward) several times slower there than candle's
/// composed softmax, whose exp underflows to 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let c = x.clamp(-87.0, 88.0);
    let t = c * LOG2E + ROUND;
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32; // round(c · log2 e)
    let f = t - ROUND;
    let r = c - f * LN2_HI - f * LN2_LO; // c − n·ln 2, in [-ln2/2, ln2/2]
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n + 127) << 23) as u32); // 2^n
    let y = y * scale;
    if x.is_nan() {
        x
    } else if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// tanh(x) to within a few ulp: Eigen's rational approximation (degree 13 over 6) on
/// [-7.9, 7.9], where tanh rounds to ±1 in f32 beyond.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let x = if x.is_nan() {
        x
    } else {
        x.clamp(-7.905_311, 7.905_311)
    };
    let x2 = x * x;
    let p = -2.760_768_5e-16;
    let p = p * x2 + 2.000_187_9e-13;
    let p = p * x2 - 8.604_671_5e-11;
    let p = p * x2 + 5.122_297e-8;
    let p = p * x2 + 1.485_722_4e-5;
    let p = p * x2 + 6.372_619_3e-4;
    let p = p * x2 + 4.893_524_6e-3;
    let q = 1.198_258_4e-6;
    let q = q * x2 + 1.185_347_1e-4;
    let q = q * x2 + 2.268_434_6e-3;
    let q = q * x2 + 4.893_525e-3;
    x * p / q
}

/// Defines `fn $name(args)` whose body is compiled twice: for the baseline target and,
/// on x86-64, with AVX2+FMA enabled, chosen once per call by CPU feature detection.
/// The body must be plain loops over slices (the point is autovectorisation).
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32).abs_diff(b.to_bits() as i32)
    }

    #[test]
    fn exp_is_within_two_ulp_over_its_range() {
        let mut worst = 0;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-87.01), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(-87.0).is_normal());
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_close_everywhere_and_saturates() {
        let mut worst = 0f64;
        for i in -100_000..=100_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).tanh();
            worst = worst.max((tanh(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "worst abs error {worst}");
        assert!((tanh(1e-6) - 1e-6).abs() < 1e-12);
        assert_eq!(tanh(50.0), tanh(8.0));
        assert!((tanh(50.0) - 1.0).abs() < 3e-7 && (tanh(-50.0) + 1.0).abs() < 3e-7);
        assert!(tanh(f32::NAN).is_nan());
    }

    simd_fn! {
        fn double_exp(x: &[f32], y: &mut [f32]) {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = 2.0 * exp(v);
            }
        }
    }

    #[test]
    fn dispatched_kernel_equals_scalar_bitwise() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let mut y = vec![0f32; x.len()];
        double_exp(&x, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert_eq!((2.0 * exp(*a)).to_bits(), b.to_bits());
        }
    }
}
