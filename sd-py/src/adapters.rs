//! `Lora`, `Embedding` and `Hypernetwork`: adapter files loaded once and reused by any number of
//! `Pipeline.generate` calls, and the conversion of `generate`'s adapter arguments.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use sd_core::adapters::{AdapterLibrary, Embedding, Hypernetwork, Lora, LoraUse};
use sd_core::pipeline::HypernetworkUse;

use crate::errors::{invalid_argument, to_py_err};

/// A LoRA / LyCORIS file (kohya, LyCORIS, diffusers/PEFT formats; ``.safetensors`` or a pickle
/// read without running its code), loaded once. Pass it in ``Pipeline.generate(loras=[...])``.
///
/// Args:
///     path (str | os.PathLike[str]): the file.
///
/// Raises:
///     FileNotFoundError: ``path`` does not exist.
///     ModelLoadError: the file is malformed or holds NaN/infinite values.
#[pyclass(frozen, name = "Lora", module = "sdrs")]
pub struct PyLora {
    pub(crate) inner: Arc<Lora>,
}

#[pymethods]
impl PyLora {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let lora = py.detach(|| Lora::open(&path)).map_err(to_py_err)?;
        Ok(PyLora {
            inner: Arc::new(lora),
        })
    }

    /// The file name without extension: what ``<lora:NAME>`` tags match.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The name its training tool recorded (``ss_output_name``), else ``name``.
    #[getter]
    fn alias(&self) -> &str {
        self.inner.alias()
    }

    /// AUTOMATIC1111's short hash (12 hex digits), as written in ``Lora hashes``.
    #[getter]
    fn short_hash(&self) -> Option<&str> {
        self.inner.short_hash()
    }

    /// The file's metadata (``ss_*`` training keys and the like).
    #[getter]
    fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        self.inner.metadata().clone()
    }

    /// ``(module, algorithm)`` of every module the file holds.
    #[getter]
    fn modules(&self) -> Vec<(String, String)> {
        self.inner
            .modules()
            .into_iter()
            .map(|m| (m.name, m.algorithm.name().to_string()))
            .collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "Lora(name={:?}, modules={})",
            self.inner.name(),
            self.inner.modules().len()
        )
    }
}

/// A textual-inversion embedding (A1111 ``.pt``, diffusers ``learned_embeds``, kohya
/// ``emb_params``, embeddings in PNG images), loaded once. Its vectors replace its name wherever
/// the prompt writes it.
///
/// Args:
///     path (str | os.PathLike[str]): the file.
///     token (str | None): the word that triggers it. Defaults to ``None``: the file name without
///         extension (a diffusers file's own token; an image's stored name).
///
/// Raises:
///     FileNotFoundError: ``path`` does not exist.
///     ModelLoadError: the file is malformed.
#[pyclass(frozen, name = "Embedding", module = "sdrs")]
pub struct PyEmbedding {
    pub(crate) inner: Arc<Embedding>,
}

#[pymethods]
impl PyEmbedding {
    #[new]
    #[pyo3(signature = (path, token = None))]
    fn new(py: Python<'_>, path: PathBuf, token: Option<String>) -> PyResult<Self> {
        let embedding = py
            .detach(|| match &token {
                Some(t) => Embedding::open_with_token(&path, t),
                None => Embedding::open(&path),
            })
            .map_err(to_py_err)?;
        Ok(PyEmbedding {
            inner: Arc::new(embedding),
        })
    }

    /// The trigger word.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The number of vectors (token positions it takes).
    #[getter]
    fn vectors(&self) -> usize {
        self.inner.vector_count()
    }

    /// The width of each vector (768 for SD 1.x).
    #[getter]
    fn width(&self) -> usize {
        self.inner.width()
    }

    /// AUTOMATIC1111's short hash, as written in ``TI hashes``.
    #[getter]
    fn short_hash(&self) -> Option<&str> {
        self.inner.hash()
    }

    fn __repr__(&self) -> String {
        format!(
            "Embedding(name={:?}, vectors={}, width={})",
            self.inner.name(),
            self.inner.vector_count(),
            self.inner.width()
        )
    }
}

/// An AUTOMATIC1111 hypernetwork (``.pt``), loaded once.
///
/// Args:
///     path (str | os.PathLike[str]): the file.
///
/// Raises:
///     FileNotFoundError: ``path`` does not exist.
///     ModelLoadError: the file is malformed or its weights do not fit its declared structure.
#[pyclass(frozen, name = "Hypernetwork", module = "sdrs")]
pub struct PyHypernetwork {
    pub(crate) inner: Arc<Hypernetwork>,
}

#[pymethods]
impl PyHypernetwork {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let hn = py.detach(|| Hypernetwork::open(&path)).map_err(to_py_err)?;
        Ok(PyHypernetwork {
            inner: Arc::new(hn),
        })
    }

    /// The file name without extension: what ``<hypernet:NAME>`` tags match.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// AUTOMATIC1111's short hash.
    #[getter]
    fn short_hash(&self) -> Option<&str> {
        self.inner.short_hash()
    }

    /// The context widths it has modules for (768 acts on SD 1.x cross-attention).
    #[getter]
    fn widths(&self) -> Vec<usize> {
        self.inner.widths()
    }

    fn __repr__(&self) -> String {
        format!(
            "Hypernetwork(name={:?}, widths={:?})",
            self.inner.name(),
            self.inner.widths()
        )
    }
}

