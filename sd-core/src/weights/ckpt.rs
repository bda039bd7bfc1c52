//! PyTorch checkpoints (`.ckpt`, `.pt`, `.bin`): the containers around the pickle.
//!
//! Two containers are read, routed by the first bytes of the file (the extension never
//! decides):
//!
//! * the zip format `torch.save` writes since torch 1.6: `P/data.pkl`, `P/data/<key>` storage
//!   records, `P/version`, `P/byteorder` and a few bookkeeping records, all under one top-level
//!   directory `P` (read by a hand-written reader with the strictness of safe-loading.md §2.6);
//! * the legacy format (torch 0.1.10–1.5): five pickles back to back, then the raw storages.
//!
//! TorchScript archives, the pre-0.1.10 tar format, 7z, gzip and torch's preview format are
//! refused by name; a safetensors file is recognised and refused (read it with the safetensors
//! loader). The pickle is run by the restricted interpreter of [`crate::weights::pickle`];
//! storages are never copied whole: uncompressed records are read from a memory map (or, in
//! [`Access::Read`] mode, from one buffer read with plain `read` calls) only when a tensor is
//! requested.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod zip;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::{Error, Result};
type LResult<T> = std::result::Result<T, LoadError>;
use crate::tensor::Shape;
use crate::weights::pickle::{
    self, Document, EmbeddingFile, Format, HypernetworkFile, Limits, ListedGlobal, LoadError,
    LoadErrorKind as K, Location, PersistentIds, StateDict, TensorDecl, TensorId, Value,
    ZipProblem as Z,
};
use crate::weights::store::{StoredDType, TensorInfo, TensorSource};

/// torch's legacy magic number `0x1950a86a20f9469cfc6c` as the ten little-endian bytes a
/// `LONG1` opcode stores.
const LEGACY_MAGIC_LE: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The same number as the text pickle protocols 0 and 1 write it (`LONG` opcode, then `STOP`).
const LEGACY_MAGIC_TEXT: &[u8] = b"L119547037146038801333356L\n.";
/// Largest small bookkeeping record (`version`, `byteorder`, `.data/*`) accepted.
const MAX_SMALL_RECORD: u64 = 1 << 20;

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerFormat {
    /// The torch zip format (`PK\x03\x04`).
    TorchZip,
    /// The torch legacy format (the magic-number pickle).
    TorchLegacy,
    /// A safetensors file (its header frame is consistent).
    Safetensors,
    /// A format recognised and refused.
    Refused(Format),
    /// Nothing known.
    Unknown,
}

/// Classifies a file by its content only. A safetensors file whose header length happens to
/// start with `80 02` is still recognised as safetensors: the pickle path is taken only for
/// the exact torch magic numbers (the legacy one in any of the encodings pickle protocols 2 to
/// 5 give it).
pub fn sniff(data: &[u8]) -> ContainerFormat {
    if data.starts_with(b"PK\x03\x04") {
        return ContainerFormat::TorchZip;
    }
    if legacy_magic(data).is_some() {
        return ContainerFormat::TorchLegacy;
    }
    if data.starts_with(LEGACY_MAGIC_TEXT) {
        return ContainerFormat::Refused(Format::LegacyTextPickle);
    }
    if data.starts_with(b"PYTORCH1") {
        return ContainerFormat::Refused(Format::TorchPreview);
    }
    if data.starts_with(&[0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c]) {
        return ContainerFormat::Refused(Format::SevenZip);
    }
    if data.starts_with(&[0x1f, 0x8b]) {
        return ContainerFormat::Refused(Format::Gzip);
    }
    if data.get(257..262) == Some(b"ustar") {
        return ContainerFormat::Refused(Format::LegacyTar);
    }
    if let Some(n) = data.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        let n = u64::from_le_bytes(n);
        let fits = n.checked_add(8).is_some_and(|end| end <= data.len() as u64);
        if fits && (2..=100_000_000).contains(&n) && data.get(8) == Some(&b'{') {
            return ContainerFormat::Safetensors;
        }
    }
    ContainerFormat::Unknown
}

