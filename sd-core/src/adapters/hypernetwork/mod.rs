//! AUTOMATIC1111 hypernetworks: small MLPs that transform the context every attention layer of
//! the UNet reads its keys and values from (formats.md §4.1).
//!
//! A hypernetwork file (`torch.save` of a dict, read here with the restricted pickle reader) holds,
//! for each context width it applies to (768 for SD 1.x cross-attention, 320/640/1280 for
//! self-attention, …), a pair of modules: one for the key context, one for the value context.
//! Each module computes `y = x + mlp(x) · strength`, where the MLP's layers are rebuilt from the
//! file's metadata (`layer_structure`, `activation_func`, `is_layer_norm`, dropout slots,
//! `activate_output`; `modules/hypernetworks/hypernetwork.py`, `HypernetworkModule`) and every
//! stored weight is checked against that layout. [`HypernetworkStack`] chains several
//! hypernetworks, each with its own strength, and is installed on a UNet as its
//! [`AttentionContextHook`](crate::models::AttentionContextHook).

mod activation;
mod module;
mod stack;
mod structure;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use activation::HypernetworkActivation;
pub use stack::{HypernetworkFit, HypernetworkReport, HypernetworkStack};
pub use structure::HypernetworkSettings;

use module::HypernetworkModule;

use crate::error::{Error, Result};
use crate::image::sha256_file;
use crate::tensor::{DType, Device, Tensor};
use crate::weights::ckpt::{CkptFile, ContainerFormat, sniff};
use crate::weights::pickle::{HypernetworkFile, Limits};

/// Widest context a module may be keyed by (SD contexts are at most 2048 wide).
const MAX_CONTEXT_WIDTH: i64 = 1 << 16;

/// One hypernetwork: a pair of modules (key side, value side) per context width.
///
/// Loaded on the CPU; [`to_device`](Self::to_device) moves it. Cloning copies only handles
/// (tensors share their storage); share it as `Arc<Hypernetwork>`.
#[derive(Debug, Clone)]
pub struct Hypernetwork {
    name: String,
    stored_name: Option<String>,
    path: Option<PathBuf>,
    sha256: Option<String>,
    settings: HypernetworkSettings,
    info: HypernetworkInfo,
    /// `width → (key module, value module)`.
    modules: BTreeMap<usize, (HypernetworkModule, HypernetworkModule)>,
    device: Device,
}

/// What a hypernetwork file says about its training.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HypernetworkInfo {
    /// `step`: the training step it was saved at.
    pub step: Option<i64>,
    /// `sd_checkpoint`: the short hash of the checkpoint it was trained on.
    pub sd_checkpoint: Option<String>,
    /// `sd_checkpoint_name`: that checkpoint's name.
    pub sd_checkpoint_name: Option<String>,
    /// `optional_info`: free text from its author.
    pub optional_info: Option<String>,
}

impl Hypernetwork {
    /// Reads an AUTOMATIC1111 hypernetwork `.pt` file, named after the file (without its
    /// extension), which is what `<hypernet:NAME>` matches.
    ///
    /// # Errors
    /// [`Error::FileNotFound`]/[`Error::Io`] for the file; [`Error::Checkpoint`] for a pickle the
    /// restricted reader refuses or that has no int-keyed module pairs; [`Error::InvalidFile`]
    /// naming the file, module and key for metadata A1111 would refuse (a `layer_structure` not
    /// starting and ending with 1, an unknown activation name, a dropout probability of 1 or
    /// more) and for weights that do not fit the layout the metadata implies (missing or
    /// unexpected keys, wrong shapes, a 1-D LayerNorm tensor where a Linear belongs, non-float or
    /// non-finite values); a safetensors file (A1111 hypernetworks are `.pt` only).
    pub fn open(path: impl AsRef<Path>) -> Result<Hypernetwork> {
        let path = path.as_ref();
        let ckpt = open_pickle(path)?;
        let file = ckpt.hypernetwork()?;
        let mut hn = Self::from_file(path, &ckpt, &file)?;
        hn.sha256 = Some(sha256_file(path)?);
        Ok(hn)
    }

    fn from_file(path: &Path, ckpt: &CkptFile, file: &HypernetworkFile) -> Result<Hypernetwork> {
        let settings = HypernetworkSettings::from_file(file)
            .map_err(|why| Error::invalid_file(path, format!("hypernetwork: {why}")))?;
        let mut modules = BTreeMap::new();
        for layer in &file.layers {
            if !(1..=MAX_CONTEXT_WIDTH).contains(&layer.size) {
                return Err(Error::invalid_file(
                    path,
                    format!(
                        "hypernetwork module key {} is not a context width (1 to {MAX_CONTEXT_WIDTH})",
                        layer.size
                    ),
                ));
            }
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
            let width = layer.size as usize;
            let plan = settings.plan(width).map_err(|why| {
                Error::invalid_file(path, format!("hypernetwork module {width}: {why}"))
            })?;
            let k = HypernetworkModule::load(path, ckpt, &settings, &plan, width, "k", &layer.k)?;
            let v = HypernetworkModule::load(path, ckpt, &settings, &plan, width, "v", &layer.v)?;
            modules.insert(width, (k, v));
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Hypernetwork {
            name: stem,
            stored_name: file.name.clone(),
            path: Some(path.to_path_buf()),
            sha256: None,
            settings,
            info: HypernetworkInfo {
                step: file.step,
                sd_checkpoint: file.sd_checkpoint.clone(),
                sd_checkpoint_name: file.sd_checkpoint_name.clone(),
                optional_info: file.optional_info.clone().flatten(),
            },
            modules,
            device: Device::Cpu,
        })
    }

