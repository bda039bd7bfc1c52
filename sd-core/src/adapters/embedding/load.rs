//! Reading embedding files of every layout into an [`Embedding`].
//!
//! The layout is recognised by content, never by extension: PNG images, PyTorch pickles (zip or
//! legacy) and safetensors files. Inside a pickle or a safetensors file the layout follows
//! AUTOMATIC1111's `EmbeddingDatabase.load_from_file`: a `string_to_param` dict with exactly one
//! entry, else `clip_l` + `clip_g` (SDXL), else a single tensor (diffusers, or kohya's
//! `emb_params`); anything else, and files with several terms, is an error.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Embedding, EmbeddingFormat, EmbeddingSource, image};
use crate::error::{Error, Result};
use crate::prompt::CHUNK_TOKENS;
use crate::tensor::{Device, Tensor};
use crate::weights::ckpt::{Access, CkptFile, ContainerFormat, sniff};
use crate::weights::pickle::{EmbeddingKind, Limits, Value};
use crate::weights::{ReadMode, SafetensorsFile, SafetensorsLimits, TensorSource};

/// Largest embedding file read, in bytes (an SDXL embedding of 75 vectors is about 600 KB; an
/// image carrying one, a few MB).
pub const MAX_EMBEDDING_FILE_BYTES: u64 = 64 << 20;

/// Widest embedding vector accepted (text encoders are 768 to 1280 wide; an SDXL file's two parts
/// together 2048).
pub const MAX_EMBEDDING_WIDTH: usize = 8192;

/// How the trigger word of an embedding read from a file is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EmbeddingTrigger {
    /// The file name without its extension, as AUTOMATIC1111 names embeddings, except for a
    /// diffusers file (one tensor keyed by its token, like `learned_embeds.bin` holding
    /// `<cat-toy>`), whose stored token is the trigger, as diffusers' `load_textual_inversion`
    /// uses it. An image embedding is triggered by the `name` it stores (else its file name); a
    /// bare tensor needs [`Token`](Self::Token).
    #[default]
    Auto,
    /// Exactly AUTOMATIC1111's rule: the file name without its extension for every file (so a
    /// diffusers file too), the stored `name` for an image embedding.
    A1111,
    /// This word, whatever the file stores.
    Token(String),
}

/// One tensor of an embedding file, checked and read.
pub(super) struct FilePart {
    /// The key it was stored under (`*`, the diffusers token, `emb_params`, `clip_l`, …).
    pub key: String,
    /// `[vectors, width]` (1-D tensors are one vector).
    pub vectors: usize,
    /// Width of each vector.
    pub width: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// What an embedding file holds, whatever its container.
pub(super) struct FileContent {
    pub format: EmbeddingFormat,
    /// One part, or the `clip_l` and `clip_g` parts of an SDXL file.
    pub parts: Vec<FilePart>,
    /// An A1111 file's `name`, a diffusers file's key.
    pub stored_name: Option<String>,
    pub step: Option<i64>,
    pub sd_checkpoint: Option<String>,
    pub sd_checkpoint_name: Option<String>,
}

impl FileContent {
    pub(super) fn new(format: EmbeddingFormat) -> Self {
        FileContent {
            format,
            parts: Vec::new(),
            stored_name: None,
            step: None,
            sd_checkpoint: None,
            sd_checkpoint_name: None,
        }
    }
}

/// Checks a stored tensor's shape before its values are read: 1-D (one vector) or 2-D
/// `[vectors, width]`, with 1 to 75 vectors and a width of 1 to [`MAX_EMBEDDING_WIDTH`].
/// Returns `(vectors, width)`.
pub(super) fn check_shape(path: &Path, key: &str, shape: &[usize]) -> Result<(usize, usize)> {
    let bad = |why: String| {
        Error::invalid_file(
            path,
            format!("embedding tensor `{}` {why}", key.escape_debug()),
        )
    };
    let (vectors, width) = match *shape {
        [w] => (1, w),
        [n, w] => (n, w),
        _ => {
            return Err(bad(format!(
                "has shape {shape:?}; an embedding is [vectors, width] or [width]"
            )));
        }
    };
    if vectors == 0 || width == 0 {
        return Err(bad(format!("is empty (shape {shape:?})")));
    }
    if vectors > CHUNK_TOKENS {
        return Err(bad(format!(
            "has {vectors} vectors; a prompt chunk holds at most {CHUNK_TOKENS}"
        )));
    }
    if width > MAX_EMBEDDING_WIDTH {
        return Err(bad(format!(
            "is {width} wide, more than the {MAX_EMBEDDING_WIDTH} any text encoder takes"
        )));
    }
    Ok((vectors, width))
}

/// Checks that every value is finite, naming the first that is not.
pub(super) fn check_finite(path: &Path, part: &FilePart) -> Result<()> {
    match part.values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::invalid_file(
            path,
            format!(
                "embedding tensor `{}` holds {} at vector {}, component {}",
                part.key.escape_debug(),
                part.values[i],
                i / part.width.max(1),
                i % part.width.max(1)
            ),
        )),
    }
}

