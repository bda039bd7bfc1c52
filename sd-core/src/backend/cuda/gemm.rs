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

/// One matrix as cuBLASLt sees it: column-major `rows x cols`, leading dimension `ld`, and the
/// element distance between consecutive matrices of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LtMatrix {
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    pub batch_stride: i64,
}

/// A product in cuBLASLt's terms: `D = op(A) · op(B)` (column-major), `batch` times, where
/// cuBLASLt's A is our B and its B is our A (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LtProblem {
    pub transa: bool,
    pub transb: bool,
    pub a: LtMatrix,
    pub b: LtMatrix,
    pub c: LtMatrix,
    pub batch: usize,
}

/// The cuBLASLt problem that computes the row-major product described by `key`.
fn lt_problem(key: &PlanKey) -> LtProblem {
    let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
    // Our B row-major [K, N] is column-major [N, K] already (no transpose); stored transposed
    // ([N, K] row-major) it is column-major [K, N] and needs op = T.
    let (a_rows, a_cols) = if key.b_trans { (k, n) } else { (n, k) };
    // Our A row-major [M, K] is column-major [K, M] = the Aᵀ needed; stored transposed, op = T.
    let (b_rows, b_cols) = if key.a_trans { (m, k) } else { (k, m) };
    LtProblem {
        transa: key.b_trans,
        transb: key.a_trans,
        a: LtMatrix {
            rows: a_rows,
            cols: a_cols,
            ld: key.b_ld,
            batch_stride: key.b_stride,
        },
        b: LtMatrix {
            rows: b_rows,
            cols: b_cols,
            ld: key.a_ld,
            batch_stride: key.a_stride,
        },
        c: LtMatrix {
            rows: n,
            cols: m,
            ld: key.c_ld,
            batch_stride: key.c_stride,
        },
        batch: key.batch,
    }
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

/// The plan-cache key (and the full description) of a product.
fn plan_key(spec: GemmSpec, a: Operand, b: Operand, c: Operand, bias: bool) -> PlanKey {
    PlanKey {
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
        bias,
        a_align: alignment(&a, spec.in_dtype.size_in_bytes()),
        b_align: alignment(&b, spec.in_dtype.size_in_bytes()),
        c_align: alignment(&c, spec.out_dtype.size_in_bytes()),
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
        let problem = lt_problem(key);
        let lt_transa: i32 = problem.transa as i32;
        let lt_transb: i32 = problem.transb as i32;
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
        let (pa, pb, pc) = (problem.a, problem.b, problem.c);
        plan.a_layout = lt::create_matrix_layout(in_t, pa.rows, pa.cols, pa.ld).map_err(err)?;
        plan.b_layout = lt::create_matrix_layout(in_t, pb.rows, pb.cols, pb.ld).map_err(err)?;
        plan.c_layout = lt::create_matrix_layout(out_t, pc.rows, pc.cols, pc.ld).map_err(err)?;
        if key.batch > 1 {
            let count = i32::try_from(key.batch).map_err(|_| {
                Error::Cuda(CudaError::Unsupported {
                    op: "matmul",
                    reason: format!("batch {} too large", key.batch),
                })
            })?;
            for (layout, stride) in [
                (plan.a_layout, pa.batch_stride),
                (plan.b_layout, pb.batch_stride),
                (plan.c_layout, pc.batch_stride),
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
        let key = plan_key(spec, a, b, c, bias.is_some());
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

/// A host emulation of cuBLASLt's column-major semantics, to test the row-major mapping and the
/// operand descriptions the ops build, without a GPU.
#[cfg(test)]
pub(crate) mod emulate {
    use super::{GemmSpec, LtMatrix, Operand, lt_problem, plan_key};

    /// Host buffers addressed by made-up device addresses (1 << 32 apart).
    #[derive(Default)]
    pub(crate) struct HostMem {
        bufs: Vec<(u64, usize, Vec<f32>)>,
    }

    impl HostMem {
        /// Stores `data` as elements of `elt` bytes; returns its address.
        pub(crate) fn alloc(&mut self, data: Vec<f32>, elt: usize) -> u64 {
            let base = (self.bufs.len() as u64 + 1) << 32;
            self.bufs.push((base, elt, data));
            base
        }

        fn locate(&self, addr: u64) -> (usize, usize) {
            let i = ((addr >> 32) - 1) as usize;
            let (base, elt, data) = &self.bufs[i];
            let off = (addr - base) as usize;
            assert_eq!(off % elt, 0, "misaligned address");
            assert!(off / elt < data.len(), "address {addr:#x} past the buffer");
            (i, off / elt)
        }

        pub(crate) fn read(&self, addr: u64) -> f32 {
            let (i, j) = self.locate(addr);
            self.bufs[i].2[j]
        }

        pub(crate) fn write(&mut self, addr: u64, v: f32) {
            let (i, j) = self.locate(addr);
            self.bufs[i].2[j] = v;
        }

        pub(crate) fn data(&self, addr: u64) -> &[f32] {
            &self.bufs[self.locate(addr).0].2
        }
    }

    fn at(m: &LtMatrix, base: u64, batch: usize, row: u64, col: u64, elt: usize) -> u64 {
        assert!(row < m.rows && col < m.cols);
        let idx = batch as i64 * m.batch_stride + row as i64 + col as i64 * m.ld;
        base + (idx as u64) * elt as u64
    }

    /// Runs the product exactly as cuBLASLt would be asked to (same `lt_problem`), on host data.
    pub(crate) fn run(
        mem: &mut HostMem,
        spec: GemmSpec,
        a: Operand,
        b: Operand,
        c: Operand,
        bias: Option<u64>,
    ) {
        let p = lt_problem(&plan_key(spec, a, b, c, bias.is_some()));
        let (ein, eout) = (
            spec.in_dtype.size_in_bytes(),
            spec.out_dtype.size_in_bytes(),
        );
        // cuBLASLt's own checks: shapes agree and every ld covers its rows.
        let (am, ak) = if p.transa {
            (p.a.cols, p.a.rows)
        } else {
            (p.a.rows, p.a.cols)
        };
        let (bk, bn) = if p.transb {
            (p.b.cols, p.b.rows)
        } else {
            (p.b.rows, p.b.cols)
        };
        assert_eq!((am, bn), (p.c.rows, p.c.cols), "op(A) op(B) does not fit C");
        assert_eq!(ak, bk, "inner dimensions differ");
        for m in [p.a, p.b, p.c] {
            assert!(m.ld >= m.rows as i64, "ld {} below rows {}", m.ld, m.rows);
        }
        for i in 0..p.batch {
            for col in 0..p.c.cols {
                for row in 0..p.c.rows {
                    let mut acc = 0.0f64;
                    for kk in 0..ak {
                        let av = if p.transa {
                            mem.read(at(&p.a, b.ptr, i, kk, row, ein))
                        } else {
                            mem.read(at(&p.a, b.ptr, i, row, kk, ein))
                        };
                        let bv = if p.transb {
                            mem.read(at(&p.b, a.ptr, i, col, kk, ein))
                        } else {
                            mem.read(at(&p.b, a.ptr, i, kk, col, ein))
                        };
                        acc += f64::from(av) * f64::from(bv);
                    }
                    if let Some(bias) = bias {
                        acc += f64::from(mem.read(bias + row * eout as u64));
                    }
                    mem.write(at(&p.c, c.ptr, i, row, col, eout), acc as f32);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::emulate::{HostMem, run};
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// Row-major reference: C[b][i][j] = Σ A[b][i][k] B[b][k][j] with explicit element accessors.
    fn check(
        mem: &HostMem,
        c: u64,
        (batch, m, n, k): (usize, usize, usize, usize),
        a_at: impl Fn(usize, usize, usize) -> f32,
        b_at: impl Fn(usize, usize, usize) -> f32,
        c_idx: impl Fn(usize, usize, usize) -> usize,
    ) {
        let out = mem.data(c);
        for bi in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|kk| a_at(bi, i, kk) * b_at(bi, kk, j)).sum();
                    let got = out[c_idx(bi, i, j)];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "[{bi}][{i}][{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn row_major_products_map_onto_column_major_cublaslt() {
        let (m, n, k) = (5, 3, 4);
        for (a_trans, b_trans) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut mem = HostMem::default();
            let av = values(m * k, 1);
            let bv = values(k * n, 2);
            let a = mem.alloc(av.clone(), 4);
            let b = mem.alloc(bv.clone(), 4);
            let c = mem.alloc(vec![f32::NAN; m * n], 4);
            let spec = GemmSpec {
                m,
                n,
                k,
                batch: 1,
                in_dtype: DType::F32,
                out_dtype: DType::F32,
            };
            let a_ld = if a_trans { m } else { k } as i64;
            let b_ld = if b_trans { k } else { n } as i64;
            run(
                &mut mem,
                spec,
                Operand {
                    ptr: a,
                    ld: a_ld,
                    trans: a_trans,
                    batch_stride: 0,
                },
                Operand {
                    ptr: b,
                    ld: b_ld,
                    trans: b_trans,
                    batch_stride: 0,
                },
                Operand {
                    ptr: c,
                    ld: n as i64,
                    trans: false,
                    batch_stride: 0,
                },
                None,
            );
            check(
                &mem,
                c,
                (1, m, n, k),
                |_, i, kk| {
                    if a_trans {
                        av[kk * m + i]
                    } else {
                        av[i * k + kk]
                    }
                },
                |_, kk, j| {
                    if b_trans {
                        bv[j * k + kk]
                    } else {
                        bv[kk * n + j]
                    }
                },
                |_, i, j| i * n + j,
            );
        }
    }

    #[test]
    fn batched_products_with_strides_and_bias() {
        let (batch, m, n, k) = (3, 4, 6, 5);
        let mut mem = HostMem::default();
        let av = values(batch * m * k, 3);
        let bv = values(batch * k * n, 4);
        let biasv = values(n, 5);
        let a = mem.alloc(av.clone(), 2);
        let b = mem.alloc(bv.clone(), 2);
        let bias = mem.alloc(biasv.clone(), 2);
        let c = mem.alloc(vec![f32::NAN; batch * m * n], 2);
        let spec = GemmSpec {
            m,
            n,
            k,
            batch,
            in_dtype: DType::F16,
            out_dtype: DType::F16,
        };
        run(
            &mut mem,
            spec,
            Operand {
                ptr: a,
                ld: k as i64,
                trans: false,
                batch_stride: (m * k) as i64,
            },
            Operand {
                ptr: b,
                ld: n as i64,
                trans: false,
                batch_stride: (k * n) as i64,
            },
            Operand {
                ptr: c,
                ld: n as i64,
                trans: false,
                batch_stride: (m * n) as i64,
            },
            Some(bias),
        );
        let out = mem.data(c);
        for bi in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = biasv[j]
                        + (0..k)
                            .map(|kk| av[bi * m * k + i * k + kk] * bv[bi * k * n + kk * n + j])
                            .sum::<f32>();
                    let got = out[bi * m * n + i * n + j];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "[{bi}][{i}][{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn alignment_is_the_common_power_of_two() {
        let op = |ptr, stride| Operand {
            ptr,
            ld: 1,
            trans: false,
            batch_stride: stride,
        };
        assert_eq!(alignment(&op(1 << 32, 0), 2), 256);
        assert_eq!(alignment(&op((1 << 32) + 80, 40), 2), 16);
        assert_eq!(alignment(&op(1 << 32, 3), 4), 4);
        assert_eq!(alignment(&op((1 << 32) + 2, 0), 2), 2);
    }
}