/// Reads the magic-number pickle that opens a legacy-format file, as a pickle value: `PROTO n`
/// (2 to 5, whatever `pickle_protocol` the file was saved with), for protocols 4 and 5 the
/// `FRAME` that wraps it, the integer `0x1950a86a20f9469cfc6c` (`LONG1`, 10 bytes) and `STOP`.
/// Returns the protocol and the pickle's length; `None` for anything else.
fn legacy_magic(data: &[u8]) -> Option<(u8, usize)> {
    let [0x80, proto, rest @ ..] = data else {
        return None;
    };
    if !(2..=5).contains(proto) {
        return None;
    }
    // LONG1, its length byte, the 10 bytes and STOP: what a FRAME around them must announce.
    const BODY: usize = 13;
    let (frame_len, body) = match rest {
        [0x95, rest @ ..] if *proto >= 4 => {
            let (len, body) = rest.split_first_chunk::<8>()?;
            (u64::from_le_bytes(*len) == BODY as u64).then_some((9, body))?
        }
        _ => (0, rest),
    };
    let [0x8a, 10, rest @ ..] = body else {
        return None;
    };
    let (magic, rest) = rest.split_first_chunk::<10>()?;
    if *magic != LEGACY_MAGIC_LE || rest.first() != Some(&b'.') {
        return None;
    }
    Some((
        *proto,
        2usize.saturating_add(frame_len).saturating_add(BODY),
    ))
}

/// How a checkpoint's bytes are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Memory-map the file (the default): nothing is read until a tensor is requested. If
    /// another process truncates the file while it is mapped, touching the lost pages raises
    /// `SIGBUS`; use [`Access::Read`] for files in locations others can write to.
    #[default]
    Mmap,
    /// Read the whole file into memory with `read` calls (bounded by its size at open time).
    Read,
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// Which container a checkpoint came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CkptFormat {
    /// The torch zip format.
    Zip {
        /// The top-level directory (`archive` for most files).
        prefix: String,
        /// The `version` record.
        version: u32,
        /// Storage records present but not referenced by the pickle.
        unreferenced_records: usize,
    },
    /// The legacy format.
    Legacy,
}

struct Parsed {
    format: CkptFormat,
    doc: Document,
    /// Per storage: absolute byte offset and length in the file.
    ranges: Vec<(u64, u64)>,
}

/// A PyTorch checkpoint opened without running any of its code.
///
/// Opening validates the container, runs the pickle through the restricted interpreter,
/// checks every storage against its record and every tensor view against its storage; later
/// reads fail only for reasons about the one tensor read (a non-float dtype, for instance).
///
/// As a [`TensorSource`] it exposes the state dict (A1111's rule: the root's `state_dict`
/// entry if present, else the root; nested string-keyed dicts are flattened with `.`), and
/// the root's scalar entries (`global_step`, `epoch`) as metadata. Embeddings and
/// hypernetworks are read with [`CkptFile::embedding`] and [`CkptFile::hypernetwork`]; any
/// other shape through [`CkptFile::document`].
pub struct CkptFile {
    desc: String,
    backing: Backing,
    parsed: Parsed,
    state: StateDict,
    by_name: HashMap<String, TensorId>,
}

impl std::fmt::Debug for CkptFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CkptFile")
            .field("file", &self.desc)
            .field("format", &self.parsed.format)
            .field("tensors", &self.state.tensors.len())
            .finish()
    }
}

fn wrap(path: &Path, e: LoadError) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

impl CkptFile {
    /// Opens a checkpoint with a memory map. See [`CkptFile::open_with`].
    ///
    /// # Errors
    /// [`Error::FileNotFound`]/[`Error::Io`] for the file itself; [`Error::Checkpoint`] with a
    /// [`LoadError`] naming what was refused and where for everything about its content.
    pub fn open(path: impl AsRef<Path>, limits: &Limits) -> Result<CkptFile> {
        Self::open_with(path, limits, Access::Mmap)
    }

    /// Opens a checkpoint, holding its bytes as `access` says. Only regular files are
    /// accepted (not directories, FIFOs or devices), and nothing beyond the file's size at
    /// open time is ever read.
    ///
    /// # Errors
    /// As [`CkptFile::open`].
    pub fn open_with(path: impl AsRef<Path>, limits: &Limits, access: Access) -> Result<CkptFile> {
        let path = path.as_ref();
        let backing = read_file(path, access)?;
        Self::from_backing(path.display().to_string(), backing, limits).map_err(|e| wrap(path, e))
    }

