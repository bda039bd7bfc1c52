//! The values a pickle produces, stored in an arena and referred to by id.

use std::collections::HashMap;

use crate::weights::store::StoredDType;

/// Id of an object (string, container, object) in a [`Document`]'s arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjId(pub(crate) u32);

/// Id of a storage declared by the pickle (index into [`Document::storages`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StorageId(pub(crate) u32);

/// Id of a tensor built by the pickle (index into [`Document::tensors`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorId(pub(crate) u32);

impl StorageId {
    /// The index into [`Document::storages`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl TensorId {
    /// The index into [`Document::tensors`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The element type a storage global names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageKind {
    /// A typed storage (`torch.HalfStorage`, …): `numel` counts elements of this type.
    Typed(StoredDType),
    /// `torch.UntypedStorage`: `numel` counts bytes; the tensor's dtype comes from
    /// `_rebuild_tensor_v3`.
    Untyped,
}

/// Every global a pickle may name: the closed allow-list. Resolved when `GLOBAL` runs; an
/// unknown name never becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Global {
    /// `collections.OrderedDict`: callable with `()`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor` (very old files).
    RebuildTensor,
    /// `torch._utils._rebuild_tensor_v3` (metadata tier).
    RebuildTensorV3,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state`.
    RebuildParameterWithState,
    /// `torch._tensor._rebuild_from_type_v2` (metadata tier).
    RebuildFromTypeV2,
    /// A storage class, only meaningful inside a persistent id.
    Storage(StorageKind),
    /// `_codecs.encode`: how protocol 2 spells `bytes`.
    CodecsEncode,
    /// `builtins.set`.
    Set,
    /// `torch.nn.modules.container.ParameterDict` (old textual-inversion files), for `NEWOBJ`.
    ParameterDict,
    /// `torch.Tensor`, only as the type argument of `_rebuild_from_type_v2`.
    TensorClass,
    /// `torch.nn.parameter.Parameter`, only as the type argument of `_rebuild_from_type_v2`.
    ParameterClass,
    /// A torch dtype such as `torch.float16` (metadata tier; inert).
    DType(StoredDType),
    /// A PyTorch Lightning callback class or module (metadata tier; inert, usable as a key).
    LightningCallback,
    /// `numpy.dtype` (metadata tier).
    NumpyDtype,
    /// `numpy.core.multiarray.scalar` (metadata tier).
    NumpyScalar,
    /// An entry of [`super::Limits::extra_inert_globals`], by index: inert, never callable.
    Inert(u32),
}

impl Global {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildTensor => "torch._utils._rebuild_tensor",
            Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state",
            Global::RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2",
            Global::Storage(_) => "a torch storage class",
            Global::CodecsEncode => "_codecs.encode",
            Global::Set => "builtins.set",
            Global::ParameterDict => "torch.nn.modules.container.ParameterDict",
            Global::TensorClass => "torch.Tensor",
            Global::ParameterClass => "torch.nn.parameter.Parameter",
            Global::DType(_) => "a torch dtype",
            Global::LightningCallback => "pytorch_lightning.callbacks.model_checkpoint",
            Global::NumpyDtype => "numpy.dtype",
            Global::NumpyScalar => "numpy.core.multiarray.scalar",
            Global::Inert(_) => "an extra inert global",
        }
    }
}

/// One value. Scalars are held inline; everything else is an id into the [`Document`].
///
/// Copying a `Value` never copies the object it refers to: two `Value`s with the same id are
/// the same Python object (mutations through one are visible through the other).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An integer (the VM refuses integers outside `i64`).
    Int(i64),
    /// A float.
    Float(f64),
    /// A string ([`Document::str`]).
    Str(ObjId),
    /// A byte string ([`Document::bytes`]).
    Bytes(ObjId),
    /// A tuple ([`Document::tuple`]).
    Tuple(ObjId),
    /// A list ([`Document::list`]).
    List(ObjId),
    /// A dict or `OrderedDict` ([`Document::dict`]).
    Dict(ObjId),
    /// A set ([`Document::set`]).
    Set(ObjId),
    /// An allow-listed global: inert until called by `REDUCE`.
    Global(Global),
    /// A storage from a persistent id.
    Storage(StorageId),
    /// A tensor built by a rebuild function.
    Tensor(TensorId),
    /// An instance of an allowed class ([`Document::object`]).
    Object(ObjId),
    /// A numpy dtype (metadata tier); the dtype's element type.
    NumpyDtype(ObjId),
}

impl Value {
    /// The Python-ish type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Object(_) => "object",
            Value::NumpyDtype(_) => "numpy dtype",
        }
    }
}

/// Kinds of objects the pickle may instantiate with `NEWOBJ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `torch.nn.ParameterDict`; its state (after `BUILD`) is the module's `__dict__`, whose
    /// `_parameters` entry holds the tensors.
    ParameterDict,
}

