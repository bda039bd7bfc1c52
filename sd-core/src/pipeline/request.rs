//! What a caller asks for: [`GenerateRequest`].

use std::sync::Arc;

use super::adapters::HypernetworkUse;
use super::conditioning::PromptSyntax;
use crate::adapters::{AdapterLibrary, Embedding, LoraUse};
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::prompt::EmphasisMode;
use crate::schedulers::SchedulerKind;
use crate::tensor::Tensor;

/// Largest width or height accepted, in pixels. Bounds memory: a 4096x4096 image needs about
/// 3 GiB of activations in the autoencoder.
pub const MAX_IMAGE_SIDE: usize = 4096;

/// Largest number of images per call.
pub const MAX_BATCH: usize = 64;

/// Largest number of denoising steps per call.
pub const MAX_STEPS: usize = 1000;

/// One generation request: text-to-image, or image-to-image when [`init_image`](Self::init_image)
/// is set.
///
/// Build it with [`GenerateRequest::new`] and override fields; every field documents its default.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The prompt, at most 32 KiB of UTF-8.
    pub prompt: String,
    /// What to steer away from, at most 32 KiB. Default: empty (the unconditional embedding).
    pub negative_prompt: String,
    /// Image width in pixels, a multiple of 8 (of the model's latent factor). Default: 512.
    pub width: usize,
    /// Image height in pixels, a multiple of 8. Default: 512.
    pub height: usize,
    /// Denoising steps. Default: 20. For img2img, only `steps × strength` of them run, as in
    /// diffusers; PNDM runs its first step twice (see [`Progress::total_steps`](crate::pipeline::Progress::total_steps)).
    pub steps: usize,
    /// Classifier-free guidance scale; values ≤ 1 disable guidance (one UNet pass per step) for a
    /// prompt without `AND` parts or a `:weight`. With those, A1111's combination
    /// `uncond + Σ weight·scale·(cond − uncond)` is used at any scale. Default: 7.5.
    pub guidance_scale: f64,
    /// The sampler. Default: [`SchedulerKind::Pndm`] (PLMS), the one SD 1.5's diffusers
    /// scheduler config names.
    pub scheduler: SchedulerKind,
    /// Seed of the noise generator (the same generator as `torch.Generator("cpu").manual_seed`).
    /// Default: 0.
    pub seed: u64,
    /// Number of images. Default: 1.
    pub batch_size: usize,
    /// CLIP skip, counted as AUTOMATIC1111 counts it (1 = last layer). Default: 1.
    pub clip_skip: usize,
    /// Starting image for img2img; it is resized to `width x height` (Lanczos) when it differs.
    /// Default: none (text-to-image).
    pub init_image: Option<RgbImage>,
    /// img2img strength in `(0, 1]`: how much of the schedule is run on the noised image;
    /// `steps × strength` must leave at least one step.
    /// Default: 0.8.
    pub strength: f64,
    /// Unit-variance initial noise `[batch, latent_channels, height/8, width/8]` (NCHW) used
    /// instead of the seeded draw, exactly like diffusers' `latents=` argument: it is scaled by
    /// the scheduler's initial sigma. Text-to-image only. Default: none.
    pub initial_latents: Option<Tensor>,
    /// How the prompts are read. Default: [`PromptSyntax::A1111`], AUTOMATIC1111's prompt
    /// language (emphasis, `BREAK`, prompts over 75 tokens, `[from:to:when]` editing, `[a|b]`
    /// alternation, `AND`, `<lora:…>` tags taken out of the text, embeddings by name).
    /// [`PromptSyntax::Plain`] reads them as diffusers does (truncated to 77 tokens, no syntax).
    /// A plain prompt without special syntax and of at most 75 tokens gives identical
    /// conditioning, and so identical images, in both.
    pub prompt_syntax: PromptSyntax,
    /// How `(text:1.2)` weights act (A1111's "Emphasis mode"); A1111 syntax only. Default:
    /// [`EmphasisMode::Original`] (weights applied, then the mean of the hidden states restored).
    pub emphasis: EmphasisMode,
    /// Textual-inversion embeddings the prompts can trigger by writing their names (A1111 syntax
    /// only). Embeddings whose width differs from the text encoder's are skipped, as A1111 skips
    /// them. Default: none.
    pub embeddings: Vec<Arc<Embedding>>,
    /// When the prompt and the negative prompt encode to different token counts (one is over
    /// 75 tokens): `false` runs them in separate UNet passes, as AUTOMATIC1111 does by default;
    /// `true` pads the shorter with empty-prompt chunks into one pass (A1111's "Pad
    /// prompt/negative prompt" option, recorded as `Pad conds: True`), which is faster and
    /// gives slightly different images. Default: false.
    pub pad_cond_uncond: bool,
    /// LoRA / LyCORIS adapters, each with its text-encoder and UNet strength, applied in order
    /// before those the prompt's `<lora:…>` tags name. The loaded model is not changed: the
    /// generation runs on patched copies of the layers they touch, cached for the next
    /// generation with the same set. Default: none.
    pub loras: Vec<LoraUse>,
    /// Hypernetworks, chained in order before those the prompt's `<hypernet:…>` tags name.
    /// Default: none.
    pub hypernetworks: Vec<HypernetworkUse>,
    /// The folders `<lora:NAME>` and `<hypernet:NAME>` tags are looked up in. Without one, a
    /// prompt with such a tag is an error naming the tag. Default: none.
    pub adapter_library: Option<Arc<AdapterLibrary>>,
}

