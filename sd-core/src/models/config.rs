//! Model configurations: named constructors for released models, and readers for diffusers'
//! `config.json` files.
//!
//! Every size the models use comes from here; nothing in the model code assumes SD 1.5's numbers.

use serde_json::Value;

use crate::error::{Error, Result};

/// Configuration of the CLIP text encoder (transformers' `CLIPTextConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// Token vocabulary size. SD 1.x: 49408.
    pub vocab_size: usize,
    /// Width of the hidden states. SD 1.x (ViT-L/14): 768.
    pub hidden_size: usize,
    /// Width of the MLP. SD 1.x: 3072.
    pub intermediate_size: usize,
    /// Number of transformer layers. SD 1.x: 12.
    pub num_hidden_layers: usize,
    /// Attention heads per layer. SD 1.x: 12.
    pub num_attention_heads: usize,
    /// Maximum sequence length. SD 1.x: 77.
    pub max_position_embeddings: usize,
    /// MLP activation. SD 1.x: quick GELU.
    pub hidden_act: ClipActivation,
    /// Layer-norm epsilon. SD 1.x: 1e-5.
    pub layer_norm_eps: f64,
}

/// The MLP activation of a CLIP text encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact GELU (OpenCLIP).
    Gelu,
}

impl ClipConfig {
    /// OpenAI CLIP ViT-L/14's text encoder, as SD 1.x uses it
    /// (<https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json>).
    pub fn sd_v1_5() -> Self {
        ClipConfig {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// Reads a transformers `text_encoder/config.json`; absent fields take SD 1.5's values.
    pub fn from_json(json: &Value, origin: &str) -> Result<Self> {
        let d = ClipConfig::sd_v1_5();
        let r = JsonReader { json, origin };
        let act = match r.string("hidden_act")?.as_deref() {
            None | Some("quick_gelu") => ClipActivation::QuickGelu,
            Some("gelu") => ClipActivation::Gelu,
            Some(other) => {
                return Err(r.error(format!("unsupported hidden_act `{other}`")));
            }
        };
        Ok(ClipConfig {
            vocab_size: r.usize_or("vocab_size", d.vocab_size)?,
            hidden_size: r.usize_or("hidden_size", d.hidden_size)?,
            intermediate_size: r.usize_or("intermediate_size", d.intermediate_size)?,
            num_hidden_layers: r.usize_or("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: r.usize_or("num_attention_heads", d.num_attention_heads)?,
            max_position_embeddings: r
                .usize_or("max_position_embeddings", d.max_position_embeddings)?,
            hidden_act: act,
            layer_norm_eps: r.f64_or("layer_norm_eps", d.layer_norm_eps)?,
        })
    }

    /// Checks internal consistency (divisibility, non-zero sizes).
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |reason: String| Error::InvalidConfig {
            path: origin.into(),
            reason,
        };
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.num_hidden_layers == 0 {
            return Err(bad("text encoder sizes must be non-zero".into()));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }
}

/// The kind of one UNet resolution level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UNetBlockKind {
    /// Resnets interleaved with cross-attention transformers
    /// (`CrossAttnDownBlock2D` / `CrossAttnUpBlock2D`).
    CrossAttention,
    /// Resnets only (`DownBlock2D` / `UpBlock2D`).
    Plain,
}

/// Configuration of the denoising UNet (diffusers' `UNet2DConditionModel`).
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Latent channels in. SD 1.x: 4 (9 for inpainting models).
    pub in_channels: usize,
    /// Latent channels out. SD 1.x: 4.
    pub out_channels: usize,
    /// Channels of each resolution level, highest resolution first. SD 1.x: [320, 640, 1280, 1280].
    pub block_out_channels: Vec<usize>,
    /// Kind of each down block, highest resolution first. SD 1.x: three cross-attention, one plain.
    pub down_blocks: Vec<UNetBlockKind>,
    /// Kind of each up block, lowest resolution first. SD 1.x: one plain, three cross-attention.
    pub up_blocks: Vec<UNetBlockKind>,
    /// Resnets per down block (up blocks have one more). SD 1.x: 2.
    pub layers_per_block: usize,
    /// Attention heads of each down block's transformers (the up blocks use the reversed list,
    /// the mid block the last entry). SD 1.x: 8 everywhere.
    pub attention_heads: Vec<usize>,
    /// Width of the text conditioning. SD 1.x: 768.
    pub cross_attention_dim: usize,
    /// Group-norm groups. SD 1.x: 32.
    pub norm_num_groups: usize,
    /// Group-norm epsilon of resnets and the output norm. SD 1.x: 1e-5.
    pub norm_eps: f64,
    /// Whether the transformers' `proj_in`/`proj_out` are linear layers (SD 2.x) rather than 1x1
    /// convolutions (SD 1.x).
    pub use_linear_projection: bool,
    /// Order of the sinusoidal time embedding halves: `cos, sin` when true. SD 1.x: true.
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the time embedding. SD 1.x: 0.
    pub freq_shift: f64,
    /// The latent size the model was trained at (default image size = this × the autoencoder's
    /// factor). SD 1.x: 64.
    pub sample_size: usize,
}

impl UNetConfig {
    /// The SD 1.5 UNet
    /// (<https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/blob/main/unet/config.json>).
    pub fn sd_v1_5() -> Self {
        use UNetBlockKind::{CrossAttention, Plain};
        UNetConfig {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_blocks: vec![CrossAttention, CrossAttention, CrossAttention, Plain],
            up_blocks: vec![Plain, CrossAttention, CrossAttention, CrossAttention],
            layers_per_block: 2,
            attention_heads: vec![8; 4],
            cross_attention_dim: 768,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            use_linear_projection: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            sample_size: 64,
        }
    }

