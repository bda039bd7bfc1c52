//! LoRA and the LyCORIS family: weight patches read from the files people share and merged into
//! a (cloned) text encoder and UNet exactly as AUTOMATIC1111's `extensions-builtin/Lora` does.
//!
//! - Formats (formats.md §4.3): kohya / A1111 (`lora_unet_*`, `lora_te_*`, `.alpha`, `ss_*`
//!   metadata), every LyCORIS algorithm A1111 applies (LoCon with CP `lora_mid`, LoHa with
//!   Tucker, LoKr with factorized and Tucker factors, IA3, full `diff`/`diff_b`, norm
//!   `w_norm`/`b_norm`, GLoRA, `scale`, `bias`, DoRA `dora_scale`), diffusers / PEFT
//!   (`lora_A`/`lora_B`, alpha from `lora_adapter_metadata`, DoRA `lora_magnitude_vector`), the
//!   older diffusers attention-processor keys, and textual-inversion embeddings bundled as
//!   `bundle_emb.*`. Files are `.safetensors` or pickles (`.pt`, `.ckpt`, `.bin`), read without
//!   running any code. OFT is not supported: its keys are reported by name.
//! - Names (formats.md §4.3.4): modules are found through the model's own parameter names, so
//!   kohya names never need `_` guessed back into `.`; LDM-named UNet modules are accepted too.
//!   LoRAs for SDXL, SD 2.x and other families are refused with the evidence.
//! - Math (formats.md §4.4): [`apply_loras`] computes each layer's ΔW in `f32` on the CPU, one
//!   layer at a time, and sets `W ← W + strength · ΔW(W)` for each LoRA in turn.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sd_core::adapters::lora::{Lora, LoraUse, apply_loras};
//! use sd_core::pipeline::{LoadOptions, Pipeline};
//!
//! let pipe = Pipeline::load("model.safetensors", &LoadOptions::default())?;
//! let lora = Arc::new(Lora::open("style.safetensors")?);
//! let (mut te, mut unet) = (pipe.text_encoder().clone(), pipe.unet().clone());
//! let report = apply_loras(&[LoraUse::new(lora, 0.8)], &mut te, &mut unet)?;
//! for l in &report.loras {
//!     for s in &l.skipped {
//!         eprintln!("{}: {} not applied: {}", l.name, s.key, s.reason);
//!     }
//! }
//! # Ok::<(), sd_core::Error>(())
//! ```

mod apply;
mod bundle;
mod delta;
mod family;
mod keys;
mod load;
mod math;
mod modules;
mod peft;
mod report;
mod source;
mod targets;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use apply::apply_loras;
pub use family::OtherFamily;
pub use keys::Component;
pub use modules::Algorithm;
pub use report::{AppliedModule, LoraApplied, LoraReport, SkipReason, SkippedKey};

use crate::adapters::Embedding;
use crate::error::Result;
use crate::weights::{ReadMode, TensorSource};
use modules::LoraModule;
use source::LoraSource;

/// A LoRA (or LyCORIS) file, parsed and checked, ready to apply to any number of models.
///
/// Opening reads every tensor once to refuse NaN and infinite values; the tensors are read
/// again, one module at a time, when the LoRA is applied.
pub struct Lora {
    name: String,
    source: LoraSource,
    hash: Option<String>,
    metadata: BTreeMap<String, String>,
    modules: Vec<LoraModule>,
    embeddings: Vec<Arc<Embedding>>,
    skipped: Vec<SkippedKey>,
    other_family: Option<OtherFamily>,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lora")
            .field("name", &self.name)
            .field("source", &self.source.describe())
            .field("modules", &self.modules.len())
            .field("embeddings", &self.embeddings.len())
            .field("skipped", &self.skipped.len())
            .field("other_family", &self.other_family)
            .finish()
    }
}

/// A module of a LoRA, as [`Lora::modules`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The module's name in the file (`lora_unet_…`, `unet.down_blocks.…`).
    pub name: String,
    /// The model part it patches.
    pub component: Component,
    /// Its algorithm.
    pub algorithm: Algorithm,
}

impl Lora {
    /// Opens a LoRA file (`.safetensors`, or a pickle `.pt`/`.ckpt`/`.bin`), memory-mapped.
    /// The name is the file stem, as A1111 names LoRAs.
    ///
    /// # Errors
    /// [`Error::FileNotFound`](crate::Error::FileNotFound) / [`Error::Io`](crate::Error::Io);
    /// the readers' errors for a malformed file or a refused pickle;
    /// [`Error::InvalidFile`](crate::Error::InvalidFile) for a file with no LoRA tensor at all
    /// (a full model checkpoint, say), or naming the tensor for NaN or infinite values, a
    /// scalar (`alpha`, `scale`) that is not one value, two keys for one tensor of a module, or
    /// malformed PEFT metadata.
    pub fn open(path: impl AsRef<Path>) -> Result<Lora> {
        Self::open_with(path, ReadMode::Mmap)
    }

