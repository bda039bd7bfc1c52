//! Reading a LoRA file into modules (A1111 `networks.py load_network`): every key is classified,
//! every tensor is checked for NaN and infinity, keys are grouped by module, each module gets
//! its algorithm, and what cannot be used is listed with the reason.

use std::collections::{BTreeMap, HashMap};

use super::bundle;
use super::family::{self, OtherFamily};
use super::keys::{Component, KeyKind, ModulePath, parse_key};
use super::modules::{AlphaSource, LoraModule, PartSet, build_module};
use super::peft::PeftConfigs;
use super::report::{SkipReason, SkippedKey};
use super::source::LoraSource;
use crate::adapters::Embedding;
use crate::error::{Error, Result};
use crate::weights::safetensors::escape_untrusted;
use std::sync::Arc;

/// What a file holds, ready to apply.
pub(crate) struct Parsed {
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) modules: Vec<LoraModule>,
    pub(crate) embeddings: Vec<Arc<Embedding>>,
    pub(crate) skipped: Vec<SkippedKey>,
    pub(crate) other_family: Option<OtherFamily>,
}

/// One module's keys while grouping.
struct Group {
    name: String,
    component: Component,
    path: ModulePath,
    parts: PartSet,
}

/// Scalar parts: one value each.
const SCALAR_PARTS: &[&str] = &["alpha", "scale", "on_input"];

/// LyCORIS part names that are also the last component of a plain model weight's name.
const BARE_MODEL_PARTS: &[&str] = &["bias", "scale"];

/// The error for a file none of whose keys is a LoRA tensor: empty, or (most often) a full
/// model checkpoint given as a LoRA.
fn nothing_to_apply(file: &str, keys: &[String]) -> Error {
    let Some(first) = keys.first() else {
        return Error::invalid_file(file, "holds no tensors, so no LoRA or LyCORIS module");
    };
    let full_model = keys.iter().any(|k| {
        [
            "model.diffusion_model.",
            "first_stage_model.",
            "cond_stage_model.",
        ]
        .iter()
        .any(|prefix| k.starts_with(prefix))
    });
    let hint = if full_model {
        "; it is a full model checkpoint (original-layout weights): load it as the model, or \
         extract a LoRA from it"
    } else {
        ""
    };
    Error::invalid_file(
        file,
        format!(
            "holds no LoRA or LyCORIS tensors: none of its {} keys (the first `{}`) is a LoRA \
             tensor name{hint}",
            keys.len(),
            escape_untrusted(first)
        ),
    )
}

/// Parses the tensors of `source`.
///
/// # Errors
/// [`Error::InvalidFile`] naming the file: for a file with no LoRA tensor at all (a full
/// model checkpoint, say), and naming the tensor for NaN or infinite values, a scalar
/// part that is not one value, two keys that spell the same tensor of a module, malformed
/// PEFT metadata; read errors of the file.
pub(crate) fn parse(source: &LoraSource) -> Result<Parsed> {
    let file = source.describe();
    let metadata: BTreeMap<String, String> = source.metadata().into_iter().collect();
    let peft = PeftConfigs::parse(&metadata, &file)?;
    let mut other_family = family::from_metadata(&metadata);
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<(Component, ModulePath), usize> = HashMap::new();
    let mut bundles: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut skipped = Vec::new();

    for key in source.names() {
        check_finite(source, &key)?;
        match parse_key(&key) {
            KeyKind::Module {
                component,
                path,
                part,
            } => {
                if SCALAR_PARTS.contains(&part.as_str()) {
                    check_scalar(source, &key)?;
                }
                let slot = *index.entry((component, path.clone())).or_insert_with(|| {
                    groups.push(Group {
                        name: module_name(&key, component, &path),
                        component,
                        path,
                        parts: PartSet::default(),
                    });
                    groups.len() - 1
                });
                let group = &mut groups[slot];
                if let Some(first) = group.parts.parts.insert(part.clone(), key.clone()) {
                    return Err(Error::invalid_file(
                        &file,
                        format!(
                            "keys `{}` and `{}` are both the `{part}` of module `{}`",
                            escape_untrusted(&first),
                            escape_untrusted(&key),
                            escape_untrusted(&group.name)
                        ),
                    ));
                }
            }
            KeyKind::BundledEmbedding { name, rest } => {
                bundles.entry(name).or_default().push((rest, key));
            }
            KeyKind::OtherFamily { family } => {
                if other_family.is_none() {
                    other_family = Some(family::from_key(family, &key));
                }
            }
            KeyKind::Unrecognised => skipped.push(SkippedKey {
                key,
                reason: SkipReason::UnrecognisedKey,
            }),
        }
    }

    // Bare `.bias`/`.scale` tensors are model weights unless a LoRA part sits beside them.
    let lora_like = groups.iter().any(|g| {
        g.parts
            .parts
            .keys()
            .any(|p| !BARE_MODEL_PARTS.contains(&p.as_str()))
    });
    if !lora_like && bundles.is_empty() && other_family.is_none() {
        return Err(nothing_to_apply(&file, &source.names()));
    }

    let mut modules = Vec::new();
    for g in groups {
        let Some(algorithm) = g.parts.algorithm() else {
            let parts: Vec<String> = g.parts.parts.keys().cloned().collect();
            skipped.extend(g.parts.parts.values().map(|key| SkippedKey {
                key: key.clone(),
                reason: SkipReason::UnsupportedAlgorithm {
                    parts: parts.clone(),
                },
            }));
            continue;
        };
        skipped.extend(g.parts.unused(algorithm).into_iter().map(|key| SkippedKey {
            key,
            reason: SkipReason::UnusedPart { algorithm },
        }));
        let alpha = match &g.path {
            ModulePath::Dotted(p) => peft.alpha_for(g.component, p),
            ModulePath::Underscored(_) => AlphaSource::Tensor,
        };
        modules.push(build_module(
            g.name,
            g.component,
            g.path,
            &g.parts,
            algorithm,
            alpha,
        ));
    }
    let embeddings = bundle::embeddings(&bundles, source, &mut skipped)?;
    Ok(Parsed {
        metadata,
        modules,
        embeddings,
        skipped,
        other_family,
    })
}

/// The module's name for reports: kohya's module name as written (`lora_unet_…`), or the
/// component and dotted path (`unet.down_blocks.0.…`, `text_encoder.text_model.…`).
fn module_name(key: &str, component: Component, path: &ModulePath) -> String {
    match path {
        ModulePath::Underscored(_) => {
            let key = key.strip_prefix("lora.").unwrap_or(key);
            key.split_once('.').map_or(key, |(m, _)| m).to_string()
        }
        ModulePath::Dotted(p) => match component {
            Component::Unet => format!("unet.{p}"),
            Component::TextEncoder => format!("text_encoder.{p}"),
        },
    }
}

fn check_finite(source: &LoraSource, key: &str) -> Result<()> {
    let values = source.read(key)?;
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(Error::invalid_file(
            source.describe(),
            format!(
                "tensor `{}` holds {} values",
                escape_untrusted(key),
                if bad.is_nan() { "NaN" } else { "infinite" }
            ),
        ));
    }
    Ok(())
}

fn check_scalar(source: &LoraSource, key: &str) -> Result<()> {
    let count = source.info(key).map(|i| i.shape.elem_count());
    if count != Some(1) {
        return Err(Error::invalid_file(
            source.describe(),
            format!(
                "`{}` should hold one value, it holds {}",
                escape_untrusted(key),
                count.unwrap_or(0)
            ),
        ));
    }
    Ok(())
}
