//! The emphasis syntax: `(text)`, `(text:1.3)`, `[text]`, escapes and `BREAK`.
//!
//! Follows AUTOMATIC1111 `modules/prompt_parser.py` (`re_attention`, `re_break`, `parse_prompt_attention`)
//! exactly, including its handling of unbalanced brackets and its merging of equal weights. Weights are
//! `f64` and computed in the same order as the Python code, so they match it bit for bit.

use std::sync::OnceLock;

use regex::Regex;

use crate::error::{Error, Result};

/// Factor applied by each `( … )` pair.
pub const ROUND_BRACKET_MULTIPLIER: f64 = 1.1;

/// A run of prompt text with one emphasis weight, or a `BREAK` marker.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    /// The text (brackets and escapes resolved). `"BREAK"` for a break marker.
    pub text: String,
    /// The weight; `-1.0` for a break marker.
    pub weight: f64,
}

impl Fragment {
    /// Whether this fragment is a `BREAK` marker (text `BREAK` with weight -1, as A1111 tests it).
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == -1.0
    }
}

fn attention_regex() -> Result<&'static Regex> {
    static RE: OnceLock<std::result::Result<Regex, String>> = OnceLock::new();
    super::cached_regex(
        &RE,
        r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:",
    )
}

fn break_regex() -> Result<&'static Regex> {
    static RE: OnceLock<std::result::Result<Regex, String>> = OnceLock::new();
    super::cached_regex(&RE, r"(?s)\s*\bBREAK\b\s*")
}

/// Splits `text` into runs of equal emphasis weight.
///
/// `(x)` multiplies by 1.1, `(x:w)` by `w` (any sign), `[x]` divides by 1.1; openers left unclosed apply to
/// the rest of the prompt, unmatched closers and stray `:` are text, `\(` `\)` `\[` `\]` `\\` are literal
/// characters (a lone `\` is dropped); the word `BREAK` becomes a marker ([`Fragment::is_break`]). Adjacent
/// runs with equal weight are merged; an empty prompt gives one empty fragment of weight 1.
///
/// # Errors
/// [`Error::InvalidArgument`] (argument `prompt`) when a `(…:w)` weight made of digits and dots is not a
/// number (e.g. `1.2.3`), where A1111 raises `ValueError`.
pub fn parse_prompt_attention(text: &str) -> Result<Vec<Fragment>> {
    let re = attention_regex()?;
    let re_break = break_regex()?;
    let mut res: Vec<Fragment> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let square_multiplier = 1.0 / ROUND_BRACKET_MULTIPLIER;

    fn scale_from(res: &mut [Fragment], start: usize, factor: f64) {
        for f in res.iter_mut().skip(start) {
            f.weight *= factor;
        }
    }

    for caps in re.captures_iter(text) {
        let Some(whole) = caps.get(0) else { continue };
        let piece = whole.as_str();
        let weight = caps.get(1).map(|m| m.as_str());
        if let Some(rest) = piece.strip_prefix('\\') {
            res.push(Fragment {
                text: rest.to_owned(),
                weight: 1.0,
            });
        } else if piece == "(" {
            round.push(res.len());
        } else if piece == "[" {
            square.push(res.len());
        } else if let (Some(w), Some(&start)) = (weight, round.last()) {
            let w: f64 = w.parse().map_err(|_| {
                Error::invalid_argument(
                    "prompt",
                    format!("emphasis weight `{w}` in `{piece}` is not a number"),
                )
            })?;
            round.pop();
            scale_from(&mut res, start, w);
        } else if piece == ")" && !round.is_empty() {
            if let Some(start) = round.pop() {
                scale_from(&mut res, start, ROUND_BRACKET_MULTIPLIER);
            }
        } else if piece == "]" && !square.is_empty() {
            if let Some(start) = square.pop() {
                scale_from(&mut res, start, square_multiplier);
            }
        } else {
            for (i, part) in re_break.split(piece).enumerate() {
                if i > 0 {
                    res.push(Fragment {
                        text: "BREAK".to_owned(),
                        weight: -1.0,
                    });
                }
                res.push(Fragment {
                    text: part.to_owned(),
                    weight: 1.0,
                });
            }
        }
    }

    for &start in &round {
        scale_from(&mut res, start, ROUND_BRACKET_MULTIPLIER);
    }
    for &start in &square {
        scale_from(&mut res, start, square_multiplier);
    }

    if res.is_empty() {
        res.push(Fragment {
            text: String::new(),
            weight: 1.0,
        });
    }

    let mut merged: Vec<Fragment> = Vec::with_capacity(res.len());
    for f in res {
        match merged.last_mut() {
            Some(last) if last.weight == f.weight => last.text.push_str(&f.text),
            _ => merged.push(f),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(String, f64)> {
        parse_prompt_attention(text)
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.text, f.weight))
            .collect()
    }

    fn pairs(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        v.iter().map(|(t, w)| ((*t).to_owned(), *w)).collect()
    }

    /// The doctests of A1111's `parse_prompt_attention`, including the example in the spec.
    #[test]
    fn a1111_doctests() {
        assert_eq!(parsed("normal text"), pairs(&[("normal text", 1.0)]));
        assert_eq!(
            parsed("an (important) word"),
            pairs(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        );
        assert_eq!(parsed("(unbalanced"), pairs(&[("unbalanced", 1.1)]));
        assert_eq!(parsed("\\(literal\\]"), pairs(&[("(literal]", 1.0)]));
        assert_eq!(
            parsed("(unnecessary)(parens)"),
            pairs(&[("unnecessaryparens", 1.1)])
        );
        assert_eq!(
            parsed("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            pairs(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
    }

    #[test]
    fn break_markers_and_errors() {
        let f = parse_prompt_attention("a BREAK b").unwrap_or_default();
        assert_eq!(f.len(), 3);
        assert!(f[1].is_break());
        assert!(!f[0].is_break());
        assert!(parse_prompt_attention("(x:1.2.3)").is_err());
        assert_eq!(parsed(""), pairs(&[("", 1.0)]));
    }
}
