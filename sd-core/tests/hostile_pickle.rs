//! Hostile inputs of safe-loading.md §3 (pickle VM, zip container, legacy container,
//! cross-cutting rows): every file is assembled here byte by byte, and every test asserts
//!
//! * the specific error (kind, and the refused name or offset where the row says so);
//! * no panic (a panic fails the test);
//! * no code ran: payloads that would create a canary file leave it absent;
//! * bounded memory: a counting global allocator measures the peak heap of each run, which
//!   must stay under `MEMORY_FACTOR × input bytes + MEMORY_SLACK` (the documented bound);
//! * bounded time: each run under `TIME_LIMIT`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sd_core::Error;
use sd_core::weights::TensorSource;
use sd_core::weights::ckpt::{CkptFile, CkptFormat, ContainerFormat, sniff};
use sd_core::weights::pickle::{
    Document, Format, Limits, LoadError, LoadErrorKind as K, Location, PersistentIds, ZipProblem,
    unpickle,
};

// === the counting allocator ===

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Measured runs are serialised so that one test's allocations do not count against another.
static LOCK: Mutex<()> = Mutex::new(());
/// Peak heap of one run ≤ `MEMORY_FACTOR × input + MEMORY_SLACK`.
const MEMORY_FACTOR: usize = 64;
const MEMORY_SLACK: usize = 4 << 20;
const TIME_LIMIT: Duration = Duration::from_secs(3);

/// Runs `f` on an input of `len` bytes and asserts the memory and time bounds.
fn bounded<T>(what: &str, len: usize, f: impl FnOnce() -> T) -> T {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    let out = f();
    let elapsed = t.elapsed();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let bound = MEMORY_FACTOR * len + MEMORY_SLACK;
    assert!(
        peak <= bound,
        "{what}: peak heap {peak} bytes > bound {bound} for {len} input bytes"
    );
    eprintln!("{what}: {len} input bytes, peak heap {peak} bytes, {elapsed:?}");
    assert!(elapsed < TIME_LIMIT, "{what}: took {elapsed:?}");
    out
}

// === pickle assembly ===

const PROTO2: &[u8] = &[0x80, 2];

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn glob(m: &str, n: &str) -> Vec<u8> {
    format!("c{m}\n{n}\n").into_bytes()
}

fn s(x: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(x.len() as u32).to_le_bytes());
    v.extend_from_slice(x.as_bytes());
    v
}

fn int(i: i32) -> Vec<u8> {
    let mut v = vec![b'J'];
    v.extend_from_slice(&i.to_le_bytes());
    v
}

fn long1(i: i64) -> Vec<u8> {
    let mut v = vec![0x8a, 8];
    v.extend_from_slice(&i.to_le_bytes());
    v
}

fn tuple_of_ints(xs: &[i64]) -> Vec<u8> {
    let mut v = vec![b'('];
    for &x in xs {
        v.extend(long1(x));
    }
    v.push(b't');
    v
}

/// `('storage', torch.<ty>, key, 'cpu', numel)` then BINPERSID.
fn storage(ty: &str, key: &str, numel: i64) -> Vec<u8> {
    cat(&[
        b"(",
        &s("storage"),
        &glob("torch", ty),
        &s(key),
        &s("cpu"),
        &long1(numel),
        b"tQ",
    ])
}

