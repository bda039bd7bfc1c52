//! The networks of Stable Diffusion: [`clip`] (text encoder), [`unet`] (denoiser) and [`vae`]
//! (autoencoder), built from [`nn`] layers and shared ResNet and transformer blocks, sized by
//! [`config`].

pub(crate) mod blocks;
pub mod clip;
pub mod config;
pub mod nn;
pub mod params;
pub mod unet;
pub mod vae;

pub use clip::{ClipTextModel, InsertedVectors};
pub use config::{ClipActivation, ClipConfig, UNetBlockKind, UNetConfig, VaeConfig};
pub use params::{AttentionContextHook, ParamLayout, ParamMut, ParamVisitor, SharedAttentionHook};
pub use unet::UNet2DConditionModel;
pub use vae::AutoencoderKL;
