//! Reading and writing `.safetensors` files, with our own validation of the header before the
//! `safetensors` crate sees it.
//!
//! A safetensors file is 8 bytes of little-endian header size `N`, `N` bytes of UTF-8 JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}}`), then the
//! tensor bytes. Files come from strangers, so [`SafetensorsFile::open`] checks, in order and
//! before allocating anything from a number in the file:
//!
//! 1. the file is at least 8 bytes, `N ≤` [`SafetensorsLimits::max_header_bytes`] and
//!    `8 + N ≤` the file length;
//! 2. the header is UTF-8 JSON (serde_json's recursion limit applies) whose top level is an
//!    object; **duplicate tensor names are rejected** (a plain map would keep the last one
//!    silently, as the crate does);
//! 3. every entry has an allowed dtype, at most [`SafetensorsLimits::max_ndim`] dimensions,
//!    `data_offsets` a pair of unsigned integers with `begin ≤ end ≤` the data length, and
//!    `end − begin` equal to the element count × dtype size (checked arithmetic); the tensors tile
//!    the data section from 0 to its end without gaps or overlaps; the tensor count and name
//!    lengths are within limits; `__metadata__` maps strings to strings;
//! 4. then the crate's own parse runs as a second opinion.
//!
//! Tensor data starts at byte `8 + N`, which third-party writers do not always align: reads copy
//! bytes and decode them with `from_le_bytes`, never by casting a pointer into the file.
//!
//! # Memory mapping and truncation
//!
//! [`SafetensorsFile::open`] memory-maps the file. If another process truncates the file while it
//! is mapped, touching the lost pages raises `SIGBUS` and kills the process; this is how memory
//! maps work and cannot be caught. For files in locations other processes may write to, use
//! [`SafetensorsFile::open_buffered`], which reads tensors with ordinary `read` calls and reports a
//! truncated file as an error.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::store::{StoredDType, TensorInfo, TensorSource};
use crate::error::{Error, Result};
use crate::tensor::Shape;

/// Size of the little-endian header-length prefix.
const N_LEN: u64 = 8;

/// Limits applied to a safetensors header before anything is allocated from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafetensorsLimits {
    /// Largest accepted JSON header, in bytes (the crate's own limit is 100 MB).
    pub max_header_bytes: u64,
    /// Largest number of tensors in one file.
    pub max_tensors: usize,
    /// Longest tensor name, in bytes.
    pub max_name_bytes: usize,
    /// Largest number of dimensions of one tensor.
    pub max_ndim: usize,
}

impl Default for SafetensorsLimits {
    fn default() -> Self {
        SafetensorsLimits {
            max_header_bytes: 100_000_000,
            max_tensors: 1 << 20,
            max_name_bytes: 4096,
            max_ndim: 8,
        }
    }
}

/// How tensor bytes are read from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Memory-map the file (fast, no copy of the file into memory). See the module docs for the
    /// truncation caveat.
    #[default]
    Mmap,
    /// Read each tensor with `read` calls when it is requested. Slower, but a file truncated by
    /// another process gives an error instead of `SIGBUS`.
    Buffered,
}

/// Escapes text that came from a file before it goes into an error message: control characters
/// become `\u{..}` and anything past 200 characters is cut.
pub(crate) fn escape_untrusted(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= 200 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// One tensor's place in the file, validated.
#[derive(Debug, Clone)]
struct Entry {
    info: TensorInfo,
    /// Offset of the first byte, relative to the data section.
    begin: u64,
    /// Offset one past the last byte, relative to the data section.
    end: u64,
}

enum Backing {
    Mmap(memmap2::Mmap),
    File(Mutex<File>),
}

/// A validated `.safetensors` file, readable as a [`TensorSource`].
pub struct SafetensorsFile {
    path: PathBuf,
    backing: Backing,
    /// `8 + N`: where the data section starts in the file.
    data_start: u64,
    /// Length of the file when it was opened.
    file_len: u64,
    tensors: HashMap<String, Entry>,
    /// Tensor names in file order (by offset).
    order: Vec<String>,
    metadata: HashMap<String, String>,
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field(
                "mode",
                &match self.backing {
                    Backing::Mmap(_) => ReadMode::Mmap,
                    Backing::File(_) => ReadMode::Buffered,
                },
            )
            .finish()
    }
}

