//! Textual-inversion embeddings: named vectors that take the place of their trigger word's
//! token embeddings (AUTOMATIC1111 `modules/textual_inversion/textual_inversion.py`,
//! `EmbeddingDatabase`).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::prompt::{EmbeddingLookup, EmbeddingMatch};
use crate::tensor::Tensor;
use crate::tokenizer::Tokenizer;

/// One textual-inversion embedding: a trigger name and its vectors.
#[derive(Debug, Clone)]
pub struct Embedding {
    name: String,
    vectors: Tensor,
    hash: Option<String>,
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
            hash: None,
        })
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

    /// The short hash for the infotext, when known.
    pub fn hash(&self) -> Option<&str> {
        self.hash.as_deref()
    }
}

/// The embeddings one generation can trigger, indexed by their names' token ids so that a
/// prompt's token stream is matched as A1111 matches it: at each position the longest trigger
/// whose ids follow wins (so matching is case-insensitive and may span several BPE tokens).
#[derive(Debug, Clone, Default)]
pub struct EmbeddingSet {
    embeddings: Vec<Arc<Embedding>>,
    /// `(trigger ids, index into embeddings)`, longest trigger first.
    triggers: Vec<(Vec<u32>, usize)>,
    /// Embeddings not registered because their width differs from the text encoder's.
    skipped: Vec<String>,
}

impl EmbeddingSet {
    /// Indexes `embeddings` for `tokenizer`. Embeddings whose width is not `width` (the text
    /// encoder's) are skipped and listed by [`skipped`](Self::skipped), as A1111 skips them;
    /// of two embeddings with one name the later wins.
    pub fn new(tokenizer: &Tokenizer, width: usize, embeddings: &[Arc<Embedding>]) -> Self {
        let mut set = EmbeddingSet::default();
        for e in embeddings {
            if e.width() != width {
                set.skipped.push(e.name().to_string());
                continue;
            }
            let ids = tokenizer.encode(e.name());
            if ids.is_empty() {
                set.skipped.push(e.name().to_string());
                continue;
            }
            if let Some(slot) = set.triggers.iter().position(|(t, _)| *t == ids) {
                set.embeddings[set.triggers[slot].1] = e.clone();
            } else {
                set.triggers.push((ids, set.embeddings.len()));
                set.embeddings.push(e.clone());
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

    /// Names of the embeddings left out for a width that does not match the text encoder.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
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
                vectors: self.embeddings[*id].vector_count(),
                tokens: trigger.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Device;

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
