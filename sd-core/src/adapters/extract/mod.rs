//! LoRA extraction: the low-rank difference between a fine-tuned model (a DreamBooth or other
//! full fine-tune) and the base it was trained from, written as a kohya-format LoRA that
//! AUTOMATIC1111, diffusers, ComfyUI and kohya's own scripts load.
//!
//! For every layer kohya's LoRA trains ([`targets`]), ΔW = W_tuned − W_base is decomposed by a
//! truncated SVD ([`factorize()`]); the kept rank is fixed or chosen per layer by an energy rule
//! ([`RankRule`]). Layers whose ΔW is zero, below a threshold, or only the rounding of one model
//! to half precision are skipped and reported; differences a LoRA cannot carry (biases, norms,
//! embeddings, layers outside the targets) are reported too. [`ExtractedLora::save`] writes the
//! file ([`kohya_file`]).
//!
//! Both models are opened with [`ModelFiles`] (a diffusers folder, or a single `.safetensors` /
//! `.ckpt` file in the original layout, renamed to diffusers names) and read one tensor at a
//! time, so memory holds one layer of each model and its decomposition (at most about 1 GB, for
//! SD 1.5's widest 3x3 convolution, 1280 × 23040 in `f64`) plus the factors written so far.
//!
//! # Example
//! ```no_run
//! use sd_core::adapters::extract::{extract_lora, ExtractOptions, RankRule};
//! use sd_core::weights::WriteDType;
//!
//! let options = ExtractOptions {
//!     rank: RankRule::Energy { fraction: 0.9, max_rank: 64 },
//!     ..ExtractOptions::default()
//! };
//! let lora = extract_lora("v1-5.safetensors", "dreambooth.safetensors", &options, &mut |_| true)?;
//! lora.save("dreambooth-lora.safetensors", WriteDType::F16)?;
//! # Ok::<(), sd_core::Error>(())
//! ```

pub mod factorize;
pub mod kohya_file;
pub mod targets;

use std::fmt;
use std::path::{Path, PathBuf};

pub use factorize::{FactorSplit, LowRankFactors, RankRule, factorize};
pub use targets::{Network, Target, TargetModule};

use crate::error::{Error, Result};
use crate::tensor::{Device, Shape};
use crate::weights::{LoadOptions, ModelFiles, StoredDType, WeightStore};

/// What to extract and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractOptions {
    /// The rank of linear and 1x1-convolution layers (attention projections, feed-forward, the
    /// text encoder; with conv layers also ResNet `time_emb_proj` and `conv_shortcut`).
    /// Default: `Fixed(4)`, kohya's default `--dim`.
    pub rank: RankRule,
    /// The rank of 3x3 convolutions (ResNet `conv1`/`conv2`, down- and up-samplers), which are
    /// extracted ("LoCon") only when this is set. Default: `None`.
    pub conv_rank: Option<RankRule>,
    /// Extract the text encoder's layers too. Default: true.
    pub text_encoder: bool,
    /// A layer whose largest |ΔW| is at most this is skipped. Default: 0 (only layers that are
    /// identical, or equal at the precision of the model stored in half precision, are skipped).
    /// kohya uses 0.01, for the text encoder as a whole.
    pub min_diff: f32,
    /// Which factor carries the singular values. Default: [`FactorSplit::Up`], as kohya.
    pub split: FactorSplit,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            rank: RankRule::Fixed(4),
            conv_rank: None,
            text_encoder: true,
            min_diff: 0.0,
            split: FactorSplit::Up,
        }
    }
}

impl ExtractOptions {
    /// Checks every option.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the option.
    pub fn validate(&self) -> Result<()> {
        self.rank.validate("rank")?;
        if let Some(conv) = &self.conv_rank {
            conv.validate("conv_rank")?;
        }
        if !(self.min_diff.is_finite() && self.min_diff >= 0.0) {
            return Err(Error::invalid_argument(
                "min_diff",
                format!("{} is not a finite value ≥ 0", self.min_diff),
            ));
        }
        Ok(())
    }
}

/// Where an extraction is, for progress reporting.
#[derive(Debug, Clone, Copy)]
pub struct ExtractProgress<'a> {
    /// Tensors finished, from 1 to `total`.
    pub step: usize,
    /// Tensors to compare: the LoRA layers and every other parameter both models hold.
    pub total: usize,
    /// The component of the tensor just finished.
    pub component: Component,
    /// Its diffusers/transformers name.
    pub tensor: &'a str,
}

