//! Name mapping: which layer of the loaded model a LoRA module patches.
//!
//! As A1111's `networks.py` does, the lookup table is built from the model's own parameter
//! names (`module_path.replace('.', '_')` → module), so a kohya name like
//! `lora_unet_down_blocks_0_attentions_0_proj_in` is found without ever guessing which `_` was
//! a `.`. The table also holds each UNet layer under its original LDM (compvis) name
//! (`input_blocks_1_1_proj_in`, `…_in_layers_2`), derived from the model's configuration and
//! checked against [`weights::names`](crate::weights::names), and each text-encoder layer with
//! and without the `text_model.` level that some writers drop.

use std::collections::HashMap;

use super::keys::ModulePath;
use crate::models::{UNetBlockKind, UNetConfig};
use crate::weights::names::map_unet_keys;

/// One layer of the model a LoRA module can patch.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The module path (`down_blocks.0.attentions.0.proj_in`).
    pub(crate) path: String,
    /// The weight's PyTorch shape, if the layer has a weight.
    pub(crate) weight: Option<Vec<usize>>,
    /// The bias's shape, if the layer has a bias.
    pub(crate) bias: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    One(usize),
    /// Two layers give the same underscored name; neither is chosen.
    Ambiguous,
}

/// The layers of one model part, by every name a LoRA may use for them.
#[derive(Debug, Default)]
pub(crate) struct TargetTable {
    targets: Vec<Target>,
    dotted: HashMap<String, usize>,
    underscored: HashMap<String, Slot>,
}

impl TargetTable {
    /// A table over the parameters `(name, PyTorch shape)` of one model part. `aliases` maps
    /// other module paths to module paths of the model.
    pub(crate) fn new(params: &[(String, Vec<usize>)], aliases: &[(String, String)]) -> Self {
        let mut table = TargetTable::default();
        for (name, shape) in params {
            let (module, which) = match name.rsplit_once('.') {
                Some((m, w @ ("weight" | "bias"))) => (m, w),
                _ => continue,
            };
            let index = match table.dotted.get(module) {
                Some(&i) => i,
                None => {
                    table.targets.push(Target {
                        path: module.to_string(),
                        weight: None,
                        bias: None,
                    });
                    let i = table.targets.len() - 1;
                    table.dotted.insert(module.to_string(), i);
                    table.add_underscored(module, i);
                    i
                }
            };
            let target = &mut table.targets[index];
            if which == "weight" {
                target.weight = Some(shape.clone());
            } else {
                target.bias = Some(shape.clone());
            }
        }
        for (alias, module) in aliases {
            if let Some(&i) = table.dotted.get(module.as_str()) {
                table.dotted.entry(alias.clone()).or_insert(i);
                table.add_underscored(alias, i);
            }
        }
        table
    }

    fn add_underscored(&mut self, dotted: &str, index: usize) {
        let key = dotted.replace('.', "_");
        match self.underscored.get(&key) {
            Some(Slot::One(i)) if *i != index => {
                self.underscored.insert(key, Slot::Ambiguous);
            }
            Some(_) => {}
            None => {
                self.underscored.insert(key, Slot::One(index));
            }
        }
    }

    /// The layer a module path names.
    pub(crate) fn resolve(&self, path: &ModulePath) -> Option<&Target> {
        let index = match path {
            ModulePath::Dotted(p) => self
                .dotted
                .get(p)
                .copied()
                .or_else(|| self.underscored_index(&p.replace('.', "_"))),
            ModulePath::Underscored(u) => self.underscored_index(u),
        }?;
        self.targets.get(index)
    }

    fn underscored_index(&self, key: &str) -> Option<usize> {
        match self.underscored.get(key) {
            Some(Slot::One(i)) => Some(*i),
            _ => None,
        }
    }
}

/// Text-encoder aliases: every `text_model.<x>` layer also as `<x>`.
pub(crate) fn text_encoder_aliases(params: &[(String, Vec<usize>)]) -> Vec<(String, String)> {
    params
        .iter()
        .filter_map(|(name, _)| {
            let module = name.rsplit_once('.')?.0;
            let bare = module.strip_prefix("text_model.")?;
            Some((bare.to_string(), module.to_string()))
        })
        .collect()
}