    /// Reads a diffusers `unet/config.json`; absent fields take SD 1.5's values.
    pub fn from_json(json: &Value, origin: &str) -> Result<Self> {
        let d = UNetConfig::sd_v1_5();
        let r = JsonReader { json, origin };
        let block_out_channels = r.usize_list_or("block_out_channels", &d.block_out_channels)?;
        let levels = block_out_channels.len();
        let kinds = |key: &str, default: &[UNetBlockKind]| -> Result<Vec<UNetBlockKind>> {
            match r.string_list(key)? {
                None => Ok(default.to_vec()),
                Some(names) => names
                    .iter()
                    .map(|n| match n.as_str() {
                        "CrossAttnDownBlock2D" | "CrossAttnUpBlock2D" => {
                            Ok(UNetBlockKind::CrossAttention)
                        }
                        "DownBlock2D" | "UpBlock2D" => Ok(UNetBlockKind::Plain),
                        other => Err(r.error(format!("unsupported block type `{other}` in {key}"))),
                    })
                    .collect(),
            }
        };
        // diffusers names the head count `attention_head_dim` for SD 1.x/2.x (a historical quirk);
        // `num_attention_heads`, when set, takes precedence.
        let heads_key = if r
            .json
            .get("num_attention_heads")
            .is_some_and(|v| !v.is_null())
        {
            "num_attention_heads"
        } else {
            "attention_head_dim"
        };
        let attention_heads = match r.json.get(heads_key) {
            Some(Value::Number(_)) => vec![r.usize_or(heads_key, 8)?; levels],
            Some(Value::Array(_)) => r.usize_list_or(heads_key, &[])?,
            _ => vec![8; levels],
        };
        if let Some(m) = r.string("mid_block_type")?
            && m != "UNetMidBlock2DCrossAttn"
        {
            return Err(r.error(format!("unsupported mid_block_type `{m}`")));
        }
        let cfg = UNetConfig {
            in_channels: r.usize_or("in_channels", d.in_channels)?,
            out_channels: r.usize_or("out_channels", d.out_channels)?,
            down_blocks: kinds("down_block_types", &d.down_blocks)?,
            up_blocks: kinds("up_block_types", &d.up_blocks)?,
            layers_per_block: r.usize_or("layers_per_block", d.layers_per_block)?,
            attention_heads,
            cross_attention_dim: r.usize_or("cross_attention_dim", d.cross_attention_dim)?,
            norm_num_groups: r.usize_or("norm_num_groups", d.norm_num_groups)?,
            norm_eps: r.f64_or("norm_eps", d.norm_eps)?,
            use_linear_projection: r.bool_or("use_linear_projection", d.use_linear_projection)?,
            flip_sin_to_cos: r.bool_or("flip_sin_to_cos", d.flip_sin_to_cos)?,
            freq_shift: r.f64_or("freq_shift", d.freq_shift)?,
            sample_size: match r.json.get("sample_size") {
                Some(Value::Array(_)) => r
                    .usize_list_or("sample_size", &[])?
                    .first()
                    .copied()
                    .unwrap_or(d.sample_size),
                _ => r.usize_or("sample_size", d.sample_size)?,
            },
            block_out_channels,
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// The number of resolution levels.
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Width of the time embedding: 4x the first level's channels.
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }

    /// Checks internal consistency.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |reason: String| Error::InvalidConfig {
            path: origin.into(),
            reason,
        };
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err(bad("block_out_channels is empty".into()));
        }
        if self.down_blocks.len() != levels
            || self.up_blocks.len() != levels
            || self.attention_heads.len() != levels
        {
            return Err(bad(format!(
                "{levels} levels in block_out_channels, but {} down blocks, {} up blocks and {} head counts",
                self.down_blocks.len(),
                self.up_blocks.len(),
                self.attention_heads.len()
            )));
        }
        if self.layers_per_block == 0 || self.norm_num_groups == 0 {
            return Err(bad(
                "layers_per_block and norm_num_groups must be non-zero".into()
            ));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || c % self.norm_num_groups != 0 {
                return Err(bad(format!(
                    "level {i} has {c} channels, not a positive multiple of {} groups",
                    self.norm_num_groups
                )));
            }
            let heads = self.attention_heads[i];
            if heads == 0 || c % heads != 0 {
                return Err(bad(format!(
                    "level {i}: {c} channels do not split into {heads} heads"
                )));
            }
        }
        Ok(())
    }
}

