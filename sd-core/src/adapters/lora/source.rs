//! Where a LoRA's tensors come from: a validated safetensors file, a restricted-pickle
//! checkpoint (`.pt`, `.ckpt`, `.bin`), or any [`TensorSource`]; plus the file's A1111 hash.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::weights::ckpt::{Access, CkptFile};
use crate::weights::layout::{FileKind, sniff};
use crate::weights::pickle::Limits;
use crate::weights::{
    ReadMode, SafetensorsFile, SafetensorsLimits, StoredDType, TensorInfo, TensorSource,
    open_tensor_source,
};

/// The reader behind a LoRA.
enum Reader {
    Safetensors(SafetensorsFile),
    Ckpt(CkptFile),
    Other(Arc<dyn TensorSource>),
}

/// A LoRA's tensors, readable by name, including the integer and boolean scalars (`on_input`,
/// sometimes `alpha`) that [`TensorSource::read_f32`] refuses.
pub(crate) struct LoraSource {
    reader: Reader,
}

/// A file opened as a LoRA source, with what [`Lora`](super::Lora) records about the file.
pub(crate) struct OpenedFile {
    pub(crate) source: LoraSource,
    /// Full sha256 as A1111 computes it (see [`file_hash`]).
    pub(crate) hash: String,
}

impl LoraSource {
    /// Opens `path` with the reader its content calls for.
    ///
    /// # Errors
    /// [`Error::FileNotFound`] / [`Error::Io`]; the readers' errors for a malformed file;
    /// [`Error::Unsupported`] / [`Error::InvalidFile`] for a file that is neither safetensors
    /// nor a PyTorch pickle.
    pub(crate) fn open(path: &Path, mode: ReadMode) -> Result<OpenedFile> {
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut head = Vec::with_capacity(512);
        f.by_ref()
            .take(512)
            .read_to_end(&mut head)
            .map_err(|e| Error::io(path, e))?;
        drop(f);
        let kind = sniff(&head, len);
        let reader = match kind {
            FileKind::Safetensors => Reader::Safetensors(SafetensorsFile::open_with(
                path,
                mode,
                &SafetensorsLimits::default(),
            )?),
            FileKind::Zip | FileKind::Pickle => {
                let access = match mode {
                    ReadMode::Mmap => Access::Mmap,
                    ReadMode::Buffered => Access::Read,
                };
                Reader::Ckpt(CkptFile::open_with(path, &Limits::default(), access)?)
            }
            // Every other kind is refused by the general opener, with its own message.
            _ => Reader::Other(open_tensor_source(path, mode)?),
        };
        let hash = file_hash(path, kind == FileKind::Safetensors)?;
        Ok(OpenedFile {
            source: LoraSource { reader },
            hash,
        })
    }

    /// Wraps any tensor source.
    pub(crate) fn from_source(source: Arc<dyn TensorSource>) -> Self {
        LoraSource {
            reader: Reader::Other(source),
        }
    }

    fn as_source(&self) -> &dyn TensorSource {
        match &self.reader {
            Reader::Safetensors(s) => s,
            Reader::Ckpt(c) => c,
            Reader::Other(o) => o.as_ref(),
        }
    }

    /// For error messages: the file path or the source's description.
    pub(crate) fn describe(&self) -> String {
        self.as_source().describe()
    }

    /// Every tensor name.
    pub(crate) fn names(&self) -> Vec<String> {
        self.as_source().tensor_names()
    }

    /// Shape and stored type of a tensor.
    pub(crate) fn info(&self, name: &str) -> Option<TensorInfo> {
        self.as_source().tensor_info(name)
    }

    /// String metadata (safetensors `__metadata__`, a pickle's top-level scalars).
    pub(crate) fn metadata(&self) -> HashMap<String, String> {
        self.as_source().metadata()
    }

    /// A tensor's values as `f32`, whatever its stored type (booleans are 0 or 1).
    ///
    /// # Errors
    /// [`Error::MissingWeight`] for an unknown name; the reader's errors;
    /// [`Error::WeightDType`] for a non-float tensor in a source that cannot give raw bytes.
    pub(crate) fn read(&self, name: &str) -> Result<Vec<f32>> {
        let dtype = self.info(name).map(|i| i.dtype);
        match dtype {
            Some(d) if !d.is_float() => {
                let bytes = match &self.reader {
                    Reader::Safetensors(s) => s.read_bytes(name)?,
                    Reader::Ckpt(c) => {
                        let id = c.tensor_id(name).ok_or_else(|| Error::MissingWeight {
                            name: name.to_string(),
                            source_desc: c.describe(),
                        })?;
                        c.read_bytes(id)?
                    }
                    Reader::Other(o) => return o.read_f32(name),
                };
                decode_integers(d, &bytes).ok_or_else(|| Error::WeightDType {
                    name: name.to_string(),
                    source_desc: self.describe(),
                    dtype: d.to_string(),
                })
            }
            _ => self.as_source().read_f32(name),
        }
    }
}

/// Integer and boolean values as `f32` (exact for the small values LoRA scalars hold).
fn decode_integers(dtype: StoredDType, bytes: &[u8]) -> Option<Vec<f32>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .filter_map(|c| <[u8; N]>::try_from(c).ok())
            .map(f)
            .collect()
    }
    #[allow(clippy::cast_precision_loss)]
    let values = match dtype {
        StoredDType::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
        StoredDType::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
        StoredDType::I16 => each(bytes, |b| f32::from(i16::from_le_bytes(b))),
        StoredDType::I8 => each(bytes, |[b]: [u8; 1]| f32::from(b as i8)),
        StoredDType::U8 => each(bytes, |[b]: [u8; 1]| f32::from(b)),
        StoredDType::Bool => each(bytes, |[b]: [u8; 1]| f32::from(u8::from(b != 0))),
        _ => return None,
    };
    Some(values)
}

/// A1111's LoRA hash, as a full sha256 hex string: for a safetensors file the hash of the bytes
/// after the header (kohya's "addnet hash", `hashes.addnet_hash_safetensors`), for other files
/// the hash of the whole file.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::InvalidFile`] for a safetensors header
/// that runs past the end (the reader has already refused such files).
pub(crate) fn file_hash(path: &Path, safetensors: bool) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    if safetensors {
        let mut prefix = [0u8; 8];
        f.read_exact(&mut prefix).map_err(|e| Error::io(path, e))?;
        let start = u64::from_le_bytes(prefix)
            .checked_add(8)
            .ok_or_else(|| Error::invalid_file(path, "safetensors header size overflows"))?;
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(path, e))?;
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or(&[]));
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
