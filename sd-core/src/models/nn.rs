//! The layers the models are built from, each loading its weights by their PyTorch names.

use super::params::{ParamLayout, ParamVisitor, VisitParams};
use crate::error::Result;
use crate::tensor::{Activation, Conv2dParams, Tensor};
use crate::weights::Weights;

/// A fully connected layer, `nn.Linear`: `y = x Wᵀ + b` over the last dimension.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` `[out, in]` and, when `bias` is set, `bias` `[out]`.
    pub fn new(w: &Weights, in_features: usize, out_features: usize, bias: bool) -> Result<Self> {
        let weight = w.get("weight", [out_features, in_features])?;
        let bias = if bias {
            Some(w.get("bias", [out_features])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Applies the layer to `[.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

impl VisitParams for Linear {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.tensor("weight", &mut self.weight, ParamLayout::Torch)?;
        if let Some(bias) = &mut self.bias {
            v.tensor("bias", bias, ParamLayout::Torch)?;
        }
        Ok(())
    }
}

/// A 2-D convolution, `nn.Conv2d`, over NHWC activations.
///
/// The weight is stored `[out, in, kh, kw]` in files and kept `[kh, kw, in, out]` in memory, the
/// layout the backends' GEMM-based convolutions read directly.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    params: Conv2dParams,
}

impl Conv2d {
    /// Loads a square-kernel convolution with a bias.
    pub fn new(
        w: &Weights,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        params: Conv2dParams,
    ) -> Result<Self> {
        let weight = w
            .get("weight", [out_channels, in_channels, kernel, kernel])?
            .permute(&[2, 3, 1, 0])?;
        let bias = w.get("bias", [out_channels])?;
        Ok(Conv2d {
            weight,
            bias,
            params,
        })
    }

    /// A 3x3 convolution with stride 1 and padding 1.
    pub fn same3x3(w: &Weights, in_channels: usize, out_channels: usize) -> Result<Self> {
        Conv2d::new(w, in_channels, out_channels, 3, Conv2dParams::new(1, 1))
    }

    /// A 1x1 convolution.
    pub fn pointwise(w: &Weights, in_channels: usize, out_channels: usize) -> Result<Self> {
        Conv2d::new(w, in_channels, out_channels, 1, Conv2dParams::new(1, 0))
    }

    /// Applies the convolution to `[b, h, w, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, Some(&self.bias), self.params)
    }
}

impl VisitParams for Conv2d {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.tensor("weight", &mut self.weight, ParamLayout::ConvKhKwInOut)?;
        v.tensor("bias", &mut self.bias, ParamLayout::Torch)
    }
}

/// Group normalisation, `nn.GroupNorm`, over the channel (last) dimension.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias`, both `[channels]`.
    pub fn new(w: &Weights, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(GroupNorm {
            gamma: w.get("weight", [channels])?,
            beta: w.get("bias", [channels])?,
            groups,
            eps,
        })
    }

    /// Normalises `[b, .., channels]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, Activation::Identity)
    }

    /// Normalises, then applies `act` in the same pass.
    pub fn forward_then(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        x.group_norm(self.groups, &self.gamma, &self.beta, self.eps, act)
    }
}

impl VisitParams for GroupNorm {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.tensor("weight", &mut self.gamma, ParamLayout::Torch)?;
        v.tensor("bias", &mut self.beta, ParamLayout::Torch)
    }
}

/// Layer normalisation, `nn.LayerNorm`, over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias`, both `[width]`.
    pub fn new(w: &Weights, width: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            gamma: w.get("weight", [width])?,
            beta: w.get("bias", [width])?,
            eps,
        })
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.gamma, &self.beta, self.eps)
    }
}

impl VisitParams for LayerNorm {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.tensor("weight", &mut self.gamma, ParamLayout::Torch)?;
        v.tensor("bias", &mut self.beta, ParamLayout::Torch)
    }
}
