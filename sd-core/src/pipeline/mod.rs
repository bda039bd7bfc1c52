//! Text-to-image and image-to-image generation: [`Pipeline`] holds the loaded models, immutable
//! and shareable between threads; each [`Pipeline::generate`] call takes a [`GenerateRequest`].
//!
//! The loop is diffusers' `StableDiffusionPipeline` / `StableDiffusionImg2ImgPipeline`, step for
//! step and draw for draw, so that the same seed gives the same latents: the initial noise (or,
//! for img2img, the encoder sample and then the added noise), then per step the model input
//! scaling, one UNet pass over `[uncond, cond]` in one batch, guidance, the scheduler step (and
//! its noise draw, for ancestral samplers), and finally the autoencoder decode.
//!
//! The text conditioning follows AUTOMATIC1111 by default ([`conditioning`]): prompt editing and
//! alternation change it at the steps A1111 changes it, and each `AND` part adds a block to the
//! UNet batch (`[uncond, cond₀, cond₁, …]`), combined as A1111's `combine_denoised`.

mod adapters;
pub mod conditioning;
mod request;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use adapters::{AdapterReport, HypernetworkUse, SkippedEmbedding};
pub use conditioning::{Conditioning, PromptSyntax, UsedEmbedding};
pub use request::{GenerateRequest, MAX_BATCH, MAX_IMAGE_SIDE, MAX_STEPS};

use adapters::{AdapterSet, ModelVariant, VariantCache};
use conditioning::{EncodeOptions, ParsedPrompts, StepBatch, StepContext};

use crate::adapters::EmbeddingSet;
use crate::error::{Error, Result};
use crate::image::{self, GenerationInfo, RgbImage};
use crate::models::{
    AutoencoderKL, ClipConfig, ClipTextModel, UNet2DConditionModel, UNetConfig, VaeConfig,
};
use crate::noise::TorchRng;
use crate::prompt::{DEFAULT_COMMA_BACKTRACK, ExtraNetworkTag};
use crate::schedulers::{self, SchedulerConfig};
use crate::tensor::{Device, Tensor};
use crate::tokenizer::Tokenizer;
use crate::weights::{LoadOptions as WeightLoadOptions, ModelFiles};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The device to run on. Default: the CPU.
    pub device: Device,
    /// For single-file checkpoints that carry EMA weights, use them for the UNet instead of the
    /// regular weights. Default: false (as diffusers and AUTOMATIC1111 do).
    pub prefer_ema: bool,
    /// A diffusers-layout folder whose `*/config.json` files describe a single-file checkpoint
    /// whose configuration cannot be inferred from its tensor shapes (non-standard sizes).
    /// Default: none (infer from the shapes with SD 1.x defaults).
    pub config_dir: Option<PathBuf>,
}

/// Where a step of the generation is, for progress reporting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Steps completed, from 1 to `total_steps`.
    pub step: usize,
    /// Denoising steps this call runs: fewer than requested for img2img, and one more for PNDM,
    /// whose first step runs twice as in diffusers' PLMS.
    pub total_steps: usize,
    /// The model timestep of the step just completed.
    pub timestep: f64,
}

/// The result of one [`Pipeline::generate`] call.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The images, `batch_size` of them.
    pub images: Vec<RgbImage>,
    /// The final latents before decoding, NCHW `[batch, latent_channels, h/8, w/8]`.
    pub latents: Tensor,
    /// The A1111-style infotext of each image (the PNG `parameters` text).
    pub infotexts: Vec<String>,
    /// The textual-inversion embeddings the prompts used (their `TI hashes` are in the infotext).
    pub embeddings_used: Vec<UsedEmbedding>,
    /// The extra-network tags (`<lora:…>`, `<hypernet:…>`) that were taken out of the prompt.
    pub extra_networks: Vec<ExtraNetworkTag>,
    /// What the LoRAs and hypernetworks did: per LoRA the modules patched and every key of its
    /// file that was not applied, by name, with the reason.
    pub adapters: AdapterReport,
}