/// A storage the pickle refers to through a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageDecl {
    /// The record key (`data/<key>` in the zip format).
    pub key: String,
    /// The storage class.
    pub kind: StorageKind,
    /// Elements (typed) or bytes (untyped), as declared.
    pub numel: u64,
    /// `numel × element size`, checked.
    pub nbytes: u64,
    /// The device it was saved from (`cpu`, `cuda:0`): recorded and ignored.
    pub location: String,
    /// Offset of the `BINPERSID` opcode that first declared it.
    pub op_offset: u64,
}

/// A tensor: a validated strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    /// The storage it views.
    pub storage: StorageId,
    /// Element type.
    pub dtype: StoredDType,
    /// Offset of the first element, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub strides: Vec<usize>,
    /// Whether it was pickled as a `torch.nn.Parameter`.
    pub is_param: bool,
}

impl TensorDecl {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Whether the view is row-major contiguous (strides of size-1 dimensions are ignored).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d == 0 {
                return true;
            }
            if d != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(d);
        }
        true
    }
}

/// A hashable projection of a [`Value`], used for dict keys and set items.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    None,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(Box<str>),
    Bytes(Box<[u8]>),
    Tuple(Box<[Key]>),
    Global(Global),
}

/// The entries of a non-empty dict, insertion-ordered, with a randomly seeded hash index (keys
/// are attacker-chosen).
#[derive(Debug, Default)]
pub(crate) struct DictObj {
    pub(crate) entries: Vec<(Value, Value)>,
    pub(crate) index: HashMap<Key, usize>,
}

/// An object in the arena.
#[derive(Debug)]
pub(crate) enum Obj {
    Str(Box<str>),
    Bytes(Box<[u8]>),
    Tuple(Box<[Value]>),
    List(Vec<Value>),
    /// A dict; `entries` is allocated at the first insertion (most dicts in a checkpoint, such
    /// as every tensor's `backward_hooks`, stay empty).
    Dict {
        ordered: bool,
        entries: Option<Box<DictObj>>,
    },
    Set(Vec<Value>),
    Object {
        kind: ObjectKind,
        state: Option<Value>,
    },
    NumpyDtype(StoredDType),
}

/// Everything a pickle produced: the root value and the arena it refers into, plus the storages
/// and tensors it declared.
///
/// Navigation is through ids, so walking a hostile document that shares sub-objects
/// exponentially often (or contains cycles) costs only what the document's size costs, as long
/// as the walker remembers what it visited.
#[derive(Debug)]
pub struct Document {
    pub(crate) objs: Vec<Obj>,
    pub(crate) root: Value,
    /// Storages in declaration order.
    pub storages: Vec<StorageDecl>,
    /// Tensors in construction order.
    pub tensors: Vec<TensorDecl>,
    /// Every global the pickle names (`GLOBAL` and, with protocol 4 accepted, `STACK_GLOBAL`
    /// opcodes), in file order, as written in the file (before torch's module renames). All of
    /// them were accepted, since a refused global fails the whole run; to list the globals of a
    /// refused pickle, see [`super::list_globals`].
    pub globals: Vec<GlobalRef>,
    /// Bytes of pickle the document was read from (up to and including `STOP`).
    pub(crate) pickle_bytes: u64,
}

/// One `GLOBAL` opcode: the module and name a pickle asks for, and where.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GlobalRef {
    /// The module line, as written.
    pub module: String,
    /// The name line, as written.
    pub name: String,
    /// Byte offset of the opcode in its pickle.
    pub offset: u64,
}

