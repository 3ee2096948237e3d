//! Matrix products on slices through the `gemm` crate (the kernels candle's CPU
//! matmul uses), for fused ops that multiply strided views in place: the heads inside
//! a q|k|v projection, a weight read as its own transpose.

/// A row-major (rows, cols) matrix or the transpose of one, as gemm's strides.
#[derive(Clone, Copy)]
pub struct View {
    ptr: *const f32,
    len: usize,
    rs: isize,
    cs: isize,
}

impl View {
    /// The same matrix from element (row, col) on: a block of it.
    pub fn at(&self, row: usize, col: usize) -> View {
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
    pub fn strided(data: &[f32], rs: usize, cs: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            len: data.len(),
            rs: rs as isize,
            cs: cs as isize,
        }
    }

    pub fn rows(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            len: data.len(),
            rs: cols as isize,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            len: data.len(),
            rs: 1,
            cs: cols as isize,
        }
    }
}

/// dst (m, n), row-major, = [dst +] lhs (m, k) · rhs (k, n).
pub fn gemm_into(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: View, rhs: View, add: bool) {
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
    lhs: View,
    rhs: View,
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