    /// The name `<hypernet:NAME>` refers to: the file name without its extension.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same hypernetwork under another name.
    pub fn renamed(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The `name` stored in the file (A1111 shows it in its UI), if any.
    pub fn stored_name(&self) -> Option<&str> {
        self.stored_name.as_deref()
    }

    /// The file it was read from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The file's sha256, 64 lowercase hex digits.
    pub fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }

    /// A1111's short hash of the file (`Hypernetwork.shorthash`): the first 10 hex digits of its
    /// sha256.
    pub fn short_hash(&self) -> Option<&str> {
        self.sha256.as_deref().and_then(|h| h.get(..10))
    }

    /// The settings its modules were built from (metadata with A1111's defaults applied).
    pub fn settings(&self) -> &HypernetworkSettings {
        &self.settings
    }

    /// What the file says about its training.
    pub fn info(&self) -> &HypernetworkInfo {
        &self.info
    }

    /// The context widths it has modules for, ascending.
    pub fn widths(&self) -> Vec<usize> {
        self.modules.keys().copied().collect()
    }

    /// The device its weights are on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The same hypernetwork with its weights on `device`.
    ///
    /// # Errors
    /// A device error.
    pub fn to_device(&self, device: Device) -> Result<Hypernetwork> {
        let mut moved = self.clone();
        for (k, v) in moved.modules.values_mut() {
            *k = k.to_device(device)?;
            *v = v.to_device(device)?;
        }
        moved.device = device;
        Ok(moved)
    }

    /// Applies the module pair for the contexts' width at `strength`, as A1111's
    /// `apply_single_hypernetwork`: `(k + mlp_k(k) · strength, v + mlp_v(v) · strength)`, computed
    /// in `f32` and returned in the contexts' dtype. `None` when it has no module for that
    /// width (the last dimension).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a non-finite strength or contexts of different widths,
    /// [`Error::DeviceMismatch`] when the contexts are not on [`device`](Self::device), or an
    /// error of the computation.
    pub fn apply(
        &self,
        context_k: &Tensor,
        context_v: &Tensor,
        strength: f32,
    ) -> Result<Option<(Tensor, Tensor)>> {
        check_strength(strength)?;
        let width = context_k.dims().last().copied().unwrap_or(0);
        let Some((k_module, v_module)) = self.modules.get(&width) else {
            return Ok(None);
        };
        if context_v.dims().last() != Some(&width) {
            return Err(Error::invalid_argument(
                "hypernetwork contexts",
                format!(
                    "key context {} and value context {} differ in width",
                    context_k.shape(),
                    context_v.shape()
                ),
            ));
        }
        for c in [context_k, context_v] {
            if c.device() != self.device {
                return Err(Error::DeviceMismatch {
                    op: "hypernetwork",
                    lhs: c.device().to_string(),
                    rhs: self.device.to_string(),
                });
            }
        }
        let k = in_f32(context_k, |x| k_module.forward(x, strength))?;
        let v = in_f32(context_v, |x| v_module.forward(x, strength))?;
        Ok(Some((k, v)))
    }
}

/// Runs `f` on `x` in `f32` and returns the result in `x`'s dtype.
fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return f(x);
    }
    f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
}

/// A strength must be a finite number (negative values are allowed, as in A1111).
pub(crate) fn check_strength(strength: f32) -> Result<()> {
    if strength.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            "hypernetwork strength",
            format!("{strength} is not a finite number"),
        ))
    }
}

/// Opens a hypernetwork pickle, refusing safetensors files with a clear message.
fn open_pickle(path: &Path) -> Result<CkptFile> {
    use std::io::Read as _;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| Error::io(path, e))?
        .take(64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    if head.is_empty() {
        return Err(Error::invalid_file(path, "an empty file (0 bytes)"));
    }
    let looks_like_safetensors = head.len() > 8 && head[8] == b'{' && {
        let mut n = [0u8; 8];
        n.copy_from_slice(&head[..8]);
        u64::from_le_bytes(n) < 100_000_000
    };
    if looks_like_safetensors && !matches!(sniff(&head), ContainerFormat::TorchZip) {
        return Err(Error::invalid_file(
            path,
            "a safetensors file; AUTOMATIC1111 hypernetworks are torch.save `.pt` files",
        ));
    }
    CkptFile::open(path, &Limits::default())
}
