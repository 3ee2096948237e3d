//! Matrix products with bf16 operands and f32 accumulation on Intel AMX, for
//! `--matmul-precision bf16`: what `torch.set_float32_matmul_precision("medium")` and
//! CPU autocast do through oneDNN. Tensors, master weights, gradients and every other
//! op stay f32; only the multiply-adds of a GEMM read their operands rounded to bf16
//! (8 significant bits), and the sums stay f32.
//!
//! Why: one AMX `tdpbf16ps` does 16×16×32 multiply-adds. A loop of them runs at about
//! 600 GFLOP/s on one Sapphire Rapids core, against ~130 for gemm's AVX-512 f32
//! kernels, so the large products of a fine-tune can run several times faster.
//!
//! Layout: A is packed into strips of 16 rows, each a run of 16×32 bf16 tiles along k;
//! B into strips of 16 columns, each a run of tiles whose row r holds, for each column,
//! the pair (k = 2r, 2r + 1): the "VNNI" layout `tdpbf16ps` reads. The kernel keeps a
//! 32×32 block of C in four tile registers over the whole k loop. Rust's AMX intrinsics
//! are not stable, so the five tile instructions are written in `asm!`; the packing uses
//! the (stable) AVX-512 BF16 conversions.
//!
//! [`gemm_rows_slow`] is the plain reference: operands rounded the same way, f32 sums in
//! order. The tests hold the AMX kernel to it.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::OnceLock;

use super::matmul::View;

/// The precision of matrix products on the CPU: `f32` (the default), or `bf16`
/// operands with f32 sums (AMX).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    #[default]
    F32,
    Bf16,
}

impl MatmulPrecision {
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::F32 => "f32",
            MatmulPrecision::Bf16 => "bf16",
        }
    }
}

static BF16: AtomicBool = AtomicBool::new(false);

/// Sets the process-wide precision of the fused kernels' matrix products. bf16 needs
/// AMX-BF16 (`amx_bf16` in lscpu's flags) and a kernel that grants the tile state.
pub fn set_matmul_precision(p: MatmulPrecision) -> Result<(), String> {
    if p == MatmulPrecision::Bf16 && !amx_available() {
        return Err(
            "bf16 matrix products need Intel AMX (amx_bf16 and amx_tile in lscpu's \
             flags, Sapphire Rapids or newer, Linux 5.16+); this CPU or kernel lacks it: \
             use f32"
                .into(),
        );
    }
    BF16.store(p == MatmulPrecision::Bf16, Relaxed);
    Ok(())
}