fn ordered_dict() -> Vec<u8> {
    cat(&[&glob("collections", "OrderedDict"), b")R"])
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
fn tensor(st: &[u8], offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    cat(&[
        &glob("torch._utils", "_rebuild_tensor_v2"),
        b"(",
        st,
        &long1(offset),
        &tuple_of_ints(size),
        &tuple_of_ints(stride),
        &[0x89],
        &ordered_dict(),
        b"tR",
    ])
}

/// `{name: value}` as a whole pickle.
fn dict1(name: &str, value: &[u8]) -> Vec<u8> {
    cat(&[PROTO2, b"}(", &s(name), value, b"u."])
}

fn limits() -> Limits {
    Limits::default()
}

fn vm(p: &[u8]) -> Result<Document, LoadError> {
    unpickle(p, &limits(), PersistentIds::Zip, 1 << 30)
}

fn vm_err(what: &str, p: &[u8]) -> LoadError {
    match bounded(what, p.len(), || vm(p)) {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => e,
    }
}

// === zip assembly (STORED, like torch.save) ===

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = u32::MAX;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

struct Rec {
    name: String,
    data: Vec<u8>,
    method: u16,
    flags: u16,
    crc: Option<u32>,
    size: Option<u32>,
    local_name: Option<String>,
}

fn rec(name: &str, data: &[u8]) -> Rec {
    Rec {
        name: name.to_string(),
        data: data.to_vec(),
        method: 0,
        flags: 0x0800,
        crc: None,
        size: None,
        local_name: None,
    }
}

/// Writes a zip; `extra_central` adds central entries `(name, local offset, size)` with no
/// local header of their own (for overlap tests).
fn zip_with(recs: &[Rec], extra_central: &[(String, u32, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut count = 0u16;
    for r in recs {
        let off = out.len() as u32;
        let lname = r.local_name.as_deref().unwrap_or(&r.name);
        let crc = r.crc.unwrap_or_else(|| crc32(&r.data));
        let size = r.size.unwrap_or(r.data.len() as u32);
        // STORED entries declare one size; compressed ones keep their real compressed size.
        let comp = if r.method == 0 {
            size
        } else {
            r.data.len() as u32
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&r.flags.to_le_bytes());
        out.extend_from_slice(&r.method.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&comp.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(lname.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(lname.as_bytes());
        out.extend_from_slice(&r.data);
        central.push((r.name.clone(), off, comp, size, crc, r.method, r.flags));
        count += 1;
    }
    for (n, off, size) in extra_central {
        central.push((n.clone(), *off, *size, *size, 0, 0, 0x0800));
        count += 1;
    }
    let cd_start = out.len() as u32;
    for (name, off, comp, size, crc, method, flags) in &central {
        out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&comp.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 4]); // extra, comment lengths
        out.extend_from_slice(&[0; 8]); // disk, attributes
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    let cd_size = out.len() as u32 - cd_start;
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_start.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A minimal torch-like zip around `pkl` and `storages`.
fn torch_zip(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut recs = vec![rec("archive/data.pkl", pkl)];
    for (k, d) in storages {
        recs.push(rec(&format!("archive/data/{k}"), d));
    }
    recs.push(rec("archive/version", b"3\n"));
    recs.push(rec("archive/byteorder", b"little"));
    zip_with(&recs, &[])
}

fn open(bytes: Vec<u8>) -> Result<CkptFile, LoadError> {
    open_with(bytes, &limits())
}

fn open_with(bytes: Vec<u8>, l: &Limits) -> Result<CkptFile, LoadError> {
    let len = bytes.len();
    bounded("open", len, || match CkptFile::from_bytes(bytes, l) {
        Ok(c) => Ok(c),
        Err(Error::Checkpoint { source, .. }) => Err(*source),
        Err(e) => panic!("unexpected error type: {e}"),
    })
}

fn open_err(bytes: Vec<u8>) -> LoadError {
    match open(bytes) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    }
}

/// Runs a pickle raw through the VM and as `data.pkl` in a zip; both must fail the same way.
fn both(what: &str, pkl: &[u8]) -> LoadError {
    let raw = vm_err(what, pkl);
    let zipped = open_err(torch_zip(pkl, &[]));
    assert_eq!(raw.kind, zipped.kind, "{what}: raw and zipped differ");
    raw
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

fn canary(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sdrs_canary_{}_{tag}", std::process::id()))
}

// === P: the pickle VM ===

#[test]
fn p01_reduce_of_posix_system_is_refused_at_its_global() {
    let c = canary("p01");
    let _ = std::fs::remove_file(&c);
    let cmd = format!("touch {}", c.display());
    for (m, n) in [("posix", "system"), ("os", "system"), ("nt", "system")] {
        let p = cat(&[PROTO2, &glob(m, n), b"(", &s(&cmd), b"tR."]);
        let e = both("P1", &p);
        assert_eq!(
            e.kind,
            K::ForbiddenGlobal {
                module: m.into(),
                name: n.into()
            }
        );
        assert_eq!(
            e.at,
            Some(Location::PickleOp {
                pickle: "data.pkl",
                offset: 2
            })
        );
        assert!(e.to_string().contains(&format!("{m}.{n}")), "{e}");
    }
    assert!(!c.exists(), "payload ran");
}

#[test]
fn p02_dangerous_globals_are_refused() {
    let c = canary("p02");
    let names = [
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("__builtin__", "getattr"),
        ("builtins", "bytearray"),
        ("pkgutil", "resolve_name"),
        ("importlib", "import_module"),
        ("torch", "load"),
        ("numpy.f2py", "compile"),
        ("subprocess", "Popen"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch._utils", "_rebuild_sparse_tensor"),
        ("torch", "Size"),
        ("torch", "device"),
        ("collections", "Counter"),
        ("builtins", "complex"),
        ("os.path", "join"),
        ("sys", "modules"),
    ];
    for (m, n) in names {
        // bytearray(1 << 40) would ask for a terabyte if the call were made.
        let p = cat(&[PROTO2, &glob(m, n), &long1(1 << 40), &[0x85], b"R."]);
        let e = both("P2", &p);
        assert_eq!(
            e.kind,
            K::ForbiddenGlobal {
                module: m.into(),
                name: n.into()
            },
            "{m}.{n}"
        );
    }
    assert!(!c.exists());
}

#[test]
fn p03_allowed_callables_with_wrong_arguments() {
    let od_list = cat(&[
        PROTO2,
        &glob("collections", "OrderedDict"),
        b"](",
        &s("a"),
        &int(1),
        &[0x86],
        b"e",
        &[0x85],
        b"R.",
    ]);
    let enc = |txt: &str, codec: &str| {
        cat(&[
            PROTO2,
            &glob("_codecs", "encode"),
            &s(txt),
            &s(codec),
            &[0x86],
            b"R.",
        ])
    };
    let set5 = cat(&[PROTO2, &glob("__builtin__", "set"), &int(5), &[0x85], b"R."]);
    for (what, p) in [
        ("OrderedDict(list)", od_list),
        ("encode(U+0100)", enc("\u{100}", "latin1")),
        ("encode rot13", enc("x", "rot13")),
        ("set(5)", set5),
    ] {
        let e = both(what, &p);
        assert!(matches!(e.kind, K::BadArgs { .. }), "{what}: {e}");
    }
    // And the valid forms work.
    let ok = vm(&enc("\u{ff}a", "latin1")).expect("latin1 bytes");
    assert_eq!(ok.bytes(ok.root()), Some(&[0xff, b'a'][..]));
}

#[test]
fn p04_stack_global_is_off_by_default_and_checked_when_on() {
    let p = cat(&[
        PROTO2,
        &s("posix"),
        b"q\x00",
        &s("system"),
        b"q\x01",
        b"h\x00h\x01",
        &[0x93],
        b".",
    ]);
    let e = both("P4", &p);
    assert_eq!(e.kind, K::UnsupportedOpcode { op: 0x93 });
    // The message names the opcode and the switch that accepts it.
    let msg = e.to_string();
    assert!(
        msg.contains("0x93 (STACK_GLOBAL, written from pickle protocol 4 on")
            && msg.contains("allow_protocol4"),
        "{msg}"
    );
    // A bytes value of a protocol-3 pickle belongs to the same optional tier, named as such.
    let e = both("P4 bytes", b"\x80\x03C\x01x.");
    assert!(
        e.to_string()
            .contains("0x43 (SHORT_BINBYTES, written from pickle protocol 3 on"),
        "{e}"
    );
    let l = Limits {
        allow_protocol4: true,
        ..Limits::default()
    };
    let e = unpickle(&p, &l, PersistentIds::Zip, 0).expect_err("refused");
    assert_eq!(
        e.kind,
        K::ForbiddenGlobal {
            module: "posix".into(),
            name: "system".into()
        }
    );
}

#[test]
fn p05_opcodes_outside_the_set() {
    for op in [
        b'i', b'o', 0x92, 0x82, 0x83, 0x84, b'P', b'2', b'0', b'1', b'p', b'g', b'd', b'l', b'I',
        b'L', b'F', b'S', b'V', b'T', 0x8b, 0x8d, 0x8e, 0x90, 0x91, 0x96, 0x97, 0x98, 0xff,
    ] {
        let p = cat(&[PROTO2, b"N", &[op], b"0\n."]);
        let e = both("P5", &p);
        assert_eq!(e.kind, K::UnsupportedOpcode { op }, "op {op:#x}");
        assert_eq!(
            e.at,
            Some(Location::PickleOp {
                pickle: "data.pkl",
                offset: 3
            })
        );
    }
}

#[test]
fn p06_newobj_of_tensor_is_refused() {
    let p = cat(&[PROTO2, &glob("torch", "Tensor"), b")", &[0x81], b"N", b"b."]);
    let e = both("P6", &p);
    assert!(matches!(e.kind, K::ForbiddenNewObj { .. }), "{e}");
}

#[test]
fn p07_build_on_forbidden_targets() {
    let t = tensor(&storage("FloatStorage", "0", 4), 0, &[4], &[1]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("tensor", cat(&[PROTO2, &t, b"}b."]), "tensor"),
        ("list", cat(&[PROTO2, b"]}b."]), "list"),
        (
            "global",
            cat(&[PROTO2, &glob("collections", "OrderedDict"), b"}b."]),
            "global",
        ),
        (
            "storage",
            cat(&[PROTO2, &storage("FloatStorage", "0", 4), b"}b."]),
            "storage",
        ),
    ];
    for (what, p, target) in cases {
        let e = vm_err(what, &p);
        assert_eq!(e.kind, K::ForbiddenBuild { target }, "{what}");
    }
}

#[test]
fn p08_setitem_and_append_type_checks() {
    let t = tensor(&storage("FloatStorage", "0", 4), 0, &[4], &[1]);
    let st = storage("FloatStorage", "0", 4);
    for (what, target) in [("tuple", b")".to_vec()), ("tensor", t), ("storage", st)] {
        let p = cat(&[PROTO2, &target, &s("k"), &s("v"), b"s."]);
        let e = vm_err(what, &p);
        assert!(
            matches!(e.kind, K::TypeMismatch { op: "SETITEM", .. }),
            "{what}: {e}"
        );
        let p = cat(&[PROTO2, &target, b"(", &s("k"), &s("v"), b"u."]);
        let e = vm_err(what, &p);
        assert!(matches!(e.kind, K::TypeMismatch { .. }), "{what}: {e}");
    }
    let e = both("append on dict", &cat(&[PROTO2, b"}Na."]));
    assert!(
        matches!(e.kind, K::TypeMismatch { op: "APPEND", .. }),
        "{e}"
    );
}

#[test]
fn p09_bad_persistent_ids() {
    let fs = glob("torch", "FloatStorage");
    let cases: Vec<Vec<u8>> = vec![
        cat(&[PROTO2, b"NQ."]),
        cat(&[PROTO2, b"(", &s("module"), &fs, &s("x"), &s("y"), b"tQ."]),
        cat(&[
            PROTO2,
            b"(",
            &s("storage"),
            &fs,
            &s("../x"),
            &s("cpu"),
            &int(4),
            b"tQ.",
        ]),
        cat(&[
            PROTO2,
            b"(",
            &s("storage"),
            &fs,
            &s("1/2"),
            &s("cpu"),
            &int(4),
            b"tQ.",
        ]),
        cat(&[PROTO2, b"(", &s("storage"), &fs, &s("0"), &s("cpu"), b"tQ."]),
        cat(&[
            PROTO2,
            b"(",
            &s("storage"),
            &fs,
            &s("0"),
            &s("cpu"),
            &int(4),
            b"NNtQ.",
        ]),
        cat(&[
            PROTO2,
            b"(",
            &s("storage"),
            &s("torch.FloatStorage"),
            &s("0"),
            &s("cpu"),
            &int(4),
            b"tQ.",
        ]),
    ];
    for p in cases {
        let e = both("P9", &p);
        assert!(matches!(e.kind, K::BadPersistentId(_)), "{e}");
    }
}

#[test]
fn p10_storage_record_size_must_match() {
    let p = dict1(
        "w",
        &tensor(&storage("FloatStorage", "0", 4), 0, &[4], &[1]),
    );
    for n in [3, 5] {
        let e = open_err(torch_zip(&p, &[("0", &f32_bytes(n))]));
        assert_eq!(
            e.kind,
            K::StorageSizeMismatch {
                key: "0".into(),
                declared: 16,
                actual: 4 * n as u64
            }
        );
    }
    let ok = open(torch_zip(&p, &[("0", &f32_bytes(4))])).expect("valid");
    assert_eq!(ok.read_f32("w").expect("read"), vec![0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn p11_numel_times_itemsize_overflow() {
    let p = dict1(
        "w",
        &tensor(
            &storage("FloatStorage", "0", 0x4000_0000_0000_0001),
            0,
            &[1],
            &[1],
        ),
    );
    let e = both("P11", &p);
    assert!(matches!(e.kind, K::LimitExceeded { .. }), "{e}");
}

#[test]
fn p12_views_outside_their_storage() {
    for (size, stride, offset) in [
        (vec![3, 4], vec![4, 1], 0),
        (vec![1], vec![1], 11),
        (vec![2], vec![1i64 << 40], 0),
    ] {
        let p = dict1(
            "w",
            &tensor(&storage("FloatStorage", "0", 11), offset, &size, &stride),
        );
        let e = both("P12", &p);
        // Named by the key it is stored under, located at the REDUCE that built the view
        // (PROTO, EMPTY_DICT, MARK, the key string "w" = 2 + 1 + 1 + 6 bytes, then the
        // GLOBAL line, the MARK and the storage's persistent id before it).
        assert_eq!(
            e.kind,
            K::TensorOutOfBounds {
                name: Some("w".into())
            },
            "{size:?} {stride:?}"
        );
        assert!(e.to_string().contains("tensor `w` reaches outside"), "{e}");
        let Some(Location::PickleOp { offset, .. }) = e.at else {
            panic!("no pickle offset: {e}");
        };
        let reduce = p.len() - 3; // `R`, then `u` and `.`
        assert_eq!(offset as usize, reduce, "{e}");
    }
    // A view never stored under a key (here: the root itself) is refused at STOP, unnamed,
    // located at the opcode that built it.
    let st = storage("FloatStorage", "0", 11);
    let p = cat(&[PROTO2, &tensor(&st, 0, &[12], &[1]), b"."]);
    let e = both("P12 root", &p);
    assert_eq!(e.kind, K::TensorOutOfBounds { name: None });
    assert_eq!(
        e.at,
        Some(Location::PickleOp {
            pickle: "data.pkl",
            offset: (p.len() - 2) as u64
        })
    );
    // Inside a list, too: the document never escapes with a bad view in it.
    let p = cat(&[PROTO2, b"](", &tensor(&st, 5, &[7], &[1]), b"e."]);
    let e = both("P12 list", &p);
    assert_eq!(e.kind, K::TensorOutOfBounds { name: None });
}

#[test]
fn p13_stride_zero_amplification() {
    let p = dict1(
        "w",
        &tensor(
            &storage("FloatStorage", "0", 1),
            0,
            &[65536, 65536],
            &[0, 0],
        ),
    );
    let e = both("P13", &p);
    assert_eq!(
        e.kind,
        K::ExpandedView {
            name: Some("w".into())
        }
    );
    assert!(
        e.to_string()
            .starts_with("tensor `w` has overlapping/expanded strides"),
        "{e}"
    );
    // Reported at the REDUCE that built the view (the pickle ends `tR` `u.`), as an
    // out-of-bounds view is.
    assert_eq!(
        e.at,
        Some(Location::PickleOp {
            pickle: "data.pkl",
            offset: (p.len() - 3) as u64
        })
    );
    // Not stored under a key (in a list): refused at STOP, without a name.
    let st = storage("FloatStorage", "0", 1);
    let p = cat(&[PROTO2, b"](", &tensor(&st, 0, &[4, 4], &[0, 0]), b"e."]);
    assert_eq!(both("P13 list", &p).kind, K::ExpandedView { name: None });
}

#[test]
fn p14_negative_and_huge_integers() {
    let st = storage("FloatStorage", "0", 4);
    for t in [
        tensor(&st, -1, &[1], &[1]),
        tensor(&st, 0, &[-1], &[1]),
        tensor(&st, 0, &[2], &[-1]),
    ] {
        let e = both("P14", &dict1("w", &t));
        assert!(matches!(e.kind, K::BadArgs { .. }), "{e}");
    }
    let mut huge = vec![0x8a, 9];
    huge.extend_from_slice(&[0xff; 9]);
    let e = both("P14 long", &cat(&[PROTO2, &huge, b"."]));
    assert_eq!(e.kind, K::IntegerTooLarge);
}

#[test]
fn p15_storage_conflicts() {
    let a = tensor(&storage("FloatStorage", "0", 4), 0, &[4], &[1]);
    for other in [
        tensor(&storage("HalfStorage", "0", 4), 0, &[4], &[1]),
        tensor(&storage("FloatStorage", "0", 8), 0, &[4], &[1]),
    ] {
        let p = cat(&[PROTO2, b"}(", &s("a"), &a, &s("b"), &other, b"u."]);
        let e = both("P15", &p);
        assert_eq!(e.kind, K::StorageConflict { key: "0".into() });
    }
}

#[test]
fn p16_a_million_tuple1_stops_at_the_depth_limit() {
    let mut p = cat(&[PROTO2, b"N"]);
    p.extend(std::iter::repeat_n(0x85, 1_000_000));
    p.push(b'.');
    let e = both("P16", &p);
    assert_eq!(
        e.kind,
        K::LimitExceeded {
            limit: "max_depth",
            value: 257
        }
    );
}

#[test]
fn p17_memo_doubling_dag_is_linear() {
    // x_i = (x_{i-1}, x_{i-1}): 2^64 paths, 64 objects.
    // Each level: the previous value is on the stack; fetch it again from the memo and pair.
    let mut v = cat(&[b"N", b"r", &0u32.to_le_bytes()]);
    for i in 1..=64u32 {
        v.extend_from_slice(b"j");
        v.extend_from_slice(&(i - 1).to_le_bytes());
        v.push(0x86);
        v.push(b'r');
        v.extend_from_slice(&i.to_le_bytes());
    }
    let p = dict1("w", &v);
    let ck = open(torch_zip(&p, &[])).expect("accepted");
    assert!(ck.tensor_names().is_empty());
    assert_eq!(ck.state_dict().ignored, 1);
    assert!(ck.document().object_count() < 100);
}

#[test]
fn p18_string_length_beyond_the_input_is_truncated_without_allocating() {
    let p = cat(&[PROTO2, b"X", &0xffff_fff0u32.to_le_bytes(), b"abc"]);
    let e = both("P18", &p);
    assert_eq!(e.kind, K::Truncated);
}

#[test]
fn p19_long1_longer_than_8_bytes() {
    for n in [40u8, 255] {
        let mut p = cat(&[PROTO2, &[0x8a, n]]);
        p.extend(std::iter::repeat_n(1u8, usize::from(n)));
        p.push(b'.');
        assert_eq!(both("P19", &p).kind, K::IntegerTooLarge);
    }
}

#[test]
fn p20_global_lines() {
    let mut p = cat(&[PROTO2, b"c"]);
    p.extend(std::iter::repeat_n(b'a', 64 << 20));
    let e = vm_err("P20 64 MiB line", &p);
    assert!(matches!(e.kind, K::Malformed(_)), "{e}");
    for line in [
        &b"os\r\nsystem\n"[..],
        b"o\0s\nsystem\n",
        "os\u{e9}\nsystem\n".as_bytes(),
        b"\nsystem\n",
    ] {
        let p = cat(&[PROTO2, b"c", line, b"."]);
        let e = both("P20", &p);
        assert!(matches!(e.kind, K::Malformed(_)), "{e}");
    }
}

#[test]
fn p21_memo_ids_are_sparse_and_bounded() {
    let mut p = cat(&[PROTO2, b"Nr"]);
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    p.push(b'j');
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    p.extend_from_slice(&[0x86, b'.']);
    let doc = bounded("P21", p.len(), || vm(&p)).expect("sparse memo id");
    assert_eq!(doc.tuple(doc.root()).map(<[_]>::len), Some(2));
    // More distinct ids than the limit.
    let l = Limits {
        max_memo: 1000,
        ..Limits::default()
    };
    let mut p = cat(&[PROTO2, b"N"]);
    for i in 0..1001u32 {
        p.push(b'r');
        p.extend_from_slice(&i.to_le_bytes());
    }
    p.push(b'.');
    let e = unpickle(&p, &l, PersistentIds::Zip, 0).expect_err("limit");
    assert!(matches!(
        e.kind,
        K::LimitExceeded {
            limit: "max_memo",
            ..
        }
    ));
}

#[test]
fn p22_structural_errors() {
    let cases: Vec<(&[u8], K)> = vec![
        (b"h\x05.", K::MissingMemo(5)),
        (b"(N\x86.", K::StackUnderflow),
        (
            b"}(NNNu.",
            K::Malformed("SETITEMS with an odd number of items"),
        ),
        (b"N(.", K::Malformed("STOP with an open MARK")),
        (
            b".",
            K::Malformed("STOP needs exactly one value on the stack"),
        ),
        (
            b"NN.",
            K::Malformed("STOP needs exactly one value on the stack"),
        ),
        (b"N", K::Truncated),
        (b"}", K::Truncated),
    ];
    for (body, kind) in cases {
        let p = cat(&[PROTO2, body]);
        assert_eq!(both("P22", &p).kind, kind, "{body:?}");
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/ckpt")
        .join(name)
}

#[test]
fn p23_truncation_and_byte_flip_sweep_never_panics() {
    let pkl = std::fs::read(fixture("sd_zip.data.pkl")).expect("fixture");
    let l = limits();
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let full = unpickle(&pkl, &l, PersistentIds::Zip, 1 << 30).expect("the fixture loads");
    assert!(!full.tensors.is_empty());
    for cut in 0..pkl.len() {
        assert!(unpickle(&pkl[..cut], &l, PersistentIds::Zip, 1 << 30).is_err());
    }
    let mut m = pkl.clone();
    for i in 0..m.len() {
        for x in [0x01u8, 0x80, 0xff] {
            m[i] ^= x;
            let _ = unpickle(&m, &l, PersistentIds::Zip, 1 << 30);
            m[i] ^= x;
        }
    }
    // Whole-file sweeps through the containers.
    for f in ["sd_zip.ckpt", "sd_legacy.ckpt"] {
        let bytes = std::fs::read(fixture(f)).expect("fixture");
        for cut in 0..bytes.len() {
            assert!(
                CkptFile::from_bytes(bytes[..cut].to_vec(), &l).is_err(),
                "{f} cut {cut}"
            );
        }
        let mut m = bytes.clone();
        for i in 0..m.len() {
            m[i] ^= 0x5a;
            let _ = CkptFile::from_bytes(m.clone(), &l);
            m[i] ^= 0x5a;
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "sweep took {:?}",
        t.elapsed()
    );
}

#[test]
fn p24_trailing_bytes_after_stop() {
    let e = both("P24", &cat(&[PROTO2, b"N.N"]));
    assert_eq!(e.kind, K::TrailingData);
}

#[test]
fn p25_cycles_terminate() {
    let list_cycle = dict1("w", b"]q\x00h\x00a");
    let ck = open(torch_zip(&list_cycle, &[])).expect("accepted");
    assert!(ck.tensor_names().is_empty());
    // A dict containing itself, and one containing a tensor plus itself.
    let t = tensor(&storage("FloatStorage", "0", 2), 0, &[2], &[1]);
    let p = cat(&[PROTO2, b"}q\x00(", &s("self"), b"h\x00", &s("w"), &t, b"u."]);
    let ck = open(torch_zip(&p, &[("0", &f32_bytes(2))])).expect("accepted");
    assert_eq!(ck.tensor_names(), vec!["w".to_string()]);
    let p = cat(&[
        PROTO2,
        b"}q\x00(",
        &s("a"),
        b"}q\x01(",
        &s("b"),
        b"h\x00u",
        &s("w"),
        &t,
        b"u.",
    ]);
    let ck = open(torch_zip(&p, &[("0", &f32_bytes(2))])).expect("accepted");
    assert_eq!(ck.tensor_names(), vec!["w".to_string()]);
}

#[test]
fn p25b_a_dict_shared_under_several_keys_gives_every_path() {
    // sd = {"w": tensor, "inner": {"b": tensor}}; torch.save({"enc": sd, "dec": sd}): the second
    // reference is a BINGET of the memoized dict, and torch.load gives both paths.
    let t = tensor(&storage("FloatStorage", "0", 2), 0, &[2], &[1]);
    let sd = cat(&[
        b"}q\x01(",
        &s("w"),
        &t,
        &s("inner"),
        b"}(",
        &s("b"),
        &t,
        b"uu",
    ]);
    let p = cat(&[PROTO2, b"}(", &s("enc"), &sd, &s("dec"), b"h\x01u."]);
    let ck = open(torch_zip(&p, &[("0", &f32_bytes(2))])).expect("accepted");
    assert_eq!(
        ck.tensor_names(),
        ["enc.w", "enc.inner.b", "dec.w", "dec.inner.b"]
    );
    for name in ck.tensor_names() {
        assert_eq!(ck.read_f32(&name).expect("read"), [0.0, 1.0], "{name}");
    }
    // The same under a Lightning-style `state_dict` entry, with one dict shared three levels
    // down and at the top.
    let p = cat(&[
        PROTO2,
        b"}(",
        &s("state_dict"),
        b"}(",
        &s("model"),
        &sd,
        &s("model_ema"),
        b"}(",
        &s("copy"),
        b"h\x01uu",
        &s("global_step"),
        &int(7),
        b"u.",
    ]);
    let ck = open(torch_zip(&p, &[("0", &f32_bytes(2))])).expect("accepted");
    assert_eq!(
        ck.tensor_names(),
        [
            "model.w",
            "model.inner.b",
            "model_ema.copy.w",
            "model_ema.copy.inner.b"
        ]
    );
    assert_eq!(
        ck.metadata().get("global_step").map(String::as_str),
        Some("7")
    );
}

#[test]
fn p25c_shared_dict_paths_are_bounded() {
    // d_0 = {"w": tensor}; d_i = {"a": d_{i-1}, "b": d_{i-1}}: 2^64 paths in ~1 KB.
    let t = tensor(&storage("FloatStorage", "0", 2), 0, &[2], &[1]);
    // Written as CPython would: d_i = `}` BINPUT i `(` "a" <d_{i-1}> "b" BINGET i-1 `u`.
    let mut v = cat(&[b"}r", &0u32.to_le_bytes(), b"(", &s("w"), &t, b"u"]);
    for i in 1..=64u32 {
        v = cat(&[
            b"}r",
            &i.to_le_bytes(),
            b"(",
            &s("a"),
            &v,
            &s("b"),
            b"j",
            &(i - 1).to_le_bytes(),
            b"u",
        ]);
    }
    let p = dict1("m", &v);
    let e = open_err(torch_zip(&p, &[("0", &f32_bytes(2))]));
    assert!(
        matches!(
            e.kind,
            K::LimitExceeded {
                limit: "max_state_dict_entries" | "max_name_bytes",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("counts once per key"), "{e}");
    // The entry limit itself, with a generous name budget.
    let l = Limits {
        max_name_bytes: Some(1 << 30),
        max_state_dict_entries: 10_000,
        ..limits()
    };
    let e = open_with(torch_zip(&p, &[("0", &f32_bytes(2))]), &l).expect_err("refused");
    assert_eq!(
        e.kind,
        K::LimitExceeded {
            limit: "max_state_dict_entries",
            value: 10_001
        }
    );
    // Long names without any sharing: one dict under a 60 000-byte key holding 200 000 keys
    // that all name one tensor (9 bytes of pickle each) would flatten to 12 GB of names.
    let mut p = cat(&[PROTO2, b"}(", &s(&"p".repeat(60_000)), b"}"]);
    p.extend(cat(&[&s("w0"), &t, b"q\x02s"]));
    for batch in 0..200 {
        p.push(b'(');
        for i in 0..1000 {
            p.extend(s(&format!("{:x}", batch * 1000 + i + 1)));
            p.extend_from_slice(b"h\x02");
        }
        p.push(b'u');
    }
    p.extend_from_slice(b"u.");
    let e = open_err(torch_zip(&p, &[("0", &f32_bytes(2))]));
    assert!(
        matches!(
            e.kind,
            K::LimitExceeded {
                limit: "max_name_bytes",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn p25d_a_string_shared_by_many_metadata_keys_is_bounded() {
    // {"w": tensor, "k0": S, "k1": S, ...}: one 256 KiB string, memoized once and the value of
    // 4000 root keys. Each key's metadata is a copy of it: 1 GiB from a 300 KB file.
    let t = tensor(&storage("FloatStorage", "0", 2), 0, &[2], &[1]);
    let mut p = cat(&[
        PROTO2,
        b"}(",
        &s("w"),
        &t,
        &s("k0"),
        &s(&"x".repeat(256 << 10)),
    ]);
    p.extend_from_slice(b"q\x07");
    for i in 1..4000 {
        p.extend(s(&format!("k{i}")));
        p.extend_from_slice(b"h\x07");
    }
    p.extend_from_slice(b"u.");
    let e = open_err(torch_zip(&p, &[("0", &f32_bytes(2))]));
    assert!(
        matches!(
            e.kind,
            K::LimitExceeded {
                limit: "max_name_bytes",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("names and metadata"), "{e}");
    // A few such values are ordinary metadata.
    let mut p = cat(&[
        PROTO2,
        b"}(",
        &s("w"),
        &t,
        &s("k0"),
        &s(&"x".repeat(256 << 10)),
    ]);
    p.extend_from_slice(b"q\x07");
    p.extend(s("k1"));
    p.extend_from_slice(b"h\x07u.");
    let ck = open(torch_zip(&p, &[("0", &f32_bytes(2))])).expect("two metadata strings");
    assert_eq!(ck.tensor_names(), ["w"]);
}

/// A pickle `{"w": tensor, "l": [ITEM × n]}` of about `bytes` bytes, the items appended in
/// batches of 1000 as CPython writes a list; memo 0 holds the string "w".
fn dense_list(item: &[u8], bytes: usize) -> Vec<u8> {
    let t = tensor(&storage("FloatStorage", "0", 4), 0, &[4], &[1]);
    let mut p = cat(&[PROTO2, b"}(", &s("w"), b"q\x00", &t, &s("l"), b"]"]);
    let batch = cat(&[b"(", &item.repeat(1000), b"e"]);
    while p.len() + batch.len() < bytes {
        p.extend_from_slice(&batch);
    }
    p.extend_from_slice(b"u.");
    p
}

#[test]
fn p31_pickles_dense_in_small_objects_stay_within_the_memory_bound() {
    // 16 MB of empty dicts (the review's input: it peaked at 2.33 GB, 145 × its size), then
    // the other one-to-three-byte objects. Each is refused by the heap budget or loads within
    // the documented bound (asserted by `bounded` inside `open`).
    let mb = 16 << 20;
    for (what, item, refused) in [
        ("empty dicts", &b"}"[..], true),
        ("empty lists", b"]", true),
        ("empty tuples", b")", true),
        ("empty strings", b"U\x00", true),
        ("pairs of None", b"NN\x86", true),
        ("one-entry dicts", b"}h\x00Ns", true),
        ("memo references", b"h\x00", false),
        ("memoized Nones", b"Nq\x01", false),
    ] {
        let p = dense_list(item, mb);
        match open(torch_zip(&p, &[("0", &f32_bytes(4))])) {
            Ok(ck) => {
                assert!(!refused, "{what}: accepted");
                assert_eq!(ck.tensor_names(), ["w"]);
            }
            Err(e) => assert!(
                matches!(
                    e.kind,
                    K::LimitExceeded {
                        limit: "max_heap_per_byte",
                        ..
                    }
                ),
                "{what}: {e}"
            ),
        }
    }
    // 1 000 000 distinct int keys in one dict: accepted, within the bound.
    let mut p = cat(&[PROTO2, b"}"]);
    for b in 0..1000u32 {
        p.push(b'(');
        for i in 0..1000u32 {
            p.extend(int((b * 1000 + i) as i32));
            p.push(b'N');
        }
        p.push(b'u');
    }
    p.push(b'.');
    let doc = bounded("1M keys", p.len(), || vm(&p)).expect("accepted");
    assert_eq!(doc.dict(doc.root()).map(<[_]>::len), Some(1_000_000));
    // A tuple of 1000 memo references to one 4 MiB string, used as a dict key: copied into the
    // dict's index it would take 4 GB.
    let mut p = cat(&[PROTO2, b"}(", &s(&"k".repeat(4 << 20)), b"q\x01"]);
    p.extend(b"h\x01".repeat(999));
    p.extend_from_slice(b"tNs.");
    let e = vm_err("key bomb", &p);
    assert!(
        matches!(
            e.kind,
            K::LimitExceeded {
                limit: "key size (string bytes)",
                ..
            }
        ),
        "{e}"
    );
    // A lower budget is honoured, with an error that names it.
    let l = Limits {
        max_heap_per_byte: 4,
        ..limits()
    };
    let p = dense_list(b"N", 4 << 20);
    let e = unpickle(&p, &l, PersistentIds::Zip, 1 << 30).expect_err("over budget");
    assert!(
        e.to_string().contains("limit `max_heap_per_byte` exceeded"),
        "{e}"
    );
}

#[test]
fn p26_unhashable_keys() {
    for key in [&b"]"[..], b"}"] {
        let p = cat(&[PROTO2, b"}", key, b"Ns."]);
        assert_eq!(both("P26", &p).kind, K::UnhashableKey);
    }
}

#[test]
fn p27_many_keys_are_linear_and_duplicates_refused() {
    let n = 200_000;
    let mut p = cat(&[PROTO2, b"}"]);
    for batch in 0..n / 1000 {
        p.push(b'(');
        for i in 0..1000 {
            p.extend(s(&format!("k{}", batch * 1000 + i)));
            p.extend(int(i));
        }
        p.push(b'u');
    }
    p.push(b'.');
    let doc = bounded("P27", p.len(), || vm(&p)).expect("many keys");
    assert_eq!(doc.dict(doc.root()).map(<[_]>::len), Some(n as usize));
    let t = tensor(&storage("FloatStorage", "0", 2), 0, &[2], &[1]);
    let p = cat(&[PROTO2, b"}(", &s("w"), &t, &s("w"), &t, b"u."]);
    assert_eq!(both("P27 dup", &p).kind, K::DuplicateKey("w".into()));
}

#[test]
fn p28_invalid_utf8() {
    for bad in [&[0xed, 0xa0, 0x80][..], &[0xff], &[0xc3]] {
        let mut p = cat(&[PROTO2, b"X", &(bad.len() as u32).to_le_bytes()]);
        p.extend_from_slice(bad);
        p.push(b'.');
        assert_eq!(both("P28", &p).kind, K::BadUtf8);
    }
}

#[test]
fn p29_protocol_versions() {
    for v in [6u8, 255] {
        let e = both("P29", &[0x80, v, b'N', b'.']);
        assert!(matches!(e.kind, K::UnsupportedVersion(_)), "{e}");
    }
    let e = both("P29 late", &[b'N', 0x80, 2, b'.']);
    assert!(matches!(e.kind, K::Malformed(_)), "{e}");
}

#[test]
fn p30_hooks_metadata_and_subclass_types() {
    let st = storage("FloatStorage", "0", 4);
    let hooks = cat(&[
        &glob("torch._utils", "_rebuild_tensor_v2"),
        b"(",
        &st,
        &int(0),
        &tuple_of_ints(&[4]),
        &tuple_of_ints(&[1]),
        &[0x89],
        b"}(",
        &s("h"),
        &int(1),
        b"u",
        b"tR",
    ]);
    let e = both("P30 hooks", &dict1("w", &hooks));
    assert!(matches!(e.kind, K::BadArgs { .. }), "{e}");
    let conj = cat(&[
        &glob("torch._utils", "_rebuild_tensor_v2"),
        b"(",
        &st,
        &int(0),
        &tuple_of_ints(&[4]),
        &tuple_of_ints(&[1]),
        &[0x89],
        &ordered_dict(),
        b"}(",
        &s("conj"),
        &[0x88],
        b"u",
        b"tR",
    ]);
    let e = both("P30 conj", &dict1("w", &conj));
    assert!(matches!(e.kind, K::Unsupported(_)), "{e}");
    let inner = cat(&[
        b"(",
        &st,
        &int(0),
        &tuple_of_ints(&[4]),
        &tuple_of_ints(&[1]),
        &[0x89],
        &ordered_dict(),
        b"t",
    ]);
    let from_type = cat(&[
        &glob("torch._tensor", "_rebuild_from_type_v2"),
        b"(",
        &glob("torch._utils", "_rebuild_tensor_v2"),
        &glob("collections", "OrderedDict"),
        &inner,
        b"}tR",
    ]);
    let e = both("P30 type", &dict1("w", &from_type));
    assert!(matches!(e.kind, K::BadArgs { .. }), "{e}");
}

// === Z: the zip container ===

fn zip_kind(e: &LoadError) -> Option<&ZipProblem> {
    match &e.kind {
        K::Zip(z) => Some(z),
        _ => None,
    }
}

fn ok_pkl() -> Vec<u8> {
    dict1(
        "w",
        &tensor(&storage("FloatStorage", "0", 2), 0, &[2], &[1]),
    )
}

#[test]
fn z01_torchscript_archives() {
    for extra in [
        "archive/constants.pkl",
        "archive/code/__torch__.py",
        "archive/.data/x.pkl",
    ] {
        let z = zip_with(
            &[
                rec("archive/data.pkl", &ok_pkl()),
                rec("archive/data/0", &f32_bytes(2)),
                rec("archive/version", b"3"),
                rec(extra, b"x"),
            ],
            &[],
        );
        assert_eq!(open_err(z).kind, K::UnsupportedFormat(Format::TorchScript));
    }
}

#[test]
fn z02_local_name_differs_from_central() {
    let mut r = rec("archive/data.pkl", &ok_pkl());
    r.local_name = Some("archive/data.pkX".into());
    let z = zip_with(
        &[
            r,
            rec("archive/data/0", &f32_bytes(2)),
            rec("archive/version", b"3"),
        ],
        &[],
    );
    let e = open_err(z);
    assert!(
        matches!(zip_kind(&e), Some(ZipProblem::NameMismatch { .. })),
        "{e}"
    );
}

#[test]
fn z03_encryption_flags_and_methods() {
    for (flags, method, want) in [
        (0x0801, 0, ZipProblem::Encrypted),
        (0x0802, 0, ZipProblem::UnsupportedFlags(0x0802)),
        (0x0800, 12, ZipProblem::UnsupportedMethod(12)),
        (0x0800, 93, ZipProblem::UnsupportedMethod(93)),
        (0x0800, 99, ZipProblem::UnsupportedMethod(99)),
        (0x0800, 8, ZipProblem::UnsupportedMethod(8)),
    ] {
        let mut r = rec("archive/data.pkl", &ok_pkl());
        r.flags = flags;
        r.method = method;
        let z = zip_with(
            &[
                r,
                rec("archive/data/0", &f32_bytes(2)),
                rec("archive/version", b"3"),
            ],
            &[],
        );
        let e = open_err(z);
        assert_eq!(zip_kind(&e), Some(&want), "{e}");
    }
}

#[test]
fn z04_bad_crc_of_data_pkl() {
    let mut r = rec("archive/data.pkl", &ok_pkl());
    r.crc = Some(0x1234_5678);
    let z = zip_with(
        &[
            r,
            rec("archive/data/0", &f32_bytes(2)),
            rec("archive/version", b"3"),
        ],
        &[],
    );
    let e = open_err(z);
    assert!(matches!(zip_kind(&e), Some(ZipProblem::BadCrc(_))), "{e}");
}

#[test]
fn z05_deflate_bomb_stops_at_the_cap() {
    use std::io::Write;
    let zeros = vec![0u8; 16 << 20];
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&zeros).expect("deflate");
    let bomb = enc.finish().expect("deflate");
    drop(zeros);
    let mut r = rec("archive/data.pkl", &bomb);
    r.method = 8;
    r.crc = Some(0);
    r.size = Some(1024);
    let z = zip_with(&[r, rec("archive/version", b"3")], &[]);
    // The sizes differ (declared 1 KiB uncompressed), which STORED would refuse; with DEFLATE
    // allowed the inflater stops one byte past the cap.
    let l = Limits {
        allow_deflate: true,
        max_pickle_bytes: 1 << 20,
        ..Limits::default()
    };
    let e = match open_with(z.clone(), &l) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    assert_eq!(
        e.kind,
        K::LimitExceeded {
            limit: "max_pickle_bytes",
            value: (1 << 20) + 1
        }
    );
    // Off by default.
    assert_eq!(
        zip_kind(&open_err(z)),
        Some(&ZipProblem::UnsupportedMethod(8))
    );
}

#[test]
fn z06_overlap_and_out_of_bounds() {
    // data/0's bytes contain a complete local header for data/1, which the central directory
    // points into: two entries sharing bytes.
    let inner = zip_with(&[rec("archive/data/1", &f32_bytes(2))], &[]);
    let inner_local_len = 30 + "archive/data/1".len() + 8;
    let payload = inner[..inner_local_len].to_vec();
    let pkl = ok_pkl();
    let local0 = 30 + "archive/data.pkl".len() + pkl.len();
    let data0_start = local0 + 30 + "archive/data/0".len();
    let z = zip_with(
        &[
            rec("archive/data.pkl", &pkl),
            rec("archive/data/0", &payload),
            rec("archive/version", b"3"),
        ],
        &[("archive/data/1".into(), data0_start as u32, 8)],
    );
    let e = open_err(z);
    assert_eq!(zip_kind(&e), Some(&ZipProblem::Overlap), "{e}");
    // Declared size running past the end of the file.
    let mut r = rec("archive/data/0", &f32_bytes(2));
    r.size = Some(0x7fff_0000);
    let z = zip_with(
        &[
            rec("archive/data.pkl", &pkl),
            r,
            rec("archive/version", b"3"),
        ],
        &[],
    );
    let e = open_err(z);
    assert!(
        matches!(zip_kind(&e), Some(ZipProblem::OutOfBounds(_))),
        "{e}"
    );
}

#[test]
fn z07_prefixes_and_duplicate_data_pkl() {
    let z = zip_with(
        &[rec("a/data.pkl", &ok_pkl()), rec("b/data/0", &f32_bytes(2))],
        &[],
    );
    assert!(matches!(
        zip_kind(&open_err(z)),
        Some(ZipProblem::MixedPrefix(_))
    ));
    let z = zip_with(
        &[
            rec("a/data.pkl", &ok_pkl()),
            rec("a/data.pkl", &ok_pkl()),
            rec("a/version", b"3"),
        ],
        &[],
    );
    assert_eq!(zip_kind(&open_err(z)), Some(&ZipProblem::DuplicateDataPkl));
    let z = zip_with(&[rec("data.pkl", &ok_pkl())], &[]);
    assert!(matches!(
        zip_kind(&open_err(z)),
        Some(ZipProblem::NotInSubdirectory(_))
    ));
}

#[test]
fn z08_bad_names() {
    let long = format!("archive/{}", "x".repeat(65_000));
    for name in [
        "archive/../data.pkl",
        "/archive/data.pkl",
        "archive\\data.pkl",
        "archive/da\0ta",
        long.as_str(),
        "archive/\u{e9}",
    ] {
        let z = zip_with(&[rec(name, b"x"), rec("archive/data.pkl", &ok_pkl())], &[]);
        let e = open_err(z);
        assert!(matches!(zip_kind(&e), Some(ZipProblem::BadName(_))), "{e}");
        assert!(e.to_string().len() < 1000, "error text is bounded");
    }
}

#[test]
fn z09_missing_and_extra_storages() {
    let p = dict1(
        "w",
        &tensor(&storage("FloatStorage", "7", 2), 0, &[2], &[1]),
    );
    let e = open_err(torch_zip(&p, &[("0", &f32_bytes(2))]));
    assert_eq!(e.kind, K::MissingStorage { key: "7".into() });
    let ck = open(torch_zip(
        &ok_pkl(),
        &[("0", &f32_bytes(2)), ("9", &f32_bytes(1))],
    ))
    .expect("ok");
    assert!(matches!(
        ck.format(),
        CkptFormat::Zip {
            unreferenced_records: 1,
            ..
        }
    ));
}

#[test]
fn z10_byteorder_and_version() {
    for (order, version, want) in [
        (&b"big"[..], &b"3"[..], K::UnsupportedByteOrder),
        (b"middle", b"3", K::UnsupportedByteOrder),
        (b"little", b"999", K::UnsupportedVersion("999".into())),
        (b"little", b"abc", K::UnsupportedVersion("abc".into())),
    ] {
        let z = zip_with(
            &[
                rec("archive/data.pkl", &ok_pkl()),
                rec("archive/data/0", &f32_bytes(2)),
                rec("archive/version", version),
                rec("archive/byteorder", order),
            ],
            &[],
        );
        assert_eq!(open_err(z).kind, want);
    }
}

#[test]
fn z11_foreign_containers_are_named() {
    let mut tar = vec![0u8; 1024];
    tar[257..262].copy_from_slice(b"ustar");
    for (bytes, f) in [
        (
            [
                &[0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c][..],
                &torch_zip(&ok_pkl(), &[]),
            ]
            .concat(),
            Format::SevenZip,
        ),
        (vec![0x1f, 0x8b, 8, 0, 0, 0], Format::Gzip),
        (tar, Format::LegacyTar),
        (b"PYTORCH1\0\0\0\0".to_vec(), Format::TorchPreview),
    ] {
        assert_eq!(open_err(bytes).kind, K::UnsupportedFormat(f));
    }
}

#[test]
fn z12_entry_counts_are_checked_before_allocating() {
    // A plain EOCD claiming 65535 entries in a tiny file.
    let mut z = torch_zip(&ok_pkl(), &[("0", &f32_bytes(2))]);
    let n = z.len();
    z[n - 12..n - 10].copy_from_slice(&0xfffeu16.to_le_bytes());
    z[n - 14..n - 12].copy_from_slice(&0xfffeu16.to_le_bytes());
    assert!(matches!(
        zip_kind(&open_err(z)),
        Some(ZipProblem::BadEndOfCentralDirectory(_))
    ));
    // A zip64 record claiming 10 million.
    let mut f = vec![b'P', b'K', 3, 4];
    f.resize(64, 0);
    let z64 = f.len() as u64;
    f.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
    f.extend_from_slice(&44u64.to_le_bytes());
    f.extend_from_slice(&[45, 0, 45, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&10_000_000u64.to_le_bytes());
    f.extend_from_slice(&10_000_000u64.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&z64.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&[0xff; 4]);
    f.extend_from_slice(&[0xff; 8]);
    f.extend_from_slice(&[0; 2]);
    let e = open_err(f);
    assert_eq!(
        e.kind,
        K::LimitExceeded {
            limit: "max_entries",
            value: 10_000_000
        }
    );
}

#[test]
fn z13_polyglots_route_by_offset_zero_only() {
    let zip = torch_zip(&ok_pkl(), &[("0", &f32_bytes(2))]);
    let pickle_then_zip = [&ok_pkl()[..], &zip].concat();
    assert_eq!(open_err(pickle_then_zip).kind, K::NotACheckpoint);
    let zip_then_pickle = [&zip[..], &ok_pkl()].concat();
    let e = open_err(zip_then_pickle);
    assert!(matches!(e.kind, K::Zip(_)), "{e}");
}

// === L: the legacy container ===

const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

fn sys_info(little: bool) -> Vec<u8> {
    cat(&[
        PROTO2,
        b"}(",
        &s("protocol_version"),
        &int(1001),
        &s("little_endian"),
        &[if little { 0x88 } else { 0x89 }],
        &s("type_sizes"),
        b"}(",
        &s("short"),
        &int(2),
        &s("int"),
        &int(4),
        &s("long"),
        &int(4),
        b"uu.",
    ])
}

fn legacy_storage(key: &str, numel: i64, view: &[u8]) -> Vec<u8> {
    cat(&[
        b"(",
        &s("storage"),
        &glob("torch", "FloatStorage"),
        &s(key),
        &s("cpu"),
        &long1(numel),
        view,
        b"tQ",
    ])
}

struct Legacy {
    proto: i32,
    little: bool,
    object: Vec<u8>,
    keys: Vec<&'static str>,
    records: Vec<(i64, Vec<u8>)>,
    trailing: Vec<u8>,
}

fn legacy_ok() -> Legacy {
    Legacy {
        proto: 1001,
        little: true,
        object: dict1(
            "w",
            &tensor(&legacy_storage("140234", 3, b"N"), 0, &[3], &[1]),
        ),
        keys: vec!["140234"],
        records: vec![(3, f32_bytes(3))],
        trailing: Vec::new(),
    }
}

fn legacy_bytes(l: &Legacy) -> Vec<u8> {
    legacy_bytes_with_protocol(l, 2)
}

/// A protocol-2 pickle as pickle protocol `proto` writes it: `PROTO proto` and, from protocol 4
/// on, one `FRAME` around the rest (what CPython's pickler does for a small pickle).
fn reproto(p: &[u8], proto: u8) -> Vec<u8> {
    assert_eq!(&p[..2], PROTO2);
    let body = &p[2..];
    let mut out = vec![0x80, proto];
    if proto >= 4 {
        out.push(0x95);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// The legacy file of `l` as `torch.save(..., _use_new_zipfile_serialization=False,
/// pickle_protocol=proto)` lays it out: all five pickles in that protocol.
fn legacy_bytes_with_protocol(l: &Legacy, proto: u8) -> Vec<u8> {
    let mut out = reproto(&LEGACY_MAGIC, proto);
    out.extend(reproto(&cat(&[PROTO2, &int(l.proto), b"."]), proto));
    out.extend(reproto(&sys_info(l.little), proto));
    out.extend(reproto(&l.object, proto));
    let mut keys = cat(&[PROTO2, b"]("]);
    for k in &l.keys {
        keys.extend(s(k));
    }
    keys.extend_from_slice(b"e.");
    out.extend(reproto(&keys, proto));
    for (n, d) in &l.records {
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(d);
    }
    out.extend_from_slice(&l.trailing);
    out
}

#[test]
fn l00_a_valid_legacy_file_loads() {
    let ck = open(legacy_bytes(&legacy_ok())).expect("valid");
    assert_eq!(ck.read_f32("w").expect("read"), vec![0.0, 1.0, 2.0]);
}

#[test]
fn l01_magic_and_protocol() {
    let mut b = legacy_bytes(&legacy_ok());
    b[1] = 0; // protocol-0 spelling of the magic: not the torch magic
    assert_eq!(open_err(b).kind, K::NotACheckpoint);
    let l = Legacy {
        proto: 1002,
        ..legacy_ok()
    };
    assert!(matches!(
        open_err(legacy_bytes(&l)).kind,
        K::UnsupportedVersion(_)
    ));
}

#[test]
fn l01b_the_magic_number_is_read_whatever_the_pickle_protocol() {
    // Protocol 3 (`pickle_protocol=3`): the same opcodes as protocol 2 in this file.
    let b = legacy_bytes_with_protocol(&legacy_ok(), 3);
    assert_eq!(&b[..3], &[0x80, 3, 0x8a]);
    assert_eq!(sniff(&b), ContainerFormat::TorchLegacy);
    let ck = open(b).expect("protocol 3");
    assert_eq!(ck.format(), &CkptFormat::Legacy);
    assert_eq!(ck.read_f32("w").expect("read"), vec![0.0, 1.0, 2.0]);
    // Protocols 4 and 5 wrap each pickle in a FRAME; they load where protocol-4 opcodes are
    // accepted, and are not mistaken for "not a checkpoint" where they are not.
    for proto in [4u8, 5] {
        let b = legacy_bytes_with_protocol(&legacy_ok(), proto);
        assert_eq!(&b[..3], &[0x80, proto, 0x95]);
        assert_eq!(sniff(&b), ContainerFormat::TorchLegacy, "protocol {proto}");
        let l = Limits {
            allow_protocol4: true,
            ..limits()
        };
        let ck = open_with(b.clone(), &l).expect("protocol 4/5 with allow_protocol4");
        assert_eq!(ck.read_f32("w").expect("read"), vec![0.0, 1.0, 2.0]);
        // Without it, the file is named for what it is.
        let e = open_err(b);
        assert_eq!(
            e.kind,
            K::Protocol4Off {
                what: "a torch legacy-format (non-zip) checkpoint",
                protocol: proto
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("legacy-format")
                && msg.contains(&format!("pickle protocol {proto}"))
                && msg.contains("allow_protocol4"),
            "{msg}"
        );
    }
    // Anything else at the start is still not the torch magic.
    let magic = |proto: u8, frame: Option<u64>, value: [u8; 10]| {
        let mut m = vec![0x80, proto];
        if let Some(len) = frame {
            m.push(0x95);
            m.extend_from_slice(&len.to_le_bytes());
        }
        m.extend_from_slice(&[0x8a, 10]);
        m.extend_from_slice(&value);
        m.push(b'.');
        let mut b = legacy_bytes(&legacy_ok());
        b.splice(..LEGACY_MAGIC.len(), m);
        b
    };
    let good: [u8; 10] = LEGACY_MAGIC[4..14].try_into().expect("10 bytes");
    let mut wrong = good;
    wrong[9] ^= 1;
    assert!(open(magic(2, None, good)).is_ok());
    for (what, b) in [
        ("another number", magic(2, None, wrong)),
        ("protocol 6", magic(6, None, good)),
        ("protocol 1 opcodes", magic(1, None, good)),
        ("FRAME under protocol 3", magic(3, Some(13), good)),
        ("FRAME of the wrong length", magic(4, Some(14), good)),
    ] {
        assert_eq!(sniff(&b), ContainerFormat::Unknown, "{what}");
        assert_eq!(open_err(b).kind, K::NotACheckpoint, "{what}");
    }
    // The text protocols (0 and 1) spell the magic number in decimal: named, not read.
    let mut b = b"L119547037146038801333356L\n.".to_vec();
    b.extend_from_slice(b"I1001\n.");
    assert_eq!(
        open_err(b).kind,
        K::UnsupportedFormat(Format::LegacyTextPickle)
    );
}

#[test]
fn l02_big_endian() {
    let l = Legacy {
        little: false,
        ..legacy_ok()
    };
    assert_eq!(open_err(legacy_bytes(&l)).kind, K::UnsupportedByteOrder);
}

#[test]
fn l03_key_list_and_records() {
    let unknown = Legacy {
        keys: vec!["140234", "999"],
        records: vec![(3, f32_bytes(3)), (1, f32_bytes(1))],
        ..legacy_ok()
    };
    assert!(matches!(
        open_err(legacy_bytes(&unknown)).kind,
        K::Malformed(_)
    ));
    let missing = Legacy {
        keys: vec![],
        records: vec![],
        ..legacy_ok()
    };
    assert_eq!(
        open_err(legacy_bytes(&missing)).kind,
        K::MissingStorage {
            key: "140234".into()
        }
    );
    let wrong_numel = Legacy {
        records: vec![(4, f32_bytes(4))],
        ..legacy_ok()
    };
    assert!(matches!(
        open_err(legacy_bytes(&wrong_numel)).kind,
        K::StorageSizeMismatch { .. }
    ));
    let truncated = Legacy {
        records: vec![(3, f32_bytes(2))],
        ..legacy_ok()
    };
    assert_eq!(open_err(legacy_bytes(&truncated)).kind, K::Truncated);
    let trailing = Legacy {
        trailing: vec![0; 3],
        ..legacy_ok()
    };
    assert_eq!(open_err(legacy_bytes(&trailing)).kind, K::TrailingData);
}

#[test]
fn l04_views_and_module_ids() {
    let view = Legacy {
        object: dict1(
            "w",
            &tensor(
                &legacy_storage("140234", 3, &cat(&[&s("1"), &int(0), &int(3), &[0x87]])),
                0,
                &[3],
                &[1],
            ),
        ),
        ..legacy_ok()
    };
    assert_eq!(
        open_err(legacy_bytes(&view)).kind,
        K::Unsupported("legacy storage view")
    );
    let module = Legacy {
        object: cat(&[
            PROTO2,
            b"(",
            &s("module"),
            &glob("torch", "Tensor"),
            &s("a.py"),
            &s("src"),
            b"tQ.",
        ]),
        ..legacy_ok()
    };
    assert!(matches!(
        open_err(legacy_bytes(&module)).kind,
        K::BadPersistentId(_)
    ));
}

// === X: cross-cutting ===

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sdrs_hostile_{}_{name}", std::process::id()))
}

fn file_err(path: &PathBuf) -> LoadError {
    match CkptFile::open(path, &limits()) {
        Ok(_) => panic!("{} accepted", path.display()),
        Err(Error::Checkpoint { source, .. }) => *source,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn x01_content_decides_not_the_extension() {
    let legacy = tmp("legacy.safetensors");
    std::fs::write(&legacy, legacy_bytes(&legacy_ok())).expect("write");
    let ck = CkptFile::open(&legacy, &limits()).expect("legacy by content");
    assert_eq!(*ck.format(), CkptFormat::Legacy);
    let zip = tmp("zip.pt");
    std::fs::write(&zip, torch_zip(&ok_pkl(), &[("0", &f32_bytes(2))])).expect("write");
    assert!(CkptFile::open(&zip, &limits()).is_ok());
    // A safetensors file named .ckpt, with a header length whose low bytes read `80 02`.
    let mut header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_vec();
    header.resize(0x280, b' ');
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(&header);
    st.extend_from_slice(&1f32.to_le_bytes());
    assert_eq!(&st[..2], &[0x80, 0x02]);
    assert_eq!(sniff(&st), ContainerFormat::Safetensors);
    let stp = tmp("st.ckpt");
    std::fs::write(&stp, &st).expect("write");
    assert_eq!(
        file_err(&stp).kind,
        K::UnsupportedFormat(Format::Safetensors)
    );
    for p in [legacy, zip, stp] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn x02_empty_files_directories_fifos_and_devices() {
    let empty = tmp("empty.ckpt");
    std::fs::write(&empty, b"").expect("write");
    assert_eq!(file_err(&empty).kind, K::NotACheckpoint);
    let _ = std::fs::remove_file(&empty);
    let dir = tmp("dir.ckpt");
    std::fs::create_dir_all(&dir).expect("mkdir");
    assert!(matches!(file_err(&dir).kind, K::Malformed(_)));
    let _ = std::fs::remove_dir(&dir);
    let fifo = tmp("fifo.ckpt");
    if std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        // Opening a FIFO for reading would block; it is refused before being opened.
        assert!(matches!(file_err(&fifo).kind, K::Malformed(_)));
        let _ = std::fs::remove_file(&fifo);
    }
    for dev in ["/dev/zero", "/dev/urandom", "/dev/null"] {
        let p = PathBuf::from(dev);
        if p.exists() {
            assert!(matches!(file_err(&p).kind, K::Malformed(_)), "{dev}");
        }
    }
    // Random bytes.
    let mut x = 0x1234_5678u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    assert_eq!(open_err(noise).kind, K::NotACheckpoint);
}

#[test]
fn x03_genuine_fixtures_stay_within_the_memory_bound() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ckpt");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !["ckpt", "pt", "bin"].contains(&ext) {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        let len = bytes.len();
        let ck = bounded(&path.display().to_string(), len, || {
            CkptFile::from_bytes(bytes, &limits())
        })
        .expect("fixture loads");
        assert!(ck.document().object_count() > 0);
        n += 1;
    }
    assert!(n >= 10, "fixtures found: {n}");
}

#[test]
fn errors_escape_untrusted_names() {
    let p = dict1(
        "w\x1b[2J\nx",
        &tensor(&storage("FloatStorage", "0", 2), 0, &[2], &[1]),
    );
    let p = [&p[..p.len() - 1], b"N."].concat(); // trailing junk after the dict → error
    let e = vm_err("escape", &p);
    let t = e.to_string();
    assert!(!t.contains('\x1b'));
    let dup = cat(&[PROTO2, b"}(", &s("a\x1b[2J"), b"N", &s("a\x1b[2J"), b"Nu."]);
    let e = vm_err("dup", &dup);
    let t = e.to_string();
    assert!(t.contains("\\u{1b}") && !t.contains('\x1b'), "{t}");
}

#[test]
fn extra_inert_globals_are_values_never_callables() {
    let p = cat(&[
        PROTO2,
        b"}",
        &glob("trainer.callbacks", "Marker"),
        &int(1),
        b"s.",
    ]);
    let e = vm_err("unlisted", &p);
    assert!(matches!(e.kind, K::ForbiddenGlobal { .. }));
    let l = Limits {
        extra_inert_globals: vec![("trainer.callbacks".into(), "Marker".into())],
        ..Limits::default()
    };
    let doc = unpickle(&p, &l, PersistentIds::Zip, 0).expect("listed global is a key");
    assert_eq!(doc.dict(doc.root()).map(<[_]>::len), Some(1));
    let call = cat(&[PROTO2, &glob("trainer.callbacks", "Marker"), b")R."]);
    let e = unpickle(&call, &l, PersistentIds::Zip, 0).expect_err("not callable");
    assert!(matches!(e.kind, K::BadArgs { .. }), "{e}");
    let newobj = cat(&[
        PROTO2,
        &glob("trainer.callbacks", "Marker"),
        b")",
        &[0x81],
        b".",
    ]);
    let e = unpickle(&newobj, &l, PersistentIds::Zip, 0).expect_err("not a class");
    assert!(matches!(e.kind, K::ForbiddenNewObj { .. }), "{e}");
    let l = Limits {
        extra_inert_globals: vec![("os".into(), "system".into())],
        ..Limits::default()
    };
    let p = cat(&[PROTO2, &glob("os", "system"), b"."]);
    let e = unpickle(&p, &l, PersistentIds::Zip, 0).expect_err("hard block");
    assert!(matches!(e.kind, K::ForbiddenGlobal { .. }));
}

/// The zip64 layout that checkpoints over 4 GiB need: every size and offset in the central
/// directory set to 0xFFFFFFFF with the real values in a zip64 extra field, and zip64
/// end-of-central-directory records. Built small here by hand.
fn zip64(recs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in recs {
        let off = out.len() as u64;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&0x0808u16.to_le_bytes());
        out.extend_from_slice(&[0; 6]); // method, time, date
        out.extend_from_slice(&[0; 12]); // crc and sizes live in the data descriptor
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        // A 64-byte-style alignment pad in the local extra field, as torch writes.
        let pad = (64 - (out.len() + 2 + name.len() + 4) % 64) % 64;
        out.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"FB");
        out.extend_from_slice(&(pad as u16).to_le_bytes());
        out.extend(std::iter::repeat_n(b'Z', pad));
        assert_eq!(out.len() % 64, 0);
        out.extend_from_slice(data);
        out.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        out.extend_from_slice(&crc32(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        central.push((name.to_string(), off, data.len() as u64, crc32(data)));
    }
    let cd_start = out.len() as u64;
    for (name, off, size, crc) in &central {
        out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&0x0808u16.to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&[0xff; 8]);
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&28u16.to_le_bytes());
        out.extend_from_slice(&[0; 2]); // comment
        out.extend_from_slice(&[0; 8]); // disk, attributes
        out.extend_from_slice(&[0xff; 4]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&24u16.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&off.to_le_bytes());
    }
    let cd_size = out.len() as u64 - cd_start;
    let z64 = out.len() as u64;
    let n = central.len() as u64;
    out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
    out.extend_from_slice(&44u64.to_le_bytes());
    out.extend_from_slice(&[45, 0, 45, 0]);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_start.to_le_bytes());
    out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&z64.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&[0xff; 4]);
    out.extend_from_slice(&[0xff; 8]);
    out.extend_from_slice(&[0; 2]);
    out
}

#[test]
fn zip64_archives_with_aligned_records_load() {
    let pkl = dict1("w", &tensor(&storage("HalfStorage", "0", 3), 0, &[3], &[1]));
    let half: Vec<u8> = [1.0f32, -2.0, 0.5]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let z = zip64(&[
        ("big/data.pkl", &pkl),
        ("big/data/0", &half),
        ("big/version", b"3\n"),
        ("big/byteorder", b"little"),
        ("big/.data/serialization_id", b"1234"),
    ]);
    let ck = open(z.clone()).expect("zip64 loads");
    assert_eq!(ck.read_f32("w").expect("read"), vec![1.0, -2.0, 0.5]);
    // A zip64 size beyond the file is refused.
    let mut bad = z;
    let at = bad
        .windows(4)
        .rposition(|w| w == b"\x01\x00\x18\x00")
        .expect("an extra field");
    bad[at + 4..at + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    bad[at + 12..at + 20].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = open_err(bad);
    assert!(matches!(e.kind, K::Zip(_)), "{e}");
}

/// Re-runs the rows that would exhaust memory in a naive reader (P13, P16–P18, P20, P27, Z5,
/// Z12) in a child process whose address space is capped at 512 MiB with `ulimit -v`: an
/// allocation the size of a hostile length field would abort the child.
#[test]
fn x03_memory_rows_pass_under_ulimit_v() {
    if std::env::var_os("SDRS_UNDER_ULIMIT").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        panic!("no test executable path");
    };
    let rows = [
        "p13_", "p16_", "p17_", "p18_", "p20_", "p27_", "z05_", "z12_",
    ];
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 524288 && exec \"$0\" --test-threads 1 \"$@\"")
        .arg(&exe)
        .args(rows)
        .env("SDRS_UNDER_ULIMIT", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("spawn sh");
    assert!(
        status.success(),
        "a memory row failed under ulimit -v: {status}"
    );
}
