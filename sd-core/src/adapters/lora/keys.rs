//! Tensor names of LoRA files: which model part and module a key belongs to, and which part of
//! that module's weights it holds.
//!
//! Spellings understood (formats.md §4.3):
//!
//! - kohya / A1111 / LyCORIS: `lora_unet_<path with _>.<part>` and `lora_te_<path with _>.<part>`,
//!   where `<part>` is everything after the first `.` (`lora_down.weight`, `alpha`, `hada_w1_a`,
//!   …). `lycoris_<path with _>` (LyCORIS stand-alone saves, UNet) and kohya's `oft_unet_` are read
//!   the same way; a leading `lora.` is dropped.
//! - diffusers / PEFT: `unet.<dotted path>.lora_A.weight` / `.lora_B.weight` and
//!   `text_encoder.<dotted path>.…`, also `.lora_A.default.weight`, `.lora.down.weight`,
//!   `.lora_magnitude_vector`, and PEFT's own `base_model.model.` prefix.
//! - the older diffusers attention-processor format: `….attn1.processor.to_q_lora.down.weight`
//!   (module `….attn1.to_q`; `to_out_lora` is `to_out.0`) and
//!   `….q_proj.lora_linear_layer.down.weight`.
//! - textual-inversion embeddings bundled in a LoRA: `bundle_emb.<name>.<rest>`.
//!
//! Names of other model families (SDXL's `lora_te1_` / `lora_te2_` / `text_encoder_2.`, SD3's
//! `lora_te3_`) are recognised as such, for the family check.

/// The model part a module belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The CLIP text encoder (A1111's "te" strength applies).
    TextEncoder,
    /// The denoising UNet (A1111's "unet" strength applies).
    Unet,
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Component::TextEncoder => "text encoder",
            Component::Unet => "UNet",
        })
    }
}

/// How a key names its module.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ModulePath {
    /// A path with its dots replaced by `_` (kohya); resolved through the model's own names.
    Underscored(String),
    /// A dotted module path (diffusers / transformers names, or LDM names).
    Dotted(String),
}

/// What one tensor name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// A tensor of an adapter module.
    Module {
        /// The model part.
        component: Component,
        /// The module, as the key names it.
        path: ModulePath,
        /// Which tensor of the module, in kohya spelling (`lora_down.weight`, `alpha`, …).
        part: String,
    },
    /// A tensor of a bundled textual-inversion embedding.
    BundledEmbedding {
        /// The embedding's name (its trigger word).
        name: String,
        /// The rest of the key (`string_to_param.*`, `clip_l`, …).
        rest: String,
    },
    /// A key of another model family's adapter; the evidence for the family check.
    OtherFamily {
        /// The family.
        family: &'static str,
    },
    /// Not a key any LoRA format defines.
    Unrecognised,
}

