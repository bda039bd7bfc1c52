//! The adapters of one generation: those the request names and those its prompt's
//! `<lora:…>` / `<hypernet:…>` tags name, resolved, applied to clones of the loaded models, and
//! cached so that the next generation with the same set reuses the patched models.
//!
//! The loaded base models are never modified: a variant shares every tensor an adapter does not
//! touch, so two generations with different adapter sets (or none) can run at the same time on
//! one loaded model.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::adapters::lora::SkipReason;
use crate::adapters::{
    AdapterLibrary, Embedding, Hypernetwork, HypernetworkReport, HypernetworkStack, LoraReport,
    LoraUse, apply_loras,
};
use crate::error::{Error, Result};
use crate::models::{ClipTextModel, UNet2DConditionModel};
use crate::prompt::{ExtraNetwork, ExtraNetworkTag};
use crate::tensor::Device;

/// A hypernetwork applied at a strength (A1111's `<hypernet:NAME:STRENGTH>`).
#[derive(Debug, Clone)]
pub struct HypernetworkUse {
    /// The hypernetwork.
    pub hypernetwork: Arc<Hypernetwork>,
    /// Its multiplier (1 = full strength).
    pub strength: f32,
}

impl HypernetworkUse {
    /// `hypernetwork` at `strength`.
    pub fn new(hypernetwork: Arc<Hypernetwork>, strength: f32) -> Self {
        HypernetworkUse {
            hypernetwork,
            strength,
        }
    }
}

/// What the adapters of a generation did.
#[derive(Debug, Clone, Default)]
pub struct AdapterReport {
    /// Per LoRA, in the order applied: the modules patched and every key of its file that was
    /// not applied, with the reason.
    pub loras: LoraReport,
    /// What each hypernetwork acted on, with warnings (for instance no module for the model's
    /// text-conditioning width); `None` without hypernetworks.
    pub hypernetworks: Option<HypernetworkReport>,
    /// The textual-inversion embeddings given that the prompts could not use (made for another
    /// model family, or with a name that has no tokens), with the reason. Their names stay
    /// ordinary prompt text, as in A1111, which lists them as skipped.
    pub embeddings_skipped: Vec<SkippedEmbedding>,
}

/// A textual-inversion embedding left out of a generation, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEmbedding {
    /// The embedding's name (its trigger word).
    pub name: String,
    /// Why it was left out, for instance its width against the text encoder's.
    pub reason: String,
}

impl std::fmt::Display for AdapterReport {
    /// One line per LoRA (`lora NAME: N modules applied (text encoder S, UNet S)`), one indented
    /// line per key not applied (`  not applied: KEY: REASON`; keys of a part at strength 0
    /// counted on one line), one line per hypernetwork
    /// warning, one line per embedding skipped (`embedding skipped: REASON`, the reason naming it); nothing
    /// without adapters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for lora in &self.loras.loras {
            writeln!(
                f,
                "lora {}: {} modules applied (text encoder {}, UNet {})",
                lora.name,
                lora.applied.len(),
                lora.text_encoder_strength,
                lora.unet_strength
            )?;
            // A part at strength 0 leaves every key of it out on purpose: one line says so.
            let mut at_zero = 0;
            for skipped in &lora.skipped {
                if skipped.reason == SkipReason::ZeroStrength {
                    at_zero += 1;
                } else {
                    writeln!(f, "  not applied: {}: {}", skipped.key, skipped.reason)?;
                }
            }
            if at_zero > 0 {
                writeln!(f, "  not applied: {at_zero} keys of a part at strength 0")?;
            }
        }
        if let Some(hn) = &self.hypernetworks {
            for warning in &hn.warnings {
                writeln!(f, "hypernetwork warning: {warning}")?;
            }
        }
        for skipped in &self.embeddings_skipped {
            writeln!(f, "embedding skipped: {}", skipped.reason)?;
        }
        Ok(())
    }
}

/// The adapters of one generation, in the order they apply: the request's own first, then those
/// of the prompt's tags in prompt order.
#[derive(Debug, Clone, Default)]
pub(crate) struct AdapterSet {
    pub loras: Vec<LoraUse>,
    pub hypernetworks: Vec<HypernetworkUse>,
    /// How many of `loras` / `hypernetworks` came from the request (the rest from tags).
    pub request_loras: usize,
    pub request_hypernetworks: usize,
}

