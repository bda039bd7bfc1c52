//! Add-ons that steer a loaded model, as users share them: textual-inversion [`embedding`]s
//! (vectors spliced into the text encoder's input), and, built on the parameter and attention
//! seams of [`crate::models::params`], LoRA-family weight patches and hypernetworks. [`extract`]
//! makes a LoRA out of a full fine-tune and its base model.

pub mod embedding;
pub mod extract;

pub use embedding::{Embedding, EmbeddingSet};
