//! One CUDA device: context, stream, buffer pool, loaded kernel modules and the cuBLASLt handle.
//!
//! Devices are opened once per ordinal and cached for the life of the process. Every operation
//! of the backend is enqueued on the device's single stream, so ordering between kernels, copies
//! and frees needs no events: cudarc's per-buffer event tracking is turned off before the first
//! allocation (it would add a wait and a record around every launch and breaks graph capture).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use cudarc::driver::sys as drv;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;

use super::compile::{KernelModule, cubin_cached};
use super::error::CudaError;
use super::gemm::Blas;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Converts a driver error into a [`CudaError`] naming what was being done.
pub(crate) fn driver_err(
    op: impl Into<String>,
) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    let op = op.into();
    move |e| {
        Error::Cuda(CudaError::Driver {
            op,
            message: e.to_string(),
        })
    }
}

/// Whether newly allocated (and reused) buffers are filled with NaN, so that a kernel that
/// leaves an output element unwritten is caught by the tests. Off by default.
static POISON: AtomicBool = AtomicBool::new(false);

/// Turns NaN-poisoning of every buffer handed out by the pool on or off (for tests).
pub fn set_poison_allocations(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

/// Whether the CUDA driver library can be loaded and reports at least one device. Never panics.
pub fn cuda_available() -> bool {
    probe(0).is_ok()
}

fn unavailable(ordinal: usize, reason: impl Into<String>) -> Error {
    Error::DeviceUnavailable {
        device: format!("cuda:{ordinal}"),
        reason: reason.into(),
    }
}

/// Checks that device `ordinal` exists without creating a context. cudarc panics inside any
/// driver call when libcuda is missing, so the library's presence is checked first.
fn probe(ordinal: usize) -> Result<()> {
    // SAFETY: only tries to dlopen the driver library's candidate names.
    if !unsafe { drv::is_culib_present() } {
        return Err(unavailable(
            ordinal,
            "the NVIDIA driver library (libcuda.so.1) is not installed",
        ));
    }
    let count = CudaContext::device_count()
        .map_err(|e| unavailable(ordinal, format!("the driver reports no device ({e})")))?;
    if ordinal >= usize::try_from(count).unwrap_or(0) {
        return Err(unavailable(
            ordinal,
            format!("{count} CUDA device(s) present"),
        ));
    }
    Ok(())
}

/// What the driver reports about one loaded kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// The kernel module (`elementwise`, `attention`, …).
    pub module: &'static str,
    /// The kernel's `extern "C"` name.
    pub name: String,
    /// Registers per thread.
    pub registers: i32,
    /// Local memory per thread in bytes (non-zero means register spills or a stack).
    pub local_bytes: i32,
    /// The largest block the kernel can be launched with.
    pub max_threads_per_block: i32,
}

/// Counters of a device's buffer pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Buffer requests that needed a driver allocation.
    pub driver_allocations: u64,
    /// Buffer requests served from the pool's free lists.
    pub reuses: u64,
    /// Bytes currently held in the free lists.
    pub cached_bytes: usize,
}

/// The buffer-pool counters of CUDA device `ordinal` (opening it if needed). In steady state (the
/// same shapes every denoising step) `driver_allocations` stops growing.
///
/// # Errors
/// [`Error::DeviceUnavailable`] without a driver or device.
pub fn pool_stats(ordinal: usize) -> Result<PoolStats> {
    let dev = CudaDevice::get(ordinal)?;
    let pool = dev
        .pool
        .lock()
        .map_err(|_| Error::Internal("cuda buffer pool lock poisoned".into()))?;
    Ok(PoolStats {
        driver_allocations: pool.driver_allocations,
        reuses: pool.reuses,
        cached_bytes: pool.cached_bytes,
    })
}

