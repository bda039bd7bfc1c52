//! Textual-inversion embeddings: named vectors that take the place of their trigger word's
//! token embeddings (AUTOMATIC1111 `modules/textual_inversion/textual_inversion.py`,
//! `EmbeddingDatabase`).
//!
//! [`Embedding::open`] reads every file layout people share (formats.md §4.2): A1111 `.pt`
//! files (and the older `ParameterDict` form), diffusers `learned_embeds.bin`/`.safetensors`,
//! kohya `emb_params` files, SDXL `clip_l`/`clip_g` files, PNG images carrying the embedding in
//! their `sd-ti-embedding` text chunk or in their pixels, and bare tensors under a trigger word
//! the caller names. Pickles go through the restricted reader of [`crate::weights::ckpt`], so no
//! file can run code. [`EmbeddingSet`] then finds the triggers in a prompt's tokens.

mod image;
mod load;

use std::path::PathBuf;
use std::sync::Arc;

pub use load::{EmbeddingTrigger, MAX_EMBEDDING_FILE_BYTES, MAX_EMBEDDING_WIDTH};

use crate::error::{Error, Result};
use crate::prompt::{EmbeddingLookup, EmbeddingMatch};
use crate::tensor::{Device, Tensor};
use crate::tokenizer::Tokenizer;

/// One textual-inversion embedding: a trigger name and its vectors.
///
/// Cloning is cheap (tensors share their storage); share loaded embeddings as
/// `Arc<Embedding>`.
#[derive(Debug, Clone)]
pub struct Embedding {
    name: String,
    vectors: Tensor,
    /// One part per text encoder (SDXL files: `clip_l`, `clip_g`); empty for single-encoder
    /// embeddings.
    parts: Vec<(String, Tensor)>,
    hash: Option<String>,
    source: Option<Arc<EmbeddingSource>>,
}

/// The file layouts an embedding can come in (formats.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmbeddingFormat {
    /// AUTOMATIC1111's `.pt`: `{"string_to_param": {"*": tensor}, "name", "step", …}`.
    A1111,
    /// The original textual-inversion `.pt`, whose `string_to_param` is a pickled
    /// `torch.nn.ParameterDict`.
    ParameterDict,
    /// diffusers' `learned_embeds.bin` / `.safetensors`: one tensor keyed by its token.
    Diffusers,
    /// kohya's `{"emb_params": tensor}` (`.safetensors` or `.pt`).
    Kohya,
    /// SDXL: `{"clip_l": tensor, "clip_g": tensor}`, one part per text encoder.
    Sdxl,
    /// A PNG (or another image) with the embedding in its `sd-ti-embedding` text chunk.
    ImageText,
    /// A PNG with the embedding drawn into its pixels (A1111's `insert_image_data_embed`).
    ImagePixels,
    /// A bare tensor saved with `torch.save` (the caller names the trigger).
    RawTensor,
}

/// Where a loaded embedding came from, and what its file says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingSource {
    /// The file.
    pub path: PathBuf,
    /// Its layout.
    pub format: EmbeddingFormat,
    /// The token the file stores: an A1111 file's `name`, a diffusers file's key.
    pub stored_name: Option<String>,
    /// `step`: the training step it was saved at.
    pub step: Option<i64>,
    /// `sd_checkpoint`: the short hash of the checkpoint it was trained on.
    pub sd_checkpoint: Option<String>,
    /// `sd_checkpoint_name`: that checkpoint's name.
    pub sd_checkpoint_name: Option<String>,
    /// The file's sha256, 64 lowercase hex digits.
    pub sha256: String,
}

