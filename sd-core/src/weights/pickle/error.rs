//! Errors of the checkpoint reader: what was refused and where.

use std::fmt;

/// A container format that is recognised and refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A TorchScript archive (`constants.pkl`, `code/`): it is a program, not weights.
    TorchScript,
    /// The tar format of torch ≤ 0.1.9 (refused by torch's own `weights_only` loader too).
    LegacyTar,
    /// A 7-Zip archive (malicious models have been wrapped in 7z to evade scanners).
    SevenZip,
    /// A gzip stream.
    Gzip,
    /// The preview `PYTORCH1` format that torch itself rejects.
    TorchPreview,
    /// A safetensors file; read it with the safetensors loader instead.
    Safetensors,
    /// A legacy-format torch checkpoint written with text pickle protocol 0 or 1, whose opcodes
    /// (`LONG`, `INT`, `DICT`, `PUT`, …) are outside the accepted set.
    LegacyTextPickle,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::TorchScript => "a TorchScript archive (code, not weights)",
            Format::LegacyTar => "the legacy torch tar format",
            Format::SevenZip => "a 7-Zip archive",
            Format::Gzip => "a gzip stream",
            Format::TorchPreview => "the torch preview format (PYTORCH1)",
            Format::Safetensors => "a safetensors file",
            Format::LegacyTextPickle => {
                "a torch legacy-format checkpoint written with text pickle protocol 0 or 1 \
                 (text opcodes are not read)"
            }
        })
    }
}

/// What is wrong with a zip container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZipProblem {
    /// No end-of-central-directory record where the format puts it.
    NoEndOfCentralDirectory,
    /// The end-of-central-directory or zip64 records are inconsistent.
    BadEndOfCentralDirectory(&'static str),
    /// A central-directory or local header is malformed.
    BadHeader(&'static str),
    /// The archive spans several disks.
    MultiDisk,
    /// An entry is encrypted.
    Encrypted,
    /// An entry has general-purpose flag bits other than "data descriptor" and "UTF-8".
    UnsupportedFlags(u16),
    /// An entry uses a compression method other than STORED (or DEFLATE where allowed).
    UnsupportedMethod(u16),
    /// The local header names a different file than the central directory.
    NameMismatch {
        /// The name in the central directory.
        central: String,
        /// The name in the local header.
        local: String,
    },
    /// The CRC-32 of a record does not match the central directory.
    BadCrc(String),
    /// Two entries' byte ranges overlap.
    Overlap,
    /// An entry's data lies (partly) outside the file.
    OutOfBounds(String),
    /// Not every entry lies under the first entry's top-level directory.
    MixedPrefix(String),
    /// An entry is not inside a top-level directory.
    NotInSubdirectory(String),
    /// Two `data.pkl` records.
    DuplicateDataPkl,
    /// The same name twice.
    DuplicateName(String),
    /// No `data.pkl` record.
    MissingDataPkl,
    /// A name with `..`, a leading `/`, `\`, NUL, non-ASCII or an excessive length.
    BadName(String),
    /// A record torch never writes.
    UnexpectedRecord(String),
}

impl fmt::Display for ZipProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZipProblem::NoEndOfCentralDirectory => write!(f, "no end-of-central-directory record"),
            ZipProblem::BadEndOfCentralDirectory(why) => {
                write!(f, "bad end-of-central-directory: {why}")
            }
            ZipProblem::BadHeader(why) => write!(f, "bad entry header: {why}"),
            ZipProblem::MultiDisk => write!(f, "multi-disk archives are not supported"),
            ZipProblem::Encrypted => write!(f, "encrypted entries are not supported"),
            ZipProblem::UnsupportedFlags(bits) => write!(f, "unsupported flag bits {bits:#06x}"),
            ZipProblem::UnsupportedMethod(m) => write!(f, "unsupported compression method {m}"),
            ZipProblem::NameMismatch { central, local } => write!(
                f,
                "local header name `{}` differs from central directory name `{}`",
                escape(local),
                escape(central)
            ),
            ZipProblem::BadCrc(name) => write!(f, "CRC-32 mismatch in `{}`", escape(name)),
            ZipProblem::Overlap => write!(f, "entries overlap"),
            ZipProblem::OutOfBounds(name) => {
                write!(f, "entry `{}` lies outside the file", escape(name))
            }
            ZipProblem::MixedPrefix(name) => write!(
                f,
                "entry `{}` is not under the archive's top-level directory",
                escape(name)
            ),
            ZipProblem::NotInSubdirectory(name) => {
                write!(f, "entry `{}` is not in a subdirectory", escape(name))
            }
            ZipProblem::DuplicateDataPkl => write!(f, "two data.pkl records"),
            ZipProblem::DuplicateName(name) => write!(f, "duplicate entry `{}`", escape(name)),
            ZipProblem::MissingDataPkl => write!(f, "no data.pkl record"),
            ZipProblem::BadName(name) => write!(f, "bad entry name `{}`", escape(name)),
            ZipProblem::UnexpectedRecord(name) => {
                write!(f, "unexpected record `{}`", escape(name))
            }
        }
    }
}

