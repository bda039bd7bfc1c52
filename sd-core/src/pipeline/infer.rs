//! Model configurations inferred from tensor shapes, for single-file checkpoints that carry no
//! config files.
//!
//! Channel counts, depths and which levels have attention follow from the shapes. What shapes do
//! not say takes the values of the family the shapes identify: SD 1.x (1x1-convolution
//! projections) has 8 heads per transformer; SD 2.x (linear projections) has 64-wide heads; CLIP
//! text encoders have 64-wide heads; every norm has 32 groups. A checkpoint that breaks those
//! rules needs [`super::LoadOptions::config_dir`], and the error says so.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::models::{ClipConfig, UNetBlockKind, UNetConfig, VaeConfig};
use crate::weights::{ModelFiles, WeightStore};

const DEFAULT_GROUPS: usize = 32;

fn dims(store: &WeightStore, name: &str, files: &ModelFiles) -> Result<Vec<usize>> {
    store
        .shape_of(name)
        .map(|s| s.dims().to_vec())
        .ok_or_else(|| Error::MissingWeight {
            name: name.to_string(),
            source_desc: files.model_path.display().to_string(),
        })
}

/// The distinct values of the numeric path segment right after `prefix` (e.g. the block indices
/// of `down_blocks.`).
fn indices(store: &WeightStore, prefix: &str) -> BTreeSet<usize> {
    store
        .names()
        .filter_map(|n| n.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect()
}

fn needs_config(files: &ModelFiles, what: String) -> Error {
    Error::InvalidConfig {
        path: files.model_path.clone(),
        reason: format!(
            "{what}; pass a diffusers-layout folder with the model's config files for this \
             checkpoint (the config folder option: `config_dir` in Rust, C and Python, \
             `--config-dir` on the command line)"
        ),
    }
}

pub(super) fn clip_config(files: &ModelFiles) -> Result<ClipConfig> {
    let s = &files.text_encoder;
    let tok = dims(s, "text_model.embeddings.token_embedding.weight", files)?;
    let pos = dims(s, "text_model.embeddings.position_embedding.weight", files)?;
    let fc1 = dims(s, "text_model.encoder.layers.0.mlp.fc1.weight", files)?;
    let layers = indices(s, "text_model.encoder.layers.").len();
    let (vocab, hidden) = (tok[0], tok[1]);
    if hidden % 64 != 0 {
        return Err(needs_config(
            files,
            format!("text encoder width {hidden} is not a multiple of the 64-wide CLIP heads"),
        ));
    }
    Ok(ClipConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: fc1[0],
        num_hidden_layers: layers,
        num_attention_heads: hidden / 64,
        max_position_embeddings: pos[0],
        ..ClipConfig::sd_v1_5()
    })
}

pub(super) fn unet_config(files: &ModelFiles) -> Result<UNetConfig> {
    let s = &files.unet;
    let conv_in = dims(s, "conv_in.weight", files)?;
    let conv_out = dims(s, "conv_out.weight", files)?;
    let levels = indices(s, "down_blocks.").len();
    let layers_per_block = indices(s, "down_blocks.0.resnets.").len();
    let block_out_channels = (0..levels)
        .map(|i| dims(s, &format!("down_blocks.{i}.resnets.0.conv1.weight"), files).map(|d| d[0]))
        .collect::<Result<Vec<_>>>()?;
    let kind = |prefix: &str| {
        if s.names().any(|n| n.starts_with(prefix)) {
            UNetBlockKind::CrossAttention
        } else {
            UNetBlockKind::Plain
        }
    };
    let down_blocks = (0..levels)
        .map(|i| kind(&format!("down_blocks.{i}.attentions.")))
        .collect();
    let up_blocks = (0..levels)
        .map(|i| kind(&format!("up_blocks.{i}.attentions.")))
        .collect();
    let proj_in = dims(s, "mid_block.attentions.0.proj_in.weight", files)?;
    let use_linear_projection = proj_in.len() == 2;
    let to_k = dims(
        s,
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        files,
    )?;
    let attention_heads = block_out_channels
        .iter()
        .map(|&c| {
            let heads = if use_linear_projection { c / 64 } else { 8 };
            if heads == 0 || c % heads != 0 {
                Err(needs_config(
                    files,
                    format!("cannot infer attention heads for {c} channels"),
                ))
            } else {
                Ok(heads)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(c) = block_out_channels
        .iter()
        .find(|&&c| c % DEFAULT_GROUPS != 0)
    {
        return Err(needs_config(
            files,
            format!("{c} UNet channels do not split into {DEFAULT_GROUPS} groups"),
        ));
    }
    let config = UNetConfig {
        in_channels: conv_in[1],
        out_channels: conv_out[0],
        block_out_channels,
        down_blocks,
        up_blocks,
        layers_per_block,
        attention_heads,
        cross_attention_dim: to_k[1],
        use_linear_projection,
        ..UNetConfig::sd_v1_5()
    };
    config.validate(&files.model_path.display().to_string())?;
    Ok(config)
}

pub(super) fn vae_config(files: &ModelFiles) -> Result<VaeConfig> {
    let s = &files.vae;
    let levels = indices(s, "encoder.down_blocks.").len();
    let block_out_channels = (0..levels)
        .map(|i| {
            dims(
                s,
                &format!("encoder.down_blocks.{i}.resnets.0.conv1.weight"),
                files,
            )
            .map(|d| d[0])
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(c) = block_out_channels
        .iter()
        .find(|&&c| c % DEFAULT_GROUPS != 0)
    {
        return Err(needs_config(
            files,
            format!("{c} autoencoder channels do not split into {DEFAULT_GROUPS} groups"),
        ));
    }
    let config = VaeConfig {
        in_channels: dims(s, "encoder.conv_in.weight", files)?[1],
        out_channels: dims(s, "decoder.conv_out.weight", files)?[0],
        latent_channels: dims(s, "decoder.conv_in.weight", files)?[1],
        layers_per_block: indices(s, "encoder.down_blocks.0.resnets.").len(),
        block_out_channels,
        ..VaeConfig::sd_v1_5()
    };
    config.validate(&files.model_path.display().to_string())?;
    Ok(config)
}
