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

/// f32 → bf16 bits, rounding to nearest even (as `vcvtneps2bf16`); NaN stays NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[inline(always)]
fn from_bf16(h: u16) -> f32 {
    half::bf16::from_bits(h).to_f32()
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
    use std::cell::RefCell;

    use rayon::prelude::*;

    use super::super::matmul::View;
    use super::super::parallel::may_split;

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

    /// The blocking, GotoBLAS-style: a thread owns a block of at most BLOCK columns of
    /// B and packs it once; k runs in chunks of KC_TILES tiles (512 k), so a chunk of B's
    /// block (512 × 256 bf16, 256 KiB) stays in L2 while a 32-row strip of A's chunk
    /// (32 KiB) stays in L1 across the block's columns; rows run MC at a time, their f32
    /// sums (MC × BLOCK, 256 KiB) held between k chunks.
    const BLOCK: usize = 256;
    const KC_TILES: usize = 16;
    const MC: usize = 256;

    thread_local! {
        /// Packing buffers, reused: every element of the part a product uses is
        /// rewritten (padding included), so they never need clearing.
        static PACKED_A: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
        static PACKED_B: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
        /// The f32 sums of a block: each tile is stored before it is read.
        static SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    fn with_buffer<T: Copy + Default, R>(
        key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
        len: usize,
        f: impl FnOnce(&mut [T]) -> R,
    ) -> R {
        key.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => {
                if buf.len() < len {
                    buf.resize(len, T::default());
                }
                f(&mut buf[..len])
            }
            // Busy: this thread stole a product while waiting inside another one.
            Err(_) => f(&mut vec![T::default(); len]),
        })
    }

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
        let pair = 2 * kbs * TILE; // one 32-row (or 32-column) pair of strips
        let split = may_split();
        with_buffer(&PACKED_A, m.div_ceil(32) * pair, |a| {
            // SAFETY: request() checked avx512f/bw/bf16.
            let pack = |(s, out): (usize, &mut [u16])| unsafe { pack_a(out, lhs, s * 32, m, k) };
            if split && m * k >= 1 << 16 {
                a.par_chunks_mut(pair).enumerate().for_each(pack);
            } else {
                a.chunks_mut(pair).enumerate().for_each(pack);
            }
            let threads = if split {
                rayon::current_num_threads()
            } else {
                1
            };
            // As many column blocks as make every thread's share equal.
            let blocks = n.div_ceil(BLOCK).div_ceil(threads) * threads;
            let block = n.div_ceil(blocks).div_ceil(32) * 32;
            let out = SendPtr(dst.as_mut_ptr());
            let a = &*a;
            let run = |j0: usize| {
                let out = &out; // the whole SendPtr, not its raw field
                let cols = block.min(n - j0);
                let sums = (m.div_ceil(32) * 32).min(MC) * BLOCK;
                with_buffer(&PACKED_B, cols.div_ceil(32) * pair, |b| {
                    with_buffer(&SUMS, sums, |acc| {
                        // SAFETY: as above; every row written lies inside dst (sizes checked
                        // by the caller), and the columns j0..j0 + cols are this block's.
                        unsafe {
                            for (s, strip) in b.chunks_mut(pair).enumerate() {
                                pack_b(strip, rhs, k, j0 + s * 32, cols.saturating_sub(s * 32));
                            }
                            block_product(a, b, m, cols, kbs, acc, out.0.add(j0), dst_rs, add);
                        }
                    })
                })
            };
            let starts: Vec<usize> = (0..n).step_by(block).collect();
            if threads > 1 && starts.len() > 1 {
                starts.into_par_iter().for_each(run);
            } else {
                starts.into_iter().for_each(run);
            }
        })
    }

    /// C (m, cols) at `c` = [C +] A · B over packed A and B, in the blocking above.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_product(
        a: &[u16],
        b: &[u16],
        m: usize,
        cols: usize,
        kbs: usize,
        acc: &mut [f32],
        c: *mut f32,
        c_rs: usize,
        add: bool,
    ) {
        let strip = kbs * TILE;
        asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        for ic in (0..m).step_by(MC) {
            let rows = (m - ic).min(MC);
            for kc in (0..kbs).step_by(KC_TILES) {
                let depth = (kbs - kc).min(KC_TILES);
                for i0 in (0..rows).step_by(32) {
                    let a0 = a.as_ptr().add(((ic + i0) / 16) * strip + kc * TILE);
                    for j0 in (0..cols).step_by(32) {
                        let b0 = b.as_ptr().add((j0 / 16) * strip + kc * TILE);
                        let sums = acc.as_mut_ptr().add(i0 * BLOCK + j0);
                        tiles_2x2(a0, a0.add(strip), b0, b0.add(strip), depth, sums, kc > 0);
                    }
                }
            }
            for r in 0..rows {
                let d = std::slice::from_raw_parts_mut(c.add((ic + r) * c_rs), cols);
                let s = &acc[r * BLOCK..r * BLOCK + cols];
                if add {
                    d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
                } else {
                    d.copy_from_slice(s);
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// The 2×2 tiles of C at `sums` (32×32, rows BLOCK apart) [+]= A strips a0, a1 ·
    /// B strips b0, b1 over `depth` tiles along k; `load` adds to the sums there.
    #[inline(always)]
    unsafe fn tiles_2x2(
        a0: *const u16,
        a1: *const u16,
        b0: *const u16,
        b1: *const u16,
        depth: usize,
        sums: *mut f32,
        load: bool,
    ) {
        let row = BLOCK * 4; // bytes between rows of the sums
        let (c0, c1, c2, c3) = (
            sums,
            sums.add(16),
            sums.add(16 * BLOCK),
            sums.add(16 * BLOCK + 16),
        );
        if load {
            asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]",
                "tileloadd tmm3, [{c3} + {s}*1]",
                c0 = in(reg) c0,
                c1 = in(reg) c1,
                c2 = in(reg) c2,
                c3 = in(reg) c3,
                s = in(reg) row,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        asm!(
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
            n = inout(reg) depth => _,
            s = in(reg) 64usize,
            options(nostack, readonly),
        );
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c0,
            c1 = in(reg) c1,
            c2 = in(reg) c2,
            c3 = in(reg) c3,
            s = in(reg) row,
            options(nostack),
        );
    }

    /// Packs rows i0..i0 + 32 of A (m, k) into `out`, two strips of 16 rows, each kbs
    /// tiles of 16×32 bf16: element (i, p) at strip i/16, tile p/32, row i%16, column
    /// p%32. Rows past m and columns past k are written as zeros.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_a(out: &mut [u16], a: View<'_>, i0: usize, m: usize, k: usize) {
        let kbs = k.div_ceil(32);
        let o = out.as_mut_ptr();
        for half in 0..2 {
            let s0 = i0 + 16 * half; // first row of the strip
            let strip = o.add(half * kbs * TILE);
            for t in 0..kbs {
                let p0 = 32 * t;
                let tile = strip.add(t * TILE);
                if a.cs == 1 {
                    // Rows contiguous: 32 floats of a row become one tile row.
                    for r in 0..16 {
                        let v = if s0 + r < m {
                            cvt32(a.ptr.offset((s0 + r) as isize * a.rs).add(p0), k - p0)
                        } else {
                            _mm512_setzero_si512()
                        };
                        _mm512_storeu_si512(tile.add(r * 32) as *mut _, v);
                    }
                } else if a.rs == 1 {
                    // Columns contiguous (a transposed matrix): pair q holds, for each of
                    // the 16 rows, (A[i, p0 + 2q], A[i, p0 + 2q + 1]); the tile's rows are
                    // the transpose of the pairs.
                    let rows = m.saturating_sub(s0);
                    let mut pairs = [_mm512_setzero_si512(); 16];
                    for (q, v) in pairs.iter_mut().enumerate() {
                        let p = p0 + 2 * q;
                        let col = |p: usize| {
                            if p < k {
                                load16(a.ptr.offset(p as isize * a.cs).add(s0), rows)
                            } else {
                                _mm512_setzero_ps()
                            }
                        };
                        *v = interleave(col(p), col(p + 1));
                    }
                    store_transposed(tile, pairs);
                } else {
                    for r in 0..16 {
                        for c in 0..32 {
                            let (i, p) = (s0 + r, p0 + c);
                            let x = if i < m && p < k { a.get(i, p) } else { 0.0 };
                            *tile.add(r * 32 + c) = super::to_bf16(x);
                        }
                    }
                }
            }
        }
    }

    /// Packs columns j0..j0 + cols (at most 32 of them; the rest of the pair of strips is
    /// zeros) of B (k, n) into two strips of 16 columns, each kbs tiles whose row r holds
    /// (B[2r, j], B[2r + 1, j]) for the strip's 16 columns j: the VNNI layout.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_b(out: &mut [u16], b: View<'_>, k: usize, j0: usize, cols: usize) {
        let kbs = k.div_ceil(32);
        let o = out.as_mut_ptr();
        for half in 0..2 {
            let s0 = 16 * half; // first column of the strip, from j0
            let w = cols.saturating_sub(s0).min(16);
            let strip = o.add(half * kbs * TILE);
            for t in 0..kbs {
                let p0 = 32 * t;
                let tile = strip.add(t * TILE);
                if b.cs == 1 {
                    // Rows contiguous: rows 2r and 2r + 1 interleave into tile row r.
                    for r in 0..16 {
                        let row = |p: usize| {
                            if p < k && w > 0 {
                                load16(b.ptr.offset(p as isize * b.rs).add(j0 + s0), w)
                            } else {
                                _mm512_setzero_ps()
                            }
                        };
                        let v = interleave(row(p0 + 2 * r), row(p0 + 2 * r + 1));
                        _mm512_storeu_si512(tile.add(r * 32) as *mut _, v);
                    }
                } else if b.rs == 1 {
                    // Columns contiguous (a weight read as its transpose): the 32 k of a
                    // column are its 16 pairs in order; the tile's rows are their transpose.
                    let mut pairs = [_mm512_setzero_si512(); 16];
                    for (c, v) in pairs.iter_mut().enumerate().take(w) {
                        let col = b.ptr.offset((j0 + s0 + c) as isize * b.cs).add(p0);
                        *v = cvt32(col, k - p0);
                    }
                    store_transposed(tile, pairs);
                } else {
                    for r in 0..16 {
                        for c in 0..16 {
                            for h in 0..2 {
                                let (p, j) = (p0 + 2 * r + h, s0 + c);
                                let x = if p < k && j < cols {
                                    b.get(p, j0 + j)
                                } else {
                                    0.0
                                };
                                *tile.add(r * 32 + 2 * c + h) = super::to_bf16(x);
                            }
                        }
                    }
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

    /// (x[i], y[i]) as bf16 pairs: lane i (32 bits) holds x[i] low, y[i] high.
    #[inline(always)]
    unsafe fn interleave(x: __m512, y: __m512) -> __m512i {
        let order = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(y, x));
        _mm512_permutexvar_epi16(order, v)
    }

    /// Stores the 16×16 transpose (of 32-bit lanes) of `v` as 16 rows of 64 bytes.
    #[inline(always)]
    unsafe fn store_transposed(out: *mut u16, v: [__m512i; 16]) {
        // Pairs of rows, then quads, interleaved within each 128-bit lane ...
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (a, b) = (4 * g, 4 * g + 2);
            u[4 * g] = _mm512_unpacklo_epi64(t[a], t[b]);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t[a], t[b]);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t[a + 1], t[b + 1]);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t[a + 1], t[b + 1]);
        }
        // ... then the 128-bit lanes gathered across registers.
        let mut w = [_mm512_setzero_si512(); 16];
        for g in 0..2 {
            for c in 0..4 {
                let (x, y) = (u[8 * g + c], u[8 * g + 4 + c]);
                w[8 * g + c] = _mm512_shuffle_i32x4(x, y, 0x88);
                w[8 * g + 4 + c] = _mm512_shuffle_i32x4(x, y, 0xdd);
            }
        }
        for c in 0..8 {
            let (x, y) = (w[c], w[8 + c]);
            _mm512_storeu_si512(out.add(c * 32) as *mut _, _mm512_shuffle_i32x4(x, y, 0x88));
            _mm512_storeu_si512(
                out.add((c + 8) * 32) as *mut _,
                _mm512_shuffle_i32x4(x, y, 0xdd),
            );
        }
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
        // Past one row block (256) and one k chunk (512), several column blocks, and a
        // small product after a large one (the reused packing buffers' padding).
        let sizes = [
            (16, 16, 16),
            (37, 50, 70),
            (270, 40, 530),
            (64, 300, 33),
            (5 + 32, 17, 129),
        ];
        for &(m, n, k) in &sizes {
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
