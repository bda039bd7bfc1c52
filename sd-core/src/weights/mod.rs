//! Reading model weights from users' files.
//!
//! [`store`] defines the [`TensorSource`] trait that every container format implements and the
//! [`WeightStore`] that model code reads through.

pub mod ckpt;
pub mod pickle;
pub mod store;

pub use store::{MemorySource, StoredDType, TensorInfo, TensorSource, WeightStore, Weights};
