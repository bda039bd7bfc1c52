//! A restricted pickle interpreter for PyTorch checkpoints: it reads the data, never runs code.
//!
//! PyTorch's `.ckpt`/`.pt`/`.bin` files hold a Python pickle: a small stack program that, in
//! Python, may import and call anything. This module interprets that program with a closed set of
//! opcodes (the set `torch.load(weights_only=True)` accepts) and a closed set of globals, each
//! mapped at `GLOBAL` time to a variant of [`Global`] and, when called, to a fixed Rust builder.
//! Nothing is ever looked up by name later and no user callback ever receives control, so a
//! hostile file can at worst produce an error.
//!
//! Values live in an arena ([`Document`]) and refer to each other by id: memo references, shared
//! sub-objects and cycles cost nothing to copy, and every walker over the result is iterative.
//! The state-dict walker reads a dict shared under several keys once per key, as `torch.load`
//! gives it, within [`Limits::max_state_dict_entries`] and [`Limits::max_name_bytes`]. Every
//! length, count and offset read from the file is checked against the bytes left and the
//! [`Limits`] before it is used.
//!
//! The containers around the pickle (the torch zip format and the legacy format) live in
//! [`crate::weights::ckpt`]; this module only sees the pickle bytes and records which storages the
//! pickle refers to.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod error;
mod extract;
mod scan;
mod value;
mod vm;

pub use error::{Format, LoadError, LoadErrorKind, Location, ZipProblem, escape};
pub use extract::{
    EmbeddingFile, EmbeddingKind, EmbeddingPart, HypernetworkFile, HypernetworkLayer, StateDict,
    extract_embedding, extract_hypernetwork, extract_state_dict,
};
pub use scan::{GlobalListing, ListedGlobal, list_globals};
pub use value::{
    Document, Global, GlobalRef, ObjId, ObjectKind, StorageDecl, StorageId, StorageKind,
    TensorDecl, TensorId, Value,
};
pub(crate) use vm::run as vm_run;
pub use vm::{PersistentIds, unpickle};

