//! The exception hierarchy of `sdrs` and the single mapping from [`sd_core::Error`] to it.
//!
//! ```text
//! SdrsError(Exception)
//! ├── ModelLoadError            a model file is malformed or does not fit its configuration
//! ├── InvalidArgumentError      also a ValueError: a bad argument, naming the parameter
//! ├── DeviceError               the compute device is unavailable or failed
//! └── CancelledError            the progress callback returned False
//! FileNotFoundError, PermissionError, OSError   (builtins) a missing or unreadable file
//! ```

use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use sd_core::{Error, ErrorKind};

pyo3::create_exception!(
    sdrs,
    SdrsError,
    PyException,
    "Base class of every error sdrs raises itself (missing files raise the builtin FileNotFoundError)."
);
pyo3::create_exception!(
    sdrs,
    ModelLoadError,
    SdrsError,
    "A model or weight file is malformed, incomplete, or does not fit the model's configuration."
);
pyo3::create_exception!(
    sdrs,
    DeviceError,
    SdrsError,
    "The compute device is unavailable or failed (no driver, out of memory, kernel error)."
);
pyo3::create_exception!(
    sdrs,
    CancelledError,
    SdrsError,
    "Generation was cancelled because the progress callback returned False."
);

/// `InvalidArgumentError(SdrsError, ValueError)`: two bases, which `create_exception!` cannot
/// express, so the class is built once with `type(...)`.
static INVALID_ARGUMENT: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The `InvalidArgumentError` class.
pub fn invalid_argument_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    INVALID_ARGUMENT
        .get_or_try_init(py, || {
            let bases = PyTuple::new(
                py,
                [py.get_type::<SdrsError>(), py.get_type::<PyValueError>()],
            )?;
            let dict = PyDict::new(py);
            dict.set_item("__module__", "sdrs")?;
            dict.set_item(
                "__doc__",
                "An argument is out of range or malformed; the message names the parameter.",
            )?;
            let ty = py
                .get_type::<PyType>()
                .call1(("InvalidArgumentError", bases, dict))?;
            Ok(ty.cast_into::<PyType>()?.unbind())
        })
        .map(|t| t.bind(py))
}

/// An `InvalidArgumentError` for the Python parameter `param`, worded as the core words its own.
pub fn invalid_argument(param: &'static str, reason: impl Into<String>) -> PyErr {
    to_py_err(Error::invalid_argument(param, reason))
}

/// Maps a core error to its Python exception; the message is the core's `Display` text.
pub fn to_py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        ErrorKind::Io => match io_kind(&e) {
            Some(std::io::ErrorKind::PermissionDenied) => PyPermissionError::new_err(message),
            _ => PyOSError::new_err(message),
        },
        ErrorKind::InvalidArgument => Python::attach(|py| match invalid_argument_type(py) {
            Ok(ty) => PyErr::from_type(ty.clone(), message),
            Err(err) => err,
        }),
        ErrorKind::InvalidModel => ModelLoadError::new_err(message),
        ErrorKind::Device => DeviceError::new_err(message),
        ErrorKind::Cancelled => CancelledError::new_err(message),
        ErrorKind::ShapeMismatch | ErrorKind::Unsupported | ErrorKind::Internal => {
            SdrsError::new_err(message)
        }
    }
}

/// The `io::ErrorKind` behind an I/O error, found through its source chain.
fn io_kind(e: &Error) -> Option<std::io::ErrorKind> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = err.source();
    }
    None
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("SdrsError", py.get_type::<SdrsError>())?;
    m.add("ModelLoadError", py.get_type::<ModelLoadError>())?;
    m.add("InvalidArgumentError", invalid_argument_type(py)?)?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    Ok(())
}
