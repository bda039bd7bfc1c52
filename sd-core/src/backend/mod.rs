//! Compute backends behind [`crate::tensor::Tensor`].
//!
//! A tensor's [`Storage`] says which backend owns its memory; every tensor operation matches on it
//! and calls that backend. The CPU backend is always compiled. The CUDA backend is compiled with
//! the `cuda` feature; without it, [`cuda`] is a stub whose storage type has no values, so the CUDA
//! arms of every match are statically unreachable and creating a CUDA tensor is a clear error.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub(crate) mod cuda;

use crate::error::Result;
use crate::tensor::{DType, Device};
use cpu::pool::CpuBuffer;

/// The memory behind a tensor.
pub(crate) enum Storage {
    /// Host memory, always `f32` (the CPU backend widens half-precision weights on load).
    Cpu(CpuBuffer),
    /// Device memory on a CUDA GPU.
    Cuda(cuda::CudaStorage),
}

impl Storage {
    /// Moves `f32` host data onto `device`.
    pub(crate) fn from_f32(data: Vec<f32>, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuBuffer::new(data))),
            Device::Cuda(ordinal) => {
                Ok(Storage::Cuda(cuda::CudaStorage::from_f32(&data, ordinal)?))
            }
        }
    }

    /// The element type.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(_) => DType::F32,
            Storage::Cuda(s) => s.dtype(),
        }
    }

    /// The device.
    pub(crate) fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }

    /// A host copy of the values as `f32`.
    pub(crate) fn to_f32_vec(&self) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(v) => Ok(Vec::clone(v)),
            Storage::Cuda(s) => s.to_f32_vec(),
        }
    }
}
