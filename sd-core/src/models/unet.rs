//! The denoising UNet of Stable Diffusion (diffusers' `UNet2DConditionModel`).
//!
//! Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", 2022
//! (arXiv:2112.10752): a UNet (Ronneberger et al., arXiv:1505.04597) over the autoencoder's
//! latents, conditioned on the timestep through a sinusoidal embedding and on text through
//! cross-attention in its transformer blocks.
//!
//! The public [`UNet2DConditionModel::forward`] takes and returns NCHW latents, as diffusers
//! does; inside, activations are NHWC.

use super::blocks::{
    Downsample, ResnetBlock2D, ResnetConfig, SpatialTransformer, TransformerConfig, Upsample,
};
use super::config::{UNetBlockKind, UNetConfig};
use super::nn::{Conv2d, GroupNorm, Linear};
use super::params::{ParamMut, ParamVisitor, SharedAttentionHook, VisitParams, visit_list};
use crate::error::{Error, Result};
use crate::tensor::{Activation, Device, Tensor};
use crate::weights::Weights;

/// One resolution level on the way down.
#[derive(Debug, Clone)]
struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    downsampler: Option<Downsample>,
}

/// One resolution level on the way up.
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    upsampler: Option<Upsample>,
}

/// The SD UNet.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    time_linear_1: Linear,
    time_linear_2: Linear,
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid_resnet_1: ResnetBlock2D,
    mid_attention: SpatialTransformer,
    mid_resnet_2: ResnetBlock2D,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// Loads the UNet from `w` (diffusers names, no prefix).
    pub fn new(w: &Weights, config: &UNetConfig) -> Result<Self> {
        config.validate("unet config")?;
        let c = config;
        let ch = &c.block_out_channels;
        let levels = c.levels();
        let temb = c.time_embed_dim();
        let resnet = |w: &Weights, cin, cout| {
            ResnetBlock2D::new(
                w,
                ResnetConfig {
                    in_channels: cin,
                    out_channels: cout,
                    temb_channels: Some(temb),
                    groups: c.norm_num_groups,
                    eps: c.norm_eps,
                },
            )
        };
        let transformer = |w: &Weights, channels, heads| {
            SpatialTransformer::new(
                w,
                TransformerConfig {
                    channels,
                    context_dim: c.cross_attention_dim,
                    heads,
                    groups: c.norm_num_groups,
                    linear_projection: c.use_linear_projection,
                },
            )
        };

        let mut down = Vec::with_capacity(levels);
        let mut in_ch = ch[0];
        for (i, kind) in c.down_blocks.iter().enumerate() {
            let wb = w.pp("down_blocks").pp(i);
            let out_ch = ch[i];
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..c.layers_per_block {
                let cin = if j == 0 { in_ch } else { out_ch };
                resnets.push(resnet(&wb.pp("resnets").pp(j), cin, out_ch)?);
                if *kind == UNetBlockKind::CrossAttention {
                    attentions.push(transformer(
                        &wb.pp("attentions").pp(j),
                        out_ch,
                        c.attention_heads[i],
                    )?);
                }
            }
            let downsampler = if i + 1 < levels {
                Some(Downsample::new(&wb.pp("downsamplers.0"), out_ch, false)?)
            } else {
                None
            };
            down.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
            in_ch = out_ch;
        }

        let mid_ch = ch[levels - 1];
        let wm = w.pp("mid_block");
        let mid_resnet_1 = resnet(&wm.pp("resnets.0"), mid_ch, mid_ch)?;
        let mid_attention = transformer(
            &wm.pp("attentions.0"),
            mid_ch,
            c.attention_heads[levels - 1],
        )?;
        let mid_resnet_2 = resnet(&wm.pp("resnets.1"), mid_ch, mid_ch)?;

        let mut up = Vec::with_capacity(levels);
        let rev_ch: Vec<usize> = ch.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = c.attention_heads.iter().rev().copied().collect();
        let mut prev_out = rev_ch[0];
        for (i, kind) in c.up_blocks.iter().enumerate() {
            let wb = w.pp("up_blocks").pp(i);
            let out_ch = rev_ch[i];
            let skip_in_last = rev_ch[(i + 1).min(levels - 1)];
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..=c.layers_per_block {
                let skip_ch = if j == c.layers_per_block {
                    skip_in_last
                } else {
                    out_ch
                };
                let res_in = if j == 0 { prev_out } else { out_ch };
                resnets.push(resnet(&wb.pp("resnets").pp(j), res_in + skip_ch, out_ch)?);
                if *kind == UNetBlockKind::CrossAttention {
                    attentions.push(transformer(
                        &wb.pp("attentions").pp(j),
                        out_ch,
                        rev_heads[i],
                    )?);
                }
            }
            let upsampler = if i + 1 < levels {
                Some(Upsample::new(&wb.pp("upsamplers.0"), out_ch)?)
            } else {
                None
            };
            up.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
            prev_out = out_ch;
        }

        Ok(UNet2DConditionModel {
            time_linear_1: Linear::new(&w.pp("time_embedding.linear_1"), ch[0], temb, true)?,
            time_linear_2: Linear::new(&w.pp("time_embedding.linear_2"), temb, temb, true)?,
            conv_in: Conv2d::same3x3(&w.pp("conv_in"), c.in_channels, ch[0])?,
            down,
            mid_resnet_1,
            mid_attention,
            mid_resnet_2,
            up,
            conv_norm_out: GroupNorm::new(
                &w.pp("conv_norm_out"),
                c.norm_num_groups,
                ch[0],
                c.norm_eps,
            )?,
            conv_out: Conv2d::same3x3(&w.pp("conv_out"), ch[0], c.out_channels)?,
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Calls `visit` with every parameter and its diffusers name (`conv_in.weight`,
    /// `down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight`, …), in a fixed order.
    /// Replacing a value through the [`ParamMut`] changes this model only: clones share their
    /// tensors, so patch a clone to keep the loaded model as it is.
    ///
    /// # Errors
    /// The first error `visit` returns.
    pub fn visit_parameters(
        &mut self,
        visit: &mut dyn FnMut(&str, ParamMut<'_>) -> Result<()>,
    ) -> Result<()> {
        self.visit_params(&mut ParamVisitor::new(visit))
    }

    /// Installs `hook` on every attention layer (self- and cross-attention, every block), or
    /// removes it with `None`. The hook sees each layer's key/value context before `to_k`/`to_v`.
    pub fn set_attention_context_hook(&mut self, hook: Option<SharedAttentionHook>) {
        let hook = hook.as_ref();
        for block in &mut self.down {
            block
                .attentions
                .iter_mut()
                .for_each(|a| a.set_context_hook(hook));
        }
        self.mid_attention.set_context_hook(hook);
        for block in &mut self.up {
            block
                .attentions
                .iter_mut()
                .for_each(|a| a.set_context_hook(hook));
        }
    }

    /// Predicts the noise (or v) for `sample` `[b, c, h, w]` (NCHW) at `timestep`, conditioned on
    /// `context` `[b, tokens, cross_attention_dim]`. Returns NCHW.
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        sample.expect_rank("unet", 4)?;
        let b = sample.dims()[0];
        if sample.dims()[1] != self.config.in_channels {
            return Err(Error::InvalidShape {
                op: "unet",
                shape: sample.shape().clone(),
                reason: format!("expected {} latent channels", self.config.in_channels),
            });
        }
        if context.rank() != 3
            || context.dims()[0] != b
            || context.dims()[2] != self.config.cross_attention_dim
        {
            return Err(Error::ShapeMismatch {
                op: "unet context",
                lhs: sample.shape().clone(),
                rhs: context.shape().clone(),
            });
        }
        let temb = self.time_embedding(timestep, b, sample.device())?;
        let temb_silu = temb.silu()?;
        let temb = Some(&temb_silu);

        let mut x = self.conv_in.forward(&sample.nchw_to_nhwc()?)?;
        let mut skips = vec![x.clone()];
        for block in &self.down {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(&x, temb)?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(&x, context)?;
                }
                skips.push(x.clone());
            }
            if let Some(ds) = &block.downsampler {
                x = ds.forward(&x)?;
                skips.push(x.clone());
            }
        }

        x = self.mid_resnet_1.forward(&x, temb)?;
        x = self.mid_attention.forward(&x, context)?;
        x = self.mid_resnet_2.forward(&x, temb)?;

        for block in &self.up {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| Error::Internal("unet skip connections exhausted".into()))?;
                x = Tensor::cat(&[&x, &skip], 3)?;
                x = resnet.forward(&x, temb)?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(&x, context)?;
                }
            }
            if let Some(us) = &block.upsampler {
                // Upsample to the size of the skip it will be joined with, so that sizes that are
                // not multiples of the downsampling factor round-trip (diffusers' upsample_size).
                let size = skips.last().map(|s| (s.dims()[1], s.dims()[2]));
                x = us.forward(&x, size)?;
            }
        }

        let x = self.conv_norm_out.forward_then(&x, Activation::Silu)?;
        self.conv_out.forward(&x)?.nhwc_to_nchw()
    }

    /// The sinusoidal timestep embedding followed by the time MLP, `[b, time_embed_dim]`.
    ///
    /// The sinusoid is computed in `f32` exactly as diffusers' `get_timestep_embedding` does
    /// (its arguments reach ~1000 radians, so the precision of this step matters).
    fn time_embedding(&self, timestep: f64, batch: usize, device: Device) -> Result<Tensor> {
        let dim = self.config.block_out_channels[0];
        let half = dim / 2;
        let t = timestep as f32;
        let neg_log = -(10000f64.ln()) as f32;
        let denom = (half as f64 - self.config.freq_shift) as f32;
        let mut emb = Vec::with_capacity(dim);
        let args: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = neg_log * i as f32 / denom;
                t * exponent.exp()
            })
            .collect();
        let (first, second): (Vec<f32>, Vec<f32>) = if self.config.flip_sin_to_cos {
            (
                args.iter().map(|a| a.cos()).collect(),
                args.iter().map(|a| a.sin()).collect(),
            )
        } else {
            (
                args.iter().map(|a| a.sin()).collect(),
                args.iter().map(|a| a.cos()).collect(),
            )
        };
        emb.extend(first);
        emb.extend(second);
        emb.resize(dim, 0.0);
        let row = emb.clone();
        for _ in 1..batch {
            emb.extend_from_slice(&row);
        }
        let emb = Tensor::from_vec(emb, [batch, dim], device)?;
        let h = self.time_linear_1.forward(&emb)?.silu()?;
        self.time_linear_2.forward(&h)
    }
}

