//! `sdrs_images`: the result of one generation, and borrowed views of its pixels.

use std::ffi::{CString, c_char};

use sd_core::image::{self, PARAMETERS_KEY, RgbImage};
use sd_core::pipeline::Generation;

use crate::error::{Failure, sdrs_status, status_of, value_or_neutral};
use crate::handle::{self, Castable, OwnershipBox};
use crate::panic::{check_not_null, ffi_boundary};
use crate::params::opt_str;
use crate::pipeline::to_cstring;

/// The images of one `sdrs_pipeline_generate` call, with their generation parameters, owned by
/// the caller and destroyed by `sdrs_images_free`. Under the hood it is a `Box` of the results.
/// Reading it from several threads at once is fine.
pub struct sdrs_images {
    _private: [u8; 0],
}

/// What an `sdrs_images` handle owns.
pub(crate) struct Images {
    images: Vec<RgbImage>,
    infotexts: Vec<CString>,
    adapter_report: CString,
}

impl Images {
    /// Takes the results of a generation.
    pub(crate) fn new(generation: Generation) -> Result<Self, Failure> {
        if generation.images.len() != generation.infotexts.len() {
            return Err(Failure::from(sd_core::Error::Internal(format!(
                "{} images but {} infotexts",
                generation.images.len(),
                generation.infotexts.len()
            ))));
        }
        Ok(Images {
            infotexts: generation.infotexts.iter().map(|t| to_cstring(t)).collect(),
            adapter_report: to_cstring(&generation.adapters.to_string()),
            images: generation.images,
        })
    }

    fn get(&self, index: usize) -> Result<(&RgbImage, &CString), Failure> {
        match (self.images.get(index), self.infotexts.get(index)) {
            (Some(img), Some(text)) => Ok((img, text)),
            _ => Err(Failure::invalid(
                "index",
                format!("{index} is out of range for {} images", self.images.len()),
            )),
        }
    }
}

impl Castable for sdrs_images {
    type Ownership = OwnershipBox;
    type RustType = Images;
}

/// A borrowed view of one image: 8-bit RGB, row-major, no padding beyond `stride`.
/// `data` stays valid until `sdrs_images_free` is called on the images it came from.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sdrs_image_view {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per pixel: always 3 (`R G B`).
    pub channels: u32,
    /// Bytes from the start of one row to the next (`width * channels`).
    pub stride: usize,
    /// The first byte of the top row; `stride * height` bytes are readable. Borrowed: valid
    /// until `sdrs_images_free`; never free it.
    pub data: *const u8,
}

/// Borrows the images behind a handle.
///
/// # Safety
/// `images` is NULL or live.
unsafe fn images_ref<'a>(images: *const sdrs_images) -> Result<&'a Images, Failure> {
    // SAFETY: NULL or a live handle (the caller's contract).
    unsafe { handle::try_ref(images) }.ok_or_else(|| Failure::null("images"))
}

/// The number of images (the request's `batch_size`); 0 when `images` is NULL.
///
/// # Safety
/// `images` is NULL or a live result of `sdrs_pipeline_generate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_images_count(images: *const sdrs_images) -> usize {
    ffi_boundary! {
        // SAFETY: NULL or live (the caller's contract).
        value_or_neutral(|| Ok(unsafe { images_ref(images) }?.images.len()))
    }
}

/// Describes image `index` (from 0) in `*view_out`. On failure (NULL argument, index out of
/// range) `*view_out` is zeroed, with `data` NULL. The pixels are borrowed: valid until
/// `sdrs_images_free`.
///
/// # Safety
/// `images` is NULL or live; `view_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_images_get(
    images: *const sdrs_images,
    index: usize,
    view_out: *mut sdrs_image_view,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(view_out);
            let empty = sdrs_image_view {
                width: 0,
                height: 0,
                channels: 0,
                stride: 0,
                data: std::ptr::null(),
            };
            // SAFETY: non-NULL and writable (the caller's contract).
            unsafe { view_out.write(empty) };
            // SAFETY: NULL or live (the caller's contract).
            let (img, _) = unsafe { images_ref(images) }?.get(index)?;
            let side = |v: usize| u32::try_from(v).map_err(|_| Failure::invalid("index", "image too large for a view"));
            let view = sdrs_image_view {
                width: side(img.width)?,
                height: side(img.height)?,
                channels: 3,
                stride: img.width * 3,
                data: img.data.as_ptr(),
            };
            // SAFETY: checked non-NULL and writable above.
            unsafe { view_out.write(view) };
            Ok(())
        })
    }
}

/// The generation parameters of image `index` as AUTOMATIC1111-style text (what
/// `sdrs_image_save_png` stores in the PNG `parameters` chunk). Borrowed: valid until
/// `sdrs_images_free`; never free it. NULL when `images` is NULL or `index` is out of range
/// (`sdrs_last_error_message` says which).
///
/// # Safety
/// `images` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_images_infotext(
    images: *const sdrs_images,
    index: usize,
) -> *const c_char {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            let (_, text) = unsafe { images_ref(images) }?.get(index)?;
            Ok(text.as_ptr())
        })
    }
}

/// What the adapters of the generation did, as text: one line per LoRA (`lora NAME: N modules
/// applied (text encoder S, UNet S)`), an indented `not applied: KEY: REASON` line for every key
/// of its file that was not applied, and hypernetwork warnings. Empty without adapters.
/// Borrowed: valid until `sdrs_images_free`; never free it. NULL when `images` is NULL.
///
/// # Safety
/// `images` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_images_adapter_report(images: *const sdrs_images) -> *const c_char {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            Ok(unsafe { images_ref(images) }?.adapter_report.as_ptr())
        })
    }
}

/// Writes image `index` to `path` (UTF-8) as a PNG carrying its generation parameters in a
/// `parameters` text chunk, as AUTOMATIC1111 does. Overwrites an existing file.
///
/// # Safety
/// `images` is NULL or live; `path` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_image_save_png(
    images: *const sdrs_images,
    index: usize,
    path: *const c_char,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(images, path);
            // SAFETY: non-NULL and NUL-terminated (the caller's contract).
            let path = unsafe { opt_str(path, "path") }?.unwrap_or_default();
            // SAFETY: live (the caller's contract).
            let (img, text) = unsafe { images_ref(images) }?.get(index)?;
            let text = text.to_str().map_err(|e| Failure::utf8("infotext", e))?;
            image::save_png(path, img, &[(PARAMETERS_KEY, text)])?;
            Ok(())
        })
    }
}

/// Frees the images of one generation, and with them every view and infotext borrowed from
/// them. Calling with NULL is fine. Must not be called twice with the same value.
///
/// # Safety
/// `images` is NULL or a result of `sdrs_pipeline_generate` that has not been freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_images_free(images: *mut sdrs_images) {
    ffi_boundary! {
        // SAFETY: NULL or a live handle (the caller's contract).
        unsafe { handle::free_box(images) }
    }
}