impl SafetensorsFile {
    /// Opens and validates a file, memory-mapping it.
    ///
    /// # Errors
    /// [`Error::FileNotFound`] / [`Error::Io`] for file-system errors, [`Error::InvalidFile`]
    /// naming the file (and the tensor, with expected and found offsets or sizes) for a malformed
    /// header, [`Error::WeightDType`] for a dtype outside the allow-list.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, ReadMode::Mmap, &SafetensorsLimits::default())
    }

    /// Opens and validates a file, reading tensors with `read` calls instead of a memory map
    /// (for files another process might truncate; see the module docs).
    ///
    /// # Errors
    /// As [`SafetensorsFile::open`].
    pub fn open_buffered(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, ReadMode::Buffered, &SafetensorsLimits::default())
    }

    /// Opens and validates a file with explicit read mode and limits.
    ///
    /// # Errors
    /// As [`SafetensorsFile::open`].
    pub fn open_with(
        path: impl AsRef<Path>,
        mode: ReadMode,
        limits: &SafetensorsLimits,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        if !meta.is_file() {
            return Err(Error::invalid_file(&path, "not a regular file"));
        }
        let file_len = meta.len();
        let bad = |reason: String| Error::invalid_file(&path, reason);

        // Rule 1: sizes, before reading the header.
        if file_len < N_LEN {
            return Err(bad(format!(
                "not a safetensors file: {file_len} bytes, shorter than the 8-byte header size"
            )));
        }
        let mut prefix = [0u8; 8];
        file.read_exact(&mut prefix)
            .map_err(|e| Error::io(&path, e))?;
        let n = u64::from_le_bytes(prefix);
        if n > limits.max_header_bytes {
            return Err(bad(format!(
                "safetensors header size {n} bytes exceeds the limit of {} bytes",
                limits.max_header_bytes
            )));
        }
        let data_start = N_LEN
            .checked_add(n)
            .ok_or_else(|| bad("safetensors header size overflows".to_string()))?;
        if data_start > file_len {
            return Err(bad(format!(
                "safetensors header size {n} bytes runs past the end of the file \
                 ({file_len} bytes): truncated or not a safetensors file"
            )));
        }
        let data_len = file_len - data_start;

        // Map or read the header.
        let backing = match mode {
            ReadMode::Mmap => {
                // SAFETY: the map is read-only and private to this struct. Undefined behaviour
                // would need another process to modify the file while it is mapped; truncation
                // raises SIGBUS, which the module docs describe, and `open_buffered` avoids.
                let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
                if map.len() as u64 != file_len {
                    return Err(bad(format!(
                        "file changed size while being opened ({file_len} then {} bytes)",
                        map.len()
                    )));
                }
                Backing::Mmap(map)
            }
            ReadMode::Buffered => Backing::File(Mutex::new(file)),
        };
        let header_owned;
        let header: &[u8] = match &backing {
            Backing::Mmap(map) => map
                .get(N_LEN as usize..data_start as usize)
                .ok_or_else(|| bad("header outside the mapped file".to_string()))?,
            Backing::File(f) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                let mut buf = vec![0u8; n as usize];
                f.seek(SeekFrom::Start(N_LEN))
                    .and_then(|_| f.read_exact(&mut buf))
                    .map_err(|e| Error::io(&path, e))?;
                header_owned = buf;
                &header_owned
            }
        };

        // Rule 2 and 3: our own parse of the header.
        let parsed = parse_header(header, data_len, limits).map_err(|e| e.into_error(&path))?;

        // Rule 4: the crate's parse, as a second opinion (contiguity, overflow, coverage).
        match &backing {
            Backing::Mmap(map) => {
                safetensors::SafeTensors::read_metadata(map)
                    .map_err(|e| bad(format!("rejected by the safetensors parser: {e}")))?;
            }
            Backing::File(_) => {
                let text = std::str::from_utf8(header)
                    .map_err(|e| bad(format!("safetensors header is not UTF-8: {e}")))?;
                let m: safetensors::tensor::Metadata = serde_json::from_str(text)
                    .map_err(|e| bad(format!("rejected by the safetensors parser: {e}")))?;
                if m.data_len() as u64 != data_len {
                    return Err(bad(format!(
                        "rejected by the safetensors parser: tensors cover {} bytes, the data \
                         section has {data_len}",
                        m.data_len()
                    )));
                }
            }
        }

        let ParsedHeader { entries, metadata } = parsed;
        let mut order: Vec<(u64, String)> =
            entries.iter().map(|(k, e)| (e.begin, k.clone())).collect();
        order.sort();
        Ok(SafetensorsFile {
            path,
            backing,
            data_start,
            file_len,
            tensors: entries,
            order: order.into_iter().map(|(_, k)| k).collect(),
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The raw little-endian bytes of a tensor, copied out of the file.
    ///
    /// # Errors
    /// [`Error::MissingWeight`] if there is no such tensor; an I/O error or
    /// [`Error::InvalidFile`] if the file was truncated since it was opened (buffered mode).
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        self.with_bytes(name, e, |b| Ok(b.to_vec()))
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors.get(name).ok_or_else(|| Error::MissingWeight {
            name: name.to_string(),
            source_desc: self.path.display().to_string(),
        })
    }

    /// Runs `f` on the bytes of a tensor, borrowed from the map or read into a buffer.
    fn with_bytes<T>(
        &self,
        name: &str,
        e: &Entry,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let start = self.data_start + e.begin;
        let end = self.data_start + e.end;
        match &self.backing {
            Backing::Mmap(map) => {
                let bytes = map.get(start as usize..end as usize).ok_or_else(|| {
                    Error::invalid_file(
                        &self.path,
                        format!(
                            "tensor `{}`: bytes {start}..{end} lie outside the mapped file",
                            escape_untrusted(name)
                        ),
                    )
                })?;
                f(bytes)
            }
            Backing::File(file) => {
                let len = usize::try_from(e.end - e.begin).map_err(|_| {
                    Error::invalid_file(&self.path, "tensor larger than the address space")
                })?;
                let mut buf = vec![0u8; len];
                {
                    let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                    let res = file
                        .seek(SeekFrom::Start(start))
                        .and_then(|_| file.read_exact(&mut buf));
                    if let Err(err) = res {
                        if err.kind() == std::io::ErrorKind::UnexpectedEof {
                            return Err(Error::invalid_file(
                                &self.path,
                                format!(
                                    "truncated: tensor `{}` needs bytes {start}..{end} but the \
                                     file is now shorter (it was {} bytes when opened)",
                                    escape_untrusted(name),
                                    self.file_len
                                ),
                            ));
                        }
                        return Err(Error::io(&self.path, err));
                    }
                }
                f(&buf)
            }
        }
    }
}

