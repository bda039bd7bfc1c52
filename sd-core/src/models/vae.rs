//! The autoencoder that maps images to latents and back (diffusers' `AutoencoderKL`).
//!
//! Kingma and Welling, "Auto-Encoding Variational Bayes", 2013 (arXiv:1312.6114), in the
//! KL-regularised form of Rombach et al., arXiv:2112.10752. The encoder outputs the mean and log
//! variance of a diagonal Gaussian over the latents; the decoder maps latents to pixels.
//!
//! Images are NCHW in `[-1, 1]`, latents NCHW and unscaled (multiply by
//! [`VaeConfig::scaling_factor`] before the UNet, divide after).

use super::blocks::{Attention, Downsample, ResnetBlock2D, ResnetConfig, Upsample};
use super::config::VaeConfig;
use super::nn::{Conv2d, GroupNorm};
use crate::error::{Error, Result};
use crate::tensor::{Activation, Tensor};
use crate::weights::Weights;

/// The autoencoders' norm epsilon (diffusers builds every norm of `AutoencoderKL` with 1e-6).
const EPS: f64 = 1e-6;

/// Single-head self-attention over all pixels, with group norm and a residual.
#[derive(Debug, Clone)]
struct VaeAttention {
    group_norm: GroupNorm,
    attention: Attention,
}

