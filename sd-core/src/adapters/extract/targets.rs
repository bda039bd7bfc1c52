//! Which layers kohya's LoRA trains, and the names it gives them (formats.md §4.3.1; kohya-ss
//! `networks/lora.py`, `LoRANetwork.UNET_TARGET_REPLACE_MODULE`, `…_CONV2D_3X3` and
//! `TEXT_ENCODER_TARGET_REPLACE_MODULE`).
//!
//! kohya wraps every `Linear` and `Conv2d` found inside modules of some classes:
//! - UNet `Transformer2DModel` (`…attentions.N`): `proj_in`, `proj_out`, and in each transformer
//!   block `attn1`/`attn2` `to_q`, `to_k`, `to_v`, `to_out.0`, `ff.net.0.proj`, `ff.net.2`;
//! - with a conv rank ("LoCon"), also `ResnetBlock2D` (`conv1`, `conv2`, `conv_shortcut`,
//!   `time_emb_proj`), `Downsample2D` and `Upsample2D` (`conv`);
//! - text encoder `CLIPAttention` (`q_proj`, `k_proj`, `v_proj`, `out_proj`) and `CLIPMLP`
//!   (`fc1`, `fc2`).
//!
//! A `Linear` or 1x1 convolution gets the network rank, a larger kernel the conv rank (without
//! one it is not wrapped). For SD 1.x and 2.x the UNet module paths are the diffusers ones, the
//! text encoder's those of transformers' `CLIPTextModel`: the same names
//! [`visit_parameters`](crate::models::UNet2DConditionModel::visit_parameters) and the weight
//! stores use, so a LoRA name is the module path with `.` replaced by `_` behind `lora_unet_` or
//! `lora_te_`.

use std::fmt;

/// The model a LoRA layer patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Network {
    /// The CLIP text encoder (kohya prefix `lora_te`).
    TextEncoder,
    /// The UNet (kohya prefix `lora_unet`).
    Unet,
}

impl Network {
    /// The prefix kohya puts before the module path.
    pub fn kohya_prefix(self) -> &'static str {
        match self {
            Network::TextEncoder => "lora_te",
            Network::Unet => "lora_unet",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::TextEncoder => "text encoder",
            Network::Unet => "UNet",
        })
    }
}

/// The kind of module that holds a target layer, which decides whether kohya wraps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetModule {
    /// A UNet `Transformer2DModel` child: always a LoRA target.
    Transformer,
    /// A UNet `ResnetBlock2D`, `Downsample2D` or `Upsample2D` child: a target only when conv
    /// layers are extracted (LoCon).
    ConvBlock,
    /// A text encoder attention or MLP projection: always a target.
    TextEncoder,
}

/// A parameter that kohya's LoRA can target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The model it belongs to.
    pub network: Network,
    /// The kind of module that holds it.
    pub module: TargetModule,
    /// The module path (the parameter name without `.weight`), as diffusers/transformers name
    /// it: `down_blocks.0.attentions.0.proj_in`.
    pub module_path: String,
}

impl Target {
    /// The kohya LoRA name: `lora_unet_down_blocks_0_attentions_0_proj_in`.
    pub fn kohya_name(&self) -> String {
        format!(
            "{}_{}",
            self.network.kohya_prefix(),
            self.module_path.replace('.', "_")
        )
    }

    /// The weight parameter's name (`<module path>.weight`).
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.module_path)
    }
}

/// The target a parameter is, if kohya's LoRA can wrap it; `None` for every other parameter
/// (biases, norms, embeddings, `conv_in`, `time_embedding`, …). Whether a [`TargetModule::ConvBlock`]
/// target or a layer with a kernel larger than 1x1 is extracted is up to the caller's options.
pub fn classify(network: Network, param_name: &str) -> Option<Target> {
    let module_path = param_name.strip_suffix(".weight")?;
    let parts: Vec<&str> = module_path.split('.').collect();
    let module = match network {
        Network::Unet => unet_module(&parts)?,
        Network::TextEncoder => text_encoder_module(&parts)?,
    };
    Some(Target {
        network,
        module,
        module_path: module_path.to_string(),
    })
}

fn is_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `down_blocks.N.…`, `up_blocks.N.…` or `mid_block.…`: the part after the block.
fn unet_module(parts: &[&str]) -> Option<TargetModule> {
    let inner = match parts {
        ["down_blocks" | "up_blocks", i, rest @ ..] if is_index(i) => rest,
        ["mid_block", rest @ ..] => rest,
        _ => return None,
    };
    match inner {
        ["attentions", j, child @ ..] if is_index(j) && is_transformer_child(child) => {
            Some(TargetModule::Transformer)
        }
        [
            "resnets",
            j,
            "conv1" | "conv2" | "conv_shortcut" | "time_emb_proj",
        ] if is_index(j) => Some(TargetModule::ConvBlock),
        ["downsamplers" | "upsamplers", "0", "conv"] => Some(TargetModule::ConvBlock),
        _ => None,
    }
}

