//! The AUTOMATIC1111 prompt language, as pure text → structure functions.
//!
//! The steps, in the order A1111 applies them to a prompt (`modules/processing.py`):
//!
//! 1. [`parse_extra_networks`]: `<lora:NAME:TE:UNET:DYN>`, `<lyco:…>`, `<hypernet:NAME:MULT>` tags are removed
//!    and returned as structured requests.
//! 2. [`split_and`]: composable diffusion, `a AND b:0.5` gives weighted sub-prompts.
//! 3. [`prompt_schedule`]: prompt editing `[from:to:when]` and alternation `[a|b]` give one text per range of
//!    steps.
//! 4. [`parse_prompt_attention`]: each text is split into runs with emphasis weights (`(a:1.3)`, `[a]`, `BREAK`).
//! 5. [`tokenize_prompt`]: the runs are tokenized and packed into 77-token chunks with per-token multipliers.
//! 6. After the text encoder, [`apply_emphasis`] applies the multipliers to its hidden states.

mod attention;
mod chunk;
mod composable;
mod emphasis;
mod extra_networks;
mod schedule;

use std::sync::OnceLock;

use regex::Regex;

use crate::error::{Error, Result};

pub use attention::{Fragment, ROUND_BRACKET_MULTIPLIER, parse_prompt_attention};
pub use chunk::{
    CHUNK_TOKENS, ChunkOptions, DEFAULT_COMMA_BACKTRACK, EmbeddingFix, EmbeddingLookup,
    EmbeddingMatch, PromptChunk, TokenizedPrompt, tokenize_prompt,
};
pub use composable::{SubPrompt, split_and};
pub use emphasis::{EmphasisMode, apply_emphasis};
pub use extra_networks::{
    ExtraNetwork, ExtraNetworkPrompt, ExtraNetworkTag, HypernetTag, LoraTag,
    extract_extra_networks, parse_extra_networks,
};
pub use schedule::{PromptSchedule, ScheduleOptions, ScheduleSegment, prompt_schedule};

/// Compiles `pattern` once into `cell`; an error means a pattern literal in this module is invalid (a bug).
fn cached_regex(
    cell: &'static OnceLock<std::result::Result<Regex, String>>,
    pattern: &str,
) -> Result<&'static Regex> {
    cell.get_or_init(|| Regex::new(pattern).map_err(|e| format!("prompt pattern {pattern:?}: {e}")))
        .as_ref()
        .map_err(|e| Error::Internal(e.clone()))
}
