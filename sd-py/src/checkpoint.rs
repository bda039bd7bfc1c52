//! `scan_checkpoint` and `convert_checkpoint`: what a checkpoint holds and whether it is safe to
//! load, and conversion to safetensors, without running any code from the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use sd_core::weights::{self, ConvertDType, ScanReport, Verdict};

use crate::errors::{invalid_argument, to_py_err};

/// What ``scan_checkpoint`` found in a file.
///
/// Attributes:
///     path (str): the file scanned.
///     format (str): the container in words (``"safetensors"``, ``"torch zip (...)"``,
///         ``"torch legacy ..."``, or what the file is when it is not a checkpoint).
///     loadable (bool): whether it can be loaded: nothing in it would run and every global it
///         names is on the allow-list.
///     reason (str | None): why it was refused (what and where), or ``None``.
///     tensors (list[tuple[str, str, list[int]]]): ``(name, dtype, shape)`` of every
///         tensor, in file order (``dtype`` as safetensors names it: ``"F16"``, ``"I64"``...).
///     globals (list[tuple[str, str, int]]): ``(module, name, count)`` of every Python global a
///         pickle names, sorted, when the file is loadable.
///     refused_globals (list[tuple[str, str, int, str | None]]): for a refused checkpoint,
///         ``(module, name, count, why)`` of every global its pickles name, found by reading
///         the opcodes without running anything; ``why`` says why a global is refused and is
///         ``None`` for one on the allow-list. Empty for a loadable file.
///     metadata (dict[str, str]): safetensors metadata, or a checkpoint's scalar entries
///         (``global_step``...).
///
/// ``str(report)`` is the full human-readable report, as ``convert --scan`` prints it.
#[pyclass(frozen, name = "ScanReport", module = "sdrs")]
pub struct PyScanReport {
    /// The file scanned.
    #[pyo3(get)]
    pub path: String,
    /// The container in words.
    #[pyo3(get)]
    pub format: String,
    /// Whether the file can be loaded.
    #[pyo3(get)]
    pub loadable: bool,
    /// Why it was refused, if it was.
    #[pyo3(get)]
    pub reason: Option<String>,
    /// `(name, dtype, shape)` of every tensor.
    #[pyo3(get)]
    pub tensors: Vec<(String, String, Vec<usize>)>,
    /// `(module, name, count)` of every global.
    #[pyo3(get)]
    pub globals: Vec<(String, String, usize)>,
    /// `(module, name, count, why refused)` of every global a refused file names.
    #[pyo3(get)]
    pub refused_globals: Vec<(String, String, usize, Option<String>)>,
    /// Metadata entries.
    #[pyo3(get)]
    pub metadata: BTreeMap<String, String>,
    text: String,
}

impl PyScanReport {
    fn new(report: &ScanReport) -> Self {
        PyScanReport {
            path: report.path.display().to_string(),
            format: report.format.clone(),
            loadable: report.is_loadable(),
            reason: match &report.verdict {
                Verdict::Loadable => None,
                Verdict::Refused { reason } => Some(reason.clone()),
            },
            tensors: report
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.dtype.to_string(), t.shape.clone()))
                .collect(),
            globals: report
                .globals
                .iter()
                .map(|g| (g.module.clone(), g.name.clone(), g.count))
                .collect(),
            refused_globals: report
                .refused_file_globals
                .as_ref()
                .map(|globals| {
                    globals
                        .iter()
                        .map(|g| {
                            let why = g.refused.map(str::to_string);
                            (g.module.clone(), g.name.clone(), g.count, why)
                        })
                        .collect()
                })
                .unwrap_or_default(),
            metadata: report.metadata.clone(),
            text: report.to_string(),
        }
    }
}

#[pymethods]
impl PyScanReport {
    fn __str__(&self) -> String {
        self.text.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "ScanReport(path={:?}, format={:?}, loadable={}, tensors={})",
            self.path,
            self.format,
            if self.loadable { "True" } else { "False" },
            self.tensors.len()
        )
    }
}

/// Reports what the file at ``path`` holds and whether it can be loaded, running nothing from
/// it: a ``.ckpt``/``.pt``/``.bin`` pickle checkpoint (torch zip or legacy format) or a
/// ``.safetensors`` file, recognised by content.
///
/// A hostile or malformed file does not raise: the report's ``loadable`` is ``False`` and its
/// ``reason`` says what was refused and where.
///
/// Raises:
///     FileNotFoundError: the file does not exist.
///     PermissionError, OSError: it cannot be read.
#[pyfunction]
pub fn scan_checkpoint(py: Python<'_>, path: PathBuf) -> PyResult<PyScanReport> {
    let report = py
        .detach(|| weights::scan_checkpoint(&path))
        .map_err(to_py_err)?;
    Ok(PyScanReport::new(&report))
}

/// Converts the checkpoint at ``input`` to a ``.safetensors`` file at ``output``, keeping tensor
/// names as stored and scalar entries as metadata, without running any code from it. With
/// ``dtype`` (``"f32"``, ``"f16"`` or ``"bf16"``) float tensors are converted; integer and bool
/// tensors are always kept. Returns the number of tensors written.
///
/// Raises:
///     FileNotFoundError: ``input`` does not exist.
///     ModelLoadError: the file was refused (hostile or malformed) or holds no state-dict
///         tensors; nothing is written.
///     InvalidArgumentError: an unknown ``dtype``.
///     OSError: ``output`` cannot be written.
#[pyfunction]
#[pyo3(signature = (input, output, *, dtype = None))]
pub fn convert_checkpoint(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    dtype: Option<&str>,
) -> PyResult<usize> {
    let dtype = dtype
        .map(|name| {
            ConvertDType::parse(name).ok_or_else(|| {
                invalid_argument(
                    "dtype",
                    format!("{name:?} is not one of \"f32\", \"f16\", \"bf16\""),
                )
            })
        })
        .transpose()?;
    let summary = py
        .detach(|| weights::convert_to_safetensors(&input, &output, dtype))
        .map_err(to_py_err)?;
    Ok(summary.tensors)
}
