//! Named access to a loaded model's parameters and attention layers, for adapters.
//!
//! Adapters change a model without reloading it: a LoRA replaces some weights by patched copies,
//! a hypernetwork transforms the context that attention layers read their keys and values from.
//! Both work on a clone of the loaded model (cloning shares every tensor, so only what an adapter
//! replaces takes new memory), through the visitors of this module:
//!
//! - [`ParamVisitor`] walks every parameter with its PyTorch name in the diffusers/transformers
//!   layout the model was loaded with (`down_blocks.0.attentions.0.proj_in.weight`,
//!   `text_model.encoder.layers.3.mlp.fc1.bias`), and hands out a [`ParamMut`] that reads and
//!   writes the tensor in PyTorch's shape whatever its layout in memory.
//! - [`AttentionContextHook`] is installed on every attention layer of a UNet
//!   ([`UNet2DConditionModel::set_attention_context_hook`](super::UNet2DConditionModel::set_attention_context_hook)).

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// How a parameter is laid out in memory compared with its PyTorch layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamLayout {
    /// As in PyTorch (`nn.Linear` weights `[out, in]`, biases, norm weights, embedding tables).
    Torch,
    /// A convolution weight kept `[kh, kw, in, out]`, PyTorch's `[out, in, kh, kw]` permuted.
    ConvKhKwInOut,
}

/// One parameter handed out by a [`ParamVisitor`]: read or replace it in PyTorch's layout.
pub struct ParamMut<'a> {
    tensor: &'a mut Tensor,
    layout: ParamLayout,
}

impl ParamMut<'_> {
    /// The layout in memory.
    pub fn layout(&self) -> ParamLayout {
        self.layout
    }

    /// The shape PyTorch gives this parameter (`[out, in, kh, kw]` for a convolution).
    pub fn torch_shape(&self) -> Vec<usize> {
        let d = self.tensor.dims();
        match self.layout {
            ParamLayout::Torch => d.to_vec(),
            ParamLayout::ConvKhKwInOut => vec![d[3], d[2], d[0], d[1]],
        }
    }

    /// The current value in PyTorch's layout (a copy when the layout differs, else shared).
    ///
    /// # Errors
    /// A device error.
    pub fn value(&self) -> Result<Tensor> {
        match self.layout {
            ParamLayout::Torch => Ok(self.tensor.clone()),
            ParamLayout::ConvKhKwInOut => self.tensor.permute(&[3, 2, 0, 1]),
        }
    }

    /// Replaces the value; `value` is in PyTorch's layout and shape, on the parameter's device
    /// and in its dtype.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shape differs from [`torch_shape`](Self::torch_shape),
    /// [`Error::InvalidArgument`] for another device or dtype.
    pub fn set(&mut self, value: Tensor) -> Result<()> {
        let want = self.torch_shape();
        if value.dims() != want.as_slice() {
            return Err(Error::ShapeMismatch {
                op: "replace parameter",
                lhs: want.into(),
                rhs: value.shape().clone(),
            });
        }
        if value.device() != self.tensor.device() || value.dtype() != self.tensor.dtype() {
            return Err(Error::invalid_argument(
                "parameter value",
                format!(
                    "is {} on {}, the parameter is {} on {}",
                    value.dtype(),
                    value.device(),
                    self.tensor.dtype(),
                    self.tensor.device()
                ),
            ));
        }
        *self.tensor = match self.layout {
            ParamLayout::Torch => value,
            ParamLayout::ConvKhKwInOut => value.permute(&[2, 3, 1, 0])?,
        };
        Ok(())
    }
}

/// Walks a model's parameters, keeping track of the dotted name prefix.
pub struct ParamVisitor<'f> {
    prefix: String,
    visit: &'f mut dyn FnMut(&str, ParamMut<'_>) -> Result<()>,
}

impl<'f> ParamVisitor<'f> {
    /// A visitor that calls `visit` with each parameter's full name.
    pub fn new(visit: &'f mut dyn FnMut(&str, ParamMut<'_>) -> Result<()>) -> Self {
        ParamVisitor {
            prefix: String::new(),
            visit,
        }
    }

    /// Visits the parameters of a child module under `name` (which may itself be dotted).
    pub(crate) fn scope(
        &mut self,
        name: impl fmt::Display,
        body: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let len = self.prefix.len();
        if len > 0 {
            self.prefix.push('.');
        }
        use fmt::Write as _;
        // Writing into a String cannot fail.
        let _ = write!(self.prefix, "{name}");
        let result = body(self);
        self.prefix.truncate(len);
        result
    }

    /// Hands one tensor named `name` (under the current prefix) to the callback.
    pub(crate) fn tensor(
        &mut self,
        name: &str,
        tensor: &mut Tensor,
        layout: ParamLayout,
    ) -> Result<()> {
        let full = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        (self.visit)(&full, ParamMut { tensor, layout })
    }
}

/// A module whose parameters can be visited by name.
pub(crate) trait VisitParams {
    /// Calls the visitor for every parameter, in a fixed order.
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()>;
}

impl<T: VisitParams> VisitParams for Option<T> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        match self {
            Some(m) => m.visit_params(v),
            None => Ok(()),
        }
    }
}

/// Visits each element of `items` under `name.<index>`.
pub(crate) fn visit_list<T: VisitParams>(
    v: &mut ParamVisitor<'_>,
    name: &str,
    items: &mut [T],
) -> Result<()> {
    for (i, item) in items.iter_mut().enumerate() {
        v.scope(format_args!("{name}.{i}"), |v| item.visit_params(v))?;
    }
    Ok(())
}

/// Transforms the context an attention layer projects its keys and values from.
///
/// A UNet calls the hook in every attention layer, self-attention (whose context is the layer's
/// own input) and cross-attention (the text conditioning) alike, before `to_k` and `to_v`. It
/// returns the contexts for the keys and for the values, or `None` to leave both unchanged (for
/// instance when it has nothing for this context width). AUTOMATIC1111's hypernetworks are such
/// hooks.
pub trait AttentionContextHook: Send + Sync + fmt::Debug {
    /// The `(key context, value context)` for `context` `[batch, tokens, width]`, or `None`.
    ///
    /// # Errors
    /// Any error of the computation; it aborts the model's forward pass.
    fn transform(&self, context: &Tensor) -> Result<Option<(Tensor, Tensor)>>;
}

/// The shared handle a UNet's attention layers hold.
pub type SharedAttentionHook = Arc<dyn AttentionContextHook>;
