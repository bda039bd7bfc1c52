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
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

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
                let result = f(bytes);
                release_pages(map, start as usize, (end - start) as usize);
                result
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
                // The crate ignores unknown fields; so do we, but parse them into a value so
                // serde_json's recursion limit applies to them too.
                _ => {
                    map.next_value::<serde_json::Value>()?;
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
    std::fs::write(&tmp, bytes).map_err(|e| Error::io_writing(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io_writing(path, e)
    })
}

/// Tells the kernel that the mapped pages of a tensor just read are no longer needed, so that
/// loading a model does not hold the whole file resident beside its converted copy (peak memory
/// would otherwise be the file plus the weights). Advisory: errors are ignored.
fn release_pages(map: &memmap2::Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    {
        // SAFETY: the map is a read-only, private mapping of a file that this process never
        // writes through. MADV_DONTNEED on such a mapping only drops resident pages; a later
        // access faults them in again from the file, with the same contents. No reference into
        // the dropped range outlives this call that could observe a difference (the caller has
        // finished with `bytes`), and memmap2 clamps the range to the mapping.
        let _ =
            unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

/// The safetensors dtype that holds a stored dtype exactly (every [`StoredDType`] has one).
fn safetensors_dtype(d: StoredDType) -> safetensors::Dtype {
    match d {
        StoredDType::F32 => safetensors::Dtype::F32,
        StoredDType::F16 => safetensors::Dtype::F16,
        StoredDType::BF16 => safetensors::Dtype::BF16,
        StoredDType::F64 => safetensors::Dtype::F64,
        StoredDType::I64 => safetensors::Dtype::I64,
        StoredDType::I32 => safetensors::Dtype::I32,
        StoredDType::I16 => safetensors::Dtype::I16,
        StoredDType::I8 => safetensors::Dtype::I8,
        StoredDType::U8 => safetensors::Dtype::U8,
        StoredDType::Bool => safetensors::Dtype::BOOL,
        StoredDType::F8E4M3 => safetensors::Dtype::F8_E4M3,
        StoredDType::F8E5M2 => safetensors::Dtype::F8_E5M2,
    }
}

/// One tensor for [`write_safetensors_raw`]: its elements already encoded in `dtype`,
/// little-endian, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// The tensor name.
    pub name: String,
    /// The element type of `data`.
    pub dtype: StoredDType,
    /// The shape.
    pub shape: Vec<usize>,
    /// `numel × dtype size` bytes.
    pub data: Vec<u8>,
}

/// Writes tensors whose bytes are already encoded (any [`StoredDType`], integers and bools
/// included) to a `.safetensors` file, with optional string metadata. Nothing is converted: a
/// file read back gives the same bytes.
///
/// # Errors
/// [`Error::InvalidArgument`] if a name repeats or a tensor's byte count does not match its
/// shape and dtype, [`Error::Io`] if the file cannot be written.
pub fn write_safetensors_raw(
    path: impl AsRef<Path>,
    tensors: &[RawTensor],
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let mut seen = HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(Error::invalid_argument(
                "tensors",
                format!("tensor name `{}` appears twice", escape_untrusted(&t.name)),
            ));
        }
        let bytes = t
            .shape
            .iter()
            .try_fold(t.dtype.size_in_bytes(), |a, &d| a.checked_mul(d));
        if bytes != Some(t.data.len()) {
            return Err(Error::invalid_argument(
                "tensors",
                format!(
                    "tensor `{}`: shape {:?} of {} does not take {} bytes",
                    escape_untrusted(&t.name),
                    t.shape,
                    t.dtype,
                    t.data.len()
                ),
            ));
        }
        views.push((t.name.as_str(), RawView(t)));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    // The crate writes through a temporary file created private (0600); a file created here
    // gets the permissions every other output gets (0666 less the umask), kept for the result.
    std::fs::File::create(&tmp).map_err(|e| Error::io_writing(path, e))?;
    let permissions = std::fs::metadata(&tmp)
        .map_err(|e| Error::io_writing(path, e))?
        .permissions();
    safetensors::serialize_to_file(views, metadata.cloned(), &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        match e {
            safetensors::SafeTensorError::IoError(io) => Error::io_writing(path, io),
            e => Error::invalid_argument("tensors", format!("cannot serialize: {e}")),
        }
    })?;
    std::fs::set_permissions(&tmp, permissions).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io_writing(path, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io_writing(path, e)
    })
}

