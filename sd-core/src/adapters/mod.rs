//! Add-ons that steer a loaded model, as users share them: textual-inversion [`embedding`]s
//! (vectors spliced into the text encoder's input), and, built on the parameter and attention
//! seams of [`crate::models::params`], [`lora`]-family weight patches and [`hypernetwork`]s.

pub mod embedding;
pub mod hypernetwork;
pub mod lora;

pub use embedding::{Embedding, EmbeddingFormat, EmbeddingSet, EmbeddingSource, EmbeddingTrigger};
pub use hypernetwork::{Hypernetwork, HypernetworkReport, HypernetworkStack};
pub use lora::{Lora, LoraReport, LoraUse, apply_loras};
