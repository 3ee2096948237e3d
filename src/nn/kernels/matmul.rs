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
    ptr: *const f32,
    len: usize,
    rs: isize,
    cs: isize,
    data: std::marker::PhantomData<&'a [f32]>,
}

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
    let parts = if super::parallel::may_split() && inp * out >= 1 << 16 {
        rayon::current_num_threads().min(inp)
    } else {
        1
    };
    let per = inp.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; out];
            let rows = (t * per).min(inp)..((t + 1) * per).min(inp);
            rows_axpy(
                &x[rows.clone()],
                &w[rows.start * out..rows.end * out],
                &mut acc,
            );
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