impl Embedding {
    /// An embedding triggered by `name`, with `vectors` `[n, width]` (any device; kept as given).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty name, vectors that are not a non-empty matrix, or
    /// values that are not finite.
    pub fn new(name: impl Into<String>, vectors: Tensor) -> Result<Self> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(Error::invalid_argument("embedding name", "is empty"));
        }
        if vectors.rank() != 2 || vectors.dims()[0] == 0 || vectors.dims()[1] == 0 {
            return Err(Error::invalid_argument(
                "embedding vectors",
                format!("{name}: shape {} is not [vectors, width]", vectors.shape()),
            ));
        }
        if vectors.to_vec()?.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid_argument(
                "embedding vectors",
                format!("{name}: holds NaN or infinite values"),
            ));
        }
        Ok(Embedding {
            name,
            vectors,
            parts: Vec::new(),
            hash: None,
            source: None,
        })
    }

    /// An embedding with one part per text encoder (SDXL: `("clip_l", [n, 768])` and
    /// `("clip_g", [n, 1280])`). [`vectors`](Self::vectors) is then the parts side by side
    /// (`[n, 2048]`), whose width is what AUTOMATIC1111 compares with a model's to skip the
    /// embedding on other model families; [`part`](Self::part) gives one encoder's vectors.
    ///
    /// # Errors
    /// Those of [`new`](Self::new) for any part, and [`Error::InvalidArgument`] for no parts,
    /// two parts with one key, or parts with different vector counts.
    pub fn per_encoder(name: impl Into<String>, parts: Vec<(String, Tensor)>) -> Result<Self> {
        let name = name.into();
        let Some(count) = parts.first().map(|(_, t)| t.dims().first().copied()) else {
            return Err(Error::invalid_argument(
                "embedding parts",
                format!("{name}: no parts"),
            ));
        };
        for (i, (key, t)) in parts.iter().enumerate() {
            Embedding::new(name.clone(), t.clone())?;
            if t.dims().first().copied() != count {
                return Err(Error::invalid_argument(
                    "embedding parts",
                    format!(
                        "{name}: part `{key}` has {} vectors, part `{}` {}",
                        t.dims()[0],
                        parts[0].0,
                        count.unwrap_or(0)
                    ),
                ));
            }
            if parts[..i].iter().any(|(k, _)| k == key) {
                return Err(Error::invalid_argument(
                    "embedding parts",
                    format!("{name}: part `{key}` appears twice"),
                ));
            }
        }
        let joined = Tensor::cat(&parts.iter().map(|(_, t)| t).collect::<Vec<_>>(), 1)?;
        let mut e = Embedding::new(name, joined)?;
        e.parts = parts;
        Ok(e)
    }

    /// The same embedding with another trigger name.
    pub fn renamed(mut self, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(Error::invalid_argument("embedding name", "is empty"));
        }
        self.name = name;
        Ok(self)
    }

    /// The same embedding with the short hash A1111 records in the infotext (`TI hashes`).
    pub fn with_hash(mut self, hash: impl Into<String>) -> Self {
        self.hash = Some(hash.into());
        self
    }

    /// The same embedding with its vectors (and parts) on `device`, for a text encoder there.
    ///
    /// # Errors
    /// A device error.
    pub fn to_device(&self, device: Device) -> Result<Embedding> {
        let mut moved = self.clone();
        moved.vectors = self.vectors.to_device(device)?;
        for (_, t) in &mut moved.parts {
            *t = t.to_device(device)?;
        }
        Ok(moved)
    }

    /// The same embedding, recording the file it came from.
    fn with_source(mut self, source: EmbeddingSource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The trigger name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vectors, `[n, width]`.
    pub fn vectors(&self) -> &Tensor {
        &self.vectors
    }

    /// Number of vectors (token positions the embedding occupies).
    pub fn vector_count(&self) -> usize {
        self.vectors.dims()[0]
    }

    /// Width of each vector (768 for SD 1.x).
    pub fn width(&self) -> usize {
        self.vectors.dims()[1]
    }

    /// The short hash for the infotext, when known: for a loaded file, A1111's
    /// `TI hashes` entry, the first 12 hex digits of the file's sha256.
    pub fn hash(&self) -> Option<&str> {
        self.hash.as_deref()
    }

    /// The file it was loaded from and what that file says about itself; `None` for an
    /// embedding built in memory.
    pub fn source(&self) -> Option<&EmbeddingSource> {
        self.source.as_deref()
    }

    /// The per-text-encoder parts (`clip_l`, `clip_g` for SDXL files); empty for an embedding
    /// made for one text encoder.
    pub fn parts(&self) -> &[(String, Tensor)] {
        &self.parts
    }

    /// The vectors for one text encoder: the part named `encoder` of a per-encoder embedding,
    /// or `None` (an embedding without parts has only [`vectors`](Self::vectors)).
    pub fn part(&self, encoder: &str) -> Option<&Tensor> {
        self.parts
            .iter()
            .find(|(k, _)| k == encoder)
            .map(|(_, t)| t)
    }

    /// Whether the embedding can be used with a text encoder `width` wide.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] saying the embedding was made for another model family.
    pub fn check_width(&self, width: usize) -> Result<()> {
        match self.width_mismatch(width) {
            None => Ok(()),
            Some(reason) => Err(Error::invalid_argument("embedding", reason)),
        }
    }

    /// Why the embedding does not fit a text encoder `width` wide, if it does not.
    fn width_mismatch(&self, width: usize) -> Option<String> {
        if self.width() == width {
            return None;
        }
        let made_for = if self.parts.is_empty() {
            format!("{} wide vectors", self.width())
        } else {
            let parts: Vec<String> = self
                .parts
                .iter()
                .map(|(k, t)| format!("{k} {}", t.dims()[1]))
                .collect();
            format!("one part per text encoder ({})", parts.join(", "))
        };
        Some(format!(
            "`{}` is an embedding for another model family: it has {made_for}, the text encoder \
             is {width} wide",
            self.name
        ))
    }
}

