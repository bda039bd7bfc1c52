//! Textual-inversion embeddings bundled in a LoRA file (A1111 `networks.py load_network`:
//! `bundle_emb.<name>.<rest>` keys, then `create_embedding_from_data`): one tensor per name
//! (`string_to_param.*`, or any single tensor) becomes an [`Embedding`]; an SDXL pair
//! (`clip_l` + `clip_g`) or several tensors under one name cannot serve an SD 1.x text encoder
//! and are reported.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::report::{SkipReason, SkippedKey};
use super::source::LoraSource;
use crate::adapters::Embedding;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// The embeddings of a file, from `name → [(rest, key)]` in file order.
pub(crate) fn embeddings(
    bundles: &BTreeMap<String, Vec<(String, String)>>,
    source: &LoraSource,
    skipped: &mut Vec<SkippedKey>,
) -> Result<Vec<Arc<Embedding>>> {
    let mut out = Vec::new();
    for (name, parts) in bundles {
        let unusable = |reason: &str, skipped: &mut Vec<SkippedKey>| {
            skipped.extend(parts.iter().map(|(_, key)| SkippedKey {
                key: key.clone(),
                reason: SkipReason::UnusableEmbedding {
                    reason: format!("`{name}`: {reason}"),
                },
            }));
        };
        let has = |p: &str| parts.iter().any(|(rest, _)| rest == p);
        if has("clip_l") || has("clip_g") {
            unusable(
                "an SDXL embedding (clip_l / clip_g, one part per text encoder)",
                skipped,
            );
            continue;
        }
        let [(_, key)] = parts.as_slice() else {
            unusable("several tensors under one name", skipped);
            continue;
        };
        let dims = source
            .info(key)
            .map(|i| i.shape.dims().to_vec())
            .unwrap_or_default();
        let vectors = match dims[..] {
            [width] => vec![1, width],
            [n, width] => vec![n, width],
            _ => {
                unusable(&format!("shape {dims:?} is not [vectors, width]"), skipped);
                continue;
            }
        };
        let data = source.read(key)?;
        let tensor = Tensor::from_vec(data, vectors, Device::Cpu)?;
        let embedding = Embedding::new(name.clone(), tensor).map_err(|e| {
            Error::invalid_file(source.describe(), format!("bundled embedding `{key}`: {e}"))
        })?;
        out.push(Arc::new(embedding));
    }
    Ok(out)
}