impl TensorSource for SafetensorsFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn tensor_names(&self) -> Vec<String> {
        self.order.clone()
    }

    fn tensor_info(&self, name: &str) -> Option<TensorInfo> {
        self.tensors.get(name).map(|e| e.info.clone())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        let dtype = e.info.dtype;
        if !dtype.is_float() {
            return Err(Error::WeightDType {
                name: name.to_string(),
                source_desc: self.describe(),
                dtype: dtype.to_string(),
            });
        }
        let count = e.info.shape.elem_count();
        self.with_bytes(name, e, |bytes| {
            let mut out = vec![0f32; count];
            decode_to_f32(dtype, bytes, &mut out).map_err(|reason| {
                Error::invalid_file(
                    &self.path,
                    format!("tensor `{}`: {reason}", escape_untrusted(name)),
                )
            })?;
            Ok(out)
        })
    }

    fn metadata(&self) -> HashMap<String, String> {
        self.metadata.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Elements per parallel chunk when decoding large tensors.
const PAR_CHUNK: usize = 1 << 16;

/// Decodes little-endian `bytes` of `dtype` into `out`, in parallel for large tensors.
///
/// # Errors
/// A description if the byte count does not match `out.len()` × dtype size or the dtype is not a
/// float type.
pub(crate) fn decode_to_f32(
    dtype: StoredDType,
    bytes: &[u8],
    out: &mut [f32],
) -> std::result::Result<(), String> {
    let size = dtype.size_in_bytes();
    if Some(bytes.len()) != out.len().checked_mul(size) {
        return Err(format!(
            "{} bytes do not hold {} {dtype} values",
            bytes.len(),
            out.len()
        ));
    }
    if !dtype.is_float() {
        return Err(format!("dtype {dtype} is not a float type"));
    }
    if out.len() >= 2 * PAR_CHUNK {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(bytes.par_chunks(PAR_CHUNK * size))
            .for_each(|(o, b)| decode_chunk(dtype, b, o));
    } else {
        decode_chunk(dtype, bytes, out);
    }
    Ok(())
}

fn decode_chunk(dtype: StoredDType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        StoredDType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes(arr(b));
            }
        }
        StoredDType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes(arr(b))).to_f32();
            }
        }
        StoredDType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_bits(u16::from_le_bytes(arr(b))).to_f32();
            }
        }
        StoredDType::F64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(arr(b)) as f32;
            }
        }
        StoredDType::F8E5M2 => {
            // e5m2 is the top byte of an IEEE half.
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = half::f16::from_bits(u16::from(b) << 8).to_f32();
            }
        }
        StoredDType::F8E4M3 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f8_e4m3fn_to_f32(b);
            }
        }
        // Not reachable: callers check `is_float` first.
        StoredDType::I64
        | StoredDType::I32
        | StoredDType::I16
        | StoredDType::I8
        | StoredDType::U8
        | StoredDType::Bool => {}
    }
}

