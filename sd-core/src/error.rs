//! The crate's single error type.
//!
//! Every variant carries the context a user needs to act on it: the file, the tensor name, the op, and
//! what was expected against what was found. Bindings never match on [`Error`] itself; they map
//! [`Error::kind`], a small exhaustive enum, to their own status codes and exception classes.

use std::path::PathBuf;

pub use crate::backend::cuda::CudaError;
use crate::tensor::{DType, Shape};

/// What kind of failure an [`Error`] is, for bindings and for callers that branch on the cause.
///
/// The set is small and matched exhaustively by the bindings, so adding a kind makes the compiler
/// point at every mapping table that needs a new row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A file or directory the caller named does not exist.
    NotFound,
    /// Reading or writing a file failed for another reason.
    Io,
    /// An argument is out of range or malformed (size not a multiple of 8, zero steps, NaN guidance, …).
    InvalidArgument,
    /// A model or weight file is malformed, incomplete or does not fit the model's configuration.
    InvalidModel,
    /// Two tensors have shapes an operation cannot combine.
    ShapeMismatch,
    /// A dtype, device, format or feature is not supported by this build.
    Unsupported,
    /// A compute device failed (driver missing, out of memory, kernel error).
    Device,
    /// The caller cancelled the operation through a progress callback.
    Cancelled,
    /// An internal invariant was violated; this is a bug in sdrs.
    Internal,
}

/// The error type of every fallible function in `sd-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === Files ===
    /// A path the caller named does not exist.
    #[error("file not found: {path}")]
    FileNotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// An I/O operation on a named file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not of a format sdrs can read, or is malformed.
    #[error("{path}: {reason}")]
    InvalidFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    // === Weights ===
    /// A PyTorch checkpoint (`.ckpt`/`.pt`/`.bin`) was refused or is malformed; the source
    /// says what was refused and where (byte offset, zip entry, global or tensor name).
    #[error("{path}: {source}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What was refused and where.
        #[source]
        source: Box<crate::weights::pickle::LoadError>,
    },
    /// A tensor the model needs is not present in any of the loaded files.
    #[error("missing weight `{name}` (looked in {source_desc})")]
    MissingWeight {
        /// The full dotted tensor name (in the diffusers naming).
        name: String,
        /// Where it was looked for (file paths, layout).
        source_desc: String,
    },
    /// A tensor has a shape that does not fit the model configuration.
    #[error("weight `{name}` in {source_desc} has shape {got}, expected {expected}")]
    WeightShape {
        /// The full dotted tensor name.
        name: String,
        /// Where it was found.
        source_desc: String,
        /// The shape the configuration requires.
        expected: Shape,
        /// The shape stored in the file.
        got: Shape,
    },
    /// A tensor is stored in a dtype sdrs cannot use for that tensor.
    #[error("weight `{name}` in {source_desc} has unsupported dtype {dtype}")]
    WeightDType {
        /// The full dotted tensor name.
        name: String,
        /// Where it was found.
        source_desc: String,
        /// The stored dtype, as the file names it.
        dtype: String,
    },
    /// A model directory or file does not look like any layout sdrs knows.
    #[error("{path}: unrecognised model layout: {reason}")]
    UnknownLayout {
        /// The file or directory.
        path: PathBuf,
        /// Why no layout matched.
        reason: String,
    },
    /// A model configuration file is malformed or describes an unsupported model.
    #[error("model config {path}: {reason}")]
    InvalidConfig {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    // === Tensors ===
    /// Two shapes cannot be combined by an operation.
    #[error("shape mismatch in {op}: lhs {lhs}, rhs {rhs}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// The first operand's shape.
        lhs: Shape,
        /// The second operand's shape.
        rhs: Shape,
    },
    /// An operation received a tensor of the wrong rank or an invalid shape.
    #[error("invalid shape in {op}: {shape}: {reason}")]
    InvalidShape {
        /// The operation.
        op: &'static str,
        /// The offending shape.
        shape: Shape,
        /// What the operation requires.
        reason: String,
    },
    /// A dtype is not supported by an operation on a device.
    #[error("dtype {dtype} is not supported by {op} on {device}")]
    UnsupportedDType {
        /// The operation.
        op: &'static str,
        /// The dtype given.
        dtype: DType,
        /// The device it ran on.
        device: String,
    },
    /// Two tensors live on different devices.
    #[error("device mismatch in {op}: {lhs} and {rhs}")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// The first operand's device.
        lhs: String,
        /// The second operand's device.
        rhs: String,
    },

    // === Devices ===
    /// The requested device is not available in this build or on this machine.
    #[error("device {device} is unavailable: {reason}")]
    DeviceUnavailable {
        /// The device as the caller named it.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A CUDA driver, compiler or library call failed (see [`CudaError`]).
    #[error(transparent)]
    Cuda(#[from] CudaError),

    // === Arguments ===
    /// A caller-supplied argument is invalid.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument's name, as the public API spells it.
        name: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A feature or format is recognised but not supported.
    #[error("unsupported: {0}")]
    Unsupported(String),

    // === Control ===
    /// The caller cancelled the operation.
    #[error("cancelled by the progress callback at step {step}")]
    Cancelled {
        /// The step at which cancellation was observed.
        step: usize,
    },
    /// An internal invariant was violated.
    #[error("internal error (this is a bug in sdrs): {0}")]
    Internal(String),
}

impl Error {
    /// The kind of this error, for bindings and callers that branch on the cause.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::FileNotFound { .. } => ErrorKind::NotFound,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } => ErrorKind::Io,
            Error::Checkpoint { source, .. } => source.error_kind(),
            Error::InvalidFile { .. }
            | Error::MissingWeight { .. }
            | Error::WeightShape { .. }
            | Error::WeightDType { .. }
            | Error::UnknownLayout { .. }
            | Error::InvalidConfig { .. } => ErrorKind::InvalidModel,
            Error::ShapeMismatch { .. } | Error::InvalidShape { .. } => ErrorKind::ShapeMismatch,
            Error::UnsupportedDType { .. } | Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::DeviceMismatch { .. } | Error::DeviceUnavailable { .. } | Error::Cuda(_) => {
                ErrorKind::Device
            }
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Wraps an I/O error with the path it happened on; a missing file becomes [`Error::FileNotFound`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::FileNotFound { path }
        } else {
            Error::Io { path, source }
        }
    }

    /// Wraps an I/O error from writing `target`, naming the file the caller asked for (not a
    /// temporary beside it) and, when its folder does not exist, saying so.
    pub fn io_writing(target: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = target.into();
        if source.kind() != std::io::ErrorKind::NotFound {
            return Error::Io { path, source };
        }
        let reason = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => {
                format!("the folder {} does not exist", dir.display())
            }
            _ => format!("cannot write: {source}"),
        };
        Error::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, reason),
        }
    }

    /// Builds an [`Error::InvalidFile`].
    pub fn invalid_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid_argument(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name,
            reason: reason.into(),
        }
    }
}

/// The result type of `sd-core`.
pub type Result<T> = std::result::Result<T, Error>;