    /// Reads a checkpoint held in memory (tests, fuzzing, data from elsewhere).
    ///
    /// # Errors
    /// [`Error::Checkpoint`] (with the path `<memory>`) naming what was refused and where.
    pub fn from_bytes(bytes: Vec<u8>, limits: &Limits) -> Result<CkptFile> {
        Self::from_backing("<memory>".to_string(), Backing::Owned(bytes), limits)
            .map_err(|e| wrap(Path::new("<memory>"), e))
    }

    fn from_backing(desc: String, backing: Backing, limits: &Limits) -> LResult<CkptFile> {
        let parsed = parse(backing.bytes(), limits)?;
        let state = match parsed.doc.root() {
            Value::Dict(_) => pickle::extract_state_dict(&parsed.doc, limits)?,
            // A bare tensor or a list (embedding layouts): no state dict, but still readable
            // through `embedding()` and `document()`.
            Value::Tensor(_) | Value::List(_) => StateDict::default(),
            _ => {
                return Err(LoadError::new(K::Malformed(
                    "the pickle's root is not a dict",
                )));
            }
        };
        let by_name = state.tensors.iter().map(|(n, t)| (n.clone(), *t)).collect();
        Ok(CkptFile {
            desc,
            backing,
            parsed,
            state,
            by_name,
        })
    }

    /// The container format.
    pub fn format(&self) -> &CkptFormat {
        &self.parsed.format
    }

    /// Everything the pickle built, for shapes this module has no typed reader for.
    pub fn document(&self) -> &Document {
        &self.parsed.doc
    }

    /// The extracted state dict: tensor names, scalar metadata, count of skipped entries.
    pub fn state_dict(&self) -> &StateDict {
        &self.state
    }

    /// Reads the file as a textual-inversion embedding (formats.md §4.2).
    ///
    /// # Errors
    /// `Error::Checkpoint` with `Malformed` when no embedding layout matches.
    pub fn embedding(&self) -> Result<EmbeddingFile> {
        pickle::extract_embedding(&self.parsed.doc).map_err(|e| self.err(e))
    }

    /// Reads the file as an A1111 hypernetwork (formats.md §4.1).
    ///
    /// # Errors
    /// `Error::Checkpoint` with `Malformed` when the layout does not match.
    pub fn hypernetwork(&self) -> Result<HypernetworkFile> {
        pickle::extract_hypernetwork(&self.parsed.doc).map_err(|e| self.err(e))
    }

    /// The id of a state-dict tensor by its stored name.
    pub fn tensor_id(&self, name: &str) -> Option<TensorId> {
        self.by_name.get(name).copied()
    }

    /// The declaration (dtype, shape, strides, storage) of a tensor.
    pub fn tensor_decl(&self, id: TensorId) -> Option<&TensorDecl> {
        self.parsed.doc.tensor(id)
    }

    fn err(&self, e: LoadError) -> Error {
        Error::Checkpoint {
            path: PathBuf::from(&self.desc),
            source: Box::new(e),
        }
    }

    /// A tensor's elements in their stored dtype, little-endian, row-major contiguous (views
    /// with other strides are gathered).
    ///
    /// # Errors
    /// `Error::Checkpoint` with `TensorOutOfBounds` if the id is unknown (views were checked at
    /// open time, so this does not otherwise happen).
    pub fn read_bytes(&self, id: TensorId) -> Result<Vec<u8>> {
        self.tensor_bytes(id).map_err(|e| self.err(e))
    }

