//! Progress reporting from the GIL-free generation loop: the user's callback, an optional tqdm
//! bar, and Ctrl-C, each run with the GIL re-acquired once per denoising step.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use sd_core::pipeline::{GenerateRequest, Generation, Pipeline, Progress};

use crate::errors::to_py_err;

/// What runs after every step. Holds only owned, `Send` Python references, so it can cross
/// into `py.detach`.
pub struct Reporter {
    callback: Option<Py<PyAny>>,
    bar: Option<Py<PyAny>>,
    /// The first exception raised by the callback, the bar or a signal handler; re-raised
    /// unchanged in place of the core's `Cancelled` error.
    pub error: Option<PyErr>,
}

impl Reporter {
    /// A reporter calling `callback(step, total)`, with a tqdm bar when `progress` is true and
    /// tqdm is importable (silently none otherwise).
    pub fn new(py: Python<'_>, callback: Option<Py<PyAny>>, progress: bool) -> PyResult<Self> {
        let bar = match (progress, py.import("tqdm.auto")) {
            (true, Ok(tqdm)) => {
                let kwargs = PyDict::new(py);
                kwargs.set_item("desc", "sdrs")?;
                kwargs.set_item("unit", "step")?;
                Some(tqdm.getattr("tqdm")?.call((), Some(&kwargs))?.unbind())
            }
            _ => None,
        };
        Ok(Reporter {
            callback,
            bar,
            error: None,
        })
    }

    /// Runs `request` with the GIL released, reporting each step. An exception raised while
    /// reporting is returned unchanged in place of the core's `Cancelled` error.
    pub fn run(
        mut self,
        py: Python<'_>,
        pipeline: &Pipeline,
        request: &GenerateRequest,
    ) -> PyResult<Generation> {
        let outcome = py.detach(|| pipeline.generate(request, &mut |p| self.step(p)));
        self.close(py)?;
        match (outcome, self.error) {
            (Err(_), Some(raised)) => Err(raised),
            (outcome, _) => outcome.map_err(to_py_err),
        }
    }

    /// Called by the core after each step; `false` cancels.
    pub fn step(&mut self, progress: &Progress) -> bool {
        let outcome = Python::attach(|py| self.step_attached(py, progress));
        match outcome {
            Ok(keep_going) => keep_going,
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    fn step_attached(&self, py: Python<'_>, p: &Progress) -> PyResult<bool> {
        py.check_signals()?;
        if let Some(bar) = &self.bar {
            let bar = bar.bind(py);
            if p.step == 1 {
                bar.setattr("total", p.total_steps)?;
            }
            bar.call_method1("update", (1,))?;
        }
        let Some(cb) = &self.callback else {
            return Ok(true);
        };
        // Anything but an explicit `False` continues, so callbacks returning None work.
        let returned = cb.call1(py, (p.step, p.total_steps))?;
        Ok(!returned.bind(py).is(false.into_pyobject(py)?))
    }

    /// Closes the progress bar, if any.
    pub fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(bar) = &self.bar {
            bar.call_method0(py, "close")?;
        }
        Ok(())
    }
}