struct RawView<'a>(&'a RawTensor);

impl safetensors::View for RawView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors_dtype(self.0.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.0.data)
    }
    fn data_len(&self) -> usize {
        self.0.data.len()
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A fresh path in the system temp dir, removed when dropped.
    struct TempPath(PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    fn temp_path() -> TempPath {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        TempPath(std::env::temp_dir().join(format!(
            "sdrs-st-test-{}-{n}.safetensors",
            std::process::id()
        )))
    }
    fn write_raw(bytes: &[u8]) -> TempPath {
        let p = temp_path();
        std::fs::write(&p.0, bytes).unwrap();
        p
    }
    /// Header size, header text, data.
    fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }
    fn open_err(bytes: &[u8]) -> Error {
        let p = write_raw(bytes);
        let mmap = SafetensorsFile::open(&p.0).err();
        let buffered = SafetensorsFile::open_buffered(&p.0).err();
        let (Some(a), Some(b)) = (mmap, buffered) else {
            panic!("hostile file was accepted");
        };
        assert_eq!(
            a.to_string(),
            b.to_string(),
            "both modes report the same error"
        );
        a
    }
    fn assert_invalid(bytes: &[u8], needle: &str) {
        let e = open_err(bytes);
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidFile { .. }), "{msg}");
        assert_eq!(e.kind(), ErrorKind::InvalidModel);
        assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
        assert!(msg.contains("sdrs-st-test"), "error names the file: {msg}");
    }

    #[test]
    fn s1_too_short_and_bad_header_sizes() {
        for len in 0..8 {
            assert_invalid(&vec![b'{'; len], "shorter than the 8-byte header size");
        }
        let mut v = u64::MAX.to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        assert_invalid(&v, "exceeds the limit");
        let mut v = 100_000_001u64.to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        assert_invalid(&v, "exceeds the limit");
        let mut v = 64u64.to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        assert_invalid(&v, "runs past the end of the file");
    }

    #[test]
    fn s2_not_utf8_not_json_deep_json() {
        assert_invalid(
            &st_bytes("{\"a\u{1}\":1}", &[]),
            "invalid safetensors header JSON",
        );
        let mut v = 4u64.to_le_bytes().to_vec();
        v.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
        assert_invalid(&v, "not UTF-8");
        assert_invalid(&st_bytes("[1, 2]", &[]), "invalid safetensors header JSON");
        assert_invalid(&st_bytes("{} x", &[]), "invalid safetensors header JSON");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let h = format!("{{\"__metadata__\": {{\"k\": {deep}}}}}");
        assert_invalid(&st_bytes(&h, &[]), "not a string");
        let h = format!(
            "{{\"a\": {{\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1], \"x\": {deep}}}}}"
        );
        assert_invalid(&st_bytes(&h, &[0]), "recursion limit exceeded");
    }

    #[test]
    fn s3_duplicate_names_rejected() {
        let h = r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "a": {"dtype": "I32", "shape": [1], "data_offsets": [4, 8]}}"#;
        assert_invalid(&st_bytes(h, &[0; 8]), "duplicate tensor name `a`");
        let h = r#"{"__metadata__": {"k": "1", "k": "2"}}"#;
        assert_invalid(&st_bytes(h, &[]), "duplicate `__metadata__` key `k`");
    }

    #[test]
    fn s4_offsets_gap_overlap_order_bounds() {
        let two = |a: [u64; 2], b: [u64; 2]| {
            format!(
                r#"{{"a": {{"dtype": "U8", "shape": [{}], "data_offsets": [{}, {}]}},
                    "b": {{"dtype": "U8", "shape": [{}], "data_offsets": [{}, {}]}}}}"#,
                a[1].saturating_sub(a[0]),
                a[0],
                a[1],
                b[1].saturating_sub(b[0]),
                b[0],
                b[1]
            )
        };
        assert_invalid(&st_bytes(&two([0, 4], [2, 6]), &[0; 6]), "overlap");
        assert_invalid(&st_bytes(&two([0, 2], [4, 6]), &[0; 6]), "leave a gap");
        assert_invalid(
            &st_bytes(&two([2, 4], [4, 6]), &[0; 6]),
            "expected to begin at 0",
        );
        let h = r#"{"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 2]}}"#;
        assert_invalid(&st_bytes(h, &[0; 4]), "end before they begin");
        let h = r#"{"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}"#;
        assert_invalid(&st_bytes(h, &[0; 4]), "run past the data section (4 bytes)");
        let h = r#"{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0.5, 1]}}"#;
        assert_invalid(&st_bytes(h, &[0; 1]), "pair of unsigned integers");
        let h = r#"{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}}"#;
        assert_invalid(&st_bytes(h, &[0; 1]), "pair of unsigned integers");
        let h = r#"{"a": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 1]}}"#;
        assert_invalid(&st_bytes(h, &[0; 1]), "pair of unsigned integers");
    }

    #[test]
    fn s5_tiling_near_u64_max_is_caught_before_the_crate() {
        let step = (u64::MAX - 20) / 8;
        let mut h = String::from("{");
        for i in 0..8u64 {
            let (b, e) = (i * step, (i + 1) * step);
            h.push_str(&format!(
                "\"t{i}\": {{\"dtype\": \"U8\", \"shape\": [{}], \"data_offsets\": [{b}, {e}]}},",
                e - b
            ));
        }
        h.pop();
        h.push('}');
        assert_invalid(&st_bytes(&h, &[]), "run past the data section");
    }

    #[test]
    fn s6_s7_sizes_inconsistent_with_shape() {
        let h =
            r#"{"a": {"dtype": "F32", "shape": [2, 9223372036854775808], "data_offsets": [0, 0]}}"#;
        assert_invalid(&st_bytes(h, &[]), "overflows");
        let h =
            r#"{"a": {"dtype": "U8", "shape": [2, 18446744073709551614], "data_offsets": [0, 0]}}"#;
        assert_invalid(&st_bytes(h, &[]), "overflows");
        let h = r#"{"a": {"dtype": "I32", "shape": [2, 2], "data_offsets": [0, 4]}}"#;
        assert_invalid(
            &st_bytes(h, &[0; 4]),
            "needs 16 bytes, data_offsets [0, 4] give 4",
        );
        let h = r#"{"a": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 4]}}"#;
        assert_invalid(&st_bytes(h, &[0; 4]), "more than 8 dimensions");
        let h = r#"{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#;
        assert_invalid(&st_bytes(h, &[0; 4]), "invalid safetensors header JSON");
    }

    #[test]
    fn s8_trailing_or_missing_bytes() {
        let h = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#;
        assert_invalid(&st_bytes(h, &[0; 10]), "trailing or missing data");
        assert_invalid(&st_bytes(h, &[0; 6]), "run past the data section");
    }

    #[test]
    fn s9_unaligned_data_start_reads_exact_values() -> Result<()> {
        let f32s = [1.5f32, -2.25, f32::MIN_POSITIVE, 3.0e38];
        let f16s = [half::f16::from_f32(0.1), half::f16::from_f32(-65504.0)];
        let mut data: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.extend(f16s.iter().flat_map(|v| v.to_bits().to_le_bytes()));
        let mut h = String::from(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]}}"#,
        );
        assert!(h.len() <= 110);
        // Pad to a length that is not a multiple of 4, so data starts misaligned.
        while h.len() < 110 {
            h.push(' ');
        }
        assert_ne!((8 + h.len()) % 4, 0);
        let p = write_raw(&st_bytes(&h, &data));
        for f in [
            SafetensorsFile::open(&p.0)?,
            SafetensorsFile::open_buffered(&p.0)?,
        ] {
            let a = f.read_f32("a")?;
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                f32s.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(f.read_f32("b")?, vec![f16s[0].to_f32(), -65504.0]);
            assert_eq!(f.tensor_names(), vec!["a".to_string(), "b".to_string()]);
        }
        Ok(())
    }

    #[test]
    fn s10_metadata_must_be_strings() -> Result<()> {
        let h = r#"{"__metadata__": {"format": 1}}"#;
        assert_invalid(
            &st_bytes(h, &[]),
            "`__metadata__` value for `format` is not a string",
        );
        let h = r#"{"__metadata__": "x"}"#;
        assert_invalid(&st_bytes(h, &[]), "invalid safetensors header JSON");
        let h = r#"{"__metadata__": {"format": "pt", "ss_x": "{\"a\": 1}"}}"#;
        let p = write_raw(&st_bytes(h, &[]));
        let f = SafetensorsFile::open(&p.0)?;
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
        assert!(f.is_empty());
        Ok(())
    }

    #[test]
    fn s11_dtypes_outside_the_allow_list_are_named() {
        for d in ["Q4", "F4", "C64", "U64", "F8_E8M0"] {
            let h = format!(r#"{{"w": {{"dtype": "{d}", "shape": [0], "data_offsets": [0, 0]}}}}"#);
            let e = open_err(&st_bytes(&h, &[]));
            let msg = e.to_string();
            assert!(matches!(e, Error::WeightDType { .. }), "{msg}");
            assert!(msg.contains(d) && msg.contains("`w`"), "{msg}");
        }
    }

    #[test]
    fn s12_hostile_names_escaped_and_limited() {
        let h = "{\"\\u001b[2J\\n\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [0, 0]},\
                  \"\\u001b[2J\\n\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [0, 0]}}";
        let msg = open_err(&st_bytes(h, &[])).to_string();
        assert!(
            msg.contains("\\u{1b}[2J\\u{a}") && !msg.contains('\x1b'),
            "{msg}"
        );
        let long = "n".repeat(5000);
        let h = format!(r#"{{"{long}": {{"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}}}"#);
        let msg = open_err(&st_bytes(&h, &[])).to_string();
        assert!(msg.contains("exceeds the limit of 4096 bytes"), "{msg}");
        assert!(msg.len() < 1000, "long name truncated in the message");
    }

    #[test]
    fn s13_zero_size_and_scalar_tensors() -> Result<()> {
        let h = r#"{"e": {"dtype": "F32", "shape": [2, 0], "data_offsets": [0, 0]},
                    "s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}"#;
        let p = write_raw(&st_bytes(h, &7.0f32.to_le_bytes()));
        let f = SafetensorsFile::open(&p.0)?;
        assert_eq!(f.read_f32("e")?, Vec::<f32>::new());
        assert_eq!(f.read_f32("s")?, vec![7.0]);
        assert_eq!(f.tensor_info("s").map(|i| i.shape.rank()), Some(0));
        Ok(())
    }

    #[test]
    fn s15_tensor_count_limit() {
        let mut h = String::from("{");
        for i in 0..5 {
            h.push_str(&format!(
                "\"t{i}\": {{\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [0, 0]}},"
            ));
        }
        h.pop();
        h.push('}');
        let p = write_raw(&st_bytes(&h, &[]));
        let limits = SafetensorsLimits {
            max_tensors: 4,
            ..SafetensorsLimits::default()
        };
        let msg = SafetensorsFile::open_with(&p.0, ReadMode::Mmap, &limits)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("more than 4 tensors"), "{msg}");
    }

    #[test]
    fn s16_truncation_in_buffered_mode_is_an_error() -> Result<()> {
        let p = temp_path();
        let vals: Vec<f32> = (0..64).map(|i| i as f32).collect();
        write_safetensors(&p.0, &[("w", &[64], &vals)], WriteDType::F32, None)?;
        let f = SafetensorsFile::open_buffered(&p.0)?;
        assert_eq!(f.read_f32("w")?, vals);
        let file = std::fs::OpenOptions::new().write(true).open(&p.0).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len - 10).unwrap();
        let msg = f
            .read_f32("w")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("truncated") && msg.contains("`w`"), "{msg}");
        Ok(())
    }

    #[test]
    fn missing_and_non_float_tensors() -> Result<()> {
        let h = r#"{"ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}"#;
        let p = write_raw(&st_bytes(h, &[0; 16]));
        let f = SafetensorsFile::open(&p.0)?;
        assert!(matches!(f.read_f32("ids"), Err(Error::WeightDType { .. })));
        assert_eq!(f.read_bytes("ids")?.len(), 16);
        assert!(matches!(
            f.read_f32("nope"),
            Err(Error::MissingWeight { .. })
        ));
        Ok(())
    }

    #[test]
    fn f32_f16_bf16_round_trip_exactly() -> Result<()> {
        let mut vals: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            0.1,
            65504.0,
            1e-7,
            6.0e-8,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.0e38,
        ];
        // Enough values to take the parallel decoding path.
        vals.extend((0..200_000).map(|i| ((i as f32) * 0.37).sin() * 100.0));
        let shape = [vals.len()];
        for (dt, want) in [
            (WriteDType::F32, vals.clone()),
            (
                WriteDType::F16,
                vals.iter()
                    .map(|&v| half::f16::from_f32(v).to_f32())
                    .collect(),
            ),
            (
                WriteDType::BF16,
                vals.iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
                    .collect(),
            ),
        ] {
            let p = temp_path();
            let mut meta = HashMap::new();
            meta.insert("k".to_string(), "v".to_string());
            write_safetensors(&p.0, &[("x", &shape, &vals)], dt, Some(&meta))?;
            for f in [
                SafetensorsFile::open(&p.0)?,
                SafetensorsFile::open_buffered(&p.0)?,
            ] {
                let got = f.read_f32("x")?;
                assert_eq!(got.len(), want.len());
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dt:?} values differ"
                );
                assert_eq!(f.metadata().get("k").map(String::as_str), Some("v"));
            }
        }
        // NaN survives as NaN.
        let p = temp_path();
        write_safetensors(&p.0, &[("n", &[1], &[f32::NAN])], WriteDType::F16, None)?;
        assert!(SafetensorsFile::open(&p.0)?.read_f32("n")?[0].is_nan());
        Ok(())
    }

    #[test]
    fn f8_decoding() {
        let mut out = [0f32; 6];
        decode_to_f32(
            StoredDType::F8E4M3,
            &[0x38, 0x7e, 0x01, 0xb8, 0x7f, 0x00],
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..4], &[1.0, 448.0, 2f32.powi(-9), -1.0]);
        assert!(out[4].is_nan());
        assert_eq!(out[5], 0.0);
        let mut out = [0f32; 3];
        decode_to_f32(StoredDType::F8E5M2, &[0x3c, 0x7b, 0xc0], &mut out).unwrap();
        assert_eq!(out, [1.0, 57344.0, -2.0]);
        assert!(decode_to_f32(StoredDType::F32, &[0; 3], &mut [0.0]).is_err());
    }

    #[test]
    fn writer_rejects_bad_input() {
        let p = temp_path();
        let e = write_safetensors(&p.0, &[("a", &[2], &[1.0])], WriteDType::F32, None);
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
        let e = write_safetensors(
            &p.0,
            &[("a", &[1], &[1.0]), ("a", &[1], &[2.0])],
            WriteDType::F32,
            None,
        );
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
    }
}
