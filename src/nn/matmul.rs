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
    assert!(dst.len() >= m * n);
    assert!(
        lhs.fits(m, k) && rhs.fits(k, n),
        "gemm operand outside its slice"
    );
    let parallelism = if m * n * k >= 1 << 15 && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: dst holds m·n floats, and every element of lhs (m, k) and rhs (k, n)
    // under their strides lies inside the slice each was made from (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
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
