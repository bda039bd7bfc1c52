//! Add-ons that steer a loaded model, as users share them: textual-inversion [`embedding`]s
//! (vectors spliced into the text encoder's input), and, built on the parameter and attention
//! seams of [`crate::models::params`], LoRA-family weight patches and hypernetworks.

pub mod embedding;
pub mod lora;

pub use embedding::{Embedding, EmbeddingSet};
pub use lora::{Lora, LoraReport, LoraUse, apply_loras};