/// Resource limits for reading a checkpoint. Every limit is checked before the memory it guards
/// is allocated, except the heap budget ([`Limits::max_heap_per_byte`]), which is checked as
/// each object is added; exceeding one gives [`LoadErrorKind::LimitExceeded`] naming the limit.
///
/// The defaults are far above what any Stable Diffusion checkpoint, embedding or hypernetwork
/// needs (an SDXL `data.pkl` is about 1 MB and holds about 2,500 tensors) and small enough that a
/// hostile file cannot make the process use more than a small multiple of its pickle's size.
///
/// Memory bound: the interpreter counts the heap it holds (the capacities of its arena, stack,
/// memo and declaration tables, and what every string, container, dict index and tensor
/// declaration owns) and refuses the pickle with `LimitExceeded("max_heap_per_byte")` as soon
/// as the count passes [`Limits::max_heap_per_byte`] bytes per pickle byte read so far plus
/// 1 MiB. The state-dict reader charges the names and metadata it builds against
/// [`Limits::max_name_bytes`] (by default 16 × the pickle's size + 1 MiB). With the defaults,
/// opening a checkpoint therefore holds at most about 56 × its pickle's size + 2 MiB: genuine
/// checkpoints measure 10–25 ×, and pickles dense in small objects (millions of empty dicts,
/// lists, tuples or strings, memo-shared keys) are refused when they reach the budget. The
/// hostile-input tests measure the peak with a counting allocator and assert at most
/// 64 × input bytes + 4 MiB. Tensor data is never part of this: it stays in the memory map
/// until a tensor is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest pickle accepted, in bytes. Default 64 MiB.
    pub max_pickle_bytes: u64,
    /// Most values on the interpreter stack at once. Default 1 Mi.
    pub max_stack: usize,
    /// Most open `MARK`s at once. Default 4096.
    pub max_marks: usize,
    /// Deepest container nesting, checked when a container is created or grows. Default 256.
    pub max_depth: usize,
    /// Most distinct memo slots. Default 4 Mi.
    pub max_memo: usize,
    /// Longest string or byte string, in bytes. Default 16 MiB.
    pub max_string: usize,
    /// Most items put into containers, summed over all containers. Default 16 Mi.
    pub max_container_items: u64,
    /// Most distinct storages. Default 1 Mi.
    pub max_storages: usize,
    /// Most tensors. Default 1 Mi.
    pub max_tensors: usize,
    /// Most dimensions of one tensor. Default 8.
    pub max_ndim: usize,
    /// The interpreter's heap budget: it may hold at most this many bytes per pickle byte read
    /// so far, plus 1 MiB. It counts what it allocates (the capacities of its arena, stack,
    /// memo and declaration tables, what each string, container, dict index and tensor
    /// declaration owns) and refuses the pickle as soon as the count passes the budget. Genuine
    /// checkpoints need at most about 20 bytes per pickle byte. Default 40.
    pub max_heap_per_byte: u64,
    /// Most entries in a zip central directory. Default 2 Mi.
    pub max_entries: u64,
    /// Most dict entries the state-dict reader walks while it flattens nested dicts into tensor
    /// names. A dict reached under several keys (one object pickled once and referenced again,
    /// as `torch.save({"a": sd, "b": sd})` writes it) is read once per key path, as `torch.load`
    /// gives it under each, so a small hostile file can describe exponentially many paths:
    /// this bounds the walk. Default 4 Mi.
    pub max_state_dict_entries: u64,
    /// Most bytes of flattened tensor names and root metadata (key and text) the state-dict
    /// reader builds, counted as the heap they take (each twice its length plus 160). `None` (the default) means 16 × the
    /// pickle's size + 1 MiB, which keeps the names within a small multiple of the file even
    /// when dicts are shared or nested under long prefixes (genuine checkpoints need 1–3 ×).
    pub max_name_bytes: Option<u64>,
    /// Most bytes that non-contiguous tensors may need when they are copied into contiguous
    /// buffers, summed over the file. `None` (the default) means the size of the file.
    pub max_materialized_bytes: Option<u64>,
    /// Accept the protocol 3/4 opcodes (`SHORT_BINUNICODE`, `BINBYTES`, `SHORT_BINBYTES`,
    /// `MEMOIZE`, `FRAME`, `STACK_GLOBAL`). `torch.save` writes pickle protocol 2 unless asked
    /// otherwise; with `pickle_protocol=4` or `5` (zip or legacy format) every pickle it writes
    /// uses these opcodes, and with `pickle_protocol=3` a `bytes` value becomes
    /// `SHORT_BINBYTES`/`BINBYTES`. Such files are refused while this is off, with an error
    /// that names the opcode (or, for a legacy-format file, the protocol). Default off.
    pub allow_protocol4: bool,
    /// Accept the inert metadata globals that training checkpoints carry (Lightning callback
    /// classes, `torch.float16`-style dtypes, numpy scalars and dtypes, `_rebuild_tensor_v3`,
    /// `_rebuild_from_type_v2`). Default on.
    pub allow_metadata_globals: bool,
    /// Extra `(module, name)` globals to accept as inert values (usable as dict keys or ignored
    /// values, never callable, never instantiated): the hook for a callback class or marker
    /// object some trainer pickles into its checkpoints. Nothing ever runs; a refused global
    /// stays refused unless listed here. Names are compared after torch's module renames.
    /// Modules `sys`, `os`, `posix` and `nt` are refused even if listed. Default empty.
    pub extra_inert_globals: Vec<(String, String)>,
    /// Accept a DEFLATE-compressed `data.pkl` (decompressed with an output cap of
    /// `max_pickle_bytes`). `torch.save` stores every record uncompressed. Default off.
    pub allow_deflate: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pickle_bytes: 64 << 20,
            max_stack: 1 << 20,
            max_marks: 4096,
            max_depth: 256,
            max_memo: 4 << 20,
            max_string: 16 << 20,
            max_container_items: 16 << 20,
            max_storages: 1 << 20,
            max_tensors: 1 << 20,
            max_ndim: 8,
            max_heap_per_byte: 40,
            max_entries: 2 << 20,
            max_state_dict_entries: 4 << 20,
            max_name_bytes: None,
            max_materialized_bytes: None,
            allow_protocol4: false,
            allow_metadata_globals: true,
            allow_deflate: false,
            extra_inert_globals: Vec::new(),
        }
    }
}