/// Loads every kernel module on CUDA device `ordinal` (compiling it, or reading it from the disk
/// cache) and reports each kernel's resources. Calling it once before timing or graph capture
/// keeps compilation and module loading out of both. The attention module is skipped below
/// sm_80, where the backend does not use it.
///
/// # Errors
/// [`Error::DeviceUnavailable`] without a driver or device; compiler or driver errors otherwise.
pub fn warm_up(ordinal: usize) -> Result<Vec<KernelInfo>> {
    let dev = CudaDevice::get(ordinal)?;
    let mut out = Vec::new();
    for module in KernelModule::ALL {
        if module == KernelModule::Attention && dev.compute_capability.0 < 8 {
            continue;
        }
        let handle = dev.module(module)?;
        for name in module.kernel_names() {
            let f = handle
                .load_function(&name)
                .map_err(driver_err(format!("load kernel {name}")))?;
            let attr = |r: std::result::Result<i32, cudarc::driver::DriverError>| {
                r.map_err(driver_err(format!("query kernel {name}")))
            };
            out.push(KernelInfo {
                module: module.name(),
                registers: attr(f.num_regs())?,
                local_bytes: attr(f.local_size_bytes())?,
                max_threads_per_block: attr(f.max_threads_per_block())?,
                name,
            });
        }
    }
    Ok(out)
}

/// Buffers smaller than this are pooled in power-of-two classes, larger ones in 1 MiB steps.
const SMALL_CLASS_LIMIT: usize = 1 << 20;

/// The byte size a request of `bytes` is rounded up to, so that same-shaped activations of
/// successive steps reuse each other's buffers.
fn size_class(bytes: usize) -> usize {
    let bytes = bytes.max(256);
    if bytes <= SMALL_CLASS_LIMIT {
        bytes.next_power_of_two()
    } else {
        bytes.div_ceil(SMALL_CLASS_LIMIT) * SMALL_CLASS_LIMIT
    }
}

/// Free buffers by size class. In steady state (the same shapes every denoising step) every
/// allocation is served from here; the driver pool behind it caches too (release threshold set
/// to the maximum), so even a miss rarely reaches the OS.
struct Pool {
    free: HashMap<usize, Vec<CudaSlice<u8>>>,
    cached_bytes: usize,
    /// Requests served by a driver allocation / from the free lists.
    driver_allocations: u64,
    reuses: u64,
    /// Above this many cached bytes, released buffers are freed instead of kept.
    limit: usize,
}

/// Device memory handed out by the pool; returned to it on drop.
pub(crate) struct DeviceBuffer {
    slice: Option<CudaSlice<u8>>,
    ptr: u64,
    class: usize,
    dev: Arc<CudaDevice>,
}

impl DeviceBuffer {
    /// The raw device address (for kernel arguments and cuBLASLt).
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The device that owns the memory.
    pub(crate) fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// The underlying slice (for copies).
    pub(crate) fn slice(&self) -> &CudaSlice<u8> {
        // The slice is taken only in `drop`.
        self.slice
            .as_ref()
            .unwrap_or_else(|| unreachable!("buffer used after drop"))
    }

    pub(crate) fn slice_mut(&mut self) -> &mut CudaSlice<u8> {
        self.slice
            .as_mut()
            .unwrap_or_else(|| unreachable!("buffer used after drop"))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            self.dev.release(slice, self.class);
        }
    }
}

/// A function handle cache key: (kernel base name, dtype suffix or none).
type FnKey = (&'static str, Option<DType>);

/// One opened CUDA device.
pub(crate) struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    compute_capability: (i32, i32),
    /// The most dynamic shared memory one block may opt in to, in bytes.
    max_shared_optin: usize,
    pool: Mutex<Pool>,
    modules: RwLock<HashMap<KernelModule, Arc<CudaModule>>>,
    functions: RwLock<HashMap<FnKey, CudaFunction>>,
    blas: Mutex<Option<Blas>>,
}

static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();

