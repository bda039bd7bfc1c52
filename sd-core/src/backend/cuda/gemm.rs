//! Matrix products through cuBLASLt, with a per-shape plan cache.
//!
//! Every product is stated row-major, as the rest of sd-core thinks: `C[M, N] = op(A)[M, K] ·
//! op(B)[K, N] (+ bias[N])`. cuBLASLt is column-major, and a row-major matrix with leading dimension
//! `ld` is the column-major view of its transpose, so the call computes `Cᵀ = op(B)ᵀ · op(A)ᵀ` with
//! cuBLASLt's "A" = our B and "B" = our A; the bias then runs along cuBLASLt's `m` = our `N`, which
//! is what its BIAS epilogue expects.
//!
//! Plans (matmul descriptor, three layouts, the heuristic's algorithm) are built once per shape
//! and reused: building one costs tens of microseconds of host time, paid ~400 times per UNet
//! step otherwise. Compute is fp32 for every dtype (`CUBLAS_COMPUTE_32F`: true fp32, not TF32, in
//! the f32 parity mode; fp32 accumulation for f16/bf16).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::error::CudaError;
use crate::error::{Error, Result};
use crate::tensor::DType;

fn blas_err(op: impl Into<String>) -> impl FnOnce(lt::CublasError) -> Error {
    let op = op.into();
    move |e| {
        Error::Cuda(CudaError::Blas {
            op,
            message: format!("{e:?}"),
        })
    }
}

fn data_type(dtype: DType) -> lt_sys::cudaDataType {
    match dtype {
        DType::F32 => lt_sys::cudaDataType::CUDA_R_32F,
        DType::F16 => lt_sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => lt_sys::cudaDataType::CUDA_R_16BF,
    }
}

/// One operand: a row-major matrix at a device address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand {
    /// Device address of the first element.
    pub ptr: u64,
    /// Leading dimension (row stride) in elements, of the matrix as stored.
    pub ld: i64,
    /// Stored as the transpose (`[K, M]` for A, `[N, K]` for B).
    pub trans: bool,
    /// Elements between consecutive matrices of a batch (0 = the same matrix for every item).
    pub batch_stride: i64,
}

/// A product `C[M, N] = op(A) · op(B)`, `batch` times.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    /// dtype of A and B.
    pub in_dtype: DType,
    /// dtype of C (fp32 scores from f16 inputs, for attention).
    pub out_dtype: DType,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct PlanKey {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    in_dtype: DType,
    out_dtype: DType,
    a_ld: i64,
    a_trans: bool,
    a_stride: i64,
    b_ld: i64,
    b_trans: bool,
    b_stride: i64,
    c_ld: i64,
    c_stride: i64,
    bias: bool,
    /// Guaranteed byte alignment of every matrix of A, B and C (cuBLASLt otherwise assumes 256 and
    /// may pick an algorithm that rejects, e.g., one head's columns at an 80-byte offset).
    a_align: u32,
    b_align: u32,
    c_align: u32,
}

/// The largest power of two (at most 256) dividing the address of every matrix of a batch.
fn alignment(op: &Operand, elt: usize) -> u32 {
    let stride_bytes = (op.batch_stride.unsigned_abs()) * elt as u64;
    let bits = op.ptr | stride_bytes | 256;
    1u32 << bits.trailing_zeros().min(8)
}

struct Plan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    /// Layouts of cuBLASLt's A (our B), B (our A) and C = D.
    a_layout: lt_sys::cublasLtMatrixLayout_t,
    b_layout: lt_sys::cublasLtMatrixLayout_t,
    c_layout: lt_sys::cublasLtMatrixLayout_t,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by cuBLASLt for this plan and is destroyed exactly once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.c_layout);
            let _ = lt::destroy_matrix_layout(self.b_layout);
            let _ = lt::destroy_matrix_layout(self.a_layout);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// The cuBLASLt handle, its workspace and the plan cache of one device.
pub(crate) struct Blas {
    handle: lt_sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    plans: HashMap<PlanKey, Plan>,
}

