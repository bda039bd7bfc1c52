//! Extra-network tags (`<lora:NAME:…>`, `<lyco:…>`, `<hypernet:…>`), the first thing taken out of a
//! prompt.
//!
//! Follows AUTOMATIC1111: `modules/extra_networks.py` (`re_extra_net`, `parse_prompt`,
//! `ExtraNetworkParams`), `extensions-builtin/Lora/extra_networks_lora.py` (`ExtraNetworkLora.activate`) and
//! `modules/extra_networks_hypernet.py`. Every `<kind:args>` tag is removed from the text, whatever the kind;
//! its arguments are split on `:` and an argument with exactly one `=` is a named `key=value` argument.

use std::sync::OnceLock;

use regex::Regex;

use crate::error::{Error, Result};

/// One `<kind:arg:arg…>` tag as written in the prompt, before its arguments are interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraNetworkTag {
    /// The tag kind, e.g. `lora`, `lyco`, `hypernet` (any word is accepted and removed from the prompt).
    pub kind: String,
    /// The arguments, split on `:`, untrimmed.
    pub args: Vec<String>,
}

/// A LoRA (or LyCORIS, tag alias `lyco`) request: `<lora:NAME[:TE[:UNET[:DYN]]]>` with optional named
/// `te=`, `unet=`, `dyn=` arguments overriding the positional ones.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    /// The name as written: matched by the loader against the network's alias or file stem.
    pub name: String,
    /// Strength applied to the text-encoder part (default 1.0).
    pub te_multiplier: f64,
    /// Strength applied to the UNet part (defaults to the text-encoder strength).
    pub unet_multiplier: f64,
    /// Rank to truncate a dynamic LoRA to, when given.
    pub dyn_dim: Option<i64>,
}

/// A hypernetwork request: `<hypernet:NAME[:MULT]>`.
#[derive(Debug, Clone, PartialEq)]
pub struct HypernetTag {
    /// The hypernetwork name as written.
    pub name: String,
    /// Its strength (default 1.0).
    pub multiplier: f64,
}

/// An interpreted extra-network tag.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtraNetwork {
    /// `<lora:…>` or `<lyco:…>`.
    Lora(LoraTag),
    /// `<hypernet:…>`.
    Hypernet(HypernetTag),
    /// A tag of a kind sdrs does not know; it is still removed from the prompt text.
    Other(ExtraNetworkTag),
}

/// A prompt with its extra-network tags taken out.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraNetworkPrompt {
    /// The prompt text with every tag removed (nothing else is changed, surrounding spaces stay).
    pub prompt: String,
    /// The tags in the order they appear, interpreted.
    pub networks: Vec<ExtraNetwork>,
}

fn tag_regex() -> Result<&'static Regex> {
    static RE: OnceLock<std::result::Result<Regex, String>> = OnceLock::new();
    // `\w` is Unicode-aware, as in Python 3's `re` on str patterns; `[^>]` crosses newlines.
    super::cached_regex(&RE, r"<(\w+):([^>]+)>")
}

/// Removes every `<kind:args>` tag from `prompt` and returns the remaining text and the raw tags, in order.
///
/// Arguments are only split here, [`ExtraNetworkTag::interpret`] checks them.
///
/// # Errors
/// Only [`Error::Internal`] (the pattern failed to compile, a bug).
pub fn extract_extra_networks(prompt: &str) -> Result<(String, Vec<ExtraNetworkTag>)> {
    let mut tags = Vec::new();
    let text = tag_regex()?.replace_all(prompt, |caps: &regex::Captures<'_>| {
        let kind = caps.get(1).map_or("", |m| m.as_str()).to_owned();
        let args = caps
            .get(2)
            .map_or("", |m| m.as_str())
            .split(':')
            .map(str::to_owned)
            .collect();
        tags.push(ExtraNetworkTag { kind, args });
        ""
    });
    Ok((text.into_owned(), tags))
}

