//! Conversions between Python objects (numpy arrays, PIL images, paths) and core types. Every
//! input is copied into owned Rust data here, before the GIL is released.

use std::path::PathBuf;

use numpy::ndarray::{Array3, ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyString;
use sd_core::Tensor;
use sd_core::image::{self, RgbImage};

use crate::errors::{SdrsError, invalid_argument, to_py_err};

/// Reads `init_image`: a `str`/`os.PathLike` (PNG or JPEG file), a PIL image, or a numpy `uint8`
/// array of shape `(H, W, 3)`.
pub fn init_image(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<RgbImage> {
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        let path: PathBuf = obj.extract()?;
        return py.detach(|| image::load_image(&path)).map_err(to_py_err);
    }
    let array = if obj.hasattr("convert")? && !obj.hasattr("dtype")? {
        // A PIL image: numpy.asarray(image.convert("RGB")).
        let rgb = obj.call_method1("convert", ("RGB",))?;
        py.import("numpy")?.call_method1("asarray", (rgb,))?
    } else {
        obj.clone()
    };
    let array: PyReadonlyArray3<'_, u8> = array.extract().map_err(|_| {
        invalid_argument(
            "init_image",
            "expected a path, a PIL image, or a numpy uint8 array of shape (H, W, 3)",
        )
    })?;
    let &[height, width, channels] = array.shape() else {
        return Err(invalid_argument("init_image", "expected a 3-d array"));
    };
    if channels != 3 {
        return Err(invalid_argument(
            "init_image",
            format!("expected 3 channels (RGB), got shape ({height}, {width}, {channels})"),
        ));
    }
    let data = array
        .as_slice()
        .map_err(|_| invalid_argument("init_image", "the array must be C-contiguous"))?;
    RgbImage::new(width, height, data.to_vec()).map_err(to_py_err)
}

/// Reads `latents`: a C-contiguous numpy `float32` array, NCHW.
pub fn latents(obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let array = obj.cast::<PyArrayDyn<f32>>().map_err(|_| {
        invalid_argument(
            "latents",
            "expected a numpy float32 array of shape (N, C, H, W)",
        )
    })?;
    let array = array.try_readonly()?;
    if array.ndim() != 4 {
        return Err(invalid_argument(
            "latents",
            format!(
                "expected 4 dimensions (N, C, H, W), got shape {:?}",
                array.shape()
            ),
        ));
    }
    let data = array
        .as_slice()
        .map_err(|_| invalid_argument("latents", "the array must be C-contiguous"))?;
    Tensor::from_vec(data.to_vec(), array.shape().to_vec(), sd_core::Device::Cpu).map_err(to_py_err)
}

/// An image as a numpy `uint8` array `(H, W, 3)` that takes ownership of the pixel buffer.
pub fn image_to_numpy(py: Python<'_>, image: RgbImage) -> PyResult<Py<PyAny>> {
    let array = Array3::from_shape_vec((image.height, image.width, 3), image.data)
        .map_err(|e| SdrsError::new_err(e.to_string()))?;
    Ok(array.into_pyarray(py).into_any().unbind())
}

/// A tensor as a numpy `float32` array of the same shape.
pub fn tensor_to_numpy(py: Python<'_>, tensor: &Tensor) -> PyResult<Py<PyAny>> {
    let data = tensor.to_vec().map_err(to_py_err)?;
    let array = ArrayD::from_shape_vec(IxDyn(tensor.dims()), data)
        .map_err(|e| SdrsError::new_err(e.to_string()))?;
    Ok(array.into_pyarray(py).into_any().unbind())
}

/// Wraps numpy images as PIL images when Pillow is importable; otherwise returns them unchanged.
pub fn to_pil_if_available(py: Python<'_>, arrays: Vec<Py<PyAny>>) -> PyResult<Vec<Py<PyAny>>> {
    let Ok(pil) = py.import("PIL.Image") else {
        return Ok(arrays);
    };
    arrays
        .into_iter()
        .map(|a| Ok(pil.call_method1("fromarray", (a,))?.unbind()))
        .collect()
}
