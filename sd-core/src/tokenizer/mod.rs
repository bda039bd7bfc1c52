//! The CLIP byte-level BPE tokenizer, giving the same ids as the reference `CLIPTokenizer` of `transformers`.
//!
//! The vocabulary of CLIP ViT-L/14 (used by SD 1.x and as SDXL's first text encoder) is embedded in the crate:
//! [`Tokenizer::clip`] builds it once, on first use, and hands out cheap clones that share it. A checkpoint's own
//! `tokenizer/` folder (diffusers layout) loads with [`Tokenizer::from_dir`] or [`Tokenizer::from_files`].
//!
//! Two text clean-ups are available ([`TextCleanup`]); they give the same ids for ordinary prompts and differ on
//! control and zero-width characters, CJK ideographs, some lower-casing corner cases and upper-case special tokens:
//!
//! - [`TextCleanup::Transformers5`] (the default) matches transformers 5's `CLIPTokenizer`, the
//!   `tokenizers`-library pipeline that diffusers' pipelines use: NFC, per-character lower-casing, CLIP's split
//!   pattern, byte-level BPE; nothing is removed from the text.
//! - [`TextCleanup::Transformers4Slow`] matches transformers 4's Python `CLIPTokenizer` without `ftfy`, as used by
//!   AUTOMATIC1111's web UI and other code built on transformers 4: control and format characters are dropped,
//!   whitespace is collapsed, CJK ideographs become separate words, then NFC and lower-casing.
//!
//! What happens to text, step by step, is documented in the private `normalize` module. In both, the pieces of
//! text are encoded with byte-level BPE (`</w>` marks word ends), and a piece whose BPE result is not in the
//! vocabulary maps to `<|endoftext|>`, as in the reference.
//!
//! # Example
//! ```
//! use sd_core::tokenizer::{Tokenizer, MODEL_MAX_LENGTH};
//! let tok = Tokenizer::clip()?;
//! assert_eq!(tok.encode("a photograph of an astronaut"), [320, 8853, 539, 550, 18376]);
//! let ids = tok.encode_padded("a photograph of an astronaut", MODEL_MAX_LENGTH)?;
//! assert_eq!(ids.len(), 77);
//! assert_eq!((ids[0], ids[6], ids[76]), (tok.bos_id(), tok.eos_id(), tok.pad_id()));
//! # Ok::<(), sd_core::Error>(())
//! ```

mod bpe;
mod normalize;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use bpe::{Bpe, END_OF_WORD, MAX_MERGES};
use normalize::{END_OF_TEXT, Patterns, START_OF_TEXT, Segment};

/// The sequence length of CLIP's text encoder: BOS, up to 75 tokens, EOS, then padding.
pub const MODEL_MAX_LENGTH: usize = 77;

/// The largest vocabulary or merges file accepted; real ones are about 1 MB.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Words cached before the per-word BPE cache is emptied, which bounds its memory.
const MAX_CACHED_WORDS: usize = 100_000;

/// CLIP's BPE merges as published with the original model (MIT licence, see `sd-core/data/README.md`).
static CLIP_MERGES_GZ: &[u8] = include_bytes!("../../data/bpe_simple_vocab_16e6.txt.gz");

/// Which reference tokenizer's text handling [`Tokenizer`] reproduces. Both share the vocabulary and the BPE; they
/// differ in how text is cleaned up and split before BPE (see the [module documentation](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TextCleanup {
    /// transformers 5's `CLIPTokenizer` (backed by the `tokenizers` library), which diffusers' pipelines use with
    /// transformers 5: NFC and per-character lower-casing, nothing removed; `<|endoftext|>` is recognised only as
    /// written, `<|startoftext|>` in any case. This is the default.
    #[default]
    Transformers5,
    /// transformers 4's Python `CLIPTokenizer` without `ftfy` (its `BasicTokenizer` clean-up), which
    /// AUTOMATIC1111's web UI and other transformers 4 code use: control and format characters removed, CJK
    /// ideographs split into words, word-level lower-casing, both special tokens recognised as written.
    Transformers4Slow,
}

/// A CLIP BPE tokenizer.
///
/// Cloning is cheap: clones share the vocabulary, the merge table and the per-word cache. The type is `Send + Sync`;
/// concurrent calls are safe (the cache sits behind a mutex held for the duration of one `encode`).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
    pad_id: u32,
    cleanup: TextCleanup,
}

