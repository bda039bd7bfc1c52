//! Building blocks shared by the UNet and the autoencoder: residual blocks, attention, and the
//! down- and upsamplers. Activations are NHWC throughout.
//!
//! The residual block follows He et al., "Deep Residual Learning for Image Recognition", 2015
//! (arXiv:1512.03385), in the pre-activation form with group norm used by Ho et al., "Denoising
//! Diffusion Probabilistic Models", 2020 (arXiv:2006.11239). The transformer block follows
//! Vaswani et al., "Attention Is All You Need", 2017 (arXiv:1706.03762), with the GEGLU
//! feed-forward of Shazeer, "GLU Variants Improve Transformer", 2020 (arXiv:2002.05202).

use super::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use super::params::{ParamVisitor, SharedAttentionHook, VisitParams};
use crate::error::Result;
use crate::tensor::{Activation, Conv2dParams, Tensor};
use crate::weights::Weights;

/// Sizes of a residual block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding it adds, if any (UNet: yes; autoencoder: no).
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

/// diffusers' `ResnetBlock2D`: `GN → SiLU → conv → (+ time) → GN → SiLU → conv`, plus a
/// shortcut (a 1x1 convolution when the channel count changes).
#[derive(Debug, Clone)]
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn new(w: &Weights, c: ResnetConfig) -> Result<Self> {
        let conv_shortcut = if c.in_channels != c.out_channels {
            Some(Conv2d::pointwise(
                &w.pp("conv_shortcut"),
                c.in_channels,
                c.out_channels,
            )?)
        } else {
            None
        };
        Ok(ResnetBlock2D {
            norm1: GroupNorm::new(&w.pp("norm1"), c.groups, c.in_channels, c.eps)?,
            conv1: Conv2d::same3x3(&w.pp("conv1"), c.in_channels, c.out_channels)?,
            time_emb_proj: c
                .temb_channels
                .map(|t| Linear::new(&w.pp("time_emb_proj"), t, c.out_channels, true))
                .transpose()?,
            norm2: GroupNorm::new(&w.pp("norm2"), c.groups, c.out_channels, c.eps)?,
            conv2: Conv2d::same3x3(&w.pp("conv2"), c.out_channels, c.out_channels)?,
            conv_shortcut,
        })
    }

    /// `x` is `[b, h, w, c_in]`; `temb_silu` is the time embedding after SiLU, `[b, t]`.
    pub fn forward(&self, x: &Tensor, temb_silu: Option<&Tensor>) -> Result<Tensor> {
        let h = self.norm1.forward_then(x, Activation::Silu)?;
        let mut h = self.conv1.forward(&h)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_silu) {
            let t = proj.forward(t)?;
            let (b, c) = (t.dims()[0], t.dims()[1]);
            h = h.add(&t.reshape([b, 1, 1, c])?)?;
        }
        let h = self.norm2.forward_then(&h, Activation::Silu)?;
        let h = self.conv2.forward(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        shortcut.add(&h)
    }
}

impl VisitParams for ResnetBlock2D {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.scope("norm1", |v| self.norm1.visit_params(v))?;
        v.scope("conv1", |v| self.conv1.visit_params(v))?;
        v.scope("time_emb_proj", |v| self.time_emb_proj.visit_params(v))?;
        v.scope("norm2", |v| self.norm2.visit_params(v))?;
        v.scope("conv2", |v| self.conv2.visit_params(v))?;
        v.scope("conv_shortcut", |v| self.conv_shortcut.visit_params(v))
    }
}

/// Multi-head attention with separate q/k/v projections (diffusers' `Attention`): self-attention
/// when no context is given, cross-attention otherwise.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f32,
    /// Transforms the key/value context first (hypernetworks); `None` on a loaded model.
    context_hook: Option<SharedAttentionHook>,
}

