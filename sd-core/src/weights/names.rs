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
            // CLIP's `position_ids` is an index buffer (0..77), not a weight; current
            // transformers versions neither save nor load it.
            if r.ends_with("embeddings.position_ids") {
                out.ignored.push(k.to_string());
            } else {
                text_rel.push(r);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `(ldm, diffusers)` pairs for a UNet with `attn[level]` and `layers` resnets per down
    /// level, built from the positional formulas of the original layout.
    fn unet_pairs(attn: &[bool], layers: usize) -> Vec<(String, String)> {
        let n = attn.len();
        let mut v: Vec<(String, String)> = Vec::new();
        let mut p = |a: String, b: String| v.push((a, b));
        for (i, lin) in [(0, 1), (2, 2)] {
            p(
                format!("time_embed.{i}.weight"),
                format!("time_embedding.linear_{lin}.weight"),
            );
        }
        p("input_blocks.0.0.weight".into(), "conv_in.weight".into());
        p("input_blocks.0.0.bias".into(), "conv_in.bias".into());
        let resnet = |ldm: &str, dif: &str, skip: bool| {
            let mut r = vec![
                (
                    format!("{ldm}.in_layers.0.weight"),
                    format!("{dif}.norm1.weight"),
                ),
                (
                    format!("{ldm}.in_layers.2.weight"),
                    format!("{dif}.conv1.weight"),
                ),
                (
                    format!("{ldm}.in_layers.2.bias"),
                    format!("{dif}.conv1.bias"),
                ),
                (
                    format!("{ldm}.emb_layers.1.weight"),
                    format!("{dif}.time_emb_proj.weight"),
                ),
                (
                    format!("{ldm}.out_layers.0.bias"),
                    format!("{dif}.norm2.bias"),
                ),
                (
                    format!("{ldm}.out_layers.3.weight"),
                    format!("{dif}.conv2.weight"),
                ),
            ];
            if skip {
                r.push((
                    format!("{ldm}.skip_connection.weight"),
                    format!("{dif}.conv_shortcut.weight"),
                ));
            }
            r
        };
        let attention = |ldm: &str, dif: &str| {
            [
                "norm.weight",
                "proj_in.weight",
                "transformer_blocks.0.attn1.to_q.weight",
                "transformer_blocks.0.attn2.to_out.0.bias",
                "transformer_blocks.0.ff.net.0.proj.weight",
                "transformer_blocks.0.norm3.bias",
                "proj_out.weight",
            ]
            .iter()
            .map(|s| (format!("{ldm}.{s}"), format!("{dif}.{s}")))
            .collect::<Vec<_>>()
        };
        for (b, &has_attn) in attn.iter().enumerate() {
            for j in 0..layers {
                let idx = 1 + b * (layers + 1) + j;
                let dif = format!("down_blocks.{b}");
                for (a, d) in resnet(
                    &format!("input_blocks.{idx}.0"),
                    &format!("{dif}.resnets.{j}"),
                    j == 0 && b > 0,
                ) {
                    p(a, d);
                }
                if has_attn {
                    for (a, d) in attention(
                        &format!("input_blocks.{idx}.1"),
                        &format!("{dif}.attentions.{j}"),
                    ) {
                        p(a, d);
                    }
                }
            }
            if b + 1 < n {
                let idx = 1 + b * (layers + 1) + layers;
                p(
                    format!("input_blocks.{idx}.0.op.weight"),
                    format!("down_blocks.{b}.downsamplers.0.conv.weight"),
                );
                p(
                    format!("input_blocks.{idx}.0.op.bias"),
                    format!("down_blocks.{b}.downsamplers.0.conv.bias"),
                );
            }
        }
        for (a, d) in resnet("middle_block.0", "mid_block.resnets.0", false) {
            p(a, d);
        }
        for (a, d) in attention("middle_block.1", "mid_block.attentions.0") {
            p(a, d);
        }
        for (a, d) in resnet("middle_block.2", "mid_block.resnets.1", false) {
            p(a, d);
        }
        for u in 0..n {
            let has_attn = attn[n - 1 - u];
            for j in 0..=layers {
                let idx = u * (layers + 1) + j;
                let dif = format!("up_blocks.{u}");
                for (a, d) in resnet(
                    &format!("output_blocks.{idx}.0"),
                    &format!("{dif}.resnets.{j}"),
                    true,
                ) {
                    p(a, d);
                }
                if has_attn {
                    for (a, d) in attention(
                        &format!("output_blocks.{idx}.1"),
                        &format!("{dif}.attentions.{j}"),
                    ) {
                        p(a, d);
                    }
                }
                if j == layers && u + 1 < n {
                    let s = 1 + usize::from(has_attn);
                    p(
                        format!("output_blocks.{idx}.{s}.conv.weight"),
                        format!("{dif}.upsamplers.0.conv.weight"),
                    );
                }
            }
        }
        p("out.0.weight".into(), "conv_norm_out.weight".into());
        p("out.2.bias".into(), "conv_out.bias".into());
        v
    }

    /// `(ldm, diffusers)` pairs for a VAE with `levels` levels and `layers` resnets per encoder
    /// level (`layers + 1` per decoder level).
    fn vae_pairs(levels: usize, layers: usize) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = Vec::new();
        let resnet = |ldm: String, dif: String, skip: bool| {
            let mut r: Vec<(String, String)> = ["norm1", "conv1", "norm2", "conv2"]
                .iter()
                .map(|s| (format!("{ldm}.{s}.weight"), format!("{dif}.{s}.weight")))
                .collect();
            if skip {
                r.push((
                    format!("{ldm}.nin_shortcut.bias"),
                    format!("{dif}.conv_shortcut.bias"),
                ));
            }
            r
        };
        for side in ["encoder", "decoder"] {
            for s in ["conv_in.weight", "conv_out.bias"] {
                v.push((format!("{side}.{s}"), format!("{side}.{s}")));
            }
            v.push((
                format!("{side}.norm_out.weight"),
                format!("{side}.conv_norm_out.weight"),
            ));
            v.extend(resnet(
                format!("{side}.mid.block_1"),
                format!("{side}.mid_block.resnets.0"),
                false,
            ));
            v.extend(resnet(
                format!("{side}.mid.block_2"),
                format!("{side}.mid_block.resnets.1"),
                false,
            ));
            for (a, d) in [
                ("norm", "group_norm"),
                ("q", "to_q"),
                ("k", "to_k"),
                ("v", "to_v"),
                ("proj_out", "to_out.0"),
            ] {
                v.push((
                    format!("{side}.mid.attn_1.{a}.weight"),
                    format!("{side}.mid_block.attentions.0.{d}.weight"),
                ));
            }
        }
        for i in 0..levels {
            for j in 0..layers {
                v.extend(resnet(
                    format!("encoder.down.{i}.block.{j}"),
                    format!("encoder.down_blocks.{i}.resnets.{j}"),
                    j == 0 && i > 0,
                ));
            }
            if i + 1 < levels {
                v.push((
                    format!("encoder.down.{i}.downsample.conv.weight"),
                    format!("encoder.down_blocks.{i}.downsamplers.0.conv.weight"),
                ));
            }
            let u = levels - 1 - i;
            for j in 0..=layers {
                v.extend(resnet(
                    format!("decoder.up.{i}.block.{j}"),
                    format!("decoder.up_blocks.{u}.resnets.{j}"),
                    j == 0 && i + 1 < levels,
                ));
            }
            if i > 0 {
                v.push((
                    format!("decoder.up.{i}.upsample.conv.bias"),
                    format!("decoder.up_blocks.{u}.upsamplers.0.conv.bias"),
                ));
            }
        }
        for s in ["quant_conv.weight", "post_quant_conv.bias"] {
            v.push((s.to_string(), s.to_string()));
        }
        v
    }

    fn check(pairs: Vec<(String, String)>, map: fn(&[&str]) -> Renamed) {
        let keys: Vec<&str> = pairs.iter().map(|(a, _)| a.as_str()).collect();
        let got = map(&keys);
        assert!(got.unmapped.is_empty(), "unmapped: {:?}", got.unmapped);
        let mut want: Vec<(String, String)> =
            pairs.iter().map(|(a, d)| (d.clone(), a.clone())).collect();
        want.sort();
        for (w, g) in want.iter().zip(&got.pairs) {
            assert_eq!(w, g);
        }
        assert_eq!(want.len(), got.pairs.len());
        // The renaming is one-to-one.
        let targets: HashSet<&String> = got.pairs.iter().map(|(d, _)| d).collect();
        assert_eq!(targets.len(), got.pairs.len());
    }

    #[test]
    fn unet_structures_of_any_size_map_correctly() {
        check(unet_pairs(&[true, true, false], 2), map_unet_keys); // the tiny fixture's shape
        check(unet_pairs(&[true, true, true, false], 2), map_unet_keys); // SD 1.x
        check(unet_pairs(&[false, true, true], 2), map_unet_keys); // SDXL-like attention pattern
        check(unet_pairs(&[true, false], 1), map_unet_keys);
        check(unet_pairs(&[false, false, false], 3), map_unet_keys);
    }

    #[test]
    fn vae_structures_of_any_size_map_correctly() {
        check(vae_pairs(4, 2), map_vae_keys); // the tiny fixture's and SD's shape
        check(vae_pairs(3, 1), map_vae_keys);
        check(vae_pairs(2, 3), map_vae_keys);
    }

    #[test]
    fn unknown_keys_are_reported() {
        let keys = [
            "input_blocks.1.0.in_layers.5.weight",
            "input_blocks.1.3.mystery.weight",
            "something_else.weight",
            "out.1.weight",
            "middle_block.x.weight",
        ];
        let r = map_unet_keys(&keys);
        assert!(r.pairs.is_empty(), "{:?}", r.pairs);
        assert_eq!(r.unmapped.len(), keys.len());
        let r = map_vae_keys(&[
            "encoder.mid.attn_1.qkv.weight",
            "decoder.up.0.upsample.op.weight",
        ]);
        assert_eq!(r.unmapped.len(), 2);
    }

    #[test]
    fn clip_text_keys_with_and_without_text_model() {
        let r = map_clip_text_keys(&[
            "text_model.encoder.layers.0.mlp.fc1.weight",
            "embeddings.token_embedding.weight",
            "encoder.layers.3.self_attn.q_proj.bias",
            "final_layer_norm.weight",
            "logit_scale",
        ]);
        let new: Vec<&str> = r.pairs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            new,
            [
                "text_model.embeddings.token_embedding.weight",
                "text_model.encoder.layers.0.mlp.fc1.weight",
                "text_model.encoder.layers.3.self_attn.q_proj.bias",
                "text_model.final_layer_norm.weight",
            ]
        );
        assert_eq!(r.unmapped, ["logit_scale"]);
    }

    #[test]
    fn single_file_mapping_ema_and_reports() {
        let keys = [
            "model.diffusion_model.input_blocks.0.0.weight",
            "model.diffusion_model.out.2.weight",
            "model_ema.diffusion_modelinput_blocks00weight",
            "model_ema.diffusion_modelout2weight",
            "model_ema.decay",
            "first_stage_model.quant_conv.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.bias",
            "cond_stage_model.transformer.text_model.embeddings.position_ids",
            "alphas_cumprod",
            "lora_te_text_model_encoder.alpha",
        ];
        assert_eq!(
            detect_family(keys.iter().copied()),
            DetectedFamily::Supported(ModelFamily::Sd1)
        );
        let m = map_single_file(&keys, ModelFamily::Sd1, false);
        assert!(!m.uses_ema);
        assert!(m.unet.contains(&(
            "conv_in.weight".to_string(),
            "model.diffusion_model.input_blocks.0.0.weight".to_string()
        )));
        assert_eq!(m.unmapped, ["lora_te_text_model_encoder.alpha"]);
        assert_eq!(m.ignored.len(), 5); // two EMA tensors, decay, alphas_cumprod, position_ids
        assert_eq!(
            m.vae,
            [("quant_conv.weight".to_string(), keys[5].to_string())]
        );
        assert_eq!(m.text_encoder[0].0, "text_model.final_layer_norm.bias");

        let m = map_single_file(&keys, ModelFamily::Sd1, true);
        assert!(m.uses_ema);
        assert!(m.unet.contains(&(
            "conv_out.weight".to_string(),
            "model_ema.diffusion_modelout2weight".to_string()
        )));
        assert!(m.ignored.contains(&"model_ema.decay".to_string()));
        assert!(!m.ignored.iter().any(|k| k.contains("out2weight")));

        assert_eq!(
            detect_family(["conditioner.embedders.0.transformer.x"]),
            DetectedFamily::Sdxl
        );
        assert_eq!(
            detect_family(["cond_stage_model.model.ln_final.weight"]),
            DetectedFamily::Sd2
        );
        assert_eq!(
            detect_family(["unet.conv_in.weight"]),
            DetectedFamily::Unknown
        );
    }

    #[test]
    fn legacy_vae_attention_aliases() {
        assert_eq!(
            legacy_diffusers_vae_alias("encoder.mid_block.attentions.0.query.weight").as_deref(),
            Some("encoder.mid_block.attentions.0.to_q.weight")
        );
        assert_eq!(
            legacy_diffusers_vae_alias("decoder.mid_block.attentions.0.proj_attn.bias").as_deref(),
            Some("decoder.mid_block.attentions.0.to_out.0.bias")
        );
        assert_eq!(legacy_diffusers_vae_alias("encoder.conv_in.weight"), None);
    }
}
