//! Scanning a checkpoint (what it holds and whether it is safe to load) and converting it to
//! safetensors, without running any of its code.
//!
//! The input's format is recognised from its content, never from its extension: a torch zip or
//! legacy pickle checkpoint (`.ckpt`, `.pt`, `.bin`) is read by the restricted interpreter, a
//! `.safetensors` file by the validated reader. Anything else is refused with its kind named.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use super::ckpt::{self, CkptFile, CkptFormat, ContainerFormat};
use super::layout::{FileKind, sniff};
use super::pickle::{EmbeddingKind, Limits, LoadError, LoadErrorKind, TensorId, Value, escape};
use super::safetensors::{RawTensor, SafetensorsFile, write_safetensors_raw};
use super::store::{StoredDType, TensorSource};
use crate::error::{Error, ErrorKind, Result};

/// The float type a conversion writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertDType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
}

impl ConvertDType {
    /// Parses `f32`, `f16` or `bf16`.
    pub fn parse(name: &str) -> Option<ConvertDType> {
        match name {
            "f32" => Some(ConvertDType::F32),
            "f16" => Some(ConvertDType::F16),
            "bf16" => Some(ConvertDType::BF16),
            _ => None,
        }
    }

    fn stored(self) -> StoredDType {
        match self {
            ConvertDType::F32 => StoredDType::F32,
            ConvertDType::F16 => StoredDType::F16,
            ConvertDType::BF16 => StoredDType::BF16,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            ConvertDType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ConvertDType::F16 => values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            ConvertDType::BF16 => values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

/// One tensor a scanned file declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedTensor {
    /// Its name as the reader names it (nested dicts flattened with `.`).
    pub name: String,
    /// The stored element type.
    pub dtype: StoredDType,
    /// The shape.
    pub shape: Vec<usize>,
}

/// A global (module and name) a pickle refers to, with how often and where first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedGlobal {
    /// The module, as written in the file.
    pub module: String,
    /// The name, as written in the file.
    pub name: String,
    /// How many opcodes (`GLOBAL`, and `INST`/`STACK_GLOBAL` in refused files) name it.
    pub count: usize,
    /// Byte offset of the first one in its pickle.
    pub first_offset: u64,
    /// The pickle it is first named in: `data.pkl` (zip format) or, for the legacy format,
    /// `object` (or `protocol`, `sys_info`, `key list` for the header pickles).
    pub pickle: &'static str,
    /// Why it is refused (not on the allow-list, or named by a refused opcode); `None` for a
    /// global the reader accepts. Always `None` in [`ScanReport::globals`].
    pub refused: Option<&'static str>,
}

/// The outcome of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The file can be loaded: nothing in it would run, every global is on the allow-list.
    Loadable,
    /// The file is refused (hostile or malformed); nothing was executed.
    Refused {
        /// Why, naming what was refused and where.
        reason: String,
    },
}

/// What [`scan_checkpoint`] found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// The file scanned.
    pub path: PathBuf,
    /// The container, in words (`safetensors`, `torch zip (…)`, `torch legacy …`, or the kind
    /// of a file that is not a checkpoint).
    pub format: String,
    /// Every tensor, in file order (empty when refused).
    pub tensors: Vec<ScannedTensor>,
    /// Metadata: safetensors `__metadata__`, or a checkpoint's scalar entries.
    pub metadata: BTreeMap<String, String>,
    /// Every global the pickle names, sorted by module and name, when the file is loadable
    /// (all of them on the allow-list). Empty for safetensors and for a refused file (see
    /// [`ScanReport::refused_file_globals`]).
    pub globals: Vec<ScannedGlobal>,
    /// For a refused checkpoint: every global its pickles name, sorted by module and name,
    /// found by reading the opcodes without running anything (the reader itself stops at the
    /// first refused one), each with whether and why it is refused. `Err` with the reason when
    /// the pickles could not be located (a refused zip container, for instance). Empty for a
    /// loadable file and for files that are not checkpoints.
    pub refused_file_globals: std::result::Result<Vec<ScannedGlobal>, String>,
    /// Checkpoint entries that are neither tensors nor dicts of tensors, skipped.
    pub ignored_entries: usize,
    /// Loadable or refused.
    pub verdict: Verdict,
}