impl Attention {
    /// `query_dim` is the width of the attending tokens, `context_dim` of the attended ones;
    /// `bias` says whether q/k/v have biases (UNet: no; autoencoder: yes).
    pub fn new(
        w: &Weights,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        bias: bool,
    ) -> Result<Self> {
        let inner = query_dim;
        Ok(Attention {
            to_q: Linear::new(&w.pp("to_q"), query_dim, inner, bias)?,
            to_k: Linear::new(&w.pp("to_k"), context_dim, inner, bias)?,
            to_v: Linear::new(&w.pp("to_v"), context_dim, inner, bias)?,
            to_out: Linear::new(&w.pp("to_out.0"), inner, query_dim, true)?,
            heads,
            scale: ((inner / heads) as f32).powf(-0.5),
            context_hook: None,
        })
    }

    /// `x` is `[b, tokens, query_dim]`; `context` `[b, ctx_tokens, context_dim]` or `None`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let hooked = match &self.context_hook {
            Some(hook) => hook.transform(ctx)?,
            None => None,
        };
        let (k, v) = match &hooked {
            Some((ctx_k, ctx_v)) => (self.to_k.forward(ctx_k)?, self.to_v.forward(ctx_v)?),
            None => (self.to_k.forward(ctx)?, self.to_v.forward(ctx)?),
        };
        let o = Tensor::attention(&q, &k, &v, self.heads, self.scale, false)?;
        self.to_out.forward(&o)
    }

    /// Installs (or, with `None`, removes) the key/value context hook.
    pub fn set_context_hook(&mut self, hook: Option<SharedAttentionHook>) {
        self.context_hook = hook;
    }
}

impl VisitParams for Attention {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.scope("to_q", |v| self.to_q.visit_params(v))?;
        v.scope("to_k", |v| self.to_k.visit_params(v))?;
        v.scope("to_v", |v| self.to_v.visit_params(v))?;
        v.scope("to_out.0", |v| self.to_out.visit_params(v))
    }
}

/// diffusers' `BasicTransformerBlock`: self-attention, cross-attention to the text, GEGLU
/// feed-forward, each pre-normed with a residual.
#[derive(Debug, Clone)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    fn new(w: &Weights, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let ff_inner = 4 * dim;
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::new(&w.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::new(&w.pp("attn1"), dim, dim, heads, false)?,
            norm2: LayerNorm::new(&w.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::new(&w.pp("attn2"), dim, context_dim, heads, false)?,
            norm3: LayerNorm::new(&w.pp("norm3"), dim, 1e-5)?,
            ff_proj: Linear::new(&w.pp("ff.net.0.proj"), dim, 2 * ff_inner, true)?,
            ff_out: Linear::new(&w.pp("ff.net.2"), ff_inner, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = x.add(&self.attn1.forward(&self.norm1.forward(x)?, None)?)?;
        let x = x.add(
            &self
                .attn2
                .forward(&self.norm2.forward(&x)?, Some(context))?,
        )?;
        let h = self.ff_proj.forward(&self.norm3.forward(&x)?)?.geglu()?;
        x.add(&self.ff_out.forward(&h)?)
    }

    fn set_context_hook(&mut self, hook: Option<&SharedAttentionHook>) {
        self.attn1.set_context_hook(hook.cloned());
        self.attn2.set_context_hook(hook.cloned());
    }
}

impl VisitParams for BasicTransformerBlock {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.scope("norm1", |v| self.norm1.visit_params(v))?;
        v.scope("attn1", |v| self.attn1.visit_params(v))?;
        v.scope("norm2", |v| self.norm2.visit_params(v))?;
        v.scope("attn2", |v| self.attn2.visit_params(v))?;
        v.scope("norm3", |v| self.norm3.visit_params(v))?;
        v.scope("ff.net.0.proj", |v| self.ff_proj.visit_params(v))?;
        v.scope("ff.net.2", |v| self.ff_out.visit_params(v))
    }
}

/// The input and output projections of a spatial transformer: 1x1 convolutions (SD 1.x) or
/// linear layers (SD 2.x). Over NHWC data both are the same product over channels.
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(w: &Weights, channels: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::new(w, channels, channels, true)?)
        } else {
            Projection::Conv(Conv2d::pointwise(w, channels, channels)?)
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Conv(c) => c.forward(x),
            Projection::Linear(l) => l.forward(x),
        }
    }
}