/// A component of a Stable Diffusion model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The CLIP text encoder.
    TextEncoder,
    /// The UNet.
    Unet,
    /// The autoencoder.
    Vae,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::TextEncoder => "text encoder",
            Component::Unet => "UNet",
            Component::Vae => "VAE",
        })
    }
}

/// The model family a LoRA is for, as its metadata records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseModel {
    /// Stable Diffusion 1.x (CLIP ViT-L text encoder, 768 wide).
    Sd1,
    /// Stable Diffusion 2.x (OpenCLIP ViT-H text encoder, 1024 wide).
    Sd2 {
        /// Whether the scheduler predicts v (the 768-pixel models) rather than noise.
        v_prediction: bool,
    },
}

/// One layer written to the LoRA.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractedLayer {
    /// Which layer.
    pub target: Target,
    /// The base weight's shape: `[out, in]` or `[out, in, kh, kw]`.
    pub weight_shape: Vec<usize>,
    /// The largest |ΔW| element.
    pub max_abs_diff: f32,
    /// The factors and ΔW's singular values.
    pub factors: LowRankFactors,
}

impl ExtractedLayer {
    /// The kohya LoRA name (`lora_unet_…`, `lora_te_…`).
    pub fn name(&self) -> String {
        self.target.kohya_name()
    }

    /// The rank kept.
    pub fn rank(&self) -> usize {
        self.factors.rank
    }

    /// `lora_down.weight`'s shape: `[r, in]`, or `[r, in, kh, kw]` for a convolution.
    pub fn down_shape(&self) -> Vec<usize> {
        let mut shape = self.weight_shape.clone();
        shape[0] = self.factors.rank;
        shape
    }

    /// `lora_up.weight`'s shape: `[out, r]`, or `[out, r, 1, 1]` for a convolution.
    pub fn up_shape(&self) -> Vec<usize> {
        let (out, r) = (self.weight_shape[0], self.factors.rank);
        if self.weight_shape.len() == 4 {
            vec![out, r, 1, 1]
        } else {
            vec![out, r]
        }
    }
}

/// Why a LoRA layer was not written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SkipReason {
    /// The weights are equal.
    Identical,
    /// The weights are equal once rounded to `dtype`, the precision one of the two models stores
    /// this tensor in (a full-precision base and a half-precision fine-tune of it).
    EqualAtPrecision {
        /// The coarser of the two stored dtypes.
        dtype: StoredDType,
    },
    /// The largest |ΔW| is at most the `min_diff` option.
    BelowMinDiff {
        /// The largest |ΔW| element.
        max_abs_diff: f32,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Identical => f.write_str("identical"),
            SkipReason::EqualAtPrecision { dtype } => {
                write!(
                    f,
                    "equal at {dtype} precision (one model stores it in {dtype})"
                )
            }
            SkipReason::BelowMinDiff { max_abs_diff } => {
                write!(f, "max |ΔW| {max_abs_diff:.3e} within --min-diff")
            }
        }
    }
}

/// A LoRA layer left out because its difference is negligible.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedLayer {
    /// Which layer.
    pub target: Target,
    /// Why.
    pub reason: SkipReason,
}

/// A parameter that differs between the models but is not carried by the LoRA (a bias, a norm,
/// an embedding, or a layer the options leave out).
#[derive(Debug, Clone, PartialEq)]
pub struct UncoveredDifference {
    /// The component.
    pub component: Component,
    /// The diffusers/transformers parameter name.
    pub name: String,
    /// The largest absolute difference.
    pub max_abs_diff: f32,
}

/// The result of [`extract_lora`]: the layers to write and what was left out.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractedLora {
    /// The family the LoRA applies to.
    pub base_model: BaseModel,
    /// The options it was made with.
    pub options: ExtractOptions,
    /// The base model's file or folder name (without directories).
    pub base_name: String,
    /// The fine-tuned model's file or folder name.
    pub tuned_name: String,
    /// The layers, text encoder first, in name order.
    pub layers: Vec<ExtractedLayer>,
    /// LoRA layers left out as negligible.
    pub skipped: Vec<SkippedLayer>,
    /// Other differences the LoRA does not carry.
    pub uncovered: Vec<UncoveredDifference>,
}