    fn tensor_bytes(&self, id: TensorId) -> LResult<Vec<u8>> {
        let oob = || LoadError::new(K::TensorOutOfBounds { name: None });
        let td = self.parsed.doc.tensor(id).ok_or_else(oob)?;
        let &(start, len) = self.parsed.ranges.get(td.storage.index()).ok_or_else(oob)?;
        let storage = usize::try_from(start)
            .ok()
            .and_then(|s| Some((s, s.checked_add(usize::try_from(len).ok()?)?)))
            .and_then(|(s, e)| self.backing.bytes().get(s..e))
            .ok_or_else(oob)?;
        let isz = td.dtype.size_in_bytes();
        let numel = td.numel();
        let total = numel.checked_mul(isz).ok_or_else(oob)?;
        if td.is_contiguous() {
            let s = td.offset.checked_mul(isz).ok_or_else(oob)?;
            let e = s.checked_add(total).ok_or_else(oob)?;
            return storage.get(s..e).map(<[u8]>::to_vec).ok_or_else(oob);
        }
        let mut out = Vec::with_capacity(total);
        let ndim = td.shape.len();
        let mut idx = vec![0usize; ndim];
        for _ in 0..numel {
            let mut elem = td.offset;
            for (&i, &st) in idx.iter().zip(&td.strides) {
                elem = i
                    .checked_mul(st)
                    .and_then(|x| elem.checked_add(x))
                    .ok_or_else(oob)?;
            }
            let s = elem.checked_mul(isz).ok_or_else(oob)?;
            let e = s.checked_add(isz).ok_or_else(oob)?;
            out.extend_from_slice(storage.get(s..e).ok_or_else(oob)?);
            // Advance the row-major odometer.
            for (i, &d) in idx.iter_mut().zip(&td.shape).rev() {
                *i = i.saturating_add(1);
                if *i < d {
                    break;
                }
                *i = 0;
            }
        }
        Ok(out)
    }

    /// A float tensor's values as `f32`, row-major.
    ///
    /// # Errors
    /// [`Error::WeightDType`] for integer and bool tensors.
    pub fn read_f32_id(&self, id: TensorId, name: &str) -> Result<Vec<f32>> {
        let td = self
            .parsed
            .doc
            .tensor(id)
            .ok_or_else(|| self.err(LoadError::new(K::TensorOutOfBounds { name: None })))?;
        let dtype = td.dtype;
        if !dtype.is_float() {
            return Err(Error::WeightDType {
                name: name.to_string(),
                source_desc: self.desc.clone(),
                dtype: dtype.to_string(),
            });
        }
        let bytes = self.read_bytes(id)?;
        Ok(to_f32(dtype, &bytes))
    }
}

fn f8e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0f);
    let man = f32::from(b & 0x07);
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp.saturating_sub(7))
    }
}

fn to_f32(dtype: StoredDType, bytes: &[u8]) -> Vec<f32> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .filter_map(|c| <[u8; N]>::try_from(c).ok())
            .map(f)
            .collect()
    }
    match dtype {
        StoredDType::F32 => each(bytes, f32::from_le_bytes),
        StoredDType::F16 => each(bytes, |b| f16::from_le_bytes(b).to_f32()),
        StoredDType::BF16 => each(bytes, |b| bf16::from_le_bytes(b).to_f32()),
        #[allow(clippy::cast_possible_truncation)]
        StoredDType::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        StoredDType::F8E5M2 => each(bytes, |[b]: [u8; 1]| {
            f16::from_bits(u16::from(b) << 8).to_f32()
        }),
        StoredDType::F8E4M3 => each(bytes, |[b]: [u8; 1]| f8e4m3_to_f32(b)),
        _ => Vec::new(),
    }
}

impl TensorSource for CkptFile {
    fn describe(&self) -> String {
        self.desc.clone()
    }

    fn tensor_names(&self) -> Vec<String> {
        self.state.tensors.iter().map(|(n, _)| n.clone()).collect()
    }

    fn tensor_info(&self, name: &str) -> Option<TensorInfo> {
        let td = self.parsed.doc.tensor(self.tensor_id(name)?)?;
        Some(TensorInfo {
            shape: Shape::new(td.shape.clone()),
            dtype: td.dtype,
        })
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let id = self.tensor_id(name).ok_or_else(|| Error::MissingWeight {
            name: name.to_string(),
            source_desc: self.desc.clone(),
        })?;
        self.read_f32_id(id, name)
    }

    fn metadata(&self) -> HashMap<String, String> {
        self.state.metadata.iter().cloned().collect()
    }
}

/// One global a checkpoint's pickles name, found without running them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGlobal {
    /// The pickle it is in: `data.pkl` (zip format) or, for the legacy format, `protocol`,
    /// `sys_info`, `object` or `key list`.
    pub pickle: &'static str,
    /// The global, its offset in that pickle and whether it would be refused.
    pub global: ListedGlobal,
}

