//! Tensor operations. Each checks its operands, then dispatches on the storage's device.
//!
//! This file is the seam between model code and backends: models call only these methods, and a
//! backend is added by giving each `match` below its arm.

use super::{Shape, Tensor};
use crate::backend::Storage;
use crate::backend::cpu::{attention, conv, elementwise, layout, norm, pool};
use crate::backend::cuda::CudaStorage;
use crate::error::{Error, Result};

/// Element-wise activation functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// No activation.
    Identity,
    /// `x * sigmoid(x)`, also called swish.
    Silu,
    /// The exact (`erf`) GELU.
    Gelu,
    /// `x * sigmoid(1.702 x)`, as OpenAI's CLIP uses.
    QuickGelu,
}

/// Stride and padding of a 2-D convolution. Padding may differ per side (the VAE encoder's
/// downsampling pads only bottom and right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output pixels, in input pixels (both axes).
    pub stride: usize,
    /// Zero rows added above.
    pub pad_top: usize,
    /// Zero columns added on the left.
    pub pad_left: usize,
    /// Zero rows added below.
    pub pad_bottom: usize,
    /// Zero columns added on the right.
    pub pad_right: usize,
}

impl Conv2dParams {
    /// The same padding on every side.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride,
            pad_top: padding,
            pad_left: padding,
            pad_bottom: padding,
            pad_right: padding,
        }
    }
}

/// Borrows the host data of a CPU tensor. CUDA tensors are handled by their own arm in each op.
fn cpu(t: &Tensor) -> &[f32] {
    match t.storage() {
        Storage::Cpu(v) => v,
        // Every op checks that its operands share a device before calling this.
        #[allow(unreachable_patterns)]
        Storage::Cuda(_) => unreachable!("CPU op given a CUDA operand after the device check"),
    }
}

/// Borrows the device storage of a CUDA tensor (the CUDA arm of an op, after the device check).
fn cuda(t: &Tensor) -> Result<&CudaStorage> {
    match t.storage() {
        Storage::Cuda(c) => Ok(c),
        Storage::Cpu(_) => Err(Error::Internal(
            "CUDA op given a CPU operand after the device check".into(),
        )),
    }
}

fn cuda_tensor(storage: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(storage), shape.into())
}

fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() == b.device() {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            op,
            lhs: a.device().to_string(),
            rhs: b.device().to_string(),
        })
    }
}

fn cpu_tensor(data: Vec<f32>, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cpu(pool::CpuBuffer::new(data)), shape.into())
}

impl Tensor {
    // --- element-wise -------------------------------------------------------------------------

    /// Applies an activation element-wise.
    pub fn activate(&self, act: Activation) -> Result<Tensor> {
        match self.storage() {
            Storage::Cpu(x) => {
                let mut out = pool::copy_of(x);
                elementwise::activation_inplace(&mut out, act);
                Ok(cpu_tensor(out, self.shape.clone()))
            }
            Storage::Cuda(x) => Ok(cuda_tensor(x.activate(act)?, self.shape.clone())),
        }
    }

    /// `x * sigmoid(x)`.
    pub fn silu(&self) -> Result<Tensor> {
        self.activate(Activation::Silu)
    }

    /// Exact (`erf`) GELU.
    pub fn gelu(&self) -> Result<Tensor> {
        self.activate(Activation::Gelu)
    }

    /// `exp(x)`, element-wise.
    pub fn exp(&self) -> Result<Tensor> {
        match self.storage() {
            Storage::Cpu(x) => {
                let mut out = pool::copy_of(x);
                elementwise::map_inplace(&mut out, f32::exp);
                Ok(cpu_tensor(out, self.shape.clone()))
            }
            Storage::Cuda(x) => Ok(cuda_tensor(x.exp()?, self.shape.clone())),
        }
    }