/// BPE ids per pre-tokenized word.
type WordCache = HashMap<String, Vec<u32>>;

/// The shared, immutable part of a tokenizer plus its cache.
struct Inner {
    encoder: HashMap<String, u32>,
    decoder: HashMap<u32, String>,
    bpe: Bpe,
    patterns: &'static Patterns,
    bos_id: u32,
    eos_id: u32,
    unk_id: u32,
    /// BPE ids per pre-tokenized word; the BPE does not depend on the clean-up, so both share it.
    cache: Mutex<WordCache>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id())
            .field("eos_id", &self.eos_id())
            .field("pad_id", &self.pad_id)
            .field("cleanup", &self.cleanup)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// The tokenizer of CLIP ViT-L/14 (SD 1.x, SDXL's first text encoder), from the vocabulary embedded in the
    /// crate: 49408 tokens, BOS 49406, EOS 49407, padding with EOS.
    ///
    /// The first call decompresses and indexes the vocabulary (about 0.2 s); later calls return a clone
    /// of the same instance.
    ///
    /// # Errors
    /// [`Error::Internal`] if the embedded vocabulary is corrupt, which would be a build defect.
    pub fn clip() -> Result<Tokenizer> {
        static CLIP: OnceLock<std::result::Result<Tokenizer, String>> = OnceLock::new();
        CLIP.get_or_init(|| build_clip().map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| Error::Internal(format!("embedded CLIP vocabulary: {e}")))
    }

    /// Loads a tokenizer from a `vocab.json` (JSON object token → id) and a `merges.txt` (a `#version` header line,
    /// then one `left right` merge per line in priority order; like the reference, at most 48894 merges are read).
    ///
    /// `<|startoftext|>` and `<|endoftext|>` must be in the vocabulary; `<|endoftext|>` is the unknown and padding
    /// token (see [`Tokenizer::with_pad_id`] to change the latter).
    ///
    /// # Errors
    /// [`Error::FileNotFound`] / [`Error::Io`] naming the file that cannot be read, and [`Error::InvalidFile`]
    /// naming the file and line that is malformed (not UTF-8, not a JSON object of non-negative integer ids, no
    /// `#version` header, a merge line without exactly two symbols, a missing special token, over 64 MiB).
    pub fn from_files(
        vocab_json: impl AsRef<Path>,
        merges_txt: impl AsRef<Path>,
    ) -> Result<Tokenizer> {
        let vocab_path = vocab_json.as_ref();
        let merges_path = merges_txt.as_ref();
        let vocab_text = read_text(vocab_path)?;
        let vocab: HashMap<String, u32> = serde_json::from_str(&vocab_text).map_err(|e| {
            Error::invalid_file(
                vocab_path,
                format!("not a JSON object mapping tokens to non-negative 32-bit ids: {e}"),
            )
        })?;
        let merges = parse_merges_file(merges_path, &read_text(merges_path)?)?;
        Tokenizer::from_parts(vocab, &merges).map_err(|missing| {
            Error::invalid_file(
                vocab_path,
                format!("special token `{missing}` is not in the vocabulary"),
            )
        })
    }

    /// Loads `vocab.json` and `merges.txt` from a tokenizer folder (diffusers' `tokenizer/` or `tokenizer_2/`).
    ///
    /// If the folder has a `special_tokens_map.json` (or, failing that, a `tokenizer_config.json`) naming a
    /// `pad_token`, that token pads: SD 2.x and SDXL's second tokenizer pad with `!` (id 0) rather than EOS.
    ///
    /// # Errors
    /// As [`Tokenizer::from_files`]; also [`Error::InvalidFile`] if a special-tokens file is malformed or names a
    /// pad token that is not in the vocabulary.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Tokenizer> {
        let dir = dir.as_ref();
        let mut tok = Tokenizer::from_files(dir.join("vocab.json"), dir.join("merges.txt"))?;
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let config: serde_json::Value = serde_json::from_str(&read_text(&path)?)
                .map_err(|e| Error::invalid_file(&path, format!("not valid JSON: {e}")))?;
            let pad = match config.get("pad_token") {
                None | Some(serde_json::Value::Null) => continue,
                Some(serde_json::Value::String(s)) => s.as_str(),
                Some(other) => match other.get("content").and_then(serde_json::Value::as_str) {
                    Some(s) => s,
                    None => {
                        return Err(Error::invalid_file(
                            &path,
                            "`pad_token` is neither a string nor an object with a string `content`",
                        ));
                    }
                },
            };
            let id = tok.token_to_id(pad).ok_or_else(|| {
                Error::invalid_file(&path, format!("pad token `{pad}` is not in the vocabulary"))
            })?;
            tok.pad_id = id;
            break;
        }
        Ok(tok)
    }

    /// Builds a tokenizer from a vocabulary and merges in priority order; `Err` names a missing special token.
    fn from_parts(
        vocab: HashMap<String, u32>,
        merges: &[(String, String)],
    ) -> std::result::Result<Tokenizer, &'static str> {
        let bos_id = *vocab.get(START_OF_TEXT).ok_or(START_OF_TEXT)?;
        let eos_id = *vocab.get(END_OF_TEXT).ok_or(END_OF_TEXT)?;
        let patterns = normalize::patterns().map_err(|_| "<pattern>")?;
        let bpe = Bpe::new(merges, &vocab, eos_id);
        let decoder = vocab.iter().map(|(t, &id)| (id, t.clone())).collect();
        Ok(Tokenizer {
            inner: Arc::new(Inner {
                encoder: vocab,
                decoder,
                bpe,
                patterns,
                bos_id,
                eos_id,
                unk_id: eos_id,
                cache: Mutex::new(HashMap::new()),
            }),
            pad_id: eos_id,
            cleanup: TextCleanup::default(),
        })
    }

    /// Returns this tokenizer with `pad_id` as the padding id of [`Tokenizer::encode_padded`] (0, the id of `!`,
    /// for SD 2.x's OpenCLIP tokenizer). Other clones keep theirs.
    pub fn with_pad_id(mut self, pad_id: u32) -> Tokenizer {
        self.pad_id = pad_id;
        self
    }

    /// Returns this tokenizer with the text handling of `cleanup`; other clones keep theirs.
    /// [`TextCleanup::Transformers4Slow`] reproduces AUTOMATIC1111 and transformers 4 code.
    pub fn with_cleanup(mut self, cleanup: TextCleanup) -> Tokenizer {
        self.cleanup = cleanup;
        self
    }

    /// The text handling [`Tokenizer::encode`] uses ([`TextCleanup::Transformers5`] unless set otherwise).
    pub fn cleanup(&self) -> TextCleanup {
        self.cleanup
    }

    /// The ids of `text` without BOS/EOS and without truncation, as
    /// `tokenizer(text, add_special_tokens=False).input_ids` in the reference selected by [`Tokenizer::cleanup`].
    ///
    /// This is also the way to tokenize one piece of a prompt (A1111 tokenizes each emphasis run separately).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        // The cache is always left consistent, so a panic elsewhere that poisoned the lock does not matter.
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.cleanup {
            TextCleanup::Transformers5 => self.encode_v5(text, &mut cache, &mut out),
            TextCleanup::Transformers4Slow => self.encode_v4(text, &mut cache, &mut out),
        }
        out
    }

    /// [`Tokenizer::encode`] as transformers 5's `tokenizers` pipeline does it.
    fn encode_v5(&self, text: &str, cache: &mut WordCache, out: &mut Vec<u32>) {
        let inner = &*self.inner;
        for segment in normalize::split_on(text, &[END_OF_TEXT]) {
            let text = match segment {
                Segment::Special(special) => {
                    out.push(self.special_id(special));
                    continue;
                }
                Segment::Text(text) => text,
            };
            let normalized = normalize::normalize_v5(text);
            for segment in normalize::split_on(&normalized, &[START_OF_TEXT]) {
                let text = match segment {
                    Segment::Special(special) => {
                        out.push(self.special_id(special));
                        continue;
                    }
                    Segment::Text(text) => text,
                };
                for piece in normalize::pieces_v5(inner.patterns, text) {
                    for word in normalize::byte_level_words(piece) {
                        if !word.is_empty() {
                            self.encode_word(word, cache, out);
                        }
                    }
                }
            }
        }
    }

    /// [`Tokenizer::encode`] as transformers 4's Python tokenizer does it.
    fn encode_v4(&self, text: &str, cache: &mut WordCache, out: &mut Vec<u32>) {
        let inner = &*self.inner;
        for segment in normalize::split_specials(text) {
            let text = match segment {
                Segment::Special(special) => {
                    out.push(self.special_id(special));
                    continue;
                }
                Segment::Text(text) => text,
            };
            for word in normalize::words(inner.patterns, text) {
                for piece in normalize::pieces(inner.patterns, &word) {
                    if piece == START_OF_TEXT || piece == END_OF_TEXT {
                        out.push(self.special_id(piece));
                    } else {
                        self.encode_word(piece, cache, out);
                    }
                }
            }
        }
    }

    /// Appends the BPE ids of one pre-tokenized word, through the cache.
    fn encode_word(&self, word: &str, cache: &mut WordCache, out: &mut Vec<u32>) {
        if let Some(ids) = cache.get(word) {
            out.extend_from_slice(ids);
        } else {
            let mut ids = Vec::new();
            self.inner.bpe.encode_word(word.as_bytes(), &mut ids);
            out.extend_from_slice(&ids);
            if cache.len() >= MAX_CACHED_WORDS {
                cache.clear();
            }
            cache.insert(word.to_owned(), ids);
        }
    }

    /// The `max_len` ids the text encoder takes for `text`: BOS, the ids of [`Tokenizer::encode`] truncated to
    /// `max_len - 2`, EOS, then the padding id up to `max_len`. With `max_len` = [`MODEL_MAX_LENGTH`] this equals
    /// `tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `max_len < 2` (no room for BOS and EOS).
    pub fn encode_padded(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        self.wrap_padded(&self.encode(text), max_len)
    }

    /// Frames already-tokenized ids like [`Tokenizer::encode_padded`]: BOS, `ids` truncated to `max_len - 2`, EOS,
    /// padding to `max_len`. Long-prompt chunking uses it on each 75-token chunk.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `max_len < 2`.
    pub fn wrap_padded(&self, ids: &[u32], max_len: usize) -> Result<Vec<u32>> {
        if max_len < 2 {
            return Err(Error::invalid_argument(
                "max_len",
                format!(
                    "{max_len} leaves no room for the begin and end tokens; it must be at least 2"
                ),
            ));
        }
        let body = &ids[..ids.len().min(max_len - 2)];
        let mut out = Vec::with_capacity(max_len);
        out.push(self.bos_id());
        out.extend_from_slice(body);
        out.push(self.eos_id());
        out.resize(max_len, self.pad_id);
        Ok(out)
    }

    /// Turns ids back into text: byte-level decoding, `</w>` becomes a space, surrounding spaces trimmed. Special
    /// tokens appear literally; unknown ids are skipped; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut reverse = HashMap::with_capacity(256);
        for (b, c) in bpe::byte_chars().iter().enumerate() {
            reverse.insert(*c, b as u8);
        }
        let mut bytes = Vec::new();
        for token in ids.iter().filter_map(|id| self.inner.decoder.get(id)) {
            let token = token.replace(END_OF_WORD, " ");
            for c in token.chars() {
                match reverse.get(&c) {
                    Some(&b) => bytes.push(b),
                    None if c == ' ' => bytes.push(b' '),
                    None => {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }

    /// The id of a vocabulary entry, spelled as in `vocab.json` (`"cat</w>"`, `",</w>"`, `"<|endoftext|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.encoder.get(token).copied()
    }

    /// The vocabulary entry of an id, spelled as in `vocab.json`.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.inner.decoder.get(&id).map(String::as_str)
    }

    /// The id of `<|startoftext|>` (49406 for CLIP).
    pub fn bos_id(&self) -> u32 {
        self.inner.bos_id
    }

    /// The id of `<|endoftext|>` (49407 for CLIP).
    pub fn eos_id(&self) -> u32 {
        self.inner.eos_id
    }

    /// The padding id used by [`Tokenizer::encode_padded`]: EOS unless set otherwise.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id that pieces missing from the vocabulary map to: `<|endoftext|>`, as in the reference.
    pub fn unk_id(&self) -> u32 {
        self.inner.unk_id
    }

    /// The number of vocabulary entries (49408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.inner.encoder.len()
    }

    fn special_id(&self, special: &str) -> u32 {
        if special == START_OF_TEXT {
            self.inner.bos_id
        } else {
            self.inner.eos_id
        }
    }
}