/// Every global the pickles of the checkpoint at `path` name, in file order, with whether the
/// interpreter accepts each, found by walking the opcodes without running anything (see
/// [`pickle::list_globals`]). Meant for reports on refused files: it lists what follows the
/// first refused global too.
///
/// # Errors
/// [`Error::FileNotFound`]/[`Error::Io`] for the file; [`Error::Checkpoint`] when the pickles
/// cannot be located (a zip container that is refused, no `data.pkl`, a compressed `data.pkl`
/// when DEFLATE is not allowed, not a torch checkpoint).
pub fn list_file_globals(path: impl AsRef<Path>, limits: &Limits) -> Result<Vec<FileGlobal>> {
    let path = path.as_ref();
    let backing = read_file(path, Access::Mmap)?;
    list_globals_in(backing.bytes(), limits).map_err(|e| wrap(path, e))
}

fn list_globals_in(data: &[u8], limits: &Limits) -> LResult<Vec<FileGlobal>> {
    let mut out = Vec::new();
    let mut add = |pickle: &'static str, listing: pickle::GlobalListing| {
        out.extend(
            listing
                .globals
                .into_iter()
                .map(|global| FileGlobal { pickle, global }),
        );
        listing.end
    };
    match sniff(data) {
        ContainerFormat::TorchZip => {
            let entries = zip::read_entries(data, limits)?;
            let prefix = entries
                .first()
                .and_then(|e| e.name.split_once('/'))
                .map(|(p, _)| p)
                .unwrap_or("");
            let want = format!("{prefix}/data.pkl");
            let pkl = entries
                .iter()
                .find(|e| e.name == want)
                .ok_or(LoadError::new(K::Zip(Z::MissingDataPkl)))?;
            let raw = pkl.raw(data)?;
            let inflated;
            let bytes: &[u8] = match pkl.method {
                0 => raw,
                8 if limits.allow_deflate => {
                    inflated = inflate(raw, limits.max_pickle_bytes)?;
                    &inflated
                }
                m => return Err(K::Zip(Z::UnsupportedMethod(m)).into()),
            };
            add("data.pkl", pickle::list_globals(bytes, limits));
        }
        ContainerFormat::TorchLegacy => {
            let (_, mut pos) = legacy_magic(data).ok_or(LoadError::new(K::NotACheckpoint))?;
            for name in ["protocol", "sys_info", "object", "key list"] {
                let rest = data.get(pos..).unwrap_or(&[]);
                match add(name, pickle::list_globals(rest, limits)) {
                    Some(end) => pos = pos.saturating_add(end),
                    None => break,
                }
            }
        }
        ContainerFormat::Refused(f) => return Err(K::UnsupportedFormat(f).into()),
        ContainerFormat::Safetensors => {
            return Err(K::UnsupportedFormat(Format::Safetensors).into());
        }
        ContainerFormat::Unknown => return Err(K::NotACheckpoint.into()),
    }
    Ok(out)
}

/// Holds a regular file's bytes as `access` says, reading nothing beyond its size at open time.
fn read_file(path: &Path, access: Access) -> Result<Backing> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(wrap(
            path,
            LoadError::new(K::Malformed("not a regular file")),
        ));
    }
    let len = meta.len();
    if len == 0 {
        return Err(wrap(path, LoadError::new(K::NotACheckpoint)));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let backing = match access {
        Access::Mmap => {
            // SAFETY: the map is read-only and private to this value; the bytes are only
            // ever read through bounds-checked slices. The one hazard memmap2 documents —
            // another process truncating the file while it is mapped (SIGBUS) — is
            // documented on `Access::Mmap`, with `Access::Read` as the alternative.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            Backing::Mmap(map)
        }
        Access::Read => {
            let cap = usize::try_from(len).map_err(|_| {
                wrap(
                    path,
                    LoadError::new(K::LimitExceeded {
                        limit: "file size",
                        value: len,
                    }),
                )
            })?;
            let mut buf = Vec::with_capacity(cap);
            file.take(len)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(path, e))?;
            if buf.len() as u64 != len {
                return Err(wrap(path, LoadError::new(K::Truncated)));
            }
            Backing::Owned(buf)
        }
    };
    Ok(backing)
}

fn parse(data: &[u8], limits: &Limits) -> LResult<Parsed> {
    match sniff(data) {
        ContainerFormat::TorchZip => parse_zip(data, limits),
        ContainerFormat::TorchLegacy => parse_legacy(data, limits),
        ContainerFormat::Refused(f) => Err(LoadError::new(K::UnsupportedFormat(f))),
        ContainerFormat::Safetensors => {
            Err(LoadError::new(K::UnsupportedFormat(Format::Safetensors)))
        }
        ContainerFormat::Unknown => Err(LoadError::new(K::NotACheckpoint)),
    }
}

