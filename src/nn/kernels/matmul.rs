//! Matrix products on slices through the `gemm` crate (the kernels candle's CPU
//! matmul uses), for fused ops that multiply strided views in place: the heads inside
//! a q|k|v projection, a weight read as its own transpose; and one row times a matrix
//! for decoding.

use rayon::prelude::*;

use super::rows::sum8_zip;
use super::simd::simd_fn;

/// A row-major (rows, cols) matrix or the transpose of one, as gemm's strides, over a
/// slice it borrows for `'a` (so a view cannot outlive the data it reads).
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub(super) ptr: *const f32,
    len: usize,
    pub(super) rs: isize,
    pub(super) cs: isize,
    data: std::marker::PhantomData<&'a [f32]>,
}

// SAFETY: a view only reads the `&'a [f32]` it borrows, which may be shared across threads.
unsafe impl Send for View<'_> {}
unsafe impl Sync for View<'_> {}

impl<'a> View<'a> {
    /// The same matrix from element (row, col) on: a block of it.
    pub fn at(&self, row: usize, col: usize) -> View<'a> {
        let offset = row * self.rs as usize + col * self.cs as usize;
        assert!(offset <= self.len, "view offset outside its slice");
        Self {
            // SAFETY: offset ≤ len keeps the pointer inside (or one past) the slice.
            ptr: unsafe { self.ptr.add(offset) },
            len: self.len - offset,
            ..*self
        }
    }

    /// Element (row, col), bounds-checked.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        let offset = row * self.rs as usize + col * self.cs as usize;
        assert!(offset < self.len, "view element outside its slice");
        // SAFETY: offset < len.
        unsafe { *self.ptr.add(offset) }
    }

    /// Whether a (rows, cols) matrix under these strides stays inside the slice.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * (self.rs as usize) + (cols - 1) * (self.cs as usize) < self.len
    }

    /// Any strided matrix starting at `data[0]`.
    pub fn strided(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            len: data.len(),
            rs: rs as isize,
            cs: cs as isize,
            data: std::marker::PhantomData,
        }
    }

    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self::strided(data, cols, 1)
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self::strided(data, 1, cols)
    }
}

/// dst (m, n), row-major, = [dst +] lhs (m, k) · rhs (k, n).
pub fn gemm_into(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    add: bool,
) {
    gemm_rows(dst, n, m, n, k, lhs, rhs, add)
}

/// As [`gemm_into`], into a dst whose rows are `dst_rs` apart (a block of a wider matrix).
#[allow(clippy::too_many_arguments)] // the BLAS shape: dst, sizes, operands
pub fn gemm_rows(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    add: bool,
) {
    assert!(n <= dst_rs && (m == 0 || (m - 1) * dst_rs + n <= dst.len()));
    assert!(
        lhs.fits(m, k) && rhs.fits(k, n),
        "gemm operand outside its slice"
    );
    if super::bf16::serves(m, n, k) {
        return super::bf16::gemm_rows(dst, dst_rs, m, n, k, lhs, rhs, add);
    }
    let parallelism = if m * n * k >= 1 << 15 && super::parallel::may_split() {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: dst holds the (m, n) block under its row stride, and every element of lhs (m, k) and rhs (k, n)
    // under their strides lies inside the slice each was made from (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            add,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            if add { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

// One row times a matrix: decoding one token reads every weight once per token, so
// its speed is how fast the weights stream from memory. gemm's general kernels reach
// ~16 GB/s on that here, these ~20 (the machine's read bandwidth is ~21).

simd_fn! {
    /// acc (n) += Σ_p x[p] · w[p, ..] over the rows of w (n wide), eight rows at a
    /// time (one read and write of acc per eight weight rows), then four.
    fn rows_axpy(x: &[f32], w: &[f32], acc: &mut [f32]) {
        let n = acc.len();
        let mut rows = w.chunks_exact(n).zip(x);
        while rows.len() >= 8 {
            let r: [(&[f32], &f32); 8] = std::array::from_fn(|_| rows.next().unwrap());
            // j walks eight weight rows and acc in lockstep: one index, nine slices.
            #[allow(clippy::needless_range_loop)]
            for j in 0..n {
                acc[j] += (r[0].1 * r[0].0[j] + r[1].1 * r[1].0[j] + r[2].1 * r[2].0[j] + r[3].1 * r[3].0[j])
                    + (r[4].1 * r[4].0[j] + r[5].1 * r[5].0[j] + r[6].1 * r[6].0[j] + r[7].1 * r[7].0[j]);
            }
        }
        while rows.len() >= 4 {
            let (r0, &x0) = rows.next().unwrap();
            let (r1, &x1) = rows.next().unwrap();
            let (r2, &x2) = rows.next().unwrap();
            let (r3, &x3) = rows.next().unwrap();
            for j in 0..n {
                acc[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j];
            }
        }
        for (r, &xp) in rows {
            acc.iter_mut().zip(r).for_each(|(a, &b)| *a += xp * b);
        }
    }
}

simd_fn! {
    /// y[j] = x · w[j, ..] for each row of w (x.len() wide), eight-lane sums.
    fn rows_dot(x: &[f32], w: &[f32], y: &mut [f32]) {
        for (v, row) in y.iter_mut().zip(w.chunks_exact(x.len())) {
            *v = sum8_zip(row, x, |a, b| a * b);
        }
    }
}

/// y (out) += x (in) · W for W stored (in, out): the rows of W split into one
/// contiguous block per thread, each streamed into its own partial sum.
pub fn gemv_in_out(x: &[f32], w: &[f32], y: &mut [f32]) {
    let (inp, out) = (x.len(), y.len());
    assert_eq!(w.len(), inp * out, "gemv: weight is not (in, out)");
    if inp == 0 || out == 0 {
        return;
    }
    over_weight_rows(inp, y, inp * out >= 1 << 16, |rows, acc| {
        rows_axpy(&x[rows.clone()], &w[rows.start * out..rows.end * out], acc)
    });
}

/// Splits W's `inp` rows into one contiguous block per thread (when `big` and kernels
/// may split), runs `f(rows, partial)` on each with a zeroed partial sum the size of
/// y, and adds the partials into y.
fn over_weight_rows(
    inp: usize,
    y: &mut [f32],
    big: bool,
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    let parts = if super::parallel::may_split() && big {
        rayon::current_num_threads().min(inp)
    } else {
        1
    };
    let per = inp.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; y.len()];
            f((t * per).min(inp)..((t + 1) * per).min(inp), &mut acc);
            acc
        })
        .collect();
    for part in &partials {
        y.iter_mut().zip(part).for_each(|(a, &b)| *a += b);
    }
}

