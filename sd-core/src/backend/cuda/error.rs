//! Errors of the CUDA backend.
//!
//! This type holds only strings and numbers, never a cudarc type, so it exists (and
//! [`crate::Error::Cuda`] exists) in builds without the `cuda` feature too: bindings map it the same
//! way in every build.

/// A failure inside the CUDA backend: a driver call, the run-time kernel compiler, or cuBLASLt.
///
/// Wrapped by [`crate::Error::Cuda`], whose [`kind`](crate::Error::kind) is
/// [`ErrorKind::Device`](crate::ErrorKind::Device).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// A CUDA driver call failed (allocation, copy, module load, kernel launch, …).
    #[error("cuda driver error in {op}: {message}")]
    Driver {
        /// What the backend was doing, e.g. `launch unary_f16` or `alloc 4096 bytes`.
        op: String,
        /// The driver's error name and description.
        message: String,
    },
    /// The device ran out of memory.
    #[error("cuda out of memory in {op}: {bytes} bytes requested")]
    OutOfMemory {
        /// What the backend was doing.
        op: String,
        /// The size of the failed allocation.
        bytes: usize,
    },
    /// A library the backend loads at run time is not installed.
    #[error("cuda library {library} not found: {hint}")]
    LibraryMissing {
        /// The library, e.g. `libnvrtc.so.13`.
        library: &'static str,
        /// How to provide it.
        hint: &'static str,
    },
    /// NVRTC rejected a kernel module (a bug in the kernels, or an unsupported architecture).
    #[error("nvrtc failed to compile kernel module {module} for {arch}: {log}")]
    Compile {
        /// The kernel module (`elementwise`, `attention`, …).
        module: &'static str,
        /// The target architecture, e.g. `sm_90`.
        arch: String,
        /// The compiler log.
        log: String,
    },
    /// A cuBLAS or cuBLASLt call failed.
    #[error("cublas error in {op}: {message}")]
    Blas {
        /// The operation and its shape.
        op: String,
        /// The library's status.
        message: String,
    },
    /// The operands of an operation have different dtypes (the CUDA backend never converts
    /// implicitly; call `Tensor::to_dtype`).
    #[error("dtype mismatch in {op}: {lhs} and {rhs}")]
    DTypeMismatch {
        /// The operation.
        op: &'static str,
        /// The first operand's dtype.
        lhs: crate::tensor::DType,
        /// The other operand's dtype.
        rhs: crate::tensor::DType,
    },
    /// An operation's size does not fit what a kernel supports (e.g. a rank above 6).
    #[error("unsupported by the cuda backend in {op}: {reason}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// What is out of range.
        reason: String,
    },
}