fn max_materialized(limits: &Limits, data: &[u8]) -> u64 {
    limits.max_materialized_bytes.unwrap_or(data.len() as u64)
}

// === zip ===

enum Record {
    DataPkl,
    Version,
    ByteOrder,
    Storage(String),
    Ignored,
}

fn classify(rel: &str, size: u64) -> std::result::Result<Record, LoadErrorKind2> {
    match rel {
        "data.pkl" => return Ok(Record::DataPkl),
        "version" | ".data/version" => return Ok(Record::Version),
        "byteorder" => return Ok(Record::ByteOrder),
        ".data/serialization_id" | ".format_version" | ".storage_alignment" => {
            return Ok(Record::Ignored);
        }
        _ => {}
    }
    if rel == "constants.pkl"
        || rel.starts_with("code/")
        || (rel.starts_with(".data/") && rel.ends_with(".pkl"))
    {
        return Err(LoadErrorKind2::TorchScript);
    }
    if let Some(key) = rel.strip_prefix("data/")
        && !key.is_empty()
        && key.len() <= 20
        && key.bytes().all(|b| b.is_ascii_digit())
    {
        return Ok(Record::Storage(key.to_string()));
    }
    if rel.starts_with(".data/") && size <= MAX_SMALL_RECORD {
        return Ok(Record::Ignored);
    }
    Err(LoadErrorKind2::Unexpected)
}

/// Classification failures, mapped to errors by the caller.
enum LoadErrorKind2 {
    TorchScript,
    Unexpected,
}

fn small_record<'a>(data: &'a [u8], e: &zip::Entry) -> LResult<&'a [u8]> {
    if e.method != 0 {
        return Err(LoadError::at(
            K::Zip(Z::UnsupportedMethod(e.method)),
            Location::ZipEntry {
                name: e.name.clone(),
            },
        ));
    }
    if e.size > MAX_SMALL_RECORD {
        return Err(LoadError::at(
            K::LimitExceeded {
                limit: "small record size",
                value: e.size,
            },
            Location::ZipEntry {
                name: e.name.clone(),
            },
        ));
    }
    e.raw(data)
}