/// Most rows (images × UNet evaluations per image) run as one UNet batch; beyond it (many `AND`
/// parts on a large batch) each block of the batch runs on its own.
const MAX_UNET_ROWS: usize = 2 * MAX_BATCH;

/// A loaded Stable Diffusion model. Immutable after loading: share it between threads (it is
/// `Send + Sync`) and call [`generate`](Self::generate) from several at once.
#[derive(Debug)]
pub struct Pipeline {
    tokenizer: Tokenizer,
    text_encoder: ClipTextModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler_config: SchedulerConfig,
    device: Device,
    model_path: PathBuf,
    model_name: String,
    model_hash: OnceLock<Option<String>>,
    /// Models patched by the adapter sets used most recently.
    variants: VariantCache,
}

/// The models one generation runs: the loaded ones, or a variant with adapters applied.
enum Models<'a> {
    Base(&'a Pipeline),
    Adapted(Arc<ModelVariant>),
}

impl Models<'_> {
    fn text_encoder(&self) -> &ClipTextModel {
        match self {
            Models::Base(p) => &p.text_encoder,
            Models::Adapted(v) => &v.text_encoder,
        }
    }

    fn unet(&self) -> &UNet2DConditionModel {
        match self {
            Models::Base(p) => &p.unet,
            Models::Adapted(v) => &v.unet,
        }
    }

    fn report(&self) -> AdapterReport {
        match self {
            Models::Base(_) => AdapterReport::default(),
            Models::Adapted(v) => v.report.clone(),
        }
    }
}