impl ScanReport {
    /// Whether the verdict is [`Verdict::Loadable`].
    pub fn is_loadable(&self) -> bool {
        self.verdict == Verdict::Loadable
    }
}

/// Tensors listed one by one by the text report up to this count; beyond it, the first half
/// and a count.
const LIST_ALL_UP_TO: usize = 64;

impl fmt::Display for ScanReport {
    /// The human-readable report: format, tensors (with a per-dtype summary), metadata, the
    /// globals, and the verdict. Names and values from the file are escaped, so the text is
    /// safe to print to a terminal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file: {}", self.path.display())?;
        writeln!(f, "format: {}", self.format)?;
        if let Verdict::Refused { reason } = &self.verdict {
            writeln!(f, "verdict: REFUSED (nothing was executed)")?;
            write!(f, "reason: {}", escape(reason))?;
            return match &self.refused_file_globals {
                Ok(globals) if globals.is_empty() => Ok(()),
                Ok(globals) => {
                    let refused = globals.iter().filter(|g| g.refused.is_some()).count();
                    write!(
                        f,
                        "\nglobals: {} distinct, {refused} refused (read from the opcodes; \
                         nothing was run)",
                        globals.len()
                    )?;
                    for g in globals {
                        write!(f, "\n  ")?;
                        write_global(f, g)?;
                    }
                    Ok(())
                }
                Err(why) => write!(f, "\nglobals: not listed ({})", escape(why)),
            };
        }
        writeln!(f, "tensors: {}", self.tensors.len())?;
        let mut by_dtype: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        let n = self.tensors.len();
        for (i, t) in self.tensors.iter().enumerate() {
            let numel: u64 = t.shape.iter().map(|&d| d as u64).product();
            let entry = by_dtype.entry(t.dtype.to_string()).or_default();
            entry.0 += 1;
            entry.1 += numel * t.dtype.size_in_bytes() as u64;
            if n <= LIST_ALL_UP_TO || i < LIST_ALL_UP_TO / 2 {
                writeln!(f, "  {} {} {:?}", escape(&t.name), t.dtype, t.shape)?;
            } else if i == LIST_ALL_UP_TO / 2 {
                writeln!(f, "  ... {} more", n - i)?;
            }
        }
        for (dt, (count, bytes)) in &by_dtype {
            writeln!(f, "  summary: {count} tensors of {dt}, {bytes} bytes")?;
        }
        writeln!(f, "metadata: {}", self.metadata.len())?;
        for (k, v) in &self.metadata {
            writeln!(f, "  {} = {}", escape(k), escape(v))?;
        }
        if self.format == "safetensors" {
            return write!(f, "verdict: LOADABLE (safetensors holds no code)");
        }
        writeln!(f, "globals: {} distinct", self.globals.len())?;
        for g in &self.globals {
            write!(f, "  ")?;
            write_global(f, g)?;
            writeln!(f)?;
        }
        write!(
            f,
            "verdict: LOADABLE (nothing was executed; every global is on the allow-list; {} \
             tensors, {} entries ignored)",
            self.tensors.len(),
            self.ignored_entries
        )
    }
}

/// One line of the globals section: `module.name xN (first at <pickle> byte B)[ REFUSED: why]`.
fn write_global(f: &mut fmt::Formatter<'_>, g: &ScannedGlobal) -> fmt::Result {
    write!(
        f,
        "{}.{} x{} (first at {} byte {})",
        escape(&g.module),
        escape(&g.name),
        g.count,
        g.pickle,
        g.first_offset
    )?;
    match g.refused {
        Some(why) => write!(f, " REFUSED: {why}"),
        None => Ok(()),
    }
}

