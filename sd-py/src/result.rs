//! `GenerationResult`: what `Pipeline.generate` returns.

use pyo3::prelude::*;
use pyo3::types::PyList;

/// The result of one `Pipeline.generate` call.
///
/// Attributes:
///     images (list[PIL.Image.Image] | list[numpy.ndarray]): ``batch_size`` RGB images: PIL
///         images when Pillow is installed, otherwise numpy ``uint8`` arrays of shape
///         ``(height, width, 3)``.
///     latents (numpy.ndarray): the final latents before decoding, ``float32``, shape
///         ``(batch_size, 4, height // 8, width // 8)`` (NCHW).
///     infotexts (list[str]): one A1111-style parameters text per image (prompt, steps,
///         sampler, seed, size, ...), as written into PNG files.
///     adapter_report (str): what the adapters did, one line per LoRA and one per key of its
///         file that was not applied, one per hypernetwork warning and one per embedding
///         skipped (empty without adapters).
///     unapplied_keys (dict[str, list[tuple[str, str]]]): per LoRA name, every key of its file
///         that was not applied, with the reason.
///     skipped_embeddings (dict[str, str]): per embedding name, why the prompts could not use
///         it (made for another model family, for instance); its name stayed ordinary text.
///
/// ``len(result)``, iteration and indexing go over ``images``.
#[pyclass(frozen, name = "GenerationResult", module = "sdrs")]
pub struct PyGenerationResult {
    /// The images.
    #[pyo3(get)]
    pub images: Py<PyList>,
    /// The final latents, numpy float32 NCHW.
    #[pyo3(get)]
    pub latents: Py<PyAny>,
    /// One infotext per image.
    #[pyo3(get)]
    pub infotexts: Vec<String>,
    /// What the adapters did, as text.
    #[pyo3(get)]
    pub adapter_report: String,
    /// Per LoRA, the keys not applied and why.
    #[pyo3(get)]
    pub unapplied_keys: std::collections::BTreeMap<String, Vec<(String, String)>>,
    /// Per embedding left out, why.
    #[pyo3(get)]
    pub skipped_embeddings: std::collections::BTreeMap<String, String>,
}

#[pymethods]
impl PyGenerationResult {
    fn __len__(&self, py: Python<'_>) -> usize {
        self.images.bind(py).len()
    }

    fn __getitem__<'py>(&self, py: Python<'py>, index: isize) -> PyResult<Bound<'py, PyAny>> {
        self.images.bind(py).as_any().get_item(index)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.images
            .bind(py)
            .as_any()
            .try_iter()
            .map(Bound::into_any)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "GenerationResult(images={}, latents shape {})",
            self.images.bind(py).len(),
            self.latents
                .bind(py)
                .getattr("shape")
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    }
}

impl PyGenerationResult {
    /// Converts a core [`Generation`](sd_core::pipeline::Generation), handing the image buffers
    /// to numpy without copying.
    pub fn from_generation(py: Python<'_>, g: sd_core::pipeline::Generation) -> PyResult<Self> {
        let latents = crate::convert::tensor_to_numpy(py, &g.latents)?;
        let arrays = g
            .images
            .into_iter()
            .map(|image| crate::convert::image_to_numpy(py, image))
            .collect::<PyResult<Vec<_>>>()?;
        let images = crate::convert::to_pil_if_available(py, arrays)?;
        let unapplied_keys = g
            .adapters
            .loras
            .loras
            .iter()
            .map(|l| {
                let keys = l
                    .skipped
                    .iter()
                    .map(|k| (k.key.clone(), k.reason.to_string()))
                    .collect();
                (l.name.clone(), keys)
            })
            .collect();
        let skipped_embeddings = g
            .adapters
            .embeddings_skipped
            .iter()
            .map(|e| (e.name.clone(), e.reason.clone()))
            .collect();
        Ok(PyGenerationResult {
            images: PyList::new(py, images)?.unbind(),
            latents,
            infotexts: g.infotexts,
            adapter_report: g.adapters.to_string(),
            unapplied_keys,
            skipped_embeddings,
        })
    }
}
