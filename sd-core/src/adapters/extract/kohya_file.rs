//! Writing an [`ExtractedLora`] as a kohya-format LoRA (formats.md §4.3.1): per layer
//! `<name>.lora_down.weight`, `<name>.lora_up.weight` and a 0-dimensional `<name>.alpha` equal
//! to the rank (scale `alpha / rank` = 1), all in one dtype, with kohya's `ss_*` metadata.
//!
//! Metadata and who reads it:
//! - `ss_network_module` = `networks.lora`, `ss_network_dim`, `ss_network_alpha` and
//!   `ss_network_args` (the conv rank, JSON), as kohya's `extract_lora_from_models.py` writes
//!   them; with a per-layer (energy) rank, `Dynamic`, as `resize_lora.py` writes.
//! - `ss_base_model_version` (`sd_v1`, `sd_v2`, `sd_v2_v`) and `ss_v2` (`True`/`False`):
//!   AUTOMATIC1111 decides the SD version from them (`extensions-builtin/Lora/network.py`
//!   `NetworkOnDisk.detect_version`).
//! - `ss_output_name`: A1111's alias for the LoRA. `ss_sd_model_name`: the base model's file
//!   name, shown first in A1111's metadata view. `ss_training_comment`: how it was made.
//! - `sshs_model_hash`: the "addnet" hash A1111 falls back to, sha256 of the bytes after the
//!   header (kohya `train_util.precalculate_safetensors_hashes`). The metadata-dependent legacy
//!   hash (`sshs_legacy_hash`) is not written; readers compute it when they want it.
//! - `modelspec.*` (Stability AI ModelSpec 1.0.1: architecture, implementation, title,
//!   resolution, prediction type), as kohya's `sai_model_spec.build_metadata` writes for a LoRA;
//!   `modelspec.date` is left out so that the same inputs give the same file.
//! - `sdrs_extract`: the extraction settings as JSON.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{BaseModel, ExtractedLora, RankRule};
use crate::error::{Error, Result};
use crate::weights::{RawTensor, StoredDType, WriteDType, write_safetensors_raw};

impl ExtractedLora {
    /// The metadata [`save`](Self::save) writes, except `sshs_model_hash` (which depends on the
    /// tensor bytes). `output_name` is the LoRA's name (A1111's alias; usually the file stem).
    pub fn metadata(&self, output_name: &str) -> BTreeMap<String, String> {
        let o = &self.options;
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("ss_network_module", "networks.lora".into());
        let (dim, alpha) = rank_strings(o.rank);
        put("ss_network_dim", dim);
        put("ss_network_alpha", alpha);
        let args = match o.conv_rank {
            Some(conv) => {
                let (dim, alpha) = rank_strings(conv);
                serde_json::json!({ "conv_dim": dim, "conv_alpha": alpha })
            }
            None => serde_json::json!({}),
        };
        put("ss_network_args", args.to_string());
        let (version, v2, architecture, resolution, prediction) = match self.base_model {
            BaseModel::Sd1 => (
                "sd_v1",
                "False",
                "stable-diffusion-v1",
                "512x512",
                "epsilon",
            ),
            BaseModel::Sd2 {
                v_prediction: false,
            } => (
                "sd_v2",
                "True",
                "stable-diffusion-v2-512",
                "512x512",
                "epsilon",
            ),
            BaseModel::Sd2 { v_prediction: true } => (
                "sd_v2_v",
                "True",
                "stable-diffusion-v2-768-v",
                "768x768",
                "v",
            ),
        };
        put("ss_base_model_version", version.into());
        put("ss_v2", v2.into());
        put("ss_output_name", output_name.into());
        put("ss_sd_model_name", self.base_name.clone());
        let conv = match o.conv_rank {
            Some(rule) => format!(", 3x3 convolutions at {}", rule.describe()),
            None => String::new(),
        };
        put(
            "ss_training_comment",
            format!(
                "LoRA extracted by SVD from the difference {} - {}: {}{conv}",
                self.tuned_name,
                self.base_name,
                o.rank.describe()
            ),
        );
        put("modelspec.sai_model_spec", "1.0.1".into());
        put("modelspec.architecture", format!("{architecture}/lora"));
        put("modelspec.implementation", "diffusers".into());
        put("modelspec.title", output_name.into());
        put("modelspec.resolution", resolution.into());
        put("modelspec.prediction_type", prediction.into());
        let settings = serde_json::json!({
            "tool": format!("sdrs {}", env!("CARGO_PKG_VERSION")),
            "base": self.base_name,
            "tuned": self.tuned_name,
            "rank": o.rank.describe(),
            "conv_rank": o.conv_rank.map(|r| r.describe()),
            "text_encoder": o.text_encoder,
            "min_diff": o.min_diff,
            "singular_values_on": match o.split {
                super::FactorSplit::Up => "lora_up",
                super::FactorSplit::Balanced => "both (square root)",
            },
            "svd": "thin SVD in f64",
            "layers": self.layers.len(),
            "skipped_layers": self.skipped.len(),
        });
        put("sdrs_extract", settings.to_string());
        m
    }