fn is_transformer_child(child: &[&str]) -> bool {
    match child {
        ["proj_in"] | ["proj_out"] => true,
        ["transformer_blocks", k, rest @ ..] if is_index(k) => matches!(
            rest,
            ["attn1" | "attn2", "to_q" | "to_k" | "to_v"]
                | ["attn1" | "attn2", "to_out", "0"]
                | ["ff", "net", "0", "proj"]
                | ["ff", "net", "2"]
        ),
        _ => false,
    }
}

fn text_encoder_module(parts: &[&str]) -> Option<TargetModule> {
    match parts {
        [
            "text_model",
            "encoder",
            "layers",
            n,
            "self_attn",
            "q_proj" | "k_proj" | "v_proj" | "out_proj",
        ]
        | ["text_model", "encoder", "layers", n, "mlp", "fc1" | "fc2"]
            if is_index(n) =>
        {
            Some(TargetModule::TextEncoder)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformer_children_are_targets_with_kohya_names() {
        for (param, kohya) in [
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            (
                "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0.weight",
                "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0",
            ),
            (
                "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
            ),
            (
                "mid_block.attentions.0.transformer_blocks.1.ff.net.2.weight",
                "lora_unet_mid_block_attentions_0_transformer_blocks_1_ff_net_2",
            ),
            (
                "down_blocks.2.attentions.1.proj_in.weight",
                "lora_unet_down_blocks_2_attentions_1_proj_in",
            ),
            (
                "up_blocks.1.attentions.0.proj_out.weight",
                "lora_unet_up_blocks_1_attentions_0_proj_out",
            ),
        ] {
            let t = classify(Network::Unet, param).unwrap_or_else(|| panic!("{param}"));
            assert_eq!(t.module, TargetModule::Transformer, "{param}");
            assert_eq!(t.kohya_name(), kohya);
            assert_eq!(t.weight_name(), param);
        }
    }

    #[test]
    fn resnet_and_sampler_layers_are_conv_block_targets() {
        for (param, kohya) in [
            (
                "down_blocks.1.resnets.0.conv1.weight",
                "lora_unet_down_blocks_1_resnets_0_conv1",
            ),
            (
                "up_blocks.0.resnets.2.conv_shortcut.weight",
                "lora_unet_up_blocks_0_resnets_2_conv_shortcut",
            ),
            (
                "mid_block.resnets.1.time_emb_proj.weight",
                "lora_unet_mid_block_resnets_1_time_emb_proj",
            ),
            (
                "down_blocks.0.downsamplers.0.conv.weight",
                "lora_unet_down_blocks_0_downsamplers_0_conv",
            ),
            (
                "up_blocks.2.upsamplers.0.conv.weight",
                "lora_unet_up_blocks_2_upsamplers_0_conv",
            ),
        ] {
            let t = classify(Network::Unet, param).unwrap_or_else(|| panic!("{param}"));
            assert_eq!(t.module, TargetModule::ConvBlock, "{param}");
            assert_eq!(t.kohya_name(), kohya);
        }
    }

    #[test]
    fn text_encoder_projections_are_targets() {
        for (param, kohya) in [
            (
                "text_model.encoder.layers.0.self_attn.q_proj.weight",
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            ),
            (
                "text_model.encoder.layers.11.self_attn.out_proj.weight",
                "lora_te_text_model_encoder_layers_11_self_attn_out_proj",
            ),
            (
                "text_model.encoder.layers.3.mlp.fc2.weight",
                "lora_te_text_model_encoder_layers_3_mlp_fc2",
            ),
        ] {
            let t = classify(Network::TextEncoder, param).unwrap_or_else(|| panic!("{param}"));
            assert_eq!(t.module, TargetModule::TextEncoder);
            assert_eq!(t.kohya_name(), kohya);
        }
    }

    #[test]
    fn other_parameters_are_not_targets() {
        for param in [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.bias",
            "down_blocks.0.attentions.0.transformer_blocks.0.norm1.weight",
            "down_blocks.0.attentions.0.norm.weight",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.1.weight",
            "down_blocks.0.resnets.0.norm1.weight",
            "conv_in.weight",
            "conv_out.weight",
            "time_embedding.linear_1.weight",
            "down_blocks.x.attentions.0.proj_in.weight",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn3.to_q.weight",
            "text_model.encoder.layers.0.self_attn.q_proj.weight",
        ] {
            assert_eq!(classify(Network::Unet, param), None, "{param}");
        }
        for param in [
            "text_model.embeddings.token_embedding.weight",
            "text_model.encoder.layers.0.layer_norm1.weight",
            "text_model.encoder.layers.0.self_attn.q_proj.bias",
            "text_model.final_layer_norm.weight",
            "down_blocks.0.attentions.0.proj_in.weight",
        ] {
            assert_eq!(classify(Network::TextEncoder, param), None, "{param}");
        }
    }
}
