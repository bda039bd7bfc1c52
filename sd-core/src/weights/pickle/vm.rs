//! The interpreter: a closed opcode set over an arena of values.
//!
//! Opcode semantics follow CPython's `pickle` module for the subset `torch.load(weights_only=True)`
//! accepts (protocol 2 as `torch.save` writes it), with three differences that only crafted files
//! notice: duplicate dict keys are an error (Python keeps the last), trailing bytes after `STOP`
//! are an error when the caller requires the pickle to fill its input, and lone surrogates in
//! strings are refused (torch decodes with `surrogatepass`).

use std::collections::HashMap;

use half::f16;

use super::Limits;
use super::error::{LoadError, LoadErrorKind as K, Location};
use super::value::{
    DictObj, Document, Global, GlobalRef, Key, Obj, ObjId, ObjectKind, StorageDecl, StorageId,
    StorageKind, TensorDecl, TensorId, Value,
};
use crate::weights::store::StoredDType;

type R<T> = Result<T, K>;

/// Which persistent ids (`BINPERSID`) a pickle may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistentIds {
    /// None: any `BINPERSID` is an error (the legacy format's header pickles).
    Forbidden,
    /// The zip format's 5-tuples `('storage', type, key, location, numel)`.
    Zip,
    /// The legacy format's 6-tuples, whose last element (`view_metadata`) must be `None`.
    Legacy,
}

/// Runs a pickle that must fill `data` exactly (trailing bytes are an error) and returns what
/// it built.
///
/// `max_materialized` caps the bytes of non-contiguous tensor views (see
/// [`Limits::max_materialized_bytes`]; this function takes the resolved value).
///
/// # Errors
/// A [`LoadError`] naming the refused opcode, global, argument or limit, located at the byte
/// offset of the failing opcode.
pub fn unpickle(
    data: &[u8],
    limits: &Limits,
    pids: PersistentIds,
    max_materialized: u64,
) -> Result<Document, LoadError> {
    let (doc, end) = run(data, limits, pids, max_materialized, "data.pkl")?;
    if end != data.len() {
        return Err(LoadError::at(
            K::TrailingData,
            Location::PickleOp {
                pickle: "data.pkl",
                offset: end as u64,
            },
        ));
    }
    Ok(doc)
}

/// Runs the pickle at the start of `data` and returns what it built and the offset just after
/// its `STOP`.
pub(crate) fn run(
    data: &[u8],
    limits: &Limits,
    pids: PersistentIds,
    max_materialized: u64,
    pickle: &'static str,
) -> Result<(Document, usize), LoadError> {
    let mut vm = Vm {
        data,
        pos: 0,
        limits,
        pids,
        objs: Vec::new(),
        depths: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages: Vec::new(),
        storage_keys: HashMap::new(),
        tensors: Vec::new(),
        items: 0,
        materialized: 0,
        max_materialized,
        op_offset: 0,
        bad_views: HashMap::new(),
        globals: Vec::new(),
        heap: 0,
    };
    match vm.execute() {
        Ok(root) => Ok((
            Document {
                objs: vm.objs,
                root,
                storages: vm.storages,
                tensors: vm.tensors,
                globals: vm.globals,
                pickle_bytes: vm.pos as u64,
            },
            vm.pos,
        )),
        Err(kind) => Err(LoadError::at(
            kind,
            Location::PickleOp {
                pickle,
                offset: vm.op_offset as u64,
            },
        )),
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    limits: &'a Limits,
    pids: PersistentIds,
    objs: Vec<Obj>,
    depths: Vec<u32>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: Vec<StorageDecl>,
    storage_keys: HashMap<String, StorageId>,
    tensors: Vec<TensorDecl>,
    items: u64,
    materialized: u64,
    max_materialized: u64,
    op_offset: usize,
    /// Tensors whose view is refused (it reaches outside its storage, or it is larger than its
    /// storage), with the offset of the opcode that built them. The error is raised when such
    /// a tensor is stored under a key (so the message can name it) or, at the latest, at
    /// `STOP`: a document holding one is never returned.
    bad_views: HashMap<TensorId, (usize, BadView)>,
    /// Every `GLOBAL` read, accepted or not, in file order.
    globals: Vec<GlobalRef>,
    /// Heap bytes held by what the arena objects, declarations and strings own (what
    /// [`Vm::footprint`] does not read from a collection's capacity).
    heap: u64,
}

/// Why a tensor view is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadView {
    /// It reaches outside its storage.
    OutOfBounds,
    /// Overlapping or stride-0 (expanded) strides make it larger than its storage.
    Expanded,
}

impl BadView {
    fn error(self, name: Option<String>) -> K {
        match self {
            BadView::OutOfBounds => K::TensorOutOfBounds { name },
            BadView::Expanded => K::ExpandedView { name },
        }
    }
}

/// Most nodes in one hashable key (a tuple of tuples of …): keeps a memo-shared tuple used as a
/// key from expanding exponentially.
const MAX_KEY_NODES: usize = 1024;
/// Most string bytes in one hashable key (a dict key or set item is copied into the dict's
/// index): keeps a tuple of memo references to one long string from multiplying it.
const MAX_KEY_BYTES: usize = 1 << 20;
/// Longest `module` or `name` line of a `GLOBAL`.
const MAX_GLOBAL_LINE: usize = 256;
/// Most arguments any allowed callable takes (`_rebuild_tensor_v3` with metadata).
const MAX_ARGS: usize = 8;
/// Heap the interpreter may hold beyond [`Limits::max_heap_per_byte`] × bytes read.
pub(crate) const HEAP_SLACK: u64 = 1 << 20;

/// Bytes a `HashMap` with this capacity allocates, over-estimated: `capacity` is 7/8 of the
/// power-of-two bucket count, and each bucket holds one entry and one control byte, plus one
/// group of trailing control bytes.
fn table_bytes(capacity: usize, entry: usize) -> u64 {
    if capacity == 0 {
        return 0;
    }
    let buckets = ((capacity as u64).saturating_mul(8) / 7).saturating_add(1);
    buckets
        .saturating_mul((entry as u64).saturating_add(1))
        .saturating_add(16)
}

fn bytes_of_len(len: usize, size: usize) -> u64 {
    (len as u64).saturating_mul(size as u64)
}

/// Heap bytes an arena object owns when it is created.
fn obj_heap(obj: &Obj) -> u64 {
    match obj {
        Obj::Str(s) => s.len() as u64,
        Obj::Bytes(b) => b.len() as u64,
        Obj::Tuple(t) => bytes_of_len(t.len(), size_of::<Value>()),
        Obj::List(l) | Obj::Set(l) => bytes_of_len(l.capacity(), size_of::<Value>()),
        Obj::Dict { entries, .. } => entries.as_deref().map_or(0, dict_heap),
        Obj::Object { .. } | Obj::NumpyDtype(_) => 0,
    }
}