/// Groups globals by module and name (sorted), counting them and keeping the first place each
/// is named and, if any occurrence is refused, the first reason.
fn group_globals<'a>(
    all: impl IntoIterator<
        Item = (
            &'a str,
            &'a str,
            &'static str,
            u64,
            usize,
            Option<&'static str>,
        ),
    >,
) -> Vec<ScannedGlobal> {
    let mut by_name: BTreeMap<(&str, &str), ScannedGlobal> = BTreeMap::new();
    for (module, name, pickle, offset, count, refused) in all {
        let e = by_name
            .entry((module, name))
            .or_insert_with(|| ScannedGlobal {
                module: module.to_string(),
                name: name.to_string(),
                count: 0,
                first_offset: offset,
                pickle,
                refused: None,
            });
        e.count = e.count.saturating_add(count);
        e.refused = e.refused.or(refused);
    }
    by_name.into_values().collect()
}

/// What [`convert_to_safetensors`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Metadata entries written.
    pub metadata_entries: usize,
    /// Whether the input was an AUTOMATIC1111 textual-inversion file, written as an embedding
    /// (its vectors under [`EMBEDDING_KEY`]).
    pub embedding: bool,
}

/// An opened input: a checkpoint or a safetensors file.
enum Input {
    Ckpt(Box<CkptFile>),
    Safetensors(SafetensorsFile),
}

impl Input {
    fn source(&self) -> &dyn TensorSource {
        match self {
            Input::Ckpt(c) => c.as_ref(),
            Input::Safetensors(s) => s,
        }
    }

    fn raw_bytes(&self, name: &str) -> Result<Vec<u8>> {
        match self {
            Input::Ckpt(c) => {
                let id = c.tensor_id(name).ok_or_else(|| Error::MissingWeight {
                    name: name.to_string(),
                    source_desc: c.describe(),
                })?;
                c.read_bytes(id)
            }
            Input::Safetensors(s) => s.read_bytes(name),
        }
    }
}

/// What a file's first bytes say it is: the general kind, and which torch container (if any).
#[derive(Clone, Copy)]
struct Kind {
    file: FileKind,
    container: ContainerFormat,
}

impl Kind {
    /// The file's kind in words, for reports.
    fn describe(self) -> String {
        match self.container {
            ContainerFormat::TorchLegacy => LEGACY.to_string(),
            ContainerFormat::Refused(f) => f.to_string(),
            _ => describe_kind(self.file).to_string(),
        }
    }
}

/// How reports name the legacy container.
const LEGACY: &str = "torch legacy (pre-1.6, non-zip)";

/// The kind of file at `path`, from its first bytes. Errors are I/O errors only.
fn file_kind(path: &Path) -> Result<Kind> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    Ok(Kind {
        file: sniff(&head, meta.len()),
        container: ckpt::sniff(&head),
    })
}

fn describe_kind(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Safetensors => "safetensors",
        FileKind::Zip => "zip archive",
        FileKind::Pickle => "pickle stream",
        FileKind::Tar => "tar archive (pre-1.0 torch format)",
        FileKind::SevenZip => "7-zip archive",
        FileKind::Gguf => "GGUF file",
        FileKind::Empty => "empty file",
        FileKind::Unknown => "unknown format",
    }
}

fn open_input(path: &Path, kind: Kind) -> Result<Input> {
    match kind.file {
        FileKind::Safetensors => Ok(Input::Safetensors(SafetensorsFile::open(path)?)),
        FileKind::Zip | FileKind::Pickle => Ok(Input::Ckpt(Box::new(CkptFile::open(
            path,
            &Limits::default(),
        )?))),
        _ => Err(Error::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("{}, not a checkpoint sdrs reads", kind.describe()),
        }),
    }
}

