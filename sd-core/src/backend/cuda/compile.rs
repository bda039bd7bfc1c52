//! Run-time kernel compilation with NVRTC, to cubin for the device's own architecture, with an
//! on-disk cache.
//!
//! The `.cu` sources are embedded in the binary and prefixed with `kernels/prelude.cuh`; nothing is
//! `#include`d (NVRTC 13.0 ships no CUDA headers). Cubin rather than PTX is loaded because a driver
//! rejects PTX of a newer ISA version than it knows, while a cubin for the exact `sm_XY` is
//! accepted by every driver of the same major version and skips the driver's JIT.
//!
//! The cache key is the SHA-256 of (source, options, NVRTC version, architecture); the directory is
//! `$SDRS_CUDA_CACHE`, else `$XDG_CACHE_HOME/sdrs/cuda`, else `$HOME/.cache/sdrs/cuda`. A cache that
//! cannot be read or written only costs a recompile.

use std::ffi::CString;
use std::path::PathBuf;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

use super::error::CudaError;

const PRELUDE: &str = include_str!("../../../kernels/prelude.cuh");

/// One embedded kernel source file; compiled and loaded as one CUDA module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelModule {
    /// Unary maps, activations, broadcast binary ops, linear combinations, GEGLU, casts.
    Elementwise,
    /// Permute, strided row copies, nearest upsampling, row gathers, im2col.
    Layout,
    /// Softmax, layer norm, group norm.
    Norm,
    /// Flash-attention forward (sm_80+).
    Attention,
}

impl KernelModule {
    /// Every module, in a fixed order.
    pub const ALL: [KernelModule; 4] = [
        KernelModule::Elementwise,
        KernelModule::Layout,
        KernelModule::Norm,
        KernelModule::Attention,
    ];

    /// The module's name (its file stem under `sd-core/kernels/`).
    pub fn name(self) -> &'static str {
        match self {
            KernelModule::Elementwise => "elementwise",
            KernelModule::Layout => "layout",
            KernelModule::Norm => "norm",
            KernelModule::Attention => "attention",
        }
    }

    fn body(self) -> &'static str {
        match self {
            KernelModule::Elementwise => include_str!("../../../kernels/elementwise.cu"),
            KernelModule::Layout => include_str!("../../../kernels/layout.cu"),
            KernelModule::Norm => include_str!("../../../kernels/norm.cu"),
            KernelModule::Attention => include_str!("../../../kernels/attention.cu"),
        }
    }

    /// The complete source handed to NVRTC: the prelude followed by the module's file.
    pub fn source(self) -> String {
        format!("{PRELUDE}\n#line 1 \"{}.cu\"\n{}", self.name(), self.body())
    }

    /// Every `extern "C"` kernel the Rust side launches from this module (checked against the
    /// compiler's report in CI, so a renamed kernel fails there rather than at run time).
    pub fn kernel_names(self) -> Vec<String> {
        let per_dtype = |bases: &[&str]| -> Vec<String> {
            bases
                .iter()
                .flat_map(|b| ["f32", "f16", "bf16"].map(|d| format!("{b}_{d}")))
                .collect()
        };
        match self {
            KernelModule::Elementwise => per_dtype(&[
                "unary",
                "binary",
                "lincomb",
                "lincomb_acc",
                "geglu",
                "cast_to_f32",
                "cast_to_f16",
                "cast_to_bf16",
            ]),
            KernelModule::Layout => per_dtype(&[
                "permute",
                "copy_rows",
                "upsample_nearest",
                "gather_rows",
                "im2col",
            ]),
            KernelModule::Norm => {
                let mut names = per_dtype(&[
                    "softmax",
                    "softmax_scores",
                    "layer_norm",
                    "gn_stats",
                    "gn_apply",
                ]);
                names.push("gn_finalize".into());
                names
            }
            KernelModule::Attention => [40, 64, 80, 160]
                .iter()
                .flat_map(|d| ["f16", "bf16"].map(|t| format!("flash_fwd_d{d}_{t}")))
                .collect(),
        }
    }

    /// Kernels of this module that must compile without register spills (checked in CI from the
    /// `ptxas -v` report): name prefixes of the hot kernels.
    pub fn no_spill_prefixes(self) -> &'static [&'static str] {
        match self {
            KernelModule::Attention => &["flash_fwd_"],
            KernelModule::Layout => &["im2col_"],
            KernelModule::Norm => &["gn_stats_", "gn_apply_", "gn_finalize", "layer_norm_"],
            KernelModule::Elementwise => &[],
        }
    }
}

/// The NVRTC options used for every module, for `arch` such as `sm_90`.
///
/// No `--use_fast_math`: the f32 mode must match the CPU backend to ~1e-5, and the kernels that
/// want fast exponentials call `ex2.approx` explicitly. (cudarc's `CompileOptions::use_fast_math`
/// only sets `--fmad=true` anyway, which is NVRTC's default.)
pub fn compile_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
        "-lineinfo".into(),
    ]
}

/// Whether NVRTC's shared library can be loaded (without it every compile fails cleanly).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the candidate library names; touches no other state.
    unsafe { nvrtc_sys::is_culib_present() }
}

