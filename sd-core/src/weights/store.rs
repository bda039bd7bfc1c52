//! The weight store: named tensors from one or more sources, looked up by their diffusers names.
//!
//! A [`TensorSource`] is one readable container (a safetensors file, a pickle checkpoint, an
//! in-memory map). A [`WeightStore`] indexes the tensors of one model component (UNet, VAE, text
//! encoder) under the names the model code asks for, which may differ from the names stored in
//! the file (a single-file checkpoint in the original layout is renamed on the fly). Model code
//! reads through a [`Weights`] view, which carries a name prefix and the target device.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::tensor::{Device, Shape, Tensor};

/// How a tensor is stored in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredDType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer (e.g. CLIP `position_ids`).
    I64,
    /// 32-bit signed integer.
    I32,
    /// 16-bit signed integer.
    I16,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean, one byte each.
    Bool,
    /// 8-bit float, e4m3.
    F8E4M3,
    /// 8-bit float, e5m2.
    F8E5M2,
}

impl StoredDType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            StoredDType::F64 | StoredDType::I64 => 8,
            StoredDType::F32 | StoredDType::I32 => 4,
            StoredDType::F16 | StoredDType::BF16 | StoredDType::I16 => 2,
            StoredDType::I8
            | StoredDType::U8
            | StoredDType::Bool
            | StoredDType::F8E4M3
            | StoredDType::F8E5M2 => 1,
        }
    }

    /// Whether values of this type can be read as model weights (floats).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            StoredDType::F32
                | StoredDType::F16
                | StoredDType::BF16
                | StoredDType::F64
                | StoredDType::F8E4M3
                | StoredDType::F8E5M2
        )
    }
}

impl fmt::Display for StoredDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            StoredDType::F32 => "F32",
            StoredDType::F16 => "F16",
            StoredDType::BF16 => "BF16",
            StoredDType::F64 => "F64",
            StoredDType::I64 => "I64",
            StoredDType::I32 => "I32",
            StoredDType::I16 => "I16",
            StoredDType::I8 => "I8",
            StoredDType::U8 => "U8",
            StoredDType::Bool => "BOOL",
            StoredDType::F8E4M3 => "F8_E4M3",
            StoredDType::F8E5M2 => "F8_E5M2",
        };
        f.write_str(s)
    }
}

/// Shape and stored type of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The stored shape.
    pub shape: Shape,
    /// The stored element type.
    pub dtype: StoredDType,
}

/// A readable container of named tensors.
///
/// Implementations validate their file when they are opened, so that lookups and reads fail only
/// with errors about the one tensor involved.
pub trait TensorSource: Send + Sync {
    /// A short description for error messages, usually the file path.
    fn describe(&self) -> String;

    /// The names of every tensor, as stored.
    fn tensor_names(&self) -> Vec<String>;

    /// Shape and type of a tensor, or `None` if there is no tensor by that name.
    fn tensor_info(&self, name: &str) -> Option<TensorInfo>;

    /// The values of a floating-point tensor, widened or narrowed to `f32`, row-major.
    ///
    /// # Errors
    /// [`Error::MissingWeight`] if there is no such tensor, [`Error::WeightDType`] if it is not a
    /// float tensor, or an I/O or format error from the container.
    fn read_f32(&self, name: &str) -> Result<Vec<f32>>;

    /// String metadata stored beside the tensors (safetensors `__metadata__`, checkpoint extras).
    fn metadata(&self) -> HashMap<String, String> {
        HashMap::new()
    }
}

/// Tensors held in memory: for tests, for benchmarks on random weights, and for weights that
/// were computed rather than read.
#[derive(Default)]
pub struct MemorySource {
    name: String,
    tensors: HashMap<String, (Shape, Vec<f32>)>,
}

impl MemorySource {
    /// An empty source described as `name` in error messages.
    pub fn new(name: impl Into<String>) -> Self {
        MemorySource {
            name: name.into(),
            tensors: HashMap::new(),
        }
    }

    /// Adds (or replaces) a tensor.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] if the number of values does not match the shape.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        shape: impl Into<Shape>,
        data: Vec<f32>,
    ) -> Result<()> {
        let shape = shape.into();
        if shape.elem_count() != data.len() {
            return Err(Error::InvalidShape {
                op: "MemorySource::insert",
                shape,
                reason: format!("{} values given", data.len()),
            });
        }
        self.tensors.insert(name.into(), (shape, data));
        Ok(())
    }
}

