//! Tokenizing a prompt into 77-token CLIP chunks with per-token emphasis multipliers.
//!
//! Follows AUTOMATIC1111 `modules/sd_hijack_clip.py` (`FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line`,
//! `empty_chunk`, `process_tokens`): each emphasis run is tokenized on its own, tokens fill chunks of 75,
//! a full chunk moves the words after its last comma (when that comma is within the backtrack distance) to
//! the next chunk, `BREAK` closes a chunk, and every chunk is framed `BOS + 75 tokens (EOS-padded) + EOS`.
//!
//! Textual-inversion embeddings plug in through [`EmbeddingLookup`]: an embedding found at a token position
//! occupies as many positions as it has vectors, is never split across chunks, and is recorded as an
//! [`EmbeddingFix`] so the text encoder can put its vectors in place of the placeholder tokens.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

use super::attention::{Fragment, parse_prompt_attention};
use super::emphasis::EmphasisMode;

/// Prompt tokens per chunk (77 minus BOS and EOS).
pub const CHUNK_TOKENS: usize = 75;

/// A1111's default for the "comma padding backtrack" option.
pub const DEFAULT_COMMA_BACKTRACK: usize = 20;

/// An embedding recognised in the token stream by an [`EmbeddingLookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingMatch {
    /// The caller's identifier for the embedding (e.g. an index into its table).
    pub id: usize,
    /// How many vectors the embedding inserts (positions it occupies in the chunk).
    pub vectors: usize,
    /// How many prompt tokens the trigger word spans (consumed from the token stream).
    pub tokens: usize,
}

/// Finds textual-inversion embeddings in a tokenized prompt piece (A1111 `EmbeddingDatabase.find_embedding_at_position`).
pub trait EmbeddingLookup {
    /// The embedding whose trigger tokens start at `ids[position]`, if any. A match with `tokens == 0` is ignored.
    fn find_at(&self, ids: &[u32], position: usize) -> Option<EmbeddingMatch>;
}

/// An embedding placed in a chunk: its vectors replace the placeholder tokens from `offset` (an index into
/// [`PromptChunk::tokens`], BOS counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingFix {
    /// Position of the first vector in the 77-token chunk.
    pub offset: usize,
    /// The caller's identifier from [`EmbeddingMatch::id`].
    pub id: usize,
    /// Number of vectors.
    pub vectors: usize,
}

/// One 77-token chunk: `BOS + 75 tokens + EOS`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    /// Token ids (placeholder id 0 where an embedding's vectors go).
    pub tokens: Vec<u32>,
    /// Emphasis multiplier per token (1.0 on BOS, EOS and padding).
    pub multipliers: Vec<f64>,
    /// Embeddings to insert.
    pub fixes: Vec<EmbeddingFix>,
}

impl PromptChunk {
    /// A chunk with no prompt tokens (A1111 `empty_chunk`), used to pad a shorter prompt's chunk list.
    pub fn empty(tokenizer: &Tokenizer) -> PromptChunk {
        let mut tokens = vec![tokenizer.eos_id(); CHUNK_TOKENS + 2];
        tokens[0] = tokenizer.bos_id();
        PromptChunk {
            tokens,
            multipliers: vec![1.0; CHUNK_TOKENS + 2],
            fixes: Vec::new(),
        }
    }

    /// The ids to feed the text encoder when its padding id differs from EOS (SD 2.x OpenCLIP): every position
    /// after the first EOS becomes `pad_id` (A1111 `process_tokens`). With `pad_id == eos_id` this is the
    /// tokens unchanged.
    pub fn encoder_ids(&self, eos_id: u32, pad_id: u32) -> Vec<u32> {
        let mut ids = self.tokens.clone();
        if let Some(first_eos) = ids.iter().position(|&t| t == eos_id) {
            for t in &mut ids[first_eos + 1..] {
                *t = pad_id;
            }
        }
        ids
    }
}

/// Settings of [`tokenize_prompt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOptions {
    /// Move the text after the last comma to the next chunk when that comma is at most this many tokens from
    /// the end of a full chunk; 0 disables it. Default [`DEFAULT_COMMA_BACKTRACK`].
    pub comma_backtrack: usize,
    /// The emphasis mode; [`EmphasisMode::None`] keeps brackets as literal text (and `BREAK` as a word).
    pub emphasis: EmphasisMode,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            comma_backtrack: DEFAULT_COMMA_BACKTRACK,
            emphasis: EmphasisMode::Original,
        }
    }
}

/// A prompt as chunks, with A1111's token count (prompt tokens, full chunks counted as 75).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPrompt {
    /// At least one chunk.
    pub chunks: Vec<PromptChunk>,
    /// Tokens used: 75 per closed chunk plus the tokens of the last one (A1111's "x/75" counter).
    pub token_count: usize,
}

