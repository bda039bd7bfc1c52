//! The tensor operations on CUDA storage: argument checks specific to the kernels, launch
//! geometry, and the calls into `kernels/*.cu` and cuBLASLt. Shape checks common to every backend
//! are done before these are called (in `tensor/ops.rs`).

use std::sync::Arc;

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::CudaStorage;
use super::compile::KernelModule;
use super::device::{CudaDevice, driver_err};
use super::error::CudaError;
use super::gemm::{GemmSpec, Operand};
use crate::backend::cpu::attention::AttentionShape;
use crate::backend::cpu::conv::ConvGeometry;
use crate::backend::cpu::elementwise::BinaryOp;
use crate::error::{Error, Result};
use crate::tensor::{Activation, DType};

/// Launches kernel `$name` (`<name>_<dtype>`, or bare with `None`) of `$module` on the device's
/// stream with the given argument references.
macro_rules! launch {
    ($dev:expr, $module:expr, $name:literal, $dtype:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let function = $dev.function($module, $name, $dtype)?;
        let stream = Arc::clone($dev.stream());
        let mut builder = stream.launch_builder(&function);
        $( builder.arg($arg); )+
        // SAFETY: the arguments match, in order and C type, the `extern "C"` kernel `$name` in
        // `kernels/*.cu` (u64 for pointers and u64 counts, i32 for int, f32 for float, #[repr(C)]
        // mirrors for structs); every pointer is a live allocation on this device holding at least
        // the elements the kernel indexes, which the calling op derives from validated shapes; the
        // launch is ordered on the device's single stream after the writes of its inputs.
        unsafe { builder.launch($cfg) }.map_err(driver_err(concat!("launch ", $name)))?;
    }};
}

const BLOCK: u32 = 256;

/// A grid-stride launch over `n` elements.
fn grid(n: u64) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as u64).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn unsupported(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Cuda(CudaError::Unsupported {
        op,
        reason: reason.into(),
    })
}

fn to_i32(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| unsupported(op, format!("size {v} exceeds the kernels' 32-bit index")))
}

const MAX_RANK: usize = 6;

#[repr(C)]
#[derive(Clone, Copy)]
struct BcastInfo {
    rank: i32,
    dims: [i32; MAX_RANK],
    a_strides: [i64; MAX_RANK],
    b_strides: [i64; MAX_RANK],
}
// SAFETY: #[repr(C)] plain data laid out exactly as `struct BcastInfo` in kernels/elementwise.cu.
unsafe impl DeviceRepr for BcastInfo {}

#[repr(C)]
#[derive(Clone, Copy)]
struct LinComb {
    ptrs: [u64; 8],
    coefs: [f32; 8],
    terms: i32,
}
// SAFETY: #[repr(C)] plain data laid out exactly as `struct LinComb` in kernels/elementwise.cu.
unsafe impl DeviceRepr for LinComb {}

#[repr(C)]
#[derive(Clone, Copy)]
struct PermInfo {
    rank: i32,
    dims: [i32; MAX_RANK],
    src_strides: [i64; MAX_RANK],
}
// SAFETY: #[repr(C)] plain data laid out exactly as `struct PermInfo` in kernels/layout.cu.
unsafe impl DeviceRepr for PermInfo {}

#[repr(C)]
#[derive(Clone, Copy)]
struct ConvGeom {
    b: i32,
    h: i32,
    w: i32,
    c: i32,
    kh: i32,
    kw: i32,
    oh: i32,
    ow: i32,
    stride: i32,
    pad_top: i32,
    pad_left: i32,
}
// SAFETY: #[repr(C)] plain data laid out exactly as `struct ConvGeom` in kernels/layout.cu.
unsafe impl DeviceRepr for ConvGeom {}

#[repr(C)]
#[derive(Clone, Copy)]
struct AttnArgs {
    tq: i32,
    tk: i32,
    heads: i32,
    causal: i32,
    q_bs: i64,
    q_ts: i64,
    k_bs: i64,
    k_ts: i64,
    v_bs: i64,
    v_ts: i64,
    o_bs: i64,
    o_ts: i64,
    scale_log2: f32,
}
// SAFETY: #[repr(C)] plain data laid out exactly as `struct AttnArgs` in kernels/attention.cu.
unsafe impl DeviceRepr for AttnArgs {}

/// Unary op codes of `unary_<dtype>` in kernels/elementwise.cu.
const UNARY_AFFINE: i32 = 0;
const UNARY_EXP: i32 = 4;
const UNARY_CLAMP: i32 = 5;

fn act_code(act: Activation) -> i32 {
    match act {
        Activation::Identity => 0,
        Activation::Silu => 1,
        Activation::Gelu => 2,
        Activation::QuickGelu => 3,
    }
}

/// Whether the flash-attention kernel may be used. `SDRS_CUDA_ATTENTION=gemm` forces the
/// GEMM + softmax + GEMM path everywhere (a fallback, and a baseline for timing the kernel).
fn flash_enabled() -> bool {
    static FLASH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLASH.get_or_init(|| std::env::var("SDRS_CUDA_ATTENTION").map_or(true, |v| v != "gemm"))
}

/// (shared-memory row stride in halves, keys per block, dynamic shared memory in bytes) of the
/// flash kernel for head size `d`; must match SD, BN and the stage count of kernels/attention.cu.
fn flash_geometry(d: usize) -> Option<(usize, usize, usize)> {
    let (stride, bn) = match d {
        40 => (40, 64),
        64 => (72, 64),
        80 => (88, 64),
        160 => (168, 32),
        _ => return None,
    };
    // One 64-row Q tile and two stages of K and V.
    Some((stride, bn, (64 + 4 * bn) * stride * 2))
}