/// Heap bytes of a dict's entry list and index (not the keys' own strings).
fn dict_heap(d: &DictObj) -> u64 {
    (size_of::<DictObj>() as u64)
        .saturating_add(bytes_of_len(
            d.entries.capacity(),
            size_of::<(Value, Value)>(),
        ))
        .saturating_add(table_bytes(d.index.capacity(), size_of::<(Key, usize)>()))
}

/// Heap bytes a key owns (its strings, its tuples' slices).
fn key_heap(k: &Key) -> u64 {
    match k {
        Key::Str(s) => s.len() as u64,
        Key::Bytes(b) => b.len() as u64,
        Key::Tuple(t) => t
            .iter()
            .fold(bytes_of_len(t.len(), size_of::<Key>()), |a, k| {
                a.saturating_add(key_heap(k))
            }),
        Key::None | Key::Bool(_) | Key::Int(_) | Key::Float(_) | Key::Global(_) => 0,
    }
}

fn usize_of(v: u64) -> R<usize> {
    usize::try_from(v).map_err(|_| K::IntegerTooLarge)
}

impl<'a> Vm<'a> {
    // ---- input ----

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(K::Truncated)?;
        let s = self.data.get(self.pos..end).ok_or(K::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn u8(&mut self) -> R<u8> {
        let b = self.take(1)?;
        b.first().copied().ok_or(K::Truncated)
    }

    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let b = self.take(N)?;
        <[u8; N]>::try_from(b).map_err(|_| K::Truncated)
    }

