//! Checkpoint scanning (`sdrs_checkpoint_scan`, `sdrs_scan_report`) and conversion to
//! safetensors (`sdrs_checkpoint_convert`), without running any code from the file.

use std::ffi::{CString, c_char};

use sd_core::weights::{
    ConvertDType, ScanReport, Verdict, convert_to_safetensors, scan_checkpoint,
};

use crate::error::{Failure, sdrs_status, status_of, value_or_neutral};
use crate::handle::{self, Castable, OwnershipBox};
use crate::panic::{check_not_null, ffi_boundary};
use crate::params::opt_str;
use crate::pipeline::to_cstring;

/// The float type `sdrs_checkpoint_convert` writes, for its `uint32_t dtype` argument; any
/// other value is rejected with `SDRS_STATUS_INVALID_ARGUMENT`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sdrs_convert_dtype {
    /// Keep each tensor's stored type.
    Keep = 0,
    /// 32-bit float.
    F32 = 1,
    /// 16-bit IEEE float.
    F16 = 2,
    /// bfloat16.
    Bf16 = 3,
}

fn convert_dtype_from_u32(value: u32) -> Result<Option<ConvertDType>, Failure> {
    Ok(match value {
        v if v == sdrs_convert_dtype::Keep as u32 => None,
        v if v == sdrs_convert_dtype::F32 as u32 => Some(ConvertDType::F32),
        v if v == sdrs_convert_dtype::F16 as u32 => Some(ConvertDType::F16),
        v if v == sdrs_convert_dtype::Bf16 as u32 => Some(ConvertDType::BF16),
        other => {
            return Err(Failure::invalid(
                "dtype",
                format!("{other} is not an sdrs_convert_dtype value (0 to 3)"),
            ));
        }
    })
}

/// What `sdrs_checkpoint_scan` found in a file, owned by the caller and destroyed by
/// `sdrs_scan_report_free`. Reading it from several threads at once is fine.
pub struct sdrs_scan_report {
    _private: [u8; 0],
}

/// One tensor of a scanned file, borrowed from its `sdrs_scan_report`: every pointer stays
/// valid until `sdrs_scan_report_free`; never free them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sdrs_scanned_tensor {
    /// The tensor's name as stored (nested dicts flattened with `.`), UTF-8.
    pub name: *const c_char,
    /// The stored element type as safetensors names it (`F32`, `F16`, `BF16`, `I64`, ...).
    pub dtype: *const c_char,
    /// The dimensions, `rank` of them (NULL when `rank` is 0).
    pub shape: *const usize,
    /// The number of dimensions.
    pub rank: usize,
}

/// One global (Python module and name) a scanned pickle refers to, borrowed from its
/// `sdrs_scan_report`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sdrs_scanned_global {
    /// The module, as written in the file.
    pub module: *const c_char,
    /// The name, as written in the file.
    pub name: *const c_char,
    /// How many times the pickle names it.
    pub count: usize,
    /// Byte offset of the first reference in its pickle.
    pub first_offset: u64,
}

/// What an `sdrs_scan_report` handle owns: the report and C copies of its strings.
pub(crate) struct Report {
    loadable: bool,
    text: CString,
    format: CString,
    reason: Option<CString>,
    tensors: Vec<(CString, CString, Vec<usize>)>,
    globals: Vec<(CString, CString, usize, u64)>,
    /// A refused file's globals: as `globals`, with why each is refused (`None` if allowed).
    refused_globals: Vec<(CString, CString, usize, u64, Option<CString>)>,
    metadata: Vec<(CString, CString)>,
}