impl GenerateRequest {
    /// A request for `prompt` with every other field at its default.
    pub fn new(prompt: impl Into<String>) -> Self {
        GenerateRequest {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            width: 512,
            height: 512,
            steps: 20,
            guidance_scale: 7.5,
            scheduler: SchedulerKind::Pndm,
            seed: 0,
            batch_size: 1,
            clip_skip: 1,
            init_image: None,
            strength: 0.8,
            initial_latents: None,
            prompt_syntax: PromptSyntax::A1111,
            emphasis: EmphasisMode::Original,
            embeddings: Vec::new(),
            pad_cond_uncond: false,
            loras: Vec::new(),
            hypernetworks: Vec::new(),
            adapter_library: None,
        }
    }

    /// Checks every field against the model's latent factor; errors name the field.
    pub(crate) fn validate(&self, latent_factor: usize) -> Result<()> {
        for (name, side) in [("width", self.width), ("height", self.height)] {
            if side == 0 || side % latent_factor != 0 || side > MAX_IMAGE_SIDE {
                return Err(Error::invalid_argument(
                    name,
                    format!(
                        "{side} must be a positive multiple of {latent_factor} and at most {MAX_IMAGE_SIDE}"
                    ),
                ));
            }
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(Error::invalid_argument(
                "steps",
                format!("{} must be between 1 and {MAX_STEPS}", self.steps),
            ));
        }
        if !self.guidance_scale.is_finite() {
            return Err(Error::invalid_argument(
                "guidance_scale",
                format!("{} is not a finite number", self.guidance_scale),
            ));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(Error::invalid_argument(
                "batch_size",
                format!("{} must be between 1 and {MAX_BATCH}", self.batch_size),
            ));
        }
        if self.clip_skip == 0 {
            return Err(Error::invalid_argument(
                "clip_skip",
                "must be at least 1 (1 = last layer)",
            ));
        }
        if self.prompt_syntax == PromptSyntax::Plain && !self.embeddings.is_empty() {
            return Err(Error::invalid_argument(
                "embeddings",
                "textual-inversion embeddings need the A1111 prompt syntax",
            ));
        }
        if self.init_image.is_some() {
            // The same checks, and messages, as the schedule's start step.
            crate::schedulers::img2img_start(self.steps, self.strength)?;
            if self.initial_latents.is_some() {
                return Err(Error::invalid_argument(
                    "initial_latents",
                    "cannot be combined with an init image (img2img draws its noise from the seed)",
                ));
            }
        }
        Ok(())
    }
}
