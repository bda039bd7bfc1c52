//! Stand-in for the CUDA backend when sd-core is built without the `cuda` feature.
//!
//! [`CudaStorage`] has no values, so no CUDA tensor can exist and every method below is
//! statically unreachable; the one entry point, [`CudaStorage::from_f32`], reports that this build
//! has no CUDA support.

use crate::error::{Error, Result};
use crate::tensor::{DType, Device};

/// CUDA device memory. Uninhabited in builds without the `cuda` feature.
pub(crate) enum CudaStorage {}

impl CudaStorage {
    /// Always fails: this build has no CUDA backend.
    pub(crate) fn from_f32(_data: &[f32], ordinal: usize) -> Result<Self> {
        Err(Error::DeviceUnavailable {
            device: format!("cuda:{ordinal}"),
            reason: "sd-core was built without the `cuda` feature".into(),
        })
    }

    pub(crate) fn dtype(&self) -> DType {
        match *self {}
    }

    pub(crate) fn device(&self) -> Device {
        match *self {}
    }

    pub(crate) fn to_f32_vec(&self) -> Result<Vec<f32>> {
        match *self {}
    }
}