/// Removes the tags from `prompt` and interprets each one ([`ExtraNetworkTag::interpret`]).
///
/// # Errors
/// [`Error::InvalidArgument`] (argument `prompt`) naming the tag when a LoRA or hypernetwork tag has a
/// strength or rank that is not a number, or a LoRA tag has no name.
pub fn parse_extra_networks(prompt: &str) -> Result<ExtraNetworkPrompt> {
    let (prompt, tags) = extract_extra_networks(prompt)?;
    let networks = tags
        .iter()
        .map(ExtraNetworkTag::interpret)
        .collect::<Result<Vec<_>>>()?;
    Ok(ExtraNetworkPrompt { prompt, networks })
}

impl ExtraNetworkTag {
    /// The arguments that are not `key=value` (an argument with two or more `=` counts as positional, as in
    /// A1111's `item.split('=', 2)`).
    pub fn positional(&self) -> Vec<&str> {
        self.args
            .iter()
            .filter(|a| named_split(a).is_none())
            .map(String::as_str)
            .collect()
    }

    /// The value of the named argument `key` (the last one wins when it is repeated).
    pub fn named(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .filter_map(|a| named_split(a))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Interprets the tag by its kind: `lora` and `lyco` give [`ExtraNetwork::Lora`], `hypernet` gives
    /// [`ExtraNetwork::Hypernet`], anything else [`ExtraNetwork::Other`].
    ///
    /// Numbers are read as Python's `float()` / `int()` read them (surrounding whitespace, a sign, exponents,
    /// `inf`/`nan` and `_` between digits are accepted).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (argument `prompt`) naming the tag and the bad value.
    pub fn interpret(&self) -> Result<ExtraNetwork> {
        match self.kind.as_str() {
            "lora" | "lyco" => self.interpret_lora().map(ExtraNetwork::Lora),
            "hypernet" => {
                let name = self.args.first().cloned().unwrap_or_default();
                let multiplier = match self.args.get(1) {
                    Some(s) => self.float(s, "multiplier")?,
                    None => 1.0,
                };
                Ok(ExtraNetwork::Hypernet(HypernetTag { name, multiplier }))
            }
            _ => Ok(ExtraNetwork::Other(self.clone())),
        }
    }

    fn interpret_lora(&self) -> Result<LoraTag> {
        let positional = self.positional();
        let name = positional
            .first()
            .ok_or_else(|| self.error("no network name (every argument is `key=value`)".into()))?
            .to_string();
        let mut te = match positional.get(1) {
            Some(s) => self.float(s, "TE strength")?,
            None => 1.0,
        };
        if let Some(s) = self.named("te") {
            te = self.float(s, "te")?;
        }
        let mut unet = match positional.get(2) {
            Some(s) => self.float(s, "UNet strength")?,
            None => te,
        };
        if let Some(s) = self.named("unet") {
            unet = self.float(s, "unet")?;
        }
        let mut dyn_dim = match positional.get(3) {
            Some(s) => Some(self.int(s, "dyn rank")?),
            None => None,
        };
        if let Some(s) = self.named("dyn") {
            dyn_dim = Some(self.int(s, "dyn")?);
        }
        Ok(LoraTag {
            name,
            te_multiplier: te,
            unet_multiplier: unet,
            dyn_dim,
        })
    }

    fn error(&self, what: String) -> Error {
        Error::invalid_argument(
            "prompt",
            format!(
                "extra network tag <{}:{}>: {what}",
                self.kind,
                self.args.join(":")
            ),
        )
    }

    fn float(&self, s: &str, what: &str) -> Result<f64> {
        python_float(s).ok_or_else(|| self.error(format!("{what} `{s}` is not a number")))
    }

    fn int(&self, s: &str, what: &str) -> Result<i64> {
        python_int(s).ok_or_else(|| self.error(format!("{what} `{s}` is not an integer")))
    }
}

/// `key=value` when the argument has exactly one `=`.
fn named_split(arg: &str) -> Option<(&str, &str)> {
    let (k, v) = arg.split_once('=')?;
    if v.contains('=') { None } else { Some((k, v)) }
}

/// Removes `_` separators the way Python allows them in numbers: only single ones between two digits.
fn strip_digit_underscores(s: &str) -> Option<String> {
    if !s.contains('_') {
        return Some(s.to_owned());
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            let prev_digit = i > 0 && chars[i - 1].is_ascii_digit();
            let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
            if !(prev_digit && next_digit) {
                return None;
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Python's `float(str)` for the forms people write: surrounding whitespace, sign, decimals, exponent,
/// `inf`/`infinity`/`nan` in any case, `_` between digits. `None` where Python raises `ValueError`.
pub(crate) fn python_float(s: &str) -> Option<f64> {
    let t = strip_digit_underscores(s.trim())?;
    if t.is_empty() {
        return None;
    }
    // Rust accepts the same grammar apart from these spellings, which Python rejects.
    let body = t.trim_start_matches(['+', '-']);
    if body.len() + 1 < t.len() {
        return None;
    }
    t.parse::<f64>().ok()
}

/// Python's `int(str)` (base 10): surrounding whitespace, an optional sign, ASCII digits with `_` between
/// digits. `None` where Python raises, or when the value does not fit an `i64`.
pub(crate) fn python_int(s: &str) -> Option<i64> {
    let t = strip_digit_underscores(s.trim())?;
    let digits = t.strip_prefix(['+', '-']).unwrap_or(&t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_like_python() {
        assert_eq!(python_float(" 0.5 "), Some(0.5));
        assert_eq!(python_float("+1e-1"), Some(0.1));
        assert_eq!(python_float("1."), Some(1.0));
        assert_eq!(python_float(".5"), Some(0.5));
        assert_eq!(python_float("1_000.5"), Some(1000.5));
        assert!(python_float("inf").is_some_and(f64::is_infinite));
        assert!(python_float("NaN").is_some_and(f64::is_nan));
        for bad in [
            "", " ", ".", "abc", "1..2", "1_", "_1", "1__0", "--1", "+-1", "0x10", "1.5f",
        ] {
            assert_eq!(python_float(bad), None, "{bad:?}");
        }
        assert_eq!(python_int(" 16 "), Some(16));
        assert_eq!(python_int("-3"), Some(-3));
        assert_eq!(python_int("1_0"), Some(10));
        for bad in ["", "1.0", "1e3", "abc", "99999999999999999999", "+"] {
            assert_eq!(python_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lora_arguments() -> Result<()> {
        let p = parse_extra_networks("a <lora:x:0.5:unet=0.2:dyn=4> b <lyco:y> <hypernet:h:0.3>")?;
        assert_eq!(p.prompt, "a  b  ");
        assert_eq!(
            p.networks,
            vec![
                ExtraNetwork::Lora(LoraTag {
                    name: "x".into(),
                    te_multiplier: 0.5,
                    unet_multiplier: 0.2,
                    dyn_dim: Some(4),
                }),
                ExtraNetwork::Lora(LoraTag {
                    name: "y".into(),
                    te_multiplier: 1.0,
                    unet_multiplier: 1.0,
                    dyn_dim: None,
                }),
                ExtraNetwork::Hypernet(HypernetTag {
                    name: "h".into(),
                    multiplier: 0.3,
                }),
            ]
        );
        Ok(())
    }

    #[test]
    fn malformed_numbers_are_errors() {
        for p in [
            "<lora:x:abc>",
            "<lora:x:1:2:3.5>",
            "<lora:te=1>",
            "<lora:x:te=>",
            "<hypernet:h:?>",
        ] {
            let err = parse_extra_networks(p).err();
            assert!(
                matches!(err, Some(Error::InvalidArgument { name: "prompt", .. })),
                "{p}: {err:?}"
            );
        }
    }
}
