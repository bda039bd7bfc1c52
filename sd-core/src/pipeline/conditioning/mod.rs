//! Prompts to per-step text conditioning, the way AUTOMATIC1111's web UI builds it.
//!
//! Two stages, so that extra networks named in the prompt can be resolved (and a patched text
//! encoder used) between them:
//!
//! 1. [`ParsedPrompts::parse`]: the text-level steps of [`crate::prompt`]: extra-network tags
//!    (`<lora:…>`, `<hypernet:…>`) taken out of the positive prompt and returned
//!    ([`ParsedPrompts::extra_networks`]), composable `AND` with weights (positive prompt only),
//!    prompt editing `[from:to:when]` and alternation `[a|b]` for both prompts.
//! 2. [`ParsedPrompts::encode`]: every schedule text is tokenized into 75-token chunks (comma
//!    backtrack, `BREAK`, textual-inversion vectors spliced in), each chunk is encoded once, the
//!    emphasis multipliers are applied ([`EmphasisMode`]) and the chunks are concatenated along
//!    the tokens. The result, [`Conditioning`], gives A1111's conditioning for any sampling step
//!    ([`Conditioning::at_step`]), with the prompt and negative prompt padded to the same length.
//!
//! A1111 sources followed: `modules/processing.py` (order of the steps, which prompt gets which),
//! `modules/prompt_parser.py` (`get_learned_conditioning`, `get_multicond_learned_conditioning`,
//! `reconstruct_cond_batch`, `reconstruct_multicond_batch`, `stack_conds`),
//! `modules/sd_hijack_clip.py` (`TextConditionalModel.forward`, `process_tokens`),
//! `modules/sd_hijack.py` (`EmbeddingsWithFixes`), `modules/sd_emphasis.py` and
//! `modules/sd_samplers_cfg_denoiser.py` (`CFGDenoiser.forward`, `pad_cond`, `combine_denoised`).
//!
//! [`PromptSyntax::Plain`] instead encodes each prompt as diffusers does: the text as written,
//! truncated to 77 tokens, one conditioning for every step.
//!
//! # Limits
//!
//! Prompts come from users, so the work they can ask for is bounded, each limit failing with an
//! [`crate::Error::InvalidArgument`] naming the prompt: at most [`MAX_PROMPT_BYTES`] per prompt,
//! [`MAX_AND_PROMPTS`] `AND` parts, [`MAX_PROMPT_CHUNKS`] chunks per text and
//! [`MAX_ENCODED_CHUNKS`] text-encoder passes in all. A schedule has at most one segment per step
//! (and the step count is bounded by the request), so the texts it takes are bounded too.

mod encode;
mod parse;
mod schedule;
mod step;

pub use encode::EncodeOptions;
pub use parse::{ParsedPrompts, ParsedSubPrompt};
pub use schedule::{
    CondSchedule, CondSegment, Conditioning, StepConditioning, UsedEmbedding, WeightedCond,
};
pub(crate) use step::{StepBatch, StepContext};

use crate::prompt::EmphasisMode;

/// How prompts are read.
///
/// A plain prompt (no brackets, `AND`, `BREAK`, `<…:…>` tags or embedding names) of at most 75
/// tokens gives bit-identical conditioning under both syntaxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptSyntax {
    /// AUTOMATIC1111's prompt language: `(emphasis:1.2)`, `[less]`, `BREAK`, prompts longer than
    /// 75 tokens in chunks, `[from:to:when]` editing, `[a|b]` alternation, `AND` with weights,
    /// `<lora:…>`/`<hypernet:…>` tags (taken out of the text) and textual-inversion embeddings
    /// triggered by name. This is the default.
    #[default]
    A1111,
    /// diffusers' reading: the text is encoded as written, truncated to 77 tokens, with no
    /// special syntax and no embeddings.
    Plain,
}

impl PromptSyntax {
    /// The name used on command lines and in the infotext: `a1111` or `plain`.
    pub fn name(self) -> &'static str {
        match self {
            PromptSyntax::A1111 => "a1111",
            PromptSyntax::Plain => "plain",
        }
    }
}

impl std::str::FromStr for PromptSyntax {
    type Err = crate::Error;

    /// Reads `a1111` or `plain` (any case).
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "a1111" => Ok(PromptSyntax::A1111),
            "plain" => Ok(PromptSyntax::Plain),
            _ => Err(crate::Error::invalid_argument(
                "prompt_syntax",
                format!("unknown `{s}` (a1111 or plain)"),
            )),
        }
    }
}

/// Longest prompt or negative prompt accepted, in bytes. Bounds the text handled per step (a
/// prompt with alternation has one text per step); 32 KiB is far more than the
/// [`MAX_PROMPT_CHUNKS`] chunks a prompt may fill.
pub const MAX_PROMPT_BYTES: usize = 32 * 1024;

/// Most `AND` parts in a prompt. Each part adds one UNet evaluation per image and step.
pub const MAX_AND_PROMPTS: usize = 32;

/// Most 75-token chunks one prompt text may fill (2400 tokens).
pub const MAX_PROMPT_CHUNKS: usize = 32;

/// Most text-encoder passes (one per distinct 77-token chunk) one generation may need, over every
/// schedule text of both prompts. Bounds the time and memory spent on conditioning.
pub const MAX_ENCODED_CHUNKS: usize = 256;

/// The emphasis mode written in the infotext when it is not the default, as A1111 names it.
pub(crate) fn emphasis_infotext(mode: EmphasisMode) -> Option<&'static str> {
    (mode != EmphasisMode::Original).then(|| mode.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_names_round_trip() {
        for s in [PromptSyntax::A1111, PromptSyntax::Plain] {
            assert_eq!(s.name().parse::<PromptSyntax>().ok(), Some(s));
        }
        assert_eq!(
            "PLAIN".parse::<PromptSyntax>().ok(),
            Some(PromptSyntax::Plain)
        );
        assert!("diffusers".parse::<PromptSyntax>().is_err());
        assert_eq!(PromptSyntax::default(), PromptSyntax::A1111);
    }
}