/// What to do with one tensor both models hold.
enum Action {
    /// Write it as a LoRA layer with this rank rule.
    Extract(Target, RankRule),
    /// Only check whether it differs.
    Compare,
}

struct Planned {
    component: Component,
    name: String,
    shape: Shape,
    action: Action,
}

/// Extracts a LoRA that turns `base` into (an approximation of) `tuned`.
///
/// `progress` is called after each tensor; returning `false` cancels.
///
/// # Errors
/// Those of opening either model; [`Error::InvalidArgument`] for invalid options;
/// [`Error::Unsupported`] for SDXL; [`Error::InvalidFile`] naming the fine-tuned model when it
/// does not match the base (a tensor of another shape, or a LoRA layer missing) or a tensor holds
/// NaN or infinite values; [`Error::Cancelled`].
pub fn extract_lora(
    base: impl AsRef<Path>,
    tuned: impl AsRef<Path>,
    options: &ExtractOptions,
    progress: &mut dyn FnMut(&ExtractProgress<'_>) -> bool,
) -> Result<ExtractedLora> {
    options.validate()?;
    let (base_path, tuned_path) = (base.as_ref(), tuned.as_ref());
    let base_files = ModelFiles::open(base_path, &LoadOptions::default())?;
    let tuned_files = ModelFiles::open(tuned_path, &LoadOptions::default())?;
    refuse_sdxl(&base_files)?;
    refuse_sdxl(&tuned_files)?;
    let base_model = base_model(&base_files, &tuned_files);
    let models = Models {
        base: &base_files,
        tuned: &tuned_files,
        base_path,
        tuned_path,
    };
    let plan = plan(&models, options)?;
    let mut lora = ExtractedLora {
        base_model,
        options: options.clone(),
        base_name: display_name(base_path),
        tuned_name: display_name(tuned_path),
        layers: Vec::new(),
        skipped: Vec::new(),
        uncovered: Vec::new(),
    };
    for (i, item) in plan.iter().enumerate() {
        let pair = models.read_pair(item)?;
        match &item.action {
            Action::Extract(target, rule) => match pair.negligible(options.min_diff) {
                Some(reason) => lora.skipped.push(SkippedLayer {
                    target: target.clone(),
                    reason,
                }),
                None => lora
                    .layers
                    .push(extract_layer(item, target, *rule, pair, options)?),
            },
            Action::Compare => {
                if pair.max_abs_diff > 0.0 && pair.negligible(options.min_diff).is_none() {
                    lora.uncovered.push(UncoveredDifference {
                        component: item.component,
                        name: item.name.clone(),
                        max_abs_diff: pair.max_abs_diff,
                    });
                }
            }
        }
        let report = ExtractProgress {
            step: i + 1,
            total: plan.len(),
            component: item.component,
            tensor: &item.name,
        };
        if !progress(&report) {
            return Err(Error::Cancelled { step: i + 1 });
        }
    }
    Ok(lora)
}

/// The two models being compared.
struct Models<'a> {
    base: &'a ModelFiles,
    tuned: &'a ModelFiles,
    base_path: &'a Path,
    tuned_path: &'a Path,
}

impl Models<'_> {
    fn stores(&self, component: Component) -> (&WeightStore, &WeightStore) {
        match component {
            Component::TextEncoder => (&self.base.text_encoder, &self.tuned.text_encoder),
            Component::Unet => (&self.base.unet, &self.tuned.unet),
            Component::Vae => (&self.base.vae, &self.tuned.vae),
        }
    }

    /// Reads one tensor from both models (as `f32`) and measures their difference.
    fn read_pair(&self, item: &Planned) -> Result<TensorPair> {
        let (base_store, tuned_store) = self.stores(item.component);
        let read =
            |store: &WeightStore, path: &Path| -> Result<(Vec<f32>, StoredDType)> {
                let dtype = store.info(&item.name).map(|i| i.dtype).ok_or_else(|| {
                    Error::MissingWeight {
                        name: item.name.clone(),
                        source_desc: store.describe(),
                    }
                })?;
                let values = store.get(&item.name, &item.shape, Device::Cpu)?.to_vec()?;
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(Error::invalid_file(
                        path,
                        format!(
                            "{} tensor `{}` holds NaN or infinite values",
                            item.component, item.name
                        ),
                    ));
                }
                Ok((values, dtype))
            };
        let (base, base_dtype) = read(base_store, self.base_path)?;
        let (tuned, tuned_dtype) = read(tuned_store, self.tuned_path)?;
        let max_abs_diff = base
            .iter()
            .zip(&tuned)
            .fold(0.0f32, |m, (a, b)| m.max((b - a).abs()));
        Ok(TensorPair {
            base,
            tuned,
            coarser: coarser_half(base_dtype, tuned_dtype),
            max_abs_diff,
        })
    }
}

