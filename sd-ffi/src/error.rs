//! Status codes, the thread-local last error message, and the conversion from `sd_core` errors.

use std::cell::RefCell;
use std::ffi::{CString, c_char};

use sd_core::ErrorKind;

/// The result of every fallible `sdrs_` function.
///
/// The numbers are stable: a value is never reused, and retired values stay listed as comments.
/// Codes 1 to 99 mirror the library's error kinds; codes from 100 come from the C boundary
/// itself. Functions return it as this enum; functions that take a status take a `uint32_t`, so
/// that any integer is accepted. `sdrs_last_error_message` gives the details of a failure.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sdrs_status {
    /// Success.
    Ok = 0,
    /// A file or directory the caller named does not exist.
    NotFound = 1,
    /// Reading or writing a file failed for another reason.
    Io = 2,
    /// An argument is out of range or malformed (a size that is not a multiple of 8, zero steps,
    /// an unknown enum value, a buffer of the wrong length, an index past the end, ...).
    InvalidArgument = 3,
    /// A model or weight file is malformed, incomplete or does not fit the configuration.
    InvalidModel = 4,
    /// Two tensors have shapes an operation cannot combine.
    ShapeMismatch = 5,
    /// A dtype, device, format or feature is not supported by this build.
    Unsupported = 6,
    /// A compute device failed (driver missing, out of memory, kernel error).
    Device = 7,
    /// The progress callback returned false.
    Cancelled = 8,
    /// An internal invariant was violated: a bug in sdrs.
    Internal = 9,
    /// A pointer argument that must not be NULL was NULL; the message names it.
    NullArgument = 100,
    /// A string argument is not valid UTF-8; the message names it.
    InvalidUtf8 = 101,
    /// The library panicked (a bug in sdrs); the call had no effect on its outputs.
    Panic = 102,
}

impl sdrs_status {
    /// Every status, for lookups from an integer.
    const ALL: [sdrs_status; 13] = [
        sdrs_status::Ok,
        sdrs_status::NotFound,
        sdrs_status::Io,
        sdrs_status::InvalidArgument,
        sdrs_status::InvalidModel,
        sdrs_status::ShapeMismatch,
        sdrs_status::Unsupported,
        sdrs_status::Device,
        sdrs_status::Cancelled,
        sdrs_status::Internal,
        sdrs_status::NullArgument,
        sdrs_status::InvalidUtf8,
        sdrs_status::Panic,
    ];

    /// The status with this number, if any.
    pub(crate) fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u32 == value)
    }

    /// A short static description, NUL-terminated.
    fn description(self) -> &'static str {
        match self {
            sdrs_status::Ok => "ok\0",
            sdrs_status::NotFound => "not found\0",
            sdrs_status::Io => "i/o error\0",
            sdrs_status::InvalidArgument => "invalid argument\0",
            sdrs_status::InvalidModel => "invalid model\0",
            sdrs_status::ShapeMismatch => "shape mismatch\0",
            sdrs_status::Unsupported => "unsupported\0",
            sdrs_status::Device => "device error\0",
            sdrs_status::Cancelled => "cancelled\0",
            sdrs_status::Internal => "internal error\0",
            sdrs_status::NullArgument => "null argument\0",
            sdrs_status::InvalidUtf8 => "invalid utf-8\0",
            sdrs_status::Panic => "panic\0",
        }
    }
}

impl From<ErrorKind> for sdrs_status {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NotFound => sdrs_status::NotFound,
            ErrorKind::Io => sdrs_status::Io,
            ErrorKind::InvalidArgument => sdrs_status::InvalidArgument,
            ErrorKind::InvalidModel => sdrs_status::InvalidModel,
            ErrorKind::ShapeMismatch => sdrs_status::ShapeMismatch,
            ErrorKind::Unsupported => sdrs_status::Unsupported,
            ErrorKind::Device => sdrs_status::Device,
            ErrorKind::Cancelled => sdrs_status::Cancelled,
            ErrorKind::Internal => sdrs_status::Internal,
        }
    }
}

/// A failed call: the status to return and the message `sdrs_last_error_message` will show.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The status returned to C.
    pub(crate) status: sdrs_status,
    /// The details.
    pub(crate) message: String,
}