/// y (out) += W · x for W stored (out, in): rows of W split across threads.
pub fn gemv_out_in(x: &[f32], w: &[f32], y: &mut [f32]) {
    let inp = x.len();
    assert_eq!(w.len(), inp * y.len(), "gemv: weight is not (out, in)");
    if inp == 0 || y.is_empty() {
        return;
    }
    let chunk = if super::parallel::may_split() && w.len() >= 1 << 16 {
        256
    } else {
        y.len()
    };
    y.par_chunks_mut(chunk).enumerate().for_each(|(c, yc)| {
        let mut dots = vec![0f32; yc.len()];
        rows_dot(x, &w[c * chunk * inp..][..yc.len() * inp], &mut dots);
        yc.iter_mut().zip(&dots).for_each(|(a, &d)| *a += d);
    });
}

/// (in, out) of y (m, out) = x (m, in) · W, checked; None when there is nothing to do.
fn rows_shapes(x: &[f32], w: &[f32], y: &[f32], m: usize) -> Option<(usize, usize)> {
    let (inp, out) = (x.len() / m.max(1), y.len() / m.max(1));
    assert!(
        x.len() == m * inp && y.len() == m * out && w.len() == inp * out,
        "gemv_rows: shapes"
    );
    (m > 0 && inp > 0 && out > 0).then_some((inp, out))
}

/// Rows up to which a product runs as [`gemv_rows_in_out`] / [`gemv_rows_out_in`]
/// rather than through gemm: decode steps of a continuous batch (one token for each of
/// a few sequences) and short prompts. gemm packs the whole weight for every call and
/// splits small products over one thread; at 2–16 rows that made a step of 2 rows cost
/// as much as 2 steps of one.
pub const SMALL_ROWS: usize = 16;

/// Columns of y a register tile holds per row of x (two AVX-512 vectors).
const TILE: usize = 32;

/// Rows of W (out, in) per task in [`gemv_rows_out_in`].
const BAND: usize = 256;

/// Calls `$f::<R>` for R = `$rows` (1 to 8): the rows of x a register tile holds.
macro_rules! by_rows {
    ($rows:expr, $f:ident($($arg:expr),*)) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<8>($($arg),*),
        }
    };
}

/// y (m, out) += x (m, in) · W for W stored (in, out), for a few rows of x. The rows
/// of W split into one contiguous block per thread, as in [`gemv_in_out`]; with
/// AVX-512 each block is walked [`K_STEP`] rows at a time across every column tile, so
/// that each weight is loaded into a register once for up to eight rows of x
/// ([`rows_step`]) while the K_STEP rows stream from memory side by side. gemm packs
/// the whole weight for every call and runs products this small on one thread.
pub fn gemv_rows_in_out(x: &[f32], w: &[f32], y: &mut [f32], m: usize) {
    let Some((inp, out)) = rows_shapes(x, w, y, m) else {
        return;
    };
    if super::simd::level() != super::simd::Simd::Avx512 {
        return gemv_rows_in_out_blocked(x, w, y, m);
    }
    over_weight_rows(inp, y, m * inp * out >= 1 << 16, |rows, acc| {
        for k0 in rows.clone().step_by(K_STEP) {
            let kn = (rows.end - k0).min(K_STEP);
            for r0 in (0..m).step_by(8) {
                let g = (m - r0).min(8);
                let xg = &x[r0 * inp..(r0 + g) * inp];
                let wk = &w[k0 * out..(k0 + kn) * out];
                rows_step(xg, g, wk, k0, &mut acc[r0 * out..(r0 + g) * out]);
            }
        }
    });
}