/// Column buffers of im2col are split into chunks of at most this many bytes (the VAE's 512²
/// convolutions would otherwise need > 1 GB).
const IM2COL_CHUNK_BYTES: usize = 256 << 20;
/// Fp32 attention score buffers of the GEMM fallback are split by heads to stay under this.
const SCORES_CHUNK_BYTES: usize = 512 << 20;

/// One product: its shape and the three operands.
type Gemm = (GemmSpec, Operand, Operand, Operand);

fn operand(ptr: u64, ld: usize, trans: bool, batch_stride: usize) -> Operand {
    Operand {
        ptr,
        ld: ld as i64,
        trans,
        batch_stride: batch_stride as i64,
    }
}

fn spec(m: usize, n: usize, k: usize, batch: usize, dtype: DType, out: DType) -> GemmSpec {
    GemmSpec {
        m,
        n,
        k,
        batch,
        in_dtype: dtype,
        out_dtype: out,
    }
}

/// `out[rows, out_f] = x[rows, in_f] · w[out_f, in_f]ᵀ`.
fn linear_gemm(
    x: u64,
    w: u64,
    out: u64,
    rows: usize,
    in_f: usize,
    out_f: usize,
    dt: DType,
) -> Gemm {
    (
        spec(rows, out_f, in_f, 1, dt, dt),
        operand(x, in_f, false, 0),
        operand(w, in_f, true, 0),
        operand(out, out_f, false, 0),
    )
}

/// `out[batch, m, n] = a[batch, m, k] · b[batch or 1, k, n]`; a shared right-hand side folds the
/// batch into M (one larger, better-shaped product).
fn matmul_gemm(
    a: u64,
    b: u64,
    out: u64,
    [batch, m, k, n]: [usize; 4],
    shared_rhs: bool,
    dt: DType,
) -> Gemm {
    let (rows, count) = if shared_rhs {
        (batch * m, 1)
    } else {
        (m, batch)
    };
    (
        spec(rows, n, k, count, dt, dt),
        operand(a, k, false, m * k),
        operand(b, n, false, k * n),
        operand(out, n, false, m * n),
    )
}

/// Output rows `[m0, m0 + rows)` of an NHWC convolution: `a[rows, k]` (im2col rows, or the input
/// itself for a pointwise convolution) times the HWIO weight viewed as `[k, n]`.
fn conv_gemm(a: u64, w: u64, out: u64, [m0, rows, k, n]: [usize; 4], dt: DType) -> Gemm {
    let elt = dt.size_in_bytes() as u64;
    (
        spec(rows, n, k, 1, dt, dt),
        operand(a, k, false, 0),
        operand(w, n, false, 0),
        operand(out + (m0 * n) as u64 * elt, n, false, 0),
    )
}

/// Scores of heads `[h0, h0 + hc)` of batch item `b`: `S[h] = Q_h K_hᵀ` (fp32, `[hc, tq, tk]`),
/// reading each head's columns straight out of the `[b, t, heads·d]` tensors.
fn attention_score_gemm(
    q: u64,
    k: u64,
    scores: u64,
    s: AttentionShape,
    [b, h0, hc]: [usize; 3],
    dt: DType,
) -> Gemm {
    let (d, elt) = (s.head_dim, dt.size_in_bytes() as u64);
    let width = s.heads * d;
    let q_off = ((b * s.q_len * width + h0 * d) as u64) * elt;
    let kv_off = ((b * s.kv_len * width + h0 * d) as u64) * elt;
    (
        spec(s.q_len, s.kv_len, d, hc, dt, DType::F32),
        operand(q + q_off, width, false, d),
        operand(k + kv_off, width, true, d),
        operand(scores, s.kv_len, false, s.q_len * s.kv_len),
    )
}

/// `O_h = P_h V_h` for the heads of [`attention_score_gemm`], written into `[b, t, heads·d]`.
fn attention_value_gemm(
    probs: u64,
    v: u64,
    out: u64,
    s: AttentionShape,
    [b, h0, hc]: [usize; 3],
    dt: DType,
) -> Gemm {
    let (d, elt) = (s.head_dim, dt.size_in_bytes() as u64);
    let width = s.heads * d;
    let o_off = ((b * s.q_len * width + h0 * d) as u64) * elt;
    let kv_off = ((b * s.kv_len * width + h0 * d) as u64) * elt;
    (
        spec(s.q_len, d, s.kv_len, hc, dt, dt),
        operand(probs, s.kv_len, false, s.q_len * s.kv_len),
        operand(v + kv_off, width, false, d),
        operand(out + o_off, width, false, d),
    )
}