impl Report {
    fn new(report: &ScanReport) -> Self {
        Report {
            loadable: report.is_loadable(),
            text: to_cstring(&report.to_string()),
            format: to_cstring(&report.format),
            reason: match &report.verdict {
                Verdict::Loadable => None,
                Verdict::Refused { reason } => Some(to_cstring(reason)),
            },
            tensors: report
                .tensors
                .iter()
                .map(|t| {
                    (
                        to_cstring(&t.name),
                        to_cstring(&t.dtype.to_string()),
                        t.shape.clone(),
                    )
                })
                .collect(),
            globals: report
                .globals
                .iter()
                .map(|g| {
                    (
                        to_cstring(&g.module),
                        to_cstring(&g.name),
                        g.count,
                        g.first_offset,
                    )
                })
                .collect(),
            refused_globals: report
                .refused_file_globals
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|g| {
                    (
                        to_cstring(&g.module),
                        to_cstring(&g.name),
                        g.count,
                        g.first_offset,
                        g.refused.map(to_cstring),
                    )
                })
                .collect(),
            metadata: report
                .metadata
                .iter()
                .map(|(k, v)| (to_cstring(k), to_cstring(v)))
                .collect(),
        }
    }
}

impl Castable for sdrs_scan_report {
    type Ownership = OwnershipBox;
    type RustType = Report;
}

/// Borrows the report behind a handle.
///
/// # Safety
/// `report` is NULL or live.
unsafe fn report_ref<'a>(report: *const sdrs_scan_report) -> Result<&'a Report, Failure> {
    // SAFETY: NULL or a live handle (the caller's contract).
    unsafe { handle::try_ref(report) }.ok_or_else(|| Failure::null("report"))
}

fn out_of_range(index: usize, len: usize, what: &str) -> Failure {
    Failure::invalid("index", format!("{index} is out of range for {len} {what}"))
}

/// Reads what the file at `path` (UTF-8) holds and whether it can be loaded, running nothing
/// from it: a `.ckpt`/`.pt`/`.bin` pickle checkpoint (torch zip or legacy) or a
/// `.safetensors` file, recognised by content.
///
/// A hostile or malformed file is not a failure: the call returns `SDRS_STATUS_OK` and a report
/// whose `sdrs_scan_report_loadable` is false and whose `sdrs_scan_report_reason` says what was
/// refused and where. The call fails only when the file cannot be read (`SDRS_STATUS_NOT_FOUND`,
/// `SDRS_STATUS_IO`). On success `*report_out` receives a report the caller frees with
/// `sdrs_scan_report_free`; on failure it is NULL.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `report_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_checkpoint_scan(
    path: *const c_char,
    report_out: *mut *mut sdrs_scan_report,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(report_out);
            // SAFETY: non-NULL and writable (the caller's contract).
            unsafe { report_out.write(std::ptr::null_mut()) };
            check_not_null!(path);
            // SAFETY: non-NULL and NUL-terminated (the caller's contract).
            let path = unsafe { opt_str(path, "path") }?.unwrap_or_default();
            let report = Report::new(&scan_checkpoint(path)?);
            // SAFETY: checked non-NULL and writable above.
            unsafe { report_out.write(handle::to_box_ptr(report)) };
            Ok(())
        })
    }
}

/// Whether the scanned file can be loaded (nothing in it would run; every global is allowed).
/// False when `report` is NULL.
///
/// # Safety
/// `report` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_loadable(report: *const sdrs_scan_report) -> bool {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            Ok(unsafe { report_ref(report) }?.loadable)
        })
    }
}

/// The whole report as text, as `convert --scan` prints it (format, tensors, metadata, globals,
/// verdict), with control characters from the file escaped. Borrowed: valid until
/// `sdrs_scan_report_free`. NULL when `report` is NULL.
///
/// # Safety
/// `report` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_text(report: *const sdrs_scan_report) -> *const c_char {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            Ok(unsafe { report_ref(report) }?.text.as_ptr())
        })
    }
}

/// The container in words (`safetensors`, `torch zip (...)`, `torch legacy ...`, or what the
/// file is when it is not a checkpoint). Borrowed like `sdrs_scan_report_text`.
///
/// # Safety
/// `report` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_format(report: *const sdrs_scan_report) -> *const c_char {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            Ok(unsafe { report_ref(report) }?.format.as_ptr())
        })
    }
}

/// Why the file was refused (what and where), or NULL when it is loadable (or `report` is
/// NULL). Borrowed like `sdrs_scan_report_text`.
///
/// # Safety
/// `report` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_reason(report: *const sdrs_scan_report) -> *const c_char {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            let r = unsafe { report_ref(report) }?;
            Ok(r.reason.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
        })
    }
}