impl Document {
    /// The value the pickle returned.
    pub fn root(&self) -> Value {
        self.root
    }

    fn obj(&self, id: ObjId) -> Option<&Obj> {
        self.objs.get(id.0 as usize)
    }

    /// The text of a `Str` value.
    pub fn str(&self, v: Value) -> Option<&str> {
        match v {
            Value::Str(id) => match self.obj(id)? {
                Obj::Str(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// The bytes of a `Bytes` value.
    pub fn bytes(&self, v: Value) -> Option<&[u8]> {
        match v {
            Value::Bytes(id) => match self.obj(id)? {
                Obj::Bytes(b) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }

    /// The items of a `Tuple` value.
    pub fn tuple(&self, v: Value) -> Option<&[Value]> {
        match v {
            Value::Tuple(id) => match self.obj(id)? {
                Obj::Tuple(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// The items of a `List` value.
    pub fn list(&self, v: Value) -> Option<&[Value]> {
        match v {
            Value::List(id) => match self.obj(id)? {
                Obj::List(l) => Some(l),
                _ => None,
            },
            _ => None,
        }
    }

    /// The items of a `Set` value, in insertion order.
    pub fn set(&self, v: Value) -> Option<&[Value]> {
        match v {
            Value::Set(id) => match self.obj(id)? {
                Obj::Set(l) => Some(l),
                _ => None,
            },
            _ => None,
        }
    }

    /// The `(key, value)` entries of a `Dict` value, in insertion order.
    pub fn dict(&self, v: Value) -> Option<&[(Value, Value)]> {
        match v {
            Value::Dict(id) => match self.obj(id)? {
                Obj::Dict { entries, .. } => Some(entries.as_ref().map_or(&[], |d| &d.entries)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether a `Dict` value is an `OrderedDict`.
    pub fn is_ordered_dict(&self, v: Value) -> bool {
        match v {
            Value::Dict(id) => matches!(self.obj(id), Some(Obj::Dict { ordered: true, .. })),
            _ => false,
        }
    }

    /// Looks up a string key in a `Dict` value.
    pub fn dict_get(&self, v: Value, key: &str) -> Option<Value> {
        match v {
            Value::Dict(id) => match self.obj(id)? {
                Obj::Dict { entries, .. } => {
                    let d = entries.as_ref()?;
                    let i = *d.index.get(&Key::Str(key.into()))?;
                    d.entries.get(i).map(|e| e.1)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Looks up an integer key in a `Dict` value.
    pub fn dict_get_int(&self, v: Value, key: i64) -> Option<Value> {
        match v {
            Value::Dict(id) => match self.obj(id)? {
                Obj::Dict { entries, .. } => {
                    let d = entries.as_ref()?;
                    let i = *d.index.get(&Key::Int(key))?;
                    d.entries.get(i).map(|e| e.1)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The kind and `BUILD` state of an `Object` value.
    pub fn object(&self, v: Value) -> Option<(ObjectKind, Option<Value>)> {
        match v {
            Value::Object(id) => match self.obj(id)? {
                Obj::Object { kind, state } => Some((*kind, *state)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The element type of a `NumpyDtype` value.
    pub fn numpy_dtype(&self, v: Value) -> Option<StoredDType> {
        match v {
            Value::NumpyDtype(id) => match self.obj(id)? {
                Obj::NumpyDtype(d) => Some(*d),
                _ => None,
            },
            _ => None,
        }
    }

    /// The tensor a `Tensor` value refers to.
    pub fn tensor(&self, id: TensorId) -> Option<&TensorDecl> {
        self.tensors.get(id.index())
    }

    /// The storage a `Storage` id refers to.
    pub fn storage(&self, id: StorageId) -> Option<&StorageDecl> {
        self.storages.get(id.index())
    }

    /// Bytes of pickle the document was read from (up to and including its `STOP`).
    pub fn pickle_bytes(&self) -> u64 {
        self.pickle_bytes
    }

    /// Number of arena objects (strings and containers), a measure of the document's size.
    pub fn object_count(&self) -> usize {
        self.objs.len()
    }
}
