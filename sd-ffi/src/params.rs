//! The parameter structs of `sdrs_pipeline_load` and `sdrs_pipeline_generate`, their defaults,
//! and the enums whose values their `uint32_t` fields take.

use std::ffi::{CStr, c_char, c_void};

use sd_core::Device;
use sd_core::schedulers::SchedulerKind;

use crate::error::Failure;

/// The samplers, for `sdrs_gen_params.scheduler`. The field is a `uint32_t`; any other value
/// is rejected with `SDRS_STATUS_INVALID_ARGUMENT`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sdrs_scheduler {
    /// DDIM, deterministic (eta = 0).
    Ddim = 0,
    /// PNDM's pseudo linear multistep method (PLMS), the SD 1.5 default.
    Pndm = 1,
    /// Euler's method.
    Euler = 2,
    /// Euler ancestral (draws fresh noise every step).
    EulerAncestral = 3,
    /// Fourth-order linear multistep.
    Lms = 4,
    /// DPM-Solver++ (2M).
    DpmPp2m = 5,
    /// DPM-Solver++ (2M) with Karras noise levels.
    DpmPp2mKarras = 6,
}

/// The kinds of compute device, for `sdrs_load_params.device_kind`. The field is a `uint32_t`;
/// any other value is rejected with `SDRS_STATUS_INVALID_ARGUMENT`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sdrs_device_kind {
    /// The host CPU.
    Cpu = 0,
    /// A CUDA GPU; needs a build with CUDA support, otherwise loading fails with
    /// `SDRS_STATUS_DEVICE` or `SDRS_STATUS_UNSUPPORTED`.
    Cuda = 1,
}

/// Turns a `uint32_t` field into a scheduler, rejecting values outside the enum.
pub(crate) fn scheduler_from_u32(value: u32) -> Result<SchedulerKind, Failure> {
    Ok(match value {
        v if v == sdrs_scheduler::Ddim as u32 => SchedulerKind::Ddim,
        v if v == sdrs_scheduler::Pndm as u32 => SchedulerKind::Pndm,
        v if v == sdrs_scheduler::Euler as u32 => SchedulerKind::Euler,
        v if v == sdrs_scheduler::EulerAncestral as u32 => SchedulerKind::EulerAncestral,
        v if v == sdrs_scheduler::Lms as u32 => SchedulerKind::Lms,
        v if v == sdrs_scheduler::DpmPp2m as u32 => SchedulerKind::DpmPp2m,
        v if v == sdrs_scheduler::DpmPp2mKarras as u32 => SchedulerKind::DpmPp2mKarras,
        other => {
            return Err(Failure::invalid(
                "scheduler",
                format!("{other} is not an sdrs_scheduler value (0 to 6)"),
            ));
        }
    })
}

/// Turns the device fields into a device, rejecting unknown kinds.
pub(crate) fn device_from(kind: u32, ordinal: u32) -> Result<Device, Failure> {
    match kind {
        k if k == sdrs_device_kind::Cpu as u32 => Ok(Device::Cpu),
        k if k == sdrs_device_kind::Cuda as u32 => Ok(Device::Cuda(ordinal as usize)),
        other => Err(Failure::invalid(
            "device_kind",
            format!("{other} is not an sdrs_device_kind value (0 or 1)"),
        )),
    }
}

/// Reads an optional C string argument: `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string valid for the duration of the call.
pub(crate) unsafe fn opt_str<'a>(
    ptr: *const c_char,
    name: &str,
) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated, valid for the call (the caller's contract).
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str().map(Some).map_err(|e| Failure::utf8(name, e))
}

/// Called after each denoising step of `sdrs_pipeline_generate`, with `step` from 1 to
/// `total_steps` (fewer steps than requested run for img2img). Return true to continue, false
/// to cancel: the call then returns `SDRS_STATUS_CANCELLED` and produces no images.
///
/// It runs on the thread that called `sdrs_pipeline_generate`, synchronously, never after that
/// call returns. It must not unwind into the library (no C++ exception, no `longjmp`) and must
/// not free the pipeline it reports on.
pub type sdrs_progress_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, step: u32, total_steps: u32) -> bool>;