impl VisitParams for Projection {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        match self {
            Projection::Conv(c) => c.visit_params(v),
            Projection::Linear(l) => l.visit_params(v),
        }
    }
}

/// diffusers' `Transformer2DModel` (one transformer block, as SD 1.x and 2.x have): group norm,
/// projection in, transformer over the pixels as tokens, projection out, residual.
#[derive(Debug, Clone)]
pub(crate) struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    block: BasicTransformerBlock,
    proj_out: Projection,
}

/// Sizes of a spatial transformer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerConfig {
    pub channels: usize,
    pub context_dim: usize,
    pub heads: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl SpatialTransformer {
    pub fn new(w: &Weights, c: TransformerConfig) -> Result<Self> {
        Ok(SpatialTransformer {
            // diffusers builds this norm with eps 1e-6 regardless of the UNet's norm_eps.
            norm: GroupNorm::new(&w.pp("norm"), c.groups, c.channels, 1e-6)?,
            proj_in: Projection::new(&w.pp("proj_in"), c.channels, c.linear_projection)?,
            block: BasicTransformerBlock::new(
                &w.pp("transformer_blocks.0"),
                c.channels,
                c.context_dim,
                c.heads,
            )?,
            proj_out: Projection::new(&w.pp("proj_out"), c.channels, c.linear_projection)?,
        })
    }

    /// `x` is `[b, h, w, c]`; `context` `[b, tokens, context_dim]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
        let hs = self.norm.forward(x)?;
        let hs = self.proj_in.forward(&hs)?.reshape([b, h * w, c])?;
        let hs = self.block.forward(&hs, context)?;
        let hs = self.proj_out.forward(&hs.reshape([b, h, w, c])?)?;
        hs.add(x)
    }

    /// Installs (or removes) the key/value context hook of both attention layers.
    pub fn set_context_hook(&mut self, hook: Option<&SharedAttentionHook>) {
        self.block.set_context_hook(hook);
    }
}

impl VisitParams for SpatialTransformer {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.scope("norm", |v| self.norm.visit_params(v))?;
        v.scope("proj_in", |v| self.proj_in.visit_params(v))?;
        v.scope("transformer_blocks.0", |v| self.block.visit_params(v))?;
        v.scope("proj_out", |v| self.proj_out.visit_params(v))
    }
}

/// A stride-2 3x3 convolution halving the resolution. `asymmetric_pad` pads only bottom and
/// right by one (the autoencoder encoder); otherwise every side is padded by one (the UNet).
#[derive(Debug, Clone)]
pub(crate) struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(w: &Weights, channels: usize, asymmetric_pad: bool) -> Result<Self> {
        let params = if asymmetric_pad {
            Conv2dParams {
                stride: 2,
                pad_top: 0,
                pad_left: 0,
                pad_bottom: 1,
                pad_right: 1,
            }
        } else {
            Conv2dParams::new(2, 1)
        };
        Ok(Downsample {
            conv: Conv2d::new(&w.pp("conv"), channels, channels, 3, params)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

impl VisitParams for Downsample {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.scope("conv", |v| self.conv.visit_params(v))
    }
}

/// Nearest-neighbour upsampling (2x, or to an explicit size) followed by a 3x3 convolution.
#[derive(Debug, Clone)]
pub(crate) struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(w: &Weights, channels: usize) -> Result<Self> {
        Ok(Upsample {
            conv: Conv2d::same3x3(&w.pp("conv"), channels, channels)?,
        })
    }

    /// `size` is the target `(h, w)`; `None` doubles both.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let up = match size {
            Some((h, w)) => x.upsample_nearest(h, w)?,
            None => x.upsample_nearest2x()?,
        };
        self.conv.forward(&up)
    }
}

impl VisitParams for Upsample {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.scope("conv", |v| self.conv.visit_params(v))
    }
}