/// The number of tensors the file declares (0 when refused or when `report` is NULL).
///
/// # Safety
/// `report` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_tensor_count(report: *const sdrs_scan_report) -> usize {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            Ok(unsafe { report_ref(report) }?.tensors.len())
        })
    }
}

/// Tensor `index` (in file order) into `*tensor_out`; `SDRS_STATUS_INVALID_ARGUMENT` when
/// `index` is out of range.
///
/// # Safety
/// `report` is NULL or live; `tensor_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_tensor(
    report: *const sdrs_scan_report,
    index: usize,
    tensor_out: *mut sdrs_scanned_tensor,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(report, tensor_out);
            // SAFETY: live (the caller's contract).
            let r = unsafe { report_ref(report) }?;
            let (name, dtype, shape) = r
                .tensors
                .get(index)
                .ok_or_else(|| out_of_range(index, r.tensors.len(), "tensors"))?;
            let view = sdrs_scanned_tensor {
                name: name.as_ptr(),
                dtype: dtype.as_ptr(),
                shape: if shape.is_empty() { std::ptr::null() } else { shape.as_ptr() },
                rank: shape.len(),
            };
            // SAFETY: checked non-NULL and writable (the caller's contract).
            unsafe { tensor_out.write(view) };
            Ok(())
        })
    }
}

/// The number of distinct globals the pickle names (0 for safetensors, when refused: see
/// `sdrs_scan_report_refused_global_count`, or when `report` is NULL).
///
/// # Safety
/// `report` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_global_count(report: *const sdrs_scan_report) -> usize {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            Ok(unsafe { report_ref(report) }?.globals.len())
        })
    }
}

/// Global `index` (sorted by module, then name) into `*global_out`;
/// `SDRS_STATUS_INVALID_ARGUMENT` when `index` is out of range.
///
/// # Safety
/// `report` is NULL or live; `global_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_global(
    report: *const sdrs_scan_report,
    index: usize,
    global_out: *mut sdrs_scanned_global,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(report, global_out);
            // SAFETY: live (the caller's contract).
            let r = unsafe { report_ref(report) }?;
            let (module, name, count, first_offset) = r
                .globals
                .get(index)
                .ok_or_else(|| out_of_range(index, r.globals.len(), "globals"))?;
            let view = sdrs_scanned_global {
                module: module.as_ptr(),
                name: name.as_ptr(),
                count: *count,
                first_offset: *first_offset,
            };
            // SAFETY: checked non-NULL and writable (the caller's contract).
            unsafe { global_out.write(view) };
            Ok(())
        })
    }
}

/// The number of distinct globals the pickles of a refused checkpoint name, found by reading
/// their opcodes without running anything (0 for a loadable file, for a file that is not a
/// checkpoint, or when `report` is NULL).
///
/// # Safety
/// `report` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_refused_global_count(
    report: *const sdrs_scan_report,
) -> usize {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            Ok(unsafe { report_ref(report) }?.refused_globals.len())
        })
    }
}

/// Global `index` of a refused checkpoint (sorted by module, then name) into `*global_out`,
/// and into `*why_out` (unless `why_out` is NULL) why it is refused, or NULL for a global on
/// the allow-list; the strings are borrowed from `report`. `SDRS_STATUS_INVALID_ARGUMENT`
/// when `index` is out of range.
///
/// # Safety
/// `report` is NULL or live; `global_out` is NULL or writable; `why_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_refused_global(
    report: *const sdrs_scan_report,
    index: usize,
    global_out: *mut sdrs_scanned_global,
    why_out: *mut *const c_char,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(report, global_out);
            // SAFETY: live (the caller's contract).
            let r = unsafe { report_ref(report) }?;
            let (module, name, count, first_offset, why) =
                r.refused_globals.get(index).ok_or_else(|| {
                    out_of_range(index, r.refused_globals.len(), "refused globals")
                })?;
            let view = sdrs_scanned_global {
                module: module.as_ptr(),
                name: name.as_ptr(),
                count: *count,
                first_offset: *first_offset,
            };
            // SAFETY: checked non-NULL and writable (the caller's contract).
            unsafe { global_out.write(view) };
            if !why_out.is_null() {
                let why = why.as_ref().map_or(std::ptr::null(), |w| w.as_ptr());
                // SAFETY: non-NULL and writable (the caller's contract).
                unsafe { why_out.write(why) };
            }
            Ok(())
        })
    }
}