/// Copies a chunk from `chunks_exact(N)` into an array.
fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    a
}

/// Decodes an 8-bit float in the e4m3fn encoding (bias 7, no infinities, `S.1111.111` is NaN).
fn f8_e4m3fn_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0f);
    let man = f32::from(b & 0x07);
    if exp == 0x0f && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

// ---------------------------------------------------------------------------------------------
// Header pre-check

/// A header problem, turned into an [`Error`] once the path is known.
#[derive(Debug)]
enum HeaderError {
    Invalid(String),
    DType { name: String, dtype: String },
}

impl HeaderError {
    fn into_error(self, path: &Path) -> Error {
        match self {
            HeaderError::Invalid(reason) => Error::invalid_file(path, reason),
            HeaderError::DType { name, dtype } => Error::WeightDType {
                name: escape_untrusted(&name),
                source_desc: path.display().to_string(),
                dtype: escape_untrusted(&dtype),
            },
        }
    }
}

struct ParsedHeader {
    entries: HashMap<String, Entry>,
    metadata: HashMap<String, String>,
}

/// A raw entry as written in the JSON, before cross-checks.
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    offsets: (u64, u64),
}

fn allowed_dtype(s: &str) -> Option<StoredDType> {
    Some(match s {
        "F32" => StoredDType::F32,
        "F16" => StoredDType::F16,
        "BF16" => StoredDType::BF16,
        "F64" => StoredDType::F64,
        "I64" => StoredDType::I64,
        "I32" => StoredDType::I32,
        "I16" => StoredDType::I16,
        "I8" => StoredDType::I8,
        "U8" => StoredDType::U8,
        "BOOL" => StoredDType::Bool,
        "F8_E4M3" => StoredDType::F8E4M3,
        "F8_E5M2" => StoredDType::F8E5M2,
        _ => return None,
    })
}