/// Builds the embedded CLIP tokenizer exactly as CLIP derives its vocabulary: the 256 byte characters, their `</w>`
/// forms, one entry per merge (the concatenation), then the two special tokens.
fn build_clip() -> Result<Tokenizer> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(CLIP_MERGES_GZ)
        .read_to_string(&mut text)
        .map_err(|e| Error::Internal(format!("cannot decompress: {e}")))?;
    let merges: Vec<(String, String)> = text
        .split('\n')
        .skip(1)
        .take(MAX_MERGES)
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect();
    if merges.len() != MAX_MERGES {
        return Err(Error::Internal(format!(
            "{} merges, expected {MAX_MERGES}",
            merges.len()
        )));
    }
    let chars = bpe::byte_chars();
    let bytes = bpe::byte_order();
    let mut list: Vec<String> = bytes
        .iter()
        .map(|&b| chars[usize::from(b)].to_string())
        .collect();
    list.extend(
        bytes
            .iter()
            .map(|&b| format!("{}{END_OF_WORD}", chars[usize::from(b)])),
    );
    list.extend(merges.iter().map(|(l, r)| format!("{l}{r}")));
    list.push(START_OF_TEXT.to_owned());
    list.push(END_OF_TEXT.to_owned());
    let mut vocab = HashMap::with_capacity(list.len());
    for (id, token) in list.into_iter().enumerate() {
        vocab.insert(token, id as u32);
    }
    Tokenizer::from_parts(vocab, &merges)
        .map_err(|missing| Error::Internal(format!("special token `{missing}` missing")))
}

