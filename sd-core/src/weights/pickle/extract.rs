//! Extraction: the shapes Stable Diffusion files take, read out of a [`Document`].
//!
//! Every walker here uses an explicit stack and stops at [`Limits::max_depth`]. The embedding
//! and hypernetwork readers look at fixed places only; the state-dict walker reads a dict shared
//! under several keys once per key (as `torch.load` gives it), cuts cycles, and is bounded by
//! [`Limits::max_state_dict_entries`] and [`Limits::max_name_bytes`].

use std::collections::{HashMap, HashSet};

use super::Limits;
use super::error::{LoadError, LoadErrorKind as K};
use super::value::{Document, ObjId, ObjectKind, TensorId, Value};

/// Most bytes in one flattened tensor name.
const MAX_NAME: usize = 64 << 10;

/// The tensors of a checkpoint, by stored name, plus its scalar metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    /// `(name, tensor)` in file order. Nested dicts are flattened with `.` (`a` → `b` → tensor
    /// becomes `a.b`).
    pub tensors: Vec<(String, TensorId)>,
    /// Top-level scalar entries (`global_step`, `epoch`, …) rendered as text: ints in decimal,
    /// floats with Rust's shortest round-trip form, bools as `True`/`False`, strings as is.
    pub metadata: Vec<(String, String)>,
    /// Entries that are neither tensors nor string-keyed dicts of tensors (optimizer states,
    /// callbacks, lists, int-keyed entries, objects), counted and skipped.
    pub ignored: usize,
}

fn scalar_text(doc: &Document, v: Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(if b { "True" } else { "False" }.to_string()),
        Value::Str(_) => doc.str(v).map(str::to_string),
        _ => None,
    }
}

fn dict_id(v: Value) -> Option<ObjId> {
    match v {
        Value::Dict(id) => Some(id),
        _ => None,
    }
}

/// What the state-dict walker charges per name it builds, beyond twice the name's bytes (a
/// kept name is held twice, in the tensor list and in the opened file's name index, and each
/// copy has an entry in a list or hash table).
const NAME_OVERHEAD: u64 = 160;

