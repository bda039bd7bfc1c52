//! `Pipeline`: a loaded model, shareable between Python threads.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use sd_core::Device;
use sd_core::adapters::AdapterLibrary;
use sd_core::pipeline::{GenerateRequest, LoadOptions, Pipeline};
use sd_core::prompt::EmphasisMode;
use sd_core::schedulers::SchedulerKind;

use crate::adapters;
use crate::convert;
use crate::errors::{invalid_argument, to_py_err};
use crate::progress::Reporter;
use crate::result::PyGenerationResult;

/// The scheduler names `Pipeline.generate` accepts.
pub fn scheduler_names() -> Vec<&'static str> {
    SchedulerKind::ALL.iter().map(|k| k.as_str()).collect()
}

/// A loaded Stable Diffusion 1.x model.
///
/// Immutable after loading: one instance can be shared by several threads, which may call
/// ``generate`` at the same time (the GIL is released while it runs).
///
/// Example:
///     >>> import sdrs
///     >>> pipe = sdrs.Pipeline.from_file("model.safetensors")
///     >>> result = pipe.generate("a lighthouse at dusk", steps=20, seed=42)
///     >>> result.images[0].save("out.png")
#[pyclass(frozen, name = "Pipeline", module = "sdrs")]
pub struct PyPipeline {
    inner: Arc<Pipeline>,
    /// Adapter files named by path in `generate`, kept loaded while unchanged on disk.
    adapters: AdapterLibrary,
}

#[pymethods]
impl PyPipeline {
    /// Loads a model from a single-file checkpoint or a diffusers folder.
    ///
    /// The GIL is released while the weights load.
    ///
    /// Args:
    ///     path (str | os.PathLike[str]): a ``.safetensors`` or ``.ckpt`` file (original layout;
    ///         pickle checkpoints are read without running their code) or a diffusers folder.
    ///     device (str): ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Defaults to ``"cpu"``.
    ///     prefer_ema (bool): use the EMA UNet weights of a checkpoint that has them. Defaults
    ///         to ``False``.
    ///     config_dir (str | os.PathLike[str] | None): a diffusers-layout folder whose
    ///         ``*/config.json`` describe a checkpoint of non-standard size. Defaults to ``None``
    ///         (inferred from the tensor shapes).
    ///
    /// Returns:
    ///     Pipeline: the loaded model.
    ///
    /// Raises:
    ///     FileNotFoundError: ``path`` does not exist.
    ///     ModelLoadError: the file is malformed or does not fit a supported model.
    ///     InvalidArgumentError: ``device`` is not a device name.
    ///     DeviceError: the device is unavailable.
    ///
    /// Example:
    ///     >>> pipe = sdrs.Pipeline.from_file("tests/fixtures/tiny-sd", device="cpu")
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu", *, prefer_ema = false, config_dir = None))]
    fn from_file(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        prefer_ema: bool,
        config_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let device = Device::parse(device).map_err(to_py_err)?;
        let options = LoadOptions {
            device,
            prefer_ema,
            config_dir,
        };
        let pipeline = py
            .detach(|| Pipeline::load(&path, &options))
            .map_err(to_py_err)?;
        Ok(PyPipeline {
            inner: Arc::new(pipeline),
            adapters: AdapterLibrary::new(),
        })
    }

    /// The device the model runs on, e.g. ``"cpu"`` or ``"cuda:0"``.
    #[getter]
    fn device(&self) -> String {
        self.inner.device().to_string()
    }

    /// The model's native image size ``(width, height)``, used when ``generate`` is given none.
    #[getter]
    fn default_size(&self) -> (usize, usize) {
        self.inner.default_size()
    }

