//! Single-precision matrix products through the `gemm` crate.

use gemm::Parallelism;

/// A matrix operand: a base slice plus row and column strides, in elements.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    /// The backing data; every element addressed by the strides must lie inside it.
    pub data: &'a [f32],
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `rows x cols` matrix, read as `cols x rows`.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    fn covers(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1) * self.row_stride + (cols - 1) * self.col_stride;
        last < self.data.len()
    }
}

/// How many threads one GEMM may use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Threads {
    /// Run on the calling thread (the caller already splits work across threads).
    Single,
    /// Split the product across the rayon pool.
    All,
}

/// `dst[m x n] (row-major) = lhs[m x k] * rhs[k x n]`, or `dst += …` when `accumulate`.
///
/// # Panics
/// If an operand slice is too short for its strides (an internal invariant of the callers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    dst: &mut [f32],
    accumulate: bool,
    threads: Threads,
) {
    sgemm_strided(m, n, k, lhs, rhs, dst, n, accumulate, threads);
}

/// As [`sgemm`], with the rows of `dst` `dst_row_stride` elements apart (`≥ n`).
///
/// # Panics
/// If an operand slice is too short for its strides (an internal invariant of the callers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_strided(
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
    threads: Threads,
) {
    assert!(lhs.covers(m, k), "sgemm: lhs slice too short for {m}x{k}");
    assert!(rhs.covers(k, n), "sgemm: rhs slice too short for {k}x{n}");
    assert!(
        dst_row_stride >= n,
        "sgemm: dst row stride {dst_row_stride} < {n}"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst.len() >= (m - 1) * dst_row_stride + n,
        "sgemm: dst slice too short for {m}x{n}"
    );
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::Single => Parallelism::None,
        Threads::All => {
            let t = super::num_threads();
            // Small products lose more to synchronisation than they gain.
            if t > 1 && m * n * k >= 64 * 64 * 64 {
                Parallelism::Rayon(t)
            } else {
                Parallelism::None
            }
        }
    };
    // SAFETY: the asserts above check that every element addressed through the given strides lies
    // inside its slice; `dst` is uniquely borrowed and does not alias `lhs` or `rhs` (distinct
    // borrows). Strides fit in isize because the slices' lengths do.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_naive_product_with_transposed_rhs() {
        let (m, n, k) = (37, 29, 53);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
        // bt is b stored transposed: [n, k]
        let mut bt = vec![0.0; n * k];
        for p in 0..k {
            for j in 0..n {
                bt[j * k + p] = b[p * n + j];
            }
        }
        let want = naive(m, n, k, &a, &b);
        let mut got = vec![0.0; m * n];
        sgemm(
            m,
            n,
            k,
            MatRef::row_major(&a, k),
            MatRef::transposed(&bt, k),
            &mut got,
            false,
            Threads::All,
        );
        assert_eq!(got, want);
        sgemm(
            m,
            n,
            k,
            MatRef::row_major(&a, k),
            MatRef::row_major(&b, n),
            &mut got,
            true,
            Threads::Single,
        );
        let doubled: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
        assert_eq!(got, doubled);
    }
}
