//! Reading model weights from users' files.
//!
//! [`store`] defines the [`TensorSource`] trait that every container format implements and the
//! [`WeightStore`] that model code reads through. [`safetensors`] reads (and writes) validated
//! `.safetensors` files; [`names`] renames the original single-file layout to diffusers names;
//! [`layout`] finds the components of a model on disk, whichever layout it is in; [`pickle`] and
//! [`ckpt`] read pickle checkpoints without running any of their code.

pub mod ckpt;
pub mod convert;
pub mod layout;
pub mod names;
pub mod pickle;
pub mod safetensors;
pub mod store;

pub use convert::{
    ConvertDType, ConvertSummary, ScanReport, ScannedGlobal, ScannedTensor, Verdict,
    convert_to_safetensors, scan_checkpoint,
};
pub use layout::{Layout, LoadOptions, ModelFiles, open_tensor_source};
pub use names::{KeyMapping, ModelFamily};
pub use safetensors::{
    RawTensor, ReadMode, SafetensorsFile, SafetensorsLimits, WriteDType, write_safetensors,
    write_safetensors_raw,
};
pub use store::{MemorySource, StoredDType, TensorInfo, TensorSource, WeightStore, Weights};