/// Whether an error means "the file was refused" rather than "the file could not be read".
fn is_refusal(e: &Error) -> bool {
    !matches!(e.kind(), ErrorKind::Io | ErrorKind::NotFound)
}

/// Reports what the file at `path` holds (format, tensors, metadata, every global a pickle
/// names) and whether it can be loaded, without running anything from it.
///
/// A hostile or malformed file is not an error: it gives a report whose verdict is
/// [`Verdict::Refused`] with the reason.
///
/// # Errors
/// [`ErrorKind::NotFound`] or [`ErrorKind::Io`] when the file cannot be read.
pub fn scan_checkpoint(path: impl AsRef<Path>) -> Result<ScanReport> {
    let path = path.as_ref();
    let kind = file_kind(path)?;
    let refused = |reason: String| {
        // The reader stopped at the first thing it refused; list what the pickles name anyway,
        // from the opcodes alone.
        let refused_file_globals = match kind.file {
            FileKind::Zip | FileKind::Pickle => {
                match ckpt::list_file_globals(path, &Limits::default()) {
                    Ok(all) => Ok(group_globals(all.iter().map(|g| {
                        (
                            g.global.module.as_str(),
                            g.global.name.as_str(),
                            g.pickle,
                            g.global.offset,
                            g.global.count,
                            g.global.refused,
                        )
                    }))),
                    Err(e) => Err(match e {
                        Error::Checkpoint { source, .. } => source.to_string(),
                        other => other.to_string(),
                    }),
                }
            }
            _ => Ok(Vec::new()),
        };
        ScanReport {
            path: path.to_path_buf(),
            format: kind.describe(),
            tensors: Vec::new(),
            metadata: BTreeMap::new(),
            globals: Vec::new(),
            refused_file_globals,
            ignored_entries: 0,
            verdict: Verdict::Refused { reason },
        }
    };
    let file = match open_input(path, kind) {
        Ok(f) => f,
        Err(e) if is_refusal(&e) => return Ok(refused(e.to_string())),
        Err(e) => return Err(e),
    };
    let format = match &file {
        Input::Safetensors(_) => "safetensors".to_string(),
        Input::Ckpt(c) => match c.format() {
            CkptFormat::Zip {
                prefix,
                version,
                unreferenced_records,
            } => format!(
                "torch zip (directory `{}`, version {version}, {unreferenced_records} \
                 unreferenced storage records)",
                escape(prefix)
            ),
            CkptFormat::Legacy => LEGACY.to_string(),
        },
    };
    let src = file.source();
    let tensors = src
        .tensor_names()
        .into_iter()
        .filter_map(|name| {
            let info = src.tensor_info(&name)?;
            Some(ScannedTensor {
                name,
                dtype: info.dtype,
                shape: info.shape.dims().to_vec(),
            })
        })
        .collect();
    let metadata = src.metadata().into_iter().collect();
    let (globals, ignored_entries) = match &file {
        Input::Ckpt(c) => {
            let pickle = match c.format() {
                CkptFormat::Zip { .. } => "data.pkl",
                CkptFormat::Legacy => "object",
            };
            let globals = group_globals(c.document().globals.iter().map(|g| {
                (
                    g.module.as_str(),
                    g.name.as_str(),
                    pickle,
                    g.offset,
                    1,
                    None,
                )
            }));
            (globals, c.state_dict().ignored)
        }
        Input::Safetensors(_) => (Vec::new(), 0),
    };
    Ok(ScanReport {
        path: path.to_path_buf(),
        format,
        tensors,
        metadata,
        globals,
        refused_file_globals: Ok(Vec::new()),
        ignored_entries,
        verdict: Verdict::Loadable,
    })
}

/// The name a converted textual-inversion embedding's vectors are written under. It is what
/// kohya's sd-scripts calls them in its safetensors embeddings, and a file holding this one
/// tensor loads as an embedding in AUTOMATIC1111 (any single-tensor file does) and in
/// [`crate::adapters::Embedding`], triggered by the file name as the `.pt` file was.
pub const EMBEDDING_KEY: &str = "emb_params";

