//! Renaming the original single-file layout (CompVis/LDM, as model sites and A1111 share
//! checkpoints) to the diffusers names the model code reads.
//!
//! The block structure (number of levels, layers per level, which levels have attention, where
//! the upsampler sits in an output block) is derived from the keys present, never from constants:
//! each numbered sub-module is classified by the names of its children (a resnet has
//! `in_layers`/`out_layers`, an attention block `transformer_blocks`/`proj_in`, a downsampler `op`,
//! an upsampler `conv`), and a downsampler (an upsampler, in the decoder path) closes a level. The
//! same functions therefore map SD 1.x and 2.x UNets of any size, and SDXL's UNet (which adds
//! `label_emb`). Text encoders differ per family; [`ModelFamily`] selects the prefixes and the
//! converter, so SD 2.x (OpenCLIP) and SDXL (two encoders) plug in as new table rows.
//!
//! Keys that match no rule are returned in [`Renamed::unmapped`] / [`KeyMapping::unmapped`],
//! never dropped silently.

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Prefix of the UNet in the original layout.
pub const LDM_UNET_PREFIX: &str = "model.diffusion_model.";
/// Prefix of the VAE in the original layout.
pub const LDM_VAE_PREFIX: &str = "first_stage_model.";
/// Prefix of the SD 1.x CLIP text encoder in the original layout.
pub const LDM_SD1_TEXT_PREFIX: &str = "cond_stage_model.transformer.";
/// Prefix of the EMA copies; the UNet's EMA keys have their dots removed
/// (`model_ema.diffusion_modelinput_blocks00weight`).
pub const LDM_EMA_PREFIX: &str = "model_ema.";

/// Model families whose single-file layout this module can rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModelFamily {
    /// Stable Diffusion 1.x: CLIP ViT-L text encoder under `cond_stage_model.transformer.`.
    Sd1,
}

/// What a key set looks like, before renaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectedFamily {
    /// A family [`map_single_file`] handles.
    Supported(ModelFamily),
    /// Stable Diffusion 2.x (OpenCLIP text encoder under `cond_stage_model.model.`), not yet
    /// supported in the single-file layout.
    Sd2,
    /// SDXL (`conditioner.embedders.`), not yet supported in the single-file layout.
    Sdxl,
    /// None of the known prefixes.
    Unknown,
}

/// Guesses the family from the keys of a single-file checkpoint.
pub fn detect_family<'a>(keys: impl IntoIterator<Item = &'a str>) -> DetectedFamily {
    let mut sd1 = false;
    let mut sd2 = false;
    let mut sdxl = false;
    let mut unet = false;
    for k in keys {
        sd1 |= k.starts_with(LDM_SD1_TEXT_PREFIX);
        sd2 |= k.starts_with("cond_stage_model.model.");
        sdxl |= k.starts_with("conditioner.embedders.");
        unet |= k.starts_with(LDM_UNET_PREFIX);
    }
    if sdxl {
        DetectedFamily::Sdxl
    } else if sd2 {
        DetectedFamily::Sd2
    } else if sd1 || unet {
        DetectedFamily::Supported(ModelFamily::Sd1)
    } else {
        DetectedFamily::Unknown
    }
}

/// The result of renaming one component: pairs `(diffusers_name, stored_name)` and the stored
/// names no rule matched. Names are relative to the component's prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renamed {
    /// `(diffusers_name, stored_name)`, sorted by diffusers name.
    pub pairs: Vec<(String, String)>,
    /// Stored names that no rule matched.
    pub unmapped: Vec<String>,
}

/// Per-family prefixes and converters.
struct FamilyTable {
    unet_prefix: &'static str,
    vae_prefix: &'static str,
    text_prefix: &'static str,
    text_converter: fn(&[&str]) -> Renamed,
}

fn table(family: ModelFamily) -> FamilyTable {
    match family {
        ModelFamily::Sd1 => FamilyTable {
            unet_prefix: LDM_UNET_PREFIX,
            vae_prefix: LDM_VAE_PREFIX,
            text_prefix: LDM_SD1_TEXT_PREFIX,
            text_converter: map_clip_text_keys,
        },
    }
}

