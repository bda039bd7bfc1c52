//! A small, bounded pool of large host buffers, so that steady-state inference reuses memory
//! instead of asking the kernel for fresh (page-faulted, zero-cleared) pages for every op output.
//!
//! Tensor storage returns its buffer here when dropped ([`CpuBuffer`]); kernels that overwrite
//! every element of their output take one with [`take`]. Reused buffers hold stale but
//! initialised values, so nothing ever reads uninitialised memory. Only buffers of at least
//! [`MIN_POOLED`] values are kept, at most [`MAX_POOLED`] of them and [`MAX_POOLED_BYTES`] in all;
//! the oldest are freed first.

use std::ops::Deref;
use std::sync::Mutex;

/// Smallest buffer worth pooling, in `f32` values (256 KiB); the allocator serves smaller ones
/// from its heap without page faults.
const MIN_POOLED: usize = 1 << 16;
/// Most buffers kept.
const MAX_POOLED: usize = 32;
/// Most bytes kept.
const MAX_POOLED_BYTES: usize = 768 << 20;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A vector of `len` values with unspecified (stale, but initialised) contents, for outputs the
/// caller overwrites entirely. Reuses a pooled buffer of between `len` and `2·len` values when
/// one is free, else allocates a zeroed one.
pub(crate) fn take(len: usize) -> Vec<f32> {
    if len >= MIN_POOLED
        && let Ok(mut pool) = POOL.lock()
    {
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len && v.capacity() <= 2 * len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let mut v = pool.remove(i);
            drop(pool);
            if v.len() >= len {
                v.truncate(len);
            } else {
                v.resize(len, 0.0);
            }
            return v;
        }
    }
    vec![0.0; len]
}

/// A copy of `src` in a buffer from [`take`].
pub(crate) fn copy_of(src: &[f32]) -> Vec<f32> {
    let mut v = take(src.len());
    v.copy_from_slice(src);
    v
}

/// Frees every pooled buffer; returns the number of bytes released.
pub(crate) fn clear() -> usize {
    let drained = match POOL.lock() {
        Ok(mut pool) => std::mem::take(&mut *pool),
        Err(_) => return 0,
    };
    drained.iter().map(|v| v.capacity() * 4).sum()
}

/// Returns a scratch buffer from [`take`] to the pool once the caller is done with it (else it
/// is freed and the next [`take`] of its size pays for fresh pages).
pub(crate) fn give(v: Vec<f32>) {
    recycle(v);
}

/// Offers a buffer back to the pool (or frees it).
fn recycle(v: Vec<f32>) {
    if v.capacity() < MIN_POOLED {
        return;
    }
    let Ok(mut pool) = POOL.lock() else {
        return;
    };
    pool.push(v);
    let bytes = |p: &Vec<Vec<f32>>| p.iter().map(|v| v.capacity() * 4).sum::<usize>();
    let mut evicted = Vec::new();
    while pool.len() > MAX_POOLED || (pool.len() > 1 && bytes(&pool) > MAX_POOLED_BYTES) {
        evicted.push(pool.remove(0));
    }
    if bytes(&pool) > MAX_POOLED_BYTES {
        // A single buffer larger than the whole budget is not kept.
        evicted.append(&mut pool);
    }
    drop(pool);
    drop(evicted);
}

/// The host buffer of a CPU tensor; it goes back to the pool when the tensor's storage drops.
pub(crate) struct CpuBuffer(Vec<f32>);

impl CpuBuffer {
    /// Wraps a buffer.
    pub(crate) fn new(v: Vec<f32>) -> Self {
        CpuBuffer(v)
    }
}

impl Deref for CpuBuffer {
    type Target = Vec<f32>;

    fn deref(&self) -> &Vec<f32> {
        &self.0
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_dropped_buffers_and_stays_bounded() {
        let len = MIN_POOLED + 123;
        let buf = CpuBuffer::new(vec![1.5; len]);
        let ptr = buf.as_ptr();
        drop(buf);
        // Another test may take it first; only check when it comes back.
        let v = take(len - 7);
        assert_eq!(v.len(), len - 7);
        if v.as_ptr() == ptr {
            assert!(v.iter().all(|&x| x == 1.5));
        }
        // Small requests are plain zeroed allocations.
        assert!(take(10).iter().all(|&x| x == 0.0));
        for _ in 0..2 * MAX_POOLED {
            drop(CpuBuffer::new(vec![0.0; MIN_POOLED]));
        }
        let pool = POOL.lock().map(|p| p.len()).unwrap_or(0);
        assert!(pool <= MAX_POOLED);
        assert_eq!(copy_of(&[1.0, 2.0]), vec![1.0, 2.0]);
    }
}