/// Reads the tensors of a checkpoint (A1111's rule: the `state_dict` entry if the root has one
/// and it is a dict, else the root itself) and the root's scalar metadata.
///
/// Nested string-keyed dicts are flattened with `.`. A dict reached under several keys (one
/// object pickled once and referenced again, as `torch.save({"a": sd, "b": sd})` writes it) is
/// read under each of them, as `torch.load` gives it under each; a dict inside itself is cut
/// where it repeats (counted as ignored). Because sharing lets a small file describe
/// exponentially many paths, the walk is bounded by [`Limits::max_state_dict_entries`] and
/// [`Limits::max_name_bytes`].
///
/// # Errors
/// `Malformed` if the root is not a dict, `DuplicateKey` if two entries flatten to the same
/// name, `LimitExceeded` for nesting beyond `max_depth`, a name beyond 64 KiB, more entries
/// walked than `max_state_dict_entries` or more name and metadata bytes than
/// `max_name_bytes`.
pub fn extract_state_dict(doc: &Document, limits: &Limits) -> Result<StateDict, LoadError> {
    let root = doc.root();
    let root_entries = doc
        .dict(root)
        .ok_or(K::Malformed("the pickle's root is not a dict"))?;
    let mut out = StateDict::default();
    let base = match doc.dict_get(root, "state_dict") {
        Some(sd @ Value::Dict(_)) => sd,
        _ => root,
    };
    let name_budget = limits.max_name_bytes.unwrap_or_else(|| {
        doc.pickle_bytes()
            .saturating_mul(16)
            .saturating_add(1 << 20)
    });
    let mut name_bytes = 0u64;
    let mut charge = |bytes: usize| -> Result<(), LoadError> {
        name_bytes = name_bytes
            .saturating_add((bytes as u64).saturating_mul(2))
            .saturating_add(NAME_OVERHEAD);
        if name_bytes > name_budget {
            return Err(K::LimitExceeded {
                limit: "max_name_bytes",
                value: name_bytes,
            }
            .into());
        }
        Ok(())
    };
    // The root's scalars become metadata. A string the pickle holds once may be the value of
    // many keys, so the copies are charged to the same budget as the names.
    for &(k, v) in root_entries {
        let Some(k) = doc.str(k) else { continue };
        let text_len = match v {
            Value::Str(_) => doc.str(v).map(str::len),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => Some(0),
            _ => None,
        };
        if let Some(len) = text_len {
            charge(k.len().saturating_add(len))?;
            if let Some(text) = scalar_text(doc, v) {
                out.metadata.push((k.to_string(), text));
            }
        }
    }
    let mut walked = 0u64;
    // The dicts on the current path: a dict met again among its own ancestors is a cycle.
    let mut on_path: HashSet<ObjId> = HashSet::new();
    if let Some(id) = dict_id(base) {
        on_path.insert(id);
    }
    // Depth-first with explicit frames (dict, name prefix, next entry), so names come out in
    // file order and nesting costs heap, not call stack.
    let mut frames: Vec<(Value, String, usize)> = vec![(base, String::new(), 0)];
    while !frames.is_empty() {
        let depth = frames.len();
        let Some(frame) = frames.last_mut() else {
            break;
        };
        let dict = frame.0;
        let entries = doc.dict(dict).unwrap_or(&[]);
        let Some(&(k, v)) = entries.get(frame.2) else {
            if let Some(id) = dict_id(dict) {
                on_path.remove(&id);
            }
            frames.pop();
            continue;
        };
        frame.2 = frame.2.saturating_add(1);
        walked = walked.saturating_add(1);
        if walked > limits.max_state_dict_entries {
            return Err(K::LimitExceeded {
                limit: "max_state_dict_entries",
                value: walked,
            }
            .into());
        }
        let Some(key) = doc.str(k) else {
            out.ignored = out.ignored.saturating_add(1);
            continue;
        };
        let at_root = depth == 1 && base == root;
        let nested = match v {
            Value::Tensor(_) => false,
            Value::Dict(id) if !(at_root && is_metadata_key(key)) => {
                if on_path.contains(&id) {
                    out.ignored = out.ignored.saturating_add(1);
                    continue;
                }
                true
            }
            _ => {
                if !(at_root && scalar_text(doc, v).is_some()) {
                    out.ignored = out.ignored.saturating_add(1);
                }
                continue;
            }
        };
        let name_len = frame.1.len().saturating_add(key.len());
        if name_len > MAX_NAME {
            return Err(K::LimitExceeded {
                limit: "tensor name length",
                value: name_len as u64,
            }
            .into());
        }
        charge(name_len)?;
        let name = format!("{}{key}", frame.1);
        match v {
            Value::Tensor(t) if !nested => out.tensors.push((name, t)),
            Value::Dict(id) => {
                if depth >= limits.max_depth {
                    return Err(K::LimitExceeded {
                        limit: "max_depth",
                        value: depth as u64,
                    }
                    .into());
                }
                on_path.insert(id);
                frames.push((v, name + ".", 0));
            }
            _ => {}
        }
    }
    // Names are unique (torch would keep the last of two equal keys; only a crafted file has
    // them). Checked once at the end, without copying the names.
    let mut seen: HashSet<&str> = HashSet::with_capacity(out.tensors.len());
    if let Some((dup, _)) = out.tensors.iter().find(|(n, _)| !seen.insert(n)) {
        return Err(K::DuplicateKey(dup.clone()).into());
    }
    Ok(out)
}

/// Training-checkpoint entries that are never weights, even when they are dicts.
fn is_metadata_key(key: &str) -> bool {
    matches!(
        key,
        "callbacks" | "optimizer_states" | "lr_schedulers" | "hyper_parameters" | "loops"
    )
}

