//! `sd-core` is a Stable Diffusion engine for programs that embed it. It loads the checkpoints
//! people download (diffusers folders and single-file `.safetensors` in the original layout),
//! never runs code from a file, and turns prompts into images on the CPU, with a CUDA backend
//! chosen at run time where it is built in.
//!
//! The pieces, in the order data flows through them: [`tokenizer`] (CLIP BPE) → [`models::clip`]
//! (text encoder) → the denoising loop of [`pipeline`] over [`models::unet`] driven by a
//! [`schedulers`] scheduler and seeded [`noise`] → [`models::vae`] → [`image`] (PNG with the
//! generation parameters). [`weights`] reads and validates model files; [`tensor`] and the
//! backends do the arithmetic.
#![deny(missing_docs)]

pub mod adapters;
pub(crate) mod backend;
pub mod error;
pub mod image;
pub mod models;
pub mod noise;
pub mod pipeline;
pub mod prompt;
pub mod schedulers;
pub mod tensor;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, ErrorKind, Result};

/// The CUDA backend's public hooks (built with the `cuda` feature): availability, the kernel
/// modules and their NVRTC compilation (usable without a GPU, for CI), and test switches.
#[cfg(feature = "cuda")]
pub mod cuda {
    pub use crate::backend::cuda::compile::{
        CompiledModule, KernelModule, compile_module, compile_options, nvrtc_available,
        nvrtc_version,
    };
    pub use crate::backend::cuda::{
        KernelInfo, PoolStats, cuda_available, pool_stats, set_poison_allocations, warm_up,
    };
}
pub use tensor::{DType, Device, Shape, Tensor};

/// Frees the host buffers that CPU operations keep for reuse (at most 768 MiB, filled during a
/// generation so that later steps avoid fresh page faults) and returns how many bytes were
/// released. Call it when an embedding program goes idle and wants its memory back; the next
/// generation simply refills the cache.
pub fn release_cached_memory() -> usize {
    backend::cpu::pool::clear()
}
