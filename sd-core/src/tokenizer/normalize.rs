//! Text clean-up and pre-tokenization, in two variants (see [`super::TextCleanup`]).
//!
//! # transformers 5 (`tokenizers` library pipeline), the default
//!
//! transformers 5's `CLIPTokenizer` runs the `tokenizers` library with this pipeline:
//!
//! 1. `<|endoftext|>` written literally (case-sensitively, in the raw text) maps to its id; it is an added token
//!    that is not normalised, so it is matched before anything else happens to the text;
//! 2. each piece between those matches is NFC-normalised and lower-cased **character by character** (so `Σ` is
//!    always `σ`, never the word-final `ς`; `İ` becomes `i` + U+0307); nothing is removed: control and format
//!    characters, zero-width joiners, the BOM, U+FFFD and private-use characters all stay and become bytes;
//! 3. `<|startoftext|>` is then matched in the *normalised* text (it is a normalised added token), so
//!    `<|StartOfText|>` is also the begin token;
//! 4. CLIP's pattern (case-sensitive this time) cuts the rest into pieces: `<|endoftext|>`, the contractions
//!    `'s 't 're 've 'm 'll 'd`, letter runs, single numbers and runs of anything else; whitespace (Unicode
//!    `White_Space`) separates pieces and is dropped. CJK ideographs get no special treatment, so `你好世界` is
//!    one letter run;
//! 5. the byte-level pre-tokenizer splits each piece again with GPT-2's pattern. That only changes a piece
//!    `<|endoftext|>` produced by lower-casing (say from `<|ENDOFTEXT|>`): it becomes the three words `<|`,
//!    `endoftext` and `|>`, each encoded with BPE.
//!
//! # transformers 4 slow tokenizer (A1111 and other code that uses the Python `CLIPTokenizer`)
//!
//! The Python `CLIPTokenizer` of transformers 4 without `ftfy` (its `BasicTokenizer(strip_accents=False,
//! do_split_on_punc=False)` path) does this instead:
//!
//! 1. the text is split around the literal special tokens `<|startoftext|>` / `<|endoftext|>`, which map straight to
//!    their ids; the pieces between them go through the remaining steps independently;
//! 2. NUL, U+FFFD and every character of general category `C*` (controls, format characters such as zero-width
//!    joiners and the BOM, private use, unassigned) are removed, except tab, newline and carriage return, which
//!    become spaces like every `Zs` space separator (so form feed and vertical tab are *removed*, not spaces);
//! 3. each CJK ideograph (the ranges of [`is_cjk_ideograph`]) gets a space on both sides;
//! 4. Unicode NFC normalisation;
//! 5. split on whitespace as Python's `str.split()` defines it, and lower-case each word (full Unicode mapping:
//!    `İ` → `i̇`, word-final `Σ` → `ς`); accents are kept and punctuation is not split off here;
//! 6. CLIP's pattern cuts each word into pieces for BPE: `<|startoftext|>`, `<|endoftext|>`, the contractions
//!    `'s 't 're 've 'm 'll 'd` (case-insensitively, so `'ſ` counts as `'s`), runs of letters (`\p{L}+`), single
//!    digits/numbers (`\p{N}`), and runs of anything else (`[^\s\p{L}\p{N}]+`, so an emoji ZWJ sequence that
//!    survived step 2 stays one piece and `"!!!"` is one piece).
//!
//! Here step 2 runs before NFC, so a decomposed accent (`e` + U+0301) is composed and encodes like `é`.

use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// The beginning-of-text special token.
pub(super) const START_OF_TEXT: &str = "<|startoftext|>";
/// The end-of-text special token (also CLIP's unknown and padding token).
pub(super) const END_OF_TEXT: &str = "<|endoftext|>";

/// The compiled patterns, shared by every tokenizer.
pub(super) struct Patterns {
    /// Characters slow-tokenizer step 2 removes or turns into spaces.
    clean: Regex,
    /// CLIP's pre-tokenizer as the slow tokenizer applies it (step 6, case-insensitive).
    pieces: Regex,
    /// CLIP's pre-tokenizer as the `tokenizers` pipeline applies it (step 4, case-sensitive).
    pieces_v5: Regex,
}