/// Reads a whole text file of at most [`MAX_FILE_BYTES`].
fn read_text(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::invalid_file(
            path,
            format!(
                "larger than {} MiB; not a tokenizer file",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| Error::invalid_file(path, format!("not UTF-8: {e}")))
}

/// Parses a `merges.txt`: a `#version` header, then up to [`MAX_MERGES`] lines of two symbols (blank lines are
/// skipped but count towards the limit, as in the reference).
fn parse_merges_file(path: &Path, text: &str) -> Result<Vec<(String, String)>> {
    let mut lines = text.trim().split('\n');
    let header = lines.next().unwrap_or("");
    if !header.starts_with("#version") {
        return Err(Error::invalid_file(
            path,
            format!(
                "line 1: expected a `#version` header, found {:?}",
                truncate_for_error(header)
            ),
        ));
    }
    let mut merges = Vec::new();
    for (i, line) in lines.take(MAX_MERGES).enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            [] => {}
            [left, right] => merges.push(((*left).to_owned(), (*right).to_owned())),
            _ => {
                return Err(Error::invalid_file(
                    path,
                    format!(
                        "line {}: expected two space-separated symbols, found {:?}",
                        i + 2,
                        truncate_for_error(line)
                    ),
                ));
            }
        }
    }
    Ok(merges)
}

