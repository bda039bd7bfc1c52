//! Tensors: a shape, a dtype, a device and a reference-counted storage.
//!
//! A [`Tensor`] is always contiguous and row-major; operations return new tensors. Cloning a tensor
//! is cheap (it shares the storage). Operations dispatch on the storage's device at run time, so
//! model code is written once for every backend.
//!
//! Image-like activations inside the models are laid out **NHWC** (`[batch, height, width,
//! channels]`): a 1x1 convolution is then a plain matrix product, attention blocks read their
//! tokens without a transpose, and both backends run their convolutions as GEMMs over channels.
//! Tensors that cross the public API (latents, images) use the NCHW layout that diffusers uses and
//! are converted at the model boundary.

mod device;
mod dtype;
mod ops;
mod shape;

use std::sync::Arc;

pub use device::Device;
pub use dtype::DType;
pub use ops::{Activation, Conv2dParams};
pub use shape::Shape;

use crate::backend::Storage;
use crate::error::{Error, Result};

/// An n-dimensional array on a device.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Shape,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({}, {}, {})",
            self.shape,
            self.dtype(),
            self.device()
        )
    }
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: Shape) -> Self {
        Tensor {
            storage: Arc::new(storage),
            shape,
        }
    }

    /// A tensor from `f32` values in row-major order, on `device`.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] when the number of values does not match the shape, or a device error.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>, device: Device) -> Result<Self> {
        let shape = shape.into();
        if shape.elem_count() != data.len() {
            return Err(Error::InvalidShape {
                op: "from_vec",
                shape,
                reason: format!("{} values given", data.len()),
            });
        }
        Ok(Tensor::from_storage(
            Storage::from_f32(data, device)?,
            shape,
        ))
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, device: Device) -> Result<Self> {
        let shape = shape.into();
        Tensor::from_vec(vec![0.0; shape.elem_count()], shape, device)
    }

    /// A tensor with every element equal to `value`.
    pub fn full(value: f32, shape: impl Into<Shape>, device: Device) -> Result<Self> {
        let shape = shape.into();
        Tensor::from_vec(vec![value; shape.elem_count()], shape, device)
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// The device the tensor lives on.
    pub fn device(&self) -> Device {
        self.storage.device()
    }

    /// The values as `f32`, copied to the host in row-major order.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.storage.to_f32_vec()
    }

    /// The storage, for backends.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Fails with [`Error::InvalidShape`] unless the tensor has rank `rank`.
    pub(crate) fn expect_rank(&self, op: &'static str, rank: usize) -> Result<()> {
        if self.rank() == rank {
            Ok(())
        } else {
            Err(Error::InvalidShape {
                op,
                shape: self.shape.clone(),
                reason: format!("expected rank {rank}"),
            })
        }
    }

    /// The same data with another shape of equal element count. Never copies.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape.clone(),
                rhs: shape,
            });
        }
        Ok(Tensor {
            storage: Arc::clone(&self.storage),
            shape,
        })
    }

    /// The tensor on `device` (a cheap clone when it is already there). The dtype is kept, except
    /// on the CPU, which holds only `f32`.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let data = self.to_vec()?;
        let moved = Tensor::from_vec(data, self.shape.clone(), device)?;
        if device.is_cpu() {
            Ok(moved)
        } else {
            moved.to_dtype(self.dtype())
        }
    }

    /// The tensor converted to `dtype` (round to nearest even; a cheap clone when it already has
    /// it). CPU tensors are always `f32`.
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for `f16`/`bf16` on the CPU; a device error on CUDA.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        match self.storage() {
            Storage::Cpu(_) => Err(Error::UnsupportedDType {
                op: "to_dtype",
                dtype,
                device: self.device().to_string(),
            }),
            Storage::Cuda(c) => Ok(Tensor::from_storage(
                Storage::Cuda(c.to_dtype(dtype)?),
                self.shape.clone(),
            )),
        }
    }

    /// A tensor from raw `f16` or `bf16` bit patterns (as stored in safetensors files), on
    /// `device` in that dtype. On the CPU the values are widened to `f32`.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] when the count does not match the shape,
    /// [`Error::UnsupportedDType`] for `dtype` = `f32`, or a device error.
    pub fn from_half_bits(
        bits: &[u16],
        dtype: DType,
        shape: impl Into<Shape>,
        device: Device,
    ) -> Result<Self> {
        let shape = shape.into();
        if shape.elem_count() != bits.len() {
            return Err(Error::InvalidShape {
                op: "from_half_bits",
                shape,
                reason: format!("{} values given", bits.len()),
            });
        }
        let widen = |b: &u16| match dtype {
            DType::BF16 => half::bf16::from_bits(*b).to_f32(),
            _ => half::f16::from_bits(*b).to_f32(),
        };
        match (dtype, device) {
            (DType::F32, _) => Err(Error::UnsupportedDType {
                op: "from_half_bits",
                dtype,
                device: device.to_string(),
            }),
            (_, Device::Cpu) => Ok(Tensor::from_storage(
                Storage::Cpu(crate::backend::cpu::pool::CpuBuffer::new(
                    bits.iter().map(widen).collect(),
                )),
                shape,
            )),
            (_, Device::Cuda(ordinal)) => Ok(Tensor::from_storage(
                Storage::Cuda(crate::backend::cuda::CudaStorage::from_half_bits(
                    bits, dtype, ordinal,
                )?),
                shape,
            )),
        }
    }

    /// Largest absolute difference between two tensors of the same shape (a test helper).
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        if self.shape != other.shape {
            return Err(Error::ShapeMismatch {
                op: "max_abs_diff",
                lhs: self.shape.clone(),
                rhs: other.shape.clone(),
            });
        }
        let a = self.to_vec()?;
        let b = other.to_vec()?;
        Ok(a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max))
    }
}
