//! `sdrs_pipeline`: loading a model and generating images with it.

use std::ffi::{CString, c_char};
use std::path::PathBuf;
use std::sync::Arc;

use sd_core::adapters::{AdapterLibrary, Embedding, LoraUse};

use sd_core::image::{self, MAX_IMAGE_DIMENSION, RgbImage};
use sd_core::pipeline::{
    GenerateRequest, HypernetworkUse, LoadOptions, MAX_BATCH, MAX_IMAGE_SIDE, Pipeline, Progress,
};
use sd_core::{Device, Tensor};

use crate::error::{Failure, sdrs_status, status_of};
use crate::handle::{self, Castable, OwnershipArc};
use crate::images::{Images, sdrs_images};
use crate::panic::{check_not_null, ffi_boundary};
use crate::params::{
    MAX_ADAPTERS, device_from, emphasis_from_u32, opt_str, prompt_syntax_from_u32,
    scheduler_from_u32, sdrs_gen_params, sdrs_load_params,
};

/// A loaded Stable Diffusion model, created by `sdrs_pipeline_load` and destroyed by
/// `sdrs_pipeline_free`.
///
/// It is immutable after loading and thread-safe: any number of threads may call
/// `sdrs_pipeline_generate` on the same pipeline at the same time (each call is one
/// generation, computed on its calling thread with the library's worker threads). Under the
/// hood it is an `Arc<Pipeline>`.
pub struct sdrs_pipeline {
    _private: [u8; 0],
}

/// What an `sdrs_pipeline` handle owns: the loaded model and the adapter files loaded for it.
pub(crate) struct LoadedPipeline {
    pipeline: Pipeline,
    /// Adapter files named by generations, kept loaded while unchanged on disk.
    adapters: AdapterLibrary,
}

impl std::ops::Deref for LoadedPipeline {
    type Target = Pipeline;

    fn deref(&self) -> &Pipeline {
        &self.pipeline
    }
}

impl Castable for sdrs_pipeline {
    type Ownership = OwnershipArc;
    type RustType = LoadedPipeline;
}

/// Loads a model from a diffusers folder or a single-file `.safetensors` / `.ckpt` checkpoint.
///
/// `path` is UTF-8 and NUL-terminated. `params` may be NULL for the defaults
/// (`sdrs_load_params_default()`). On success `*pipeline_out` receives a new pipeline that the
/// caller owns and frees with `sdrs_pipeline_free`; on failure it is NULL and
/// `sdrs_last_error_message()` names the file, tensor or argument at fault.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `params` is NULL or points to a valid
/// `sdrs_load_params` whose `config_dir` is NULL or NUL-terminated; `pipeline_out` is NULL or
/// writable. All are read only during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_pipeline_load(
    path: *const c_char,
    params: *const sdrs_load_params,
    pipeline_out: *mut *mut sdrs_pipeline,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(pipeline_out);
            // SAFETY: non-NULL and writable (the caller's contract).
            unsafe { pipeline_out.write(std::ptr::null_mut()) };
            check_not_null!(path);
            // SAFETY: non-NULL and NUL-terminated (the caller's contract).
            let path = unsafe { opt_str(path, "path") }?.unwrap_or_default();
            // SAFETY: NULL or a valid params struct (the caller's contract).
            let params = unsafe { params.as_ref() }
                .copied()
                .unwrap_or_else(|| crate::params::sdrs_load_params_default());
            let options = LoadOptions {
                device: device_from(params.device_kind, params.device_ordinal)?,
                prefer_ema: params.prefer_ema,
                // SAFETY: NULL or NUL-terminated (the caller's contract).
                config_dir: unsafe { opt_str(params.config_dir, "config_dir") }?.map(Into::into),
            };
            let pipeline = LoadedPipeline {
                pipeline: Pipeline::load(path, &options)?,
                adapters: AdapterLibrary::new(),
            };
            // SAFETY: checked non-NULL and writable above.
            unsafe { pipeline_out.write(handle::to_arc_ptr(pipeline)) };
            Ok(())
        })
    }
}

/// Frees a pipeline made by `sdrs_pipeline_load`. Calling with NULL is fine. Must not be called
/// twice with the same value, nor while another thread is still using the pipeline.
///
/// # Safety
/// `pipeline` is NULL or a pipeline from `sdrs_pipeline_load` that has not been freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_pipeline_free(pipeline: *mut sdrs_pipeline) {
    ffi_boundary! {
        // SAFETY: NULL or a live handle (the caller's contract).
        unsafe { handle::free_arc(pipeline) }
    }
}