impl VaeAttention {
    fn new(w: &Weights, channels: usize, groups: usize) -> Result<Self> {
        Ok(VaeAttention {
            group_norm: GroupNorm::new(&w.pp("group_norm"), groups, channels, EPS)?,
            attention: Attention::new(w, channels, channels, 1, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
        let hs = self.group_norm.forward(x)?.reshape([b, h * w, c])?;
        let hs = self.attention.forward(&hs, None)?.reshape([b, h, w, c])?;
        hs.add(x)
    }
}

/// resnet, attention, resnet at the lowest resolution.
#[derive(Debug, Clone)]
struct MidBlock {
    resnet_1: ResnetBlock2D,
    attention: VaeAttention,
    resnet_2: ResnetBlock2D,
}

impl MidBlock {
    fn new(w: &Weights, channels: usize, groups: usize) -> Result<Self> {
        let rc = ResnetConfig {
            in_channels: channels,
            out_channels: channels,
            temb_channels: None,
            groups,
            eps: EPS,
        };
        Ok(MidBlock {
            resnet_1: ResnetBlock2D::new(&w.pp("resnets.0"), rc)?,
            attention: VaeAttention::new(&w.pp("attentions.0"), channels, groups)?,
            resnet_2: ResnetBlock2D::new(&w.pp("resnets.1"), rc)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.resnet_1.forward(x, None)?;
        let x = self.attention.forward(&x)?;
        self.resnet_2.forward(&x, None)
    }
}

fn resnet(w: &Weights, cin: usize, cout: usize, groups: usize) -> Result<ResnetBlock2D> {
    ResnetBlock2D::new(
        w,
        ResnetConfig {
            in_channels: cin,
            out_channels: cout,
            temb_channels: None,
            groups,
            eps: EPS,
        },
    )
}

/// Image → latent distribution.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<(Vec<ResnetBlock2D>, Option<Downsample>)>,
    mid: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Conv2d,
    latent_channels: usize,
}

impl Encoder {
    fn new(w: &Weights, quant: &Weights, c: &VaeConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        let g = c.norm_num_groups;
        let mut down = Vec::new();
        let mut in_ch = ch[0];
        for (i, &out_ch) in ch.iter().enumerate() {
            let wb = w.pp("down_blocks").pp(i);
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    resnet(
                        &wb.pp("resnets").pp(j),
                        if j == 0 { in_ch } else { out_ch },
                        out_ch,
                        g,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let ds = if i + 1 < ch.len() {
                Some(Downsample::new(&wb.pp("downsamplers.0"), out_ch, true)?)
            } else {
                None
            };
            down.push((resnets, ds));
            in_ch = out_ch;
        }
        let last = ch[ch.len() - 1];
        let moments = 2 * c.latent_channels;
        Ok(Encoder {
            conv_in: Conv2d::same3x3(&w.pp("conv_in"), c.in_channels, ch[0])?,
            down,
            mid: MidBlock::new(&w.pp("mid_block"), last, g)?,
            conv_norm_out: GroupNorm::new(&w.pp("conv_norm_out"), g, last, EPS)?,
            conv_out: Conv2d::same3x3(&w.pp("conv_out"), last, moments)?,
            quant_conv: Conv2d::pointwise(quant, moments, moments)?,
            latent_channels: c.latent_channels,
        })
    }

    /// `image` NHWC → (mean, std), both NCHW latents.
    fn forward(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut x = self.conv_in.forward(image)?;
        for (resnets, ds) in &self.down {
            for r in resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(ds) = ds {
                x = ds.forward(&x)?;
            }
        }
        x = self.mid.forward(&x)?;
        x = self.conv_norm_out.forward_then(&x, Activation::Silu)?;
        x = self.conv_out.forward(&x)?;
        let moments = self.quant_conv.forward(&x)?.nhwc_to_nchw()?;
        let mean = moments.narrow(1, 0, self.latent_channels)?;
        let logvar = moments.narrow(1, self.latent_channels, self.latent_channels)?;
        // As diffusers' DiagonalGaussianDistribution: clamp, then std = exp(logvar / 2).
        let std = logvar.clamp(-30.0, 20.0)?.scale(0.5)?.exp()?;
        Ok((mean, std))
    }
}

/// Latents → image.
#[derive(Debug, Clone)]
pub struct Decoder {
    post_quant_conv: Conv2d,
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<(Vec<ResnetBlock2D>, Option<Upsample>)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(w: &Weights, post_quant: &Weights, c: &VaeConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        let g = c.norm_num_groups;
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut prev = rev[0];
        for (i, &out_ch) in rev.iter().enumerate() {
            let wb = w.pp("up_blocks").pp(i);
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    resnet(
                        &wb.pp("resnets").pp(j),
                        if j == 0 { prev } else { out_ch },
                        out_ch,
                        g,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let us = if i + 1 < rev.len() {
                Some(Upsample::new(&wb.pp("upsamplers.0"), out_ch)?)
            } else {
                None
            };
            up.push((resnets, us));
            prev = out_ch;
        }
        Ok(Decoder {
            post_quant_conv: Conv2d::pointwise(post_quant, c.latent_channels, c.latent_channels)?,
            conv_in: Conv2d::same3x3(&w.pp("conv_in"), c.latent_channels, rev[0])?,
            mid: MidBlock::new(&w.pp("mid_block"), rev[0], g)?,
            up,
            conv_norm_out: GroupNorm::new(&w.pp("conv_norm_out"), g, ch[0], EPS)?,
            conv_out: Conv2d::same3x3(&w.pp("conv_out"), ch[0], c.out_channels)?,
        })
    }

    /// NCHW latents → NCHW image.
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut x = self.post_quant_conv.forward(&z.nchw_to_nhwc()?)?;
        x = self.conv_in.forward(&x)?;
        x = self.mid.forward(&x)?;
        for (resnets, us) in &self.up {
            for r in resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(us) = us {
                x = us.forward(&x, None)?;
            }
        }
        x = self.conv_norm_out.forward_then(&x, Activation::Silu)?;
        self.conv_out.forward(&x)?.nhwc_to_nchw()
    }
}

/// The autoencoder: encoder (for img2img) and decoder.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    config: VaeConfig,
}

impl AutoencoderKL {
    /// Loads both halves from `w` (diffusers names, no prefix).
    pub fn new(w: &Weights, config: &VaeConfig) -> Result<Self> {
        config.validate("vae config")?;
        Ok(AutoencoderKL {
            encoder: Encoder::new(&w.pp("encoder"), &w.pp("quant_conv"), config)?,
            decoder: Decoder::new(&w.pp("decoder"), &w.pp("post_quant_conv"), config)?,
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Encodes an NCHW image in `[-1, 1]` into the latent distribution's (mean, std), NCHW and
    /// unscaled. Height and width must be multiples of the downscale factor.
    pub fn encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        image.expect_rank("vae encode", 4)?;
        let f = self.config.downscale_factor();
        let d = image.dims();
        if d[1] != self.config.in_channels || !d[2].is_multiple_of(f) || !d[3].is_multiple_of(f) {
            return Err(Error::InvalidShape {
                op: "vae encode",
                shape: image.shape().clone(),
                reason: format!(
                    "expected [b, {}, h, w] with h and w multiples of {f}",
                    self.config.in_channels
                ),
            });
        }
        self.encoder.forward(&image.nchw_to_nhwc()?)
    }

    /// Decodes unscaled NCHW latents into an NCHW image (nominally in `[-1, 1]`).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        latents.expect_rank("vae decode", 4)?;
        if latents.dims()[1] != self.config.latent_channels {
            return Err(Error::InvalidShape {
                op: "vae decode",
                shape: latents.shape().clone(),
                reason: format!("expected {} latent channels", self.config.latent_channels),
            });
        }
        self.decoder.forward(latents)
    }
}