impl CudaDevice {
    /// The cached device `ordinal`, opened on first use.
    ///
    /// # Errors
    /// [`Error::DeviceUnavailable`] without a driver or without that device; a driver error if
    /// context creation fails.
    pub(crate) fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        let registry = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut devices = registry
            .lock()
            .map_err(|_| Error::Internal("cuda device registry lock poisoned".into()))?;
        if let Some(dev) = devices.get(&ordinal) {
            return Ok(Arc::clone(dev));
        }
        let dev = Arc::new(CudaDevice::open(ordinal)?);
        devices.insert(ordinal, Arc::clone(&dev));
        Ok(dev)
    }

    fn open(ordinal: usize) -> Result<CudaDevice> {
        probe(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(driver_err("create context"))?;
        // SAFETY: called before any allocation or stream exists on this context; the backend uses
        // one stream per device, so the events cudarc would record are never needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("create stream"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err("query compute capability"))?;
        if ctx.has_async_alloc() {
            set_release_threshold(&ctx)?;
        }
        let total = ctx.total_mem().unwrap_or(0);
        let max_shared_optin = ctx
            .attribute(
                drv::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(driver_err("query shared memory opt-in"))?;
        Ok(CudaDevice {
            ordinal,
            ctx,
            stream,
            arch: format!("sm_{major}{minor}"),
            compute_capability: (major, minor),
            max_shared_optin: usize::try_from(max_shared_optin).unwrap_or(0),
            pool: Mutex::new(Pool {
                free: HashMap::new(),
                cached_bytes: 0,
                driver_allocations: 0,
                reuses: 0,
                // Keep at most half the device's memory cached in free buffers.
                limit: (total / 2).max(256 << 20),
            }),
            modules: RwLock::new(HashMap::new()),
            functions: RwLock::new(HashMap::new()),
            blas: Mutex::new(None),
        })
    }

    /// The ordinal.
    pub(crate) fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The stream every operation runs on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The compute capability as (major, minor).
    pub(crate) fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// The most dynamic shared memory one block may use (after opting in), in bytes.
    pub(crate) fn max_shared_optin(&self) -> usize {
        self.max_shared_optin
    }

    /// A buffer of at least `bytes` bytes from the pool. Its contents are undefined (NaN when
    /// poisoning is on; `dtype` picks the NaN pattern).
    pub(crate) fn alloc(self: &Arc<Self>, bytes: usize, dtype: DType) -> Result<DeviceBuffer> {
        let class = size_class(bytes);
        let reused = {
            let mut pool = self
                .pool
                .lock()
                .map_err(|_| Error::Internal("cuda buffer pool lock poisoned".into()))?;
            let slice = pool.free.get_mut(&class).and_then(Vec::pop);
            if slice.is_some() {
                pool.cached_bytes -= class;
                pool.reuses += 1;
            } else {
                pool.driver_allocations += 1;
            }
            slice
        };
        let slice = match reused {
            Some(s) => s,
            None => {
                // SAFETY: the memory is uninitialised; every kernel writes its output before
                // anything reads it, and tests poison it to prove that.
                match unsafe { self.stream.alloc::<u8>(class) } {
                    Ok(s) => s,
                    Err(_) => {
                        // Out of memory is the likely cause: give the cached buffers back and retry.
                        self.trim()?;
                        // SAFETY: as above.
                        unsafe { self.stream.alloc::<u8>(class) }.map_err(|e| {
                            if e.0 == drv::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                                Error::Cuda(CudaError::OutOfMemory {
                                    op: "alloc".into(),
                                    bytes: class,
                                })
                            } else {
                                driver_err(format!("alloc {class} bytes"))(e)
                            }
                        })?
                    }
                }
            }
        };
        let ptr = slice.device_ptr(&self.stream).0;
        let buf = DeviceBuffer {
            slice: Some(slice),
            ptr,
            class,
            dev: Arc::clone(self),
        };
        if POISON.load(Ordering::Relaxed) {
            self.fill_nan(buf.ptr, class, dtype)?;
        }
        Ok(buf)
    }

    fn fill_nan(&self, ptr: u64, bytes: usize, dtype: DType) -> Result<()> {
        // SAFETY: `ptr` addresses a live allocation of at least `bytes` bytes on this context,
        // and the memset is ordered on the device's stream before any use of the buffer.
        let res = unsafe {
            match dtype {
                DType::F32 => {
                    drv::cuMemsetD32Async(ptr, 0x7fc0_0000, bytes / 4, self.stream.cu_stream())
                }
                DType::F16 => {
                    drv::cuMemsetD16Async(ptr, 0x7e00, bytes / 2, self.stream.cu_stream())
                }
                DType::BF16 => {
                    drv::cuMemsetD16Async(ptr, 0x7fc0, bytes / 2, self.stream.cu_stream())
                }
            }
        };
        res.result().map_err(driver_err("poison buffer"))
    }

    fn release(&self, slice: CudaSlice<u8>, class: usize) {
        let Ok(mut pool) = self.pool.lock() else {
            return; // a poisoned lock: let cudarc free the buffer
        };
        if pool.cached_bytes + class <= pool.limit {
            pool.cached_bytes += class;
            pool.free.entry(class).or_default().push(slice);
        }
    }

    /// Frees every cached buffer (the driver pool may still keep the memory for reuse).
    pub(crate) fn trim(&self) -> Result<()> {
        let mut pool = self
            .pool
            .lock()
            .map_err(|_| Error::Internal("cuda buffer pool lock poisoned".into()))?;
        pool.free.clear();
        pool.cached_bytes = 0;
        Ok(())
    }

    /// The kernel `<base>_<dtype>` (or just `<base>` when `dtype` is `None`) of `module`, loading
    /// and compiling the module on first use.
    pub(crate) fn function(
        &self,
        module: KernelModule,
        base: &'static str,
        dtype: Option<DType>,
    ) -> Result<CudaFunction> {
        let key = (base, dtype);
        if let Some(f) = self
            .functions
            .read()
            .map_err(|_| Error::Internal("cuda function cache lock poisoned".into()))?
            .get(&key)
        {
            return Ok(f.clone());
        }
        let module_handle = self.module(module)?;
        let name = match dtype {
            Some(dt) => format!("{base}_{}", dt.as_str()),
            None => base.to_string(),
        };
        let f = module_handle
            .load_function(&name)
            .map_err(driver_err(format!("load kernel {name}")))?;
        if base.starts_with("flash_fwd_") {
            // Above 48 KB of dynamic shared memory a kernel must opt in (d = 80 and 160 need it).
            let static_bytes = f.shared_size_bytes().unwrap_or(0).max(0) as usize;
            let allowed = self.max_shared_optin.saturating_sub(static_bytes);
            f.set_attribute(
                drv::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                i32::try_from(allowed).unwrap_or(i32::MAX),
            )
            .map_err(driver_err(format!("opt {name} in to shared memory")))?;
        }
        self.functions
            .write()
            .map_err(|_| Error::Internal("cuda function cache lock poisoned".into()))?
            .insert(key, f.clone());
        Ok(f)
    }

    fn module(&self, module: KernelModule) -> Result<Arc<CudaModule>> {
        if let Some(m) = self
            .modules
            .read()
            .map_err(|_| Error::Internal("cuda module cache lock poisoned".into()))?
            .get(&module)
        {
            return Ok(Arc::clone(m));
        }
        let mut modules = self
            .modules
            .write()
            .map_err(|_| Error::Internal("cuda module cache lock poisoned".into()))?;
        if let Some(m) = modules.get(&module) {
            return Ok(Arc::clone(m));
        }
        let cubin = cubin_cached(module, &self.arch)?;
        let loaded = self
            .ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(driver_err(format!("load module {}", module.name())))?;
        modules.insert(module, Arc::clone(&loaded));
        Ok(loaded)
    }

    /// Runs `f` with the device's cuBLASLt state, created on first use.
    pub(crate) fn with_blas<R>(&self, f: impl FnOnce(&mut Blas) -> Result<R>) -> Result<R> {
        let mut guard = self
            .blas
            .lock()
            .map_err(|_| Error::Internal("cublaslt lock poisoned".into()))?;
        if guard.is_none() {
            *guard = Some(Blas::new(&self.stream, self.compute_capability)?);
        }
        match guard.as_mut() {
            Some(blas) => f(blas),
            None => Err(Error::Internal(
                "cublaslt state missing after creation".into(),
            )),
        }
    }

    /// Waits for all queued work.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("synchronize"))
    }
}

/// Makes the device's default memory pool keep freed memory (the default threshold, 0, returns
/// it to the OS at every synchronisation, which turns `cuMemAllocAsync` into a real allocation).
fn set_release_threshold(ctx: &CudaContext) -> Result<()> {
    let mut pool: drv::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is valid for writes; the device handle comes from a live context.
    unsafe { drv::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .map_err(driver_err("get default memory pool"))?;
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the attribute takes a pointer to a cuuint64_t, which `threshold` is, live for the
    // duration of the call.
    unsafe {
        drv::cuMemPoolSetAttribute(
            pool,
            drv::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .result()
    .map_err(driver_err("set memory pool release threshold"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(300), 512);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class(5 << 20), 5 << 20);
    }

    #[test]
    fn no_device_is_an_error_not_a_panic() {
        // On a machine without a driver this must be DeviceUnavailable; with one, Ok.
        match CudaDevice::get(0) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), crate::ErrorKind::Device, "{e}"),
        }
        assert!(CudaDevice::get(1 << 20).is_err());
    }
}