impl CudaStorage {
    fn unary(&self, op: i32, a: f32, b: f32) -> Result<CudaStorage> {
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, self.len, self.dtype)?;
        let n = self.len as u64;
        if n > 0 {
            let (x, y) = (self.ptr(), out.ptr());
            launch!(
                dev,
                KernelModule::Elementwise,
                "unary",
                Some(self.dtype),
                grid(n),
                &x,
                &y,
                &n,
                &op,
                &a,
                &b
            );
        }
        Ok(out)
    }

    /// An activation, element-wise.
    pub(crate) fn activate(&self, act: Activation) -> Result<CudaStorage> {
        self.unary(act_code(act), 1.0, 0.0)
    }

    /// `exp(x)`.
    pub(crate) fn exp(&self) -> Result<CudaStorage> {
        self.unary(UNARY_EXP, 0.0, 0.0)
    }

    /// `x * mul + add`.
    pub(crate) fn affine(&self, mul: f32, add: f32) -> Result<CudaStorage> {
        self.unary(UNARY_AFFINE, mul, add)
    }

    /// Clamp into `[min, max]`.
    pub(crate) fn clamp(&self, min: f32, max: f32) -> Result<CudaStorage> {
        self.unary(UNARY_CLAMP, min, max)
    }

    /// A copy converted to `dtype` (round to nearest even).
    pub(crate) fn to_dtype(&self, dtype: DType) -> Result<CudaStorage> {
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, self.len, dtype)?;
        let n = self.len as u64;
        if n > 0 {
            let (x, y) = (self.ptr(), out.ptr());
            let cfg = grid(n);
            match dtype {
                DType::F32 => launch!(
                    dev,
                    KernelModule::Elementwise,
                    "cast_to_f32",
                    Some(self.dtype),
                    cfg,
                    &x,
                    &y,
                    &n
                ),
                DType::F16 => launch!(
                    dev,
                    KernelModule::Elementwise,
                    "cast_to_f16",
                    Some(self.dtype),
                    cfg,
                    &x,
                    &y,
                    &n
                ),
                DType::BF16 => launch!(
                    dev,
                    KernelModule::Elementwise,
                    "cast_to_bf16",
                    Some(self.dtype),
                    cfg,
                    &x,
                    &y,
                    &n
                ),
            }
        }
        Ok(out)
    }

    /// Element-wise `op` with numpy broadcasting of `lhs_dims` and `rhs_dims` to `out_dims`.
    pub(crate) fn binary(
        &self,
        lhs_dims: &[usize],
        rhs: &CudaStorage,
        rhs_dims: &[usize],
        out_dims: &[usize],
        op: BinaryOp,
    ) -> Result<CudaStorage> {
        self.check_same(op.name(), rhs)?;
        let rank = out_dims.len();
        if rank > MAX_RANK {
            return Err(unsupported(
                op.name(),
                format!("rank {rank} above {MAX_RANK}"),
            ));
        }
        let mut info = BcastInfo {
            rank: rank as i32,
            dims: [1; MAX_RANK],
            a_strides: [0; MAX_RANK],
            b_strides: [0; MAX_RANK],
        };
        for (i, &d) in out_dims.iter().enumerate() {
            info.dims[i] = to_i32(op.name(), d)?;
        }
        for (dims, strides) in [
            (lhs_dims, &mut info.a_strides),
            (rhs_dims, &mut info.b_strides),
        ] {
            let offset = rank - dims.len();
            let mut stride = 1i64;
            for i in (0..dims.len()).rev() {
                strides[offset + i] = if dims[i] == 1 { 0 } else { stride };
                stride *= dims[i] as i64;
            }
        }
        let contiguous = i32::from(lhs_dims == out_dims && rhs_dims == out_dims);
        let code: i32 = match op {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
        };
        let n: usize = out_dims.iter().product();
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, n, self.dtype)?;
        let n = n as u64;
        if n > 0 {
            let (a, b, y) = (self.ptr(), rhs.ptr(), out.ptr());
            launch!(
                dev,
                KernelModule::Elementwise,
                "binary",
                Some(self.dtype),
                grid(n),
                &a,
                &b,
                &y,
                &n,
                &code,
                &contiguous,
                &info
            );
        }
        Ok(out)
    }

    /// `Σ coef_i · x_i` over same-shaped storages (this one being the first term's), accumulated
    /// in fp32 across any number of terms.
    pub(crate) fn linear_combination(&self, terms: &[(f32, &CudaStorage)]) -> Result<CudaStorage> {
        for (_, t) in terms {
            self.check_same("linear_combination", t)?;
        }
        let dev = self.dev();
        let dt = self.dtype;
        let out = CudaStorage::alloc(dev, self.len, dt)?;
        let n = self.len as u64;
        if n == 0 {
            return Ok(out);
        }
        let chunks: Vec<&[(f32, &CudaStorage)]> = terms.chunks(8).collect();
        let acc = if chunks.len() > 1 {
            Some(CudaStorage::alloc(dev, self.len, DType::F32)?)
        } else {
            None
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let mut lc = LinComb {
                ptrs: [0; 8],
                coefs: [0.0; 8],
                terms: chunk.len() as i32,
            };
            for (j, (c, t)) in chunk.iter().enumerate() {
                lc.ptrs[j] = t.ptr();
                lc.coefs[j] = *c;
            }
            let acc_in: u64 = if i == 0 {
                0
            } else {
                acc.as_ref().map_or(0, |a| a.ptr())
            };
            let last = i + 1 == chunks.len();
            if last {
                let y = out.ptr();
                launch!(
                    dev,
                    KernelModule::Elementwise,
                    "lincomb",
                    Some(dt),
                    grid(n),
                    &lc,
                    &acc_in,
                    &y,
                    &n
                );
            } else {
                let y = acc.as_ref().map_or(0, |a| a.ptr());
                launch!(
                    dev,
                    KernelModule::Elementwise,
                    "lincomb_acc",
                    Some(dt),
                    grid(n),
                    &lc,
                    &acc_in,
                    &y,
                    &n
                );
            }
        }
        Ok(out)
    }

    /// GEGLU over rows of `2 * half` values.
    pub(crate) fn geglu(&self, rows: usize, half: usize) -> Result<CudaStorage> {
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, rows * half, self.dtype)?;
        let (r, h) = (rows as u64, half as u64);
        if r * h > 0 {
            let (x, y) = (self.ptr(), out.ptr());
            launch!(
                dev,
                KernelModule::Elementwise,
                "geglu",
                Some(self.dtype),
                grid(r * h),
                &x,
                &y,
                &r,
                &h
            );
        }
        Ok(out)
    }

    fn gemm(
        dev: &Arc<CudaDevice>,
        spec: GemmSpec,
        a: Operand,
        b: Operand,
        c: Operand,
        bias: Option<u64>,
    ) -> Result<()> {
        if spec.m == 0 || spec.n == 0 || spec.batch == 0 {
            return Ok(());
        }
        if spec.k == 0 {
            return Err(unsupported("matmul", "inner dimension 0"));
        }
        dev.with_blas(|blas| blas.gemm(spec, a, b, c, bias))
    }

    /// `x · weightᵀ + bias` for `x` = `[rows, in_f]`, `weight` = `[out_f, in_f]`.
    pub(crate) fn linear(
        &self,
        weight: &CudaStorage,
        bias: Option<&CudaStorage>,
        rows: usize,
        in_f: usize,
        out_f: usize,
    ) -> Result<CudaStorage> {
        self.check_same("linear", weight)?;
        if let Some(b) = bias {
            self.check_same("linear", b)?;
        }
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, rows * out_f, self.dtype)?;
        let (spec, a, b, c) = linear_gemm(
            self.ptr(),
            weight.ptr(),
            out.ptr(),
            rows,
            in_f,
            out_f,
            self.dtype,
        );
        Self::gemm(dev, spec, a, b, c, bias.map(|b| b.ptr()))?;
        Ok(out)
    }

    /// `[batch, m, k] x [batch or 1, k, n]`.
    pub(crate) fn matmul(
        &self,
        rhs: &CudaStorage,
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        shared_rhs: bool,
    ) -> Result<CudaStorage> {
        self.check_same("matmul", rhs)?;
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, batch * m * n, self.dtype)?;
        let (spec, a, b, c) = matmul_gemm(
            self.ptr(),
            rhs.ptr(),
            out.ptr(),
            [batch, m, k, n],
            shared_rhs,
            self.dtype,
        );
        Self::gemm(dev, spec, a, b, c, None)?;
        Ok(out)
    }

    /// NHWC convolution with an HWIO weight: a direct GEMM for 1x1/stride 1/no padding, else
    /// im2col (in row chunks) + GEMM, the bias fused into cuBLASLt's epilogue.
    pub(crate) fn conv2d(
        &self,
        weight: &CudaStorage,
        bias: Option<&CudaStorage>,
        g: ConvGeometry,
    ) -> Result<CudaStorage> {
        self.check_same("conv2d", weight)?;
        if let Some(b) = bias {
            self.check_same("conv2d", b)?;
        }
        let dev = self.dev();
        let dt = self.dtype;
        let elt = dt.size_in_bytes();
        let (oh, ow) = (g.out_h(), g.out_w());
        let m = g.batch * oh * ow;
        let k = g.kh * g.kw * g.c_in;
        let n = g.c_out;
        let out = CudaStorage::alloc(dev, m * n, dt)?;
        let bias_ptr = bias.map(|b| b.ptr());
        let p = g.params;
        let pointwise = g.kh == 1
            && g.kw == 1
            && p.stride == 1
            && p.pad_top + p.pad_left + p.pad_bottom + p.pad_right == 0;
        if pointwise {
            let (spec, a, b, c) = conv_gemm(self.ptr(), weight.ptr(), out.ptr(), [0, m, k, n], dt);
            Self::gemm(dev, spec, a, b, c, bias_ptr)?;
            return Ok(out);
        }
        let geom = ConvGeom {
            b: to_i32("conv2d", g.batch)?,
            h: to_i32("conv2d", g.in_h)?,
            w: to_i32("conv2d", g.in_w)?,
            c: to_i32("conv2d", g.c_in)?,
            kh: to_i32("conv2d", g.kh)?,
            kw: to_i32("conv2d", g.kw)?,
            oh: to_i32("conv2d", oh)?,
            ow: to_i32("conv2d", ow)?,
            stride: to_i32("conv2d", p.stride)?,
            pad_top: to_i32("conv2d", p.pad_top)?,
            pad_left: to_i32("conv2d", p.pad_left)?,
        };
        if m == 0 || n == 0 {
            return Ok(out);
        }
        let chunk_rows = (IM2COL_CHUNK_BYTES / (k * elt).max(1)).clamp(1, m);
        let col = CudaStorage::alloc(dev, chunk_rows * k, dt)?;
        let mut m0 = 0;
        while m0 < m {
            let rows = chunk_rows.min(m - m0);
            let (x, cp, m0_64, rows_64) = (self.ptr(), col.ptr(), m0 as u64, rows as u64);
            launch!(
                dev,
                KernelModule::Layout,
                "im2col",
                Some(dt),
                grid(rows_64 * k as u64),
                &x,
                &cp,
                &geom,
                &m0_64,
                &rows_64
            );
            let (spec, a, b, c) =
                conv_gemm(col.ptr(), weight.ptr(), out.ptr(), [m0, rows, k, n], dt);
            Self::gemm(dev, spec, a, b, c, bias_ptr)?;
            m0 += rows;
        }
        Ok(out)
    }

    /// Group norm of NHWC `[batch, spatial, channels]` + activation (three deterministic launches,
    /// see kernels/norm.cu).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn group_norm(
        &self,
        batch: usize,
        spatial: usize,
        channels: usize,
        groups: usize,
        gamma: &CudaStorage,
        beta: &CudaStorage,
        eps: f64,
        act: Activation,
    ) -> Result<CudaStorage> {
        self.check_same("group_norm", gamma)?;
        self.check_same("group_norm", beta)?;
        let dev = self.dev();
        let dt = self.dtype;
        let out = CudaStorage::alloc(dev, self.len, dt)?;
        if self.len == 0 {
            return Ok(out);
        }
        // gn_stats keeps two fp32 values per channel in shared memory (48 KB without opt-in).
        if channels > 6144 {
            return Err(unsupported(
                "group_norm",
                format!("{channels} channels (at most 6144)"),
            ));
        }
        const ROWS_PER_BLOCK: usize = 64;
        let nblk = spatial.div_ceil(ROWS_PER_BLOCK);
        let partial = CudaStorage::alloc(dev, 2 * batch * nblk * groups, DType::F32)?;
        let stats = CudaStorage::alloc(dev, 2 * batch * groups, DType::F32)?;
        let (hw, c, g, rpb) = (
            to_i32("group_norm", spatial)?,
            to_i32("group_norm", channels)?,
            to_i32("group_norm", groups)?,
            ROWS_PER_BLOCK as i32,
        );
        let (x, pp, sp) = (self.ptr(), partial.ptr(), stats.ptr());
        let stats_cfg = LaunchConfig {
            grid_dim: (nblk as u32, batch as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: (2 * channels * 4) as u32,
        };
        launch!(
            dev,
            KernelModule::Norm,
            "gn_stats",
            Some(dt),
            stats_cfg,
            &x,
            &pp,
            &hw,
            &c,
            &g,
            &rpb
        );
        let fin_cfg = LaunchConfig {
            grid_dim: (batch as u32, 1, 1),
            block_dim: (groups.clamp(32, 1024).next_multiple_of(32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nb, eps32) = (nblk as i32, eps as f32);
        launch!(
            dev,
            KernelModule::Norm,
            "gn_finalize",
            None,
            fin_cfg,
            &pp,
            &sp,
            &hw,
            &c,
            &g,
            &rpb,
            &nb,
            &eps32
        );
        let n = self.len as u64;
        let (gp, bp, y, a) = (gamma.ptr(), beta.ptr(), out.ptr(), act_code(act));
        launch!(
            dev,
            KernelModule::Norm,
            "gn_apply",
            Some(dt),
            grid(n),
            &x,
            &sp,
            &gp,
            &bp,
            &y,
            &n,
            &hw,
            &c,
            &g,
            &a
        );
        Ok(out)
    }

    /// Layer norm over rows of `width`.
    pub(crate) fn layer_norm(
        &self,
        width: usize,
        gamma: &CudaStorage,
        beta: &CudaStorage,
        eps: f64,
    ) -> Result<CudaStorage> {
        self.check_same("layer_norm", gamma)?;
        self.check_same("layer_norm", beta)?;
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, self.len, self.dtype)?;
        if self.len == 0 || width == 0 {
            return Ok(out);
        }
        let rows = (self.len / width) as u64;
        const ROWS_PER_BLOCK: u64 = 4; // one warp per row
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1),
            block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (x, gp, bp, y, cols, e) = (
            self.ptr(),
            gamma.ptr(),
            beta.ptr(),
            out.ptr(),
            to_i32("layer_norm", width)?,
            eps as f32,
        );
        launch!(
            dev,
            KernelModule::Norm,
            "layer_norm",
            Some(self.dtype),
            cfg,
            &x,
            &gp,
            &bp,
            &y,
            &rows,
            &cols,
            &e
        );
        Ok(out)
    }

    fn softmax_cfg(rows: u64, cols: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (if cols > 1024 { 256 } else { 128 }, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Softmax over the last dimension (`width`).
    pub(crate) fn softmax_last_dim(&self, width: usize) -> Result<CudaStorage> {
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, self.len, self.dtype)?;
        if self.len == 0 || width == 0 {
            return Ok(out);
        }
        let rows = (self.len / width) as u64;
        if rows > i32::MAX as u64 {
            return Err(unsupported("softmax", format!("{rows} rows")));
        }
        let (x, y, cols, scale, causal, q_len) = (
            self.ptr(),
            out.ptr(),
            to_i32("softmax", width)?,
            1.0f32,
            0i32,
            1i32,
        );
        launch!(
            dev,
            KernelModule::Norm,
            "softmax",
            Some(self.dtype),
            Self::softmax_cfg(rows, width),
            &x,
            &y,
            &rows,
            &cols,
            &scale,
            &causal,
            &q_len
        );
        Ok(out)
    }

    /// Multi-head attention over `[b, t, heads·d]` tensors: the flash kernel for f16/bf16 with
    /// d ∈ {40, 64, 80, 160} on sm_80+, else GEMM (fp32 scores) + softmax + GEMM.
    pub(crate) fn attention(
        &self,
        k: &CudaStorage,
        v: &CudaStorage,
        s: AttentionShape,
        scale: f32,
        causal: bool,
    ) -> Result<CudaStorage> {
        self.check_same("attention", k)?;
        self.check_same("attention", v)?;
        let dev = self.dev();
        let dt = self.dtype;
        let width = s.heads * s.head_dim;
        let out = CudaStorage::alloc(dev, s.batch * s.q_len * width, dt)?;
        if out.len == 0 {
            return Ok(out);
        }
        let flash = flash_enabled()
            && matches!(dt, DType::F16 | DType::BF16)
            && flash_geometry(s.head_dim)
                .is_some_and(|(_, _, smem)| smem <= dev.max_shared_optin())
            && dev.compute_capability().0 >= 8;
        if flash {
            self.flash_attention(k, v, &out, s, scale, causal)?;
        } else {
            self.gemm_attention(k, v, &out, s, scale, causal)?;
        }
        Ok(out)
    }

    fn flash_attention(
        &self,
        k: &CudaStorage,
        v: &CudaStorage,
        out: &CudaStorage,
        s: AttentionShape,
        scale: f32,
        causal: bool,
    ) -> Result<()> {
        let dev = self.dev();
        let width = (s.heads * s.head_dim) as i64;
        let args = AttnArgs {
            tq: to_i32("attention", s.q_len)?,
            tk: to_i32("attention", s.kv_len)?,
            heads: to_i32("attention", s.heads)?,
            causal: i32::from(causal),
            q_bs: s.q_len as i64 * width,
            q_ts: width,
            k_bs: s.kv_len as i64 * width,
            k_ts: width,
            v_bs: s.kv_len as i64 * width,
            v_ts: width,
            o_bs: s.q_len as i64 * width,
            o_ts: width,
            scale_log2: scale * std::f32::consts::LOG2_E,
        };
        let Some((_, _, smem)) = flash_geometry(s.head_dim) else {
            return Err(Error::Internal(format!(
                "flash attention called for head size {}",
                s.head_dim
            )));
        };
        let cfg = LaunchConfig {
            grid_dim: (s.q_len.div_ceil(64) as u32, (s.batch * s.heads) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let (q, kp, vp, o) = (self.ptr(), k.ptr(), v.ptr(), out.ptr());
        let dt = Some(self.dtype);
        match s.head_dim {
            40 => launch!(
                dev,
                KernelModule::Attention,
                "flash_fwd_d40",
                dt,
                cfg,
                &q,
                &kp,
                &vp,
                &o,
                &args
            ),
            64 => launch!(
                dev,
                KernelModule::Attention,
                "flash_fwd_d64",
                dt,
                cfg,
                &q,
                &kp,
                &vp,
                &o,
                &args
            ),
            80 => launch!(
                dev,
                KernelModule::Attention,
                "flash_fwd_d80",
                dt,
                cfg,
                &q,
                &kp,
                &vp,
                &o,
                &args
            ),
            _ => launch!(
                dev,
                KernelModule::Attention,
                "flash_fwd_d160",
                dt,
                cfg,
                &q,
                &kp,
                &vp,
                &o,
                &args
            ),
        }
        Ok(())
    }

    fn gemm_attention(
        &self,
        k: &CudaStorage,
        v: &CudaStorage,
        out: &CudaStorage,
        s: AttentionShape,
        scale: f32,
        causal: bool,
    ) -> Result<()> {
        let dev = self.dev();
        let dt = self.dtype;
        let per_head = s.q_len * s.kv_len;
        let heads_per_chunk = (SCORES_CHUNK_BYTES / (per_head * 4).max(1)).clamp(1, s.heads);
        let scores = CudaStorage::alloc(dev, heads_per_chunk * per_head, DType::F32)?;
        let probs = CudaStorage::alloc(dev, heads_per_chunk * per_head, dt)?;
        for b in 0..s.batch {
            let mut h0 = 0;
            while h0 < s.heads {
                let hc = heads_per_chunk.min(s.heads - h0);
                let heads = [b, h0, hc];
                // S[h] = Q_h K_hᵀ in fp32, then P = softmax(S · scale) in the dtype.
                let (spec, qo, ko, so) =
                    attention_score_gemm(self.ptr(), k.ptr(), scores.ptr(), s, heads, dt);
                Self::gemm(dev, spec, qo, ko, so, None)?;
                let rows = (hc * s.q_len) as u64;
                let (sp, pp) = (scores.ptr(), probs.ptr());
                let (cols, causal_i, q_len) = (
                    to_i32("attention", s.kv_len)?,
                    i32::from(causal),
                    to_i32("attention", s.q_len)?,
                );
                launch!(
                    dev,
                    KernelModule::Norm,
                    "softmax_scores",
                    Some(dt),
                    Self::softmax_cfg(rows, s.kv_len),
                    &sp,
                    &pp,
                    &rows,
                    &cols,
                    &scale,
                    &causal_i,
                    &q_len
                );
                // O_h = P_h V_h, written straight into the [b, t, heads·d] output.
                let (spec, po, vo, oo) =
                    attention_value_gemm(probs.ptr(), v.ptr(), out.ptr(), s, heads, dt);
                Self::gemm(dev, spec, po, vo, oo, None)?;
                h0 += hc;
            }
        }
        Ok(())
    }

    /// Output dim `i` = input dim `perm[i]`.
    pub(crate) fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<CudaStorage> {
        let rank = dims.len();
        if rank > MAX_RANK {
            return Err(unsupported(
                "permute",
                format!("rank {rank} above {MAX_RANK}"),
            ));
        }
        let mut in_strides = vec![1i64; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * dims[i + 1] as i64;
        }
        let mut info = PermInfo {
            rank: rank as i32,
            dims: [1; MAX_RANK],
            src_strides: [0; MAX_RANK],
        };
        for (i, &p) in perm.iter().enumerate() {
            info.dims[i] = to_i32("permute", dims[p])?;
            info.src_strides[i] = in_strides[p];
        }
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, self.len, self.dtype)?;
        let n = self.len as u64;
        if n > 0 {
            let (x, y) = (self.ptr(), out.ptr());
            launch!(
                dev,
                KernelModule::Layout,
                "permute",
                Some(self.dtype),
                grid(n),
                &x,
                &y,
                &n,
                &info
            );
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        dst: &CudaStorage,
        rows: usize,
        cols: usize,
        src_ld: usize,
        src_off: usize,
        dst_ld: usize,
        dst_off: usize,
    ) -> Result<()> {
        let n = (rows * cols) as u64;
        if n == 0 {
            return Ok(());
        }
        let dev = self.dev();
        let (x, y) = (self.ptr(), dst.ptr());
        let a = [
            rows as u64,
            cols as u64,
            src_ld as u64,
            src_off as u64,
            dst_ld as u64,
            dst_off as u64,
        ];
        launch!(
            dev,
            KernelModule::Layout,
            "copy_rows",
            Some(self.dtype),
            grid(n),
            &x,
            &y,
            &a[0],
            &a[1],
            &a[2],
            &a[3],
            &a[4],
            &a[5]
        );
        Ok(())
    }

    /// `len` entries of dimension `dim` from `start`.
    pub(crate) fn narrow(
        &self,
        dims: &[usize],
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<CudaStorage> {
        let outer: usize = dims[..dim].iter().product();
        let inner: usize = dims[dim + 1..].iter().product();
        let out = CudaStorage::alloc(self.dev(), outer * len * inner, self.dtype)?;
        self.copy_rows(
            &out,
            outer,
            len * inner,
            dims[dim] * inner,
            start * inner,
            len * inner,
            0,
        )?;
        Ok(out)
    }

    /// Concatenation of `parts` (this storage being the first's) along `dim`.
    pub(crate) fn cat(
        &self,
        parts: &[(&CudaStorage, &[usize])],
        dim: usize,
    ) -> Result<CudaStorage> {
        let Some(&(_, first_dims)) = parts.first() else {
            return Err(Error::Internal("cuda cat of nothing".into()));
        };
        let outer: usize = first_dims[..dim].iter().product();
        let inner: usize = first_dims[dim + 1..].iter().product();
        let total: usize = parts.iter().map(|(_, d)| d[dim]).sum();
        for (p, _) in parts {
            self.check_same("cat", p)?;
        }
        let out = CudaStorage::alloc(self.dev(), outer * total * inner, self.dtype)?;
        let mut offset = 0;
        for (p, d) in parts {
            let cols = d[dim] * inner;
            p.copy_rows(&out, outer, cols, cols, 0, total * inner, offset * inner)?;
            offset += d[dim];
        }
        Ok(out)
    }

    /// Nearest resize of NHWC `[b, h, w, c]` to `out_h x out_w` (PyTorch's index rule).
    pub(crate) fn upsample_nearest(
        &self,
        dims: [usize; 4],
        out_h: usize,
        out_w: usize,
    ) -> Result<CudaStorage> {
        let [b, h, w, c] = dims;
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, b * out_h * out_w * c, self.dtype)?;
        let n = out.len as u64;
        if n > 0 && h > 0 && w > 0 {
            let x = self.ptr();
            let y = out.ptr();
            let op = "upsample_nearest";
            let (b, h, w, c) = (
                to_i32(op, b)?,
                to_i32(op, h)?,
                to_i32(op, w)?,
                to_i32(op, c)?,
            );
            let (oh, ow) = (to_i32(op, out_h)?, to_i32(op, out_w)?);
            launch!(
                dev,
                KernelModule::Layout,
                "upsample_nearest",
                Some(self.dtype),
                grid(n),
                &x,
                &y,
                &b,
                &h,
                &w,
                &c,
                &oh,
                &ow
            );
        }
        Ok(out)
    }

    /// Rows `ids` of a `[rows, width]` table.
    pub(crate) fn gather_rows(&self, width: usize, ids: &[usize]) -> Result<CudaStorage> {
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, ids.len() * width, self.dtype)?;
        let n = (ids.len() * width) as u64;
        if n == 0 {
            return Ok(out);
        }
        let ids32: Vec<u8> = ids
            .iter()
            .map(|&i| to_i32("gather_rows", i))
            .collect::<Result<Vec<i32>>>()?
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let id_buf = CudaStorage::from_bytes(dev, &ids32, ids.len(), DType::F32)?;
        let (t, ip, y, count, w) = (
            self.ptr(),
            id_buf.ptr(),
            out.ptr(),
            ids.len() as u64,
            width as u64,
        );
        launch!(
            dev,
            KernelModule::Layout,
            "gather_rows",
            Some(self.dtype),
            grid(n),
            &t,
            &ip,
            &y,
            &count,
            &w
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The products each op issues, run through the host emulation of cuBLASLt's column-major
    //! semantics (`gemm::emulate`) and compared with the CPU backend. No GPU involved.

    use super::*;
    use crate::backend::cuda::gemm::emulate::{HostMem, run};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-4, "element {i}: {g} vs {w}");
        }
    }

    fn run_gemm(mem: &mut HostMem, (spec, a, b, c): Gemm, bias: Option<u64>) {
        run(mem, spec, a, b, c, bias);
    }

    #[test]
    fn linear_operands() {
        let (rows, in_f, out_f) = (5, 7, 3);
        let (xv, wv, bv) = (
            values(rows * in_f, 1),
            values(out_f * in_f, 2),
            values(out_f, 3),
        );
        let mut mem = HostMem::default();
        let (x, w, b) = (
            mem.alloc(xv.clone(), 4),
            mem.alloc(wv.clone(), 4),
            mem.alloc(bv.clone(), 4),
        );
        let out = mem.alloc(vec![f32::NAN; rows * out_f], 4);
        run_gemm(
            &mut mem,
            linear_gemm(x, w, out, rows, in_f, out_f, DType::F32),
            Some(b),
        );
        let want: Vec<f32> = (0..rows * out_f)
            .map(|i| {
                let (r, o) = (i / out_f, i % out_f);
                bv[o]
                    + (0..in_f)
                        .map(|k| xv[r * in_f + k] * wv[o * in_f + k])
                        .sum::<f32>()
            })
            .collect();
        close(mem.data(out), &want);
    }

    #[test]
    fn matmul_operands_batched_and_shared() {
        let [batch, m, k, n] = [3, 4, 5, 2];
        for shared in [false, true] {
            let av = values(batch * m * k, 4);
            let bv = values(if shared { k * n } else { batch * k * n }, 5);
            let mut mem = HostMem::default();
            let (a, b) = (mem.alloc(av.clone(), 2), mem.alloc(bv.clone(), 2));
            let out = mem.alloc(vec![f32::NAN; batch * m * n], 2);
            run_gemm(
                &mut mem,
                matmul_gemm(a, b, out, [batch, m, k, n], shared, DType::F16),
                None,
            );
            let want: Vec<f32> = (0..batch * m * n)
                .map(|i| {
                    let (bi, r, c) = (i / (m * n), (i / n) % m, i % n);
                    let rb = if shared { 0 } else { bi * k * n };
                    (0..k)
                        .map(|kk| av[bi * m * k + r * k + kk] * bv[rb + kk * n + c])
                        .sum()
                })
                .collect();
            close(mem.data(out), &want);
        }
    }

    #[test]
    fn conv_chunks_write_their_rows() {
        let [m, k, n] = [7, 6, 5];
        let (colv, wv) = (values(m * k, 6), values(k * n, 7));
        let mut mem = HostMem::default();
        let w = mem.alloc(wv.clone(), 2);
        let out = mem.alloc(vec![f32::NAN; m * n], 2);
        // Two chunks, each with its own column buffer, as conv2d does.
        for (m0, rows) in [(0, 4), (4, 3)] {
            let col = mem.alloc(colv[m0 * k..(m0 + rows) * k].to_vec(), 2);
            run_gemm(
                &mut mem,
                conv_gemm(col, w, out, [m0, rows, k, n], DType::BF16),
                None,
            );
        }
        let want: Vec<f32> = (0..m * n)
            .map(|i| {
                (0..k)
                    .map(|kk| colv[(i / n) * k + kk] * wv[kk * n + i % n])
                    .sum()
            })
            .collect();
        close(mem.data(out), &want);
    }

    #[test]
    fn attention_operands_match_the_cpu_attention() {
        let s = AttentionShape {
            batch: 2,
            q_len: 3,
            kv_len: 5,
            heads: 3,
            head_dim: 4,
        };
        let width = s.heads * s.head_dim;
        let qv = values(s.batch * s.q_len * width, 8);
        let kv = values(s.batch * s.kv_len * width, 9);
        let vv = values(s.batch * s.kv_len * width, 10);
        let scale = 0.7f32;
        for causal in [false, true] {
            let want = crate::backend::cpu::attention::attention(&qv, &kv, &vv, s, scale, causal);
            for heads_per_chunk in [1, 2, 3] {
                let mut mem = HostMem::default();
                let (q, k, v) = (
                    mem.alloc(qv.clone(), 2),
                    mem.alloc(kv.clone(), 2),
                    mem.alloc(vv.clone(), 2),
                );
                let out = mem.alloc(vec![f32::NAN; qv.len()], 2);
                let per_head = s.q_len * s.kv_len;
                for b in 0..s.batch {
                    let mut h0 = 0;
                    while h0 < s.heads {
                        let hc = heads_per_chunk.min(s.heads - h0);
                        let scores = mem.alloc(vec![f32::NAN; hc * per_head], 4);
                        run_gemm(
                            &mut mem,
                            attention_score_gemm(q, k, scores, s, [b, h0, hc], DType::F16),
                            None,
                        );
                        // The softmax_scores kernel's job, on the host.
                        let sv = mem.data(scores).to_vec();
                        let mut pv = vec![0.0f32; sv.len()];
                        for row in 0..hc * s.q_len {
                            let limit = if causal { row % s.q_len + 1 } else { s.kv_len };
                            let r = &sv[row * s.kv_len..row * s.kv_len + limit];
                            let mx = r.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x * scale));
                            let sum: f32 = r.iter().map(|&x| (x * scale - mx).exp()).sum();
                            for (c, &x) in r.iter().enumerate() {
                                pv[row * s.kv_len + c] = (x * scale - mx).exp() / sum;
                            }
                        }
                        let probs = mem.alloc(pv, 2);
                        run_gemm(
                            &mut mem,
                            attention_value_gemm(probs, v, out, s, [b, h0, hc], DType::F16),
                            None,
                        );
                        h0 += hc;
                    }
                }
                close(mem.data(out), &want);
            }
        }
    }
}
