//! Which model family a LoRA was trained for, from its metadata and key names: an adapter for
//! SD 2.x, SDXL or another family is refused with the evidence, never applied in part.

use std::collections::BTreeMap;

/// Why a LoRA is judged to be for another model family than SD 1.x.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherFamily {
    /// The family (`SDXL`, `SD 2.x`, …).
    pub family: String,
    /// What shows it: a key name or a metadata entry.
    pub evidence: String,
}

impl std::fmt::Display for OtherFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (evidence: {})", self.family, self.evidence)
    }
}

/// The family the training metadata names, when it is not SD 1.x: kohya's
/// `ss_base_model_version` / `ss_v2` (what A1111's `NetworkOnDisk.detect_version` reads) and
/// SAI's `modelspec.architecture`.
pub(crate) fn from_metadata(metadata: &BTreeMap<String, String>) -> Option<OtherFamily> {
    let found = |family: &str, key: &str, value: &str| OtherFamily {
        family: family.to_string(),
        evidence: format!("metadata {key} = {value:?}"),
    };
    if let Some(v) = metadata.get("ss_base_model_version") {
        let family = if v.starts_with("sdxl") {
            Some("SDXL")
        } else if v.starts_with("sd_v2") {
            Some("SD 2.x")
        } else if v.starts_with("sd3") {
            Some("SD3")
        } else if v.starts_with("flux") {
            Some("FLUX")
        } else {
            None
        };
        if let Some(family) = family {
            return Some(found(family, "ss_base_model_version", v));
        }
    }
    if let Some(v) = metadata.get("ss_v2")
        && v.eq_ignore_ascii_case("true")
    {
        return Some(found("SD 2.x", "ss_v2", v));
    }
    if let Some(v) = metadata.get("modelspec.architecture") {
        let family = if v.starts_with("stable-diffusion-xl") {
            Some("SDXL")
        } else if v.starts_with("stable-diffusion-v2") {
            Some("SD 2.x")
        } else if v.starts_with("stable-diffusion-v3") || v.starts_with("stable-diffusion-3") {
            Some("SD3")
        } else if v.starts_with("flux") {
            Some("FLUX")
        } else {
            None
        };
        if let Some(family) = family {
            return Some(found(family, "modelspec.architecture", v));
        }
    }
    None
}

/// The family shown by a key that only another family's adapters have.
pub(crate) fn from_key(family: &str, key: &str) -> OtherFamily {
    OtherFamily {
        family: family.to_string(),
        evidence: format!(
            "key `{}`",
            crate::weights::safetensors::escape_untrusted(key)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_the_family() {
        let m = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let f = from_metadata(&m("ss_base_model_version", "sdxl_base_v1-0")).expect("sdxl");
        assert_eq!(f.family, "SDXL");
        assert!(f.evidence.contains("sdxl_base_v1-0"));
        assert_eq!(
            from_metadata(&m("ss_v2", "True")).map(|f| f.family),
            Some("SD 2.x".into())
        );
        assert_eq!(from_metadata(&m("ss_base_model_version", "sd_v1")), None);
        assert_eq!(
            from_metadata(&m(
                "modelspec.architecture",
                "stable-diffusion-xl-v1-base/lora"
            ))
            .map(|f| f.family),
            Some("SDXL".into())
        );
    }
}
