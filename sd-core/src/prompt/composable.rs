//! Composable diffusion: `a cat AND a dog:0.7` splits a prompt into sub-prompts with weights.
//!
//! Follows AUTOMATIC1111 `modules/prompt_parser.py` (`re_AND`, `re_weight`, `get_multicond_prompt_list`).
//! The sampler combines them as `uncond + Σ wᵢ·cfg·(condᵢ − uncond)`; negative prompts are not split.

use std::sync::OnceLock;

use regex::Regex;

use crate::error::Result;

/// One part of a prompt split on `AND`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubPrompt {
    /// The text, with a trailing `:weight` and trailing whitespace removed.
    pub text: String,
    /// The weight (1.0 when none is written).
    pub weight: f64,
}

fn and_regex() -> Result<&'static Regex> {
    static RE: OnceLock<std::result::Result<Regex, String>> = OnceLock::new();
    super::cached_regex(&RE, r"\bAND\b")
}

fn weight_regex() -> Result<&'static Regex> {
    static RE: OnceLock<std::result::Result<Regex, String>> = OnceLock::new();
    super::cached_regex(
        &RE,
        r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$",
    )
}

/// Splits `prompt` on the word `AND`; each part may end in `:weight`.
///
/// # Errors
/// Only [`crate::Error::Internal`] (a pattern failed to compile, a bug).
pub fn split_and(prompt: &str) -> Result<Vec<SubPrompt>> {
    let re_weight = weight_regex()?;
    and_regex()?
        .split(prompt)
        .map(|part| {
            let caps = re_weight.captures(part);
            let text = caps
                .as_ref()
                .and_then(|c| c.get(1))
                .map_or(part, |m| m.as_str());
            let weight = caps
                .as_ref()
                .and_then(|c| c.get(2))
                .and_then(|m| m.as_str().parse::<f64>().ok())
                .unwrap_or(1.0);
            Ok(SubPrompt {
                text: text.to_owned(),
                weight,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_reads_weights() -> Result<()> {
        let parts = split_and("a cat AND a dog:0.7 AND (x:1.2)  :  -.5 ")?;
        let got: Vec<(&str, f64)> = parts.iter().map(|p| (p.text.as_str(), p.weight)).collect();
        assert_eq!(
            got,
            vec![("a cat", 1.0), (" a dog", 0.7), (" (x:1.2)", -0.5)]
        );
        assert_eq!(split_and("BANDAID")?.len(), 1);
        Ok(())
    }
}