impl Embedding {
    /// Reads an embedding file of any layout (formats.md §4.2), triggered as
    /// [`EmbeddingTrigger::Auto`] says: by the file name without extension (AUTOMATIC1111), by
    /// the stored token for a diffusers file (diffusers), by the stored `name` for an image.
    ///
    /// The embedding records its file ([`source`](Self::source)) and A1111's short hash for the
    /// infotext ([`hash`](Self::hash): the first 12 hex digits of the file's sha256).
    ///
    /// Any path given is read; deciding which files of a folder are embeddings is the caller's
    /// (A1111 takes `.pt`, `.bin`, `.safetensors` and images, skipping `*.preview.png` previews
    /// and empty files).
    ///
    /// # Errors
    /// [`Error::FileNotFound`]/[`Error::Io`] for the file; [`Error::Checkpoint`] for a pickle the
    /// restricted reader refuses; [`Error::InvalidFile`] naming the file and the tensor for
    /// everything else: no recognised layout, several terms in one file (as A1111 refuses them),
    /// a tensor that is not 1-D or 2-D, empty, with more than 75 vectors or wider than
    /// [`MAX_EMBEDDING_WIDTH`], non-float or non-finite values, SDXL parts with different vector
    /// counts, a bare tensor without a caller-named token, a file over
    /// [`MAX_EMBEDDING_FILE_BYTES`].
    pub fn open(path: impl AsRef<Path>) -> Result<Embedding> {
        Self::open_with(path, &EmbeddingTrigger::Auto)
    }

    /// Reads an embedding file triggered by `token` (required for a bare tensor file).
    ///
    /// # Errors
    /// Those of [`open`](Self::open); [`Error::InvalidArgument`] for an empty token.
    pub fn open_with_token(path: impl AsRef<Path>, token: &str) -> Result<Embedding> {
        Self::open_with(path, &EmbeddingTrigger::Token(token.to_string()))
    }

    /// Reads an embedding file, choosing its trigger word as `trigger` says.
    ///
    /// # Errors
    /// Those of [`open`](Self::open).
    pub fn open_with(path: impl AsRef<Path>, trigger: &EmbeddingTrigger) -> Result<Embedding> {
        let path = path.as_ref();
        if let EmbeddingTrigger::Token(t) = trigger
            && t.trim().is_empty()
        {
            return Err(Error::invalid_argument("embedding token", "is empty"));
        }
        let bytes = read_bounded(path)?;
        let sha256: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let content = read_content(path, &bytes)?;
        drop(bytes);
        build(path, content, sha256, trigger)
    }
}