struct Builder<'a> {
    tokenizer: &'a Tokenizer,
    chunks: Vec<PromptChunk>,
    tokens: Vec<u32>,
    multipliers: Vec<f64>,
    fixes: Vec<EmbeddingFix>,
    token_count: usize,
    last_comma: Option<usize>,
}

impl Builder<'_> {
    fn next_chunk(&mut self, is_last: bool) {
        self.token_count += if is_last {
            self.tokens.len()
        } else {
            CHUNK_TOKENS
        };
        let mut tokens = Vec::with_capacity(CHUNK_TOKENS + 2);
        tokens.push(self.tokenizer.bos_id());
        tokens.append(&mut self.tokens);
        let mut multipliers = Vec::with_capacity(CHUNK_TOKENS + 2);
        multipliers.push(1.0);
        multipliers.append(&mut self.multipliers);
        if tokens.len() < CHUNK_TOKENS + 1 {
            multipliers.resize(CHUNK_TOKENS + 1, 1.0);
            tokens.resize(CHUNK_TOKENS + 1, self.tokenizer.eos_id());
        }
        tokens.push(self.tokenizer.eos_id());
        multipliers.push(1.0);
        // Fix offsets were recorded without BOS.
        let fixes = std::mem::take(&mut self.fixes)
            .into_iter()
            .map(|f| EmbeddingFix {
                offset: f.offset + 1,
                ..f
            })
            .collect();
        self.chunks.push(PromptChunk {
            tokens,
            multipliers,
            fixes,
        });
        self.last_comma = None;
    }
}