/// kohya-style prefixes: `(prefix, meaning)`.
enum Prefix {
    Part(Component),
    Family(&'static str),
}

const KOHYA_PREFIXES: &[(&str, Prefix)] = &[
    ("lora_unet_", Prefix::Part(Component::Unet)),
    ("lora_te1_", Prefix::Family("SDXL")),
    ("lora_te2_", Prefix::Family("SDXL")),
    ("lora_te3_", Prefix::Family("SD3")),
    ("lora_te_", Prefix::Part(Component::TextEncoder)),
    ("oft_unet_", Prefix::Part(Component::Unet)),
    ("lycoris_", Prefix::Part(Component::Unet)),
    (
        "lora_transformer_",
        Prefix::Family("a transformer (DiT) model"),
    ),
];

/// Dotted-name prefixes naming the model part.
const DOTTED_PREFIXES: &[(&str, Prefix)] = &[
    ("unet.", Prefix::Part(Component::Unet)),
    ("text_encoder.", Prefix::Part(Component::TextEncoder)),
    ("text_encoder_2.", Prefix::Family("SDXL")),
    ("text_encoder_3.", Prefix::Family("SD3")),
    ("transformer.", Prefix::Family("a transformer (DiT) model")),
];

/// Dotted suffixes and the kohya part they stand for, longest first where one ends another.
const DOTTED_SUFFIXES: &[(&str, &str)] = &[
    (".lora_A.default.weight", "lora_down.weight"),
    (".lora_B.default.weight", "lora_up.weight"),
    (".lora_A.weight", "lora_down.weight"),
    (".lora_B.weight", "lora_up.weight"),
    (
        ".lora_magnitude_vector.default.weight",
        "lora_magnitude_vector",
    ),
    (".lora_magnitude_vector.weight", "lora_magnitude_vector"),
    (".lora_magnitude_vector", "lora_magnitude_vector"),
    (".lora_linear_layer.down.weight", "lora_down.weight"),
    (".lora_linear_layer.up.weight", "lora_up.weight"),
    (".lora.down.weight", "lora_down.weight"),
    (".lora.up.weight", "lora_up.weight"),
    (".lora_down.weight", "lora_down.weight"),
    (".lora_up.weight", "lora_up.weight"),
    (".lora_mid.weight", "lora_mid.weight"),
    (".dora_scale", "dora_scale"),
    (".alpha", "alpha"),
];

/// Spellings of kohya parts that mean another part.
fn canonical_part(part: &str) -> &str {
    match part {
        "lora_A.weight" | "lora_A.default.weight" | "lora.down.weight" => "lora_down.weight",
        "lora_B.weight" | "lora_B.default.weight" | "lora.up.weight" => "lora_up.weight",
        "lora_magnitude_vector.weight" | "lora_magnitude_vector.default.weight" => {
            "lora_magnitude_vector"
        }
        other => other,
    }
}

/// The model part a dotted path without a component prefix belongs to, by its first segment.
fn component_of_bare_path(path: &str) -> Option<Component> {
    let first = path.split('.').next().unwrap_or("");
    match first {
        "text_model" | "encoder" | "embeddings" | "final_layer_norm" => {
            Some(Component::TextEncoder)
        }
        "down_blocks" | "mid_block" | "up_blocks" | "conv_in" | "conv_out" | "conv_norm_out"
        | "time_embedding" | "input_blocks" | "middle_block" | "output_blocks" | "out"
        | "time_embed" => Some(Component::Unet),
        "add_embedding" | "label_emb" => None,
        _ => None,
    }
}

/// Classifies one tensor name.
pub(crate) fn parse_key(key: &str) -> KeyKind {
    let key = key.strip_prefix("lora.").unwrap_or(key);
    if let Some(rest) = key.strip_prefix("bundle_emb.") {
        return match rest.split_once('.') {
            Some((name, rest)) if !name.is_empty() && !rest.is_empty() => {
                KeyKind::BundledEmbedding {
                    name: name.to_string(),
                    rest: rest.to_string(),
                }
            }
            _ => KeyKind::Unrecognised,
        };
    }
    if let Some(kind) = parse_kohya(key) {
        return kind;
    }
    parse_dotted(key)
}

fn parse_kohya(key: &str) -> Option<KeyKind> {
    let (module, part) = key.split_once('.')?;
    if module.contains('.') || part.is_empty() {
        return None;
    }
    for (prefix, meaning) in KOHYA_PREFIXES {
        if let Some(rest) = module.strip_prefix(prefix) {
            return Some(match meaning {
                Prefix::Family(family) => KeyKind::OtherFamily { family },
                _ if rest.is_empty() => KeyKind::Unrecognised,
                Prefix::Part(component) => {
                    if *component == Component::Unet && is_sdxl_only_unet_module(rest) {
                        return Some(KeyKind::OtherFamily { family: "SDXL" });
                    }
                    KeyKind::Module {
                        component: *component,
                        path: ModulePath::Underscored(rest.to_string()),
                        part: canonical_part(part).to_string(),
                    }
                }
            });
        }
    }
    None
}

/// UNet modules only SDXL has (its pooled-text and size embedding).
fn is_sdxl_only_unet_module(underscored: &str) -> bool {
    underscored.starts_with("label_emb") || underscored.starts_with("add_embedding")
}

fn parse_dotted(key: &str) -> KeyKind {
    let mut component = None;
    let mut path = key;
    for (prefix, meaning) in DOTTED_PREFIXES {
        if let Some(rest) = key.strip_prefix(prefix) {
            match meaning {
                Prefix::Family(family) => return KeyKind::OtherFamily { family },
                Prefix::Part(c) => {
                    component = Some(*c);
                    path = rest;
                }
            }
            break;
        }
    }
    for prefix in [
        "base_model.model.",
        "model.diffusion_model.",
        "diffusion_model.",
    ] {
        if let Some(rest) = path.strip_prefix(prefix) {
            path = rest;
        }
    }
    let Some((module, part)) = split_dotted_part(path) else {
        return KeyKind::Unrecognised;
    };
    let module = attn_processor_module(&module).unwrap_or(module);
    if is_sdxl_only_unet_module(&module) {
        return KeyKind::OtherFamily { family: "SDXL" };
    }
    let Some(component) = component.or_else(|| component_of_bare_path(&module)) else {
        return KeyKind::Unrecognised;
    };
    let module = match component {
        Component::TextEncoder if !module.starts_with("text_model.") => {
            format!("text_model.{module}")
        }
        _ => module,
    };
    KeyKind::Module {
        component,
        path: ModulePath::Dotted(module),
        part: part.to_string(),
    }
}

/// Splits `<module>.<part>` for dotted keys: a known LoRA suffix, else a LyCORIS part name.
fn split_dotted_part(path: &str) -> Option<(String, &'static str)> {
    for (suffix, part) in DOTTED_SUFFIXES {
        if let Some(module) = path.strip_suffix(suffix)
            && !module.is_empty()
        {
            return Some((module.to_string(), part));
        }
    }
    // The attention-processor spelling `…to_q_lora.down.weight` (and sd.cpp's `_lora.down`).
    for (suffix, part) in [
        ("_lora.down.weight", "lora_down.weight"),
        ("_lora.up.weight", "lora_up.weight"),
    ] {
        if let Some(module) = path.strip_suffix(suffix)
            && !module.is_empty()
        {
            return Some((module.to_string(), part));
        }
    }
    let (module, last) = path.rsplit_once('.')?;
    let part = super::modules::LYCORIS_PARTS
        .iter()
        .find(|p| **p == last)
        .copied()?;
    (!module.is_empty()).then(|| (module.to_string(), part))
}

/// `x.processor.to_q` → `x.to_q` (and `to_out` → `to_out.0`): the old diffusers
/// attention-processor LoRA names.
fn attn_processor_module(module: &str) -> Option<String> {
    let (base, proj) = module.split_once(".processor.")?;
    let proj = match proj {
        "to_out" => "to_out.0",
        p @ ("to_q" | "to_k" | "to_v") => p,
        _ => return None,
    };
    Some(format!("{base}.{proj}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(key: &str) -> (Component, ModulePath, String) {
        match parse_key(key) {
            KeyKind::Module {
                component,
                path,
                part,
            } => (component, path, part),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn kohya_keys_split_at_the_first_dot() {
        let (c, p, part) = module("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight");
        assert_eq!(c, Component::Unet);
        assert_eq!(
            p,
            ModulePath::Underscored("down_blocks_0_attentions_0_proj_in".into())
        );
        assert_eq!(part, "lora_up.weight");
        let (c, _, part) = module("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha");
        assert_eq!((c, part.as_str()), (Component::TextEncoder, "alpha"));
        let (_, _, part) = module("lora_unet_x_y.lora_A.weight");
        assert_eq!(part, "lora_down.weight");
        let (_, _, part) = module("lora.lora_unet_x_y.hada_w1_a");
        assert_eq!(part, "hada_w1_a");
    }

    #[test]
    fn peft_and_diffusers_spellings() {
        let (c, p, part) = module("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight");
        assert_eq!(c, Component::Unet);
        assert_eq!(
            p,
            ModulePath::Dotted("down_blocks.0.attentions.0.proj_in".into())
        );
        assert_eq!(part, "lora_down.weight");
        let (c, p, _) = module("text_encoder.encoder.layers.0.mlp.fc1.lora_B.default.weight");
        assert_eq!(c, Component::TextEncoder);
        assert_eq!(
            p,
            ModulePath::Dotted("text_model.encoder.layers.0.mlp.fc1".into())
        );
        let (_, p, part) = module(
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
        );
        assert_eq!(
            p,
            ModulePath::Dotted(
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0".into()
            )
        );
        assert_eq!(part, "lora_up.weight");
        let (c, _, part) = module(
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight",
        );
        assert_eq!(
            (c, part.as_str()),
            (Component::TextEncoder, "lora_down.weight")
        );
        let (_, _, part) = module("unet.mid_block.attentions.0.proj_out.lora_magnitude_vector");
        assert_eq!(part, "lora_magnitude_vector");
        let (c, _, _) = module("base_model.model.down_blocks.1.resnets.0.conv1.lora_A.weight");
        assert_eq!(c, Component::Unet);
    }

    #[test]
    fn other_families_and_embeddings() {
        for key in [
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha",
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha",
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
            "lora_unet_label_emb_0_0.lora_up.weight",
        ] {
            assert!(
                matches!(parse_key(key), KeyKind::OtherFamily { family: "SDXL" }),
                "{key}"
            );
        }
        assert_eq!(
            parse_key("bundle_emb.style.string_to_param.*"),
            KeyKind::BundledEmbedding {
                name: "style".into(),
                rest: "string_to_param.*".into()
            }
        );
        assert_eq!(parse_key("something_else"), KeyKind::Unrecognised);
        assert_eq!(parse_key("optimizer.state"), KeyKind::Unrecognised);
    }
}