/// How `sdrs_pipeline_load` loads a model. Get one from `sdrs_load_params_default()`, change
/// fields, pass its address. The library does not keep the pointer or the strings after the
/// call returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sdrs_load_params {
    /// A `sdrs_device_kind` value: where the model runs. Default: `SDRS_DEVICE_KIND_CPU` (0).
    pub device_kind: u32,
    /// The CUDA device ordinal (0 = the first GPU); ignored for the CPU. Default: 0.
    pub device_ordinal: u32,
    /// A diffusers-layout folder whose `<component>/config.json` files describe a single-file checkpoint
    /// whose configuration cannot be inferred from its tensor shapes (UTF-8, NUL-terminated).
    /// Default: NULL, which means: infer the configuration from the shapes.
    pub config_dir: *const c_char,
    /// For single-file checkpoints that carry EMA weights, use those for the UNet. Default:
    /// false (use the regular weights, as diffusers does).
    pub prefer_ema: bool,
}

/// One generation for `sdrs_pipeline_generate`: text-to-image, or image-to-image when an init
/// image is given. Get one from `sdrs_gen_params_default()`, change fields, pass its address.
/// Strings are UTF-8 and NUL-terminated; buffers are read during the call only and not kept.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sdrs_gen_params {
    /// What to draw. Default: NULL, which means the empty prompt.
    pub prompt: *const c_char,
    /// What to steer away from. Default: NULL, which means the empty prompt (the unconditional
    /// embedding).
    pub negative_prompt: *const c_char,
    /// Image width in pixels: a positive multiple of 8 (the model's latent factor), at most
    /// 4096. Default: 512. 0 is rejected. `sdrs_pipeline_default_size` gives the model's size.
    pub width: u32,
    /// Image height in pixels, with the same rules as `width`. Default: 512.
    pub height: u32,
    /// Denoising steps, 1 to 1000. Default: 20. For img2img only `steps * strength` of them
    /// run. 0 is rejected.
    pub steps: u32,
    /// Number of images, 1 to 64. Default: 1. 0 is rejected.
    pub batch_size: u32,
    /// CLIP skip as AUTOMATIC1111 counts it: 1 = the last layer, 2 = the one before. Default: 1.
    /// 0 is rejected.
    pub clip_skip: u32,
    /// A `sdrs_scheduler` value: the sampler. Default: `SDRS_SCHEDULER_PNDM` (1). 0 is
    /// `SDRS_SCHEDULER_DDIM`.
    pub scheduler: u32,
    /// Classifier-free guidance scale; values <= 1 disable guidance (one UNet pass per step,
    /// the negative prompt is unused). Default: 7.5. NaN and infinities are rejected.
    pub guidance_scale: f64,
    /// Seed of the noise generator (the same generator as PyTorch's
    /// `torch.Generator("cpu").manual_seed(seed)`). Default: 0, an ordinary seed.
    pub seed: u64,
    /// img2img: a PNG or JPEG file to start from, resized (Lanczos) to `width` x `height` when
    /// its size differs. Default: NULL (no file). Must not be set together with
    /// `init_image_data`.
    pub init_image_path: *const c_char,
    /// img2img: the starting image as 8-bit RGB pixels, row-major, `R G B` per pixel, no row
    /// padding; resized like `init_image_path`. Default: NULL (no image).
    pub init_image_data: *const u8,
    /// Length of `init_image_data` in bytes: must equal `init_image_width *
    /// init_image_height * 3`. Default: 0. Ignored when `init_image_data` is NULL.
    pub init_image_len: usize,
    /// Width of `init_image_data` in pixels, 1 to 16384. Default: 0. Ignored when
    /// `init_image_data` is NULL.
    pub init_image_width: u32,
    /// Height of `init_image_data` in pixels, 1 to 16384. Default: 0. Ignored when
    /// `init_image_data` is NULL.
    pub init_image_height: u32,
    /// img2img strength in [0, 1]: how much of the schedule runs on the noised init image
    /// (0 = the image unchanged, 1 = ignore it). Default: 0.8. Ignored without an init image.
    pub strength: f64,
    /// Text-to-image: unit-variance initial noise used instead of the seeded draw, `f32`
    /// values laid out NCHW as `[batch_size, 4, height / 8, width / 8]` (the latent channels
    /// of the model; 4 for Stable Diffusion), exactly like diffusers' `latents=` argument.
    /// Default: NULL (draw the noise from `seed`). Not allowed with an init image.
    pub initial_latents: *const f32,
    /// Number of `float` values in `initial_latents`; must match the shape above. Default: 0.
    /// Ignored when `initial_latents` is NULL.
    pub initial_latents_len: usize,
    /// Called after each step; see `sdrs_progress_fn`. Default: NULL (no reports, no way to
    /// cancel).
    pub progress: sdrs_progress_fn,
    /// Passed unchanged as the first argument of `progress`. Default: NULL.
    pub progress_user_data: *mut c_void,
}