    fn string_bytes(&mut self, len: usize) -> R<&'a [u8]> {
        // Check the bytes exist before anything is allocated for them.
        if len > self.remaining() {
            return Err(K::Truncated);
        }
        if len > self.limits.max_string {
            return Err(K::LimitExceeded {
                limit: "max_string",
                value: len as u64,
            });
        }
        self.take(len)
    }

    // ---- arena and stack ----

    fn alloc(&mut self, obj: Obj, depth: u32) -> R<ObjId> {
        let id = u32::try_from(self.objs.len()).map_err(|_| K::LimitExceeded {
            limit: "objects",
            value: u64::from(u32::MAX),
        })?;
        self.charge(obj_heap(&obj));
        self.objs.push(obj);
        self.depths.push(depth);
        self.check_heap()?;
        Ok(ObjId(id))
    }

    // ---- the heap budget ----

    fn charge(&mut self, bytes: u64) {
        self.heap = self.heap.saturating_add(bytes);
    }

    /// Heap bytes the interpreter holds: the capacities of its own collections plus what the
    /// objects in them own ([`Vm::heap`]). Over-estimates hash tables, never under-estimates.
    fn footprint(&self) -> u64 {
        [
            self.heap,
            bytes_of_len(self.objs.capacity(), size_of::<Obj>()),
            bytes_of_len(self.depths.capacity(), size_of::<u32>()),
            bytes_of_len(self.stack.capacity(), size_of::<Value>()),
            bytes_of_len(self.marks.capacity(), size_of::<usize>()),
            table_bytes(self.memo.capacity(), size_of::<(u32, Value)>()),
            bytes_of_len(self.storages.capacity(), size_of::<StorageDecl>()),
            table_bytes(
                self.storage_keys.capacity(),
                size_of::<(String, StorageId)>(),
            ),
            bytes_of_len(self.tensors.capacity(), size_of::<TensorDecl>()),
            table_bytes(
                self.bad_views.capacity(),
                size_of::<(TensorId, (usize, BadView))>(),
            ),
            bytes_of_len(self.globals.capacity(), size_of::<GlobalRef>()),
        ]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Refuses the pickle once the interpreter holds more than
    /// `max_heap_per_byte × bytes read so far + HEAP_SLACK`.
    fn check_heap(&self) -> R<()> {
        let budget = (self.pos as u64)
            .saturating_mul(self.limits.max_heap_per_byte)
            .saturating_add(HEAP_SLACK);
        let used = self.footprint();
        if used > budget {
            return Err(K::LimitExceeded {
                limit: "max_heap_per_byte",
                value: used,
            });
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> R<()> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(K::LimitExceeded {
                limit: "max_stack",
                value: self.stack.len() as u64,
            });
        }
        self.stack.push(v);
        Ok(())
    }

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> R<Value> {
        if self.stack.len() <= self.fence() {
            return Err(K::StackUnderflow);
        }
        self.stack.pop().ok_or(K::StackUnderflow)
    }

    fn pop_n(&mut self, n: usize) -> R<Vec<Value>> {
        let start = self.stack.len().checked_sub(n).ok_or(K::StackUnderflow)?;
        if start < self.fence() {
            return Err(K::StackUnderflow);
        }
        Ok(self.stack.split_off(start))
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let fence = self.pop_mark_at()?;
        Ok(self.stack.split_off(fence))
    }

    /// Pops the innermost mark and returns its stack position; the values above it stay on
    /// the stack (for the opcodes that move them into a container without a copy).
    fn pop_mark_at(&mut self) -> R<usize> {
        let fence = self.marks.pop().ok_or(K::Malformed("no MARK to pop to"))?;
        if fence > self.stack.len() {
            return Err(K::StackUnderflow);
        }
        Ok(fence)
    }

    /// The value just below stack position `at`, which must lie above the innermost mark.
    fn value_below(&self, at: usize) -> R<Value> {
        let i = at.checked_sub(1).ok_or(K::StackUnderflow)?;
        if i < self.fence() {
            return Err(K::StackUnderflow);
        }
        self.stack.get(i).copied().ok_or(K::StackUnderflow)
    }

    fn top(&self) -> R<Value> {
        if self.stack.len() <= self.fence() {
            return Err(K::StackUnderflow);
        }
        self.stack.last().copied().ok_or(K::StackUnderflow)
    }

    fn depth_of(&self, v: Value) -> u32 {
        match v {
            Value::Tuple(id)
            | Value::List(id)
            | Value::Dict(id)
            | Value::Set(id)
            | Value::Object(id) => self.depths.get(id.0 as usize).copied().unwrap_or(0),
            _ => 0,
        }
    }

    fn check_depth(&self, d: u32) -> R<()> {
        if d as usize > self.limits.max_depth {
            return Err(K::LimitExceeded {
                limit: "max_depth",
                value: u64::from(d),
            });
        }
        Ok(())
    }

    fn count_items(&mut self, n: usize) -> R<()> {
        self.items = self.items.saturating_add(n as u64);
        if self.items > self.limits.max_container_items {
            return Err(K::LimitExceeded {
                limit: "max_container_items",
                value: self.items,
            });
        }
        Ok(())
    }

    /// Raises a container's recorded depth to cover a new child.
    fn grow_depth(&mut self, id: ObjId, child: Value) -> R<()> {
        let d = self.depth_of(child).saturating_add(1);
        self.raise_depth(id, d)
    }

    /// Raises a container's recorded depth to `d`.
    fn raise_depth(&mut self, id: ObjId, d: u32) -> R<()> {
        self.check_depth(d)?;
        if let Some(slot) = self.depths.get_mut(id.0 as usize)
            && *slot < d
        {
            *slot = d;
        }
        Ok(())
    }

    fn new_tuple(&mut self, items: Vec<Value>) -> R<Value> {
        self.count_items(items.len())?;
        let d = items
            .iter()
            .map(|&v| self.depth_of(v))
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        self.check_depth(d)?;
        Ok(Value::Tuple(
            self.alloc(Obj::Tuple(items.into_boxed_slice()), d)?,
        ))
    }

    fn new_dict(&mut self, ordered: bool) -> R<Value> {
        let d = Obj::Dict {
            ordered,
            entries: None,
        };
        Ok(Value::Dict(self.alloc(d, 1)?))
    }

    fn new_str(&mut self, s: &str) -> R<Value> {
        Ok(Value::Str(self.alloc(Obj::Str(s.into()), 0)?))
    }

    fn str_of(&self, v: Value) -> Option<&str> {
        match v {
            Value::Str(id) => match self.objs.get(id.0 as usize)? {
                Obj::Str(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    fn bytes_of(&self, v: Value) -> Option<&[u8]> {
        match v {
            Value::Bytes(id) => match self.objs.get(id.0 as usize)? {
                Obj::Bytes(b) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }

    fn tuple_of(&self, v: Value) -> Option<&[Value]> {
        match v {
            Value::Tuple(id) => match self.objs.get(id.0 as usize)? {
                Obj::Tuple(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    fn dict_len(&self, v: Value) -> Option<usize> {
        match v {
            Value::Dict(id) => match self.objs.get(id.0 as usize)? {
                Obj::Dict { entries, .. } => Some(entries.as_ref().map_or(0, |d| d.entries.len())),
                _ => None,
            },
            _ => None,
        }
    }

    /// The hashable projection of a value, bounded in size (nodes and string bytes).
    fn key_of(&self, v: Value) -> R<Key> {
        let mut budget = (MAX_KEY_NODES, MAX_KEY_BYTES);
        self.key_rec(v, &mut budget, 0)
    }

    fn key_rec(&self, v: Value, budget: &mut (usize, usize), depth: usize) -> R<Key> {
        budget.0 = budget.0.checked_sub(1).ok_or(K::LimitExceeded {
            limit: "key size",
            value: MAX_KEY_NODES as u64,
        })?;
        let mut take_bytes = |n: usize| {
            budget.1 = budget.1.checked_sub(n).ok_or(K::LimitExceeded {
                limit: "key size (string bytes)",
                value: n as u64,
            })?;
            Ok::<(), K>(())
        };
        if depth > self.limits.max_depth {
            return Err(K::LimitExceeded {
                limit: "max_depth",
                value: depth as u64,
            });
        }
        Ok(match v {
            Value::None => Key::None,
            Value::Bool(b) => Key::Bool(b),
            Value::Int(i) => Key::Int(i),
            Value::Float(f) => Key::Float(f.to_bits()),
            Value::Str(_) => {
                let s = self.str_of(v).ok_or(K::UnhashableKey)?;
                take_bytes(s.len())?;
                Key::Str(s.into())
            }
            Value::Bytes(_) => {
                let b = self.bytes_of(v).ok_or(K::UnhashableKey)?;
                take_bytes(b.len())?;
                Key::Bytes(b.into())
            }
            Value::Global(g) => Key::Global(g),
            Value::Tuple(_) => {
                let items = self.tuple_of(v).ok_or(K::UnhashableKey)?;
                let mut keys = Vec::with_capacity(items.len().min(budget.0));
                for &it in items {
                    keys.push(self.key_rec(it, budget, depth.saturating_add(1))?);
                }
                Key::Tuple(keys.into_boxed_slice())
            }
            _ => return Err(K::UnhashableKey),
        })
    }

    fn describe_key(&self, k: Value) -> String {
        match k {
            Value::Int(i) => i.to_string(),
            _ => self
                .str_of(k)
                .map_or_else(|| k.type_name().to_string(), str::to_string),
        }
    }

    fn dict_insert(&mut self, target: Value, k: Value, v: Value) -> R<()> {
        let Value::Dict(id) = target else {
            return Err(K::TypeMismatch {
                op: "SETITEM",
                expected: "dict",
                found: target.type_name(),
            });
        };
        if let Value::Tensor(t) = v
            && let Some(&(at, why)) = self.bad_views.get(&t)
        {
            let name = matches!(k, Value::Str(_) | Value::Int(_)).then(|| self.describe_key(k));
            // Report at the opcode that built the view, naming the key it was stored under.
            self.op_offset = at;
            return Err(why.error(name));
        }
        let key = self.key_of(k)?;
        self.count_items(1)?;
        self.grow_depth(id, k)?;
        self.grow_depth(id, v)?;
        let key_bytes = key_heap(&key);
        let Some(Obj::Dict { entries, .. }) = self.objs.get_mut(id.0 as usize) else {
            return Err(K::Malformed("dict id"));
        };
        let (d, before) = match entries {
            Some(d) => {
                let before = dict_heap(d);
                (d, before)
            }
            None => (entries.insert(Box::default()), 0),
        };
        if d.index.contains_key(&key) {
            return Err(K::DuplicateKey(self.describe_key(k)));
        }
        d.index.insert(key, d.entries.len());
        d.entries.push((k, v));
        let grown = dict_heap(d).saturating_sub(before);
        self.charge(grown.saturating_add(key_bytes));
        self.check_heap()
    }

    /// Moves the stack values from position `from` up into the list `target`.
    fn list_append(&mut self, target: Value, from: usize, op: &'static str) -> R<()> {
        let Value::List(id) = target else {
            return Err(K::TypeMismatch {
                op,
                expected: "list",
                found: target.type_name(),
            });
        };
        let items = self.stack.get(from..).ok_or(K::StackUnderflow)?;
        let n = items.len();
        let depth = items
            .iter()
            .map(|&it| self.depth_of(it))
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        self.count_items(n)?;
        self.raise_depth(id, depth)?;
        let Some(Obj::List(l)) = self.objs.get_mut(id.0 as usize) else {
            return Err(K::Malformed("list id"));
        };
        let before = l.capacity();
        l.extend_from_slice(self.stack.get(from..).unwrap_or(&[]));
        let grown = l.capacity().saturating_sub(before);
        self.stack.truncate(from);
        self.charge(bytes_of_len(grown, size_of::<Value>()));
        self.check_heap()
    }

    fn memo_put(&mut self, id: u32) -> R<()> {
        let v = self.top()?;
        if !self.memo.contains_key(&id) && self.memo.len() >= self.limits.max_memo {
            return Err(K::LimitExceeded {
                limit: "max_memo",
                value: self.memo.len() as u64,
            });
        }
        self.memo.insert(id, v);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> R<()> {
        let v = *self.memo.get(&id).ok_or(K::MissingMemo(id))?;
        self.push(v)
    }

    // ---- the loop ----

    fn execute(&mut self) -> R<Value> {
        let mut first = true;
        loop {
            self.op_offset = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if !first {
                        return Err(K::Malformed("PROTO after the first opcode"));
                    }
                    if v > 5 {
                        return Err(K::UnsupportedVersion(format!("pickle protocol {v}")));
                    }
                }
                b'.' => {
                    if !self.marks.is_empty() {
                        return Err(K::Malformed("STOP with an open MARK"));
                    }
                    if self.stack.len() != 1 {
                        return Err(K::Malformed("STOP needs exactly one value on the stack"));
                    }
                    if let Some(&(at, why)) = self.bad_views.values().min_by_key(|b| b.0) {
                        self.op_offset = at;
                        return Err(why.error(None));
                    }
                    return self.stack.pop().ok_or(K::StackUnderflow);
                }
                b'(' => {
                    if self.marks.len() >= self.limits.max_marks {
                        return Err(K::LimitExceeded {
                            limit: "max_marks",
                            value: self.marks.len() as u64,
                        });
                    }
                    self.marks.push(self.stack.len());
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let t = self.new_tuple(items)?;
                    self.push(t)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op.saturating_sub(0x84));
                    let items = self.pop_n(n)?;
                    let t = self.new_tuple(items)?;
                    self.push(t)?;
                }
                b')' => {
                    let t = self.new_tuple(Vec::new())?;
                    self.push(t)?;
                }
                b']' => {
                    let l = Value::List(self.alloc(Obj::List(Vec::new()), 1)?);
                    self.push(l)?;
                }
                b'}' => {
                    let d = self.new_dict(false)?;
                    self.push(d)?;
                }
                0x8f => {
                    let s = Value::Set(self.alloc(Obj::Set(Vec::new()), 1)?);
                    self.push(s)?;
                }
                b'a' => {
                    self.top()?;
                    let from = self.stack.len().saturating_sub(1);
                    let target = self.value_below(from)?;
                    self.list_append(target, from, "APPEND")?;
                }
                b'e' => {
                    let from = self.pop_mark_at()?;
                    let target = self.value_below(from)?;
                    self.list_append(target, from, "APPENDS")?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?;
                    self.dict_insert(target, k, v)?;
                }
                b'u' => {
                    let from = self.pop_mark_at()?;
                    let target = self.value_below(from)?;
                    if self.stack.len().saturating_sub(from) % 2 != 0 {
                        return Err(K::Malformed("SETITEMS with an odd number of items"));
                    }
                    if !matches!(target, Value::Dict(_)) {
                        return Err(K::TypeMismatch {
                            op: "SETITEMS",
                            expected: "dict",
                            found: target.type_name(),
                        });
                    }
                    // Pairs are read in place: a batch of SETITEMS costs no copy.
                    let mut i = from;
                    while let (Some(&k), Some(&v)) =
                        (self.stack.get(i), self.stack.get(i.saturating_add(1)))
                    {
                        self.dict_insert(target, k, v)?;
                        i = i.saturating_add(2);
                    }
                    self.stack.truncate(from);
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    if n > 8 {
                        return Err(K::IntegerTooLarge);
                    }
                    let b = self.take(n)?;
                    let mut buf = [0u8; 8];
                    if let Some(&last) = b.last()
                        && last & 0x80 != 0
                    {
                        buf = [0xff; 8];
                    }
                    for (dst, &src) in buf.iter_mut().zip(b) {
                        *dst = src;
                    }
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let len = usize_of(u64::from(u32::from_le_bytes(self.array()?)))?;
                    self.push_str(len)?;
                }
                b'U' => {
                    let len = usize::from(self.u8()?);
                    self.push_str(len)?;
                }
                b'q' => {
                    let id = self.u8()?;
                    self.memo_put(u32::from(id))?;
                }
                b'r' => {
                    let id = u32::from_le_bytes(self.array()?);
                    self.memo_put(id)?;
                }
                b'h' => {
                    let id = self.u8()?;
                    self.memo_get(u32::from(id))?;
                }
                b'j' => {
                    let id = u32::from_le_bytes(self.array()?);
                    self.memo_get(id)?;
                }
                b'c' => {
                    let module = self.global_line()?;
                    let name = self.global_line()?;
                    self.charge((module.len() as u64).saturating_add(name.len() as u64));
                    self.globals.push(GlobalRef {
                        module: module.to_string(),
                        name: name.to_string(),
                        offset: self.op_offset as u64,
                    });
                    let g = resolve_global(module, name, self.limits)?;
                    self.push(Value::Global(g))?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Value::Global(g) = callable else {
                        return Err(K::TypeMismatch {
                            op: "REDUCE",
                            expected: "an allowed callable",
                            found: callable.type_name(),
                        });
                    };
                    let Some(args) = self.tuple_of(args) else {
                        return Err(K::TypeMismatch {
                            op: "REDUCE",
                            expected: "an argument tuple",
                            found: args.type_name(),
                        });
                    };
                    if args.len() > MAX_ARGS {
                        return Err(K::BadArgs {
                            callable: g.name(),
                            why: "too many arguments",
                        });
                    }
                    let args = args.to_vec();
                    let v = self.call(g, &args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.build(target, state)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_obj(cls, args)?;
                    self.push(v)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                // Tier B (protocol 3/4), off unless enabled.
                0x8c | b'B' | b'C' | 0x94 | 0x95 | 0x93 if self.limits.allow_protocol4 => {
                    self.protocol4(op)?;
                }
                _ => return Err(K::UnsupportedOpcode { op }),
            }
            self.check_heap()?;
            first = false;
        }
    }

    fn protocol4(&mut self, op: u8) -> R<()> {
        match op {
            0x8c => {
                let len = usize::from(self.u8()?);
                self.push_str(len)
            }
            b'B' | b'C' => {
                let len = if op == b'B' {
                    usize_of(u64::from(u32::from_le_bytes(self.array()?)))?
                } else {
                    usize::from(self.u8()?)
                };
                let b = self.string_bytes(len)?;
                let v = Value::Bytes(self.alloc(Obj::Bytes(b.into()), 0)?);
                self.push(v)
            }
            0x94 => {
                let id = u32::try_from(self.memo.len()).map_err(|_| K::LimitExceeded {
                    limit: "max_memo",
                    value: self.memo.len() as u64,
                })?;
                self.memo_put(id)
            }
            0x95 => {
                let len = u64::from_le_bytes(self.array()?);
                if len > self.remaining() as u64 {
                    return Err(K::Truncated);
                }
                Ok(())
            }
            _ => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(m), Some(n)) = (self.str_of(module), self.str_of(name)) else {
                    return Err(K::TypeMismatch {
                        op: "STACK_GLOBAL",
                        expected: "two strings",
                        found: module.type_name(),
                    });
                };
                let (m, n) = (m.to_string(), n.to_string());
                self.charge((m.len() as u64).saturating_add(n.len() as u64));
                self.globals.push(GlobalRef {
                    module: m.clone(),
                    name: n.clone(),
                    offset: self.op_offset as u64,
                });
                let g = resolve_global(&m, &n, self.limits)?;
                self.push(Value::Global(g))
            }
        }
    }

    fn push_str(&mut self, len: usize) -> R<()> {
        let b = self.string_bytes(len)?;
        let s = std::str::from_utf8(b).map_err(|_| K::BadUtf8)?;
        let v = self.new_str(s)?;
        self.push(v)
    }

    fn global_line(&mut self) -> R<&'a str> {
        let window = self.remaining().min(MAX_GLOBAL_LINE.saturating_add(1));
        let rest = self.data.get(self.pos..).ok_or(K::Truncated)?;
        let head = rest.get(..window).ok_or(K::Truncated)?;
        let Some(nl) = head.iter().position(|&b| b == b'\n') else {
            return Err(if window > MAX_GLOBAL_LINE {
                K::Malformed("GLOBAL name longer than 256 bytes")
            } else {
                K::Truncated
            });
        };
        let line = self.take(nl)?;
        self.take(1)?;
        if line.is_empty()
            || !line
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(K::Malformed(
                "GLOBAL name is empty or has characters outside [A-Za-z0-9_.]",
            ));
        }
        std::str::from_utf8(line).map_err(|_| K::BadUtf8)
    }

    // ---- callables ----

    fn call(&mut self, g: Global, args: &[Value]) -> R<Value> {
        let name = g.name();
        let bad = |why| K::BadArgs {
            callable: name,
            why,
        };
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(bad("only OrderedDict() with no arguments is accepted"));
                }
                self.new_dict(true)
            }
            Global::Set => match args {
                [] => Ok(Value::Set(self.alloc(Obj::Set(Vec::new()), 1)?)),
                [l @ Value::List(id)] => {
                    let items = match self.objs.get(id.0 as usize) {
                        Some(Obj::List(items)) => items.clone(),
                        _ => return Err(bad("argument is not a list")),
                    };
                    for &it in &items {
                        self.key_of(it)?;
                    }
                    self.count_items(items.len())?;
                    let d = self.depth_of(*l);
                    Ok(Value::Set(self.alloc(Obj::Set(items), d)?))
                }
                _ => Err(bad("expects () or one list")),
            },
            Global::CodecsEncode => {
                let [s, enc] = args else {
                    return Err(bad("expects (str, 'latin1')"));
                };
                let (Some(s), Some(enc)) = (self.str_of(*s), self.str_of(*enc)) else {
                    return Err(bad("expects (str, 'latin1')"));
                };
                if enc != "latin1" && enc != "latin-1" {
                    return Err(bad("only the latin1 encoding is accepted"));
                }
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    out.push(
                        u8::try_from(u32::from(c)).map_err(|_| bad("character above U+00FF"))?,
                    );
                }
                Ok(Value::Bytes(self.alloc(Obj::Bytes(out.into()), 0)?))
            }
            Global::RebuildTensorV2 => {
                let (core, meta) = match args {
                    [s, o, sz, st, rg, hooks] => ([*s, *o, *sz, *st, *rg, *hooks], None),
                    [s, o, sz, st, rg, hooks, m] => ([*s, *o, *sz, *st, *rg, *hooks], Some(*m)),
                    _ => return Err(bad("expects 6 or 7 arguments")),
                };
                self.check_tensor_extras(name, core[4], core[5], meta)?;
                self.rebuild(name, core[0], core[1], core[2], core[3], None)
            }
            Global::RebuildTensor => {
                let [s, o, sz, st] = args else {
                    return Err(bad("expects 4 arguments"));
                };
                self.rebuild(name, *s, *o, *sz, *st, None)
            }
            Global::RebuildTensorV3 => {
                let (core, meta) = match args {
                    [s, o, sz, st, rg, hooks, dt] => ([*s, *o, *sz, *st, *rg, *hooks, *dt], None),
                    [s, o, sz, st, rg, hooks, dt, m] => {
                        ([*s, *o, *sz, *st, *rg, *hooks, *dt], Some(*m))
                    }
                    _ => return Err(bad("expects 7 or 8 arguments")),
                };
                self.check_tensor_extras(name, core[4], core[5], meta)?;
                let Value::Global(Global::DType(dt)) = core[6] else {
                    return Err(bad("argument 7 is not a torch dtype"));
                };
                self.rebuild(name, core[0], core[1], core[2], core[3], Some(dt))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let (t, rg, hooks, state) = match (g, args) {
                    (Global::RebuildParameter, [t, rg, hooks]) => (*t, *rg, *hooks, Value::None),
                    (Global::RebuildParameterWithState, [t, rg, hooks, st]) => {
                        (*t, *rg, *hooks, *st)
                    }
                    _ => return Err(bad("wrong number of arguments")),
                };
                self.check_tensor_extras(name, rg, hooks, None)?;
                if !matches!(state, Value::None | Value::Dict(_)) {
                    return Err(bad("state is not a dict"));
                }
                let Value::Tensor(id) = t else {
                    return Err(bad("argument 1 is not a tensor"));
                };
                if let Some(td) = self.tensors.get_mut(id.index()) {
                    td.is_param = true;
                }
                Ok(t)
            }
            Global::RebuildFromTypeV2 => {
                let [func, ty, inner, state] = args else {
                    return Err(bad("expects (func, type, args, state)"));
                };
                let Value::Global(
                    f @ (Global::RebuildTensorV2
                    | Global::RebuildParameter
                    | Global::RebuildParameterWithState),
                ) = *func
                else {
                    return Err(bad("func is not a tensor rebuild function"));
                };
                if !matches!(
                    ty,
                    Value::Global(Global::TensorClass | Global::ParameterClass)
                ) {
                    return Err(bad("type is not torch.Tensor or torch.nn.Parameter"));
                }
                if !matches!(state, Value::None | Value::Dict(_)) {
                    return Err(bad("state is not a dict"));
                }
                let Some(inner) = self.tuple_of(*inner) else {
                    return Err(bad("args is not a tuple"));
                };
                if inner.len() > MAX_ARGS {
                    return Err(bad("too many arguments"));
                }
                let inner = inner.to_vec();
                self.call(f, &inner)
            }
            Global::NumpyDtype => {
                let [code, Value::Bool(false), Value::Bool(true)] = args else {
                    return Err(bad("expects (code, False, True)"));
                };
                let code = self.str_of(*code).ok_or(bad("code is not a string"))?;
                let dt = match code {
                    "b1" => StoredDType::Bool,
                    "i1" => StoredDType::I8,
                    "u1" => StoredDType::U8,
                    "i2" => StoredDType::I16,
                    "i4" => StoredDType::I32,
                    "i8" => StoredDType::I64,
                    "f2" => StoredDType::F16,
                    "f4" => StoredDType::F32,
                    "f8" => StoredDType::F64,
                    other => return Err(K::UnsupportedDtype(format!("numpy {other}"))),
                };
                Ok(Value::NumpyDtype(self.alloc(Obj::NumpyDtype(dt), 0)?))
            }
            Global::NumpyScalar => {
                let [Value::NumpyDtype(id), b] = args else {
                    return Err(bad("expects (dtype, bytes)"));
                };
                let Some(Obj::NumpyDtype(dt)) = self.objs.get(id.0 as usize) else {
                    return Err(bad("expects (dtype, bytes)"));
                };
                let dt = *dt;
                let b = self.bytes_of(*b).ok_or(bad("argument 2 is not bytes"))?;
                if b.len() != dt.size_in_bytes() {
                    return Err(bad("byte length differs from the dtype's size"));
                }
                decode_scalar(dt, b).ok_or(bad("undecodable scalar"))
            }
            Global::Storage(_)
            | Global::ParameterDict
            | Global::TensorClass
            | Global::ParameterClass
            | Global::DType(_)
            | Global::LightningCallback
            | Global::Inert(_) => Err(bad("not callable")),
        }
    }

    fn check_tensor_extras(
        &self,
        name: &'static str,
        requires_grad: Value,
        hooks: Value,
        meta: Option<Value>,
    ) -> R<()> {
        if !matches!(requires_grad, Value::Bool(_)) {
            return Err(K::BadArgs {
                callable: name,
                why: "requires_grad is not a bool",
            });
        }
        match self.dict_len(hooks) {
            Some(0) => {}
            Some(_) => {
                return Err(K::BadArgs {
                    callable: name,
                    why: "backward hooks are not empty",
                });
            }
            None if hooks == Value::None => {}
            None => {
                return Err(K::BadArgs {
                    callable: name,
                    why: "backward hooks are not a dict",
                });
            }
        }
        match meta {
            None | Some(Value::None) => Ok(()),
            Some(m) => match self.dict_len(m) {
                Some(0) => Ok(()),
                Some(_) => Err(K::Unsupported("tensor metadata (conjugate/negative bits)")),
                None => Err(K::BadArgs {
                    callable: name,
                    why: "metadata is not a dict",
                }),
            },
        }
    }

    fn dims_of(&self, name: &'static str, v: Value, what: &'static str) -> R<Vec<usize>> {
        let items = self.tuple_of(v).ok_or(K::BadArgs {
            callable: name,
            why: what,
        })?;
        if items.len() > self.limits.max_ndim {
            return Err(K::LimitExceeded {
                limit: "max_ndim",
                value: items.len() as u64,
            });
        }
        items
            .iter()
            .map(|&d| match d {
                Value::Int(i) => usize::try_from(i).map_err(|_| K::BadArgs {
                    callable: name,
                    why: "negative size or stride",
                }),
                _ => Err(K::BadArgs {
                    callable: name,
                    why: what,
                }),
            })
            .collect()
    }

    fn rebuild(
        &mut self,
        name: &'static str,
        storage: Value,
        offset: Value,
        size: Value,
        stride: Value,
        dtype: Option<StoredDType>,
    ) -> R<Value> {
        let bad = |why| K::BadArgs {
            callable: name,
            why,
        };
        let Value::Storage(sid) = storage else {
            return Err(bad("argument 1 is not a storage"));
        };
        let decl = self
            .storages
            .get(sid.index())
            .ok_or(bad("unknown storage"))?;
        let (dtype, storage_numel) = match (decl.kind, dtype) {
            (StorageKind::Typed(d), None) => (d, decl.numel),
            (StorageKind::Untyped, Some(d)) => {
                let isz = d.size_in_bytes() as u64;
                if decl.nbytes.checked_rem(isz) != Some(0) {
                    return Err(bad(
                        "untyped storage size is not a multiple of the dtype size",
                    ));
                }
                (d, decl.nbytes.checked_div(isz).unwrap_or(0))
            }
            (StorageKind::Typed(_), Some(_)) => {
                return Err(bad("_rebuild_tensor_v3 needs an untyped storage"));
            }
            (StorageKind::Untyped, None) => {
                return Err(bad("an untyped storage needs _rebuild_tensor_v3"));
            }
        };
        let Value::Int(offset) = offset else {
            return Err(bad("storage offset is not an int"));
        };
        let offset = u64::try_from(offset).map_err(|_| bad("negative storage offset"))?;
        let shape = self.dims_of(name, size, "size is not a tuple of ints")?;
        let strides = self.dims_of(name, stride, "stride is not a tuple of ints")?;
        if shape.len() != strides.len() {
            return Err(bad("size and stride differ in length"));
        }
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or(K::IntegerTooLarge)?;
        let in_bounds = if numel == 0 {
            offset <= storage_numel
        } else {
            let mut last = Some(offset);
            for (&d, &s) in shape.iter().zip(&strides) {
                last = (d as u64)
                    .checked_sub(1)
                    .and_then(|x| x.checked_mul(s as u64))
                    .and_then(|span| last?.checked_add(span));
            }
            last.is_some_and(|l| l < storage_numel)
        };
        let mut td = TensorDecl {
            storage: sid,
            dtype,
            offset: 0,
            shape,
            strides,
            is_param: false,
        };
        // A view outside its storage, or (non-contiguous) larger than it: stride-0 "expanded"
        // tensors would turn a 4-byte storage into terabytes when copied. Kept as a marked
        // tensor so that the error can name the key it is stored under; it can never be read
        // (see `bad_views`).
        let bad = if !in_bounds {
            Some(BadView::OutOfBounds)
        } else if !td.is_contiguous() && numel > storage_numel {
            Some(BadView::Expanded)
        } else {
            None
        };
        if let Some(why) = bad {
            let id = self.push_tensor(td)?;
            self.bad_views.insert(id, (self.op_offset, why));
            return Ok(Value::Tensor(id));
        }
        td.offset = usize_of(offset)?;
        if !td.is_contiguous() {
            let bytes = numel.saturating_mul(dtype.size_in_bytes() as u64);
            self.materialized = self.materialized.saturating_add(bytes);
            if self.materialized > self.max_materialized {
                return Err(K::LimitExceeded {
                    limit: "max_materialized_bytes",
                    value: self.materialized,
                });
            }
        }
        self.push_tensor(td).map(Value::Tensor)
    }

    fn push_tensor(&mut self, td: TensorDecl) -> R<TensorId> {
        if self.tensors.len() >= self.limits.max_tensors {
            return Err(K::LimitExceeded {
                limit: "max_tensors",
                value: self.tensors.len() as u64,
            });
        }
        let id = TensorId(u32::try_from(self.tensors.len()).map_err(|_| K::IntegerTooLarge)?);
        self.charge(bytes_of_len(
            td.shape.capacity().saturating_add(td.strides.capacity()),
            size_of::<usize>(),
        ));
        self.tensors.push(td);
        Ok(id)
    }

    fn build(&mut self, target: Value, state: Value) -> R<()> {
        match target {
            Value::Dict(_) => {
                // OrderedDict `_metadata` and similar attributes: inert, dropped.
                if matches!(state, Value::None | Value::Dict(_)) {
                    Ok(())
                } else {
                    Err(K::BadArgs {
                        callable: "BUILD of a dict",
                        why: "state is not a dict",
                    })
                }
            }
            Value::Object(id) => {
                if !matches!(state, Value::Dict(_)) {
                    return Err(K::BadArgs {
                        callable: "BUILD of ParameterDict",
                        why: "state is not a dict",
                    });
                }
                self.grow_depth(id, state)?;
                match self.objs.get_mut(id.0 as usize) {
                    Some(Obj::Object { state: slot, .. }) if slot.is_none() => {
                        *slot = Some(state);
                        Ok(())
                    }
                    _ => Err(K::ForbiddenBuild {
                        target: "an object built twice",
                    }),
                }
            }
            Value::NumpyDtype(_) => {
                let items = self.tuple_of(state).ok_or(K::BadArgs {
                    callable: "BUILD of numpy.dtype",
                    why: "state is not a tuple",
                })?;
                let (Some(&Value::Int(3 | 4)), Some(&order)) = (items.first(), items.get(1)) else {
                    return Err(K::BadArgs {
                        callable: "BUILD of numpy.dtype",
                        why: "unknown state layout",
                    });
                };
                match self.str_of(order) {
                    Some("<" | "=" | "|") => Ok(()),
                    Some(">") => Err(K::UnsupportedByteOrder),
                    _ => Err(K::BadArgs {
                        callable: "BUILD of numpy.dtype",
                        why: "bad byte order",
                    }),
                }
            }
            other => Err(K::ForbiddenBuild {
                target: other.type_name(),
            }),
        }
    }

    fn new_obj(&mut self, cls: Value, args: Value) -> R<Value> {
        let Value::Global(g) = cls else {
            return Err(K::TypeMismatch {
                op: "NEWOBJ",
                expected: "a class",
                found: cls.type_name(),
            });
        };
        if g != Global::ParameterDict {
            return Err(K::ForbiddenNewObj { class: g.name() });
        }
        if self.tuple_of(args).is_none_or(|a| !a.is_empty()) {
            return Err(K::BadArgs {
                callable: g.name(),
                why: "NEWOBJ arguments must be ()",
            });
        }
        Ok(Value::Object(self.alloc(
            Obj::Object {
                kind: ObjectKind::ParameterDict,
                state: None,
            },
            1,
        )?))
    }

    fn persistent_load(&mut self, pid: Value) -> R<Value> {
        let items = self
            .tuple_of(pid)
            .ok_or(K::BadPersistentId("not a tuple"))?;
        let tag = items
            .first()
            .copied()
            .ok_or(K::BadPersistentId("empty tuple"))?;
        let tag_text = self
            .str_of(tag)
            .map(str::as_bytes)
            .or_else(|| self.bytes_of(tag));
        match tag_text {
            Some(b"storage") => {}
            Some(b"module") => {
                return Err(K::BadPersistentId(
                    "a pickled nn.Module (source code), not a storage",
                ));
            }
            _ => return Err(K::BadPersistentId("not a ('storage', …) reference")),
        }
        let (ty, key, location, numel) = match (self.pids, items) {
            (PersistentIds::Forbidden, _) => {
                return Err(K::BadPersistentId(
                    "storage reference outside the data pickle",
                ));
            }
            (PersistentIds::Zip, [_, ty, key, loc, numel]) => (*ty, *key, *loc, *numel),
            (PersistentIds::Legacy, [_, ty, key, loc, numel, view]) => {
                if *view != Value::None {
                    return Err(K::Unsupported("legacy storage view"));
                }
                (*ty, *key, *loc, *numel)
            }
            (PersistentIds::Zip, _) => {
                return Err(K::BadPersistentId("expected a 5-tuple"));
            }
            (PersistentIds::Legacy, _) => {
                return Err(K::BadPersistentId("expected a 6-tuple"));
            }
        };
        let Value::Global(Global::Storage(kind)) = ty else {
            return Err(K::BadPersistentId("element 1 is not a storage class"));
        };
        let key = self
            .str_of(key)
            .map(str::to_string)
            .or_else(|| {
                self.bytes_of(key)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .ok_or(K::BadPersistentId("storage key is not a string"))?;
        if key.is_empty() || key.len() > 20 || !key.bytes().all(|b| b.is_ascii_digit()) {
            return Err(K::BadPersistentId("storage key is not 1-20 ASCII digits"));
        }
        let location = self
            .str_of(location)
            .map(str::to_string)
            .or_else(|| {
                self.bytes_of(location)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .ok_or(K::BadPersistentId("location is not a string"))?;
        if location.len() > 64 || !location.is_ascii() {
            return Err(K::BadPersistentId("location is not short ASCII"));
        }
        let Value::Int(numel) = numel else {
            return Err(K::BadPersistentId("numel is not an int"));
        };
        let numel = u64::try_from(numel).map_err(|_| K::BadPersistentId("negative numel"))?;
        let itemsize = match kind {
            StorageKind::Typed(d) => d.size_in_bytes() as u64,
            StorageKind::Untyped => 1,
        };
        let nbytes = numel.checked_mul(itemsize).ok_or(K::LimitExceeded {
            limit: "storage bytes (numel × element size overflows)",
            value: numel,
        })?;
        if let Some(&sid) = self.storage_keys.get(&key) {
            let same = self
                .storages
                .get(sid.index())
                .is_some_and(|d| d.kind == kind && d.numel == numel);
            if !same {
                return Err(K::StorageConflict { key });
            }
            return Ok(Value::Storage(sid));
        }
        if self.storages.len() >= self.limits.max_storages {
            return Err(K::LimitExceeded {
                limit: "max_storages",
                value: self.storages.len() as u64,
            });
        }
        let sid = StorageId(u32::try_from(self.storages.len()).map_err(|_| K::IntegerTooLarge)?);
        // The key twice (declaration and index) and the location.
        self.charge(
            (key.len() as u64)
                .saturating_mul(2)
                .saturating_add(location.len() as u64),
        );
        self.storage_keys.insert(key.clone(), sid);
        self.storages.push(StorageDecl {
            key,
            kind,
            numel,
            nbytes,
            location,
            op_offset: self.op_offset as u64,
        });
        Ok(Value::Storage(sid))
    }
}

fn decode_scalar(dt: StoredDType, b: &[u8]) -> Option<Value> {
    Some(match dt {
        StoredDType::Bool => Value::Bool(*b.first()? != 0),
        StoredDType::I8 => Value::Int(i64::from(i8::from_le_bytes(b.try_into().ok()?))),
        StoredDType::U8 => Value::Int(i64::from(*b.first()?)),
        StoredDType::I16 => Value::Int(i64::from(i16::from_le_bytes(b.try_into().ok()?))),
        StoredDType::I32 => Value::Int(i64::from(i32::from_le_bytes(b.try_into().ok()?))),
        StoredDType::I64 => Value::Int(i64::from_le_bytes(b.try_into().ok()?)),
        StoredDType::F16 => Value::Float(f64::from(
            f16::from_bits(u16::from_le_bytes(b.try_into().ok()?)).to_f32(),
        )),
        StoredDType::F32 => Value::Float(f64::from(f32::from_le_bytes(b.try_into().ok()?))),
        StoredDType::F64 => Value::Float(f64::from_le_bytes(b.try_into().ok()?)),
        _ => return None,
    })
}

/// Maps a `GLOBAL` to the allow-list, after torch's module renames. Anything else is refused
/// here, before any later opcode can use it.
pub(crate) fn resolve_global(module: &str, name: &str, limits: &Limits) -> R<Global> {
    let forbidden = || K::ForbiddenGlobal {
        module: module.to_string(),
        name: name.to_string(),
    };
    let m = match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        "torch.tensor" => "torch._tensor",
        "numpy._core.multiarray" => "numpy.core.multiarray",
        m => m,
    };
    // torch keeps the same hard block: these never resolve, whatever the tables say.
    let root = m.split('.').next().unwrap_or(m);
    if matches!(root, "sys" | "os" | "posix" | "nt") {
        return Err(forbidden());
    }
    use StoredDType as D;
    let core = match (m, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch", "DoubleStorage") => Some(Global::Storage(StorageKind::Typed(D::F64))),
        ("torch", "FloatStorage") => Some(Global::Storage(StorageKind::Typed(D::F32))),
        ("torch", "HalfStorage") => Some(Global::Storage(StorageKind::Typed(D::F16))),
        ("torch", "BFloat16Storage") => Some(Global::Storage(StorageKind::Typed(D::BF16))),
        ("torch", "LongStorage") => Some(Global::Storage(StorageKind::Typed(D::I64))),
        ("torch", "IntStorage") => Some(Global::Storage(StorageKind::Typed(D::I32))),
        ("torch", "ShortStorage") => Some(Global::Storage(StorageKind::Typed(D::I16))),
        ("torch", "CharStorage") => Some(Global::Storage(StorageKind::Typed(D::I8))),
        ("torch", "ByteStorage") => Some(Global::Storage(StorageKind::Typed(D::U8))),
        ("torch", "BoolStorage") => Some(Global::Storage(StorageKind::Typed(D::Bool))),
        ("torch" | "torch.storage", "UntypedStorage") => {
            Some(Global::Storage(StorageKind::Untyped))
        }
        ("_codecs", "encode") => Some(Global::CodecsEncode),
        ("builtins", "set") => Some(Global::Set),
        ("torch.nn.modules.container", "ParameterDict") => Some(Global::ParameterDict),
        _ => None,
    };
    if let Some(g) = core {
        return Ok(g);
    }
    if let Some(i) = limits
        .extra_inert_globals
        .iter()
        .position(|(em, en)| em == m && en == name)
    {
        return u32::try_from(i).map(Global::Inert).map_err(|_| forbidden());
    }
    if !limits.allow_metadata_globals {
        return Err(forbidden());
    }
    let meta = match (m, name) {
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
        | ("pytorch_lightning.callbacks", "model_checkpoint") => Global::LightningCallback,
        ("torch", "float16" | "half") => Global::DType(D::F16),
        ("torch", "float32" | "float") => Global::DType(D::F32),
        ("torch", "float64" | "double") => Global::DType(D::F64),
        ("torch", "bfloat16") => Global::DType(D::BF16),
        ("torch", "int64" | "long") => Global::DType(D::I64),
        ("torch", "int32" | "int") => Global::DType(D::I32),
        ("torch", "int16" | "short") => Global::DType(D::I16),
        ("torch", "int8") => Global::DType(D::I8),
        ("torch", "uint8") => Global::DType(D::U8),
        ("torch", "bool") => Global::DType(D::Bool),
        ("torch", "float8_e4m3fn") => Global::DType(D::F8E4M3),
        ("torch", "float8_e5m2") => Global::DType(D::F8E5M2),
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch", "Tensor") => Global::TensorClass,
        ("torch.nn.parameter", "Parameter") => Global::ParameterClass,
        ("numpy", "dtype") => Global::NumpyDtype,
        ("numpy.core.multiarray", "scalar") => Global::NumpyScalar,
        _ => return Err(forbidden()),
    };
    Ok(meta)
}
