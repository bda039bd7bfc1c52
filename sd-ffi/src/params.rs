//! The parameter structs of `sdrs_pipeline_load` and `sdrs_pipeline_generate`, their defaults,
//! and the enums whose values their `uint32_t` fields take.

use std::ffi::{CStr, c_char, c_void};

use sd_core::Device;
use sd_core::pipeline::PromptSyntax;
use sd_core::prompt::EmphasisMode;
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

/// How prompts are read, for `sdrs_gen_params.prompt_syntax`. The field is a `uint32_t`; any
/// other value is rejected with `SDRS_STATUS_INVALID_ARGUMENT`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sdrs_prompt_syntax {
    /// AUTOMATIC1111's prompt language: `(word:1.2)` emphasis, `[word]`, `BREAK`, prompts over
    /// 75 tokens, `[from:to:when]` editing, `[a|b]` alternation, `AND`, `<lora:…>` and
    /// `<hypernet:…>` tags, embeddings by name. Plain prompts of at most 75 tokens read the same
    /// in both syntaxes.
    A1111 = 0,
    /// The text as written, truncated to 77 tokens, as diffusers reads it.
    Plain = 1,
}

/// How `(text:1.2)` weights act (AUTOMATIC1111's "Emphasis mode"), for
/// `sdrs_gen_params.emphasis`. The field is a `uint32_t`; any other value is rejected.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sdrs_emphasis {
    /// Weights applied, then the mean of the hidden states restored (A1111's default).
    Original = 0,
    /// Weights applied without restoring the mean.
    NoNorm = 1,
    /// Brackets parsed (and removed from the text) but no weights applied.
    Ignore = 2,
    /// Brackets not parsed: they stay in the text.
    None = 3,
}

/// A LoRA / LyCORIS file for `sdrs_gen_params.loras`, with its strengths (1 is full strength;
/// 0 and negative values are allowed, non-finite ones rejected).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sdrs_lora {
    /// The file (UTF-8, NUL-terminated): `.safetensors`, `.pt`, `.ckpt` or `.bin`.
    pub path: *const c_char,
    /// Multiplier of its text-encoder modules.
    pub text_encoder_strength: f32,
    /// Multiplier of its UNet modules.
    pub unet_strength: f32,
}

/// A hypernetwork file (AUTOMATIC1111 `.pt`) for `sdrs_gen_params.hypernetworks`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sdrs_hypernetwork {
    /// The file (UTF-8, NUL-terminated).
    pub path: *const c_char,
    /// Its multiplier (1 is full strength).
    pub strength: f32,
}

/// Most adapters of each kind one generation accepts.
pub(crate) const MAX_ADAPTERS: usize = 256;

/// Turns a `uint32_t` field into a prompt syntax, rejecting values outside the enum.
pub(crate) fn prompt_syntax_from_u32(value: u32) -> Result<PromptSyntax, Failure> {
    match value {
        v if v == sdrs_prompt_syntax::A1111 as u32 => Ok(PromptSyntax::A1111),
        v if v == sdrs_prompt_syntax::Plain as u32 => Ok(PromptSyntax::Plain),
        other => Err(Failure::invalid(
            "prompt_syntax",
            format!("{other} is not an sdrs_prompt_syntax value (0 or 1)"),
        )),
    }
}

