//! The panic boundary every exported function runs inside, and the values a function returns
//! when it cannot produce its real result.

use crate::error::{Failure, set_last_error};

/// The value an exported function returns when it panicked or failed without a status to report:
/// `SDRS_STATUS_PANIC` for statuses, NULL for pointers, 0 for integers.
pub(crate) trait Neutral {
    /// The neutral value.
    fn neutral() -> Self;
}

impl Neutral for crate::error::sdrs_status {
    fn neutral() -> Self {
        crate::error::sdrs_status::Panic
    }
}

impl<T> Neutral for *const T {
    fn neutral() -> Self {
        std::ptr::null()
    }
}

impl<T> Neutral for *mut T {
    fn neutral() -> Self {
        std::ptr::null_mut()
    }
}

impl Neutral for usize {
    fn neutral() -> Self {
        0
    }
}

impl Neutral for u32 {
    fn neutral() -> Self {
        0
    }
}

impl Neutral for bool {
    fn neutral() -> Self {
        false
    }
}

impl Neutral for () {
    fn neutral() -> Self {}
}

/// Records a caught panic as the thread's last error.
pub(crate) fn record_panic(payload: &(dyn std::any::Any + Send)) {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_string());
    set_last_error(&Failure::panic(&what));
}

/// Runs an exported function's body, turning a panic into the return type's
/// [`Neutral`] value (`SDRS_STATUS_PANIC` for statuses) and recording its message as the
/// thread's last error. Unwinding across `extern "C"` would abort the host process.
macro_rules! ffi_boundary {
    ( $($body:tt)* ) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| { $($body)* })) {
            Ok(ret) => ret,
            Err(payload) => {
                $crate::panic::record_panic(&*payload);
                $crate::panic::Neutral::neutral()
            }
        }
    };
}
pub(crate) use ffi_boundary;

/// Returns `Err(Failure::null("name"))` from the enclosing closure for the first argument that
/// is NULL, so the message names it.
macro_rules! check_not_null {
    ( $($arg:ident),+ $(,)? ) => {
        $(
            if $arg.is_null() {
                return Err($crate::error::Failure::null(stringify!($arg)));
            }
        )+
    };
}
pub(crate) use check_not_null;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{last_error_string, sdrs_status};

    fn panicking_status() -> sdrs_status {
        ffi_boundary! {
            if std::hint::black_box(true) {
                panic!("boundary test panic");
            }
            sdrs_status::Ok
        }
    }

    fn panicking_pointer() -> *const u8 {
        ffi_boundary! {
            if std::hint::black_box(true) {
                panic!("pointer panic");
            }
            b"x".as_ptr()
        }
    }

    #[test]
    fn a_panic_becomes_the_panic_status_and_a_message() {
        assert_eq!(panicking_status(), sdrs_status::Panic);
        let msg = last_error_string().unwrap_or_default();
        assert!(msg.contains("boundary test panic"), "{msg}");
        assert!(panicking_pointer().is_null());
        let msg = last_error_string().unwrap_or_default();
        assert!(msg.contains("pointer panic"), "{msg}");
    }

    #[test]
    fn check_not_null_names_the_argument() {
        fn f(path: *const u8) -> Result<(), Failure> {
            check_not_null!(path);
            Ok(())
        }
        let err = f(std::ptr::null()).err().map(|e| (e.status, e.message));
        assert_eq!(err.as_ref().map(|e| e.0), Some(sdrs_status::NullArgument));
        assert!(err.is_some_and(|e| e.1.contains("`path`")));
        assert!(f(b"a".as_ptr()).is_ok());
    }
}
