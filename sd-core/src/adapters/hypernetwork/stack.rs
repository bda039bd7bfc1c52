//! Several hypernetworks applied together, each at its own strength (A1111's
//! `apply_hypernetworks`), as a UNet's attention context hook; and what they will touch in a
//! given UNet.

use std::sync::Arc;

use super::{Hypernetwork, check_strength};
use crate::error::Result;
use crate::models::{AttentionContextHook, UNetBlockKind, UNetConfig};
use crate::tensor::Tensor;

/// Hypernetworks chained in order, each with its own strength.
///
/// As A1111's `apply_hypernetworks`, the key and value contexts are chained separately:
/// `k = Hₙ_k(…H₁_k(context))`, `v = Hₙ_v(…H₁_v(context))`, each hypernetwork acting only where it
/// has a module for the context's width. Install it on a clone of the UNet with
/// [`UNet2DConditionModel::set_attention_context_hook`](crate::models::UNet2DConditionModel::set_attention_context_hook)
/// (as `Arc<HypernetworkStack>`); the hypernetworks must be on the UNet's device.
#[derive(Debug, Clone, Default)]
pub struct HypernetworkStack {
    entries: Vec<(Arc<Hypernetwork>, f32)>,
}

impl HypernetworkStack {
    /// An empty stack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a hypernetwork applied at `strength` (A1111's multiplier: 1 is full strength;
    /// 0 and negative values are allowed).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a strength that is not a
    /// finite number.
    pub fn push(&mut self, hypernetwork: Arc<Hypernetwork>, strength: f32) -> Result<()> {
        check_strength(strength)?;
        self.entries.push((hypernetwork, strength));
        Ok(())
    }

    /// The stack with one more hypernetwork (see [`push`](Self::push)).
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn with(mut self, hypernetwork: Arc<Hypernetwork>, strength: f32) -> Result<Self> {
        self.push(hypernetwork, strength)?;
        Ok(self)
    }

    /// The hypernetworks and their strengths, in the order they are applied.
    pub fn entries(&self) -> &[(Arc<Hypernetwork>, f32)] {
        &self.entries
    }

    /// Whether the stack holds no hypernetwork.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of hypernetworks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// What each hypernetwork will act on in a UNet of configuration `unet`, with warnings for
    /// likely mistakes (no module for the model's text-conditioning width: made for another model
    /// family).
    pub fn report(&self, unet: &UNetConfig) -> HypernetworkReport {
        let widths = AttentionWidths::of(unet);
        let mut report = HypernetworkReport::default();
        for (hn, _) in &self.entries {
            let fit = widths.fit(hn);
            report.warnings.extend(fit.warnings.iter().cloned());
            report.hypernetworks.push(fit);
        }
        report
    }
}

impl AttentionContextHook for HypernetworkStack {
    fn transform(&self, context: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let mut chained: Option<(Tensor, Tensor)> = None;
        for (hn, strength) in &self.entries {
            let (k, v) = match &chained {
                Some((k, v)) => (k, v),
                None => (context, context),
            };
            if let Some(next) = hn.apply(k, v, *strength)? {
                chained = Some(next);
            }
        }
        Ok(chained)
    }
}

/// How one hypernetwork fits a UNet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HypernetworkFit {
    /// The hypernetwork's name.
    pub name: String,
    /// Whether it has a module for the cross-attention context (the text conditioning).
    pub cross_attention: bool,
    /// The self-attention widths it has modules for (A1111 applies them there too).
    pub self_attention_widths: Vec<usize>,
    /// Widths it has modules for that no attention layer of this UNet has.
    pub unused_widths: Vec<usize>,
    /// Warn-level messages about this hypernetwork.
    pub warnings: Vec<String>,
}

/// What a [`HypernetworkStack`] will act on in one UNet: per hypernetwork, and all warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HypernetworkReport {
    /// One entry per hypernetwork, in stack order.
    pub hypernetworks: Vec<HypernetworkFit>,
    /// Every warning of every entry.
    pub warnings: Vec<String>,
}

/// The context widths a UNet's attention layers read keys and values from.
struct AttentionWidths {
    cross: usize,
    /// Widths of self-attention layers (the channels of every level with transformers).
    own: Vec<usize>,
}

impl AttentionWidths {
    fn of(unet: &UNetConfig) -> Self {
        let ch = &unet.block_out_channels;
        let mut own: Vec<usize> = Vec::new();
        for (i, kind) in unet.down_blocks.iter().enumerate() {
            if *kind == UNetBlockKind::CrossAttention
                && let Some(&c) = ch.get(i)
            {
                own.push(c);
            }
        }
        if let Some(&c) = ch.last() {
            own.push(c); // the mid block's transformer
        }
        for (j, kind) in unet.up_blocks.iter().enumerate() {
            if *kind == UNetBlockKind::CrossAttention
                && let Some(&c) = ch.len().checked_sub(1 + j).and_then(|i| ch.get(i))
            {
                own.push(c);
            }
        }
        own.sort_unstable();
        own.dedup();
        AttentionWidths {
            cross: unet.cross_attention_dim,
            own,
        }
    }

    fn fit(&self, hn: &Hypernetwork) -> HypernetworkFit {
        let widths = hn.widths();
        let cross_attention = widths.contains(&self.cross);
        let self_attention_widths: Vec<usize> = widths
            .iter()
            .copied()
            .filter(|w| self.own.contains(w))
            .collect();
        let unused_widths: Vec<usize> = widths
            .iter()
            .copied()
            .filter(|w| *w != self.cross && !self.own.contains(w))
            .collect();
        let mut warnings = Vec::new();
        if !cross_attention {
            warnings.push(format!(
                "hypernetwork `{}` has no module for this model's text conditioning (width {}; it \
                 has {:?}): it was probably made for another model family",
                hn.name(),
                self.cross,
                widths
            ));
        }
        if !unused_widths.is_empty() {
            warnings.push(format!(
                "hypernetwork `{}`: modules for widths {unused_widths:?} match no attention layer \
                 of this model",
                hn.name()
            ));
        }
        HypernetworkFit {
            name: hn.name().to_string(),
            cross_attention,
            self_attention_widths,
            unused_widths,
            warnings,
        }
    }
}