impl Failure {
    /// A NULL pointer argument.
    pub(crate) fn null(name: &str) -> Self {
        Failure {
            status: sdrs_status::NullArgument,
            message: format!("argument `{name}` is NULL"),
        }
    }

    /// A string argument that is not UTF-8.
    pub(crate) fn utf8(name: &str, err: std::str::Utf8Error) -> Self {
        Failure {
            status: sdrs_status::InvalidUtf8,
            message: format!("argument `{name}` is not valid UTF-8: {err}"),
        }
    }

    /// An invalid argument checked at the boundary.
    pub(crate) fn invalid(name: &str, reason: impl std::fmt::Display) -> Self {
        Failure {
            status: sdrs_status::InvalidArgument,
            message: format!("invalid argument `{name}`: {reason}"),
        }
    }

    /// A caught panic.
    pub(crate) fn panic(what: &str) -> Self {
        Failure {
            status: sdrs_status::Panic,
            message: format!("panic inside sdrs (this is a bug in sdrs): {what}"),
        }
    }
}

impl From<sd_core::Error> for Failure {
    fn from(e: sd_core::Error) -> Self {
        Failure {
            status: e.kind().into(),
            message: e.to_string(),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Makes `failure` this thread's last error.
pub(crate) fn set_last_error(failure: &Failure) {
    // A message never contains NUL in practice (paths and C strings cannot), but be exact.
    let text = failure.message.replace('\0', "\\0");
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

/// Forgets this thread's last error (each fallible call starts with a clean slate).
pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|e| *e.borrow_mut() = None);
}

/// The last error of this thread, for Rust tests.
#[cfg(test)]
pub(crate) fn last_error_string() -> Option<String> {
    LAST_ERROR.with(|e| {
        e.borrow()
            .as_ref()
            .map(|c| c.to_string_lossy().into_owned())
    })
}

/// Runs the body of a function that returns a status: clears the last error, and on failure
/// records it and returns its status.
pub(crate) fn status_of(body: impl FnOnce() -> Result<(), Failure>) -> sdrs_status {
    clear_last_error();
    match body() {
        Ok(()) => sdrs_status::Ok,
        Err(f) => {
            set_last_error(&f);
            f.status
        }
    }
}

/// Runs the body of an infallible-looking accessor: on failure records the error and returns
/// the neutral value (NULL, 0).
pub(crate) fn value_or_neutral<T: crate::panic::Neutral>(
    body: impl FnOnce() -> Result<T, Failure>,
) -> T {
    clear_last_error();
    match body() {
        Ok(v) => v,
        Err(f) => {
            set_last_error(&f);
            T::neutral()
        }
    }
}

/// The message of the last failed `sdrs_` call on this thread, or NULL if the last call that
/// can fail succeeded (or none was made).
///
/// The string is owned by the library and stays valid until the next `sdrs_` call on the same
/// thread; copy it to keep it. Each thread has its own message.
#[unsafe(no_mangle)]
pub extern "C" fn sdrs_last_error_message() -> *const c_char {
    crate::panic::ffi_boundary! {
        LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
    }
}

/// A short static description of a status value (`"ok"`, `"not found"`, ...), or
/// `"unknown status"` for a number that is not a status. Takes an integer so that any value is
/// accepted. The string is static and must not be freed.
#[unsafe(no_mangle)]
pub extern "C" fn sdrs_status_str(status: u32) -> *const c_char {
    crate::panic::ffi_boundary! {
        sdrs_status::from_u32(status)
            .map_or("unknown status\0", sdrs_status::description)
            .as_ptr()
            .cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_numbers_round_trip_and_are_distinct() {
        for s in sdrs_status::ALL {
            assert_eq!(sdrs_status::from_u32(s as u32), Some(s));
        }
        assert_eq!(sdrs_status::from_u32(10_000), None);
        let mut numbers: Vec<u32> = sdrs_status::ALL.iter().map(|s| *s as u32).collect();
        numbers.dedup();
        assert_eq!(numbers.len(), sdrs_status::ALL.len());
    }

    #[test]
    fn every_status_has_a_nul_terminated_description() {
        for s in sdrs_status::ALL {
            assert!(s.description().ends_with('\0'));
        }
    }
}