    /// [`open`](Self::open) with a choice of [`ReadMode`] (use
    /// [`ReadMode::Buffered`] for files other processes may truncate while the LoRA is alive).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(path: impl AsRef<Path>, mode: ReadMode) -> Result<Lora> {
        let path = path.as_ref();
        let opened = LoraSource::open(path, mode)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Self::build(name, opened.source, Some(opened.hash))
    }

    /// A LoRA from any tensor source (an in-memory map, a file opened elsewhere), named `name`.
    /// It has no hash.
    ///
    /// # Errors
    /// As [`open`](Self::open), for the source's content.
    pub fn from_source(name: impl Into<String>, source: Arc<dyn TensorSource>) -> Result<Lora> {
        Self::build(name.into(), LoraSource::from_source(source), None)
    }

    fn build(name: String, source: LoraSource, hash: Option<String>) -> Result<Lora> {
        let parsed = load::parse(&source)?;
        Ok(Lora {
            name,
            source,
            hash,
            metadata: parsed.metadata,
            modules: parsed.modules,
            embeddings: parsed.embeddings,
            skipped: parsed.skipped,
            other_family: parsed.other_family,
        })
    }

    /// The name (the file stem for [`open`](Self::open)).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name A1111 offers as the LoRA's alias: kohya's `ss_output_name`, else
    /// [`name`](Self::name).
    pub fn alias(&self) -> &str {
        self.metadata
            .get("ss_output_name")
            .map_or(&self.name, String::as_str)
    }

    /// The file path or the source's description.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// The string metadata (safetensors `__metadata__`: kohya's `ss_*`, `modelspec.*`,
    /// diffusers' `lora_adapter_metadata`; a pickle's top-level scalars).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The full sha256 A1111 identifies the file by: of the bytes after the header for a
    /// safetensors file (the "addnet hash"), of the whole file otherwise. `None` for
    /// [`from_source`](Self::from_source).
    pub fn hash(&self) -> Option<&str> {
        self.hash.as_deref()
    }

    /// The first 12 hex digits of [`hash`](Self::hash), as A1111 writes them in the infotext
    /// (`Lora hashes: "name: 0123456789ab"`).
    pub fn short_hash(&self) -> Option<&str> {
        self.hash.as_deref().and_then(|h| h.get(..12))
    }

    /// The textual-inversion embeddings bundled in the file (`bundle_emb.*`), which A1111
    /// makes available while the LoRA is in use.
    pub fn embeddings(&self) -> &[Arc<Embedding>] {
        &self.embeddings
    }

    /// The modules, in file order.
    pub fn modules(&self) -> Vec<ModuleInfo> {
        self.modules
            .iter()
            .map(|m| ModuleInfo {
                name: m.name.clone(),
                component: m.component,
                algorithm: m.algorithm,
            })
            .collect()
    }

    /// Keys no model can use (unrecognised names, unsupported algorithms such as OFT, tensors
    /// an algorithm does not read, unusable bundled embeddings), with the reason. Applying the
    /// LoRA reports these too.
    pub fn skipped_keys(&self) -> &[SkippedKey] {
        &self.skipped
    }

    /// Set when the file is an adapter for another model family than SD 1.x (from its
    /// metadata or key names); [`apply_loras`] refuses it.
    pub fn other_family(&self) -> Option<&OtherFamily> {
        self.other_family.as_ref()
    }
}

/// One LoRA to apply and its strengths (A1111 `<lora:name:te:unet>`; `<lora:name:w>` is
/// `w` for both).
#[derive(Debug, Clone)]
pub struct LoraUse {
    /// The LoRA.
    pub lora: Arc<Lora>,
    /// Multiplier of the text-encoder modules.
    pub text_encoder_strength: f32,
    /// Multiplier of the UNet modules.
    pub unet_strength: f32,
}

impl LoraUse {
    /// `lora` at `strength` for both the text encoder and the UNet.
    pub fn new(lora: Arc<Lora>, strength: f32) -> Self {
        LoraUse {
            lora,
            text_encoder_strength: strength,
            unet_strength: strength,
        }
    }

    /// `lora` with separate text-encoder and UNet strengths.
    pub fn with_strengths(lora: Arc<Lora>, text_encoder: f32, unet: f32) -> Self {
        LoraUse {
            lora,
            text_encoder_strength: text_encoder,
            unet_strength: unet,
        }
    }
}