/// Which textual-inversion layout a file uses (formats.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingKind {
    /// A1111 `{"string_to_param": {"*": tensor}, "name", "step", …}`.
    A1111,
    /// Original textual-inversion layout: `string_to_param` is a pickled `ParameterDict`.
    ParameterDict,
    /// diffusers `learned_embeds.bin`: `{"<token>": tensor}` with one entry.
    Diffusers,
    /// kohya `{"emb_params": tensor}`.
    Kohya,
    /// SDXL `{"clip_l": tensor, "clip_g": tensor}`.
    Sdxl,
    /// A bare tensor (the caller supplies the token).
    RawTensor,
    /// A list of single-tensor dicts (ComfyUI accepts these).
    List,
}

/// One tensor of an embedding file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingPart {
    /// The key it was stored under: `*` (A1111), the token (diffusers), `emb_params`,
    /// `clip_l`/`clip_g`, or empty for a raw tensor.
    pub key: String,
    /// The tensor, `[n_vectors, dim]` or `[dim]`.
    pub tensor: TensorId,
}

/// A textual-inversion embedding, as stored. Applying it (matching the trigger, choosing the
/// text encoder by width) is the caller's job.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingFile {
    /// The layout found.
    pub kind: EmbeddingKind,
    /// The tensors: one, except two for [`EmbeddingKind::Sdxl`] and any number for
    /// [`EmbeddingKind::List`].
    pub parts: Vec<EmbeddingPart>,
    /// `name` (A1111 files).
    pub name: Option<String>,
    /// `step` (A1111 files).
    pub step: Option<i64>,
    /// `sd_checkpoint` (short hash of the training checkpoint).
    pub sd_checkpoint: Option<String>,
    /// `sd_checkpoint_name`.
    pub sd_checkpoint_name: Option<String>,
}

fn single_tensor_entry(doc: &Document, dict: Value) -> Result<Option<EmbeddingPart>, LoadError> {
    let Some(entries) = doc.dict(dict) else {
        return Ok(None);
    };
    let tensors: Vec<_> = entries
        .iter()
        .filter_map(|&(k, v)| match v {
            Value::Tensor(t) => Some((doc.str(k).unwrap_or("").to_string(), t)),
            _ => None,
        })
        .collect();
    match tensors.as_slice() {
        [] => Ok(None),
        [(key, t)] => Ok(Some(EmbeddingPart {
            key: key.clone(),
            tensor: *t,
        })),
        _ => Err(K::Malformed("embedding file has multiple terms in it").into()),
    }
}

