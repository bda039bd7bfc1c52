//! What applying LoRAs did: per LoRA, the modules it patched and every key it did not apply,
//! with the reason. Nothing in a file is dropped without a line here.

use super::keys::Component;
use super::modules::Algorithm;

/// Why a key of a LoRA file was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The key is not a tensor name of any LoRA format.
    UnrecognisedKey,
    /// No module of the model has this name.
    UnknownModule,
    /// The module's tensors form no supported algorithm (OFT, or an incomplete set such as a
    /// `lora_up` without its `lora_down`); `parts` lists what the module holds.
    UnsupportedAlgorithm {
        /// The parts found for the module.
        parts: Vec<String>,
    },
    /// The module's algorithm does not read this tensor.
    UnusedPart {
        /// The module's algorithm.
        algorithm: Algorithm,
    },
    /// A bias difference (`diff_b`, `b_norm`) for a layer that has no bias parameter.
    NoBiasParameter {
        /// The layer.
        target: String,
    },
    /// The strength for this module's model part is 0, so it changes nothing.
    ZeroStrength,
    /// A bundled textual-inversion embedding that cannot be used with this model (an SDXL
    /// `clip_l`/`clip_g` pair, or several vectors sets in one entry).
    UnusableEmbedding {
        /// What is wrong with it.
        reason: String,
    },
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::UnrecognisedKey => f.write_str("not a LoRA tensor name"),
            SkipReason::UnknownModule => f.write_str("no module of the model has this name"),
            SkipReason::UnsupportedAlgorithm { parts } => {
                write!(f, "unsupported algorithm (parts: {})", parts.join(", "))
            }
            SkipReason::UnusedPart { algorithm } => {
                write!(f, "not read by the module's algorithm ({algorithm})")
            }
            SkipReason::NoBiasParameter { target } => {
                write!(f, "`{target}` has no bias to add the difference to")
            }
            SkipReason::ZeroStrength => f.write_str("strength 0"),
            SkipReason::UnusableEmbedding { reason } => {
                write!(f, "bundled embedding not usable: {reason}")
            }
        }
    }
}

/// One key of a LoRA file that was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The tensor name, as stored in the file.
    pub key: String,
    /// Why it was not applied.
    pub reason: SkipReason,
}

/// One module a LoRA patched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedModule {
    /// The module's name in the file (`lora_unet_down_blocks_0_…`, `unet.down_blocks.0.…`).
    pub module: String,
    /// The model layer it patched (diffusers / transformers name, without `.weight`).
    pub target: String,
    /// The model part, whose strength applied.
    pub component: Component,
    /// The algorithm.
    pub algorithm: Algorithm,
}

/// What one LoRA did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraApplied {
    /// The LoRA's name ([`Lora::name`](super::Lora::name)).
    pub name: String,
    /// The text-encoder strength used.
    pub text_encoder_strength: f32,
    /// The UNet strength used.
    pub unet_strength: f32,
    /// The modules patched, in file order.
    pub applied: Vec<AppliedModule>,
    /// Every key not applied, with the reason.
    pub skipped: Vec<SkippedKey>,
}

/// What [`apply_loras`](super::apply_loras) did, one entry per LoRA use, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoraReport {
    /// Per LoRA use.
    pub loras: Vec<LoraApplied>,
}

impl LoraReport {
    /// Whether every key of every LoRA was applied (nothing skipped for any reason).
    pub fn is_complete(&self) -> bool {
        self.loras.iter().all(|l| l.skipped.is_empty())
    }
}