impl Pipeline {
    /// Loads a model from a diffusers folder or a single-file checkpoint (original layout).
    ///
    /// # Errors
    /// A missing file, an unrecognised layout, a missing or mis-shaped tensor (named with its
    /// file and both shapes), or an unavailable device.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let files = ModelFiles::open(
            path,
            &WeightLoadOptions {
                prefer_ema: options.prefer_ema,
                ..WeightLoadOptions::default()
            },
        )?;
        let config_json = |component: &str,
                           embedded: &Option<serde_json::Value>|
         -> Result<Option<(serde_json::Value, String)>> {
            if let Some(dir) = &options.config_dir {
                let file = dir.join(component).join(if component == "scheduler" {
                    "scheduler_config.json"
                } else {
                    "config.json"
                });
                if file.exists() {
                    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
                    let json = serde_json::from_str(&text).map_err(|e| Error::InvalidConfig {
                        path: file.clone(),
                        reason: e.to_string(),
                    })?;
                    return Ok(Some((json, file.display().to_string())));
                }
            }
            Ok(embedded.clone().map(|j| {
                (
                    j,
                    path.join(component)
                        .join("config.json")
                        .display()
                        .to_string(),
                )
            }))
        };
        let clip_config = match config_json("text_encoder", &files.text_encoder_config)? {
            Some((json, origin)) => ClipConfig::from_json(&json, &origin)?,
            None => infer::clip_config(&files)?,
        };
        let unet_config = match config_json("unet", &files.unet_config)? {
            Some((json, origin)) => UNetConfig::from_json(&json, &origin)?,
            None => infer::unet_config(&files)?,
        };
        let vae_config = match config_json("vae", &files.vae_config)? {
            Some((json, origin)) => VaeConfig::from_json(&json, &origin)?,
            None => infer::vae_config(&files)?,
        };
        let scheduler_config = match config_json("scheduler", &files.scheduler_config)? {
            Some((json, origin)) => {
                SchedulerConfig::from_json_str(&json.to_string()).map_err(|e| {
                    Error::InvalidConfig {
                        path: origin.into(),
                        reason: e.to_string(),
                    }
                })?
            }
            None => SchedulerConfig::sd_v1_5(),
        };
        check_compatible(path, &clip_config, &unet_config, &vae_config)?;
        let tokenizer = match &files.tokenizer_dir {
            Some(dir) => Tokenizer::from_dir(dir)?,
            None => Tokenizer::clip()?,
        };
        let device = options.device;
        let text_encoder =
            ClipTextModel::new(&Arc::new(files.text_encoder).view(device), &clip_config)?;
        let unet = UNet2DConditionModel::new(&Arc::new(files.unet).view(device), &unet_config)?;
        let vae = AutoencoderKL::new(&Arc::new(files.vae).view(device), &vae_config)?;
        let model_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Pipeline {
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler_config,
            device,
            model_path: path.to_path_buf(),
            model_name,
            model_hash: OnceLock::new(),
            variants: VariantCache::default(),
        })
    }

    /// The device the models run on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The text encoder.
    pub fn text_encoder(&self) -> &ClipTextModel {
        &self.text_encoder
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The autoencoder.
    pub fn vae(&self) -> &AutoencoderKL {
        &self.vae
    }

    /// The noise-schedule configuration the samplers are built from (the model's
    /// `scheduler_config.json`, or SD 1.5's).
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The image size the model was trained at, `(width, height)` in pixels: what diffusers uses
    /// when no size is given (512x512 for SD 1.x).
    pub fn default_size(&self) -> (usize, usize) {
        let side = self.unet.config().sample_size * self.latent_factor();
        (side, side)
    }

    /// Pixels per latent along each axis (8 for SD models).
    pub fn latent_factor(&self) -> usize {
        self.vae.config().downscale_factor()
    }

    /// The model file's A1111 short hash (sha256, first 10 hex digits), computed on first use;
    /// `None` for a folder.
    pub fn model_hash(&self) -> Option<&str> {
        self.model_hash
            .get_or_init(|| {
                if self.model_path.is_file() {
                    image::model_hash(&self.model_path).ok()
                } else {
                    None
                }
            })
            .as_deref()
    }

    /// Encodes a prompt into `[1, 77, hidden]` conditioning as diffusers does (the text as
    /// written, truncated to 77 tokens; what [`PromptSyntax::Plain`] uses).
    pub fn encode_prompt(&self, prompt: &str, clip_skip: usize) -> Result<Tensor> {
        let ids = self
            .tokenizer
            .encode_padded(prompt, self.text_encoder.config().max_position_embeddings)?;
        self.text_encoder.forward(&[ids], clip_skip)
    }

    /// The text conditioning of `request` for every step: its prompts parsed with
    /// `request.prompt_syntax` and encoded with this model's text encoder (see [`conditioning`]),
    /// patched by the text-encoder part of the request's LoRAs and its prompt's `<lora:…>` tags.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `prompt`, `negative_prompt`, `steps` or `clip_skip`
    /// (prompt limits, a malformed `(a:1.2.3)` weight, a tag naming no file), an adapter's
    /// loading or application error, or a device error.
    pub fn conditioning(&self, request: &GenerateRequest) -> Result<Conditioning> {
        let parsed = self.parse(request)?;
        let set = self.adapter_set(request, parsed.extra_networks())?;
        let models = self.models(&set)?;
        let embeddings = self.embeddings(request, &set, &models);
        self.encode(request, &parsed, &embeddings, &models)
    }

    /// Generates images. `progress` is called after every denoising step on the calling thread;
    /// returning `false` cancels with [`Error::Cancelled`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the offending field, an adapter's loading or
    /// application error, [`Error::Cancelled`], or a device error.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Generation> {
        request.validate(self.latent_factor())?;
        let parsed = self.parse(request)?;
        let set = self.adapter_set(request, parsed.extra_networks())?;
        let models = self.models(&set)?;
        let embeddings = self.embeddings(request, &set, &models);
        let conditioning = self.encode(request, &parsed, &embeddings, &models)?;
        let mut generation = self.run(request, &conditioning, &set, &models, progress)?;
        generation.adapters.embeddings_skipped = embeddings
            .skipped()
            .iter()
            .zip(embeddings.skip_reasons())
            .map(|(name, reason)| SkippedEmbedding {
                name: name.clone(),
                reason: reason.clone(),
            })
            .collect();
        Ok(generation)
    }

    /// [`generate`](Self::generate) with the text conditioning given instead of computed from
    /// the request's prompts (which then only go into the infotext): for conditioning computed
    /// once and reused, built with a patched text encoder, or edited. The UNet part of the
    /// request's adapters and of the conditioning's `<lora:…>`/`<hypernet:…>` tags applies.
    ///
    /// # Errors
    /// As [`generate`](Self::generate); [`Error::InvalidArgument`] naming `conditioning` when it
    /// is malformed ([`Conditioning::validate`]) or its width is not the UNet's.
    pub fn generate_with_conditioning(
        &self,
        request: &GenerateRequest,
        conditioning: &Conditioning,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Generation> {
        request.validate(self.latent_factor())?;
        let set = self.adapter_set(request, &conditioning.extra_networks)?;
        let models = self.models(&set)?;
        self.run(request, conditioning, &set, &models, progress)
    }

    /// Frees the models patched for earlier adapter sets (kept so that the next generation
    /// with the same set starts at once). Generations running now keep theirs until they end.
    pub fn release_adapter_cache(&self) -> Result<()> {
        self.variants.clear()
    }

    fn parse(&self, request: &GenerateRequest) -> Result<ParsedPrompts> {
        ParsedPrompts::parse(
            &request.prompt,
            &request.negative_prompt,
            request.steps,
            request.prompt_syntax,
        )
    }

    fn adapter_set(
        &self,
        request: &GenerateRequest,
        tags: &[ExtraNetworkTag],
    ) -> Result<AdapterSet> {
        AdapterSet::resolve(
            &request.loras,
            &request.hypernetworks,
            tags,
            request.adapter_library.as_deref(),
        )
    }

    fn models(&self, set: &AdapterSet) -> Result<Models<'_>> {
        if set.is_empty() {
            return Ok(Models::Base(self));
        }
        Ok(Models::Adapted(self.variants.get(
            set,
            &self.text_encoder,
            &self.unet,
            self.device,
        )?))
    }

    /// The embeddings the request's prompts can trigger: those bundled in its LoRAs first, so
    /// that one of the same name given by the caller wins (EmbeddingSet keeps the later of two
    /// names), as in A1111.
    fn embeddings(
        &self,
        request: &GenerateRequest,
        set: &AdapterSet,
        models: &Models<'_>,
    ) -> EmbeddingSet {
        let mut embeddings = set.bundled_embeddings();
        embeddings.extend(request.embeddings.iter().cloned());
        EmbeddingSet::new(
            &self.tokenizer,
            models.text_encoder().config().hidden_size,
            &embeddings,
        )
    }

    fn encode(
        &self,
        request: &GenerateRequest,
        parsed: &ParsedPrompts,
        embeddings: &EmbeddingSet,
        models: &Models<'_>,
    ) -> Result<Conditioning> {
        parsed.encode(
            &self.tokenizer,
            models.text_encoder(),
            embeddings,
            &EncodeOptions {
                clip_skip: request.clip_skip,
                emphasis: request.emphasis,
                comma_backtrack: DEFAULT_COMMA_BACKTRACK,
                guidance_scale: request.guidance_scale,
            },
        )
    }

    fn run(
        &self,
        request: &GenerateRequest,
        conditioning: &Conditioning,
        set: &AdapterSet,
        models: &Models<'_>,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Generation> {
        let unet = models.unet();
        let factor = self.latent_factor();
        let b = request.batch_size;
        let (lh, lw) = (request.height / factor, request.width / factor);
        let latent_channels = unet.config().in_channels;
        let latent_shape = [b, latent_channels, lh, lw];

        let mut context = StepContext::new(conditioning, b, request.pad_cond_uncond)?;
        let width = conditioning
            .conds
            .first()
            .and_then(|c| c.schedule.segments.first())
            .map_or(0, |s| s.cond.dims()[2]);
        if width != unet.config().cross_attention_dim {
            return Err(Error::invalid_argument(
                "conditioning",
                format!(
                    "width {width} differs from the UNet's cross-attention width {}",
                    unet.config().cross_attention_dim
                ),
            ));
        }
        let groups = context.groups();

        let mut scheduler =
            schedulers::build(request.scheduler, &self.scheduler_config, request.steps)?;
        let mut rng = TorchRng::new(request.seed);
        let vae_scale = self.vae.config().scaling_factor as f32;

        let (mut latents, start) = match &request.init_image {
            None => {
                let noise = match &request.initial_latents {
                    Some(l) => {
                        if l.dims() != latent_shape {
                            return Err(Error::invalid_argument(
                                "initial_latents",
                                format!("shape {} does not match {:?}", l.shape(), latent_shape),
                            ));
                        }
                        if let Some(i) = l.to_vec()?.iter().position(|v| !v.is_finite()) {
                            return Err(Error::invalid_argument(
                                "initial_latents",
                                format!("value {i} (flat NCHW index) is not finite"),
                            ));
                        }
                        l.to_device(self.device)?
                    }
                    None => rng.randn_tensor(latent_shape, self.device)?,
                };
                (noise.scale(scheduler.init_noise_sigma() as f32)?, 0)
            }
            Some(img) => {
                let start = schedulers::img2img_start(request.steps, request.strength)?;
                let img = if img.width != request.width || img.height != request.height {
                    image::resize_lanczos(img, request.width, request.height)?
                } else {
                    img.clone()
                };
                let pixels =
                    image::to_tensor(std::slice::from_ref(&img))?.to_device(self.device)?;
                let (mean, std) = self.vae.encode(&pixels)?;
                let sample = rng.randn_tensor(mean.shape().clone(), self.device)?;
                let init = mean.add(&std.mul(&sample)?)?.scale(vae_scale)?;
                let init = Tensor::cat(&vec![&init; b], 0)?;
                let noise = rng.randn_tensor(latent_shape, self.device)?;
                (scheduler.add_noise(&init, &noise, start)?, start)
            }
        };

        let timesteps: Vec<f64> = scheduler.timesteps().to_vec();
        let total = timesteps.len() - start;
        for (i, &t) in timesteps.iter().enumerate().skip(start) {
            // The conditioning step counts model evaluations from 0, as A1111's CFGDenoiser does;
            // schedules were computed over `request.steps`. For img2img A1111 also schedules over
            // the full step count and starts its counter at 0 on the first step that runs
            // (`sd_samplers_kdiffusion.sample_img2img` → `initialize` sets `step = 0`), so an
            // edit at step N happens N steps into the shortened run; the same is done here.
            let step = i - start;
            let evaluate = |context: &Tensor, groups: usize| -> Result<Tensor> {
                if groups * b <= MAX_UNET_ROWS {
                    let model_in = if groups > 1 {
                        Tensor::cat(&vec![&latents; groups], 0)?
                    } else {
                        latents.clone()
                    };
                    let model_in = scheduler.scale_model_input(&model_in, i)?;
                    unet.forward(&model_in, t, context)
                } else {
                    let model_in = scheduler.scale_model_input(&latents, i)?;
                    let blocks = (0..groups)
                        .map(|g| unet.forward(&model_in, t, &context.narrow(0, g * b, b)?))
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&blocks.iter().collect::<Vec<_>>(), 0)
                }
            };
            let out = match context.at(step)? {
                StepBatch::Joint(all) => evaluate(all, groups)?,
                // The negative prompt's token count differs: its own pass, as A1111 does
                // without its padding option.
                StepBatch::Split { uncond, conds } => {
                    let u = evaluate(uncond, 1)?;
                    let c = evaluate(conds, groups - 1)?;
                    Tensor::cat(&[&u, &c], 0)?
                }
            };
            let noise_pred = context.combine(out, request.guidance_scale)?;
            let step_noise = if scheduler.needs_noise() {
                Some(rng.randn_tensor(latent_shape, self.device)?)
            } else {
                None
            };
            latents = scheduler.step(&noise_pred, i, &latents, step_noise.as_ref())?;
            let done = i + 1 - start;
            if !progress(&Progress {
                step: done,
                total_steps: total,
                timestep: t,
            }) {
                return Err(Error::Cancelled { step: done });
            }
        }

        let decoded = self.vae.decode(&latents.scale(1.0 / vae_scale)?)?;
        let images = image::from_tensor(&decoded)?;
        let padded = context.padded();
        let infotexts = (0..b)
            .map(|i| self.infotext(request, conditioning, set, padded, i))
            .collect();
        Ok(Generation {
            images,
            latents,
            infotexts,
            embeddings_used: conditioning.embeddings_used.clone(),
            extra_networks: conditioning.extra_networks.clone(),
            adapters: models.report(),
        })
    }

    fn infotext(
        &self,
        request: &GenerateRequest,
        conditioning: &Conditioning,
        set: &AdapterSet,
        padded: bool,
        index: usize,
    ) -> String {
        let (sampler, schedule) = (
            request.scheduler.infotext_sampler(),
            request.scheduler.infotext_schedule_type(),
        );
        let mut extra = Vec::new();
        if request.batch_size > 1 {
            extra.push(("Batch size".to_string(), request.batch_size.to_string()));
            extra.push(("Batch pos".to_string(), index.to_string()));
        }
        // A1111's order: what the text encoder adds (`TI hashes`, `Emphasis`), then what the
        // sampler adds (`Pad conds`), then the networks (`Lora hashes`).
        extra.extend(conditioning.infotext.iter().cloned());
        if padded {
            extra.push(("Pad conds".to_string(), "True".to_string()));
        }
        if let Some(hashes) = set.lora_hashes() {
            extra.push(("Lora hashes".to_string(), hashes));
        }
        if request.prompt_syntax == PromptSyntax::Plain {
            extra.push((
                "Prompt syntax".to_string(),
                PromptSyntax::Plain.name().to_string(),
            ));
        }
        GenerationInfo {
            // Adapters given outside the prompt are written as the tags A1111 would need to
            // reproduce the image.
            prompt: format!("{}{}", request.prompt, set.request_tags()),
            negative_prompt: request.negative_prompt.clone(),
            steps: request.steps as u32,
            sampler: sampler.to_string(),
            schedule_type: schedule.map(str::to_string),
            cfg_scale: request.guidance_scale as f32,
            seed: request.seed,
            width: request.width as u32,
            height: request.height as u32,
            model_hash: self.model_hash().map(str::to_string),
            model_name: Some(self.model_name.clone()).filter(|n| !n.is_empty()),
            denoising_strength: request.init_image.as_ref().map(|_| request.strength as f32),
            clip_skip: Some(request.clip_skip as u32).filter(|&c| c > 1),
            extra,
            version: Some(format!("sdrs {}", env!("CARGO_PKG_VERSION"))),
        }
        .to_infotext()
    }
}

/// Checks that the three models of a checkpoint fit together, so that a mismatched component is
/// reported at load time, naming both sizes, rather than failing inside the first generation.
fn check_compatible(
    path: &Path,
    clip: &ClipConfig,
    unet: &UNetConfig,
    vae: &VaeConfig,
) -> Result<()> {
    let bad = |reason: String| Error::InvalidConfig {
        path: path.to_path_buf(),
        reason,
    };
    if clip.hidden_size != unet.cross_attention_dim {
        return Err(bad(format!(
            "the text encoder is {} wide but the UNet's cross-attention expects {}",
            clip.hidden_size, unet.cross_attention_dim
        )));
    }
    if unet.in_channels != vae.latent_channels || unet.out_channels != vae.latent_channels {
        return Err(bad(format!(
            "the UNet maps {} to {} latent channels but the autoencoder has {} (inpainting and \
             other extended-input models are not supported yet)",
            unet.in_channels, unet.out_channels, vae.latent_channels
        )));
    }
    Ok(())
}

mod infer;
