//! AUTOMATIC1111 "infotext": the generation parameters stored in a PNG's `parameters` text.
//!
//! Layout (written by A1111's `create_infotext`, read by `parse_generation_parameters`):
//!
//! ```text
//! <prompt, may span lines>
//! Negative prompt: <negative, may span lines>        (omitted when empty)
//! Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, ...
//! ```
//!
//! The last line joins `key: value` pairs with `", "` (a pair whose value equals its key is
//! written as the bare key); a value containing `,`, `\n` or `:` is JSON-quoted. The whole text
//! is stripped of leading and trailing whitespace. The parser treats the last line as parameters
//! only when the parameter pattern matches it at least three times.

use crate::error::{Error, Result};

/// The parameters of one generated image, written in AUTOMATIC1111's infotext layout.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationInfo {
    /// The positive prompt, as typed (extra-network tags such as `<lora:name:0.8>` included).
    pub prompt: String,
    /// The negative prompt; the line is omitted when empty.
    pub negative_prompt: String,
    /// Number of sampling steps.
    pub steps: u32,
    /// Sampler display name as A1111 spells it (`"Euler a"`, `"DPM++ 2M"`, `"DDIM"`).
    pub sampler: String,
    /// Schedule type display name (`"Karras"`, `"Exponential"`), written when set.
    pub schedule_type: Option<String>,
    /// Classifier-free guidance scale.
    pub cfg_scale: f32,
    /// The seed of this image.
    pub seed: u64,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// First 10 hex digits of the model file's sha256 (see [`super::model_hash`]).
    pub model_hash: Option<String>,
    /// Model name (A1111 uses the checkpoint's file stem).
    pub model_name: Option<String>,
    /// img2img denoising strength.
    pub denoising_strength: Option<f32>,
    /// CLIP skip; written only when greater than 1.
    pub clip_skip: Option<u32>,
    /// Further `key: value` pairs in order, written after the fixed keys and before `Version`
    /// (`"Lora hashes"`, `"TI hashes"`, `"Emphasis"`, `"Pad conds"`, `"Hires upscale"`, …).
    /// Values are quoted as needed.
    pub extra: Vec<(String, String)>,
    /// Program version, written last.
    pub version: Option<String>,
}

