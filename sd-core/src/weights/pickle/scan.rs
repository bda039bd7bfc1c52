//! Listing the globals a pickle names without running it: a walk over the opcodes.
//!
//! The interpreter stops at the first refused global, so a refused file says little about what
//! else it would have imported. This walk reads every opcode's operand by its length (all
//! protocols, including the opcodes the interpreter refuses), never builds a value and never
//! runs anything, and reports every `GLOBAL`, `INST` and `STACK_GLOBAL` with whether the
//! interpreter would accept it. `STACK_GLOBAL` takes its names from the stack; the walk
//! resolves them the way pickles are written (string literals or memo references to them just
//! before the opcode) and says so when it cannot.

use std::collections::HashMap;
use std::rc::Rc;

use super::Limits;
use super::error::LoadErrorKind as K;
use super::vm::resolve_global;

/// Longest string the walk remembers for `STACK_GLOBAL` (longer ones are never module names),
/// and the longest module or name it lists (longer ones are cut, ending in `…`).
const MAX_NAME: usize = 256;

/// Most distinct globals one walk lists: a pickle naming more is hostile, and listing stops
/// there (the walk says so), which keeps a report's memory and length bounded.
pub const MAX_LISTED_GLOBALS: usize = 1024;

/// One global a pickle names, with one opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGlobal {
    /// The module, as written (`?` when a `STACK_GLOBAL`'s operands are not resolvable; cut
    /// at 256 bytes).
    pub module: String,
    /// The name, as written (`?` likewise; cut at 256 bytes).
    pub name: String,
    /// Byte offset of the first opcode naming it in its pickle.
    pub offset: u64,
    /// How many opcodes of this kind name it.
    pub count: usize,
    /// The opcode: `GLOBAL`, `INST` or `STACK_GLOBAL`.
    pub opcode: &'static str,
    /// Why the interpreter refuses it; `None` when it is on the allow-list and its opcode is
    /// accepted.
    pub refused: Option<&'static str>,
}

/// What [`list_globals`] found in one pickle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GlobalListing {
    /// Every global (module, name and opcode), in order of first appearance, at most
    /// [`MAX_LISTED_GLOBALS`].
    pub globals: Vec<ListedGlobal>,
    /// The offset just after `STOP`, when the walk reached it.
    pub end: Option<usize>,
    /// Why the walk stopped early (truncated input, an unknown opcode byte, more than
    /// [`MAX_LISTED_GLOBALS`] globals, a pickle longer than `max_pickle_bytes`), if it did.
    pub stopped: Option<String>,
}

impl GlobalListing {
    /// Counts one opcode naming `module.name`; `false` when it would be a new global beyond
    /// [`MAX_LISTED_GLOBALS`] (then nothing is added).
    fn add(
        &mut self,
        index: &mut HashMap<(String, String, &'static str), usize>,
        global: ListedGlobal,
    ) -> bool {
        let key = (global.module.clone(), global.name.clone(), global.opcode);
        if let Some(&i) = index.get(&key) {
            if let Some(g) = self.globals.get_mut(i) {
                g.count = g.count.saturating_add(1);
            }
            return true;
        }
        if self.globals.len() >= MAX_LISTED_GLOBALS {
            return false;
        }
        index.insert(key, self.globals.len());
        self.globals.push(global);
        true
    }
}

/// `text` cut to at most [`MAX_NAME`] bytes (at a character boundary), marked with `…`.
fn listed_name(text: &str) -> String {
    if text.len() <= MAX_NAME {
        return text.to_string();
    }
    let end = (0..=MAX_NAME)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}…", text.get(..end).unwrap_or(""))
}

/// The operand of an opcode, by layout.
enum Arg {
    None,
    Fixed(usize),
    /// A length of this many little-endian bytes, then that many bytes.
    Counted(usize),
    /// Lines ending in `\n`.
    Lines(usize),
}