/// Returns the shared compiled patterns; an error means a pattern literal in this file is invalid (a bug).
pub(super) fn patterns() -> Result<&'static Patterns, String> {
    static PATTERNS: OnceLock<Result<Patterns, String>> = OnceLock::new();
    PATTERNS
        .get_or_init(|| {
            let compile = |p: &str| Regex::new(p).map_err(|e| format!("tokenizer pattern {p:?}: {e}"));
            Ok(Patterns {
                clean: compile(r"[\p{C}\p{Zs}\x{FFFD}]")?,
                pieces: compile(
                    r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
                )?,
                pieces_v5: compile(
                    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
                )?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A piece of the input after step 1.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Segment<'a> {
    /// A literal special token.
    Special(&'static str),
    /// Text between special tokens (never empty).
    Text(&'a str),
}

/// Slow-tokenizer step 1: splits `text` around literal special tokens, leftmost first.
pub(super) fn split_specials(text: &str) -> Vec<Segment<'_>> {
    split_on(text, &[START_OF_TEXT, END_OF_TEXT])
}

/// Splits `text` around the literal occurrences of `specials`, leftmost first.
pub(super) fn split_on<'a>(text: &'a str, specials: &[&'static str]) -> Vec<Segment<'a>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let next = specials
            .iter()
            .filter_map(|&special| rest.find(special).map(|at| (at, special)))
            .min_by_key(|&(at, _)| at);
        let Some((at, special)) = next else {
            break;
        };
        if at > 0 {
            out.push(Segment::Text(&rest[..at]));
        }
        out.push(Segment::Special(special));
        rest = &rest[at + special.len()..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest));
    }
    out
}

/// transformers 5 step 2: NFC, then per-character lower-casing.
pub(super) fn normalize_v5(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.nfc() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// transformers 5 step 4: the pieces of normalised text between begin tokens.
pub(super) fn pieces_v5<'a>(pats: &Patterns, text: &'a str) -> impl Iterator<Item = &'a str> {
    pats.pieces_v5.find_iter(text).map(|m| m.as_str())
}

/// transformers 5 step 5: the byte-level pre-tokenizer's words of a piece. GPT-2's pattern leaves every piece of
/// step 4 whole except a literal special token, which it cuts into `<|`, the letters and `|>`.
pub(super) fn byte_level_words(piece: &str) -> [&str; 3] {
    if (piece == START_OF_TEXT || piece == END_OF_TEXT) && piece.len() > 4 {
        let n = piece.len();
        [&piece[..2], &piece[2..n - 2], &piece[n - 2..]]
    } else {
        [piece, "", ""]
    }
}

/// Slow-tokenizer steps 2 to 5: the lower-cased words of a text segment.
pub(super) fn words(pats: &Patterns, text: &str) -> Vec<String> {
    let cleaned = pats.clean.replace_all(text, |caps: &regex::Captures<'_>| {
        let c = caps[0].chars().next().unwrap_or('\0');
        // Tab, newline and carriage return are `Cc` but count as whitespace; `Cc` whitespace such as form feed is
        // a control and goes. A matched character that is whitespace but not `Cc` is a `Zs` separator (line and
        // paragraph separators are `Zl`/`Zp`, which the pattern does not match).
        if matches!(c, '\t' | '\n' | '\r') || (c.is_whitespace() && !c.is_control()) {
            " "
        } else {
            ""
        }
    });
    let mut spaced = String::with_capacity(cleaned.len());
    for c in cleaned.chars() {
        if is_cjk_ideograph(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let normalized: String = spaced.nfc().collect();
    normalized
        .split(is_python_whitespace)
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Slow-tokenizer step 6: the BPE pieces of one lower-cased word.
pub(super) fn pieces<'a>(pats: &Patterns, word: &'a str) -> impl Iterator<Item = &'a str> {
    pats.pieces.find_iter(word).map(|m| m.as_str())
}

/// Whitespace as Python's `str.isspace` defines it: Unicode `White_Space` plus the information separators
/// U+001C..=U+001F.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

/// The code points the reference tokenizer treats as Chinese characters: the CJK Unified Ideographs block,
/// extensions A to E, and the two compatibility ideograph blocks. Hangul, kana and later extensions are not
/// included, exactly as in the reference.
pub(super) fn is_cjk_ideograph(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x2_0000..=0x2_A6DF
            | 0x2_A700..=0x2_B73F
            | 0x2_B740..=0x2_B81F
            | 0x2_B820..=0x2_CEAF
            | 0xF900..=0xFAFF
            | 0x2_F800..=0x2_FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words_of(text: &str) -> Vec<String> {
        let pats = patterns().expect("patterns compile");
        words(pats, text)
    }

    #[test]
    fn specials_split_leftmost() {
        assert_eq!(
            split_specials("a<|endoftext|>b<|startoftext|>"),
            vec![
                Segment::Text("a"),
                Segment::Special(END_OF_TEXT),
                Segment::Text("b"),
                Segment::Special(START_OF_TEXT),
            ]
        );
        assert!(split_specials("").is_empty());
    }

    #[test]
    fn clean_up_steps() {
        // Form feed is a control character: removed, not a space.
        assert_eq!(
            words_of("A\tB\u{a0}C\u{c}D\u{200b}E\u{0}F"),
            ["a", "b", "cdef"]
        );
        assert_eq!(words_of("x\u{2028}y\u{1f}z"), ["x", "yz"]);
        assert_eq!(words_of("\u{e000}\u{378}q\u{fffd}"), ["q"]);
        assert_eq!(words_of("e\u{301}"), ["\u{e9}"]);
        assert_eq!(words_of("猫cat"), ["猫", "cat"]);
        // Word-final capital sigma lower-cases to the final form.
        assert_eq!(words_of("ΟΔΟΣ"), ["\u{3bf}\u{3b4}\u{3bf}\u{3c2}"]);
    }

    #[test]
    fn pre_tokenizer_pieces() {
        let pats = patterns().expect("patterns compile");
        let got: Vec<&str> = pieces(pats, "it's!!1.5<|endoftext|>'ſ").collect();
        assert_eq!(
            got,
            ["it", "'s", "!!", "1", ".", "5", "<|endoftext|>", "'ſ"]
        );
    }
}