/// UNet aliases: each layer under its original LDM name (`input_blocks.1.1.proj_in` for
/// `down_blocks.0.attentions.0.proj_in`). The names come from the configuration (the layout
/// tools/ldm_layout.py writes), and only those that [`map_unet_keys`] renames back to the same
/// diffusers parameter are kept, so the two directions cannot disagree.
pub(crate) fn unet_ldm_aliases(
    config: &UNetConfig,
    params: &[(String, Vec<usize>)],
) -> Vec<(String, String)> {
    let prefixes = unet_prefix_map(config);
    let mut forward: Vec<(String, String)> = Vec::new();
    for (name, _) in params {
        if let Some(ldm) = ldm_param_name(name, &prefixes) {
            forward.push((ldm, name.clone()));
        }
    }
    let ldm_names: Vec<&str> = forward.iter().map(|(l, _)| l.as_str()).collect();
    let back: HashMap<String, String> = map_unet_keys(&ldm_names)
        .pairs
        .into_iter()
        .map(|(diffusers, ldm)| (ldm, diffusers))
        .collect();
    let mut aliases = Vec::new();
    for (ldm, diffusers) in &forward {
        if back.get(ldm) != Some(diffusers) {
            continue;
        }
        if let (Some((lm, lw)), Some((dm, dw))) = (ldm.rsplit_once('.'), diffusers.rsplit_once('.'))
            && lw == dw
        {
            aliases.push((lm.to_string(), dm.to_string()));
        }
    }
    aliases.sort();
    aliases.dedup();
    aliases
}

const RESNET_RENAMES: &[(&str, &str)] = &[
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
];

const TOP_RENAMES: &[(&str, &str)] = &[
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
];

/// Diffusers module prefixes and their LDM counterparts for a UNet configuration.
fn unet_prefix_map(config: &UNetConfig) -> Vec<(String, String)> {
    let layers = config.layers_per_block;
    let per_level = layers + 1;
    let levels = config.down_blocks.len();
    let mut out = Vec::new();
    for (i, kind) in config.down_blocks.iter().enumerate() {
        for j in 0..layers {
            let idx = per_level * i + j + 1;
            out.push((
                format!("down_blocks.{i}.resnets.{j}."),
                format!("input_blocks.{idx}.0."),
            ));
            if *kind == UNetBlockKind::CrossAttention {
                out.push((
                    format!("down_blocks.{i}.attentions.{j}."),
                    format!("input_blocks.{idx}.1."),
                ));
            }
        }
        if i + 1 < levels {
            out.push((
                format!("down_blocks.{i}.downsamplers.0.conv."),
                format!("input_blocks.{}.0.op.", per_level * (i + 1)),
            ));
        }
    }
    for (i, kind) in config.up_blocks.iter().enumerate() {
        let attn = *kind == UNetBlockKind::CrossAttention;
        for j in 0..=layers {
            let idx = per_level * i + j;
            out.push((
                format!("up_blocks.{i}.resnets.{j}."),
                format!("output_blocks.{idx}.0."),
            ));
            if attn {
                out.push((
                    format!("up_blocks.{i}.attentions.{j}."),
                    format!("output_blocks.{idx}.1."),
                ));
            }
        }
        if i + 1 < levels {
            out.push((
                format!("up_blocks.{i}.upsamplers.0."),
                format!(
                    "output_blocks.{}.{}.",
                    per_level * i + layers,
                    if attn { 2 } else { 1 }
                ),
            ));
        }
    }
    out.push(("mid_block.attentions.0.".into(), "middle_block.1.".into()));
    for j in 0..2 {
        out.push((
            format!("mid_block.resnets.{j}."),
            format!("middle_block.{}.", 2 * j),
        ));
    }
    out
}

