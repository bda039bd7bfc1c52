//! PEFT's adapter configuration, as diffusers stores it in a safetensors file's metadata
//! (`lora_adapter_metadata`: the `LoraConfig` as JSON, keys prefixed by component, `unet.` /
//! `text_encoder.`): the alpha of each module.
//!
//! PEFT's rule (`peft/tuners/lora/model.py`): `alpha = alpha_pattern[key] or lora_alpha`, where
//! a pattern key matches a module name when `re.match(rf"(.*\.)?({key})$", name)` does
//! (`peft/utils/other.py get_pattern_key`, first match in order); the scale is `alpha / r`, or
//! `alpha / sqrt(r)` with `use_rslora`. Without metadata diffusers takes `alpha = r` (scale 1).

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use super::keys::Component;
use super::modules::AlphaSource;
use crate::error::{Error, Result};

/// The metadata entry diffusers writes (`lora_base.py LORA_ADAPTER_METADATA_KEY`).
pub(crate) const METADATA_KEY: &str = "lora_adapter_metadata";

/// The alpha settings of one component's adapter.
#[derive(Debug, Default)]
pub(crate) struct PeftConfig {
    lora_alpha: Option<f32>,
    rslora: bool,
    alpha_pattern: Vec<(Regex, f32)>,
}

/// Per component, from the metadata.
#[derive(Debug, Default)]
pub(crate) struct PeftConfigs {
    configs: BTreeMap<Component, PeftConfig>,
}

impl PeftConfigs {
    /// Parses `lora_adapter_metadata`, if present.
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming `file` for JSON that is not an object, a non-numeric alpha
    /// or an alpha pattern that is not a valid regular expression.
    pub(crate) fn parse(metadata: &BTreeMap<String, String>, file: &str) -> Result<Self> {
        let Some(text) = metadata.get(METADATA_KEY) else {
            return Ok(PeftConfigs::default());
        };
        let bad = |reason: String| Error::invalid_file(file, format!("{METADATA_KEY}: {reason}"));
        let json: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let Value::Object(map) = json else {
            return Err(bad("not a JSON object".into()));
        };
        let mut out = PeftConfigs::default();
        for (key, value) in &map {
            // `unet.lora_alpha`, `text_encoder.lora_alpha`, or unprefixed (one model's config).
            let (components, field) = match key.split_once('.') {
                Some(("unet", f)) => (vec![Component::Unet], f),
                Some(("text_encoder", f)) => (vec![Component::TextEncoder], f),
                Some(_) => continue,
                None => (vec![Component::Unet, Component::TextEncoder], key.as_str()),
            };
            for c in components {
                let cfg = out.configs.entry(c).or_default();
                match field {
                    "lora_alpha" => {
                        #[allow(clippy::cast_possible_truncation)]
                        let alpha = value
                            .as_f64()
                            .ok_or_else(|| bad(format!("`{key}` is not a number")))?
                            as f32;
                        cfg.lora_alpha = Some(alpha);
                    }
                    "use_rslora" => cfg.rslora = value.as_bool().unwrap_or(false),
                    "alpha_pattern" => {
                        let Some(patterns) = value.as_object() else {
                            continue;
                        };
                        for (pattern, alpha) in patterns {
                            let re = Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$"))
                                .map_err(|e| bad(format!("alpha pattern {pattern:?}: {e}")))?;
                            #[allow(clippy::cast_possible_truncation)]
                            let alpha = alpha.as_f64().ok_or_else(|| {
                                bad(format!("alpha of pattern {pattern:?} is not a number"))
                            })? as f32;
                            cfg.alpha_pattern.push((re, alpha));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// How the scale of a PEFT-named module of `component` at `path` is found: the config's
    /// alpha when the file has one, else the `alpha` tensor rule (none: scale 1).
    pub(crate) fn alpha_for(&self, component: Component, path: &str) -> AlphaSource {
        let Some(cfg) = self.configs.get(&component) else {
            return AlphaSource::Tensor;
        };
        let pattern = cfg
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(path))
            .map(|(_, a)| *a);
        match pattern.or(cfg.lora_alpha) {
            Some(alpha) => AlphaSource::PeftConfig {
                alpha,
                rslora: cfg.rslora,
            },
            None => AlphaSource::Tensor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_peft() {
        let meta = BTreeMap::from([(
            METADATA_KEY.to_string(),
            r#"{"unet.lora_alpha": 6, "unet.alpha_pattern": {"attn1.to_out.0": 3},
                "text_encoder.lora_alpha": 2.5, "text_encoder.use_rslora": true}"#
                .to_string(),
        )]);
        let c = PeftConfigs::parse(&meta, "f").expect("parse");
        let alpha = |comp, path| match c.alpha_for(comp, path) {
            AlphaSource::PeftConfig { alpha, rslora } => (alpha, rslora),
            AlphaSource::Tensor => panic!("no config"),
        };
        assert_eq!(
            alpha(
                Component::Unet,
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
            ),
            (3.0, false)
        );
        assert_eq!(
            alpha(
                Component::Unet,
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
            ),
            (6.0, false)
        );
        assert_eq!(alpha(Component::Unet, "xattn1.to_out.0"), (6.0, false));
        assert_eq!(
            alpha(
                Component::TextEncoder,
                "text_model.encoder.layers.0.mlp.fc1"
            ),
            (2.5, true)
        );
        let none = PeftConfigs::parse(&BTreeMap::new(), "f").expect("empty");
        assert_eq!(none.alpha_for(Component::Unet, "x"), AlphaSource::Tensor);
        let bad = BTreeMap::from([(METADATA_KEY.to_string(), "[1]".to_string())]);
        assert!(PeftConfigs::parse(&bad, "f").is_err());
    }
}