/// One tensor read from both models.
struct TensorPair {
    base: Vec<f32>,
    tuned: Vec<f32>,
    /// The half-precision dtype one model stores the tensor in while the other stores it wider.
    coarser: Option<StoredDType>,
    max_abs_diff: f32,
}

impl TensorPair {
    /// Why the difference does not count, if it does not.
    fn negligible(&self, min_diff: f32) -> Option<SkipReason> {
        if self.max_abs_diff == 0.0 {
            return Some(SkipReason::Identical);
        }
        if let Some(dtype) = self.coarser {
            let round = |v: f32| match dtype {
                StoredDType::BF16 => half::bf16::from_f32(v).to_f32(),
                _ => half::f16::from_f32(v).to_f32(),
            };
            if self
                .base
                .iter()
                .zip(&self.tuned)
                .all(|(&a, &b)| round(a) == round(b))
            {
                return Some(SkipReason::EqualAtPrecision { dtype });
            }
        }
        (self.max_abs_diff <= min_diff).then_some(SkipReason::BelowMinDiff {
            max_abs_diff: self.max_abs_diff,
        })
    }
}

/// `f16` or `bf16` when exactly one of the two dtypes is that and the other is wider.
fn coarser_half(a: StoredDType, b: StoredDType) -> Option<StoredDType> {
    let wide = |d: StoredDType| matches!(d, StoredDType::F32 | StoredDType::F64);
    let half = |d: StoredDType| matches!(d, StoredDType::F16 | StoredDType::BF16);
    if half(a) && wide(b) {
        Some(a)
    } else if half(b) && wide(a) {
        Some(b)
    } else {
        None
    }
}

fn extract_layer(
    item: &Planned,
    target: &Target,
    rule: RankRule,
    pair: TensorPair,
    options: &ExtractOptions,
) -> Result<ExtractedLayer> {
    let dims = item.shape.dims();
    let rows = dims[0];
    let cols = item.shape.elem_count() / rows.max(1);
    let max_abs_diff = pair.max_abs_diff;
    // Subtracting in f64 keeps ΔW exact (f32 has 24-bit significands; f64 rounds only when the
    // two weights are more than 2^28 apart). The weights are freed before the SVD.
    let delta: Vec<f64> = pair
        .base
        .iter()
        .zip(&pair.tuned)
        .map(|(&a, &b)| f64::from(b) - f64::from(a))
        .collect();
    drop(pair);
    let factors = factorize(&delta, rows, cols, rule, options.split).map_err(|e| {
        Error::Internal(format!(
            "factorizing {} `{}`: {e}",
            item.component, item.name
        ))
    })?;
    Ok(ExtractedLayer {
        target: target.clone(),
        weight_shape: dims.to_vec(),
        max_abs_diff,
        factors,
    })
}