fn layout(op: u8) -> Option<Arg> {
    Some(match op {
        b'('
        | b'.'
        | b'0'
        | b'1'
        | b'2'
        | b'N'
        | b'Q'
        | b'R'
        | b'a'
        | b'b'
        | b'd'
        | b'}'
        | b'e'
        | b'l'
        | b']'
        | b'o'
        | b's'
        | b't'
        | b')'
        | b'u'
        | 0x81
        | 0x85..=0x89
        | 0x8f
        | 0x90..=0x94
        | 0x97
        | 0x98 => Arg::None,
        b'K' | b'h' | b'q' | 0x80 | 0x82 => Arg::Fixed(1),
        b'M' | 0x83 => Arg::Fixed(2),
        b'J' | b'j' | b'r' | 0x84 => Arg::Fixed(4),
        b'G' | 0x95 => Arg::Fixed(8),
        b'U' | b'C' | 0x8a | 0x8c => Arg::Counted(1),
        b'T' | b'X' | b'B' | 0x8b => Arg::Counted(4),
        0x8d | 0x8e | 0x96 => Arg::Counted(8),
        b'F' | b'I' | b'L' | b'P' | b'S' | b'V' | b'g' | b'p' => Arg::Lines(1),
        b'c' | b'i' => Arg::Lines(2),
        _ => return None,
    })
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |a, &b| a.wrapping_shl(8) | u64::from(b))
}

/// Why the interpreter refuses `module.name` named by `opcode`, or `None` if it accepts it.
fn refusal(
    opcode: &'static str,
    module: &str,
    name: &str,
    limits: &Limits,
) -> Option<&'static str> {
    let allowed = match resolve_global(module, name, limits) {
        Ok(_) => true,
        Err(K::ForbiddenGlobal { .. }) => return Some("not on the allow-list"),
        Err(_) => false,
    };
    match opcode {
        "INST" => Some("named by INST, an opcode that is not accepted"),
        "STACK_GLOBAL" if !limits.allow_protocol4 => {
            Some("named by STACK_GLOBAL, a protocol-4 opcode (allow_protocol4 is off)")
        }
        _ if allowed => None,
        _ => Some("refused"),
    }
}

