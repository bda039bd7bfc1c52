//! The C ABI of sdrs. Every symbol is prefixed `sdrs_`; the header `include/sdrs.h` is generated
//! from this crate.
#![deny(missing_docs)]

use std::ffi::c_char;

/// The library version as a NUL-terminated static string (for example `"0.1.0"`). The string is
/// owned by the library and must not be freed.
#[unsafe(no_mangle)]
pub extern "C" fn sdrs_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: sdrs_version returns a pointer to a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(sdrs_version()) };
        assert_eq!(v.to_str().ok(), Some(env!("CARGO_PKG_VERSION")));
    }
}