/// Weight rows [`gemv_rows_in_out`] walks together: that many sequential streams, one
/// per row, which the hardware prefetchers follow.
const K_STEP: usize = 16;

simd_fn! {
    /// acc (rows, out) += x[.., k0..k0 + kn] · wk, for wk the kn rows (kn, out) of W
    /// from row k0 and rows ≤ 8 of x.
    fn rows_step(x: &[f32], rows: usize, wk: &[f32], k0: usize, acc: &mut [f32]) {
        by_rows!(rows, tiles_in_out(x, wk, k0, acc))
    }
}

#[inline(always)]
fn tiles_in_out<const R: usize>(x: &[f32], wk: &[f32], k0: usize, acc: &mut [f32]) {
    let inp = x.len() / R;
    let out = acc.len() / R;
    let kn = wk.len() / out;
    // This piece of x, transposed (kn, R).
    let mut xs = [0f32; K_STEP * 8];
    for (r, xr) in x.chunks_exact(inp).enumerate() {
        for (kk, &v) in xr[k0..k0 + kn].iter().enumerate() {
            xs[kk * R + r] = v;
        }
    }
    let full = out / TILE * TILE;
    for c in (0..full).step_by(TILE) {
        let mut a: [[f32; TILE]; R] =
            std::array::from_fn(|r| acc[r * out + c..][..TILE].try_into().unwrap());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only called at the AVX-512 level; the tile (kn rows of TILE from
        // column c, `out` apart) lies inside wk.
        unsafe {
            tile_avx512::<R>(wk[c..].as_ptr(), out, kn, &xs[..kn * R], &mut a)
        };
        #[cfg(not(target_arch = "x86_64"))]
        for (kk, xk) in xs[..kn * R].chunks_exact(R).enumerate() {
            for r in 0..R {
                for j in 0..TILE {
                    a[r][j] += xk[r] * wk[kk * out + c + j];
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            let dst: &mut [f32; TILE] = (&mut acc[r * out + c..][..TILE]).try_into().unwrap();
            *dst = *ar;
        }
    }
    // Columns past the last whole tile.
    for (kk, xk) in xs[..kn * R].chunks_exact(R).enumerate() {
        let wr = &wk[kk * out..(kk + 1) * out];
        for r in 0..R {
            for j in full..out {
                acc[r * out + j] += xk[r] * wr[j];
            }
        }
    }
}

/// [`gemv_rows_in_out`] without register tiles, for CPUs without AVX-512: each L2-sized
/// block of W is streamed once from memory and then once from L2 for each further row
/// of x, through the GEMV's own vectorised row kernel.
fn gemv_rows_in_out_blocked(x: &[f32], w: &[f32], y: &mut [f32], m: usize) {
    let (inp, out) = (x.len() / m, y.len() / m);
    let block = (PACK_BYTES / (4 * out)).max(8) / 8 * 8;
    over_weight_rows(inp, y, m * inp * out >= 1 << 16, |rows, acc| {
        for r0 in rows.clone().step_by(block) {
            let r1 = (r0 + block).min(rows.end);
            let wb = &w[r0 * out..r1 * out];
            for (xr, ar) in x.chunks_exact(inp).zip(acc.chunks_exact_mut(out)) {
                rows_axpy(&xr[r0..r1], wb, ar);
            }
        }
    });
}

/// Bytes of weights a task goes over for every row of x in the blocked variants: they
/// stay in L2 for the rows after the first.
const PACK_BYTES: usize = 256 << 10;

/// acc (R, TILE) += Σ_k xs[k, r] · W[k, ..TILE] for kn weight rows `stride` apart from
/// `w`: the register tile, 2R accumulators, each weight vector loaded once for all R
/// rows. Written with intrinsics because the compiler kept this loop scalar.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize>(
    w: *const f32,
    stride: usize,
    kn: usize,
    xs: &[f32],
    acc: &mut [[f32; TILE]; R],
) {
    use std::arch::x86_64::*;
    debug_assert!(xs.len() >= kn * R);
    let mut a: [[__m512; 2]; R] = std::array::from_fn(|r| {
        [
            _mm512_loadu_ps(acc[r].as_ptr()),
            _mm512_loadu_ps(acc[r].as_ptr().add(16)),
        ]
    });
    let x = xs.as_ptr();
    for k in 0..kn {
        let row = w.add(k * stride);
        let w0 = _mm512_loadu_ps(row);
        let w1 = _mm512_loadu_ps(row.add(16));
        for (r, ar) in a.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x.add(k * R + r));
            ar[0] = _mm512_fmadd_ps(xv, w0, ar[0]);
            ar[1] = _mm512_fmadd_ps(xv, w1, ar[1]);
        }
    }
    for (r, ar) in a.iter().enumerate() {
        _mm512_storeu_ps(acc[r].as_mut_ptr(), ar[0]);
        _mm512_storeu_ps(acc[r].as_mut_ptr().add(16), ar[1]);
    }
}