/// The embeddings one generation can trigger, indexed by their names' token ids so that a
/// prompt's token stream is matched as A1111 matches it: at each position the longest trigger
/// whose ids follow wins (so matching is case-insensitive and may span several BPE tokens).
#[derive(Debug, Clone, Default)]
pub struct EmbeddingSet {
    embeddings: Vec<Arc<Embedding>>,
    /// The vectors each embedding inserts (its part for this set's text encoder).
    vectors: Vec<Tensor>,
    /// `(trigger ids, index into embeddings)`, longest trigger first.
    triggers: Vec<(Vec<u32>, usize)>,
    /// Embeddings not registered because their width differs from the text encoder's.
    skipped: Vec<String>,
    /// Why each of `skipped` was left out.
    skip_reasons: Vec<String>,
}

impl EmbeddingSet {
    /// Indexes `embeddings` for `tokenizer`. Embeddings whose width is not `width` (the text
    /// encoder's) are skipped and listed by [`skipped`](Self::skipped), as A1111 skips them;
    /// of two embeddings with one name the later wins.
    ///
    /// An SDXL embedding (one part per text encoder) is as wide as its parts together, so it is
    /// skipped here; [`for_encoder`](Self::for_encoder) picks its part for one encoder.
    pub fn new(tokenizer: &Tokenizer, width: usize, embeddings: &[Arc<Embedding>]) -> Self {
        Self::build(tokenizer, width, None, embeddings)
    }

    /// As [`new`](Self::new), for the text encoder whose part of a per-encoder embedding is
    /// named `encoder` (`clip_l`, `clip_g`; A1111's `textual_inversion_key`): per-encoder
    /// embeddings insert that part (and are skipped without one of the right width), others
    /// their vectors when the width fits.
    pub fn for_encoder(
        tokenizer: &Tokenizer,
        encoder: &str,
        width: usize,
        embeddings: &[Arc<Embedding>],
    ) -> Self {
        Self::build(tokenizer, width, Some(encoder), embeddings)
    }