    /// Generates images from a prompt (text-to-image), or from ``init_image`` (image-to-image).
    ///
    /// The GIL is released while the model runs, so other Python threads (including other
    /// ``generate`` calls on the same pipeline) keep running. After every denoising step the GIL
    /// is taken back to check for Ctrl-C, update the progress bar and call ``callback``.
    ///
    /// Args:
    ///     prompt (str): what to draw, at most 32 KiB of UTF-8.
    ///     negative_prompt (str | None): what to steer away from, at most 32 KiB. Defaults to
    ///         ``None`` (empty).
    ///     steps (int): denoising steps, 1 to 1000. Defaults to 20. For image-to-image only
    ///         ``int(steps * strength)`` of them run; ``"pndm"`` runs its first step twice, as
    ///         diffusers does, so its ``total_steps`` is one more.
    ///     guidance_scale (float): classifier-free guidance scale; ``<= 1`` disables guidance.
    ///         Defaults to 7.5.
    ///     width (int | None): image width, a multiple of 8. Defaults to the model's native size.
    ///     height (int | None): image height, a multiple of 8. Defaults to the native size.
    ///     seed (int | None): noise seed, the same generator as ``torch.manual_seed``. Defaults to
    ///         ``None``: a random seed, recorded in ``infotexts``.
    ///     scheduler (str): one of ``sdrs.SCHEDULERS`` (``"ddim"``, ``"pndm"``, ``"euler"``,
    ///         ``"euler-a"``, ``"lms"``, ``"dpmpp-2m"``, ``"dpmpp-2m-karras"``). Defaults to
    ///         ``"pndm"``.
    ///     batch_size (int): images per call, 1 to 64. Defaults to 1.
    ///     clip_skip (int): CLIP skip as AUTOMATIC1111 counts it (1 = last layer). Defaults to 1.
    ///     init_image (str | os.PathLike[str] | PIL.Image.Image | numpy.ndarray | None): the
    ///         starting image for image-to-image: a PNG/JPEG path, a PIL image, or a ``uint8``
    ///         array ``(H, W, 3)``; resized to ``width x height`` when it differs. Defaults to
    ///         ``None`` (text-to-image).
    ///     strength (float): image-to-image strength in ``(0, 1]``; ``int(steps * strength)``
    ///         must be at least 1. Defaults to 0.8.
    ///     latents (numpy.ndarray | None): unit-variance initial noise, ``float32``, C-contiguous,
    ///         shape ``(batch_size, 4, height // 8, width // 8)``, used instead of the seeded
    ///         draw (as diffusers' ``latents=``). Text-to-image only. Defaults to ``None``.
    ///     callback (Callable[[int, int], bool | None] | None): called as
    ///         ``callback(step, total_steps)`` after every step, holding the GIL; returning
    ///         ``False`` cancels, and an exception it raises cancels and propagates unchanged.
    ///         Defaults to ``None``.
    ///     progress (bool): show a tqdm progress bar when tqdm is installed. Defaults to ``False``.
    ///     loras (Iterable | None): LoRA / LyCORIS adapters applied in order: each an
    ///         ``sdrs.Lora``, a path, or a tuple ``(lora, strength)`` or
    ///         ``(lora, text_encoder_strength, unet_strength)``. Files named by path stay loaded
    ///         in the pipeline while unchanged. The loaded model is not modified. Defaults to
    ///         ``None``.
    ///     embeddings (Iterable | None): textual-inversion embeddings (``sdrs.Embedding`` or
    ///         paths), triggered by writing their names in the prompt. Defaults to ``None``.
    ///     hypernetworks (Iterable | None): hypernetworks chained in order: each an
    ///         ``sdrs.Hypernetwork``, a path, or ``(hypernetwork, strength)``. Defaults to
    ///         ``None``.
    ///     lora_dir (str | os.PathLike[str] | list | None): folder(s) where ``<lora:NAME:…>``
    ///         tags in the prompt are looked up. Defaults to ``None`` (a tag is then an error).
    ///     hypernetwork_dir (str | os.PathLike[str] | list | None): folder(s) for
    ///         ``<hypernet:NAME:…>`` tags. Defaults to ``None``.
    ///     prompt_syntax (str): ``"a1111"`` (AUTOMATIC1111's prompt language: ``(word:1.2)``,
    ///         ``[word]``, ``BREAK``, long prompts, ``[from:to:when]``, ``[a|b]``, ``AND``, tags)
    ///         or ``"plain"`` (the text as written, truncated to 77 tokens, as diffusers reads
    ///         it). Plain prompts of at most 75 tokens read the same in both. Defaults to
    ///         ``"a1111"``.
    ///     emphasis (str): how ``(word:1.2)`` weights act: ``"original"`` (weights, then the
    ///         mean restored), ``"no-norm"``, ``"ignore"`` or ``"none"`` (A1111's emphasis modes).
    ///         Defaults to ``"original"``.
    ///     pad_cond_uncond (bool): when the prompt and the negative prompt differ in token count,
    ///         pad the shorter into one UNet pass (A1111's option) instead of two passes (its
    ///         default). Defaults to ``False``.
    ///
    /// Returns:
    ///     GenerationResult: ``.images`` (PIL images, or numpy ``uint8`` ``(H, W, 3)`` arrays
    ///     without Pillow), ``.latents`` (numpy ``float32`` NCHW), ``.infotexts``,
    ///     ``.adapter_report`` and ``.unapplied_keys``.
    ///
    /// Raises:
    ///     InvalidArgumentError: an argument is out of range; the message names it.
    ///     CancelledError: ``callback`` returned ``False``.
    ///     KeyboardInterrupt: Ctrl-C during generation.
    ///     DeviceError: the device failed.
    ///
    /// Example:
    ///     >>> result = pipe.generate("a red sofa", steps=10, seed=1234, scheduler="ddim")
    ///     >>> result.images[0].size
    ///     (512, 512)
    #[pyo3(signature = (prompt, negative_prompt = None, *, steps = 20, guidance_scale = 7.5,
        width = None, height = None, seed = None, scheduler = "pndm", batch_size = 1,
        clip_skip = 1, init_image = None, strength = 0.8, latents = None, callback = None,
        progress = false, loras = None, embeddings = None, hypernetworks = None, lora_dir = None,
        hypernetwork_dir = None, prompt_syntax = "a1111", emphasis = "original",
        pad_cond_uncond = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: String,
        negative_prompt: Option<String>,
        steps: usize,
        guidance_scale: f64,
        width: Option<usize>,
        height: Option<usize>,
        seed: Option<u64>,
        scheduler: &str,
        batch_size: usize,
        clip_skip: usize,
        init_image: Option<&Bound<'_, PyAny>>,
        strength: f64,
        latents: Option<&Bound<'_, PyAny>>,
        callback: Option<Py<PyAny>>,
        progress: bool,
        loras: Option<&Bound<'_, PyAny>>,
        embeddings: Option<&Bound<'_, PyAny>>,
        hypernetworks: Option<&Bound<'_, PyAny>>,
        lora_dir: Option<&Bound<'_, PyAny>>,
        hypernetwork_dir: Option<&Bound<'_, PyAny>>,
        prompt_syntax: &str,
        emphasis: &str,
        pad_cond_uncond: bool,
    ) -> PyResult<PyGenerationResult> {
        let (default_w, default_h) = self.inner.default_size();
        let lora_dirs = adapters::folders(lora_dir, "lora_dir")?;
        let hypernetwork_dirs = adapters::folders(hypernetwork_dir, "hypernetwork_dir")?;
        let adapter_library = (!lora_dirs.is_empty() || !hypernetwork_dirs.is_empty())
            .then(|| Arc::new(self.adapters.with_folders(lora_dirs, hypernetwork_dirs)));
        let request = GenerateRequest {
            loras: loras
                .map(|l| adapters::loras(py, l, &self.adapters))
                .transpose()?
                .unwrap_or_default(),
            embeddings: embeddings
                .map(|e| adapters::embeddings(py, e))
                .transpose()?
                .unwrap_or_default(),
            hypernetworks: hypernetworks
                .map(|h| adapters::hypernetworks(py, h, &self.adapters))
                .transpose()?
                .unwrap_or_default(),
            adapter_library,
            prompt_syntax: prompt_syntax.parse().map_err(to_py_err)?,
            emphasis: emphasis_mode(emphasis)?,
            pad_cond_uncond,
            negative_prompt: negative_prompt.unwrap_or_default(),
            width: width.unwrap_or(default_w),
            height: height.unwrap_or(default_h),
            steps,
            guidance_scale,
            scheduler: scheduler.parse().map_err(to_py_err)?,
            seed: seed.unwrap_or_else(|| RandomState::new().hash_one(0u8) >> 32),
            batch_size,
            clip_skip,
            init_image: init_image.map(|i| convert::init_image(py, i)).transpose()?,
            strength,
            initial_latents: latents.map(convert::latents).transpose()?,
            ..GenerateRequest::new(prompt)
        };
        let reporter = Reporter::new(py, callback, progress)?;
        let generation = reporter.run(py, &self.inner, &request)?;
        PyGenerationResult::from_generation(py, generation)
    }

    fn __repr__(&self) -> String {
        format!("Pipeline(device={:?})", self.inner.device().to_string())
    }
}

/// `emphasis=`: A1111's emphasis modes by their Python-style names.
fn emphasis_mode(name: &str) -> PyResult<EmphasisMode> {
    match name {
        "original" => Ok(EmphasisMode::Original),
        "no-norm" | "no_norm" => Ok(EmphasisMode::NoNorm),
        "ignore" => Ok(EmphasisMode::Ignore),
        "none" => Ok(EmphasisMode::None),
        other => Err(invalid_argument(
            "emphasis",
            format!("unknown {other:?} (\"original\", \"no-norm\", \"ignore\" or \"none\")"),
        )),
    }
}