    /// Writes the LoRA to `path` (a `.safetensors` file, replaced atomically) in `dtype`, named
    /// after the file's stem. Returns the metadata written.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when there is no layer to write or a factor value does not fit
    /// `dtype` (use `f32`, or [`FactorSplit::Balanced`](super::FactorSplit::Balanced), whose
    /// factors are smaller), [`Error::Io`] when the file cannot be written.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        dtype: WriteDType,
    ) -> Result<BTreeMap<String, String>> {
        let path = path.as_ref();
        if self.layers.is_empty() {
            return Err(Error::invalid_argument(
                "lora",
                "no layer differs between the models: there is nothing to write",
            ));
        }
        let stored = match dtype {
            WriteDType::F32 => StoredDType::F32,
            WriteDType::F16 => StoredDType::F16,
            WriteDType::BF16 => StoredDType::BF16,
        };
        let mut tensors = Vec::with_capacity(3 * self.layers.len());
        for layer in &self.layers {
            let name = layer.name();
            let rank = layer.rank();
            tensors.push(RawTensor {
                name: format!("{name}.lora_down.weight"),
                dtype: stored,
                shape: layer.down_shape(),
                data: encode(&layer.factors.down, dtype, &name)?,
            });
            tensors.push(RawTensor {
                name: format!("{name}.lora_up.weight"),
                dtype: stored,
                shape: layer.up_shape(),
                data: encode(&layer.factors.up, dtype, &name)?,
            });
            tensors.push(RawTensor {
                name: format!("{name}.alpha"),
                dtype: stored,
                shape: Vec::new(),
                data: encode(&[rank as f32], dtype, &name)?,
            });
        }
        let output_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut metadata: HashMap<String, String> =
            self.metadata(&output_name).into_iter().collect();
        metadata.insert(
            "sshs_model_hash".to_string(),
            data_section_sha256(&tensors, &metadata)?,
        );
        write_safetensors_raw(path, &tensors, Some(&metadata))?;
        Ok(metadata.into_iter().collect())
    }
}

/// `ss_network_dim` / `ss_network_alpha` for a rule: `8` / `8.0` (alpha = rank), or `Dynamic`.
fn rank_strings(rule: RankRule) -> (String, String) {
    match rule {
        RankRule::Fixed(r) => (r.to_string(), format!("{:.1}", r as f64)),
        RankRule::Energy { .. } => ("Dynamic".to_string(), "Dynamic".to_string()),
    }
}

/// Little-endian bytes of `values` in `dtype`; refuses values `dtype` cannot hold.
fn encode(values: &[f32], dtype: WriteDType, layer: &str) -> Result<Vec<u8>> {
    match dtype {
        WriteDType::F32 => Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        WriteDType::F16 => {
            if let Some(v) = values.iter().find(|v| v.abs() > half::f16::MAX.to_f32()) {
                return Err(Error::invalid_argument(
                    "dtype",
                    format!(
                        "layer {layer}: factor value {v:e} exceeds the f16 range; write f32 or \
                         split the singular values evenly"
                    ),
                ));
            }
            Ok(values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect())
        }
        WriteDType::BF16 => Ok(values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect()),
    }
}

/// sha256 (lower-case hex) of what follows the header in the file `tensors` serialize to: the
/// tensor bytes in the order the safetensors format lays them out, which the metadata does not
/// change.
fn data_section_sha256(
    tensors: &[RawTensor],
    metadata: &HashMap<String, String>,
) -> Result<String> {
    let dtype = match tensors.first().map(|t| t.dtype) {
        Some(StoredDType::F16) => safetensors::Dtype::F16,
        Some(StoredDType::BF16) => safetensors::Dtype::BF16,
        _ => safetensors::Dtype::F32,
    };
    let views = tensors
        .iter()
        .map(|t| (t.name.as_str(), HashView { tensor: t, dtype }));
    let bytes = safetensors::serialize(views, Some(metadata.clone()))
        .map_err(|e| Error::invalid_argument("tensors", format!("cannot serialize: {e}")))?;
    let header_len = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| Error::Internal("serialized safetensors shorter than 8 bytes".into()))?;
    let data = bytes.get(8 + header_len..).ok_or_else(|| {
        Error::Internal("serialized safetensors header longer than the file".into())
    })?;
    Ok(Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A tensor of [`ExtractedLora::save`] (all of one dtype) as the safetensors serializer sees it.
struct HashView<'a> {
    tensor: &'a RawTensor,
    dtype: safetensors::Dtype,
}

impl safetensors::View for HashView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.tensor.data)
    }
    fn data_len(&self) -> usize {
        self.tensor.data.len()
    }
}