impl AdapterSet {
    /// The request's adapters followed by those named by `tags`, looked up in `library`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `prompt` for a tag that names no file (or when no
    /// library is given), for `dyn=` (dynamic LoRA rank, not supported), or a non-finite
    /// strength; the loaders' errors for the files found.
    pub fn resolve(
        loras: &[LoraUse],
        hypernetworks: &[HypernetworkUse],
        tags: &[ExtraNetworkTag],
        library: Option<&AdapterLibrary>,
    ) -> Result<Self> {
        let mut set = AdapterSet {
            loras: loras.to_vec(),
            hypernetworks: hypernetworks.to_vec(),
            request_loras: loras.len(),
            request_hypernetworks: hypernetworks.len(),
        };
        let empty = AdapterLibrary::new();
        let library = library.unwrap_or(&empty);
        for tag in tags {
            match tag.interpret()? {
                ExtraNetwork::Lora(lora) => {
                    if let Some(rank) = lora.dyn_dim {
                        return Err(Error::invalid_argument(
                            "prompt",
                            format!(
                                "<lora:{}:…:dyn={rank}>: dynamic LoRA ranks are not supported",
                                lora.name
                            ),
                        ));
                    }
                    set.loras.push(LoraUse::with_strengths(
                        library.lora(&lora.name)?,
                        lora.te_multiplier as f32,
                        lora.unet_multiplier as f32,
                    ));
                }
                ExtraNetwork::Hypernet(hn) => set.hypernetworks.push(HypernetworkUse::new(
                    library.hypernetwork(&hn.name)?,
                    hn.multiplier as f32,
                )),
                ExtraNetwork::Other(_) => {}
            }
        }
        for u in &set.loras {
            for (what, s) in [
                ("text-encoder", u.text_encoder_strength),
                ("UNet", u.unet_strength),
            ] {
                if !s.is_finite() {
                    return Err(Error::invalid_argument(
                        "loras",
                        format!(
                            "{}: {what} strength {s} is not a finite number",
                            u.lora.name()
                        ),
                    ));
                }
            }
        }
        if let Some(h) = set.hypernetworks.iter().find(|h| !h.strength.is_finite()) {
            return Err(Error::invalid_argument(
                "hypernetworks",
                format!(
                    "{}: strength {} is not a finite number",
                    h.hypernetwork.name(),
                    h.strength
                ),
            ));
        }
        Ok(set)
    }

