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
//!    survived step 2 stays one piece and `"!!!"` is one piece). U+0345 matches no alternative under the
//!    reference's case-insensitive matching and is dropped, splitting a letter run.
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
    /// CLIP's pre-tokenizer as the slow tokenizer applies it (step 6, case-insensitive; the words are lower-cased
    /// already, so only the literal alternatives need the flag). U+0345 (combining
    /// ypogegrammeni, a mark whose case fold is the letter `ι`) is in no alternative: under Python `regex`'s
    /// case-insensitive matching it is neither a letter nor outside the letters, so the reference drops it.
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
                    r"(?i:<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+",
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

/// transformers 5 step 2: NFC as of Unicode 9.0, then per-character lower-casing.
///
/// The `tokenizers` library normalises with Unicode 9.0 tables. To those, a character assigned later is an inert
/// starter: no decomposition, combining class 0, no composition, so nothing reorders or composes across it. The
/// text is therefore cut at the characters of [`NEWER_THAN_UNICODE9`] and the parts are normalised with the
/// current tables (which, by Unicode's stability policy, treat the older characters exactly as 9.0 did).
pub(super) fn normalize_v5(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if is_newer_than_unicode9(c) {
            push_nfc_lower(&text[start..at], &mut out);
            push_lower(c, &mut out);
            start = at + c.len_utf8();
        }
    }
    push_nfc_lower(&text[start..], &mut out);
    out
}

/// Appends the NFC form of `text`, each character lower-cased on its own.
fn push_nfc_lower(text: &str, out: &mut String) {
    for c in text.nfc() {
        push_lower(c, out);
    }
}

/// Appends the lower-case mapping of one character (without context, so `Σ` is always `σ`).
fn push_lower(c: char, out: &mut String) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
    } else {
        out.extend(c.to_lowercase());
    }
}

/// Whether `c` is in [`NEWER_THAN_UNICODE9`].
fn is_newer_than_unicode9(c: char) -> bool {
    let u = u32::from(c);
    u >= NEWER_THAN_UNICODE9[0].0
        && NEWER_THAN_UNICODE9
            .binary_search_by(|&(lo, hi)| {
                if hi < u {
                    std::cmp::Ordering::Less
                } else if lo > u {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

/// The characters, as sorted inclusive ranges, that matter to normalisation in the current Unicode tables
/// (non-zero combining class, a canonical decomposition, or part of one) but were not assigned in Unicode 9.0.
/// Found by comparing the `unicode-normalization` crate's tables with the `tokenizers` library's NFD, character
/// by character; normalisation sees all of them as inert starters in transformers 5.
const NEWER_THAN_UNICODE9: &[(u32, u32)] = &[
    (0x5C8, 0x5C9),
    (0x7FD, 0x7FD),
    (0x897, 0x89F),
    (0x8CA, 0x8D3),
    (0x9FE, 0x9FE),
    (0xC3C, 0xC3C),
    (0xD3B, 0xD3C),
    (0xEBA, 0xEBA),
    (0x1715, 0x1715),
    (0x1ABF, 0x1AF0),
    (0x1DF6, 0x1DFA),
    (0xA82C, 0xA82C),
    (0x105C9, 0x105C9),
    (0x105D2, 0x105D2),
    (0x105DA, 0x105DA),
    (0x105E4, 0x105E4),
    (0x10D24, 0x10D27),
    (0x10D69, 0x10D6D),
    (0x10EAB, 0x10EAC),
    (0x10ECB, 0x10ECF),
    (0x10EF0, 0x10EFB),
    (0x10EFD, 0x10EFF),
    (0x10F46, 0x10F50),
    (0x10F82, 0x10F85),
    (0x11070, 0x11070),
    (0x1133B, 0x1133B),
    (0x11382, 0x11385),
    (0x1138B, 0x1138B),
    (0x1138E, 0x1138E),
    (0x11390, 0x11391),
    (0x113B8, 0x113B8),
    (0x113BB, 0x113BB),
    (0x113C2, 0x113C2),
    (0x113C5, 0x113C5),
    (0x113C7, 0x113C9),
    (0x113CE, 0x113D0),
    (0x1145E, 0x1145E),
    (0x11839, 0x1183A),
    (0x11930, 0x11930),
    (0x11935, 0x11935),
    (0x11938, 0x11938),
    (0x1193D, 0x1193E),
    (0x11943, 0x11943),
    (0x119E0, 0x119E0),
    (0x11A34, 0x11A34),
    (0x11A47, 0x11A47),
    (0x11A99, 0x11A99),
    (0x11D42, 0x11D42),
    (0x11D44, 0x11D45),
    (0x11D97, 0x11D97),
    (0x11F41, 0x11F42),
    (0x1611E, 0x16129),
    (0x1612F, 0x1612F),
    (0x16D63, 0x16D63),
    (0x16D67, 0x16D6A),
    (0x16FF0, 0x16FF1),
    (0x1D127, 0x1D128),
    (0x1D250, 0x1D252),
    (0x1D25B, 0x1D25C),
    (0x1D25F, 0x1D25F),
    (0x1D280, 0x1D281),
    (0x1E08F, 0x1E08F),
    (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE),
    (0x1E2EC, 0x1E2EF),
    (0x1E4EC, 0x1E4EF),
    (0x1E5EE, 0x1E5EF),
    (0x1E6E3, 0x1E6E3),
    (0x1E6E6, 0x1E6E6),
    (0x1E6EE, 0x1E6EF),
    (0x1E6F5, 0x1E6F5),
];

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

    #[test]
    fn transformers5_steps() {
        // Only `<|endoftext|>` is split off the raw text; `<|startoftext|>` is found after normalisation.
        assert_eq!(
            split_on("a<|endoftext|><|StartOfText|>", &[END_OF_TEXT]),
            vec![
                Segment::Text("a"),
                Segment::Special(END_OF_TEXT),
                Segment::Text("<|StartOfText|>"),
            ]
        );
        // Per-character lower-casing: no final sigma; nothing removed; NFC composes.
        assert_eq!(
            normalize_v5("ΟΔΟΣ\u{200b}\u{0}E\u{301}"),
            "οδοσ\u{200b}\u{0}\u{e9}"
        );
        // U+08D3 (Unicode 11) is an inert starter to Unicode 9.0 normalisation: no reordering across it, while
        // the marks of Unicode 9.0 still reorder (U+0316, class 220, before U+0301, class 230).
        assert_eq!(normalize_v5("x\u{301}\u{8d3}"), "x\u{301}\u{8d3}");
        assert_eq!(normalize_v5("q\u{301}\u{316}"), "q\u{316}\u{301}");
        assert!(is_newer_than_unicode9('\u{1ace}'));
        assert!(!is_newer_than_unicode9('\u{301}'));
        assert!(!is_newer_than_unicode9('a'));
        assert!(
            NEWER_THAN_UNICODE9
                .windows(2)
                .all(|w| w[0].0 <= w[0].1 && w[0].1 < w[1].0)
        );
        let pats = patterns().expect("patterns compile");
        let got: Vec<&str> = pieces_v5(pats, "it's 'ſ!! <|endoftext|> !<|endoftext|>").collect();
        // A punctuation run swallows the start of a special token that follows it, as in the reference.
        assert_eq!(
            got,
            [
                "it",
                "'s",
                "'",
                "ſ",
                "!!",
                "<|endoftext|>",
                "!<|",
                "endoftext",
                "|>"
            ]
        );
        assert_eq!(byte_level_words("<|endoftext|>"), ["<|", "endoftext", "|>"]);
        assert_eq!(byte_level_words("cat"), ["cat", "", ""]);
    }
}