impl VisitParams for UNet2DConditionModel {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_>) -> Result<()> {
        v.scope("time_embedding.linear_1", |v| {
            self.time_linear_1.visit_params(v)
        })?;
        v.scope("time_embedding.linear_2", |v| {
            self.time_linear_2.visit_params(v)
        })?;
        v.scope("conv_in", |v| self.conv_in.visit_params(v))?;
        for (i, block) in self.down.iter_mut().enumerate() {
            v.scope(format_args!("down_blocks.{i}"), |v| {
                visit_list(v, "resnets", &mut block.resnets)?;
                visit_list(v, "attentions", &mut block.attentions)?;
                v.scope("downsamplers.0", |v| block.downsampler.visit_params(v))
            })?;
        }
        v.scope("mid_block", |v| {
            v.scope("resnets.0", |v| self.mid_resnet_1.visit_params(v))?;
            v.scope("attentions.0", |v| self.mid_attention.visit_params(v))?;
            v.scope("resnets.1", |v| self.mid_resnet_2.visit_params(v))
        })?;
        for (i, block) in self.up.iter_mut().enumerate() {
            v.scope(format_args!("up_blocks.{i}"), |v| {
                visit_list(v, "resnets", &mut block.resnets)?;
                visit_list(v, "attentions", &mut block.attentions)?;
                v.scope("upsamplers.0", |v| block.upsampler.visit_params(v))
            })?;
        }
        v.scope("conv_norm_out", |v| self.conv_norm_out.visit_params(v))?;
        v.scope("conv_out", |v| self.conv_out.visit_params(v))
    }
}