/// Configuration of the autoencoder (diffusers' `AutoencoderKL`).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels. 3.
    pub in_channels: usize,
    /// Image channels out. 3.
    pub out_channels: usize,
    /// Latent channels. SD 1.x: 4.
    pub latent_channels: usize,
    /// Channels per level, highest resolution first. SD 1.x: [128, 256, 512, 512].
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more). SD 1.x: 2.
    pub layers_per_block: usize,
    /// Group-norm groups. SD 1.x: 32.
    pub norm_num_groups: usize,
    /// Latent scaling factor. SD 1.x: 0.18215.
    pub scaling_factor: f64,
}

impl VaeConfig {
    /// The SD 1.5 autoencoder
    /// (<https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/blob/main/vae/config.json>).
    pub fn sd_v1_5() -> Self {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }

    /// Reads a diffusers `vae/config.json`; absent fields take SD 1.5's values.
    pub fn from_json(json: &Value, origin: &str) -> Result<Self> {
        let d = VaeConfig::sd_v1_5();
        let r = JsonReader { json, origin };
        for key in ["down_block_types", "up_block_types"] {
            if let Some(kinds) = r.string_list(key)?
                && let Some(bad) = kinds
                    .iter()
                    .find(|k| *k != "DownEncoderBlock2D" && *k != "UpDecoderBlock2D")
            {
                return Err(r.error(format!("unsupported block type `{bad}` in {key}")));
            }
        }
        if r.json.get("mid_block_add_attention") == Some(&Value::Bool(false)) {
            return Err(
                r.error("autoencoders without mid-block attention are not supported".into())
            );
        }
        let cfg = VaeConfig {
            in_channels: r.usize_or("in_channels", d.in_channels)?,
            out_channels: r.usize_or("out_channels", d.out_channels)?,
            latent_channels: r.usize_or("latent_channels", d.latent_channels)?,
            block_out_channels: r.usize_list_or("block_out_channels", &d.block_out_channels)?,
            layers_per_block: r.usize_or("layers_per_block", d.layers_per_block)?,
            norm_num_groups: r.usize_or("norm_num_groups", d.norm_num_groups)?,
            scaling_factor: r.f64_or("scaling_factor", d.scaling_factor)?,
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// How many pixels one latent covers along each axis: 2^(levels − 1).
    pub fn downscale_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    /// Checks internal consistency.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |reason: String| Error::InvalidConfig {
            path: origin.into(),
            reason,
        };
        if self.block_out_channels.is_empty()
            || self.layers_per_block == 0
            || self.norm_num_groups == 0
        {
            return Err(bad("autoencoder sizes must be non-zero".into()));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % self.norm_num_groups != 0)
        {
            return Err(bad(format!(
                "{c} channels are not a positive multiple of {} groups",
                self.norm_num_groups
            )));
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return Err(bad("scaling_factor must be finite and non-zero".into()));
        }
        Ok(())
    }
}

/// Typed access to a JSON config object with errors naming the file and key.
struct JsonReader<'a> {
    json: &'a Value,
    origin: &'a str,
}

impl JsonReader<'_> {
    fn error(&self, reason: String) -> Error {
        Error::InvalidConfig {
            path: self.origin.into(),
            reason,
        }
    }

    fn field(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.field(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    self.error(format!("`{key}` must be a non-negative integer, found {v}"))
                }),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.field(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(format!("`{key}` must be a number, found {v}"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.field(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(format!("`{key}` must be true or false, found {v}"))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.field(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.error(format!("`{key}` must be a string, found {v}"))),
        }
    }

    fn string_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.field(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.error(format!("`{key}` must hold strings, found {v}")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.error(format!("`{key}` must be a list, found {v}"))),
        }
    }

    fn usize_list_or(&self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.field(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| {
                            self.error(format!(
                                "`{key}` must hold non-negative integers, found {v}"
                            ))
                        })
                })
                .collect(),
            Some(v) => Err(self.error(format!("`{key}` must be a list, found {v}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_diffusers_unet_config_with_head_quirk() -> Result<()> {
        let json: Value = serde_json::json!({
            "block_out_channels": [16, 32, 32],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "attention_head_dim": 8,
            "cross_attention_dim": 16,
            "norm_num_groups": 4,
            "layers_per_block": 2
        });
        let cfg = UNetConfig::from_json(&json, "unet/config.json")?;
        assert_eq!(cfg.attention_heads, vec![8, 8, 8]);
        assert_eq!(cfg.levels(), 3);
        assert_eq!(cfg.time_embed_dim(), 64);
        Ok(())
    }

    #[test]
    fn rejects_inconsistent_configs_with_the_file_named() {
        let json: Value = serde_json::json!({"block_out_channels": [30, 64], "norm_num_groups": 32,
            "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]});
        let err = UNetConfig::from_json(&json, "x/unet/config.json")
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("x/unet/config.json") && e.contains("30")),
            "{err:?}"
        );
        let json: Value = serde_json::json!({"layers_per_block": -1});
        assert!(VaeConfig::from_json(&json, "vae/config.json").is_err());
    }
}