// SAFETY: the handle and the plans' descriptors are only used while the device's `Mutex<Option<Blas>>`
// is held, so never from two threads at once; cuBLASLt handles may move between threads.
unsafe impl Send for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: the handle was created in `new` and every plan using it is gone.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl Blas {
    pub(crate) fn new(stream: &Arc<CudaStream>, cc: (i32, i32)) -> Result<Blas> {
        // SAFETY: only tries to dlopen the library's candidate names.
        if !unsafe { lt_sys::is_culib_present() } {
            return Err(Error::Cuda(CudaError::LibraryMissing {
                library: "libcublasLt.so.13",
                hint: "install the CUDA 13 toolkit (or the nvidia-cublas wheel) and add its lib dir to LD_LIBRARY_PATH",
            }));
        }
        let handle = lt::create_handle().map_err(blas_err("create cublasLt handle"))?;
        // Workspace sizes as cuBLASLt's own recommendation: 32 MiB on Hopper, 4 MiB before.
        let bytes = if cc.0 >= 9 { 32 << 20 } else { 4 << 20 };
        // SAFETY: cuBLASLt uses the workspace as scratch; it never needs initialising.
        let workspace = unsafe { stream.alloc::<u8>(bytes) }
            .map_err(super::device::driver_err("alloc cublasLt workspace"))?;
        let workspace_ptr = workspace.device_ptr(stream).0;
        Ok(Blas {
            handle,
            stream: Arc::clone(stream),
            workspace,
            workspace_ptr,
            plans: HashMap::new(),
        })
    }

    fn plan(&mut self, key: PlanKey) -> Result<&Plan> {
        if !self.plans.contains_key(&key) {
            let plan = self.build_plan(&key)?;
            self.plans.insert(key, plan);
        }
        self.plans
            .get(&key)
            .ok_or_else(|| Error::Internal("cublasLt plan missing after insertion".into()))
    }