/// The default load parameters: CPU, no configuration folder, regular (non-EMA) weights.
#[unsafe(no_mangle)]
pub extern "C" fn sdrs_load_params_default() -> sdrs_load_params {
    crate::panic::ffi_boundary! { load_params_default() }
}

fn load_params_default() -> sdrs_load_params {
    sdrs_load_params {
        device_kind: sdrs_device_kind::Cpu as u32,
        device_ordinal: 0,
        config_dir: std::ptr::null(),
        prefer_ema: false,
    }
}

impl crate::panic::Neutral for sdrs_load_params {
    fn neutral() -> Self {
        load_params_default()
    }
}

/// The default generation parameters: empty prompts, 512x512, 20 steps, guidance 7.5, PNDM,
/// seed 0, one image, CLIP skip 1, no init image (strength 0.8), seeded noise, no callback.
/// Set at least `prompt`.
#[unsafe(no_mangle)]
pub extern "C" fn sdrs_gen_params_default() -> sdrs_gen_params {
    crate::panic::ffi_boundary! { gen_params_default() }
}

fn gen_params_default() -> sdrs_gen_params {
    sdrs_gen_params {
        prompt: std::ptr::null(),
        negative_prompt: std::ptr::null(),
        width: 512,
        height: 512,
        steps: 20,
        batch_size: 1,
        clip_skip: 1,
        scheduler: sdrs_scheduler::Pndm as u32,
        guidance_scale: 7.5,
        seed: 0,
        init_image_path: std::ptr::null(),
        init_image_data: std::ptr::null(),
        init_image_len: 0,
        init_image_width: 0,
        init_image_height: 0,
        strength: 0.8,
        initial_latents: std::ptr::null(),
        initial_latents_len: 0,
        progress: None,
        progress_user_data: std::ptr::null_mut(),
    }
}

impl crate::panic::Neutral for sdrs_gen_params {
    fn neutral() -> Self {
        gen_params_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sd_core::pipeline::GenerateRequest;

    #[test]
    fn defaults_match_the_core_request_defaults() {
        let p = sdrs_gen_params_default();
        let r = GenerateRequest::new("");
        assert_eq!(p.width as usize, r.width);
        assert_eq!(p.height as usize, r.height);
        assert_eq!(p.steps as usize, r.steps);
        assert_eq!(p.batch_size as usize, r.batch_size);
        assert_eq!(p.clip_skip as usize, r.clip_skip);
        assert_eq!(p.guidance_scale, r.guidance_scale);
        assert_eq!(p.strength, r.strength);
        assert_eq!(p.seed, r.seed);
        assert_eq!(scheduler_from_u32(p.scheduler).ok(), Some(r.scheduler));
    }

    #[test]
    fn every_scheduler_value_maps_and_others_are_rejected() {
        for (i, kind) in SchedulerKind::ALL.iter().enumerate() {
            assert_eq!(scheduler_from_u32(i as u32).ok(), Some(*kind));
        }
        assert!(scheduler_from_u32(7).is_err());
        assert!(scheduler_from_u32(u32::MAX).is_err());
        assert!(device_from(2, 0).is_err());
        assert_eq!(device_from(1, 3).ok(), Some(Device::Cuda(3)));
    }
}