/// The number of metadata entries (safetensors `__metadata__`, or a checkpoint's scalar
/// entries such as `global_step`); 0 when `report` is NULL.
///
/// # Safety
/// `report` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_metadata_count(report: *const sdrs_scan_report) -> usize {
    ffi_boundary! {
        value_or_neutral(|| {
            // SAFETY: NULL or live (the caller's contract).
            Ok(unsafe { report_ref(report) }?.metadata.len())
        })
    }
}

/// Metadata entry `index` (sorted by key): `*key_out` and `*value_out` receive borrowed
/// strings, valid until `sdrs_scan_report_free`. `SDRS_STATUS_INVALID_ARGUMENT` when `index` is
/// out of range.
///
/// # Safety
/// `report` is NULL or live; `key_out` and `value_out` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_metadata(
    report: *const sdrs_scan_report,
    index: usize,
    key_out: *mut *const c_char,
    value_out: *mut *const c_char,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(report, key_out, value_out);
            // SAFETY: live (the caller's contract).
            let r = unsafe { report_ref(report) }?;
            let (k, v) = r
                .metadata
                .get(index)
                .ok_or_else(|| out_of_range(index, r.metadata.len(), "metadata entries"))?;
            // SAFETY: both checked non-NULL and writable (the caller's contract).
            unsafe {
                key_out.write(k.as_ptr());
                value_out.write(v.as_ptr());
            }
            Ok(())
        })
    }
}

/// Frees a report and every string and view borrowed from it. Calling with NULL is fine. Must
/// not be called twice with the same value.
///
/// # Safety
/// `report` is NULL or a report from `sdrs_checkpoint_scan` that has not been freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_scan_report_free(report: *mut sdrs_scan_report) {
    ffi_boundary! {
        // SAFETY: NULL or a live handle (the caller's contract).
        unsafe { handle::free_box(report) }
    }
}

/// Converts the checkpoint at `input` (a `.ckpt`/`.pt`/`.bin` pickle or a `.safetensors`
/// file) to a `.safetensors` file at `output` (both UTF-8), keeping tensor names as stored and
/// scalar entries as metadata. `dtype` is an `sdrs_convert_dtype`: with a float type, float
/// tensors are converted to it (integer and bool tensors are always kept).
///
/// A refused file (hostile or malformed) fails with the reader's status (usually
/// `SDRS_STATUS_INVALID_MODEL`) and writes nothing; an unreadable input or unwritable output
/// fails with `SDRS_STATUS_NOT_FOUND` or `SDRS_STATUS_IO`.
///
/// # Safety
/// `input` and `output` are NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_checkpoint_convert(
    input: *const c_char,
    output: *const c_char,
    dtype: u32,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(input, output);
            // SAFETY: non-NULL and NUL-terminated (the caller's contract).
            let input = unsafe { opt_str(input, "input") }?.unwrap_or_default();
            // SAFETY: non-NULL and NUL-terminated (the caller's contract).
            let output = unsafe { opt_str(output, "output") }?.unwrap_or_default();
            let dtype = convert_dtype_from_u32(dtype)?;
            convert_to_safetensors(input, output, dtype)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_value_maps_and_others_are_rejected() {
        assert_eq!(convert_dtype_from_u32(0).ok(), Some(None));
        assert_eq!(
            convert_dtype_from_u32(1).ok(),
            Some(Some(ConvertDType::F32))
        );
        assert_eq!(
            convert_dtype_from_u32(2).ok(),
            Some(Some(ConvertDType::F16))
        );
        assert_eq!(
            convert_dtype_from_u32(3).ok(),
            Some(Some(ConvertDType::BF16))
        );
        assert!(convert_dtype_from_u32(4).is_err());
        assert!(convert_dtype_from_u32(u32::MAX).is_err());
    }
}