/// Splits an adapter argument item into the adapter (object or path) and up to `max` strengths:
/// `x`, `(x, s)` or, when `max` is 2, `(x, te, unet)`.
fn item_parts<'py>(
    item: &Bound<'py, PyAny>,
    max: usize,
    param: &'static str,
) -> PyResult<(Bound<'py, PyAny>, Vec<f32>)> {
    let Ok(tuple) = item.cast::<PyTuple>() else {
        return Ok((item.clone(), Vec::new()));
    };
    if tuple.is_empty() || tuple.len() > max + 1 {
        return Err(invalid_argument(
            param,
            format!("expected an adapter or a tuple of an adapter and at most {max} strengths"),
        ));
    }
    let strengths = tuple
        .iter()
        .skip(1)
        .map(|s| {
            let v: f32 = s
                .extract()
                .map_err(|_| invalid_argument(param, "strengths must be numbers"))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(invalid_argument(
                    param,
                    format!("strength {v} is not a finite number"),
                ))
            }
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok((tuple.get_item(0)?, strengths))
}

fn is_path(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")?)
}

/// `generate(loras=...)`: each item is a `Lora`, a path, or a tuple `(lora_or_path, strength)`
/// or `(lora_or_path, text_encoder_strength, unet_strength)`. Paths load through `library`.
pub fn loras(
    py: Python<'_>,
    items: &Bound<'_, PyAny>,
    library: &AdapterLibrary,
) -> PyResult<Vec<LoraUse>> {
    let mut out = Vec::new();
    for item in items.try_iter()? {
        let (adapter, strengths) = item_parts(&item?, 2, "loras")?;
        let lora = if let Ok(l) = adapter.cast::<PyLora>() {
            l.get().inner.clone()
        } else if is_path(&adapter)? {
            let path: PathBuf = adapter.extract()?;
            py.detach(|| library.lora_file(&path)).map_err(to_py_err)?
        } else {
            return Err(invalid_argument(
                "loras",
                "each item must be an sdrs.Lora, a path, or a tuple of one and its strengths",
            ));
        };
        let (te, unet) = match strengths.as_slice() {
            [] => (1.0, 1.0),
            [s] => (*s, *s),
            [te, unet, ..] => (*te, *unet),
        };
        out.push(LoraUse::with_strengths(lora, te, unet));
    }
    Ok(out)
}

/// `generate(hypernetworks=...)`: each item is a `Hypernetwork`, a path, or `(x, strength)`.
pub fn hypernetworks(
    py: Python<'_>,
    items: &Bound<'_, PyAny>,
    library: &AdapterLibrary,
) -> PyResult<Vec<HypernetworkUse>> {
    let mut out = Vec::new();
    for item in items.try_iter()? {
        let (adapter, strengths) = item_parts(&item?, 1, "hypernetworks")?;
        let hn = if let Ok(h) = adapter.cast::<PyHypernetwork>() {
            h.get().inner.clone()
        } else if is_path(&adapter)? {
            let path: PathBuf = adapter.extract()?;
            py.detach(|| library.hypernetwork_file(&path))
                .map_err(to_py_err)?
        } else {
            return Err(invalid_argument(
                "hypernetworks",
                "each item must be an sdrs.Hypernetwork, a path, or a tuple of one and a strength",
            ));
        };
        out.push(HypernetworkUse::new(
            hn,
            strengths.first().copied().unwrap_or(1.0),
        ));
    }
    Ok(out)
}

/// `generate(embeddings=...)`: each item is an `Embedding` or a path (triggered by its file
/// name).
pub fn embeddings(py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<Vec<Arc<Embedding>>> {
    let mut out = Vec::new();
    for item in items.try_iter()? {
        let item = item?;
        if let Ok(e) = item.cast::<PyEmbedding>() {
            out.push(e.get().inner.clone());
        } else if is_path(&item)? {
            let path: PathBuf = item.extract()?;
            let e = py.detach(|| Embedding::open(&path)).map_err(to_py_err)?;
            out.push(Arc::new(e));
        } else {
            return Err(invalid_argument(
                "embeddings",
                "each item must be an sdrs.Embedding or a path",
            ));
        }
    }
    Ok(out)
}

/// A folder argument: `None`, one path, or a list of paths.
pub fn folders(obj: Option<&Bound<'_, PyAny>>, param: &'static str) -> PyResult<Vec<PathBuf>> {
    let Some(obj) = obj else {
        return Ok(Vec::new());
    };
    if is_path(obj)? {
        return Ok(vec![obj.extract()?]);
    }
    obj.try_iter()
        .map_err(|_| invalid_argument(param, "expected a path or a list of paths"))?
        .map(|p| {
            p?.extract::<PathBuf>()
                .map_err(|_| invalid_argument(param, "expected a path or a list of paths"))
        })
        .collect()
}