pub fn matmul_precision() -> MatmulPrecision {
    if BF16.load(Relaxed) {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

/// Whether a product of these sizes goes through the bf16 kernel: bf16 is on and the
/// product fills at least one tile (smaller ones, like a decoding step's, stay f32).
pub(super) fn serves(m: usize, n: usize, k: usize) -> bool {
    BF16.load(Relaxed) && m >= 16 && n >= 16 && k >= 16
}

/// Whether this process may use AMX-BF16 tiles: the CPU has AMX-TILE, AMX-BF16 and the
/// AVX-512 BF16 conversions, and Linux granted the tile data state (asked once).
pub fn amx_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            amx::request()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// f32 → bf16, rounding to nearest even (as `vcvtneps2bf16`); NaN stays a quiet NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[inline(always)]
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// dst (m, n) rows `dst_rs` apart = [dst +] lhs (m, k) · rhs (k, n), operands rounded to
/// bf16, sums in f32: the AMX kernel where it runs, else [`gemm_rows_slow`].
#[allow(clippy::too_many_arguments)] // the BLAS shape: dst, sizes, operands
pub(super) fn gemm_rows(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    add: bool,
) {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if amx_available() {
        return amx::gemm_rows(dst, dst_rs, m, n, k, lhs, rhs, add);
    }
    gemm_rows_slow(dst, dst_rs, m, n, k, lhs, rhs, add)
}

/// The reference for [`gemm_rows`]: each operand rounded to bf16, each dot product
/// summed in f32 in k order.
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows_slow(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    add: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for p in 0..k {
                s += from_bf16(to_bf16(lhs.get(i, p))) * from_bf16(to_bf16(rhs.get(p, j)));
            }
            let d = &mut dst[i * dst_rs + j];
            *d = if add { *d + s } else { s };
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::super::matmul::View;
    use super::to_bf16;

    /// Linux's arch_prctl request for the AMX tile data state (XFEATURE_XTILEDATA).
    const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_ulong = 18;

    pub(super) fn request() -> bool {
        // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let leaf7 = __cpuid_count(7, 0);
        let tiles = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
        let avx = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16");
        // SAFETY: a plain syscall with integer arguments; it fails cleanly on kernels
        // without AMX support.
        tiles
            && avx
            && unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            } == 0
    }

    /// Every tile 16 rows of 64 bytes: tmm0–3 hold C (16×16 f32), tmm4–5 A, tmm6–7 B.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // bytes per row (u16 colsb, little-endian)
            c[48 + t] = 16; // rows
            t += 1;
        }
        TileConfig(c)
    };

    /// A tile: 16 rows × 64 bytes.
    const TILE: usize = 512; // u16 elements

    /// Columns of B packed and multiplied as one block, sized so the block
    /// (k × 256 bf16) stays in a core's L2 while every strip of A passes over it.
    const BLOCK: usize = 256;

    struct SendPtr(*mut f32);
    // SAFETY: the blocks write disjoint column ranges of dst.
    unsafe impl Send for SendPtr {}
    unsafe impl Sync for SendPtr {}

    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_rows(
        dst: &mut [f32],
        dst_rs: usize,
        m: usize,
        n: usize,
        k: usize,
        lhs: View<'_>,
        rhs: View<'_>,
        add: bool,
    ) {
        let kbs = k.div_ceil(32);
        let mut a = vec![0u16; m.div_ceil(32) * 2 * kbs * TILE];
        // SAFETY: request() checked avx512f/bw/bf16.
        unsafe { pack_a(&mut a, lhs, m, k) };
        let threads = if super::super::parallel::may_split() {
            rayon::current_num_threads()
        } else {
            1
        };
        let block = (n.div_ceil(threads).div_ceil(32) * 32).min(BLOCK);
        let out = SendPtr(dst.as_mut_ptr());
        let run = |j0: usize| {
            let out = &out; // the whole SendPtr, not its raw field
            let cols = block.min(n - j0);
            let mut b = vec![0u16; cols.div_ceil(32) * 2 * kbs * TILE];
            // SAFETY: as above; every tile written lies inside dst (sizes checked by the caller).
            unsafe {
                pack_b(&mut b, rhs, k, j0, cols);
                block_product(&a, &b, m, cols, kbs, out.0.add(j0), dst_rs, add);
            }
        };
        let starts: Vec<usize> = (0..n).step_by(block).collect();
        if threads > 1 && starts.len() > 1 {
            starts.into_par_iter().for_each(run);
        } else {
            starts.into_iter().for_each(run);
        }
    }

    /// C (m, cols) at `c` = [C +] A · B over packed A and B, 32×32 blocks at a time.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_product(
        a: &[u16],
        b: &[u16],
        m: usize,
        cols: usize,
        kbs: usize,
        c: *mut f32,
        c_rs: usize,
        add: bool,
    ) {
        let mut acc = [0f32; 32 * 32];
        let strip = kbs * TILE;
        asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        for i0 in (0..m).step_by(32) {
            let a0 = a.as_ptr().add((i0 / 16) * strip);
            for j0 in (0..cols).step_by(32) {
                let b0 = b.as_ptr().add((j0 / 16) * strip);
                tiles_2x2(a0, a0.add(strip), b0, b0.add(strip), kbs, acc.as_mut_ptr());
                let rows = (m - i0).min(32);
                let w = (cols - j0).min(32);
                for r in 0..rows {
                    let d = std::slice::from_raw_parts_mut(c.add((i0 + r) * c_rs + j0), w);
                    let s = &acc[r * 32..r * 32 + w];
                    if add {
                        d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
                    } else {
                        d.copy_from_slice(s);
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// acc (32×32, rows 32 apart) = the 2×2 tiles of C from A strips a0, a1 and B
    /// strips b0, b1, over `kbs` tiles along k.
    #[inline(always)]
    unsafe fn tiles_2x2(
        a0: *const u16,
        a1: *const u16,
        b0: *const u16,
        b1: *const u16,
        kbs: usize,
        acc: *mut f32,
    ) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) kbs => _,
            s = in(reg) 64usize,
            options(nostack, readonly),
        );
        let row = 128usize; // bytes between rows of acc
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) acc,
            c1 = in(reg) acc.add(16),
            c2 = in(reg) acc.add(16 * 32),
            c3 = in(reg) acc.add(16 * 32 + 16),
            s = in(reg) row,
            options(nostack),
        );
    }

    /// Packs A (m, k) into strips of 16 rows, each kbs tiles of 16×32 bf16: element
    /// (i, p) at strip i/16, tile p/32, row i%16, column p%32. Padding stays zero.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_a(out: &mut [u16], a: View<'_>, m: usize, k: usize) {
        let kbs = k.div_ceil(32);
        let at = |i: usize, p: usize| ((i / 16) * kbs + p / 32) * TILE + (i % 16) * 32 + p % 32;
        if a.cs == 1 {
            // Rows contiguous: 32 floats of a row become one tile row.
            for i in 0..m {
                let row = a.ptr.offset(i as isize * a.rs);
                for p in (0..k).step_by(32) {
                    let v = cvt32(row.add(p), k - p);
                    _mm512_storeu_si512(out.as_mut_ptr().add(at(i, p)) as *mut _, v);
                }
            }
        } else if a.rs == 1 {
            // Columns contiguous (a transposed matrix): 16 rows of one column at a time.
            for p in 0..k {
                let col = a.ptr.offset(p as isize * a.cs);
                for i in (0..m).step_by(16) {
                    let h = cvt16(col.add(i), m - i);
                    for (r, &v) in h.iter().enumerate().take(m - i) {
                        out[at(i + r, p)] = v;
                    }
                }
            }
        } else {
            for i in 0..m {
                for p in 0..k {
                    out[at(i, p)] = to_bf16(a.get(i, p));
                }
            }
        }
    }

    /// Packs columns j0..j0+cols of B (k, n) into strips of 16 columns, each kbs tiles
    /// whose row r holds (B[2r, j], B[2r+1, j]) for the strip's 16 columns j.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_b(out: &mut [u16], b: View<'_>, k: usize, j0: usize, cols: usize) {
        let kbs = k.div_ceil(32);
        let at = |p: usize, j: usize| {
            ((j / 16) * kbs + p / 32) * TILE + ((p % 32) / 2) * 32 + (j % 16) * 2 + p % 2
        };
        if b.rs == 1 {
            // Columns contiguous (a weight read as its transpose): the 32 k of a column
            // are already its 16 pairs, in order.
            for j in 0..cols {
                let col = b.ptr.offset((j0 + j) as isize * b.cs);
                for p in (0..k).step_by(32) {
                    let mut pairs = [0u32; 16];
                    let v = cvt32(col.add(p), k - p);
                    _mm512_storeu_si512(pairs.as_mut_ptr() as *mut _, v);
                    let base = at(p, j);
                    for (r, &pair) in pairs.iter().enumerate() {
                        let o = base + r * 32;
                        out[o] = pair as u16;
                        out[o + 1] = (pair >> 16) as u16;
                    }
                }
            }
        } else if b.cs == 1 {
            // Rows contiguous: rows 2r and 2r+1 interleave into tile row r.
            let interleave = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            );
            for p in (0..k).step_by(2) {
                let r0 = b.ptr.offset(p as isize * b.rs).add(j0);
                let r1 = b.ptr.offset((p + 1) as isize * b.rs).add(j0);
                for j in (0..cols).step_by(16) {
                    let w = cols - j;
                    let lo = load16(r0.add(j), w);
                    let hi = if p + 1 < k {
                        load16(r1.add(j), w)
                    } else {
                        _mm512_setzero_ps()
                    };
                    let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    let v = _mm512_permutexvar_epi16(interleave, v);
                    let n = w.min(16) as u32;
                    let mask = if n == 16 {
                        u32::MAX
                    } else {
                        (1u32 << (2 * n)) - 1
                    };
                    _mm512_mask_storeu_epi16(out.as_mut_ptr().add(at(p, j)) as *mut _, mask, v);
                }
            }
        } else {
            for p in 0..k {
                for j in 0..cols {
                    out[at(p, j)] = to_bf16(b.get(p, j0 + j));
                }
            }
        }
    }

    /// Up to 16 floats from p (zeros past `n`).
    #[inline(always)]
    unsafe fn load16(p: *const f32, n: usize) -> __m512 {
        if n >= 16 {
            _mm512_loadu_ps(p)
        } else {
            _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p)
        }
    }

    /// Up to 32 floats from p (zeros past `n`) as 32 bf16, in order.
    #[inline(always)]
    unsafe fn cvt32(p: *const f32, n: usize) -> __m512i {
        let lo = load16(p, n);
        let hi = if n > 16 {
            load16(p.add(16), n - 16)
        } else {
            _mm512_setzero_ps()
        };
        std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo))
    }

    /// Up to 16 floats from p as bf16.
    #[inline(always)]
    unsafe fn cvt16(p: *const f32, n: usize) -> [u16; 16] {
        std::mem::transmute(_mm512_cvtneps_pbh(load16(p, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                ((h >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// The AMX kernel against the reference on every operand layout the fused ops use
    /// (rows contiguous, a transpose, neither), sizes off the tile grid, with and
    /// without accumulating, serial and split over threads.
    #[test]
    fn amx_matches_the_reference_on_every_layout() {
        if !amx_available() {
            eprintln!("no AMX on this CPU: only the reference runs here");
            return;
        }
        for &(m, n, k) in &[(16, 16, 16), (37, 50, 70), (64, 300, 33), (5 + 32, 17, 129)] {
            let a = data(m * k * 2, 1);
            let b = data(k * n * 2, 2);
            let lhs_layouts = [
                View::rows(&a, k),
                View::transposed(&a, m),
                View::strided(&a, 2 * k, 2),
            ];
            let rhs_layouts = [
                View::rows(&b, n),
                View::transposed(&b, k),
                View::strided(&b, 1, 2 * k),
            ];
            for (li, lhs) in lhs_layouts.iter().enumerate() {
                for (ri, rhs) in rhs_layouts.iter().enumerate() {
                    for add in [false, true] {
                        let dst_rs = n + 3;
                        let start = data(m * dst_rs, 3);
                        let mut want = start.clone();
                        gemm_rows_slow(&mut want, dst_rs, m, n, k, *lhs, *rhs, add);
                        for split in [false, true] {
                            let mut got = start.clone();
                            let mut run =
                                || amx::gemm_rows(&mut got, dst_rs, m, n, k, *lhs, *rhs, add);
                            if split {
                                run()
                            } else {
                                super::super::parallel::serial(run)
                            }
                            for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                                let (i, j) = (idx / dst_rs, idx % dst_rs);
                                let tol = if j < n { 1e-5 * k as f32 } else { 0.0 };
                                assert!(
                                    (g - w).abs() <= tol,
                                    "({m},{n},{k}) lhs {li} rhs {ri} add {add} split {split}: \
                                     [{i},{j}] {g} vs {w}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_reference_rounds_operands_to_bf16() {
        // 1 + 2^-9 rounds to 1 in bf16, so the product is exactly 1 · 3.
        let a = [1.0 + 1.0 / 512.0];
        let b = [3.0];
        let mut c = [0f32];
        gemm_rows_slow(
            &mut c,
            1,
            1,
            1,
            1,
            View::rows(&a, 1),
            View::rows(&b, 1),
            false,
        );
        assert_eq!(c[0], 3.0);
    }
}