/// Buffers of the original training code stored beside the weights; not needed for inference.
const LDM_SCHEDULE_BUFFERS: &[&str] = &[
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "model_ema.decay",
    "model_ema.num_updates",
];

/// The renaming of a whole single-file checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMapping {
    /// UNet: `(diffusers_name, stored_name)` with full stored names.
    pub unet: Vec<(String, String)>,
    /// VAE: `(diffusers_name, stored_name)`.
    pub vae: Vec<(String, String)>,
    /// Text encoder: `(diffusers_name, stored_name)`.
    pub text_encoder: Vec<(String, String)>,
    /// Keys recognised and deliberately unused: the EMA copy not chosen, schedule buffers.
    pub ignored: Vec<String>,
    /// Keys no rule matched.
    pub unmapped: Vec<String>,
    /// Whether the UNet names point at the EMA copy.
    pub uses_ema: bool,
}

/// The dotless form under which the original training code stores the EMA copy of UNet key
/// `rel` (relative to `model.diffusion_model.`).
pub fn ema_key_for(rel: &str) -> String {
    format!("{LDM_EMA_PREFIX}diffusion_model{}", rel.replace('.', ""))
}

/// Renames every key of a single-file checkpoint of `family`.
///
/// With `prefer_ema`, UNet tensors are read from the `model_ema.` copy where one exists for the
/// key (the default, like diffusers and A1111, is the non-EMA weights).
pub fn map_single_file(keys: &[&str], family: ModelFamily, prefer_ema: bool) -> KeyMapping {
    let t = table(family);
    let mut unet_rel = Vec::new();
    let mut vae_rel = Vec::new();
    let mut text_rel = Vec::new();
    let mut ema = Vec::new();
    let mut out = KeyMapping::default();
    for &k in keys {
        if let Some(r) = k.strip_prefix(t.unet_prefix) {
            unet_rel.push(r);
        } else if let Some(r) = k.strip_prefix(t.vae_prefix) {
            vae_rel.push(r);
        } else if let Some(r) = k.strip_prefix(t.text_prefix) {
            text_rel.push(r);
        } else if LDM_SCHEDULE_BUFFERS.contains(&k) {
            out.ignored.push(k.to_string());
        } else if k.starts_with(LDM_EMA_PREFIX) {
            ema.push(k);
        } else {
            out.unmapped.push(k.to_string());
        }
    }

    let unet = map_unet_keys(&unet_rel);
    let ema_set: HashSet<&str> = ema.iter().copied().collect();
    let mut used_ema: HashSet<String> = HashSet::new();
    out.unet = unet
        .pairs
        .into_iter()
        .map(|(new, old)| {
            let ema_key = ema_key_for(&old);
            if prefer_ema && ema_set.contains(ema_key.as_str()) {
                used_ema.insert(ema_key.clone());
                (new, ema_key)
            } else {
                (new, format!("{}{old}", t.unet_prefix))
            }
        })
        .collect();
    out.uses_ema = !used_ema.is_empty();
    out.unmapped.extend(
        unet.unmapped
            .into_iter()
            .map(|k| format!("{}{k}", t.unet_prefix)),
    );
    out.ignored.extend(
        ema.iter()
            .filter(|k| !used_ema.contains(**k))
            .map(|k| k.to_string()),
    );

    let vae = map_vae_keys(&vae_rel);
    out.vae = prefix_stored(vae.pairs, t.vae_prefix);
    out.unmapped.extend(
        vae.unmapped
            .into_iter()
            .map(|k| format!("{}{k}", t.vae_prefix)),
    );

    let text = (t.text_converter)(&text_rel);
    out.text_encoder = prefix_stored(text.pairs, t.text_prefix);
    out.unmapped.extend(
        text.unmapped
            .into_iter()
            .map(|k| format!("{}{k}", t.text_prefix)),
    );
    out.ignored.sort();
    out.unmapped.sort();
    out
}

fn prefix_stored(pairs: Vec<(String, String)>, prefix: &str) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(new, old)| (new, format!("{prefix}{old}")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// UNet

/// What a numbered sub-module of a UNet block is, judged by its children's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Resnet,
    Attention,
    Downsample,
    Upsample,
    /// Parameters directly on the sub-module (`input_blocks.0.0.weight`: the input conv).
    Direct,
    Unknown,
}