/// The start of a line, for error messages.
fn truncate_for_error(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_vocabulary_shape() -> Result<()> {
        let tok = Tokenizer::clip()?;
        assert_eq!(tok.vocab_size(), 49408);
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.unk_id()),
            (49406, 49407, 49407, 49407)
        );
        assert_eq!(tok.token_to_id("!"), Some(0));
        assert_eq!(tok.token_to_id(",</w>"), Some(267));
        assert_eq!(tok.id_to_token(49407), Some("<|endoftext|>"));
        assert_eq!(
            tok.decode(&tok.encode("A Photo of a CAT, café!")),
            "a photo of a cat , café !"
        );
        Ok(())
    }

    #[test]
    fn shareable_between_threads() -> Result<()> {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Tokenizer>();
        let tok = Tokenizer::clip()?;
        let old = tok.clone().with_cleanup(TextCleanup::Transformers4Slow);
        std::thread::scope(|s| {
            let a = s.spawn(|| tok.encode("猫 <|ENDOFTEXT|>"));
            let b = s.spawn(|| old.encode("猫 <|ENDOFTEXT|>"));
            assert_eq!(
                a.join().ok(),
                Some(vec![163, 234, 360, 27, 347, 40786, 4160, 91, 285])
            );
            assert_eq!(b.join().ok(), Some(vec![163, 234, 360, 49407]));
        });
        Ok(())
    }

    #[test]
    fn padded_rejects_tiny_length() -> Result<()> {
        let tok = Tokenizer::clip()?;
        let err = tok.encode_padded("x", 1).err();
        assert!(matches!(
            err,
            Some(Error::InvalidArgument {
                name: "max_len",
                ..
            })
        ));
        assert_eq!(tok.encode_padded("cat dog", 2)?, [49406, 49407]);
        assert_eq!(
            tok.clone().with_pad_id(0).encode_padded("", 4)?,
            [49406, 49407, 0, 0]
        );
        Ok(())
    }
}