fn parse_zip(data: &[u8], limits: &Limits) -> LResult<Parsed> {
    let entries = zip::read_entries(data, limits)?;
    let first = entries
        .first()
        .ok_or(LoadError::new(K::Zip(Z::MissingDataPkl)))?;
    let prefix = match first.name.split_once('/') {
        Some((p, _)) if !p.is_empty() => p.to_string(),
        _ => return Err(K::Zip(Z::NotInSubdirectory(first.name.clone())).into()),
    };
    // Classify every record first, so a TorchScript archive is named as such whatever order
    // its records come in.
    let mut classified = Vec::with_capacity(entries.len());
    let mut script = false;
    for e in &entries {
        let rel = e
            .name
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| LoadError::new(K::Zip(Z::MixedPrefix(e.name.clone()))))?;
        match classify(rel, e.size) {
            Ok(r) => classified.push((e, r)),
            Err(LoadErrorKind2::TorchScript) => script = true,
            Err(LoadErrorKind2::Unexpected) => {
                return Err(K::Zip(Z::UnexpectedRecord(e.name.clone())).into());
            }
        }
    }
    if script {
        return Err(K::UnsupportedFormat(Format::TorchScript).into());
    }
    let mut names = HashSet::new();
    let mut pkl = None;
    let mut version = None;
    let mut byteorder = None;
    let mut records: HashMap<String, &zip::Entry> = HashMap::new();
    for (e, r) in classified {
        if !names.insert(e.name.as_str()) {
            return Err(K::Zip(match r {
                Record::DataPkl => Z::DuplicateDataPkl,
                _ => Z::DuplicateName(e.name.clone()),
            })
            .into());
        }
        match r {
            Record::DataPkl => pkl = Some(e),
            Record::Version => {
                // `version` and `.data/version` may both be present; they must agree.
                let v = small_record(data, e)?;
                if version.is_some_and(|old| old != v) {
                    return Err(K::Zip(Z::DuplicateName(e.name.clone())).into());
                }
                version = Some(v);
            }
            Record::ByteOrder => byteorder = Some(small_record(data, e)?),
            Record::Storage(key) => {
                records.insert(key, e);
            }
            Record::Ignored => {}
        }
    }
    let version_text = version.ok_or(LoadError::new(K::Malformed("no version record")))?;
    let vtext = std::str::from_utf8(version_text).unwrap_or("?");
    let vtrim = vtext.strip_suffix('\n').unwrap_or(vtext);
    let version = vtrim
        .parse::<u32>()
        .ok()
        .filter(|v| (1..=10).contains(v))
        .ok_or_else(|| LoadError::new(K::UnsupportedVersion(vtext.to_string())))?;
    if let Some(order) = byteorder
        && order != b"little"
    {
        return Err(LoadError::new(K::UnsupportedByteOrder));
    }
    let pkl = pkl.ok_or(LoadError::new(K::Zip(Z::MissingDataPkl)))?;
    if pkl.size > limits.max_pickle_bytes {
        return Err(LoadError::new(K::LimitExceeded {
            limit: "max_pickle_bytes",
            value: pkl.size,
        }));
    }
    let raw = pkl.raw(data)?;
    let inflated;
    let pkl_bytes: &[u8] = if pkl.method == 8 {
        inflated = inflate(raw, limits.max_pickle_bytes)?;
        &inflated
    } else {
        raw
    };
    if pkl_bytes.len() as u64 != pkl.size || zip::crc32(pkl_bytes) != pkl.crc {
        return Err(LoadError::new(K::Zip(Z::BadCrc(pkl.name.clone()))));
    }
    let doc = pickle::unpickle(
        pkl_bytes,
        limits,
        PersistentIds::Zip,
        max_materialized(limits, data),
    )?;
    let mut ranges = Vec::with_capacity(doc.storages.len());
    for s in &doc.storages {
        let at = Location::PickleOp {
            pickle: "data.pkl",
            offset: s.op_offset,
        };
        let rec = records
            .get(&s.key)
            .ok_or_else(|| LoadError::at(K::MissingStorage { key: s.key.clone() }, at.clone()))?;
        if rec.method != 0 {
            return Err(LoadError::at(
                K::Zip(Z::UnsupportedMethod(rec.method)),
                Location::ZipEntry {
                    name: rec.name.clone(),
                },
            ));
        }
        if rec.size != s.nbytes {
            return Err(LoadError::at(
                K::StorageSizeMismatch {
                    key: s.key.clone(),
                    declared: s.nbytes,
                    actual: rec.size,
                },
                at,
            ));
        }
        ranges.push((rec.data_start, rec.size));
    }
    let unreferenced_records = records.len().saturating_sub(ranges.len());
    Ok(Parsed {
        format: CkptFormat::Zip {
            prefix,
            version,
            unreferenced_records,
        },
        doc,
        ranges,
    })
}

fn inflate(raw: &[u8], cap: u64) -> LResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut dec = flate2::read::DeflateDecoder::new(raw).take(cap.saturating_add(1));
    dec.read_to_end(&mut out)
        .map_err(|_| LoadError::new(K::Malformed("bad DEFLATE stream in data.pkl")))?;
    if out.len() as u64 > cap {
        return Err(LoadError::new(K::LimitExceeded {
            limit: "max_pickle_bytes",
            value: cap.saturating_add(1),
        }));
    }
    Ok(out)
}

// === legacy ===

/// Runs one of the legacy format's pickles starting at `pos`; returns it and the next offset.
fn legacy_pickle(
    data: &[u8],
    pos: usize,
    limits: &Limits,
    pids: PersistentIds,
    name: &'static str,
) -> LResult<(Document, usize)> {
    let rest = data.get(pos..).ok_or(LoadError::new(K::Truncated))?;
    let cap = usize::try_from(limits.max_pickle_bytes).unwrap_or(usize::MAX);
    let capped = rest.len() > cap;
    let window = rest.get(..cap.min(rest.len())).unwrap_or(rest);
    match pickle::vm_run(window, limits, pids, max_materialized(limits, data), name) {
        Ok((doc, used)) => Ok((doc, pos.saturating_add(used))),
        Err(mut e) => {
            if capped && e.kind == K::Truncated {
                e.kind = K::LimitExceeded {
                    limit: "max_pickle_bytes",
                    value: limits.max_pickle_bytes,
                };
            }
            if let Some(Location::PickleOp { offset, .. }) = e.at {
                e.at = Some(Location::File {
                    offset: offset.saturating_add(pos as u64),
                });
            }
            Err(e)
        }
    }
}