/// Decides, for every tensor both models hold, whether it becomes a LoRA layer, and checks that
/// the models match.
fn plan(models: &Models<'_>, options: &ExtractOptions) -> Result<Vec<Planned>> {
    let mut plan = Vec::new();
    let mut mismatches = Vec::new();
    for component in [Component::TextEncoder, Component::Unet, Component::Vae] {
        let (base, tuned) = models.stores(component);
        let mut names: Vec<&str> = base.names().collect();
        names.sort_unstable();
        for name in names {
            let Some(base_info) = base.info(name) else {
                continue;
            };
            let target = match component {
                Component::TextEncoder => targets::classify(Network::TextEncoder, name),
                Component::Unet => targets::classify(Network::Unet, name),
                Component::Vae => None,
            };
            let action = match target {
                Some(t) => match rule_for(&t, &base_info.shape, options) {
                    Some(rule) => Action::Extract(t, rule),
                    None => Action::Compare,
                },
                None => Action::Compare,
            };
            let Some(tuned_info) = tuned.info(name) else {
                if let Action::Extract(..) = action {
                    mismatches.push(format!(
                        "{component} layer `{name}` {} is missing",
                        base_info.shape
                    ));
                }
                continue;
            };
            if !base_info.dtype.is_float() || !tuned_info.dtype.is_float() {
                continue;
            }
            if !same_shape(&base_info.shape, &tuned_info.shape) {
                mismatches.push(format!(
                    "{component} `{name}` is {} in the base and {} here",
                    base_info.shape, tuned_info.shape
                ));
                continue;
            }
            if let Action::Extract(..) = action
                && !matches!(base_info.shape.rank(), 2 | 4)
            {
                return Err(Error::invalid_file(
                    models.base_path,
                    format!(
                        "{component} layer `{name}` has shape {}, expected a matrix or a \
                         convolution kernel",
                        base_info.shape
                    ),
                ));
            }
            plan.push(Planned {
                component,
                name: name.to_string(),
                shape: base_info.shape,
                action,
            });
        }
        // LoRA layers only the fine-tune has (another architecture).
        let mut extra: Vec<&str> = tuned
            .names()
            .filter(|n| !base.contains(n))
            .filter(|n| match component {
                Component::TextEncoder => targets::classify(Network::TextEncoder, n).is_some(),
                Component::Unet => targets::classify(Network::Unet, n).is_some(),
                Component::Vae => false,
            })
            .collect();
        extra.sort_unstable();
        mismatches.extend(
            extra
                .into_iter()
                .map(|n| format!("{component} layer `{n}` is not in the base")),
        );
    }
    if !mismatches.is_empty() {
        let shown: Vec<&str> = mismatches.iter().take(5).map(String::as_str).collect();
        let more = match mismatches.len() - shown.len() {
            0 => String::new(),
            n => format!("; and {n} more"),
        };
        return Err(Error::invalid_file(
            models.tuned_path,
            format!(
                "does not match the base model {} ({} differences): {}{more}",
                models.base_path.display(),
                mismatches.len(),
                shown.join("; ")
            ),
        ));
    }
    Ok(plan)
}

/// The rank rule for a target under `options`, or `None` when the options leave it out.
fn rule_for(target: &Target, shape: &Shape, options: &ExtractOptions) -> Option<RankRule> {
    let kernel_area: usize = shape.dims().iter().skip(2).product();
    match target.module {
        TargetModule::TextEncoder if !options.text_encoder => None,
        TargetModule::ConvBlock if options.conv_rank.is_none() => None,
        _ if kernel_area > 1 => options.conv_rank,
        _ => Some(options.rank),
    }
}

/// Equal, or equal but for trailing dimensions of size 1 (a 1x1 convolution stored for a linear
/// layer, as the weight stores accept).
fn same_shape(a: &Shape, b: &Shape) -> bool {
    let trim = |d: &[usize]| {
        let end = d.iter().rposition(|&x| x != 1).map_or(0, |i| i + 1);
        d[..end].to_vec()
    };
    a == b || trim(a.dims()) == trim(b.dims())
}

/// SDXL LoRAs use the original (SGM) module names in kohya's format, which this module does not
/// write.
fn refuse_sdxl(files: &ModelFiles) -> Result<()> {
    if files.unet.contains("add_embedding.linear_1.weight") {
        return Err(Error::Unsupported(format!(
            "{}: an SDXL model; LoRA extraction supports Stable Diffusion 1.x and 2.x",
            files.model_path.display()
        )));
    }
    Ok(())
}

/// SD 2.x has a 1024-wide text encoder (OpenCLIP ViT-H); v-prediction comes from the fine-tune's
/// scheduler configuration (or the base's), where there is one.
fn base_model(base: &ModelFiles, tuned: &ModelFiles) -> BaseModel {
    let width = base
        .text_encoder
        .shape_of("text_model.final_layer_norm.weight")
        .and_then(|s| s.dim(0));
    if width != Some(1024) {
        return BaseModel::Sd1;
    }
    let prediction = |f: &ModelFiles| {
        f.scheduler_config
            .as_ref()
            .and_then(|c| c.get("prediction_type"))
            .and_then(|p| p.as_str())
            .map(|p| p == "v_prediction")
    };
    BaseModel::Sd2 {
        v_prediction: prediction(tuned)
            .or_else(|| prediction(base))
            .unwrap_or(false),
    }
}

/// The last path component (a file or folder name), never the directories above it.
fn display_name(path: &Path) -> String {
    let path: PathBuf = path.components().collect();
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
