//! The C ABI of sdrs, a Stable Diffusion engine: load a model once, generate images from any
//! number of threads. Every symbol is prefixed `sdrs_`; the header `include/sdrs.h` is generated
//! from this crate by cbindgen and committed.
//!
//! Conventions (the same for every function):
//! * fallible functions return an `sdrs_status`; `SDRS_STATUS_OK` is 0, and
//!   `sdrs_last_error_message()` gives a thread-local description of the last failure;
//! * outputs come last, end in `_out`, are set to NULL (or zero) first and are written only on
//!   success;
//! * every pointer argument is checked for NULL (`SDRS_STATUS_NULL_ARGUMENT`, the message names
//!   it) and every string for UTF-8 (`SDRS_STATUS_INVALID_UTF8`);
//! * what the library allocates, the library frees (`sdrs_pipeline_free`, `sdrs_images_free`);
//!   never pass its pointers to `free()`;
//! * panics never cross the boundary: they become `SDRS_STATUS_PANIC` (or NULL / 0);
//! * parameters come in structs filled by `sdrs_*_params_default()` and passed by pointer.
//!
//! Threading: an `sdrs_pipeline` is immutable and may be shared by threads; each
//! `sdrs_pipeline_generate` call is one generation on its calling thread.
//!
//! Checkpoints can be scanned (`sdrs_checkpoint_scan`: what a file holds and whether it is safe
//! to load) and converted to safetensors (`sdrs_checkpoint_convert`) without loading a model;
//! no code from a file ever runs.
#![deny(missing_docs)]
// The C names are the API (`sdrs_pipeline`, `sdrs_status`, ...).
#![allow(non_camel_case_types)]

use std::ffi::c_char;

mod checkpoint;
mod error;
mod handle;
mod images;

mod panic;
mod params;
mod pipeline;

pub use checkpoint::{
    sdrs_checkpoint_convert, sdrs_checkpoint_scan, sdrs_convert_dtype, sdrs_scan_report,
    sdrs_scan_report_format, sdrs_scan_report_free, sdrs_scan_report_global,
    sdrs_scan_report_global_count, sdrs_scan_report_loadable, sdrs_scan_report_metadata,
    sdrs_scan_report_metadata_count, sdrs_scan_report_reason, sdrs_scan_report_refused_global,
    sdrs_scan_report_refused_global_count, sdrs_scan_report_tensor, sdrs_scan_report_tensor_count,
    sdrs_scan_report_text, sdrs_scanned_global, sdrs_scanned_tensor,
};
pub use error::{sdrs_last_error_message, sdrs_status, sdrs_status_str};
pub use images::{
    sdrs_image_save_png, sdrs_image_view, sdrs_images, sdrs_images_adapter_report,
    sdrs_images_count, sdrs_images_free, sdrs_images_get, sdrs_images_infotext,
};
pub use params::{
    sdrs_device_kind, sdrs_emphasis, sdrs_gen_params, sdrs_gen_params_default, sdrs_hypernetwork,
    sdrs_load_params, sdrs_load_params_default, sdrs_lora, sdrs_progress_fn, sdrs_prompt_syntax,
    sdrs_scheduler,
};
pub use pipeline::{
    sdrs_pipeline, sdrs_pipeline_default_size, sdrs_pipeline_free, sdrs_pipeline_generate,
    sdrs_pipeline_load,
};

/// The ABI version, raised whenever a change breaks binary compatibility (a struct layout, a
/// signature, a status number). Mirrored by the `SDRS_ABI_VERSION` macro of the header.
const ABI_VERSION: u32 = 1;

/// The library version as a NUL-terminated static string (for example `"0.1.0"`), the same as
/// the `SDRS_VERSION_*` macros of the header it was built with. The string is owned by the
/// library and must not be freed.
#[unsafe(no_mangle)]
pub extern "C" fn sdrs_version() -> *const c_char {
    panic::ffi_boundary! { concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast() }
}

/// The ABI version of the library, to compare with the header's `SDRS_ABI_VERSION`: a program
/// built against a header whose `SDRS_ABI_VERSION` differs must not use this library.
#[unsafe(no_mangle)]
pub extern "C" fn sdrs_abi_version() -> u32 {
    panic::ffi_boundary! { ABI_VERSION }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: sdrs_version returns a pointer to a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(sdrs_version()) };
        assert_eq!(v.to_str().ok(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(sdrs_abi_version(), ABI_VERSION);
    }
}