/// The image size the model was trained at (512x512 for SD 1.x), in pixels: a good `width`
/// and `height` for `sdrs_gen_params`. Both outputs are written only on success.
///
/// # Safety
/// `pipeline` is NULL or a live pipeline; `width_out` and `height_out` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_pipeline_default_size(
    pipeline: *const sdrs_pipeline,
    width_out: *mut u32,
    height_out: *mut u32,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(pipeline, width_out, height_out);
            // SAFETY: a live pipeline (the caller's contract).
            let pipe = unsafe { handle::try_ref(pipeline) }.ok_or_else(|| Failure::null("pipeline"))?;
            let (w, h) = pipe.default_size();
            let to_u32 = |v: usize| u32::try_from(v).map_err(|_| Failure::invalid("pipeline", "size does not fit 32 bits"));
            let (w, h) = (to_u32(w)?, to_u32(h)?);
            // SAFETY: both checked non-NULL and writable (the caller's contract).
            unsafe {
                width_out.write(w);
                height_out.write(h);
            }
            Ok(())
        })
    }
}

/// Generates images from `params` (see `sdrs_gen_params`).
///
/// Every option is validated before any large buffer is allocated: sizes and counts out of
/// range, an unknown scheduler, an init image or latents buffer of the wrong length, invalid
/// UTF-8 all fail with a message naming the field. On success `*images_out` receives the result,
/// owned by the caller and freed with `sdrs_images_free`; on failure it is NULL. Returns
/// `SDRS_STATUS_CANCELLED` when the progress callback returned false.
///
/// Threading: the work runs on the calling thread (plus the library's worker threads), and so
/// does the progress callback. Several threads may call this on one pipeline at once.
///
/// # Safety
/// `pipeline` is a live pipeline; `params` points to a valid `sdrs_gen_params` whose strings are
/// NULL or NUL-terminated and whose buffers are NULL or readable for their stated lengths (and
/// `initial_latents` aligned for `float`); `images_out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdrs_pipeline_generate(
    pipeline: *const sdrs_pipeline,
    params: *const sdrs_gen_params,
    images_out: *mut *mut sdrs_images,
) -> sdrs_status {
    ffi_boundary! {
        status_of(|| {
            check_not_null!(images_out);
            // SAFETY: non-NULL and writable (the caller's contract).
            unsafe { images_out.write(std::ptr::null_mut()) };
            check_not_null!(pipeline, params);
            // SAFETY: a live pipeline (the caller's contract).
            let pipe = unsafe { handle::try_ref(pipeline) }.ok_or_else(|| Failure::null("pipeline"))?;
            // SAFETY: non-NULL and pointing to a valid struct (the caller's contract).
            let p = unsafe { *params };
            // SAFETY: the struct's pointers follow its documented contract (the caller's).
            let request = unsafe { request_from(pipe, &p) }?;
            let mut on_step = |progress: &Progress| match p.progress {
                None => true,
                Some(callback) => {
                    let step = u32::try_from(progress.step).unwrap_or(u32::MAX);
                    let total = u32::try_from(progress.total_steps).unwrap_or(u32::MAX);
                    // SAFETY: the caller supplied this function for exactly this call, with this
                    // user data; it must not unwind (documented on `sdrs_progress_fn`).
                    unsafe { callback(p.progress_user_data, step, total) }
                }
            };
            let generation = pipe.generate(&request, &mut on_step)?;
            let images = Images::new(generation)?;
            // SAFETY: checked non-NULL and writable above.
            unsafe { images_out.write(handle::to_box_ptr(images)) };
            Ok(())
        })
    }
}