/// Turns a `uint32_t` field into an emphasis mode, rejecting values outside the enum.
pub(crate) fn emphasis_from_u32(value: u32) -> Result<EmphasisMode, Failure> {
    match value {
        v if v == sdrs_emphasis::Original as u32 => Ok(EmphasisMode::Original),
        v if v == sdrs_emphasis::NoNorm as u32 => Ok(EmphasisMode::NoNorm),
        v if v == sdrs_emphasis::Ignore as u32 => Ok(EmphasisMode::Ignore),
        v if v == sdrs_emphasis::None as u32 => Ok(EmphasisMode::None),
        other => Err(Failure::invalid(
            "emphasis",
            format!("{other} is not an sdrs_emphasis value (0 to 3)"),
        )),
    }
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
/// `total_steps`: the UNet passes this call runs, which are fewer than requested for img2img
/// and one more for PNDM (its first step runs twice, as in diffusers). Return true to continue, false
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
    /// What to draw, UTF-8, at most 32 KiB. Default: NULL, which means the empty prompt.
    pub prompt: *const c_char,
    /// What to steer away from, UTF-8, at most 32 KiB. Default: NULL, which means the empty
    /// prompt (the unconditional embedding).
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
    /// img2img strength in (0, 1]: how much of the schedule runs on the noised init image
    /// (near 0 = close to the image, 1 = ignore it); `steps * strength` must leave at least
    /// one step, as in diffusers. Default: 0.8. Ignored without an init image.
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
    /// A `sdrs_prompt_syntax` value: how the prompts are read. Default:
    /// `SDRS_PROMPT_SYNTAX_A1111` (0).
    pub prompt_syntax: u32,
    /// A `sdrs_emphasis` value (A1111 syntax only). Default: `SDRS_EMPHASIS_ORIGINAL` (0).
    pub emphasis: u32,
    /// When the prompt and the negative prompt encode to different token counts: false runs
    /// them in separate UNet passes (AUTOMATIC1111's default), true pads the shorter into one
    /// pass (its "Pad prompt/negative prompt" option). Default: false.
    pub pad_cond_uncond: bool,
    /// LoRA / LyCORIS files applied in order, before those the prompt's `<lora:…>` tags name;
    /// `lora_count` of them (at most 256). The pipeline keeps each file loaded (and the models
    /// patched for the most recent sets) while the file is unchanged. Default: NULL.
    pub loras: *const sdrs_lora,
    /// Number of entries in `loras`. Default: 0.
    pub lora_count: usize,
    /// Hypernetworks chained in order, before those the prompt's `<hypernet:…>` tags name;
    /// `hypernetwork_count` of them (at most 256). Default: NULL.
    pub hypernetworks: *const sdrs_hypernetwork,
    /// Number of entries in `hypernetworks`. Default: 0.
    pub hypernetwork_count: usize,
    /// Textual-inversion embedding files (UTF-8 paths), triggered by writing their names (file
    /// names without extension) in the prompt; `embedding_count` of them (at most 256).
    /// Default: NULL.
    pub embeddings: *const *const c_char,
    /// Number of entries in `embeddings`. Default: 0.
    pub embedding_count: usize,
    /// The folder where `<lora:NAME:…>` tags in the prompt are looked up (UTF-8). Default:
    /// NULL; a prompt with such a tag then fails naming the tag.
    pub lora_dir: *const c_char,
    /// The folder where `<hypernet:NAME:…>` tags are looked up (UTF-8). Default: NULL.
    pub hypernetwork_dir: *const c_char,
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
/// seed 0, one image, CLIP skip 1, no init image (strength 0.8), seeded noise, no callback,
/// A1111 prompt syntax with the original emphasis, no adapters.
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
        prompt_syntax: sdrs_prompt_syntax::A1111 as u32,
        emphasis: sdrs_emphasis::Original as u32,
        pad_cond_uncond: false,
        loras: std::ptr::null(),
        lora_count: 0,
        hypernetworks: std::ptr::null(),
        hypernetwork_count: 0,
        embeddings: std::ptr::null(),
        embedding_count: 0,
        lora_dir: std::ptr::null(),
        hypernetwork_dir: std::ptr::null(),
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
        assert_eq!(
            prompt_syntax_from_u32(p.prompt_syntax).ok(),
            Some(r.prompt_syntax)
        );
        assert_eq!(emphasis_from_u32(p.emphasis).ok(), Some(r.emphasis));
        assert_eq!(p.pad_cond_uncond, r.pad_cond_uncond);
    }

    #[test]
    fn every_scheduler_value_maps_and_others_are_rejected() {
        for (i, kind) in SchedulerKind::ALL.iter().enumerate() {
            assert_eq!(scheduler_from_u32(i as u32).ok(), Some(*kind));
        }
        assert!(scheduler_from_u32(7).is_err());
        assert!(scheduler_from_u32(u32::MAX).is_err());
        assert!(device_from(2, 0).is_err());
        assert!(prompt_syntax_from_u32(2).is_err());
        assert!(emphasis_from_u32(4).is_err());
        assert_eq!(device_from(1, 3).ok(), Some(Device::Cuda(3)));
    }
}