/// y (m, out) += x (m, in) · Wᵀ for W stored (out, in), for a few rows of x: bands of
/// W's rows per task, and with AVX-512 each pair of weight rows dotted with up to eight
/// rows of x at once ([`pair_dots_avx512`]), so each weight is loaded once; otherwise
/// each band (L2-sized) is dotted with one row of x after another.
pub fn gemv_rows_out_in(x: &[f32], w: &[f32], y: &mut [f32], m: usize) {
    let Some((inp, out)) = rows_shapes(x, w, y, m) else {
        return;
    };
    let band = match super::parallel::may_split() && m * w.len() >= 1 << 16 {
        true => (PACK_BYTES / (4 * inp)).clamp(8, BAND),
        false => out,
    };
    #[cfg(target_arch = "x86_64")]
    let avx512 = super::simd::level() == super::simd::Simd::Avx512;
    // Computed transposed, (out, m), so that each band writes one contiguous piece.
    let mut yt = vec![0f32; out * m];
    yt.par_chunks_mut(band * m)
        .enumerate()
        .for_each(|(b, ytb)| {
            let n = ytb.len() / m;
            let wb = &w[b * band * inp..][..n * inp];
            let mut dots = vec![0f32; n];
            for r0 in (0..m).step_by(8) {
                let rows = (m - r0).min(8);
                let xg = &x[r0 * inp..(r0 + rows) * inp];
                #[cfg(target_arch = "x86_64")]
                if avx512 {
                    // SAFETY: the CPU has AVX-512F (level() checked it).
                    unsafe { by_rows!(rows, pair_dots_avx512(xg, wb, ytb, m, r0)) };
                    continue;
                }
                for (r, xr) in xg.chunks_exact(inp).enumerate() {
                    rows_dot(xr, wb, &mut dots);
                    dots.iter()
                        .enumerate()
                        .for_each(|(j, &d)| ytb[j * m + r0 + r] = d);
                }
            }
        });
    for (r, yr) in y.chunks_exact_mut(out).enumerate() {
        yr.iter_mut()
            .enumerate()
            .for_each(|(j, a)| *a += yt[j * m + r]);
    }
}

/// ytb[j · m + r0 + r] = x[r] · wb[j] for the rows j of wb and the R rows of x: two
/// weight rows at a time against every row of x, 2R vector accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pair_dots_avx512<const R: usize>(
    x: &[f32],
    wb: &[f32],
    ytb: &mut [f32],
    m: usize,
    r0: usize,
) {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let inp = x.len() / R;
    let body = inp / L * L;
    let rows = wb.len() / inp;
    let dot_tail = |wr: &[f32], xr: &[f32]| -> f32 { (body..inp).map(|k| wr[k] * xr[k]).sum() };
    let mut j = 0;
    while j < rows {
        let pair = (rows - j).min(2);
        let w0 = &wb[j * inp..(j + 1) * inp];
        let w1 = &wb[(j + pair - 1) * inp..(j + pair) * inp];
        let mut a0 = [_mm512_setzero_ps(); R];
        let mut a1 = [_mm512_setzero_ps(); R];
        for k in (0..body).step_by(L) {
            let u = _mm512_loadu_ps(w0.as_ptr().add(k));
            let v = _mm512_loadu_ps(w1.as_ptr().add(k));
            for r in 0..R {
                let xv = _mm512_loadu_ps(x.as_ptr().add(r * inp + k));
                a0[r] = _mm512_fmadd_ps(u, xv, a0[r]);
                a1[r] = _mm512_fmadd_ps(v, xv, a1[r]);
            }
        }
        for r in 0..R {
            let xr = &x[r * inp..(r + 1) * inp];
            ytb[j * m + r0 + r] = _mm512_reduce_add_ps(a0[r]) + dot_tail(w0, xr);
            if pair == 2 {
                ytb[(j + 1) * m + r0 + r] = _mm512_reduce_add_ps(a1[r]) + dot_tail(w1, xr);
            }
        }
        j += pair;
    }
}