    fn build(
        tokenizer: &Tokenizer,
        width: usize,
        encoder: Option<&str>,
        embeddings: &[Arc<Embedding>],
    ) -> Self {
        let mut set = EmbeddingSet::default();
        for e in embeddings {
            let vectors = match (encoder, e.parts().is_empty()) {
                (Some(key), false) => match e.part(key) {
                    Some(p) if p.dims()[1] == width => Ok(p.clone()),
                    Some(p) => Err(format!(
                        "`{}`: its part `{key}` is {} wide, the text encoder {width}",
                        e.name(),
                        p.dims()[1]
                    )),
                    None => Err(format!("`{}` has no part `{key}`", e.name())),
                },
                _ => match e.width_mismatch(width) {
                    None => Ok(e.vectors().clone()),
                    Some(reason) => Err(reason),
                },
            };
            let vectors = match vectors {
                Ok(v) => v,
                Err(reason) => {
                    set.skipped.push(e.name().to_string());
                    set.skip_reasons.push(reason);
                    continue;
                }
            };
            let ids = tokenizer.encode(e.name());
            if ids.is_empty() {
                set.skipped.push(e.name().to_string());
                set.skip_reasons
                    .push(format!("`{}` has no tokens to match", e.name()));
                continue;
            }
            if let Some(slot) = set.triggers.iter().position(|(t, _)| *t == ids) {
                let index = set.triggers[slot].1;
                set.embeddings[index] = e.clone();
                set.vectors[index] = vectors;
            } else {
                set.triggers.push((ids, set.embeddings.len()));
                set.embeddings.push(e.clone());
                set.vectors.push(vectors);
            }
        }
        // Longest first, then by name for a stable order.
        set.triggers.sort_by(|a, b| {
            b.0.len()
                .cmp(&a.0.len())
                .then_with(|| set.embeddings[a.1].name().cmp(set.embeddings[b.1].name()))
        });
        set
    }

    /// The embedding behind an [`EmbeddingMatch::id`] this set returned.
    pub fn get(&self, id: usize) -> Option<&Arc<Embedding>> {
        self.embeddings.get(id)
    }

    /// Whether no embedding is registered.
    pub fn is_empty(&self) -> bool {
        self.embeddings.is_empty()
    }

    /// The vectors the embedding behind an [`EmbeddingMatch::id`] inserts, `[n, width]`: its
    /// [`vectors`](Embedding::vectors), or for a per-encoder embedding its part for this set's
    /// text encoder.
    pub fn vectors(&self, id: usize) -> Option<&Tensor> {
        self.vectors.get(id)
    }

    /// Names of the embeddings left out for a width that does not match the text encoder.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Why each embedding of [`skipped`](Self::skipped) was left out, in the same order (for
    /// instance "`x` is an embedding for another model family: …").
    pub fn skip_reasons(&self) -> &[String] {
        &self.skip_reasons
    }
}

impl EmbeddingLookup for EmbeddingSet {
    fn find_at(&self, ids: &[u32], position: usize) -> Option<EmbeddingMatch> {
        let rest = ids.get(position..)?;
        self.triggers
            .iter()
            .find(|(trigger, _)| rest.starts_with(trigger))
            .map(|(trigger, id)| EmbeddingMatch {
                id: *id,
                vectors: self.vectors[*id].dims()[0],
                tokens: trigger.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(name: &str, n: usize, width: usize) -> Arc<Embedding> {
        let t = Tensor::full(0.5, [n, width], Device::Cpu).expect("tensor");
        Arc::new(Embedding::new(name, t).expect("embedding"))
    }

    #[test]
    fn longest_trigger_wins_and_case_is_ignored() {
        let tok = Tokenizer::clip().expect("tokenizer");
        let set = EmbeddingSet::new(
            &tok,
            8,
            &[
                emb("style", 1, 8),
                emb("style-bold", 3, 8),
                emb("wide", 2, 16),
            ],
        );
        assert_eq!(set.skipped(), ["wide".to_string()]);
        let ids = tok.encode("a STYLE-BOLD cat in style");
        let at = |p| set.find_at(&ids, p);
        assert_eq!(at(0), None);
        let m = at(1).expect("style-bold at 1");
        assert_eq!(set.get(m.id).map(|e| e.name()), Some("style-bold"));
        assert_eq!((m.vectors, m.tokens), (3, tok.encode("style-bold").len()));
        let last = ids.len() - 1;
        let m = at(last).expect("style at the end");
        assert_eq!(set.get(m.id).map(|e| e.name()), Some("style"));
    }

    #[test]
    fn bad_vectors_are_refused() {
        let nan = Tensor::full(f32::NAN, [1, 4], Device::Cpu).expect("tensor");
        assert!(Embedding::new("x", nan).is_err());
        let flat = Tensor::full(1.0, [4], Device::Cpu).expect("tensor");
        assert!(Embedding::new("x", flat).is_err());
        let ok = Tensor::full(1.0, [1, 4], Device::Cpu).expect("tensor");
        assert!(Embedding::new(" ", ok).is_err());
    }
}