/// Tokenizes one prompt (after extra-network tags are removed and the schedule text is chosen) into chunks,
/// as A1111's `tokenize_line`.
///
/// Unlike A1111, an embedding moved to the next chunk by the comma backtrack keeps its vectors (A1111 leaves
/// its fix behind, pointing into the padding of the previous chunk).
///
/// # Errors
/// The errors of [`parse_prompt_attention`] (a malformed `(…:w)` weight); [`Error::InvalidArgument`] for an
/// embedding with more vectors than a chunk holds.
pub fn tokenize_prompt(
    tokenizer: &Tokenizer,
    prompt: &str,
    options: &ChunkOptions,
    embeddings: Option<&dyn EmbeddingLookup>,
) -> Result<TokenizedPrompt> {
    let parsed = if options.emphasis == EmphasisMode::None {
        vec![Fragment {
            text: prompt.to_owned(),
            weight: 1.0,
        }]
    } else {
        parse_prompt_attention(prompt)?
    };
    let comma = tokenizer.token_to_id(",</w>");
    let mut b = Builder {
        tokenizer,
        chunks: Vec::new(),
        tokens: Vec::new(),
        multipliers: Vec::new(),
        fixes: Vec::new(),
        token_count: 0,
        last_comma: None,
    };

    for fragment in &parsed {
        if fragment.is_break() {
            b.next_chunk(false);
            continue;
        }
        let ids = tokenizer.encode(&fragment.text);
        let weight = fragment.weight;
        let mut position = 0;
        while position < ids.len() {
            let token = ids[position];
            if Some(token) == comma {
                b.last_comma = Some(b.tokens.len());
            } else if let Some(last_comma) = b.last_comma
                && options.comma_backtrack != 0
                && b.tokens.len() == CHUNK_TOKENS
                && b.tokens.len() - last_comma <= options.comma_backtrack
            {
                let cut = last_comma + 1;
                let moved_tokens = b.tokens.split_off(cut);
                let moved_mults = b.multipliers.split_off(cut);
                // An embedding is never split: its fix moves with its placeholder tokens.
                let (stay, moved_fixes): (Vec<_>, Vec<_>) =
                    b.fixes.drain(..).partition(|f| f.offset < cut);
                b.fixes = stay;
                b.next_chunk(false);
                b.tokens = moved_tokens;
                b.multipliers = moved_mults;
                b.fixes = moved_fixes
                    .into_iter()
                    .map(|f| EmbeddingFix {
                        offset: f.offset - cut,
                        ..f
                    })
                    .collect();
            }

            if b.tokens.len() == CHUNK_TOKENS {
                b.next_chunk(false);
            }

            let found = embeddings
                .and_then(|e| e.find_at(&ids, position))
                .filter(|m| m.tokens > 0);
            if let Some(m) = found.filter(|m| m.vectors > CHUNK_TOKENS) {
                return Err(Error::invalid_argument(
                    "prompt",
                    format!(
                        "embedding {} has {} vectors, more than the {CHUNK_TOKENS} a chunk holds",
                        m.id, m.vectors
                    ),
                ));
            }
            let Some(m) = found else {
                b.tokens.push(token);
                b.multipliers.push(weight);
                position += 1;
                continue;
            };
            if b.tokens.len() + m.vectors > CHUNK_TOKENS {
                b.next_chunk(false);
            }
            b.fixes.push(EmbeddingFix {
                offset: b.tokens.len(),
                id: m.id,
                vectors: m.vectors,
            });
            b.tokens.extend(std::iter::repeat_n(0, m.vectors));
            b.multipliers.extend(std::iter::repeat_n(weight, m.vectors));
            position += m.tokens;
        }
    }

    if !b.tokens.is_empty() || b.chunks.is_empty() {
        b.next_chunk(true);
    }
    Ok(TokenizedPrompt {
        chunks: b.chunks,
        token_count: b.token_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Treats one token id as the trigger of an embedding with `vectors` vectors.
    struct OneEmbedding {
        trigger: u32,
        vectors: usize,
    }

    impl EmbeddingLookup for OneEmbedding {
        fn find_at(&self, ids: &[u32], position: usize) -> Option<EmbeddingMatch> {
            (ids.get(position) == Some(&self.trigger)).then_some(EmbeddingMatch {
                id: 7,
                vectors: self.vectors,
                tokens: 1,
            })
        }
    }

    fn single(tok: &Tokenizer, word: &str) -> Result<u32> {
        match tok.encode(word).as_slice() {
            [id] => Ok(*id),
            other => Err(Error::Internal(format!(
                "{word:?} is {} tokens",
                other.len()
            ))),
        }
    }

    #[test]
    fn embeddings_are_never_split() -> Result<()> {
        let tok = Tokenizer::clip()?;
        let dog = single(&tok, "dog")?;
        let lookup = OneEmbedding {
            trigger: single(&tok, "cat")?,
            vectors: 8,
        };
        let prompt = format!("{}cat", "dog ".repeat(70));
        let out = tokenize_prompt(&tok, &prompt, &ChunkOptions::default(), Some(&lookup))?;
        assert_eq!(out.chunks.len(), 2);
        let first = &out.chunks[0];
        assert!(first.fixes.is_empty());
        assert_eq!(first.tokens[70], dog);
        assert_eq!(first.tokens[71], tok.eos_id());
        let second = &out.chunks[1];
        assert_eq!(
            second.fixes,
            vec![EmbeddingFix {
                offset: 1,
                id: 7,
                vectors: 8
            }]
        );
        assert_eq!(&second.tokens[1..9], &[0; 8]);
        assert_eq!(second.tokens[9], tok.eos_id());
        assert_eq!(out.token_count, 75 + 8);
        Ok(())
    }

    #[test]
    fn comma_backtrack_moves_embeddings_with_their_tokens() -> Result<()> {
        let tok = Tokenizer::clip()?;
        let lookup = OneEmbedding {
            trigger: single(&tok, "cat")?,
            vectors: 8,
        };
        let prompt = format!("{}, (cat:1.5){}", "dog ".repeat(60), " dog".repeat(10));
        let out = tokenize_prompt(&tok, &prompt, &ChunkOptions::default(), Some(&lookup))?;
        assert_eq!(out.chunks.len(), 2);
        // 60 dogs and the comma stay; the embedding and the dogs after it move.
        assert_eq!(out.chunks[0].tokens[61], single(&tok, ",")?);
        assert_eq!(out.chunks[0].tokens[62], tok.eos_id());
        assert!(out.chunks[0].fixes.is_empty());
        let second = &out.chunks[1];
        assert_eq!(second.fixes.len(), 1);
        assert_eq!(second.fixes[0].offset, 1);
        assert_eq!(&second.multipliers[1..9], &[1.5; 8]);
        assert_eq!(second.multipliers[9], 1.0);
        Ok(())
    }

    #[test]
    fn oversized_embedding_is_an_error() -> Result<()> {
        let tok = Tokenizer::clip()?;
        let lookup = OneEmbedding {
            trigger: single(&tok, "cat")?,
            vectors: 76,
        };
        assert!(tokenize_prompt(&tok, "a cat", &ChunkOptions::default(), Some(&lookup)).is_err());
        Ok(())
    }

    #[test]
    fn empty_chunk_and_encoder_ids() -> Result<()> {
        let tok = Tokenizer::clip()?;
        let empty = PromptChunk::empty(&tok);
        assert_eq!(empty.tokens.len(), 77);
        assert_eq!(empty.tokens[0], tok.bos_id());
        let ids = empty.encoder_ids(tok.eos_id(), 0);
        assert_eq!(ids[1], tok.eos_id());
        assert!(ids[2..].iter().all(|&t| t == 0));
        assert_eq!(empty.encoder_ids(tok.eos_id(), tok.eos_id()), empty.tokens);
        Ok(())
    }
}