/// The vectors of an AUTOMATIC1111 textual-inversion file (`string_to_param` as a dict or as
/// a pickled `ParameterDict`), whose state-dict view would be `string_to_token.*` (the token
/// id) and, for the dict form only, `string_to_param.*`.
fn a1111_embedding(c: &CkptFile) -> Option<TensorId> {
    let emb = c.embedding().ok()?;
    match (emb.kind, emb.parts.as_slice()) {
        (EmbeddingKind::A1111 | EmbeddingKind::ParameterDict, [part]) => Some(part.tensor),
        _ => None,
    }
}

/// What a checkpoint without state-dict tensors holds, in words, for the "nothing to convert"
/// error: an AUTOMATIC1111 hypernetwork, a torch optimizer state, a bare tensor or list, or
/// else its top-level entries.
fn describe_contents(c: &CkptFile) -> String {
    let doc = c.document();
    let root = doc.root();
    let tensors = doc.tensors.len();
    if let Ok(h) = c.hypernetwork() {
        let sizes: Vec<String> = h.layers.iter().map(|l| l.size.to_string()).collect();
        let n: usize = h.layers.iter().map(|l| l.k.len() + l.v.len()).sum();
        return format!(
            "it is an AUTOMATIC1111 hypernetwork ({} layers, for context widths {}; {n} \
             tensors), which is applied from its .pt file (txt2img --hypernetwork) and has no \
             safetensors form",
            h.layers.len(),
            sizes.join(", ")
        );
    }
    if matches!(doc.dict_get(root, "state"), Some(Value::Dict(_)))
        && matches!(doc.dict_get(root, "param_groups"), Some(Value::List(_)))
    {
        return format!(
            "it is a torch optimizer state (`state` and `param_groups`; {tensors} tensors of \
             optimizer statistics keyed by parameter index)"
        );
    }
    match root {
        Value::Tensor(t) => {
            let shape = doc.tensor(t).map(|d| d.shape.clone()).unwrap_or_default();
            format!(
                "it is one bare tensor of shape {shape:?}, with no name (an embedding saved this \
                 way loads as one, given a trigger word)"
            )
        }
        Value::List(_) => format!(
            "its root is a list of {} items ({tensors} tensors), not a dict of tensors",
            doc.list(root).map_or(0, <[Value]>::len)
        ),
        _ => {
            let entries = doc.dict(root).unwrap_or(&[]);
            let shown: Vec<String> = entries
                .iter()
                .take(8)
                .map(|&(k, v)| {
                    let key = match k {
                        Value::Int(i) => i.to_string(),
                        _ => doc.str(k).map_or_else(|| k.type_name().to_string(), escape),
                    };
                    format!("`{key}` ({})", v.type_name())
                })
                .collect();
            format!(
                "its {} top-level entries are {}{} ({tensors} tensors in all, none under a \
                 string key path)",
                entries.len(),
                if shown.is_empty() {
                    "none".to_string()
                } else {
                    shown.join(", ")
                },
                if entries.len() > 8 { ", …" } else { "" }
            )
        }
    }
}