impl TensorSource for MemorySource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn tensor_info(&self, name: &str) -> Option<TensorInfo> {
        self.tensors.get(name).map(|(shape, _)| TensorInfo {
            shape: shape.clone(),
            dtype: StoredDType::F32,
        })
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.tensors
            .get(name)
            .map(|(_, data)| data.clone())
            .ok_or_else(|| Error::MissingWeight {
                name: name.to_string(),
                source_desc: self.name.clone(),
            })
    }
}

/// Where a logical tensor name is stored.
#[derive(Clone)]
struct Entry {
    source: usize,
    stored_name: String,
}

/// The tensors of one model component, indexed by the names the model code uses.
#[derive(Clone)]
pub struct WeightStore {
    sources: Vec<Arc<dyn TensorSource>>,
    index: HashMap<String, Entry>,
    /// When set, every lookup succeeds with deterministic random values (see [`WeightStore::synthetic`]).
    synthetic_seed: Option<u64>,
}

impl fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightStore")
            .field("sources", &self.describe())
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl WeightStore {
    /// An empty store.
    pub fn new() -> Self {
        WeightStore {
            sources: Vec::new(),
            index: HashMap::new(),
            synthetic_seed: None,
        }
    }

    /// A store that answers every lookup with deterministic pseudo-random values of the requested
    /// shape, derived from `seed` and the tensor's name: for benchmarks and smoke tests at real
    /// model sizes without any file. Matrices and kernels are drawn with standard deviation
    /// `1/sqrt(fan_in)`, one-dimensional `weight`s (norm scales) near 1, everything else near 0,
    /// so activations keep a sane scale through deep networks.
    pub fn synthetic(seed: u64) -> Self {
        WeightStore {
            synthetic_seed: Some(seed),
            ..WeightStore::new()
        }
    }

    /// A store exposing every tensor of `source` under its stored name.
    pub fn from_source(source: Arc<dyn TensorSource>) -> Self {
        let mut store = WeightStore::new();
        let names = source.tensor_names();
        store.add_source(source, names.into_iter().map(|n| (n.clone(), n)));
        store
    }

    /// Adds a source whose tensors are exposed under new names: each pair is
    /// `(logical_name, stored_name)`. A logical name that is already present is replaced.
    pub fn add_source(
        &mut self,
        source: Arc<dyn TensorSource>,
        names: impl IntoIterator<Item = (String, String)>,
    ) {
        let idx = self.sources.len();
        self.sources.push(source);
        for (logical, stored_name) in names {
            self.index.insert(
                logical,
                Entry {
                    source: idx,
                    stored_name,
                },
            );
        }
    }

    /// Exposes existing tensors under additional names: each pair is `(alias, existing_name)`.
    /// Pairs whose existing name is absent are skipped; an alias already present is replaced.
    pub fn add_aliases(&mut self, aliases: impl IntoIterator<Item = (String, String)>) {
        for (alias, existing) in aliases {
            if let Some(e) = self.index.get(&existing).cloned() {
                self.index.insert(alias, e);
            }
        }
    }

    /// The logical names of every tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the store holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The stored shape of a tensor.
    pub fn shape_of(&self, name: &str) -> Option<Shape> {
        self.info(name).map(|i| i.shape)
    }

    /// The stored shape and type of a tensor.
    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        let e = self.index.get(name)?;
        self.sources[e.source].tensor_info(&e.stored_name)
    }

    /// The sources, described for error messages.
    pub fn describe(&self) -> String {
        match self.sources.len() {
            0 => "an empty weight store".to_string(),
            _ => self
                .sources
                .iter()
                .map(|s| s.describe())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn describe_entry(&self, e: &Entry) -> String {
        let src = self.sources[e.source].describe();
        format!("{src} (stored as `{}`)", e.stored_name)
    }

    /// Reads a tensor, checking its shape.
    ///
    /// A stored shape that differs from `expected` only by trailing dimensions of size 1 is
    /// accepted and reshaped (a 1x1 convolution stored for a linear layer, as in the original VAE
    /// attention weights).
    ///
    /// # Errors
    /// [`Error::MissingWeight`] naming the tensor, [`Error::WeightShape`] with both shapes, or a
    /// read error from the source.
    pub fn get(&self, name: &str, expected: &Shape, device: Device) -> Result<Tensor> {
        if let Some(seed) = self.synthetic_seed {
            return Tensor::from_vec(
                synthetic_values(seed, name, expected),
                expected.clone(),
                device,
            );
        }
        let e = self.index.get(name).ok_or_else(|| Error::MissingWeight {
            name: name.to_string(),
            source_desc: self.describe(),
        })?;
        let source = &self.sources[e.source];
        let info = source
            .tensor_info(&e.stored_name)
            .ok_or_else(|| Error::MissingWeight {
                name: name.to_string(),
                source_desc: self.describe_entry(e),
            })?;
        if !info.dtype.is_float() {
            return Err(Error::WeightDType {
                name: name.to_string(),
                source_desc: self.describe_entry(e),
                dtype: info.dtype.to_string(),
            });
        }
        if !shapes_compatible(&info.shape, expected) {
            return Err(Error::WeightShape {
                name: name.to_string(),
                source_desc: self.describe_entry(e),
                expected: expected.clone(),
                got: info.shape,
            });
        }
        let data = source.read_f32(&e.stored_name)?;
        Tensor::from_vec(data, expected.clone(), device)
    }

    /// A view for model code: names under `prefix`, tensors created on `device`.
    pub fn view(self: &Arc<Self>, device: Device) -> Weights {
        Weights {
            store: Arc::clone(self),
            prefix: String::new(),
            device,
        }
    }
}

impl Default for WeightStore {
    fn default() -> Self {
        WeightStore::new()
    }
}

/// Deterministic pseudo-random values for [`WeightStore::synthetic`].
fn synthetic_values(seed: u64, name: &str, shape: &Shape) -> Vec<f32> {
    // FNV-1a of the name, mixed with the seed, drives a splitmix64 stream.
    let mut state = name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut next_unit = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // uniform in [-1, 1): variance 1/3
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let dims = shape.dims();
    let (center, spread) = if dims.len() >= 2 {
        let fan_in: usize = dims[1..].iter().product();
        (0.0, (3.0 / fan_in.max(1) as f64).sqrt())
    } else if name.ends_with("weight") {
        (1.0, 0.1)
    } else {
        (0.0, 0.05)
    };
    (0..shape.elem_count())
        .map(|_| (center + spread * next_unit()) as f32)
        .collect()
}

fn trim_trailing_ones(dims: &[usize]) -> &[usize] {
    let end = dims.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
    &dims[..end]
}

fn shapes_compatible(stored: &Shape, expected: &Shape) -> bool {
    stored == expected
        || trim_trailing_ones(stored.dims()) == trim_trailing_ones(expected.dims())
            && stored.elem_count() == expected.elem_count()
}

/// A prefix-scoped view of a [`WeightStore`] on a device, passed to model constructors.
///
/// `weights.pp("down_blocks").pp(0).get("conv1.weight", shape)` reads
/// `down_blocks.0.conv1.weight`.
#[derive(Clone)]
pub struct Weights {
    store: Arc<WeightStore>,
    prefix: String,
    device: Device,
}

impl Weights {
    /// The view one level down: names gain `segment.` in front.
    pub fn pp(&self, segment: impl fmt::Display) -> Weights {
        let prefix = if self.prefix.is_empty() {
            segment.to_string()
        } else {
            format!("{}.{segment}", self.prefix)
        };
        Weights {
            store: Arc::clone(&self.store),
            prefix,
            device: self.device,
        }
    }

    /// The full name of `name` under this view's prefix.
    pub fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Reads `name` (under the prefix) with shape `shape`.
    pub fn get(&self, name: &str, shape: impl Into<Shape>) -> Result<Tensor> {
        self.store
            .get(&self.full_name(name), &shape.into(), self.device)
    }

    /// Whether `name` (under the prefix) exists.
    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.full_name(name))
    }

    /// The stored shape of `name` (under the prefix).
    pub fn shape_of(&self, name: &str) -> Option<Shape> {
        self.store.shape_of(&self.full_name(name))
    }

    /// The device tensors are created on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<WeightStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_lookup_and_shape_errors_name_the_tensor() -> Result<()> {
        let mut src = MemorySource::new("memory");
        src.insert("a.b.weight", [2, 3], vec![1.0; 6])?;
        src.insert("attn.q.weight", [4, 4, 1, 1], vec![0.5; 16])?;
        let store = Arc::new(WeightStore::from_source(Arc::new(src)));
        let w = store.view(Device::Cpu);
        assert_eq!(w.pp("a").pp("b").get("weight", [2, 3])?.dims(), &[2, 3]);
        // 1x1 conv weight read as a linear weight
        assert_eq!(w.pp("attn.q").get("weight", [4, 4])?.dims(), &[4, 4]);
        let err = w
            .pp("a.b")
            .get("weight", [3, 2])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("a.b.weight") && err.contains("[2, 3]") && err.contains("[3, 2]"),
            "{err}"
        );
        let err = w
            .get("missing.weight", [1])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("missing.weight"), "{err}");
        Ok(())
    }
}