fn classify(children: &BTreeSet<&str>) -> Kind {
    let has = |n: &str| children.contains(n);
    if has("in_layers") || has("out_layers") || has("emb_layers") || has("skip_connection") {
        Kind::Resnet
    } else if has("transformer_blocks") || has("proj_in") || has("proj_out") || has("norm") {
        Kind::Attention
    } else if has("op") && children.len() == 1 {
        Kind::Downsample
    } else if has("conv") && children.len() == 1 {
        Kind::Upsample
    } else if children.iter().all(|c| *c == "weight" || *c == "bias") {
        Kind::Direct
    } else {
        Kind::Unknown
    }
}

fn map_resnet_inner(rest: &str) -> Option<String> {
    const RULES: &[(&str, &str)] = &[
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    RULES
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|tail| format!("{to}{tail}")))
}

/// A parsed `blocks.<i>.<s>.<rest>` key.
struct BlockKey<'a> {
    block: usize,
    sub: usize,
    rest: &'a str,
    original: &'a str,
}

fn parse_block_key<'a>(original: &'a str, after_block: &'a str) -> Option<BlockKey<'a>> {
    let (i, tail) = after_block.split_once('.')?;
    let (s, rest) = tail.split_once('.')?;
    Some(BlockKey {
        block: i.parse().ok()?,
        sub: s.parse().ok()?,
        rest,
        original,
    })
}

/// Groups parsed keys by block, then sub-module, and classifies each sub-module.
#[allow(clippy::type_complexity)]
fn group_blocks<'a>(
    keys: Vec<BlockKey<'a>>,
) -> BTreeMap<usize, BTreeMap<usize, (Kind, Vec<BlockKey<'a>>)>> {
    let mut grouped: BTreeMap<usize, BTreeMap<usize, Vec<BlockKey<'a>>>> = BTreeMap::new();
    for k in keys {
        grouped
            .entry(k.block)
            .or_default()
            .entry(k.sub)
            .or_default()
            .push(k);
    }
    grouped
        .into_iter()
        .map(|(b, subs)| {
            let subs = subs
                .into_iter()
                .map(|(s, ks)| {
                    let children: BTreeSet<&str> = ks
                        .iter()
                        .map(|k| k.rest.split('.').next().unwrap_or(""))
                        .collect();
                    (s, (classify(&children), ks))
                })
                .collect();
            (b, subs)
        })
        .collect()
}