    /// A1111's `Lora hashes` infotext value, `name: hash, …` (names without `:` and `,`, as
    /// A1111 writes them), for the LoRAs whose file hash is known; `None` when there is none.
    pub fn lora_hashes(&self) -> Option<String> {
        let mut seen: Vec<(String, String)> = Vec::new();
        for u in &self.loras {
            let Some(hash) = u.lora.short_hash() else {
                continue;
            };
            let name: String = u
                .lora
                .name()
                .chars()
                .filter(|c| !matches!(c, ':' | ','))
                .collect();
            match seen.iter_mut().find(|(n, _)| *n == name) {
                Some(entry) => entry.1 = hash.to_string(),
                None => seen.push((name, hash.to_string())),
            }
        }
        (!seen.is_empty()).then(|| {
            seen.iter()
                .map(|(n, h)| format!("{n}: {h}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// The request's own adapters as prompt tags (` <lora:NAME:TE[:UNET]>`,
    /// ` <hypernet:NAME:STRENGTH>`), for the infotext; empty when all came from the prompt.
    pub fn request_tags(&self) -> String {
        let mut tags = String::new();
        for u in &self.loras[..self.request_loras] {
            let (te, unet) = (u.text_encoder_strength, u.unet_strength);
            if te == unet {
                tags.push_str(&format!(" <lora:{}:{te}>", u.lora.name()));
            } else {
                tags.push_str(&format!(" <lora:{}:{te}:{unet}>", u.lora.name()));
            }
        }
        for h in &self.hypernetworks[..self.request_hypernetworks] {
            tags.push_str(&format!(
                " <hypernet:{}:{}>",
                h.hypernetwork.name(),
                h.strength
            ));
        }
        tags
    }

    pub fn is_empty(&self) -> bool {
        self.loras.is_empty() && self.hypernetworks.is_empty()
    }

    /// The textual-inversion embeddings bundled in the LoRAs, in order (A1111 registers them
    /// while the LoRA is active; an embedding of the same name given separately wins).
    pub fn bundled_embeddings(&self) -> Vec<Arc<Embedding>> {
        self.loras
            .iter()
            .flat_map(|u| u.lora.embeddings().iter().cloned())
            .collect()
    }

    fn key(&self) -> VariantKey {
        VariantKey {
            loras: self
                .loras
                .iter()
                .map(|u| {
                    (
                        u.lora.clone(),
                        u.text_encoder_strength.to_bits(),
                        u.unet_strength.to_bits(),
                    )
                })
                .collect(),
            hypernetworks: self
                .hypernetworks
                .iter()
                .map(|h| (h.hypernetwork.clone(), h.strength.to_bits()))
                .collect(),
        }
    }
}

/// Identifies an adapter set: the same files (by identity) at the same strengths. Holding the
/// `Arc`s keeps their addresses from being reused while the key lives.
#[derive(Debug, Clone)]
struct VariantKey {
    loras: Vec<(Arc<crate::adapters::Lora>, u32, u32)>,
    hypernetworks: Vec<(Arc<Hypernetwork>, u32)>,
}

impl PartialEq for VariantKey {
    fn eq(&self, other: &Self) -> bool {
        self.loras.len() == other.loras.len()
            && self.hypernetworks.len() == other.hypernetworks.len()
            && self
                .loras
                .iter()
                .zip(&other.loras)
                .all(|(a, b)| Arc::ptr_eq(&a.0, &b.0) && a.1 == b.1 && a.2 == b.2)
            && self
                .hypernetworks
                .iter()
                .zip(&other.hypernetworks)
                .all(|(a, b)| Arc::ptr_eq(&a.0, &b.0) && a.1 == b.1)
    }
}

/// The loaded models with one adapter set applied.
#[derive(Debug)]
pub(crate) struct ModelVariant {
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub report: AdapterReport,
}

impl ModelVariant {
    fn build(
        set: &AdapterSet,
        text_encoder: &ClipTextModel,
        unet: &UNet2DConditionModel,
        device: Device,
    ) -> Result<Self> {
        let mut text_encoder = text_encoder.clone();
        let mut unet = unet.clone();
        let loras = apply_loras(&set.loras, &mut text_encoder, &mut unet)?;
        let hypernetworks = if set.hypernetworks.is_empty() {
            None
        } else {
            let mut stack = HypernetworkStack::new();
            for h in &set.hypernetworks {
                let on_device = if h.hypernetwork.device() == device {
                    h.hypernetwork.clone()
                } else {
                    Arc::new(h.hypernetwork.to_device(device)?)
                };
                stack.push(on_device, h.strength)?;
            }
            let report = stack.report(unet.config());
            unet.set_attention_context_hook(Some(Arc::new(stack)));
            Some(report)
        };
        Ok(ModelVariant {
            text_encoder,
            unet,
            report: AdapterReport {
                loras,
                hypernetworks,
                embeddings_skipped: Vec::new(),
            },
        })
    }
}

/// Patched models kept for reuse: the most recently used adapter sets, at most
/// [`VariantCache::CAPACITY`] of them (each holds its own copy of every patched weight).
#[derive(Debug, Default)]
pub(crate) struct VariantCache {
    entries: Mutex<Variants>,
}

/// Cached variants, most recently used first.
type Variants = VecDeque<(VariantKey, Arc<ModelVariant>)>;

impl VariantCache {
    /// Adapter sets kept. Two covers the common back-and-forth between two sets (or a set and
    /// its variation) without holding many copies of patched weights.
    pub const CAPACITY: usize = 2;

    /// The models for `set`, built from the base models on first use.
    pub fn get(
        &self,
        set: &AdapterSet,
        text_encoder: &ClipTextModel,
        unet: &UNet2DConditionModel,
        device: Device,
    ) -> Result<Arc<ModelVariant>> {
        let key = set.key();
        if let Some(found) = self.take(&key)? {
            self.put(key, found.clone())?;
            return Ok(found);
        }
        // Built outside the lock: patching takes a while and other generations must not wait.
        let variant = Arc::new(ModelVariant::build(set, text_encoder, unet, device)?);
        self.put(key, variant.clone())?;
        Ok(variant)
    }

    /// Drops every cached variant (their memory is freed once no generation uses them).
    pub fn clear(&self) -> Result<()> {
        self.lock()?.clear();
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Variants>> {
        self.entries
            .lock()
            .map_err(|_| Error::Internal("adapter variant cache lock poisoned by a panic".into()))
    }

    fn take(&self, key: &VariantKey) -> Result<Option<Arc<ModelVariant>>> {
        let mut entries = self.lock()?;
        Ok(entries
            .iter()
            .position(|(k, _)| k == key)
            .and_then(|i| entries.remove(i))
            .map(|(_, v)| v))
    }

    fn put(&self, key: VariantKey, variant: Arc<ModelVariant>) -> Result<()> {
        let mut entries = self.lock()?;
        entries.retain(|(k, _)| *k != key);
        entries.push_front((key, variant));
        entries.truncate(Self::CAPACITY);
        Ok(())
    }
}