/// What went wrong while reading a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadErrorKind {
    // === Container ===
    /// Not a torch checkpoint (neither the zip nor the legacy format).
    NotACheckpoint,
    /// A format recognised and refused.
    UnsupportedFormat(Format),
    /// The data ends before a value it announces.
    Truncated,
    /// Bytes follow the end of the data.
    TrailingData,
    /// A structural problem.
    Malformed(&'static str),
    /// A valid construct that this reader does not support.
    Unsupported(&'static str),
    /// An unsupported format or protocol version.
    UnsupportedVersion(String),
    /// A file written with pickle protocol 4 or 5 while
    /// [`Limits::allow_protocol4`](super::Limits::allow_protocol4) is off: every pickle in it
    /// uses the protocol-4 opcodes.
    Protocol4Off {
        /// What the file is, in words.
        what: &'static str,
        /// The pickle protocol it was written with.
        protocol: u8,
    },
    /// The data is stored big-endian (or the byte order is unknown).
    UnsupportedByteOrder,
    /// A problem with the zip container.
    Zip(ZipProblem),
    /// Reading the file failed.
    Io(std::io::ErrorKind),

    // === Pickle program ===
    /// An opcode outside the accepted set.
    UnsupportedOpcode {
        /// The opcode byte.
        op: u8,
    },
    /// A global outside the allow-list.
    ForbiddenGlobal {
        /// The module, as written in the file.
        module: String,
        /// The name, as written in the file.
        name: String,
    },
    /// An allowed callable got arguments it does not accept.
    BadArgs {
        /// The callable.
        callable: &'static str,
        /// What was wrong.
        why: &'static str,
    },
    /// `BUILD` on a value that may not be built.
    ForbiddenBuild {
        /// The kind of the target value.
        target: &'static str,
    },
    /// `NEWOBJ` of a class that may not be instantiated.
    ForbiddenNewObj {
        /// The class.
        class: &'static str,
    },
    /// An opcode found a value of the wrong type.
    TypeMismatch {
        /// The opcode.
        op: &'static str,
        /// What it needed.
        expected: &'static str,
        /// What it found.
        found: &'static str,
    },
    /// An opcode needed more values than the stack holds above the innermost mark.
    StackUnderflow,
    /// A memo slot that was never set.
    MissingMemo(u32),
    /// A list, dict or other unhashable value used as a dict key or set item.
    UnhashableKey,
    /// The same key twice in one dict.
    DuplicateKey(String),
    /// A string that is not valid UTF-8.
    BadUtf8,
    /// An integer that does not fit 64 bits, or a negative value where a size is needed.
    IntegerTooLarge,

    // === Storages and tensors ===
    /// A persistent id that is not a storage reference.
    BadPersistentId(&'static str),
    /// The same storage key declared with two dtypes or sizes.
    StorageConflict {
        /// The storage key.
        key: String,
    },
    /// A storage the pickle refers to is absent from the container.
    MissingStorage {
        /// The storage key.
        key: String,
    },
    /// A storage record's size differs from what the pickle declares.
    StorageSizeMismatch {
        /// The storage key.
        key: String,
        /// Bytes the pickle declares.
        declared: u64,
        /// Bytes the container holds.
        actual: u64,
    },
    /// A tensor view reaches outside its storage.
    TensorOutOfBounds {
        /// The tensor name, when known.
        name: Option<String>,
    },
    /// A tensor view whose overlapping or stride-0 ("expanded") strides make it larger than
    /// its storage: copying it out could take far more memory than the file, so it is refused.
    ExpandedView {
        /// The tensor name (its key), when known.
        name: Option<String>,
    },
    /// A dtype this reader does not handle.
    UnsupportedDtype(String),

    // === Contents ===
    /// A genuine file that holds no model weights (a hypernetwork, an optimizer state), where
    /// a state dict was asked for: nothing was refused, there is nothing to convert.
    NoModelWeights {
        /// What the file holds, in words (names from the file already escaped).
        holds: String,
    },

    // === Resources ===
    /// A configured limit was exceeded.
    LimitExceeded {
        /// The limit (see [`super::Limits`]).
        limit: &'static str,
        /// The value that exceeded it (or the limit itself when the value is unbounded).
        value: u64,
    },
}

impl fmt::Display for LoadErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LoadErrorKind as K;
        match self {
            K::NotACheckpoint => write!(f, "not a torch checkpoint"),
            K::UnsupportedFormat(fmt_) => write!(f, "refused: {fmt_}"),
            K::Truncated => write!(f, "data ends early"),
            K::TrailingData => write!(f, "trailing bytes after the end of the data"),
            K::Malformed(why) => write!(f, "malformed: {why}"),
            K::Unsupported(what) => write!(f, "unsupported: {what}"),
            K::UnsupportedVersion(v) => write!(f, "unsupported version `{}`", escape(v)),
            K::Protocol4Off { what, protocol } => write!(
                f,
                "{what} written with pickle protocol {protocol}; its protocol-4 opcodes \
                 (FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL) are refused unless \
                 Limits::allow_protocol4 is set"
            ),
            K::UnsupportedByteOrder => write!(f, "unsupported byte order (only little-endian)"),
            K::Zip(p) => write!(f, "zip container: {p}"),
            K::Io(kind) => write!(f, "i/o error: {kind}"),
            K::UnsupportedOpcode { op } => match protocol4_opcode(*op) {
                Some((name, since)) => write!(
                    f,
                    "refused pickle opcode {op:#04x} ({name}, written from pickle protocol \
                     {since} on; accepted only with Limits::allow_protocol4)"
                ),
                None => write!(f, "refused pickle opcode {op:#04x}"),
            },
            K::ForbiddenGlobal { module, name } => write!(
                f,
                "refused global `{}.{}` (not on the allow-list)",
                escape(module),
                escape(name)
            ),
            K::BadArgs { callable, why } => write!(f, "bad arguments to {callable}: {why}"),
            K::ForbiddenBuild { target } => write!(f, "refused BUILD on {target}"),
            K::ForbiddenNewObj { class } => write!(f, "refused NEWOBJ of {class}"),
            K::TypeMismatch {
                op,
                expected,
                found,
            } => write!(f, "{op} expected {expected}, found {found}"),
            K::StackUnderflow => write!(f, "stack underflow"),
            K::MissingMemo(id) => write!(f, "memo slot {id} was never set"),
            K::UnhashableKey => write!(f, "unhashable dict key or set item"),
            K::DuplicateKey(k) => write!(f, "duplicate key `{}`", escape(k)),
            K::BadUtf8 => write!(f, "invalid UTF-8 in a string"),
            K::IntegerTooLarge => write!(f, "integer out of range"),
            K::BadPersistentId(why) => write!(f, "bad persistent id: {why}"),
            K::StorageConflict { key } => {
                write!(f, "storage `{}` declared twice differently", escape(key))
            }
            K::MissingStorage { key } => write!(f, "storage `{}` is missing", escape(key)),
            K::StorageSizeMismatch {
                key,
                declared,
                actual,
            } => write!(
                f,
                "storage `{}` holds {actual} bytes, the pickle declares {declared}",
                escape(key)
            ),
            K::TensorOutOfBounds { name: Some(n) } => {
                write!(f, "tensor `{}` reaches outside its storage", escape(n))
            }
            K::TensorOutOfBounds { name: None } => {
                write!(f, "tensor view reaches outside its storage")
            }
            K::ExpandedView { name } => {
                match name {
                    Some(n) => write!(f, "tensor `{}`", escape(n))?,
                    None => write!(f, "a tensor view")?,
                }
                write!(
                    f,
                    " has overlapping/expanded strides (a view larger than its storage): \
                     unsupported"
                )
            }
            K::UnsupportedDtype(d) => write!(f, "unsupported dtype `{}`", escape(d)),
            K::NoModelWeights { holds } => {
                write!(f, "holds no model weights: {holds}; nothing to convert")
            }
            K::LimitExceeded { limit, value } => {
                write!(f, "limit `{limit}` exceeded ({value})")?;
                match *limit {
                    "max_state_dict_entries" => write!(
                        f,
                        ": the state dict flattens to too many names (a dict reached under \
                         several keys counts once per key)"
                    ),
                    "max_name_bytes" => write!(
                        f,
                        ": the state dict's names and metadata would take too much memory (a \
                         dict or string reached under several keys counts once per key)"
                    ),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// The name of an opcode of the optional protocol 3/4 tier.
fn protocol4_opcode(op: u8) -> Option<(&'static str, u8)> {
    Some(match op {
        b'B' => ("BINBYTES", 3),
        b'C' => ("SHORT_BINBYTES", 3),
        0x8c => ("SHORT_BINUNICODE", 4),
        0x94 => ("MEMOIZE", 4),
        0x95 => ("FRAME", 4),
        0x93 => ("STACK_GLOBAL", 4),
        _ => return None,
    })
}

/// Where in the input an error was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Byte offset of the failing opcode inside a pickle stream.
    PickleOp {
        /// Which pickle: `data.pkl` for the zip format, `pickle 4` etc. for the legacy format.
        pickle: &'static str,
        /// Offset of the opcode from the start of that pickle.
        offset: u64,
    },
    /// Absolute byte offset in the file.
    File {
        /// The offset.
        offset: u64,
    },
    /// A zip entry.
    ZipEntry {
        /// The entry name.
        name: String,
    },
    /// A named tensor.
    Tensor {
        /// The tensor name.
        name: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::PickleOp { pickle, offset } => write!(f, "{pickle} at byte {offset}"),
            Location::File { offset } => write!(f, "file byte {offset}"),
            Location::ZipEntry { name } => write!(f, "zip entry `{}`", escape(name)),
            Location::Tensor { name } => write!(f, "tensor `{}`", escape(name)),
        }
    }
}

/// An error from reading a checkpoint: what went wrong and, where known, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// What went wrong.
    pub kind: LoadErrorKind,
    /// Where, when known.
    pub at: Option<Location>,
}

impl LoadError {
    /// An error without a location.
    pub fn new(kind: LoadErrorKind) -> Self {
        LoadError { kind, at: None }
    }

    /// An error at a location.
    pub fn at(kind: LoadErrorKind, at: Location) -> Self {
        LoadError { kind, at: Some(at) }
    }

    /// The crate-level kind of this error: `Unsupported` for refused formats, opcodes, dtypes,
    /// versions and byte orders; `Io` for read failures; `InvalidModel` for everything else.
    pub fn error_kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind as E;
        match self.kind {
            LoadErrorKind::UnsupportedFormat(_)
            | LoadErrorKind::Unsupported(_)
            | LoadErrorKind::UnsupportedVersion(_)
            | LoadErrorKind::Protocol4Off { .. }
            | LoadErrorKind::ExpandedView { .. }
            | LoadErrorKind::UnsupportedByteOrder
            | LoadErrorKind::UnsupportedOpcode { .. }
            | LoadErrorKind::UnsupportedDtype(_) => E::Unsupported,
            LoadErrorKind::Io(_) => E::Io,
            _ => E::InvalidModel,
        }
    }

    /// Sets the location if none is set yet.
    pub fn or_at(mut self, at: Location) -> Self {
        if self.at.is_none() {
            self.at = Some(at);
        }
        self
    }
}

impl From<LoadErrorKind> for LoadError {
    fn from(kind: LoadErrorKind) -> Self {
        LoadError::new(kind)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{} ({at})", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for LoadError {}

/// Makes untrusted text safe to print: control characters (terminal escapes, newlines) become
/// `\u{..}` escapes and the result is cut to 200 characters with `…` appended.
pub fn escape(s: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    for (count, c) in s.chars().enumerate() {
        if count >= MAX {
            out.push('…');
            break;
        }
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' || c == '\u{feff}' {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_terminal_sequences_and_truncates() {
        assert_eq!(escape("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\u{a}");
        let long = "x".repeat(1000);
        let e = escape(&long);
        assert_eq!(e.chars().count(), 201);
    }
}