/// Formats a float the way A1111's infotext shows UI-entered numbers: integral values without a
/// fraction (`7`), others with the shortest digits that round-trip (`7.5`, `0.75`).
///
/// A1111 receives slider values as JSON numbers, so an integral CFG scale or denoising strength
/// reaches Python as an `int` and `str()` prints `7`; a fractional one is a `float` whose `str()`
/// is the shortest round-trip form, which is also what Rust's `Display` prints for `f32`.
fn format_number(v: f32) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Quotes an infotext value as A1111's `infotext_utils.quote` does: unchanged unless it contains
/// `,`, `\n` or `:`, then `json.dumps(value, ensure_ascii=False)`.
pub fn quote_value(value: &str) -> String {
    if !value.contains([',', '\n', ':']) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Python's `str.isspace` for the characters that matter here (Unicode White_Space plus the
/// ASCII information separators U+001C..U+001F, which Python also counts).
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w` in a `str` pattern.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl GenerationInfo {
    /// The parameter line's `(key, value)` pairs in A1111's order, values not yet quoted.
    pub fn parameters(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| p.push((k.to_string(), v));
        put("Steps", self.steps.to_string());
        put("Sampler", self.sampler.clone());
        if let Some(s) = &self.schedule_type {
            put("Schedule type", s.clone());
        }
        put("CFG scale", format_number(self.cfg_scale));
        put("Seed", self.seed.to_string());
        put("Size", format!("{}x{}", self.width, self.height));
        if let Some(h) = &self.model_hash {
            put("Model hash", h.clone());
        }
        if let Some(m) = &self.model_name {
            put("Model", m.clone());
        }
        if let Some(d) = self.denoising_strength {
            put("Denoising strength", format_number(d));
        }
        if let Some(c) = self.clip_skip.filter(|&c| c > 1) {
            put("Clip skip", c.to_string());
        }
        for (k, v) in &self.extra {
            // A1111 merges extras into one dict: a key already present keeps its place.
            if let Some(slot) = p.iter_mut().find(|(pk, _)| pk == k) {
                slot.1 = v.clone();
            } else {
                p.push((k.clone(), v.clone()));
            }
        }
        if let Some(v) = &self.version {
            match p.iter_mut().find(|(pk, _)| pk == "Version") {
                Some(slot) => slot.1 = v.clone(),
                None => p.push(("Version".to_string(), v.clone())),
            }
        }
        p
    }

    /// The infotext, byte for byte as A1111's `create_infotext` lays it out.
    pub fn to_infotext(&self) -> String {
        let params = self
            .parameters()
            .iter()
            .map(|(k, v)| {
                if k == v {
                    k.clone()
                } else {
                    format!("{k}: {}", quote_value(v))
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let negative = if self.negative_prompt.is_empty() {
            String::new()
        } else {
            format!("\nNegative prompt: {}", self.negative_prompt)
        };
        format!("{}{negative}\n{params}", self.prompt)
            .trim_matches(is_space)
            .to_string()
    }

    /// Builds a [`GenerationInfo`] from infotext.
    ///
    /// `Steps`, `Sampler`, `CFG scale`, `Seed` and `Size` are required. A sampler written in the
    /// pre-1.8 combined form (`"DPM++ 2M Karras"`) without a `Schedule type` is split into
    /// sampler and schedule, as A1111 does for old infotext. Keys not modelled by a field go to
    /// [`GenerationInfo::extra`] in order.
    pub fn from_infotext(text: &str) -> Result<Self> {
        let parsed = parse_infotext(text);
        let need = |k: &'static str| {
            parsed
                .get(k)
                .ok_or_else(|| Error::invalid_argument("infotext", format!("no `{k}` parameter")))
        };
        fn num<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T> {
            v.trim().parse::<T>().map_err(|_| {
                Error::invalid_argument("infotext", format!("`{key}: {v}` is not a valid number"))
            })
        }
        let mut sampler = need("Sampler")?.to_string();
        let mut schedule_type = parsed.get("Schedule type").map(str::to_string);
        if schedule_type.is_none() {
            for suffix in ["Karras", "Exponential", "Polyexponential", "SGM Uniform"] {
                if let Some(base) = sampler.strip_suffix(&format!(" {suffix}")) {
                    schedule_type = Some(suffix.to_string());
                    sampler = base.to_string();
                    break;
                }
            }
        }
        let known = [
            "Steps",
            "Sampler",
            "Schedule type",
            "CFG scale",
            "Seed",
            "Size-1",
            "Size-2",
            "Model hash",
            "Model",
            "Denoising strength",
            "Clip skip",
            "Version",
        ];
        Ok(Self {
            prompt: parsed.prompt.clone(),
            negative_prompt: parsed.negative_prompt.clone(),
            steps: num("Steps", need("Steps")?)?,
            sampler,
            schedule_type,
            cfg_scale: num("CFG scale", need("CFG scale")?)?,
            seed: num("Seed", need("Seed")?)?,
            width: num("Size", need("Size-1")?)?,
            height: num("Size", need("Size-2")?)?,
            model_hash: parsed.get("Model hash").map(str::to_string),
            model_name: parsed.get("Model").map(str::to_string),
            denoising_strength: parsed
                .get("Denoising strength")
                .map(|v| num("Denoising strength", v))
                .transpose()?,
            clip_skip: parsed
                .get("Clip skip")
                .map(|v| num("Clip skip", v))
                .transpose()?,
            extra: parsed
                .params
                .iter()
                .filter(|(k, _)| !known.contains(&k.as_str()))
                .cloned()
                .collect(),
            version: parsed.get("Version").map(str::to_string),
        })
    }
}

/// Infotext split the way A1111's `parse_generation_parameters` splits it (before it fills in
/// defaults for missing keys).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedInfotext {
    /// Prompt lines (each stripped), joined with `\n`.
    pub prompt: String,
    /// Negative prompt lines (each stripped), joined with `\n`.
    pub negative_prompt: String,
    /// Parameters in first-seen order; a repeated key keeps its first place and its last
    /// value. Quoted values are unquoted; a `WxH` value of key `K` is stored as `K-1` = `W`
    /// and `K-2` = `H` instead of `K`.
    pub params: Vec<(String, String)>,
}

impl ParsedInfotext {
    /// The value of a parameter, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn insert(&mut self, key: String, value: String) {
        match self.params.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.params.push((key, value)),
        }
    }
}

/// One match of A1111's `re_param` starting the search at char index `from`:
/// `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`. Returns the key, the raw value and
/// the index after the match, or the index to resume searching from.
fn match_param(c: &[char], from: usize) -> std::result::Result<(String, String, usize), usize> {
    let n = c.len();
    let mut q = from;
    while q < n && is_space(c[q]) {
        q += 1;
    }
    if q >= n || !is_word(c[q]) {
        return Err(q + 1);
    }
    let mut r = q + 1;
    while r < n && (is_word(c[r]) || matches!(c[r], ' ' | '-' | '/')) {
        r += 1;
    }
    if r == q + 1 || r >= n || c[r] != ':' {
        // Every start inside this run reaches the same end and fails the same way.
        return Err(r.max(from + 1));
    }
    let key: String = c[q..r].iter().collect();
    let mut s = r + 1;
    while s < n && is_space(c[s]) {
        s += 1;
    }
    // First alternative: a double-quoted string with backslash escapes, then `,` or the end.
    if s < n && c[s] == '"' {
        let mut t = s + 1;
        let mut closed = None;
        while t < n {
            match c[t] {
                '\\' if t + 1 < n && c[t + 1] != '\n' => t += 2,
                '\\' => break,
                '"' => {
                    closed = Some(t);
                    break;
                }
                _ => t += 1,
            }
        }
        if let Some(t) = closed.filter(|&t| t > s + 1) {
            if t + 1 == n {
                return Ok((key, c[s..=t].iter().collect(), n));
            }
            if c[t + 1] == ',' {
                return Ok((key, c[s..=t].iter().collect(), t + 2));
            }
        }
    }
    // Second alternative: everything up to the next comma.
    let mut e = s;
    while e < n && c[e] != ',' {
        e += 1;
    }
    let next = if e < n { e + 1 } else { n };
    Ok((key, c[s..e].iter().collect(), next))
}

/// All `re_param` matches of a line, as Python's `re.findall` returns them.
fn find_params(line: &str) -> Vec<(String, String)> {
    let c: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut p = 0;
    while p < c.len() {
        match match_param(&c, p) {
            Ok((k, v, next)) => {
                out.push((k, v));
                p = next;
            }
            Err(next) => p = next,
        }
    }
    out
}

/// `re.match(r"^(\d+)x(\d+)$", v)`, with ASCII digits.
fn split_size(v: &str) -> Option<(&str, &str)> {
    let (w, h) = v.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(w) && digits(h)).then_some((w, h))
}

/// Parses infotext with the rules of A1111's `parse_generation_parameters`.
///
/// The text is stripped and split on `\n`; the last line holds the parameters only if the
/// parameter pattern matches it at least 3 times, otherwise it is part of the prompt. Each
/// other line is stripped; lines up to one starting with `Negative prompt:` form the prompt,
/// that line (minus the label) and the following ones the negative prompt. A value that starts
/// and ends with `"` is JSON-decoded (kept as is if that fails); an empty value drops the key.
pub fn parse_infotext(text: &str) -> ParsedInfotext {
    let mut res = ParsedInfotext::default();
    let mut lines: Vec<&str> = text.trim_matches(is_space).split('\n').collect();
    let last = lines.pop().unwrap_or("");
    let mut params = find_params(last);
    if params.len() < 3 {
        // Not a parameter line: it is the end of the prompt (or negative prompt).
        lines.push(last);
        params.clear();
    }
    let mut done_with_prompt = false;
    for line in lines {
        let mut line = line.trim_matches(is_space);
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            done_with_prompt = true;
            line = rest.trim_matches(is_space);
        }
        let target = if done_with_prompt {
            &mut res.negative_prompt
        } else {
            &mut res.prompt
        };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    for (k, v) in params {
        if v.is_empty() {
            // A1111 indexes v[0], fails, and skips the key.
            continue;
        }
        let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
            serde_json::from_str::<String>(&v).unwrap_or(v)
        } else {
            v
        };
        match split_size(&v) {
            Some((w, h)) => {
                let (w, h) = (w.to_string(), h.to_string());
                res.insert(format!("{k}-1"), w);
                res.insert(format!("{k}-2"), h);
            }
            None => res.insert(k, v),
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GenerationInfo {
        GenerationInfo {
            prompt: "masterpiece, a cat <lora:myLora:0.8>".into(),
            negative_prompt: "lowres, blurry".into(),
            steps: 20,
            sampler: "DPM++ 2M".into(),
            schedule_type: Some("Karras".into()),
            cfg_scale: 7.0,
            seed: 1234567890,
            width: 512,
            height: 768,
            model_hash: Some("6ce0161689".into()),
            model_name: Some("v1-5-pruned-emaonly".into()),
            denoising_strength: None,
            clip_skip: Some(1),
            extra: vec![
                ("Lora hashes".into(), "myLora: 0123456789ab".into()),
                ("TI hashes".into(), "EasyNegative: c74b4e810b03".into()),
            ],
            version: Some("v1.10.1".into()),
        }
    }

    #[test]
    fn writes_a1111_layout() {
        assert_eq!(
            sample().to_infotext(),
            "masterpiece, a cat <lora:myLora:0.8>\n\
             Negative prompt: lowres, blurry\n\
             Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, \
             Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, \
             Lora hashes: \"myLora: 0123456789ab\", TI hashes: \"EasyNegative: c74b4e810b03\", \
             Version: v1.10.1"
        );
    }

    #[test]
    fn numbers_clip_skip_and_empty_negative() {
        let mut g = sample();
        g.negative_prompt.clear();
        g.cfg_scale = 7.5;
        g.denoising_strength = Some(0.75);
        g.clip_skip = Some(2);
        g.schedule_type = None;
        g.model_hash = None;
        g.model_name = None;
        g.extra.clear();
        g.version = None;
        assert_eq!(
            g.to_infotext(),
            "masterpiece, a cat <lora:myLora:0.8>\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, \
             Seed: 1234567890, Size: 512x768, Denoising strength: 0.75, Clip skip: 2"
        );
        g.denoising_strength = Some(1.0);
        g.cfg_scale = 0.1;
        assert!(g.to_infotext().contains("CFG scale: 0.1, "));
        assert!(g.to_infotext().contains("Denoising strength: 1, "));
        // An empty prompt leaves no leading newline (A1111 strips the whole text).
        g.prompt = "  ".into();
        assert!(g.to_infotext().starts_with("Steps: 20, "));
    }

    #[test]
    fn quoting_follows_json_dumps() {
        assert_eq!(quote_value("plain value"), "plain value");
        assert_eq!(quote_value("a: b"), "\"a: b\"");
        assert_eq!(quote_value("x, \"y\"\\z"), r#""x, \"y\"\\z""#);
        assert_eq!(quote_value("l1\nl2\t\u{1}"), "\"l1\\nl2\\t\\u0001\"");
        // ensure_ascii=False keeps non-ASCII as is.
        assert_eq!(quote_value("猫: é"), "\"猫: é\"");
        // A quote alone does not trigger quoting.
        assert_eq!(quote_value("say \"hi\""), "say \"hi\"");
    }

    #[test]
    fn round_trip_through_parser() -> Result<()> {
        let g = sample();
        let parsed = parse_infotext(&g.to_infotext());
        assert_eq!(parsed.get("Size-1"), Some("512"));
        assert_eq!(parsed.get("Size-2"), Some("768"));
        assert_eq!(parsed.get("Lora hashes"), Some("myLora: 0123456789ab"));
        assert_eq!(
            GenerationInfo::from_infotext(&g.to_infotext())?,
            GenerationInfo {
                clip_skip: None,
                ..g
            }
        );
        Ok(())
    }

    #[test]
    fn parses_multiline_unicode_prompts() -> Result<()> {
        let text = "  a photo of 猫,\n  (best quality:1.2), café  \n\
                    Negative prompt: ugly,\nbad hands\n\
                    Steps: 30, Sampler: Euler a, CFG scale: 5.5, Seed: 42, Size: 640x384, \
                    Model: \"my, model\", Hires upscaler: Latent, Clip skip: 2, \
                    Note: \"line1\\nline2 \\\"q\\\"\", Version: 1.0\n";
        let p = parse_infotext(text);
        assert_eq!(p.prompt, "a photo of 猫,\n(best quality:1.2), café");
        assert_eq!(p.negative_prompt, "ugly,\nbad hands");
        assert_eq!(p.get("Model"), Some("my, model"));
        assert_eq!(p.get("Note"), Some("line1\nline2 \"q\""));
        assert_eq!(p.get("Hires upscaler"), Some("Latent"));
        let g = GenerationInfo::from_infotext(text)?;
        assert_eq!(g.steps, 30);
        assert_eq!(g.sampler, "Euler a");
        assert_eq!(g.cfg_scale, 5.5);
        assert_eq!((g.width, g.height), (640, 384));
        assert_eq!(g.clip_skip, Some(2));
        assert_eq!(g.model_name.as_deref(), Some("my, model"));
        assert_eq!(g.version.as_deref(), Some("1.0"));
        assert_eq!(
            g.extra[0],
            ("Hires upscaler".to_string(), "Latent".to_string())
        );
        Ok(())
    }

    #[test]
    fn last_line_needs_three_matches() {
        // Two `key: value` matches only: the line belongs to the prompt.
        let p = parse_infotext("a cat\nstyle: anime, mood: calm");
        assert_eq!(p.prompt, "a cat\nstyle: anime, mood: calm");
        assert!(p.params.is_empty());
        let p = parse_infotext("just a prompt");
        assert_eq!(p.prompt, "just a prompt");
        let p = parse_infotext("");
        assert_eq!(p, ParsedInfotext::default());
        // Prompt text may be missing entirely.
        let p = parse_infotext("Steps: 1, Sampler: DDIM, Seed: 3");
        assert_eq!(p.prompt, "");
        assert_eq!(p.get("Sampler"), Some("DDIM"));
    }

    #[test]
    fn regex_corner_cases() {
        // Key runs may contain spaces, '-' and '/', and start mid-text after a failed match.
        let m = find_params("junk, Hires upscale: 2, ENSD: 31337, a/b-c d: x");
        assert_eq!(
            m,
            vec![
                ("Hires upscale".into(), "2".into()),
                ("ENSD".into(), "31337".into()),
                ("a/b-c d".into(), "x".into()),
            ]
        );
        // A one-character key does not match; a quoted value not followed by ',' falls back.
        let m = find_params("A: 1, Bb: \"x\" y, Cc: \"\", Dd: ");
        assert_eq!(
            m,
            vec![
                ("Bb".into(), "\"x\" y".into()),
                ("Cc".into(), "\"\"".into()),
                ("Dd".into(), "".into()),
            ]
        );
        // Empty values drop the key; an undecodable quoted value is kept raw; repeated keys keep
        // their first place.
        let p = parse_infotext("p\nA1: 1, B2: , C3: \"\\x\", A1: 9, Size: 8x9, Size: 1x2");
        assert_eq!(
            p.params,
            vec![
                ("A1".to_string(), "9".to_string()),
                ("C3".to_string(), "\"\\x\"".to_string()),
                ("Size-1".to_string(), "1".to_string()),
                ("Size-2".to_string(), "2".to_string()),
            ]
        );
    }

    #[test]
    fn old_combined_sampler_names_are_split() -> Result<()> {
        let g = GenerationInfo::from_infotext(
            "x\nSteps: 20, Sampler: DPM++ 2M SDE Karras, CFG scale: 7, Seed: 1, Size: 64x64",
        )?;
        assert_eq!(g.sampler, "DPM++ 2M SDE");
        assert_eq!(g.schedule_type.as_deref(), Some("Karras"));
        assert!(GenerationInfo::from_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1").is_err());
        Ok(())
    }
}