/// Builds the core request from the C parameters, checking what the core cannot: strings,
/// enum values, and caller buffers against their stated lengths.
///
/// # Safety
/// As `sdrs_pipeline_generate`'s `params`.
unsafe fn request_from(
    pipe: &LoadedPipeline,
    p: &sdrs_gen_params,
) -> Result<GenerateRequest, Failure> {
    // SAFETY: NULL or NUL-terminated (the caller's contract), for each string below.
    let prompt = unsafe { opt_str(p.prompt, "prompt") }?.unwrap_or_default();
    let mut request = GenerateRequest::new(prompt);
    // SAFETY: as above.
    request.negative_prompt = unsafe { opt_str(p.negative_prompt, "negative_prompt") }?
        .unwrap_or_default()
        .to_string();
    request.width = p.width as usize;
    request.height = p.height as usize;
    request.steps = p.steps as usize;
    request.batch_size = p.batch_size as usize;
    request.clip_skip = p.clip_skip as usize;
    request.scheduler = scheduler_from_u32(p.scheduler)?;
    request.guidance_scale = p.guidance_scale;
    request.seed = p.seed;
    request.strength = p.strength;
    request.prompt_syntax = prompt_syntax_from_u32(p.prompt_syntax)?;
    request.emphasis = emphasis_from_u32(p.emphasis)?;
    request.pad_cond_uncond = p.pad_cond_uncond;
    // SAFETY: the adapter arrays and strings follow the struct's contract (the caller's).
    unsafe { add_adapters(pipe, p, &mut request) }?;

    // SAFETY: as above.
    let init_path = unsafe { opt_str(p.init_image_path, "init_image_path") }?;
    if init_path.is_some() && !p.init_image_data.is_null() {
        return Err(Failure::invalid(
            "init_image_path",
            "set either init_image_path or init_image_data, not both",
        ));
    }
    if let Some(path) = init_path {
        request.init_image = Some(image::load_image(path)?);
    } else if !p.init_image_data.is_null() {
        // SAFETY: readable for `init_image_len` bytes (the caller's contract).
        request.init_image = Some(unsafe { init_image_from_bytes(p) }?);
    }

    // The core checks sizes before it allocates; copying a latents buffer for a request it will
    // reject would be wasted (and for absurd sizes, huge), so only in-range requests copy.
    let sizes_in_range = request.width <= MAX_IMAGE_SIDE
        && request.height <= MAX_IMAGE_SIDE
        && request.batch_size <= MAX_BATCH;
    if !p.initial_latents.is_null() && sizes_in_range {
        // SAFETY: readable and aligned for `initial_latents_len` floats (the caller's contract).
        request.initial_latents = Some(unsafe { latents_from_buffer(pipe, p) }?);
    }
    Ok(request)
}

/// A C array argument as a slice: NULL with a zero count is empty; NULL with a count, or a count
/// above [`MAX_ADAPTERS`], is an error naming the field.
///
/// # Safety
/// `ptr` is NULL or readable for `count` elements of `T`.
unsafe fn c_array<'a, T>(ptr: *const T, count: usize, name: &str) -> Result<&'a [T], Failure> {
    if count == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    if count > MAX_ADAPTERS {
        return Err(Failure::invalid(
            name,
            format!("{count} entries; at most {MAX_ADAPTERS}"),
        ));
    }
    if !ptr.is_aligned() {
        return Err(Failure::invalid(name, "the pointer is not aligned"));
    }
    // SAFETY: non-NULL, aligned, readable for `count` elements (the caller's contract); the
    // count is bounded, so the byte size fits isize.
    Ok(unsafe { std::slice::from_raw_parts(ptr, count) })
}

/// A required string inside an array entry: NULL is an error naming `field`.
///
/// # Safety
/// `ptr` is NULL or NUL-terminated.
unsafe fn entry_str<'a>(ptr: *const c_char, field: &str) -> Result<&'a str, Failure> {
    // SAFETY: NULL or NUL-terminated (the caller's contract).
    unsafe { opt_str(ptr, field) }?.ok_or_else(|| Failure::null(field))
}

