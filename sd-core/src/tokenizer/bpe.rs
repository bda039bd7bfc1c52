//! Byte-level byte-pair encoding: the byte → character table, the merge table and the per-word merge loop.
//!
//! Every symbol a word can pass through (single byte characters, their `</w>` word-final forms and every merge
//! result) is interned once at construction, so the merge loop works on `u32` symbol ids and a pair lookup is one
//! hash probe. Interning by string keeps the semantics of the reference implementation, which compares symbols as
//! strings: two merge paths that spell the same string are the same symbol.

use std::collections::HashMap;

/// Marks the last symbol of a word; CLIP's vocabulary spells word-final pieces with it (`"cat</w>"`).
pub(super) const END_OF_WORD: &str = "</w>";

/// How many merge lines CLIP reads after the header line: its 49152-entry vocabulary budget minus the 256 byte
/// characters and the 2 special tokens (the `</w>` forms of the bytes take the other 256 slots).
pub(super) const MAX_MERGES: usize = 49152 - 256 - 2;

/// The bytes in the order CLIP's `bytes_to_unicode` lists them: the printable Latin-1 bytes first (`!`..=`~`,
/// `¡`..=`¬`, `®`..=`ÿ`), then the remaining 68 bytes in ascending order.
pub(super) fn byte_order() -> Vec<u8> {
    let mut order: Vec<u8> = (0..=255u8).filter(|&b| is_printable(b)).collect();
    order.extend((0..=255u8).filter(|&b| !is_printable(b)));
    order
}

/// Whether a byte stands for itself in the byte → character table.
fn is_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The reversible byte → character table of byte-level BPE: printable Latin-1 bytes map to themselves, the others
/// (controls, space, NBSP, soft hyphen) to U+0100 onwards, in byte order, so that no symbol is whitespace.
pub(super) fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[usize::from(b)] = if is_printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
            next += 1;
            c
        };
    }
    table
}

/// The merge table and symbol inventory of a byte-level BPE model.
pub(super) struct Bpe {
    /// Symbol of each byte when it is not the last of its word.
    byte_sym: [u32; 256],
    /// Symbol of each byte as the last of its word (`c + "</w>"`).
    byte_sym_last: [u32; 256],
    /// `(left, right)` → `(rank, merged symbol)`; a lower rank merges first.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Vocabulary id of every symbol; symbols absent from the vocabulary map to the unknown id.
    sym_id: Vec<u32>,
}

/// Hands out one id per distinct symbol string.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
    strings: Vec<String>,
}

impl Interner {
    fn intern(&mut self, s: String) -> u32 {
        if let Some(&id) = self.ids.get(&s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.clone());
        self.ids.insert(s, id);
        id
    }
}

impl Bpe {
    /// Builds the model from merges in rank order. A merge listed twice keeps its later rank, as a Python dict
    /// built from the list does.
    pub(super) fn new(
        merges: &[(String, String)],
        vocab: &HashMap<String, u32>,
        unk_id: u32,
    ) -> Self {
        let chars = byte_chars();
        let mut interner = Interner::default();
        let mut byte_sym = [0u32; 256];
        let mut byte_sym_last = [0u32; 256];
        for (b, c) in chars.iter().enumerate() {
            byte_sym[b] = interner.intern(c.to_string());
            byte_sym_last[b] = interner.intern(format!("{c}{END_OF_WORD}"));
        }
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, (left, right)) in merges.iter().enumerate() {
            let l = interner.intern(left.clone());
            let r = interner.intern(right.clone());
            let m = interner.intern(format!("{left}{right}"));
            table.insert((l, r), (rank as u32, m));
        }
        let sym_id = interner
            .strings
            .iter()
            .map(|s| vocab.get(s).copied().unwrap_or(unk_id))
            .collect();
        Bpe {
            byte_sym,
            byte_sym_last,
            merges: table,
            sym_id,
        }
    }

    /// Appends the ids of one pre-tokenized word (its UTF-8 bytes) to `out`.
    ///
    /// Repeatedly merges the adjacent pair of lowest rank, every non-overlapping occurrence left to right, until no
    /// adjacent pair has a rank.
    pub(super) fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        let Some((&last, init)) = word.split_last() else {
            return;
        };
        let mut syms: Vec<u32> = init
            .iter()
            .map(|&b| self.byte_sym[usize::from(b)])
            .collect();
        syms.push(self.byte_sym_last[usize::from(last)]);
        while syms.len() > 1 {
            let mut best: Option<(u32, u32, u32, u32)> = None;
            for pair in syms.windows(2) {
                if let Some(&(rank, merged)) = self.merges.get(&(pair[0], pair[1]))
                    && best.is_none_or(|b| rank < b.0)
                {
                    best = Some((rank, pair[0], pair[1], merged));
                }
            }
            let Some((_, left, right, merged)) = best else {
                break;
            };
            let (mut read, mut write) = (0, 0);
            while read < syms.len() {
                if syms[read] == left && read + 1 < syms.len() && syms[read + 1] == right {
                    syms[write] = merged;
                    read += 2;
                } else {
                    syms[write] = syms[read];
                    read += 1;
                }
                write += 1;
            }
            syms.truncate(write);
        }
        out.extend(syms.iter().map(|&s| self.sym_id[s as usize]));
    }
}