/// Reads a whole file of at most [`MAX_EMBEDDING_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::invalid_file(path, "not a regular file"));
    }
    if meta.len() > MAX_EMBEDDING_FILE_BYTES {
        return Err(Error::invalid_file(
            path,
            format!(
                "{} bytes is more than an embedding file may hold ({MAX_EMBEDDING_FILE_BYTES})",
                meta.len()
            ),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_EMBEDDING_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_EMBEDDING_FILE_BYTES {
        return Err(Error::invalid_file(path, "grew while it was read"));
    }
    Ok(bytes)
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Routes a file by its first bytes.
fn read_content(path: &Path, bytes: &[u8]) -> Result<FileContent> {
    if bytes.is_empty() {
        return Err(Error::invalid_file(path, "an empty file (0 bytes)"));
    }
    if bytes.starts_with(PNG_MAGIC) {
        return image::read_image(path, bytes);
    }
    match sniff(bytes) {
        ContainerFormat::TorchZip | ContainerFormat::TorchLegacy => read_pickle(path),
        ContainerFormat::Safetensors => read_safetensors(path),
        ContainerFormat::Refused(format) => Err(Error::invalid_file(
            path,
            format!("{format:?} files are not read; embeddings are .pt, .bin, .safetensors or PNG"),
        )),
        ContainerFormat::Unknown => {
            let image_kind = if bytes.get(8..12) == Some(b"WEBP") {
                Some("WebP")
            } else if bytes.get(4..12) == Some(b"ftypavif") {
                Some("AVIF")
            } else if bytes.starts_with(&[0xff, 0x0a]) || bytes.get(4..8) == Some(b"JXL ") {
                Some("JPEG XL")
            } else {
                None
            };
            Err(Error::invalid_file(
                path,
                match image_kind {
                    Some(kind) => {
                        format!("embeddings in {kind} images are not read; save the image as PNG")
                    }
                    None => "not an embedding file: neither a PyTorch pickle, a safetensors \
                             file nor a PNG image"
                        .to_string(),
                },
            ))
        }
    }
}

fn multiple_terms(path: &Path, keys: &[String]) -> Error {
    let shown: Vec<String> = keys
        .iter()
        .take(8)
        .map(|k| format!("`{}`", k.escape_debug()))
        .collect();
    Error::invalid_file(
        path,
        format!(
            "embedding file has multiple terms in it ({} entries: {}{})",
            keys.len(),
            shown.join(", "),
            if keys.len() > 8 { ", …" } else { "" }
        ),
    )
}

fn read_pickle(path: &Path) -> Result<FileContent> {
    let ckpt = CkptFile::open_with(path, &Limits::default(), Access::Read)?;
    let file = ckpt.embedding()?;
    let format = match file.kind {
        EmbeddingKind::A1111 => EmbeddingFormat::A1111,
        EmbeddingKind::ParameterDict => EmbeddingFormat::ParameterDict,
        EmbeddingKind::Diffusers => EmbeddingFormat::Diffusers,
        EmbeddingKind::Kohya => EmbeddingFormat::Kohya,
        EmbeddingKind::Sdxl => EmbeddingFormat::Sdxl,
        EmbeddingKind::RawTensor => EmbeddingFormat::RawTensor,
        EmbeddingKind::List => {
            return Err(Error::invalid_file(
                path,
                "a list of embeddings is not an embedding file (AUTOMATIC1111 and diffusers \
                 refuse it too)",
            ));
        }
    };
    // A1111 takes a single-tensor file only when the whole dict has one entry.
    if matches!(format, EmbeddingFormat::Diffusers | EmbeddingFormat::Kohya) {
        let doc = ckpt.document();
        let entries = doc.dict(doc.root()).unwrap_or(&[]);
        if entries.len() != 1 {
            let keys: Vec<String> = entries
                .iter()
                .map(|&(k, _)| match k {
                    Value::Int(i) => i.to_string(),
                    _ => doc.str(k).unwrap_or("?").to_string(),
                })
                .collect();
            return Err(multiple_terms(path, &keys));
        }
    }
    let mut content = FileContent::new(format);
    content.stored_name = match format {
        EmbeddingFormat::Diffusers => file.parts.first().map(|p| p.key.clone()),
        _ => file.name.clone(),
    };
    content.step = file.step;
    content.sd_checkpoint = file.sd_checkpoint.clone();
    content.sd_checkpoint_name = file.sd_checkpoint_name.clone();
    for part in &file.parts {
        let shape = ckpt
            .tensor_decl(part.tensor)
            .map(|d| d.shape.clone())
            .unwrap_or_default();
        let (vectors, width) = check_shape(path, &part.key, &shape)?;
        let values = ckpt.read_f32_id(part.tensor, &part.key)?;
        content.parts.push(FilePart {
            key: part.key.clone(),
            vectors,
            width,
            values,
        });
    }
    Ok(content)
}

fn read_safetensors(path: &Path) -> Result<FileContent> {
    let st = SafetensorsFile::open_with(path, ReadMode::Buffered, &SafetensorsLimits::default())?;
    let names = st.tensor_names();
    let has = |k: &str| names.iter().any(|n| n == k);
    let (format, keys) = if has("clip_l") && has("clip_g") {
        (
            EmbeddingFormat::Sdxl,
            vec!["clip_l".to_string(), "clip_g".to_string()],
        )
    } else {
        match names.as_slice() {
            [] => return Err(Error::invalid_file(path, "holds no tensor")),
            [key] if key == "emb_params" => (EmbeddingFormat::Kohya, names.clone()),
            [_] => (EmbeddingFormat::Diffusers, names.clone()),
            _ => return Err(multiple_terms(path, &names)),
        }
    };
    let mut content = FileContent::new(format);
    if format == EmbeddingFormat::Diffusers {
        content.stored_name = keys.first().cloned();
    }
    for key in keys {
        let shape = st
            .tensor_info(&key)
            .map(|i| i.shape.dims().to_vec())
            .unwrap_or_default();
        let (vectors, width) = check_shape(path, &key, &shape)?;
        let values = st.read_f32(&key)?;
        content.parts.push(FilePart {
            key,
            vectors,
            width,
            values,
        });
    }
    Ok(content)
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The trigger word for `content` read from `path`.
fn trigger_name(path: &Path, content: &FileContent, trigger: &EmbeddingTrigger) -> Result<String> {
    let stored = content
        .stored_name
        .as_deref()
        .filter(|s| !s.trim().is_empty());
    let name = match (trigger, content.format) {
        (EmbeddingTrigger::Token(t), _) => t.clone(),
        (_, EmbeddingFormat::RawTensor) => {
            return Err(Error::invalid_file(
                path,
                "a bare tensor holds no trigger word; name one (Embedding::open_with_token)",
            ));
        }
        (_, EmbeddingFormat::ImageText | EmbeddingFormat::ImagePixels) => {
            stored.map_or_else(|| file_stem(path), str::to_string)
        }
        (EmbeddingTrigger::Auto, EmbeddingFormat::Diffusers) => {
            stored.map_or_else(|| file_stem(path), str::to_string)
        }
        _ => file_stem(path),
    };
    if name.trim().is_empty() {
        return Err(Error::invalid_file(
            path,
            "the embedding's trigger word (its file name) is empty; name one",
        ));
    }
    Ok(name)
}

fn build(
    path: &Path,
    content: FileContent,
    sha256: String,
    trigger: &EmbeddingTrigger,
) -> Result<Embedding> {
    let name = trigger_name(path, &content, trigger)?;
    for part in &content.parts {
        check_finite(path, part)?;
    }
    if let [first, rest @ ..] = content.parts.as_slice()
        && let Some(other) = rest.iter().find(|p| p.vectors != first.vectors)
    {
        return Err(Error::invalid_file(
            path,
            format!(
                "embedding parts disagree: `{}` has {} vectors, `{}` {}",
                first.key, first.vectors, other.key, other.vectors
            ),
        ));
    }
    let format = content.format;
    let is_sdxl = format == EmbeddingFormat::Sdxl;
    let mut tensors = Vec::with_capacity(content.parts.len());
    for part in content.parts {
        let t = Tensor::from_vec(part.values, [part.vectors, part.width], Device::Cpu)?;
        tensors.push((part.key, t));
    }
    let embedding = if is_sdxl {
        Embedding::per_encoder(name, tensors)?
    } else {
        let Some((_, t)) = tensors.into_iter().next() else {
            return Err(Error::invalid_file(path, "holds no embedding tensor"));
        };
        Embedding::new(name, t)?
    };
    let short = sha256.get(..12).unwrap_or(&sha256).to_string();
    Ok(embedding.with_hash(short).with_source(EmbeddingSource {
        path: PathBuf::from(path),
        format,
        stored_name: content.stored_name,
        step: content.step,
        sd_checkpoint: content.sd_checkpoint,
        sd_checkpoint_name: content.sd_checkpoint_name,
        sha256,
    }))
}
