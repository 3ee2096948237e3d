//! Branch-free f32 `exp` and `tanh` for the fused kernels, and [`simd_fn!`], which
//! compiles a row kernel for three instruction sets (baseline x86-64, AVX2+FMA,
//! AVX-512) and picks one at run time ([`level`]).
//!
//! Why: libm's `expf`/`tanhf` are calls the compiler cannot vectorise, and a training
//! step of the default preset spent about a sixth of its time in GELU and softmax
//! exponentials. These versions are plain arithmetic and bit casts, so a loop over a row
//! becomes 8-wide AVX2 or 16-wide AVX-512 code. No fused multiply-add is written out,
//! Rust never contracts `a * b + c` on its own, and every reduction fixes its order in
//! the source (eight-lane sums), so all three builds of a kernel give bit-identical
//! results: a run does not depend on which CPU it landed on, and one binary runs on any
//! x86-64.

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

/// The instruction sets [`simd_fn!`] kernels are compiled for, in ascending order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    Baseline = 0,
    Avx2 = 1,
    Avx512 = 2,
}

impl Simd {
    pub const ALL: [Simd; 3] = [Simd::Baseline, Simd::Avx2, Simd::Avx512];

    /// The name `WICK_SIMD` takes, and the summary prints.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Baseline => "baseline",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }

    /// Whether this CPU runs kernels built for `self`.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Simd::Baseline => true,
                Simd::Avx2 => has!("avx2") && has!("fma"),
                Simd::Avx512 => Simd::Avx2.supported() && has!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Simd::Baseline
        }
    }

    /// The best level this CPU runs.
    pub fn best() -> Simd {
        *Simd::ALL.iter().rev().find(|l| l.supported()).unwrap()
    }

    fn from_u8(v: u8) -> Simd {
        Simd::ALL[v as usize]
    }
}

/// `WICK_SIMD` (baseline, avx2, avx512) caps the level; a level above what the CPU has
/// falls back to the best it has. An unknown name is an error (checked by
/// [`crate::runtime::init`] at start).
pub fn requested() -> Result<Option<Simd>, String> {
    match std::env::var("WICK_SIMD") {
        Err(_) => Ok(None),
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Simd::ALL
            .into_iter()
            .find(|l| l.name() == v)
            .map(Some)
            .ok_or_else(|| format!("WICK_SIMD={v}: expected baseline, avx2 or avx512")),
    }
}

const UNSET: u8 = u8::MAX;
static LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(UNSET);

/// The level the row kernels run at: the CPU's best, capped by `WICK_SIMD`; read once.
#[inline]
pub fn level() -> Simd {
    use std::sync::atomic::Ordering::Relaxed;
    match LEVEL.load(Relaxed) {
        UNSET => {
            let best = Simd::best();
            let chosen = requested().ok().flatten().map_or(best, |r| r.min(best));
            LEVEL.store(chosen as u8, Relaxed);
            chosen
        }
        v => Simd::from_u8(v),
    }
}

/// Runs `f` with every kernel at `level` (a test of one level against another). The
/// level is process-wide, so callers are serialised; other tests running meanwhile see
/// a level that gives the same bits.
#[cfg(test)]
pub(crate) fn with_level<R>(l: Simd, f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::Ordering::Relaxed;
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let before = level();
    assert!(l.supported(), "{l:?} is not supported here");
    LEVEL.store(l as u8, Relaxed);
    let out = f();
    LEVEL.store(before as u8, Relaxed);
    out
}

/// Runs `f(level)` at every level this CPU supports, baseline first.
#[cfg(test)]
pub(crate) fn each_level(mut f: impl FnMut(Simd)) {
    for l in Simd::ALL.into_iter().filter(|l| l.supported()) {
        with_level(l, || f(l));
    }
}

/// Defines `fn $name(args)` whose body is compiled for each [`Simd`] level on x86-64
/// and runs at [`level`]. The body must be plain loops over slices (the point is
/// autovectorisation).
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                match $crate::nn::kernels::simd::level() {
                    // SAFETY: `level` returns only what the CPU supports.
                    $crate::nn::kernels::simd::Simd::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::nn::kernels::simd::Simd::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::nn::kernels::simd::Simd::Baseline => {}
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
    fn every_level_equals_scalar_bitwise() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let mut levels = vec![];
        each_level(|l| {
            assert_eq!(level(), l);
            let mut y = vec![0f32; x.len()];
            double_exp(&x, &mut y);
            for (a, b) in x.iter().zip(&y) {
                assert_eq!((2.0 * exp(*a)).to_bits(), b.to_bits(), "{l:?}");
            }
            levels.push(l);
        });
        assert_eq!(levels[0], Simd::Baseline);
        assert_eq!(*levels.last().unwrap(), Simd::best());
    }

    #[test]
    fn simd_names_parse_back() {
        for l in Simd::ALL {
            assert_eq!(Simd::ALL.iter().find(|m| m.name() == l.name()), Some(&l));
        }
        assert!(Simd::Baseline.supported());
    }
}