/// Converts a checkpoint (or a safetensors file) to a `.safetensors` file at `output`, keeping
/// tensor names as stored and metadata as safetensors metadata. With `dtype`, float tensors
/// are converted to it; integer and bool tensors (`position_ids`) are always kept as stored.
///
/// An AUTOMATIC1111 textual-inversion file (`string_to_param`, a dict or a pickled
/// `ParameterDict`) is written as an embedding: its vectors under [`EMBEDDING_KEY`], its
/// `name`, `step` and checkpoint fields as metadata, and nothing else (the token id in
/// `string_to_token` is not needed to load it).
///
/// # Errors
/// [`ErrorKind::NotFound`]/[`ErrorKind::Io`] when the input cannot be read or the output cannot
/// be written; another kind (the reader's: usually [`ErrorKind::InvalidModel`]) when the input
/// is refused. A genuine checkpoint without model weights (a hypernetwork, an optimizer state)
/// gives [`Error::Checkpoint`] with [`LoadErrorKind::NoModelWeights`] saying what it holds.
pub fn convert_to_safetensors(
    input: impl AsRef<Path>,
    output: impl AsRef<Path>,
    dtype: Option<ConvertDType>,
) -> Result<ConvertSummary> {
    let (input, output) = (input.as_ref(), output.as_ref());
    let file = open_input(input, file_kind(input)?)?;
    let src = file.source();
    // What to write: each output name, with the tensor id for a checkpoint.
    let (items, embedding): (Vec<(String, Option<TensorId>)>, bool) = match &file {
        Input::Ckpt(c) => match a1111_embedding(c) {
            Some(id) => (vec![(EMBEDDING_KEY.to_string(), Some(id))], true),
            None => (
                c.state_dict()
                    .tensors
                    .iter()
                    .map(|(n, id)| (n.clone(), Some(*id)))
                    .collect(),
                false,
            ),
        },
        Input::Safetensors(s) => (
            s.tensor_names().into_iter().map(|n| (n, None)).collect(),
            false,
        ),
    };
    if items.is_empty() {
        return Err(match &file {
            Input::Ckpt(c) => Error::Checkpoint {
                path: input.to_path_buf(),
                source: Box::new(LoadError::new(LoadErrorKind::NoModelWeights {
                    holds: describe_contents(c),
                })),
            },
            Input::Safetensors(_) => Error::InvalidFile {
                path: input.to_path_buf(),
                reason: "holds no tensors; nothing to convert".to_string(),
            },
        });
    }
    let mut tensors = Vec::with_capacity(items.len());
    for (name, id) in &items {
        let (stored, shape, data) = match (&file, id) {
            (Input::Ckpt(c), Some(id)) => {
                let decl = c.tensor_decl(*id).ok_or_else(|| Error::MissingWeight {
                    name: name.clone(),
                    source_desc: src.describe(),
                })?;
                let (stored, shape) = (decl.dtype, decl.shape.clone());
                match dtype {
                    Some(t) if stored.is_float() && stored != t.stored() => {
                        (t.stored(), shape, t.encode(&c.read_f32_id(*id, name)?))
                    }
                    _ => (stored, shape, c.read_bytes(*id)?),
                }
            }
            _ => {
                let info = src.tensor_info(name).ok_or_else(|| Error::MissingWeight {
                    name: name.clone(),
                    source_desc: src.describe(),
                })?;
                let shape = info.shape.dims().to_vec();
                match dtype {
                    Some(t) if info.dtype.is_float() && info.dtype != t.stored() => {
                        (t.stored(), shape, t.encode(&src.read_f32(name)?))
                    }
                    _ => (info.dtype, shape, file.raw_bytes(name)?),
                }
            }
        };
        tensors.push(RawTensor {
            name: name.clone(),
            dtype: stored,
            shape,
            data,
        });
    }
    let metadata: HashMap<String, String> = src.metadata();
    write_safetensors_raw(
        output,
        &tensors,
        (!metadata.is_empty()).then_some(&metadata),
    )?;
    Ok(ConvertSummary {
        tensors: tensors.len(),
        metadata_entries: metadata.len(),
        embedding,
    })
}

/// One line for logs: `N tensors, M metadata entries`.
impl fmt::Display for ConvertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tensors, {} metadata entries",
            self.tensors, self.metadata_entries
        )?;
        if self.embedding {
            write!(
                f,
                " (a textual-inversion embedding: its vectors as `{EMBEDDING_KEY}`)"
            )?;
        }
        Ok(())
    }
}
