//! Add-ons that steer a loaded model, as users share them: textual-inversion [`embedding`]s
//! (vectors spliced into the text encoder's input), and, built on the parameter and attention
//! seams of [`crate::models::params`], [`lora`]-family weight patches and [`hypernetwork`]s; a
//! [`library`] finds the files prompts name, and [`extract`] makes a LoRA out of a full
//! fine-tune and its base model.

pub mod embedding;
pub mod extract;
pub mod hypernetwork;
pub mod library;
pub mod lora;

pub use embedding::{Embedding, EmbeddingFormat, EmbeddingSet, EmbeddingSource, EmbeddingTrigger};
pub use hypernetwork::{Hypernetwork, HypernetworkReport, HypernetworkStack};
pub use library::{AdapterLibrary, EmbeddingDir, load_embedding_dir};
pub use lora::{Lora, LoraReport, LoraUse, apply_loras};
