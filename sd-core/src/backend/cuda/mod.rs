//! The CUDA backend: device memory, run-time compiled kernels and cuBLASLt.
//!
//! A [`CudaStorage`] is a pooled device buffer holding `len` elements of one [`DType`] (f32, f16
//! or bf16). Every operation takes operands of one dtype (no implicit conversion: see
//! `Tensor::to_dtype`), computes in fp32, and returns a new storage of the same dtype. All work is
//! queued on the device's one stream; only copies to the host synchronise.
//!
//! Module map: [`device`] (context, stream, buffer pool, module cache), [`compile`] (NVRTC to
//! cubin, disk cache), [`gemm`] (cuBLASLt with cached plans), [`ops`] (one function per tensor op).

pub mod compile;
pub(crate) mod device;
pub mod error;
pub(crate) mod gemm;
mod ops;

use std::sync::Arc;

use cudarc::driver::{CudaView, CudaViewMut};

pub use device::{
    KernelInfo, PoolStats, cuda_available, pool_stats, set_poison_allocations, warm_up,
};
pub use error::CudaError;

use crate::error::{Error, Result};
use crate::tensor::{DType, Device};
use device::{CudaDevice, DeviceBuffer, driver_err};

/// CUDA device memory: `len` elements of `dtype`, contiguous.
pub(crate) struct CudaStorage {
    buf: DeviceBuffer,
    len: usize,
    dtype: DType,
}

impl CudaStorage {
    /// Uninitialised storage for `len` elements on `dev`.
    pub(crate) fn alloc(dev: &Arc<CudaDevice>, len: usize, dtype: DType) -> Result<Self> {
        let buf = dev.alloc(len * dtype.size_in_bytes(), dtype)?;
        Ok(CudaStorage { buf, len, dtype })
    }

    /// Uploads `f32` host data to device `ordinal` as an f32 tensor.
    pub(crate) fn from_f32(data: &[f32], ordinal: usize) -> Result<Self> {
        let dev = CudaDevice::get(ordinal)?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
        Self::from_bytes(&dev, &bytes, data.len(), DType::F32)
    }

    /// Uploads raw 16-bit values (f16 or bf16 bit patterns) to device `ordinal`.
    pub(crate) fn from_half_bits(bits: &[u16], dtype: DType, ordinal: usize) -> Result<Self> {
        let dev = CudaDevice::get(ordinal)?;
        let bytes: Vec<u8> = bits.iter().flat_map(|v| v.to_ne_bytes()).collect();
        Self::from_bytes(&dev, &bytes, bits.len(), dtype)
    }

    pub(crate) fn from_bytes(
        dev: &Arc<CudaDevice>,
        bytes: &[u8],
        len: usize,
        dtype: DType,
    ) -> Result<Self> {
        let mut out = Self::alloc(dev, len, dtype)?;
        if !bytes.is_empty() {
            let stream = Arc::clone(dev.stream());
            let mut view: CudaViewMut<'_, u8> = out.buf.slice_mut().slice_mut(0..bytes.len());
            stream
                .memcpy_htod(bytes, &mut view)
                .map_err(driver_err("copy host to device"))?;
        }
        Ok(out)
    }

    /// The element type.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device.
    pub(crate) fn device(&self) -> Device {
        Device::Cuda(self.buf.device().ordinal())
    }

    pub(crate) fn dev(&self) -> &Arc<CudaDevice> {
        self.buf.device()
    }

    /// The raw device address.
    pub(crate) fn ptr(&self) -> u64 {
        self.buf.ptr()
    }

    /// Downloads the raw bytes (waits for every queued operation).
    fn to_bytes(&self) -> Result<Vec<u8>> {
        let bytes = self.len * self.dtype.size_in_bytes();
        let mut host = vec![0u8; bytes];
        if bytes > 0 {
            let dev = self.dev();
            let view: CudaView<'_, u8> = self.buf.slice().slice(0..bytes);
            dev.stream()
                .memcpy_dtoh(&view, &mut host)
                .map_err(driver_err("copy device to host"))?;
            dev.synchronize()?;
        }
        Ok(host)
    }

    /// A host copy of the values as `f32`.
    pub(crate) fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let bytes = self.to_bytes()?;
        Ok(match self.dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32())
                .collect(),
        })
    }

    /// Fails unless `other` has this storage's dtype and device.
    pub(crate) fn check_same(&self, op: &'static str, other: &CudaStorage) -> Result<()> {
        if other.dtype != self.dtype {
            return Err(Error::Cuda(CudaError::DTypeMismatch {
                op,
                lhs: self.dtype,
                rhs: other.dtype,
            }));
        }
        if !Arc::ptr_eq(self.dev(), other.dev()) {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.device().to_string(),
                rhs: other.device().to_string(),
            });
        }
        Ok(())
    }
}