fn parse_header(
    header: &[u8],
    data_len: u64,
    limits: &SafetensorsLimits,
) -> std::result::Result<ParsedHeader, HeaderError> {
    let inv = HeaderError::Invalid;
    let text = std::str::from_utf8(header)
        .map_err(|e| inv(format!("safetensors header is not UTF-8: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = de
        .deserialize_map(TopVisitor { limits })
        .map_err(|e| inv(format!("invalid safetensors header JSON: {e}")))?;
    // Trailing padding is whitespace only.
    de.end()
        .map_err(|e| inv(format!("invalid safetensors header JSON: {e}")))?;
    let TopLevel {
        tensors: raw_tensors,
        metadata,
    } = raw;

    let mut entries = HashMap::with_capacity(raw_tensors.len());
    let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(raw_tensors.len());
    let mut names: Vec<String> = Vec::with_capacity(raw_tensors.len());
    for (name, raw) in raw_tensors {
        let shown = escape_untrusted(&name);
        let dtype = allowed_dtype(&raw.dtype).ok_or_else(|| HeaderError::DType {
            name: name.clone(),
            dtype: raw.dtype.clone(),
        })?;
        let (begin, end) = raw.offsets;
        if begin > end {
            return Err(inv(format!(
                "tensor `{shown}`: data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        if end > data_len {
            return Err(inv(format!(
                "tensor `{shown}`: data_offsets [{begin}, {end}] run past the data section \
                 ({data_len} bytes)"
            )));
        }
        let mut count: u64 = 1;
        for &d in &raw.shape {
            count = count.checked_mul(d).ok_or_else(|| {
                inv(format!(
                    "tensor `{shown}`: element count of shape {:?} overflows",
                    raw.shape
                ))
            })?;
        }
        let bytes = count
            .checked_mul(dtype.size_in_bytes() as u64)
            .ok_or_else(|| {
                inv(format!(
                    "tensor `{shown}`: byte size of shape {:?} × {dtype} overflows",
                    raw.shape
                ))
            })?;
        if bytes != end - begin {
            return Err(inv(format!(
                "tensor `{shown}`: shape {:?} × {dtype} needs {bytes} bytes, data_offsets \
                 [{begin}, {end}] give {}",
                raw.shape,
                end - begin
            )));
        }
        let dims: Vec<usize> = raw
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| inv(format!("tensor `{shown}`: dimension too large")))?;
        spans.push((begin, end, names.len()));
        names.push(name.clone());
        entries.insert(
            name,
            Entry {
                info: TensorInfo {
                    shape: Shape::new(dims),
                    dtype,
                },
                begin,
                end,
            },
        );
    }

    // Tiling: sorted by (begin, end), each tensor starts where the previous ended.
    spans.sort_unstable();
    let mut pos = 0u64;
    for &(begin, end, idx) in &spans {
        let shown = names
            .get(idx)
            .map(|n| escape_untrusted(n))
            .unwrap_or_default();
        if begin < pos {
            return Err(inv(format!(
                "tensor `{shown}`: data_offsets [{begin}, {end}] overlap the previous tensor, \
                 which ends at {pos}"
            )));
        }
        if begin > pos {
            return Err(inv(format!(
                "tensor `{shown}`: data_offsets [{begin}, {end}] leave a gap: expected to begin \
                 at {pos}"
            )));
        }
        pos = end;
    }
    if pos != data_len {
        return Err(inv(format!(
            "tensors cover {pos} bytes but the data section has {data_len} bytes \
             (trailing or missing data)"
        )));
    }
    Ok(ParsedHeader { entries, metadata })
}

struct TopLevel {
    tensors: Vec<(String, RawEntry)>,
    metadata: HashMap<String, String>,
}

struct TopVisitor<'a> {
    limits: &'a SafetensorsLimits,
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of tensor entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<TopLevel, A::Error> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut tensors = Vec::new();
        let mut metadata = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "__metadata__" {
                if metadata.is_some() {
                    return Err(de::Error::custom("duplicate `__metadata__`"));
                }
                metadata = Some(map.next_value_seed(MetadataSeed)?);
                continue;
            }
            if key.len() > self.limits.max_name_bytes {
                return Err(de::Error::custom(format!(
                    "tensor name of {} bytes exceeds the limit of {} bytes (`{}`)",
                    key.len(),
                    self.limits.max_name_bytes,
                    escape_untrusted(&key)
                )));
            }
            if tensors.len() >= self.limits.max_tensors {
                return Err(de::Error::custom(format!(
                    "more than {} tensors (limit)",
                    self.limits.max_tensors
                )));
            }
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "duplicate tensor name `{}`",
                    escape_untrusted(&key)
                )));
            }
            let entry = map.next_value_seed(EntrySeed {
                max_ndim: self.limits.max_ndim,
            })?;
            tensors.push((key, entry));
        }
        Ok(TopLevel {
            tensors,
            metadata: metadata.unwrap_or_default(),
        })
    }
}

struct MetadataSeed;

impl<'de> DeserializeSeed<'de> for MetadataSeed {
    type Value = HashMap<String, String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MetadataSeed {
    type Value = HashMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`__metadata__` as an object of strings")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = HashMap::new();
        while let Some(k) = map.next_key::<String>()? {
            let v: String = map.next_value().map_err(|e| {
                de::Error::custom(format!(
                    "`__metadata__` value for `{}` is not a string ({e})",
                    escape_untrusted(&k)
                ))
            })?;
            if out.insert(k.clone(), v).is_some() {
                return Err(de::Error::custom(format!(
                    "duplicate `__metadata__` key `{}`",
                    escape_untrusted(&k)
                )));
            }
        }
        Ok(out)
    }
}

