//! The CPU backend: `f32` kernels over contiguous row-major buffers.
//!
//! Matrix products go through the `gemm` crate (the most even of the libraries measured on the
//! target machines, see `benches/README.md`); everything heavy is split across the rayon pool.
//! Convolutions are tiled im2col + GEMM over NHWC activations, so the column buffer stays a few
//! megabytes whatever the image size, and attention processes query blocks so it never holds more
//! than `block x keys` scores per thread.

pub(crate) mod attention;
pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod gemm;
pub(crate) mod layout;
pub(crate) mod norm;
pub(crate) mod pool;
pub(crate) mod simd;
pub(crate) mod winograd;

/// Number of worker threads the backend splits work across.
pub(crate) fn num_threads() -> usize {
    rayon::current_num_threads().max(1)
}