/// Renames one classified sub-module's keys under `target` (e.g. `down_blocks.1`), with `counters`
/// giving the position of the next resnet / attention in that block.
fn emit_sub(
    kind: Kind,
    keys: &[BlockKey<'_>],
    target: &str,
    resnet_idx: usize,
    attn_idx: usize,
    out: &mut Renamed,
) {
    for k in keys {
        let new = match kind {
            Kind::Resnet => map_resnet_inner(k.rest)
                .map(|inner| format!("{target}.resnets.{resnet_idx}.{inner}")),
            Kind::Attention => Some(format!("{target}.attentions.{attn_idx}.{}", k.rest)),
            Kind::Downsample => k
                .rest
                .strip_prefix("op.")
                .map(|t| format!("{target}.downsamplers.0.conv.{t}")),
            Kind::Upsample => k
                .rest
                .strip_prefix("conv.")
                .map(|t| format!("{target}.upsamplers.0.conv.{t}")),
            Kind::Direct | Kind::Unknown => None,
        };
        match new {
            Some(n) => out.pairs.push((n, k.original.to_string())),
            None => out.unmapped.push(k.original.to_string()),
        }
    }
}

/// Renames UNet keys (relative to `model.diffusion_model.`) to diffusers `UNet2DConditionModel`
/// names.
pub fn map_unet_keys(keys: &[&str]) -> Renamed {
    let mut out = Renamed::default();
    let mut input = Vec::new();
    let mut middle = Vec::new();
    let mut output = Vec::new();
    for &k in keys {
        let simple = [
            ("time_embed.0.", "time_embedding.linear_1."),
            ("time_embed.2.", "time_embedding.linear_2."),
            ("label_emb.0.0.", "add_embedding.linear_1."),
            ("label_emb.0.2.", "add_embedding.linear_2."),
            ("out.0.", "conv_norm_out."),
            ("out.2.", "conv_out."),
        ]
        .iter()
        .find_map(|(from, to)| k.strip_prefix(from).map(|t| format!("{to}{t}")));
        if let Some(n) = simple {
            out.pairs.push((n, k.to_string()));
        } else if let Some(b) = k
            .strip_prefix("input_blocks.")
            .and_then(|r| parse_block_key(k, r))
        {
            input.push(b);
        } else if let Some(r) = k.strip_prefix("middle_block.") {
            // A single block: parse "middle_block.<s>.<rest>" as block 0.
            match r.split_once('.').and_then(|(s, rest)| {
                s.parse().ok().map(|sub| BlockKey {
                    block: 0,
                    sub,
                    rest,
                    original: k,
                })
            }) {
                Some(b) => middle.push(b),
                None => out.unmapped.push(k.to_string()),
            }
        } else if let Some(b) = k
            .strip_prefix("output_blocks.")
            .and_then(|r| parse_block_key(k, r))
        {
            output.push(b);
        } else {
            out.unmapped.push(k.to_string());
        }
    }

    // Input blocks: block 0 is conv_in; a block holding a downsampler closes a level.
    let mut level = 0;
    let mut pos = 0;
    for (block, subs) in group_blocks(input) {
        if block == 0 {
            for (_, (kind, ks)) in subs {
                for k in ks {
                    if kind == Kind::Direct {
                        out.pairs
                            .push((format!("conv_in.{}", k.rest), k.original.to_string()));
                    } else {
                        out.unmapped.push(k.original.to_string());
                    }
                }
            }
            continue;
        }
        let target = format!("down_blocks.{level}");
        let mut closes = false;
        for (_, (kind, ks)) in subs {
            closes |= kind == Kind::Downsample;
            emit_sub(kind, &ks, &target, pos, pos, &mut out);
        }
        if closes {
            level += 1;
            pos = 0;
        } else {
            pos += 1;
        }
    }

    // Middle block: resnets and attentions numbered in order.
    for (_, subs) in group_blocks(middle) {
        let (mut r, mut a) = (0, 0);
        for (_, (kind, ks)) in subs {
            emit_sub(kind, &ks, "mid_block", r, a, &mut out);
            match kind {
                Kind::Resnet => r += 1,
                Kind::Attention => a += 1,
                _ => {}
            }
        }
    }

    // Output blocks: a block holding an upsampler closes a level.
    let mut level = 0;
    let mut pos = 0;
    for (_, subs) in group_blocks(output) {
        let target = format!("up_blocks.{level}");
        let mut closes = false;
        for (_, (kind, ks)) in subs {
            closes |= kind == Kind::Upsample;
            emit_sub(kind, &ks, &target, pos, pos, &mut out);
        }
        if closes {
            level += 1;
            pos = 0;
        } else {
            pos += 1;
        }
    }
    out.pairs.sort();
    out.unmapped.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// VAE

fn map_vae_resnet_inner(rest: &str) -> Option<String> {
    let (head, tail) = rest.split_once('.')?;
    let head = match head {
        "norm1" | "conv1" | "norm2" | "conv2" => head,
        "nin_shortcut" => "conv_shortcut",
        _ => return None,
    };
    Some(format!("{head}.{tail}"))
}

fn map_vae_attention_inner(rest: &str) -> Option<String> {
    let (head, tail) = rest.split_once('.')?;
    let head = match head {
        "norm" => "group_norm",
        "q" => "to_q",
        "k" => "to_k",
        "v" => "to_v",
        "proj_out" => "to_out.0",
        _ => return None,
    };
    Some(format!("{head}.{tail}"))
}

/// Renames the part of a VAE key after `encoder.` / `decoder.`. `up_levels` is the number of
/// decoder levels, for reversing their order.
fn map_vae_coder(side: &str, rest: &str, up_levels: usize) -> Option<String> {
    let (head, tail) = rest.split_once('.')?;
    match head {
        "conv_in" | "conv_out" => Some(format!("{side}.{rest}")),
        "norm_out" => Some(format!("{side}.conv_norm_out.{tail}")),
        "mid" => {
            let (m, inner) = tail.split_once('.')?;
            let mapped = match m {
                "block_1" => format!("resnets.0.{}", map_vae_resnet_inner(inner)?),
                "block_2" => format!("resnets.1.{}", map_vae_resnet_inner(inner)?),
                "attn_1" => format!("attentions.0.{}", map_vae_attention_inner(inner)?),
                _ => return None,
            };
            Some(format!("{side}.mid_block.{mapped}"))
        }
        "down" | "up" => {
            let (lvl, inner) = tail.split_once('.')?;
            let lvl: usize = lvl.parse().ok()?;
            let (new_level, blocks) = if head == "down" {
                (lvl, "down_blocks")
            } else {
                (up_levels.checked_sub(1)?.checked_sub(lvl)?, "up_blocks")
            };
            let (part, inner) = inner.split_once('.')?;
            let mapped = match part {
                "block" => {
                    let (j, r) = inner.split_once('.')?;
                    let j: usize = j.parse().ok()?;
                    format!("resnets.{j}.{}", map_vae_resnet_inner(r)?)
                }
                "attn" => {
                    let (j, r) = inner.split_once('.')?;
                    let j: usize = j.parse().ok()?;
                    format!("attentions.{j}.{}", map_vae_attention_inner(r)?)
                }
                "downsample" if head == "down" => {
                    format!("downsamplers.0.conv.{}", inner.strip_prefix("conv.")?)
                }
                "upsample" if head == "up" => {
                    format!("upsamplers.0.conv.{}", inner.strip_prefix("conv.")?)
                }
                _ => return None,
            };
            Some(format!("{side}.{blocks}.{new_level}.{mapped}"))
        }
        _ => None,
    }
}

/// Renames VAE keys (relative to `first_stage_model.`) to diffusers `AutoencoderKL` names. The
/// decoder's `up.<i>` levels are stored deepest-first and map to `up_blocks.<L-1-i>`, with `L`
/// counted from the keys.
pub fn map_vae_keys(keys: &[&str]) -> Renamed {
    let up_levels = keys
        .iter()
        .filter_map(|k| k.strip_prefix("decoder.up."))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let mut out = Renamed::default();
    for &k in keys {
        let new = if k.starts_with("quant_conv.") || k.starts_with("post_quant_conv.") {
            Some(k.to_string())
        } else if let Some(r) = k.strip_prefix("encoder.") {
            map_vae_coder("encoder", r, up_levels)
        } else if let Some(r) = k.strip_prefix("decoder.") {
            map_vae_coder("decoder", r, up_levels)
        } else {
            None
        };
        match new {
            Some(n) => out.pairs.push((n, k.to_string())),
            None => out.unmapped.push(k.to_string()),
        }
    }
    out.pairs.sort();
    out.unmapped.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Text encoder (SD 1.x: Hugging Face CLIP inside the checkpoint)

/// Renames CLIP text-encoder keys (relative to `cond_stage_model.transformer.`) to
/// `CLIPTextModel` names: `text_model.*` is kept, and the older layout without `text_model.`
/// (`embeddings.*`, `encoder.*`, `final_layer_norm.*`) gains it.
pub fn map_clip_text_keys(keys: &[&str]) -> Renamed {
    let mut out = Renamed::default();
    for &k in keys {
        if k.starts_with("text_model.") {
            out.pairs.push((k.to_string(), k.to_string()));
        } else if k.starts_with("embeddings.")
            || k.starts_with("encoder.")
            || k.starts_with("final_layer_norm.")
        {
            out.pairs.push((format!("text_model.{k}"), k.to_string()));
        } else {
            out.unmapped.push(k.to_string());
        }
    }
    out.pairs.sort();
    out.unmapped.sort();
    out
}

/// Aliases for VAE attention names written by older diffusers versions (`query`, `key`,
/// `value`, `proj_attn`), mapped to the current names. Returns `None` if `name` has none.
pub fn legacy_diffusers_vae_alias(name: &str) -> Option<String> {
    const RULES: &[(&str, &str)] = &[
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    if !name.contains(".attentions.") {
        return None;
    }
    RULES
        .iter()
        .find(|(from, _)| name.contains(from))
        .map(|(from, to)| name.replacen(from, to, 1))
}
