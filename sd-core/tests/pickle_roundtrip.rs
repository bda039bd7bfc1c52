//! Property test (safe-loading.md §5.6): random nested values written by a small pickle writer
//! for the supported subset (the opcodes CPython's protocol-2 pickler uses for them) come back
//! from the interpreter unchanged, including values shared through the memo.

use sd_core::weights::pickle::{Document, Limits, PersistentIds, Value, unpickle};

/// The value model the writer produces.
#[derive(Debug, Clone, PartialEq)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn gen_value(r: &mut Rng, depth: u32, counter: &mut u64) -> V {
    let leaf = depth == 0 || r.below(3) == 0;
    match if leaf { r.below(5) } else { 5 + r.below(3) } {
        0 => V::None,
        1 => V::Bool(r.below(2) == 1),
        2 => V::Int(match r.below(4) {
            0 => r.below(256) as i64,
            1 => r.below(65536) as i64,
            2 => r.next() as i32 as i64,
            _ => r.next() as i64,
        }),
        3 => V::Float(f64::from_bits(r.next() & !(0x7ff << 52)) * 1e3),
        4 => V::Str(format!("s{}\u{e9}\u{1f600}", r.below(1000))),
        5 => V::Tuple(
            (0..r.below(5))
                .map(|_| gen_value(r, depth - 1, counter))
                .collect(),
        ),
        6 => V::List(
            (0..r.below(5))
                .map(|_| gen_value(r, depth - 1, counter))
                .collect(),
        ),
        _ => V::Dict(
            (0..r.below(5))
                .map(|_| {
                    *counter += 1;
                    let key = if r.below(2) == 0 {
                        V::Str(format!("k{counter}"))
                    } else {
                        V::Int(*counter as i64)
                    };
                    (key, gen_value(r, depth - 1, counter))
                })
                .collect(),
        ),
    }
}

struct Writer {
    out: Vec<u8>,
    memo: u32,
}

impl Writer {
    fn put(&mut self) -> u32 {
        let id = self.memo;
        self.memo += 1;
        if id < 256 {
            self.out.extend_from_slice(&[b'q', id as u8]);
        } else {
            self.out.push(b'r');
            self.out.extend_from_slice(&id.to_le_bytes());
        }
        id
    }

    fn write(&mut self, v: &V) {
        match v {
            V::None => self.out.push(b'N'),
            V::Bool(b) => self.out.push(if *b { 0x88 } else { 0x89 }),
            V::Int(i) => {
                if (0..256).contains(i) {
                    self.out.extend_from_slice(&[b'K', *i as u8]);
                } else if (0..65536).contains(i) {
                    self.out.push(b'M');
                    self.out.extend_from_slice(&(*i as u16).to_le_bytes());
                } else if let Ok(x) = i32::try_from(*i) {
                    self.out.push(b'J');
                    self.out.extend_from_slice(&x.to_le_bytes());
                } else {
                    self.out.extend_from_slice(&[0x8a, 8]);
                    self.out.extend_from_slice(&i.to_le_bytes());
                }
            }
            V::Float(f) => {
                self.out.push(b'G');
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            V::Str(s) => {
                self.out.push(b'X');
                self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                self.out.extend_from_slice(s.as_bytes());
                self.put();
            }
            V::Tuple(items) => {
                match items.len() {
                    0 => self.out.push(b')'),
                    n @ 1..=3 => {
                        for it in items {
                            self.write(it);
                        }
                        self.out.push(0x84 + n as u8);
                    }
                    _ => {
                        self.out.push(b'(');
                        for it in items {
                            self.write(it);
                        }
                        self.out.push(b't');
                    }
                }
                self.put();
            }
            V::List(items) => {
                self.out.push(b']');
                self.put();
                if !items.is_empty() {
                    self.out.push(b'(');
                    for it in items {
                        self.write(it);
                    }
                    self.out.push(b'e');
                }
            }
            V::Dict(entries) => {
                self.out.push(b'}');
                self.put();
                if !entries.is_empty() {
                    self.out.push(b'(');
                    for (k, v) in entries {
                        self.write(k);
                        self.write(v);
                    }
                    self.out.push(b'u');
                }
            }
        }
    }
}

fn same(doc: &Document, got: Value, want: &V) -> bool {
    match (got, want) {
        (Value::None, V::None) => true,
        (Value::Bool(a), V::Bool(b)) => a == *b,
        (Value::Int(a), V::Int(b)) => a == *b,
        (Value::Float(a), V::Float(b)) => a.to_bits() == b.to_bits(),
        (Value::Str(_), V::Str(b)) => doc.str(got) == Some(b.as_str()),
        (Value::Tuple(_), V::Tuple(b)) => doc
            .tuple(got)
            .is_some_and(|a| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(doc, *x, y))),
        (Value::List(_), V::List(b)) => doc
            .list(got)
            .is_some_and(|a| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(doc, *x, y))),
        (Value::Dict(_), V::Dict(b)) => doc.dict(got).is_some_and(|a| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| same(doc, *ka, kb) && same(doc, *va, vb))
        }),
        _ => false,
    }
}

#[test]
fn random_nested_values_round_trip() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut counter = 0;
    for case in 0..500 {
        let v = gen_value(&mut r, 6, &mut counter);
        let mut w = Writer {
            out: vec![0x80, 2],
            memo: 0,
        };
        w.write(&v);
        w.out.push(b'.');
        let doc = unpickle(&w.out, &Limits::default(), PersistentIds::Forbidden, 0)
            .unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert!(same(&doc, doc.root(), &v), "case {case}: {v:?}");
    }
}

#[test]
fn memo_aliases_see_later_mutation() {
    // l = []; d = {'a': l, 'b': l}; then l.append(1) through the memo, and return (d, l):
    // both entries of d see the append, as in CPython.
    let p = [
        &[
            0x80, 2, b'}', b'q', 0, b'(', b'X', 1, 0, 0, 0, b'a', b']', b'q', 1,
        ][..],
        &[b'X', 1, 0, 0, 0, b'b', b'h', 1, b'u'],
        &[b'h', 1, b'K', 1, b'a', 0x86, b'.'],
    ]
    .concat();
    let doc = unpickle(&p, &Limits::default(), PersistentIds::Forbidden, 0).expect("valid");
    let pair = doc.tuple(doc.root()).expect("tuple");
    let d = pair[0];
    let a = doc.dict_get(d, "a").expect("a");
    let b = doc.dict_get(d, "b").expect("b");
    assert_eq!(a, b, "one object, two aliases");
    assert_eq!(doc.list(a).map(<[_]>::len), Some(1));
}
