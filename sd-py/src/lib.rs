//! Python bindings for sd-core, built by maturin into the `sdrs` package as its private native
//! module `sdrs._sdrs`; the public names are re-exported by `python/sdrs/__init__.py`.
//!
//! This file only registers the module. Each concept has its own file: [`errors`] (the
//! exception hierarchy and the one error mapping), [`pipeline`] (`Pipeline`), [`result`]
//! (`GenerationResult`), [`checkpoint`] (`scan_checkpoint`, `convert_checkpoint`), [`adapters`] (`Lora`,
//! `Embedding`, `Hypernetwork`), [`convert`] (numpy / PIL conversions) and [`progress`] (the progress
//! callback and bar).
#![deny(missing_docs)]

pub mod adapters;
pub mod checkpoint;
pub mod convert;
pub mod errors;
pub mod pipeline;
pub mod progress;
pub mod result;

use pyo3::prelude::*;

/// The version of the bindings, which is the workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The native module `sdrs._sdrs`.
#[pymodule(gil_used = false)]
fn _sdrs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<pipeline::PyPipeline>()?;
    m.add_class::<result::PyGenerationResult>()?;
    m.add_class::<checkpoint::PyScanReport>()?;
    m.add_class::<adapters::PyLora>()?;
    m.add_class::<adapters::PyEmbedding>()?;
    m.add_class::<adapters::PyHypernetwork>()?;
    m.add_function(wrap_pyfunction!(checkpoint::scan_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint::convert_checkpoint, m)?)?;
    errors::register(m)?;
    m.add("SCHEDULERS", pipeline::scheduler_names())?;
    m.add("__version__", VERSION)?;
    Ok(())
}