/// Loads the adapters the parameters name into the request, through the pipeline's cache.
///
/// # Safety
/// The adapter arrays of `p` are NULL or readable for their counts, and every string in them
/// (and `lora_dir`, `hypernetwork_dir`) is NULL or NUL-terminated.
unsafe fn add_adapters(
    pipe: &LoadedPipeline,
    p: &sdrs_gen_params,
    request: &mut GenerateRequest,
) -> Result<(), Failure> {
    // SAFETY: the caller's contract, for each array and string below.
    let loras = unsafe { c_array(p.loras, p.lora_count, "loras") }?;
    for (i, l) in loras.iter().enumerate() {
        // SAFETY: as above.
        let path = unsafe { entry_str(l.path, &format!("loras[{i}].path")) }?;
        request.loras.push(LoraUse::with_strengths(
            pipe.adapters.lora_file(path)?,
            l.text_encoder_strength,
            l.unet_strength,
        ));
    }
    // SAFETY: as above.
    let hypernetworks = unsafe { c_array(p.hypernetworks, p.hypernetwork_count, "hypernetworks") }?;
    for (i, h) in hypernetworks.iter().enumerate() {
        // SAFETY: as above.
        let path = unsafe { entry_str(h.path, &format!("hypernetworks[{i}].path")) }?;
        request.hypernetworks.push(HypernetworkUse::new(
            pipe.adapters.hypernetwork_file(path)?,
            h.strength,
        ));
    }
    // SAFETY: as above.
    let embeddings = unsafe { c_array(p.embeddings, p.embedding_count, "embeddings") }?;
    for (i, &e) in embeddings.iter().enumerate() {
        // SAFETY: as above.
        let path = unsafe { entry_str(e, &format!("embeddings[{i}]")) }?;
        request.embeddings.push(Arc::new(Embedding::open(path)?));
    }
    // SAFETY: as above.
    let lora_dir = unsafe { opt_str(p.lora_dir, "lora_dir") }?;
    // SAFETY: as above.
    let hypernetwork_dir = unsafe { opt_str(p.hypernetwork_dir, "hypernetwork_dir") }?;
    if lora_dir.is_some() || hypernetwork_dir.is_some() {
        request.adapter_library = Some(Arc::new(pipe.adapters.with_folders(
            lora_dir.map(PathBuf::from).into_iter().collect(),
            hypernetwork_dir.map(PathBuf::from).into_iter().collect(),
        )));
    }
    Ok(())
}

/// Copies `init_image_data` into an image after checking its length.
///
/// # Safety
/// `p.init_image_data` is non-NULL and readable for `p.init_image_len` bytes.
unsafe fn init_image_from_bytes(p: &sdrs_gen_params) -> Result<RgbImage, Failure> {
    let (w, h) = (p.init_image_width as usize, p.init_image_height as usize);
    if w == 0 || h == 0 || w > MAX_IMAGE_DIMENSION || h > MAX_IMAGE_DIMENSION {
        return Err(Failure::invalid(
            "init_image_width/init_image_height",
            format!("{w}x{h}: each side must be between 1 and {MAX_IMAGE_DIMENSION}"),
        ));
    }
    let expected = w * h * 3; // at most 16384² × 3, no overflow on 64-bit targets
    if p.init_image_len != expected {
        return Err(Failure::invalid(
            "init_image_len",
            format!(
                "a {w}x{h} RGB image has {expected} bytes, got {}",
                p.init_image_len
            ),
        ));
    }
    // SAFETY: non-NULL and readable for `expected` = `init_image_len` bytes (the caller's
    // contract); u8 has no alignment requirement.
    let bytes = unsafe { std::slice::from_raw_parts(p.init_image_data, expected) };
    Ok(RgbImage::new(w, h, bytes.to_vec())?)
}

/// Copies `initial_latents` into a tensor of the shape the request needs.
///
/// # Safety
/// `p.initial_latents` is non-NULL, aligned, and readable for `p.initial_latents_len` floats.
unsafe fn latents_from_buffer(
    pipe: &LoadedPipeline,
    p: &sdrs_gen_params,
) -> Result<Tensor, Failure> {
    let f = pipe.latent_factor();
    let shape = [
        p.batch_size as usize,
        pipe.unet().config().in_channels,
        p.height as usize / f,
        p.width as usize / f,
    ];
    let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if expected != Some(p.initial_latents_len) {
        return Err(Failure::invalid(
            "initial_latents_len",
            format!(
                "the latents of this request have shape {shape:?} ({} floats), got {}",
                expected.map_or("too many".to_string(), |n| n.to_string()),
                p.initial_latents_len
            ),
        ));
    }
    if !p.initial_latents.is_aligned() {
        return Err(Failure::invalid(
            "initial_latents",
            "the pointer is not aligned for float",
        ));
    }
    // SAFETY: non-NULL, aligned (checked), readable for `initial_latents_len` floats (the
    // caller's contract); the length is bounded by in-range sizes, so the byte size fits isize.
    let values = unsafe { std::slice::from_raw_parts(p.initial_latents, p.initial_latents_len) };
    Ok(Tensor::from_vec(values.to_vec(), shape, Device::Cpu)?)
}

/// A C string copy of an infotext (which cannot contain NUL, as it is built from C strings).
pub(crate) fn to_cstring(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).unwrap_or_default()
}