    fn build_plan(&self, key: &PlanKey) -> Result<Plan> {
        let what = format!(
            "plan {}x{}x{} batch {} {}->{}",
            key.m, key.n, key.k, key.batch, key.in_dtype, key.out_dtype
        );
        let err = |e| blas_err(what.clone())(e);
        let in_t = data_type(key.in_dtype);
        let out_t = data_type(key.out_dtype);
        let desc = lt::create_matmul_desc(
            lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lt_sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(err)?;
        // From here on the partially built plan is dropped (and its handles destroyed) on error.
        let mut plan = Plan {
            desc,
            a_layout: std::ptr::null_mut(),
            b_layout: std::ptr::null_mut(),
            c_layout: std::ptr::null_mut(),
            // SAFETY: an all-zero algo is a valid placeholder (plain data); it is overwritten by
            // the heuristic's choice below before any use.
            algo: unsafe { std::mem::zeroed() },
        };
        // cuBLASLt's A = our B: column-major [N, K] is needed; our B is row-major [K, N] (its
        // column-major view is already [N, K]) or, transposed, stored [N, K] (view [K, N]).
        let lt_transa: i32 = key.b_trans as i32;
        let lt_transb: i32 = key.a_trans as i32;
        let (n, m, k) = (key.n as u64, key.m as u64, key.k as u64);
        // SAFETY: (all attribute calls below) the descriptor/layout is live, and each buffer
        // pointer/size pair describes a local of exactly the attribute's documented type.
        unsafe {
            lt::set_matmul_desc_attribute(
                plan.desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&lt_transa as *const i32).cast(),
                4,
            )
            .map_err(err)?;
            lt::set_matmul_desc_attribute(
                plan.desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                (&lt_transb as *const i32).cast(),
                4,
            )
            .map_err(err)?;
            if key.bias {
                let epilogue = lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    (&epilogue as *const lt_sys::cublasLtEpilogue_t).cast(),
                    std::mem::size_of::<lt_sys::cublasLtEpilogue_t>(),
                )
                .map_err(err)?;
            }
        }
        let (a_rows, a_cols) = if key.b_trans { (k, n) } else { (n, k) };
        let (b_rows, b_cols) = if key.a_trans { (m, k) } else { (k, m) };
        plan.a_layout = lt::create_matrix_layout(in_t, a_rows, a_cols, key.b_ld).map_err(err)?;
        plan.b_layout = lt::create_matrix_layout(in_t, b_rows, b_cols, key.a_ld).map_err(err)?;
        plan.c_layout = lt::create_matrix_layout(out_t, n, m, key.c_ld).map_err(err)?;
        if key.batch > 1 {
            let count = i32::try_from(key.batch).map_err(|_| {
                Error::Cuda(CudaError::Unsupported {
                    op: "matmul",
                    reason: format!("batch {} too large", key.batch),
                })
            })?;
            for (layout, stride) in [
                (plan.a_layout, key.b_stride),
                (plan.b_layout, key.a_stride),
                (plan.c_layout, key.c_stride),
            ] {
                // SAFETY: as above; BATCH_COUNT is an int32, STRIDED_BATCH_OFFSET an int64.
                unsafe {
                    lt::set_matrix_layout_attribute(
                        layout,
                        lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        (&count as *const i32).cast(),
                        4,
                    )
                    .map_err(err)?;
                    lt::set_matrix_layout_attribute(
                        layout,
                        lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                        (&stride as *const i64).cast(),
                        8,
                    )
                    .map_err(err)?;
                }
            }
        }
        let pref = lt::create_matmul_pref().map_err(err)?;
        let ws = self.workspace.len() as u64;
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as P;
        // cuBLASLt's A is our B, its B our A; C and D are both our C.
        let aligns = [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.b_align),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.a_align),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.c_align),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.c_align),
        ];
        // SAFETY: `pref` is live; MAX_WORKSPACE_BYTES is a uint64 and the MIN_ALIGNMENT_*
        // attributes are uint32, each passed as a pointer to a local of that type.
        let heuristic = unsafe {
            let mut res = lt::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                8,
            );
            for (attr, align) in aligns {
                res = res.and_then(|()| {
                    lt::set_matmul_pref_attribute(pref, attr, (&align as *const u32).cast(), 4)
                });
            }
            res.and_then(|()| {
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    plan.desc,
                    plan.a_layout,
                    plan.b_layout,
                    plan.c_layout,
                    plan.c_layout,
                    pref,
                )
            })
        };
        // SAFETY: `pref` is live and not used again.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        plan.algo = heuristic.map_err(err)?.algo;
        Ok(plan)
    }

    /// Runs `C = op(A) · op(B) (+ bias)` with a cached plan. `bias` (dtype = `out_dtype`, length
    /// N) is added per column.
    pub(crate) fn gemm(
        &mut self,
        spec: GemmSpec,
        a: Operand,
        b: Operand,
        c: Operand,
        bias: Option<u64>,
    ) -> Result<()> {
        let key = PlanKey {
            m: spec.m,
            n: spec.n,
            k: spec.k,
            batch: spec.batch,
            in_dtype: spec.in_dtype,
            out_dtype: spec.out_dtype,
            a_ld: a.ld,
            a_trans: a.trans,
            a_stride: a.batch_stride,
            b_ld: b.ld,
            b_trans: b.trans,
            b_stride: b.batch_stride,
            c_ld: c.ld,
            c_stride: c.batch_stride,
            bias: bias.is_some(),
            a_align: alignment(&a, spec.in_dtype.size_in_bytes()),
            b_align: alignment(&b, spec.in_dtype.size_in_bytes()),
            c_align: alignment(&c, spec.out_dtype.size_in_bytes()),
        };
        let handle = self.handle;
        let stream = self.stream.cu_stream();
        let (ws_ptr, ws_len) = (self.workspace_ptr, self.workspace.len());
        let what = format!(
            "matmul {}x{}x{} batch {}",
            spec.m, spec.n, spec.k, spec.batch
        );
        let plan = self.plan(key)?;
        if let Some(bias_ptr) = bias {
            // SAFETY: the descriptor is live; BIAS_POINTER takes a device pointer by value.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    (&bias_ptr as *const u64).cast(),
                    8,
                )
            }
            .map_err(blas_err(what.clone()))?;
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the plan's layouts describe exactly the operands' shapes and strides, which the
        // callers validated against the tensors' element counts; all pointers are live device
        // allocations on this context; the workspace is owned by `self` and outlives the call,
        // which is ordered on the device's stream.
        unsafe {
            lt::matmul(
                handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                b.ptr as *const c_void,
                plan.a_layout,
                a.ptr as *const c_void,
                plan.b_layout,
                c.ptr as *const c_void,
                plan.c_layout,
                c.ptr as *mut c_void,
                plan.c_layout,
                &plan.algo,
                ws_ptr as *mut c_void,
                ws_len,
                stream as lt_sys::cudaStream_t,
            )
        }
        .map_err(blas_err(what))
    }
}