    /// `x * mul + add`, element-wise.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        match self.storage() {
            Storage::Cpu(x) => {
                let mut out = pool::copy_of(x);
                elementwise::map_inplace(&mut out, |v| v * mul + add);
                Ok(cpu_tensor(out, self.shape.clone()))
            }
            Storage::Cuda(x) => Ok(cuda_tensor(x.affine(mul, add)?, self.shape.clone())),
        }
    }

    /// `x * factor`.
    pub fn scale(&self, factor: f32) -> Result<Tensor> {
        self.affine(factor, 0.0)
    }

    /// Clamps every element into `[min, max]`.
    pub fn clamp(&self, min: f32, max: f32) -> Result<Tensor> {
        match self.storage() {
            Storage::Cpu(x) => {
                let mut out = pool::copy_of(x);
                elementwise::map_inplace(&mut out, |v| v.clamp(min, max));
                Ok(cpu_tensor(out, self.shape.clone()))
            }
            Storage::Cuda(x) => Ok(cuda_tensor(x.clamp(min, max)?, self.shape.clone())),
        }
    }

    fn binary(&self, other: &Tensor, op: elementwise::BinaryOp) -> Result<Tensor> {
        same_device(op.name(), self, other)?;
        let out_shape =
            elementwise::broadcast_shape(self.dims(), other.dims()).ok_or_else(|| {
                Error::ShapeMismatch {
                    op: op.name(),
                    lhs: self.shape.clone(),
                    rhs: other.shape.clone(),
                }
            })?;
        match self.storage() {
            Storage::Cpu(a) => {
                let out =
                    elementwise::binary(op, a, self.dims(), cpu(other), other.dims(), &out_shape);
                Ok(cpu_tensor(out, out_shape))
            }
            Storage::Cuda(a) => Ok(cuda_tensor(
                a.binary(self.dims(), cuda(other)?, other.dims(), &out_shape, op)?,
                out_shape,
            )),
        }
    }

    /// Element-wise sum with numpy broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, elementwise::BinaryOp::Add)
    }

    /// Element-wise difference with numpy broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, elementwise::BinaryOp::Sub)
    }

    /// Element-wise product with numpy broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, elementwise::BinaryOp::Mul)
    }

    /// Element-wise quotient with numpy broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, elementwise::BinaryOp::Div)
    }

    /// `Σ coefficients[i] · tensors[i]`, for tensors of one shape: the form of every scheduler
    /// update, done in one pass.
    pub fn linear_combination(terms: &[(f32, &Tensor)]) -> Result<Tensor> {
        let Some(&(_, first)) = terms.first() else {
            return Err(Error::invalid_argument(
                "terms",
                "linear_combination of nothing",
            ));
        };
        for &(_, t) in terms {
            if t.shape != first.shape {
                return Err(Error::ShapeMismatch {
                    op: "linear_combination",
                    lhs: first.shape.clone(),
                    rhs: t.shape.clone(),
                });
            }
            same_device("linear_combination", first, t)?;
        }
        match first.storage() {
            Storage::Cpu(_) => {
                let mut out = vec![0.0f32; first.elem_count()];
                for &(coef, t) in terms {
                    out.iter_mut()
                        .zip(cpu(t))
                        .for_each(|(o, &v)| *o += coef * v);
                }
                Ok(cpu_tensor(out, first.shape.clone()))
            }
            Storage::Cuda(x) => {
                let cuda_terms = terms
                    .iter()
                    .map(|&(coef, t)| Ok((coef, cuda(t)?)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(cuda_tensor(
                    x.linear_combination(&cuda_terms)?,
                    first.shape.clone(),
                ))
            }
        }
    }

    /// GEGLU over the last dimension: `[.., 2h] → [.., h]`, `a * gelu(gate)` where the input is
    /// `[a, gate]`.
    pub fn geglu(&self) -> Result<Tensor> {
        let last = *self.dims().last().unwrap_or(&0);
        if !last.is_multiple_of(2) || last == 0 {
            return Err(Error::InvalidShape {
                op: "geglu",
                shape: self.shape.clone(),
                reason: "last dimension must be even".into(),
            });
        }
        let mut dims = self.dims().to_vec();
        if let Some(l) = dims.last_mut() {
            *l /= 2;
        }
        match self.storage() {
            Storage::Cpu(x) => Ok(cpu_tensor(elementwise::geglu(x, last), dims)),
            Storage::Cuda(x) => {
                let rows = self.elem_count() / last;
                Ok(cuda_tensor(x.geglu(rows, last / 2)?, dims))
            }
        }
    }

    // --- products ------------------------------------------------------------------------------

    /// `x · weightᵀ + bias` over the last dimension: `x` is `[.., in]`, `weight` is `[out, in]`
    /// (PyTorch's `nn.Linear` layout), `bias` is `[out]`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        weight.expect_rank("linear", 2)?;
        same_device("linear", self, weight)?;
        let (out_f, in_f) = (weight.dims()[0], weight.dims()[1]);
        if self.dims().last() != Some(&in_f) {
            return Err(Error::ShapeMismatch {
                op: "linear",
                lhs: self.shape.clone(),
                rhs: weight.shape.clone(),
            });
        }
        if let Some(b) = bias {
            same_device("linear", self, b)?;
            if b.dims() != [out_f] {
                return Err(Error::ShapeMismatch {
                    op: "linear bias",
                    lhs: weight.shape.clone(),
                    rhs: b.shape.clone(),
                });
            }
        }
        let rows = self.elem_count() / in_f.max(1);
        let mut dims = self.dims().to_vec();
        if let Some(l) = dims.last_mut() {
            *l = out_f;
        }
        match self.storage() {
            Storage::Cpu(x) => {
                use crate::backend::cpu::gemm::{MatRef, Threads, sgemm};
                // Every element is written: bias rows then accumulated products, or products.
                let mut out = pool::take(rows * out_f);
                if let Some(b) = bias {
                    out.chunks_mut(out_f.max(1))
                        .for_each(|row| row.copy_from_slice(cpu(b)));
                }
                sgemm(
                    rows,
                    out_f,
                    in_f,
                    MatRef::row_major(x, in_f),
                    MatRef::transposed(cpu(weight), in_f),
                    &mut out,
                    bias.is_some(),
                    Threads::All,
                );
                Ok(cpu_tensor(out, dims))
            }
            Storage::Cuda(x) => {
                let bias = bias.map(cuda).transpose()?;
                Ok(cuda_tensor(
                    x.linear(cuda(weight)?, bias, rows, in_f, out_f)?,
                    dims,
                ))
            }
        }
    }

    /// Batched matrix product: `[.., m, k] x [.., k, n] → [.., m, n]`; the batch dimensions must
    /// be equal, or `rhs` may be a single matrix shared by every batch.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        same_device("matmul", self, rhs)?;
        let mismatch = || Error::ShapeMismatch {
            op: "matmul",
            lhs: self.shape.clone(),
            rhs: rhs.shape.clone(),
        };
        if self.rank() < 2 || rhs.rank() < 2 {
            return Err(mismatch());
        }
        let (ld, rd) = (self.dims(), rhs.dims());
        let (m, k) = (ld[ld.len() - 2], ld[ld.len() - 1]);
        let (k2, n) = (rd[rd.len() - 2], rd[rd.len() - 1]);
        let batch: usize = ld[..ld.len() - 2].iter().product();
        let shared_rhs = rhs.rank() == 2;
        if k != k2 || (!shared_rhs && ld[..ld.len() - 2] != rd[..rd.len() - 2]) {
            return Err(mismatch());
        }
        let mut dims = ld.to_vec();
        let last = dims.len() - 1;
        dims[last] = n;
        match self.storage() {
            Storage::Cpu(a) => {
                use crate::backend::cpu::gemm::{MatRef, Threads, sgemm};
                let b = cpu(rhs);
                // Every element is written by the products below.
                let mut out = pool::take(batch * m * n);
                for i in 0..batch {
                    let rb = if shared_rhs { 0 } else { i * k * n };
                    sgemm(
                        m,
                        n,
                        k,
                        MatRef::row_major(&a[i * m * k..], k),
                        MatRef::row_major(&b[rb..], n),
                        &mut out[i * m * n..(i + 1) * m * n],
                        false,
                        Threads::All,
                    );
                }
                Ok(cpu_tensor(out, dims))
            }
            Storage::Cuda(a) => Ok(cuda_tensor(
                a.matmul(cuda(rhs)?, batch, m, k, n, shared_rhs)?,
                dims,
            )),
        }
    }

    /// 2-D convolution of an NHWC tensor `[b, h, w, c_in]` with an HWIO weight
    /// `[kh, kw, c_in, c_out]` and an optional bias `[c_out]`. Returns `[b, oh, ow, c_out]`.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Result<Tensor> {
        self.expect_rank("conv2d", 4)?;
        weight.expect_rank("conv2d weight", 4)?;
        same_device("conv2d", self, weight)?;
        let [b, h, w, c_in] = [
            self.dims()[0],
            self.dims()[1],
            self.dims()[2],
            self.dims()[3],
        ];
        let [kh, kw, wc_in, c_out] = [
            weight.dims()[0],
            weight.dims()[1],
            weight.dims()[2],
            weight.dims()[3],
        ];
        if wc_in != c_in {
            return Err(Error::ShapeMismatch {
                op: "conv2d",
                lhs: self.shape.clone(),
                rhs: weight.shape.clone(),
            });
        }
        if params.stride == 0
            || h + params.pad_top + params.pad_bottom < kh
            || w + params.pad_left + params.pad_right < kw
        {
            return Err(Error::InvalidShape {
                op: "conv2d",
                shape: self.shape.clone(),
                reason: format!("input smaller than the {kh}x{kw} kernel or zero stride"),
            });
        }
        if let Some(bias) = bias {
            same_device("conv2d", self, bias)?;
            if bias.dims() != [c_out] {
                return Err(Error::ShapeMismatch {
                    op: "conv2d bias",
                    lhs: weight.shape.clone(),
                    rhs: bias.shape.clone(),
                });
            }
        }
        let g = conv::ConvGeometry {
            batch: b,
            in_h: h,
            in_w: w,
            c_in,
            kh,
            kw,
            c_out,
            params,
        };
        let dims = [b, g.out_h(), g.out_w(), c_out];
        match self.storage() {
            Storage::Cpu(x) => {
                let out = conv::conv2d_nhwc(x, cpu(weight), bias.map(cpu), g);
                Ok(cpu_tensor(out, dims))
            }
            Storage::Cuda(x) => {
                let bias = bias.map(cuda).transpose()?;
                Ok(cuda_tensor(x.conv2d(cuda(weight)?, bias, g)?, dims))
            }
        }
    }

    // --- normalisation -------------------------------------------------------------------------

    /// Group norm over the last (channel) dimension of `[b, .., c]`, statistics per batch item and
    /// group over every middle position, followed by `act`.
    pub fn group_norm(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        act: Activation,
    ) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::InvalidShape {
                op: "group_norm",
                shape: self.shape.clone(),
                reason: "expected [batch, .., channels]".into(),
            });
        }
        let c = *self.dims().last().unwrap_or(&0);
        if groups == 0 || !c.is_multiple_of(groups) {
            return Err(Error::InvalidShape {
                op: "group_norm",
                shape: self.shape.clone(),
                reason: format!("{c} channels do not split into {groups} groups"),
            });
        }
        for p in [gamma, beta] {
            same_device("group_norm", self, p)?;
            if p.dims() != [c] {
                return Err(Error::ShapeMismatch {
                    op: "group_norm affine",
                    lhs: self.shape.clone(),
                    rhs: p.shape.clone(),
                });
            }
        }
        let b = self.dims()[0];
        let spatial = self.elem_count() / (b * c).max(1);
        match self.storage() {
            Storage::Cpu(x) => {
                let out = norm::group_norm_nhwc(
                    x,
                    b,
                    spatial,
                    c,
                    groups,
                    cpu(gamma),
                    cpu(beta),
                    eps,
                    act,
                );
                Ok(cpu_tensor(out, self.shape.clone()))
            }
            Storage::Cuda(x) => Ok(cuda_tensor(
                x.group_norm(b, spatial, c, groups, cuda(gamma)?, cuda(beta)?, eps, act)?,
                self.shape.clone(),
            )),
        }
    }

    /// Layer norm over the last dimension.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        let width = *self.dims().last().unwrap_or(&0);
        for p in [gamma, beta] {
            same_device("layer_norm", self, p)?;
            if p.dims() != [width] {
                return Err(Error::ShapeMismatch {
                    op: "layer_norm affine",
                    lhs: self.shape.clone(),
                    rhs: p.shape.clone(),
                });
            }
        }
        match self.storage() {
            Storage::Cpu(x) => Ok(cpu_tensor(
                norm::layer_norm(x, width, cpu(gamma), cpu(beta), eps),
                self.shape.clone(),
            )),
            Storage::Cuda(x) => Ok(cuda_tensor(
                x.layer_norm(width, cuda(gamma)?, cuda(beta)?, eps)?,
                self.shape.clone(),
            )),
        }
    }

    /// Softmax over the last dimension.
    pub fn softmax_last_dim(&self) -> Result<Tensor> {
        let width = *self.dims().last().unwrap_or(&1);
        match self.storage() {
            Storage::Cpu(x) => {
                let mut out = pool::copy_of(x);
                attention::softmax_rows_scaled(&mut out, width.max(1), 1.0);
                Ok(cpu_tensor(out, self.shape.clone()))
            }
            Storage::Cuda(x) => Ok(cuda_tensor(x.softmax_last_dim(width)?, self.shape.clone())),
        }
    }

    // --- attention -----------------------------------------------------------------------------

    /// Multi-head attention `softmax(q kᵀ · scale) v`. `q` is `[b, q_len, heads·d]`, `k` and `v`
    /// are `[b, kv_len, heads·d]`; returns `[b, q_len, heads·d]`. With `causal`, query `i` sees
    /// keys `0..=i` only. Scores are computed in blocks of query rows, so memory grows with
    /// `kv_len x block`, never `q_len x kv_len`.
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f32,
        causal: bool,
    ) -> Result<Tensor> {
        for t in [q, k, v] {
            t.expect_rank("attention", 3)?;
        }
        same_device("attention", q, k)?;
        same_device("attention", q, v)?;
        let (b, q_len, width) = (q.dims()[0], q.dims()[1], q.dims()[2]);
        let kv_len = k.dims()[1];
        if k.dims() != [b, kv_len, width] || v.dims() != k.dims() {
            return Err(Error::ShapeMismatch {
                op: "attention",
                lhs: q.shape.clone(),
                rhs: if k.dims() != [b, kv_len, width] {
                    k.shape.clone()
                } else {
                    v.shape.clone()
                },
            });
        }
        if heads == 0 || width % heads != 0 {
            return Err(Error::InvalidShape {
                op: "attention",
                shape: q.shape.clone(),
                reason: format!("width {width} does not split into {heads} heads"),
            });
        }
        let shape = attention::AttentionShape {
            batch: b,
            q_len,
            kv_len,
            heads,
            head_dim: width / heads,
        };
        match q.storage() {
            Storage::Cpu(qd) => Ok(cpu_tensor(
                attention::attention(qd, cpu(k), cpu(v), shape, scale, causal),
                q.shape.clone(),
            )),
            Storage::Cuda(x) => Ok(cuda_tensor(
                x.attention(cuda(k)?, cuda(v)?, shape, scale, causal)?,
                q.shape.clone(),
            )),
        }
    }

    // --- layout --------------------------------------------------------------------------------

    /// Reorders dimensions: output dimension `i` is input dimension `perm[i]`. Copies.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        let valid = perm.len() == self.rank()
            && perm
                .iter()
                .all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::InvalidShape {
                op: "permute",
                shape: self.shape.clone(),
                reason: format!("{perm:?} is not a permutation of its dimensions"),
            });
        }
        let dims: Vec<usize> = perm.iter().map(|&p| self.dims()[p]).collect();
        match self.storage() {
            Storage::Cpu(x) => Ok(cpu_tensor(layout::permute(x, self.dims(), perm), dims)),
            Storage::Cuda(x) => Ok(cuda_tensor(x.permute(self.dims(), perm)?, dims)),
        }
    }

    /// NCHW → NHWC.
    pub fn nchw_to_nhwc(&self) -> Result<Tensor> {
        self.expect_rank("nchw_to_nhwc", 4)?;
        self.permute(&[0, 2, 3, 1])
    }

    /// NHWC → NCHW.
    pub fn nhwc_to_nchw(&self) -> Result<Tensor> {
        self.expect_rank("nhwc_to_nchw", 4)?;
        self.permute(&[0, 3, 1, 2])
    }

    /// `len` entries of dimension `dim` starting at `start`. Copies.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let size = self.dims().get(dim).copied();
        match size {
            Some(size) if start.checked_add(len).is_some_and(|end| end <= size) => {}
            _ => {
                return Err(Error::InvalidShape {
                    op: "narrow",
                    shape: self.shape.clone(),
                    reason: format!("dim {dim}, range {start}..{}", start.saturating_add(len)),
                });
            }
        }
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        match self.storage() {
            Storage::Cpu(x) => Ok(cpu_tensor(
                layout::narrow(x, self.dims(), dim, start, len),
                dims,
            )),
            Storage::Cuda(x) => Ok(cuda_tensor(x.narrow(self.dims(), dim, start, len)?, dims)),
        }
    }

    /// Splits dimension `dim` into `n` equal parts.
    pub fn chunk(&self, n: usize, dim: usize) -> Result<Vec<Tensor>> {
        let size = self.dims().get(dim).copied().unwrap_or(0);
        if n == 0 || size % n != 0 {
            return Err(Error::InvalidShape {
                op: "chunk",
                shape: self.shape.clone(),
                reason: format!("dim {dim} does not split into {n} parts"),
            });
        }
        let part = size / n;
        (0..n).map(|i| self.narrow(dim, i * part, part)).collect()
    }

    /// Concatenates tensors along `dim`; all other dimensions must agree.
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let Some(first) = tensors.first() else {
            return Err(Error::invalid_argument("tensors", "cat of nothing"));
        };
        if dim >= first.rank() {
            return Err(Error::InvalidShape {
                op: "cat",
                shape: first.shape.clone(),
                reason: format!("no dimension {dim}"),
            });
        }
        let mut total = 0;
        for t in tensors {
            same_device("cat", first, t)?;
            let compatible = t.rank() == first.rank()
                && t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(i, (a, b))| i == dim || a == b);
            if !compatible {
                return Err(Error::ShapeMismatch {
                    op: "cat",
                    lhs: first.shape.clone(),
                    rhs: t.shape.clone(),
                });
            }
            total += t.dims()[dim];
        }
        let mut dims = first.dims().to_vec();
        dims[dim] = total;
        match first.storage() {
            Storage::Cpu(_) => {
                let parts: Vec<(&[f32], &[usize])> =
                    tensors.iter().map(|t| (cpu(t), t.dims())).collect();
                Ok(cpu_tensor(layout::cat(&parts, dim), dims))
            }
            Storage::Cuda(x) => {
                let parts = tensors
                    .iter()
                    .map(|t| Ok((cuda(t)?, t.dims())))
                    .collect::<Result<Vec<_>>>()?;
                Ok(cuda_tensor(x.cat(&parts, dim)?, dims))
            }
        }
    }

    /// Nearest-neighbour 2x upsampling of an NHWC tensor.
    pub fn upsample_nearest2x(&self) -> Result<Tensor> {
        self.expect_rank("upsample_nearest2x", 4)?;
        let [b, h, w, c] = [
            self.dims()[0],
            self.dims()[1],
            self.dims()[2],
            self.dims()[3],
        ];
        match self.storage() {
            Storage::Cpu(x) => Ok(cpu_tensor(
                layout::upsample_nearest2x_nhwc(x, b, h, w, c),
                [b, 2 * h, 2 * w, c],
            )),
            Storage::Cuda(x) => Ok(cuda_tensor(
                x.upsample_nearest([b, h, w, c], 2 * h, 2 * w)?,
                [b, 2 * h, 2 * w, c],
            )),
        }
    }

    /// Nearest-neighbour resize of an NHWC tensor to `out_h x out_w`, with PyTorch's
    /// `interpolate(mode="nearest", size=…)` index rule (`floor(dst · in / out)` in `f32`).
    pub fn upsample_nearest(&self, out_h: usize, out_w: usize) -> Result<Tensor> {
        self.expect_rank("upsample_nearest", 4)?;
        let [b, h, w, c] = [
            self.dims()[0],
            self.dims()[1],
            self.dims()[2],
            self.dims()[3],
        ];
        if out_h == 2 * h && out_w == 2 * w {
            return self.upsample_nearest2x();
        }
        match self.storage() {
            Storage::Cpu(x) => Ok(cpu_tensor(
                layout::upsample_nearest_nhwc(x, [b, h, w, c], out_h, out_w),
                [b, out_h, out_w, c],
            )),
            Storage::Cuda(x) => Ok(cuda_tensor(
                x.upsample_nearest([b, h, w, c], out_h, out_w)?,
                [b, out_h, out_w, c],
            )),
        }
    }

    /// Rows `ids` of a `[rows, width]` table (an embedding lookup); returns `[ids.len(), width]`.
    pub fn gather_rows(&self, ids: &[usize]) -> Result<Tensor> {
        self.expect_rank("gather_rows", 2)?;
        let (rows, width) = (self.dims()[0], self.dims()[1]);
        if let Some(&bad) = ids.iter().find(|&&i| i >= rows) {
            return Err(Error::invalid_argument(
                "ids",
                format!("row {bad} out of range for a table of {rows} rows"),
            ));
        }
        match self.storage() {
            Storage::Cpu(x) => Ok(cpu_tensor(
                layout::gather_rows(x, width, ids),
                [ids.len(), width],
            )),
            Storage::Cuda(x) => Ok(cuda_tensor(x.gather_rows(width, ids)?, [ids.len(), width])),
        }
    }
}