/// Lists every global the pickle at the start of `data` names, in order of first appearance
/// with a count, and whether the interpreter (under `limits`) accepts it, without running
/// anything. The walk ends at `STOP`, at the end of `data` or of `limits.max_pickle_bytes`, at
/// a byte that is not an opcode, or past [`MAX_LISTED_GLOBALS`] distinct globals.
pub fn list_globals(data: &[u8], limits: &Limits) -> GlobalListing {
    let mut out = GlobalListing::default();
    let mut index = HashMap::new();
    let longest = usize::try_from(limits.max_pickle_bytes).unwrap_or(usize::MAX);
    let cut = data.len() > longest;
    let data = data.get(..longest).unwrap_or(data);
    // The last two values pushed, when they are strings (for STACK_GLOBAL), and memoized
    // strings by memo id (shared, so a string memoized under many ids is held once).
    let mut recent: [Option<Rc<str>>; 2] = [None, None];
    let mut memo: HashMap<u64, Option<Rc<str>>> = HashMap::new();
    let mut pos = 0usize;
    let stop = |out: &mut GlobalListing, why: String| out.stopped = Some(why);
    loop {
        let at = pos;
        let Some(&op) = data.get(pos) else {
            let why = if cut {
                format!(
                    "the pickle is longer than max_pickle_bytes ({longest}); not walked further"
                )
            } else {
                format!("the pickle ends at byte {pos} without STOP")
            };
            stop(&mut out, why);
            return out;
        };
        pos = pos.saturating_add(1);
        let Some(arg) = layout(op) else {
            stop(
                &mut out,
                format!("byte {op:#04x} at {at} is not a pickle opcode"),
            );
            return out;
        };
        let rest = data.get(pos..).unwrap_or(&[]);
        let operand: &[u8] = match arg {
            Arg::None => &[],
            Arg::Fixed(n) => rest.get(..n).unwrap_or(&[]),
            Arg::Counted(w) => {
                let len = rest.get(..w).map(le).and_then(|l| usize::try_from(l).ok());
                match len
                    .and_then(|l| w.checked_add(l))
                    .and_then(|e| rest.get(w..e))
                {
                    Some(b) => {
                        pos = pos.saturating_add(w).saturating_add(b.len());
                        b
                    }
                    None => {
                        stop(
                            &mut out,
                            format!("the operand at byte {at} runs past the end"),
                        );
                        return out;
                    }
                }
            }
            Arg::Lines(n) => {
                let mut end = 0usize;
                for _ in 0..n {
                    match rest
                        .get(end..)
                        .and_then(|r| r.iter().position(|&b| b == b'\n'))
                    {
                        Some(nl) => end = end.saturating_add(nl).saturating_add(1),
                        None => {
                            stop(&mut out, format!("the line at byte {at} has no end"));
                            return out;
                        }
                    }
                }
                rest.get(..end).unwrap_or(&[])
            }
        };
        if let Arg::Fixed(n) = arg {
            if operand.len() != n {
                stop(
                    &mut out,
                    format!("the operand at byte {at} runs past the end"),
                );
                return out;
            }
            pos = pos.saturating_add(n);
        }
        if let Arg::Lines(_) = arg {
            pos = pos.saturating_add(operand.len());
        }
        let mut pushed: Option<Option<Rc<str>>> = None;
        match op {
            b'.' => {
                out.end = Some(pos);
                return out;
            }
            b'c' | b'i' => {
                let text = String::from_utf8_lossy(operand);
                let mut lines = text.split('\n');
                let module = lines.next().unwrap_or("");
                let name = lines.next().unwrap_or("");
                let opcode = if op == b'c' { "GLOBAL" } else { "INST" };
                let refused = refusal(opcode, module, name, limits);
                let global = ListedGlobal {
                    module: listed_name(module),
                    name: listed_name(name),
                    offset: at as u64,
                    count: 1,
                    opcode,
                    refused,
                };
                if !out.add(&mut index, global) {
                    stop(&mut out, too_many(at));
                    return out;
                }
                pushed = Some(None);
            }
            0x93 => {
                let [m, n] = std::mem::take(&mut recent);
                let (module, name, refused) = match (m, n) {
                    (Some(m), Some(n)) => {
                        let r = refusal("STACK_GLOBAL", &m, &n, limits);
                        (m.to_string(), n.to_string(), r)
                    }
                    _ => (
                        "?".to_string(),
                        "?".to_string(),
                        Some("STACK_GLOBAL operands are not string literals"),
                    ),
                };
                let global = ListedGlobal {
                    module,
                    name,
                    offset: at as u64,
                    count: 1,
                    opcode: "STACK_GLOBAL",
                    refused,
                };
                if !out.add(&mut index, global) {
                    stop(&mut out, too_many(at));
                    return out;
                }
                pushed = Some(None);
            }
            b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                let s = (operand.len() <= MAX_NAME)
                    .then(|| std::str::from_utf8(operand).ok().map(Rc::from))
                    .flatten();
                pushed = Some(s);
            }
            b'V' | b'S' => {
                let line = operand.strip_suffix(b"\n").unwrap_or(operand);
                let line = if op == b'S' {
                    line.strip_prefix(b"'")
                        .and_then(|l| l.strip_suffix(b"'"))
                        .unwrap_or(line)
                } else {
                    line
                };
                let s = (line.len() <= MAX_NAME)
                    .then(|| std::str::from_utf8(line).ok().map(Rc::from))
                    .flatten();
                pushed = Some(s);
            }
            b'h' | b'j' => pushed = Some(memo.get(&le(operand)).cloned().flatten()),
            b'g' => {
                let id = std::str::from_utf8(operand)
                    .ok()
                    .and_then(|t| t.trim_end().parse::<u64>().ok());
                pushed = Some(id.and_then(|id| memo.get(&id).cloned().flatten()));
            }
            b'q' | b'r' | b'p' | 0x94 => {
                let id = match op {
                    b'p' => std::str::from_utf8(operand)
                        .ok()
                        .and_then(|t| t.trim_end().parse::<u64>().ok()),
                    0x94 => Some(memo.len() as u64),
                    _ => Some(le(operand)),
                };
                if let Some(id) = id
                    && (memo.len() < limits.max_memo || memo.contains_key(&id))
                {
                    memo.insert(id, recent[1].clone());
                }
            }
            // Opcodes that push nothing, or only pop.
            b'(' | b'0' | b'1' | b'a' | b'b' | b'e' | b's' | b'u' | 0x80 | 0x90 | 0x95 | 0x97
            | 0x98 => {}
            // Everything else pushes one value that is not a string.
            _ => pushed = Some(None),
        }
        if let Some(v) = pushed {
            let [_, last] = std::mem::take(&mut recent);
            recent = [last, v];
        }
    }
}