fn require_nvrtc() -> Result<(), CudaError> {
    if nvrtc_available() {
        Ok(())
    } else {
        Err(CudaError::LibraryMissing {
            library: "libnvrtc.so.13",
            hint: "install the CUDA 13 toolkit or `tools/install_nvrtc.sh` and add its lib dir to LD_LIBRARY_PATH",
        })
    }
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is present (checked above); both pointers are valid for writes.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::Compile {
            module: "-",
            arch: String::new(),
            log: format!("nvrtcVersion: {e:?}"),
        })?;
    Ok((major, minor))
}

/// The result of compiling one module.
#[derive(Debug, Clone)]
pub struct CompiledModule {
    /// The cubin for the requested architecture.
    pub cubin: Vec<u8>,
    /// NVRTC's log (with `--ptxas-options=-v` among the options: per-kernel registers and spills).
    pub log: String,
}

/// Compiles `module` for `arch` (e.g. `sm_90`) with [`compile_options`] plus `extra_options`.
/// Needs only NVRTC: no driver, no GPU.
///
/// # Errors
/// [`CudaError::LibraryMissing`] without NVRTC, [`CudaError::Compile`] with the log when the
/// compiler rejects the source.
pub fn compile_module(
    module: KernelModule,
    arch: &str,
    extra_options: &[&str],
) -> Result<CompiledModule, CudaError> {
    require_nvrtc()?;
    let fail = |log: String| CudaError::Compile {
        module: module.name(),
        arch: arch.to_string(),
        log,
    };
    let src =
        CString::new(module.source()).map_err(|_| fail("source contains a NUL byte".into()))?;
    let name = CString::new(format!("{}.cu", module.name()))
        .map_err(|_| fail("module name contains a NUL byte".into()))?;
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| fail(format!("{e:?}")))?;
    let mut options = compile_options(arch);
    options.extend(extra_options.iter().map(|s| s.to_string()));
    // SAFETY: `prog` was just created and is destroyed only below; `src` and `name` outlive it.
    let compiled = unsafe { nvrtc::compile_program(prog, &options) };
    // SAFETY: as above; the log exists whether or not the compile succeeded.
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|raw| {
            let bytes: Vec<u8> = raw
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let cubin = compiled
        .map_err(|e| fail(format!("{e:?}\n{log}")))
        .and_then(|()| {
            let mut size = 0usize;
            // SAFETY: `prog` compiled successfully; `size` is valid for writes.
            unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .map_err(|e| fail(format!("nvrtcGetCUBINSize: {e:?}")))?;
            let mut cubin = vec![0u8; size];
            // SAFETY: `cubin` has exactly the size NVRTC reported for this program.
            unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) }
                .result()
                .map_err(|e| fail(format!("nvrtcGetCUBIN: {e:?}")))?;
            Ok(cubin)
        });
    // SAFETY: `prog` is live and not used after this call.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    Ok(CompiledModule { cubin: cubin?, log })
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SDRS_CUDA_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("sdrs").join("cuda"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("sdrs").join("cuda"))
}

/// The cubin of `module` for `arch`, from the disk cache or freshly compiled (and then cached).
pub(crate) fn cubin_cached(module: KernelModule, arch: &str) -> Result<Vec<u8>, CudaError> {
    cubin_cached_in(module, arch, cache_dir())
}

fn cubin_cached_in(
    module: KernelModule,
    arch: &str,
    dir: Option<PathBuf>,
) -> Result<Vec<u8>, CudaError> {
    let (major, minor) = nvrtc_version()?;
    let mut hasher = Sha256::new();
    hasher.update(module.source().as_bytes());
    for opt in compile_options(arch) {
        hasher.update(opt.as_bytes());
        hasher.update([0u8]);
    }
    hasher.update(format!("nvrtc {major}.{minor} {arch}").as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let file = dir.map(|d| {
        d.join(format!(
            "{}-{arch}-nvrtc{major}.{minor}-{hex}.cubin",
            module.name()
        ))
    });
    if let Some(bytes) = file.as_ref().and_then(|path| std::fs::read(path).ok())
        && !bytes.is_empty()
    {
        return Ok(bytes);
    }
    let compiled = compile_module(module, arch, &[])?;
    if let Some(path) = &file {
        // Write to a temporary name and rename, so a concurrent reader never sees half a file.
        let dir_ok = path
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok());
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if dir_ok
            && std::fs::write(&tmp, &compiled.cubin).is_ok()
            && std::fs::rename(&tmp, path).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(compiled.cubin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubins_are_cached_on_disk_by_key() -> Result<(), CudaError> {
        if !nvrtc_available() {
            eprintln!("skipped: libnvrtc not found (tools/install_nvrtc.sh)");
            return Ok(());
        }
        let dir = std::env::temp_dir().join(format!("sdrs-cubin-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = cubin_cached_in(KernelModule::Layout, "sm_80", Some(dir.clone()))?;
        let files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            name.starts_with("layout-sm_80-nvrtc") && name.ends_with(".cubin"),
            "{name}"
        );
        // A second call is served from the file: overwrite it and see the marker come back.
        std::fs::write(&files[0], b"cached").map_err(|e| CudaError::Compile {
            module: "layout",
            arch: "sm_80".into(),
            log: e.to_string(),
        })?;
        let second = cubin_cached_in(KernelModule::Layout, "sm_80", Some(dir.clone()))?;
        assert_eq!(second, b"cached");
        assert!(first.len() > 1000);
        // Another architecture is another key.
        cubin_cached_in(KernelModule::Layout, "sm_90", Some(dir.clone()))?;
        assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0), 2);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