/// The LDM name of a diffusers UNet parameter.
fn ldm_param_name(name: &str, prefixes: &[(String, String)]) -> Option<String> {
    for (from, to) in TOP_RENAMES {
        if let Some(rest) = name.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    for (from, to) in prefixes {
        if let Some(rest) = name.strip_prefix(from.as_str()) {
            let rest = if from.contains(".resnets.") {
                RESNET_RENAMES
                    .iter()
                    .find_map(|(a, b)| rest.strip_prefix(a).map(|r| format!("{b}{r}")))?
            } else {
                rest.to_string()
            };
            return Some(format!("{to}{rest}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(names: &[&str]) -> Vec<(String, Vec<usize>)> {
        names.iter().map(|n| (n.to_string(), vec![4, 4])).collect()
    }

    #[test]
    fn underscored_names_resolve_through_the_model_names() {
        let p = params(&[
            "down_blocks.0.attentions.0.proj_in.weight",
            "down_blocks.0.attentions.0.proj_in.bias",
            "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
        ]);
        let t = TargetTable::new(&p, &[]);
        let hit = t
            .resolve(&ModulePath::Underscored(
                "down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj".into(),
            ))
            .expect("ff");
        assert_eq!(
            hit.path,
            "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"
        );
        let proj = t
            .resolve(&ModulePath::Dotted(
                "down_blocks.0.attentions.0.proj_in".into(),
            ))
            .expect("proj_in");
        assert!(proj.weight.is_some() && proj.bias.is_some());
        assert!(
            t.resolve(&ModulePath::Underscored(
                "down_blocks_0_attentions_1".into()
            ))
            .is_none()
        );
    }

    #[test]
    fn colliding_underscored_names_resolve_to_nothing() {
        let p = params(&["a.b_c.weight", "a_b.c.weight"]);
        let t = TargetTable::new(&p, &[]);
        assert!(
            t.resolve(&ModulePath::Underscored("a_b_c".into()))
                .is_none()
        );
        assert!(t.resolve(&ModulePath::Dotted("a.b_c".into())).is_some());
    }

    /// The parameter names of a UNet with SD 1.5's block structure (tiny channels: the names
    /// depend only on the structure).
    fn sd15_structure_params() -> Vec<(String, Vec<usize>)> {
        let config = UNetConfig {
            block_out_channels: vec![8, 16, 32, 32],
            attention_heads: vec![2; 4],
            cross_attention_dim: 8,
            norm_num_groups: 4,
            ..UNetConfig::sd_v1_5()
        };
        let store = std::sync::Arc::new(crate::weights::WeightStore::synthetic(1));
        let mut unet = crate::models::UNet2DConditionModel::new(
            &store.view(crate::tensor::Device::Cpu),
            &config,
        )
        .expect("unet");
        let mut out = Vec::new();
        unet.visit_parameters(&mut |name, p| {
            out.push((name.to_string(), p.torch_shape()));
            Ok(())
        })
        .expect("visit");
        out
    }

    #[test]
    fn sd15_ldm_aliases_follow_the_original_layout() {
        let config = UNetConfig::sd_v1_5();
        let p = sd15_structure_params();
        assert!(p.len() > 600, "{} parameters", p.len());
        let aliases: HashMap<String, String> = unet_ldm_aliases(&config, &p).into_iter().collect();
        let expect = [
            ("input_blocks.0.0", "conv_in"),
            (
                "input_blocks.1.1.proj_in",
                "down_blocks.0.attentions.0.proj_in",
            ),
            (
                "input_blocks.2.0.in_layers.2",
                "down_blocks.0.resnets.1.conv1",
            ),
            ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
            (
                "input_blocks.4.0.skip_connection",
                "down_blocks.1.resnets.0.conv_shortcut",
            ),
            (
                "middle_block.2.emb_layers.1",
                "mid_block.resnets.1.time_emb_proj",
            ),
            ("middle_block.1.proj_out", "mid_block.attentions.0.proj_out"),
            ("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"),
            (
                "output_blocks.5.1.proj_out",
                "up_blocks.1.attentions.2.proj_out",
            ),
            ("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"),
            ("out.2", "conv_out"),
        ];
        for (ldm, diffusers) in expect {
            assert_eq!(
                aliases.get(ldm).map(String::as_str),
                Some(diffusers),
                "{ldm}"
            );
        }
    }
}