/// Why a walk stopped listing at byte `at`.
fn too_many(at: usize) -> String {
    format!("more than {MAX_LISTED_GLOBALS} distinct globals; not listed from byte {at} on")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_global_and_says_which_are_refused() {
        let mut p = b"\x80\x02ccollections\nOrderedDict\n)R".to_vec();
        p.extend_from_slice(b"cposix\nsystem\n(X\x02\x00\x00\x00idtR");
        p.extend_from_slice(b"ibuiltins\neval\n");
        p.extend_from_slice(b"\x8c\x02os\x94\x8c\x06system\x94\x93");
        p.extend_from_slice(b"h\x00h\x01\x93");
        p.extend_from_slice(b"N\x93.");
        let l = list_globals(&p, &Limits::default());
        let got: Vec<_> = l
            .globals
            .iter()
            .map(|g| {
                (
                    g.module.as_str(),
                    g.name.as_str(),
                    g.opcode,
                    g.refused.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("collections", "OrderedDict", "GLOBAL", false),
                ("posix", "system", "GLOBAL", true),
                ("builtins", "eval", "INST", true),
                ("os", "system", "STACK_GLOBAL", true),
                ("?", "?", "STACK_GLOBAL", true),
            ]
        );
        let counts: Vec<usize> = l.globals.iter().map(|g| g.count).collect();
        assert_eq!(counts, [1, 1, 1, 2, 1]);
        assert_eq!(l.end, Some(p.len()));
        assert_eq!(l.globals.get(1).map(|g| g.offset), Some(29));
    }

    #[test]
    fn listing_is_bounded() {
        // Distinct globals past the cap stop the walk, with a reason.
        let mut p = b"\x80\x02".to_vec();
        for i in 0..MAX_LISTED_GLOBALS + 5 {
            p.extend_from_slice(format!("cm{i}\nf\n0").as_bytes());
        }
        p.push(b'.');
        let l = list_globals(&p, &Limits::default());
        assert_eq!(l.globals.len(), MAX_LISTED_GLOBALS);
        assert!(
            l.stopped
                .as_deref()
                .is_some_and(|s| s.contains("distinct globals")),
            "{:?}",
            l.stopped
        );
        // One global named a million times is one entry with its count.
        let mut p = b"\x80\x02".to_vec();
        for _ in 0..1_000_000 {
            p.extend_from_slice(b"cposix\nsystem\n0");
        }
        p.push(b'.');
        let l = list_globals(&p, &Limits::default());
        assert_eq!(l.globals.len(), 1);
        assert_eq!(l.globals.first().map(|g| g.count), Some(1_000_000));
        // Long names are cut; a pickle longer than max_pickle_bytes is walked up to it.
        let long = "m".repeat(10_000);
        let p = [b"\x80\x02c", long.as_bytes(), b"\nf\n0."].concat();
        let l = list_globals(&p, &Limits::default());
        assert_eq!(
            l.globals.first().map(|g| g.module.len()),
            Some(MAX_NAME + '…'.len_utf8())
        );
        let limits = Limits {
            max_pickle_bytes: 8,
            ..Limits::default()
        };
        let l = list_globals(b"\x80\x02N0N0N0N0N0.", &limits);
        assert!(
            l.stopped
                .as_deref()
                .is_some_and(|s| s.contains("max_pickle_bytes")),
            "{:?}",
            l.stopped
        );
    }

    #[test]
    fn stops_at_truncation_and_non_opcodes() {
        let l = list_globals(b"\x80\x02cposix\nsys", &Limits::default());
        assert!(l.globals.is_empty() && l.end.is_none() && l.stopped.is_some());
        let l = list_globals(b"\x80\x02X\xff\xff\xff\xff", &Limits::default());
        assert!(l.stopped.is_some());
        let l = list_globals(b"\x80\x02\xff", &Limits::default());
        assert!(l.stopped.is_some_and(|s| s.contains("0xff")));
    }
}