/// Reads a textual-inversion embedding in any of the pickle layouts of formats.md §4.2
/// (variants 1, 1b, 2, 3, 4, 8 and ComfyUI's list form).
///
/// # Errors
/// `Malformed` when no layout matches, when `string_to_param` holds more than one tensor, or a
/// tensor is not 1-D or 2-D.
pub fn extract_embedding(doc: &Document) -> Result<EmbeddingFile, LoadError> {
    let root = doc.root();
    let mut file = EmbeddingFile {
        kind: EmbeddingKind::RawTensor,
        parts: Vec::new(),
        name: doc
            .dict_get(root, "name")
            .and_then(|v| doc.str(v))
            .map(str::to_string),
        step: match doc.dict_get(root, "step") {
            Some(Value::Int(i)) => Some(i),
            _ => None,
        },
        sd_checkpoint: doc
            .dict_get(root, "sd_checkpoint")
            .and_then(|v| doc.str(v))
            .map(str::to_string),
        sd_checkpoint_name: doc
            .dict_get(root, "sd_checkpoint_name")
            .and_then(|v| doc.str(v))
            .map(str::to_string),
    };
    match root {
        Value::Tensor(t) => {
            file.parts.push(EmbeddingPart {
                key: String::new(),
                tensor: t,
            });
        }
        Value::List(_) => {
            file.kind = EmbeddingKind::List;
            for &item in doc.list(root).unwrap_or(&[]) {
                for &(k, v) in doc.dict(item).unwrap_or(&[]) {
                    if let Value::Tensor(t) = v {
                        file.parts.push(EmbeddingPart {
                            key: doc.str(k).unwrap_or("").to_string(),
                            tensor: t,
                        });
                    }
                }
            }
        }
        Value::Dict(_) => {
            if let Some(stp) = doc.dict_get(root, "string_to_param") {
                let (kind, params) = match doc.object(stp) {
                    Some((ObjectKind::ParameterDict, Some(state))) => (
                        EmbeddingKind::ParameterDict,
                        doc.dict_get(state, "_parameters").unwrap_or(Value::None),
                    ),
                    _ => (EmbeddingKind::A1111, stp),
                };
                file.kind = kind;
                let part = single_tensor_entry(doc, params)?
                    .ok_or(K::Malformed("string_to_param holds no tensor"))?;
                file.parts.push(part);
            } else if let Some(Value::Tensor(t)) = doc.dict_get(root, "emb_params") {
                file.kind = EmbeddingKind::Kohya;
                file.parts.push(EmbeddingPart {
                    key: "emb_params".to_string(),
                    tensor: t,
                });
            } else if let (Some(Value::Tensor(l)), Some(Value::Tensor(g))) =
                (doc.dict_get(root, "clip_l"), doc.dict_get(root, "clip_g"))
            {
                file.kind = EmbeddingKind::Sdxl;
                file.parts.push(EmbeddingPart {
                    key: "clip_l".to_string(),
                    tensor: l,
                });
                file.parts.push(EmbeddingPart {
                    key: "clip_g".to_string(),
                    tensor: g,
                });
            } else {
                file.kind = EmbeddingKind::Diffusers;
                let part = single_tensor_entry(doc, root)?
                    .ok_or(K::Malformed("no embedding tensor in the file"))?;
                file.parts.push(part);
            }
        }
        _ => return Err(K::Malformed("no embedding tensor in the file").into()),
    }
    if file.parts.is_empty() {
        return Err(K::Malformed("no embedding tensor in the file").into());
    }
    for p in &file.parts {
        let rank = doc.tensor(p.tensor).map_or(0, |t| t.shape.len());
        if rank != 1 && rank != 2 {
            return Err(K::Malformed("embedding tensor is not 1-D or 2-D").into());
        }
    }
    Ok(file)
}

/// One feature width's pair of MLPs in a hypernetwork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypernetworkLayer {
    /// The context width it applies to (320, 640, 768, 1024, 1280).
    pub size: i64,
    /// The key-side module's state dict: `linear.<i>.weight|bias` (or legacy `linear1.*`).
    pub k: Vec<(String, TensorId)>,
    /// The value-side module's state dict.
    pub v: Vec<(String, TensorId)>,
}

/// An A1111 hypernetwork (formats.md §4.1), as stored. Keys absent from the file are `None`; the
/// defaults A1111 applies at load (`layer_structure [1, 2, 1]`, `activate_output = True`, …) are
/// the caller's to apply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HypernetworkFile {
    /// Int-keyed entries, in file order.
    pub layers: Vec<HypernetworkLayer>,
    /// `layer_structure`.
    pub layer_structure: Option<Vec<f64>>,
    /// `activation_func` (`Some(None)` when stored as `None`).
    pub activation_func: Option<Option<String>>,
    /// `is_layer_norm`.
    pub is_layer_norm: Option<bool>,
    /// `weight_initialization`.
    pub weight_initialization: Option<String>,
    /// `use_dropout`.
    pub use_dropout: Option<bool>,
    /// `dropout_structure`.
    pub dropout_structure: Option<Vec<f64>>,
    /// `last_layer_dropout`.
    pub last_layer_dropout: Option<bool>,
    /// `activate_output`.
    pub activate_output: Option<bool>,
    /// `name`.
    pub name: Option<String>,
    /// `step`.
    pub step: Option<i64>,
    /// `sd_checkpoint`.
    pub sd_checkpoint: Option<String>,
    /// `sd_checkpoint_name`.
    pub sd_checkpoint_name: Option<String>,
    /// `optional_info` (`Some(None)` when stored as `None`).
    pub optional_info: Option<Option<String>>,
}