fn parse_legacy(data: &[u8], limits: &Limits) -> LResult<Parsed> {
    let (protocol, mut pos) = legacy_magic(data).ok_or(LoadError::new(K::NotACheckpoint))?;
    // Protocols 4 and 5 frame every pickle and use the protocol-4 opcodes throughout: say what
    // the file is up front rather than failing on the `FRAME` of its next pickle.
    if protocol >= 4 && !limits.allow_protocol4 {
        return Err(LoadError::at(
            K::Protocol4Off {
                what: "a torch legacy-format (non-zip) checkpoint",
                protocol,
            },
            Location::File { offset: 0 },
        ));
    }
    let (proto, next) = legacy_pickle(data, pos, limits, PersistentIds::Forbidden, "protocol")?;
    if proto.root() != Value::Int(1001) {
        return Err(LoadError::at(
            K::UnsupportedVersion("legacy protocol (expected 1001)".to_string()),
            Location::File { offset: pos as u64 },
        ));
    }
    pos = next;
    let (sys, next) = legacy_pickle(data, pos, limits, PersistentIds::Forbidden, "sys_info")?;
    match sys.dict_get(sys.root(), "little_endian") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Err(LoadError::new(K::UnsupportedByteOrder)),
        _ => {
            return Err(LoadError::new(K::Malformed(
                "legacy sys_info has no little_endian",
            )));
        }
    }
    pos = next;
    let (doc, next) = legacy_pickle(data, pos, limits, PersistentIds::Legacy, "object")?;
    pos = next;
    let (keys, next) = legacy_pickle(data, pos, limits, PersistentIds::Forbidden, "key list")?;
    pos = next;
    let key_list = keys.list(keys.root()).ok_or(LoadError::new(K::Malformed(
        "legacy key list is not a list",
    )))?;
    if key_list.len() > limits.max_storages {
        return Err(LoadError::new(K::LimitExceeded {
            limit: "max_storages",
            value: key_list.len() as u64,
        }));
    }
    let by_key: HashMap<&str, usize> = doc
        .storages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key.as_str(), i))
        .collect();
    let mut ranges = vec![None; doc.storages.len()];
    for &k in key_list {
        let key = keys.str(k).ok_or(LoadError::new(K::Malformed(
            "legacy storage key is not a string",
        )))?;
        let &i = by_key.get(key).ok_or_else(|| {
            LoadError::new(K::Malformed(
                "legacy key list names a storage the pickle does not use",
            ))
        })?;
        let decl = doc.storages.get(i).ok_or(LoadError::new(K::Truncated))?;
        let at = Location::File { offset: pos as u64 };
        let head = data
            .get(pos..pos.saturating_add(8))
            .ok_or_else(|| LoadError::at(K::Truncated, at.clone()))?;
        let numel = i64::from_le_bytes(head.try_into().map_err(|_| LoadError::new(K::Truncated))?);
        if u64::try_from(numel).ok() != Some(decl.numel) {
            return Err(LoadError::at(
                K::StorageSizeMismatch {
                    key: key.to_string(),
                    declared: decl.numel,
                    actual: u64::try_from(numel).unwrap_or(0),
                },
                at,
            ));
        }
        let start = pos.saturating_add(8);
        let end = usize::try_from(decl.nbytes)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&e| e <= data.len())
            .ok_or_else(|| LoadError::at(K::Truncated, at.clone()))?;
        let slot = ranges.get_mut(i).ok_or(LoadError::new(K::Truncated))?;
        if slot.is_some() {
            return Err(LoadError::new(K::DuplicateKey(key.to_string())));
        }
        *slot = Some((start as u64, decl.nbytes));
        pos = end;
    }
    if pos != data.len() {
        return Err(LoadError::at(
            K::TrailingData,
            Location::File { offset: pos as u64 },
        ));
    }
    let ranges = ranges
        .into_iter()
        .zip(&doc.storages)
        .map(|(r, s)| r.ok_or_else(|| LoadError::new(K::MissingStorage { key: s.key.clone() })))
        .collect::<LResult<Vec<_>>>()?;
    Ok(Parsed {
        format: CkptFormat::Legacy,
        doc,
        ranges,
    })
}