struct EntrySeed {
    max_ndim: usize,
}

impl<'de> DeserializeSeed<'de> for EntrySeed {
    type Value = RawEntry;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<RawEntry, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed {
    type Value = RawEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tensor entry {dtype, shape, data_offsets}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawEntry, A::Error> {
        let mut dtype: Option<String> = None;
        let mut shape: Option<Vec<u64>> = None;
        let mut offsets: Option<(u64, u64)> = None;
        while let Some(k) = map.next_key::<String>()? {
            match k.as_str() {
                "dtype" if dtype.is_none() => dtype = Some(map.next_value()?),
                "shape" if shape.is_none() => {
                    shape = Some(map.next_value_seed(ShapeSeed {
                        max_ndim: self.max_ndim,
                    })?)
                }
                "data_offsets" if offsets.is_none() => {
                    let v: [u64; 2] = map.next_value().map_err(|e| {
                        de::Error::custom(format!(
                            "`data_offsets` must be a pair of unsigned integers ({e})"
                        ))
                    })?;
                    let [begin, end] = v;
                    offsets = Some((begin, end));
                }
                "dtype" | "shape" | "data_offsets" => {
                    return Err(de::Error::custom(format!("duplicate field `{k}`")));
                }
                // The crate ignores unknown fields; so do we.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RawEntry {
            dtype: dtype.ok_or_else(|| de::Error::missing_field("dtype"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            offsets: offsets.ok_or_else(|| de::Error::missing_field("data_offsets"))?,
        })
    }
}

struct ShapeSeed {
    max_ndim: usize,
}

impl<'de> DeserializeSeed<'de> for ShapeSeed {
    type Value = Vec<u64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Vec<u64>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ShapeSeed {
    type Value = Vec<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a shape: an array of unsigned integers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<u64>, A::Error> {
        let mut dims = Vec::new();
        while let Some(d) = seq.next_element::<u64>()? {
            if dims.len() >= self.max_ndim {
                return Err(de::Error::custom(format!(
                    "shape has more than {} dimensions (limit)",
                    self.max_ndim
                )));
            }
            dims.push(d);
        }
        Ok(dims)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// The element type [`write_safetensors`] stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDType {
    /// 32-bit float (exact).
    F32,
    /// IEEE half, rounded to nearest even.
    F16,
    /// bfloat16, rounded to nearest even.
    BF16,
}

struct OwnedView {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &OwnedView {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` (name, shape, row-major values) to a `.safetensors` file, converting values to
/// `dtype`, with optional string metadata.
///
/// # Errors
/// [`Error::InvalidArgument`] if a shape does not match its value count or a name repeats,
/// [`Error::Io`] if the file cannot be written.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(&str, &[usize], &[f32])],
    dtype: WriteDType,
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let mut seen = HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for &(name, shape, values) in tensors {
        if !seen.insert(name) {
            return Err(Error::invalid_argument(
                "tensors",
                format!("tensor name `{name}` appears twice"),
            ));
        }
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if count != Some(values.len()) {
            return Err(Error::invalid_argument(
                "tensors",
                format!(
                    "tensor `{name}`: shape {shape:?} does not hold {} values",
                    values.len()
                ),
            ));
        }
        let (st, data) = match dtype {
            WriteDType::F32 => (
                safetensors::Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            WriteDType::F16 => (
                safetensors::Dtype::F16,
                values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
                    .collect(),
            ),
            WriteDType::BF16 => (
                safetensors::Dtype::BF16,
                values
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
                    .collect(),
            ),
        };
        views.push((
            name.to_string(),
            OwnedView {
                dtype: st,
                shape: shape.to_vec(),
                data,
            },
        ));
    }
    let bytes = safetensors::serialize(
        views.iter().map(|(n, v)| (n.as_str(), v)),
        metadata.cloned(),
    )
    .map_err(|e| Error::invalid_argument("tensors", format!("cannot serialize: {e}")))?;
    // Write beside the target and rename, so a file that is memory-mapped elsewhere is never
    // truncated in place.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