fn tensor_dict(doc: &Document, v: Value) -> Result<Vec<(String, TensorId)>, LoadError> {
    let entries = doc
        .dict(v)
        .ok_or(K::Malformed("hypernetwork module is not a state dict"))?;
    let mut out = Vec::with_capacity(entries.len());
    let mut seen = HashMap::new();
    for &(k, t) in entries {
        let (Some(k), Value::Tensor(t)) = (doc.str(k), t) else {
            return Err(K::Malformed("hypernetwork state dict entry is not str → tensor").into());
        };
        if seen.insert(k.to_string(), ()).is_some() {
            return Err(K::DuplicateKey(k.to_string()).into());
        }
        out.push((k.to_string(), t));
    }
    Ok(out)
}

fn float_list(doc: &Document, v: Value) -> Option<Vec<f64>> {
    doc.list(v)?
        .iter()
        .map(|&x| match x {
            Value::Float(f) => Some(f),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Some(i as f64),
            _ => None,
        })
        .collect()
}

/// Reads an A1111 hypernetwork: int keys mapping to a tuple of two state dicts, plus the
/// metadata keys of formats.md §4.1.
///
/// # Errors
/// `Malformed` if the root is not a dict, has no int-keyed layer, a layer is not a pair of
/// `str → tensor` dicts, or a metadata key has the wrong type.
pub fn extract_hypernetwork(doc: &Document) -> Result<HypernetworkFile, LoadError> {
    let root = doc.root();
    let entries = doc
        .dict(root)
        .ok_or(K::Malformed("the pickle's root is not a dict"))?;
    let mut h = HypernetworkFile::default();
    let wrong = |key: &'static str| -> LoadError { K::Malformed(key).into() };
    for &(k, v) in entries {
        if let Value::Int(size) = k {
            let pair = doc
                .tuple(v)
                .or_else(|| doc.list(v))
                .ok_or(wrong("hypernetwork layer is not a tuple"))?;
            let [kd, vd] = pair else {
                return Err(wrong("hypernetwork layer is not a pair of state dicts"));
            };
            h.layers.push(HypernetworkLayer {
                size,
                k: tensor_dict(doc, *kd)?,
                v: tensor_dict(doc, *vd)?,
            });
            continue;
        }
        let Some(key) = doc.str(k) else { continue };
        let opt_str = |v: Value| match v {
            Value::None => Some(None),
            _ => doc.str(v).map(|s| Some(s.to_string())),
        };
        match key {
            "layer_structure" => {
                h.layer_structure =
                    Some(float_list(doc, v).ok_or(wrong("layer_structure is not a number list"))?);
            }
            "dropout_structure" => {
                h.dropout_structure = Some(
                    float_list(doc, v).ok_or(wrong("dropout_structure is not a number list"))?,
                );
            }
            "activation_func" => {
                h.activation_func =
                    Some(opt_str(v).ok_or(wrong("activation_func is not a string"))?);
            }
            "optional_info" => {
                h.optional_info = Some(opt_str(v).ok_or(wrong("optional_info is not a string"))?);
            }
            "weight_initialization" | "name" | "sd_checkpoint" | "sd_checkpoint_name" => {
                let s = match v {
                    Value::None => None,
                    _ => Some(
                        doc.str(v)
                            .ok_or(wrong("hypernetwork text field is not a string"))?
                            .to_string(),
                    ),
                };
                match key {
                    "weight_initialization" => h.weight_initialization = s,
                    "name" => h.name = s,
                    "sd_checkpoint" => h.sd_checkpoint = s,
                    _ => h.sd_checkpoint_name = s,
                }
            }
            "is_layer_norm" | "use_dropout" | "last_layer_dropout" | "activate_output" => {
                let Value::Bool(b) = v else {
                    return Err(wrong("hypernetwork flag is not a bool"));
                };
                match key {
                    "is_layer_norm" => h.is_layer_norm = Some(b),
                    "use_dropout" => h.use_dropout = Some(b),
                    "last_layer_dropout" => h.last_layer_dropout = Some(b),
                    _ => h.activate_output = Some(b),
                }
            }
            "step" => {
                let Value::Int(i) = v else {
                    return Err(wrong("step is not an int"));
                };
                h.step = Some(i);
            }
            _ => {}
        }
    }
    if h.layers.is_empty() {
        return Err(wrong("no int-keyed hypernetwork layers"));
    }
    Ok(h)
}
