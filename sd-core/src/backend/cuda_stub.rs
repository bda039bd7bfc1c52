//! Stand-in for the CUDA backend when sd-core is built without the `cuda` feature.
//!
//! [`CudaStorage`] has no values, so no CUDA tensor can exist and every method below is
//! statically unreachable; the entry points that create storage report that this build has no
//! CUDA support. The method signatures mirror `backend/cuda/` so that `tensor/ops.rs` is the same
//! code in both builds.

#![allow(clippy::too_many_arguments)]

#[path = "cuda/error.rs"]
pub mod error;

pub use error::CudaError;

use crate::backend::cpu::attention::AttentionShape;
use crate::backend::cpu::conv::ConvGeometry;
use crate::backend::cpu::elementwise::BinaryOp;
use crate::error::{Error, Result};
use crate::tensor::{Activation, DType, Device};

/// CUDA device memory. Uninhabited in builds without the `cuda` feature.
pub(crate) enum CudaStorage {}

fn no_cuda(ordinal: usize) -> Error {
    Error::DeviceUnavailable {
        device: format!("cuda:{ordinal}"),
        reason: "sd-core was built without the `cuda` feature".into(),
    }
}

impl CudaStorage {
    /// Always fails: this build has no CUDA backend.
    pub(crate) fn from_f32(_data: &[f32], ordinal: usize) -> Result<Self> {
        Err(no_cuda(ordinal))
    }

    /// Always fails: this build has no CUDA backend.
    pub(crate) fn from_half_bits(_bits: &[u16], _dtype: DType, ordinal: usize) -> Result<Self> {
        Err(no_cuda(ordinal))
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

    pub(crate) fn to_dtype(&self, _dtype: DType) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn activate(&self, _act: Activation) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn exp(&self) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn affine(&self, _mul: f32, _add: f32) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn clamp(&self, _min: f32, _max: f32) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn binary(
        &self,
        _lhs_dims: &[usize],
        _rhs: &CudaStorage,
        _rhs_dims: &[usize],
        _out_dims: &[usize],
        _op: BinaryOp,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn linear_combination(&self, _terms: &[(f32, &CudaStorage)]) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn geglu(&self, _rows: usize, _half: usize) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn linear(
        &self,
        _weight: &CudaStorage,
        _bias: Option<&CudaStorage>,
        _rows: usize,
        _in_f: usize,
        _out_f: usize,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn matmul(
        &self,
        _rhs: &CudaStorage,
        _batch: usize,
        _m: usize,
        _k: usize,
        _n: usize,
        _shared_rhs: bool,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn conv2d(
        &self,
        _weight: &CudaStorage,
        _bias: Option<&CudaStorage>,
        _g: ConvGeometry,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn group_norm(
        &self,
        _batch: usize,
        _spatial: usize,
        _channels: usize,
        _groups: usize,
        _gamma: &CudaStorage,
        _beta: &CudaStorage,
        _eps: f64,
        _act: Activation,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn layer_norm(
        &self,
        _width: usize,
        _gamma: &CudaStorage,
        _beta: &CudaStorage,
        _eps: f64,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn softmax_last_dim(&self, _width: usize) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn attention(
        &self,
        _k: &CudaStorage,
        _v: &CudaStorage,
        _s: AttentionShape,
        _scale: f32,
        _causal: bool,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn permute(&self, _dims: &[usize], _perm: &[usize]) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn narrow(
        &self,
        _dims: &[usize],
        _dim: usize,
        _start: usize,
        _len: usize,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn cat(
        &self,
        _parts: &[(&CudaStorage, &[usize])],
        _dim: usize,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn upsample_nearest(
        &self,
        _dims: [usize; 4],
        _out_h: usize,
        _out_w: usize,
    ) -> Result<CudaStorage> {
        match *self {}
    }

    pub(crate) fn gather_rows(&self, _width: usize, _ids: &[usize]) -> Result<CudaStorage> {
        match *self {}
    }
}
