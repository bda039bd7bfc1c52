//! The `convert` example as scripts use it: genuine torch checkpoints round-trip to safetensors
//! with bitwise identical tensors (compared with the twins torch itself wrote), `--scan`
//! reports without running anything, hostile files are refused with exit 1 and a reason that
//! names the global or tensor and where, and usage errors give exit 2.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixture;
use safetensors::{Dtype, SafeTensors};

/// The convert example.
fn convert() -> Command {
    common::example("convert")
}

fn tempdir(tag: &str) -> PathBuf {
    common::tempdir(&format!("convert-{tag}"))
}

fn run(args: &[&str]) -> Output {
    convert().args(args).output().expect("run convert")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `(dtype, shape, bytes)` per tensor name, and the metadata, of a safetensors file.
type Tensors = HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read_st(path: &Path) -> (Tensors, HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
    let meta = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    (tensors, meta)
}

#[test]
fn genuine_checkpoints_round_trip_bitwise() {
    let dir = tempdir("roundtrip");
    for (input, twin, step) in [
        ("sd_zip.ckpt", "sd_zip", Some("470000")),
        ("sd_legacy.ckpt", "sd_legacy", Some("12")),
        ("bare_nested.bin", "bare_nested", None),
        ("pl_train.ckpt", "pl_train", Some("1000")),
        // A safetensors input is rewritten as is.
        ("sd_zip.safetensors", "sd_zip", None),
    ] {
        let out = dir.join(format!("{input}.safetensors"));
        let o = run(&[p(&fixture(&format!("ckpt/{input}"))), p(&out)]);
        assert!(
            o.status.code() == Some(0),
            "{input}: {:?} {}",
            o.status,
            text(&o.stderr)
        );
        let (got, meta) = read_st(&out);
        let (want, _) = read_st(&fixture(&format!("ckpt/{twin}.safetensors")));
        let mut names: Vec<_> = got.keys().collect();
        names.sort();
        let mut want_names: Vec<_> = want.keys().collect();
        want_names.sort();
        assert_eq!(names, want_names, "{input}: names");
        for (name, w) in &want {
            assert!(got[name] == *w, "{input}: `{name}` differs from torch's");
        }
        assert_eq!(meta.get("global_step").map(String::as_str), step, "{input}");
    }
    // The integer tensor keeps its dtype.
    let (got, _) = read_st(&dir.join("sd_zip.ckpt.safetensors"));
    assert_eq!(got["cond_stage_model.position_ids"].0, Dtype::I64);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dtype_converts_floats_and_keeps_integers() {
    let dir = tempdir("dtype");
    let out = dir.join("f16.safetensors");
    let o = run(&[p(&fixture("ckpt/sd_zip.ckpt")), p(&out), "--dtype", "f16"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // The output has the permissions of any new file (not the private ones of a temporary).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let plain = dir.join("plain");
        std::fs::write(&plain, b"").expect("write");
        let mode = |f: &std::path::Path| std::fs::metadata(f).expect("stat").permissions().mode();
        assert_eq!(mode(&out) & 0o777, mode(&plain) & 0o777);
    }
    let (got, _) = read_st(&out);
    let (want, _) = read_st(&fixture("ckpt/sd_zip.safetensors"));
    let mut floats = 0;
    for (name, (dt, shape, bytes)) in &want {
        let g = &got[name];
        assert_eq!(&g.1, shape, "{name}");
        let widen: Option<Vec<f32>> = match dt {
            Dtype::F32 => Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::F16 => Some(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            _ => None,
        };
        match widen {
            Some(v) => {
                floats += 1;
                assert_eq!(g.0, Dtype::F16, "{name}");
                let expect: Vec<u8> = v
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect();
                assert!(g.2 == expect, "{name}: f16 rounding differs");
            }
            None if *dt == Dtype::I64 => assert!(g.0 == Dtype::I64 && g.2 == *bytes, "{name}"),
            None => assert_eq!(g.0, Dtype::F16, "{name}"),
        }
    }
    assert!(floats > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn textual_inversion_files_convert_to_files_that_load_as_the_same_embedding() {
    let dir = tempdir("ti");
    for (file, keys) in [
        // AUTOMATIC1111, `string_to_param` as a dict and as a pickled ParameterDict: the
        // vectors become `emb_params` (and the token id is dropped).
        ("ti-alpha.pt", &["emb_params"][..]),
        ("ti-golf.pt", &["emb_params"]),
        // kohya and diffusers layouts are already one tensor by its usual name.
        ("ti-foxtrot.pt", &["emb_params"]),
        ("learned_embeds.bin", &["<ti-charlie>"]),
    ] {
        let input = fixture(&format!("ti/{file}"));
        let stem = file.split('.').next().expect("stem");
        // Same file stem, so the trigger (the file name, as AUTOMATIC1111 names it) is too.
        let out = dir.join(format!("{stem}.safetensors"));
        let o = run(&[p(&input), p(&out)]);
        assert_eq!(o.status.code(), Some(0), "{file}: {}", text(&o.stderr));
        let (got, meta) = read_st(&out);
        let mut names: Vec<&str> = got.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, keys, "{file}");
        let original = sd_core::adapters::Embedding::open(&input).expect("original");
        let converted = sd_core::adapters::Embedding::open(&out).expect("converted loads");
        assert_eq!(converted.name(), original.name(), "{file}");
        assert_eq!(converted.vector_count(), original.vector_count(), "{file}");
        assert_eq!(converted.width(), original.width(), "{file}");
        assert_eq!(
            converted.vectors().to_vec().expect("values"),
            original.vectors().to_vec().expect("values"),
            "{file}"
        );
        if file == "ti-alpha.pt" {
            let step = original
                .source()
                .and_then(|s| s.step)
                .map(|s| s.to_string());
            assert_eq!(meta.get("step"), step.as_ref(), "{file}");
            assert!(
                text(&o.stdout).contains("textual-inversion embedding"),
                "{file}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_without_model_weights_say_what_they_hold() {
    let dir = tempdir("no-weights");
    let out = dir.join("o.safetensors");
    // An AUTOMATIC1111 hypernetwork (int keys -> pairs of state dicts).
    let o = run(&[p(&fixture("ckpt/hypernet.pt")), p(&out)]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "holds no model weights: it is an AUTOMATIC1111 hypernetwork (2 layers, for \
                      context widths 8, 4; 16 tensors)"
        ) && err.contains("nothing to convert")
            && !err.contains("refused"),
        "{err}"
    );
    // A torch optimizer state_dict: {"state": {0: {"step", "exp_avg"}}, "param_groups": [...]}.
    let tensor = |key: &str| {
        let mut t = b"ctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
        t.extend(s("storage"));
        t.extend_from_slice(b"ctorch\nFloatStorage\n");
        t.extend(s(key));
        t.extend(s("cpu"));
        t.extend_from_slice(&[
            b'K', 2, b't', b'Q', b'K', 0, b'K', 2, 0x85, b'K', 1, 0x85, 0x89,
        ]);
        t.extend_from_slice(b"ccollections\nOrderedDict\n)RtR");
        t
    };
    let pkl = [
        &[0x80, 2, b'}', b'('][..],
        &s("state"),
        b"}(K\x00}(",
        &s("exp_avg"),
        &tensor("0"),
        &s("exp_avg_sq"),
        &tensor("1"),
        b"uu",
        &s("param_groups"),
        b"](}(",
        &s("lr"),
        b"G?PbM\xd2\xf1\xa9\xfc",
        &s("params"),
        b"](K\x00eueu.",
    ]
    .concat();
    let data = [0u8; 8];
    let optim = dir.join("optim.pt");
    std::fs::write(&optim, torch_zip(&pkl, &[("0", &data), ("1", &data)])).expect("write");
    let o = run(&[p(&optim), p(&out)]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "holds no model weights: it is a torch optimizer state (`state` and \
                      `param_groups`; 2 tensors"
        ),
        "{err}"
    );
    // Anything else without tensor names lists its top-level entries.
    let pkl = [
        &[0x80, 2, b'}', b'('][..],
        &s("epoch"),
        b"K\x03",
        &s("cfg"),
        b"]u.",
    ]
    .concat();
    std::fs::write(&optim, torch_zip(&pkl, &[])).expect("write");
    let o = run(&[p(&optim), p(&out)]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("its 2 top-level entries are `epoch` (int), `cfg` (list) (0 tensors"),
        "{err}"
    );
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scan_reports_format_tensors_globals_and_verdict() {
    let o = run(&["--scan", p(&fixture("ckpt/sd_zip.ckpt"))]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    let (want, _) = read_st(&fixture("ckpt/sd_zip.safetensors"));
    for needle in [
        "format: torch zip",
        &format!("tensors: {}", want.len()),
        "cond_stage_model.position_ids I64",
        "global_step = 470000",
        "torch._utils._rebuild_tensor_v2",
        "collections.OrderedDict",
        "verdict: LOADABLE",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
    let o = run(&["--scan", p(&fixture("ckpt/sd_legacy.ckpt"))]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).contains("format: torch legacy"));
    let o = run(&["--scan", p(&fixture("tiny-sd.ckpt"))]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0));
    // 807 tensors: listed in part, summarised by dtype.
    assert!(
        out.contains("tensors: 807") && out.contains("more"),
        "{out}"
    );
    assert!(out.contains("summary: 806 tensors of F16"), "{out}");
}

// === hostile files, assembled here ===

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

/// A STORED zip of `records`, laid out as `torch.save` lays them out.
fn zip(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in records {
        let off = out.len() as u32;
        let (crc, len) = (crc32(data), data.len() as u32);
        let header = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend_from_slice(&20u16.to_le_bytes());
            }
            h.extend_from_slice(&20u16.to_le_bytes());
            h.extend_from_slice(&0x0800u16.to_le_bytes());
            h.extend_from_slice(&[0; 6]); // method, time, date
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            if central {
                h.extend_from_slice(&[0; 10]); // comment length, disk, attributes
                h.extend_from_slice(&off.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(header(0x0201_4b50, true));
    }
    let start = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let n = records.len() as u16;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn torch_zip(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut recs: Vec<(String, &[u8])> = vec![("archive/data.pkl".into(), pkl)];
    for (k, d) in storages {
        recs.push((format!("archive/data/{k}"), d));
    }
    recs.push(("archive/version".into(), b"3\n"));
    recs.push(("archive/byteorder".into(), b"little"));
    let refs: Vec<(&str, &[u8])> = recs.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    zip(&refs)
}

fn s(x: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(x.len() as u32).to_le_bytes());
    v.extend_from_slice(x.as_bytes());
    v
}

#[test]
fn hostile_files_are_refused_without_running_anything() {
    let dir = tempdir("hostile");
    let canary = dir.join("canary");
    let cmd = format!("touch {}", canary.display());
    // {"state_dict": posix.system("touch <canary>")}: the GLOBAL is at pickle byte 2.
    let pkl = [&[0x80, 2][..], b"cposix\nsystem\n(", &s(&cmd), b"tR."].concat();
    let evil = dir.join("evil.ckpt");
    std::fs::write(&evil, torch_zip(&pkl, &[])).expect("write");
    let out = dir.join("evil.safetensors");
    let o = run(&[p(&evil), p(&out)]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("posix.system") && err.contains("data.pkl at byte 2"),
        "{err}"
    );
    assert!(!out.exists(), "an output was written for a refused file");
    let o = run(&["--scan", p(&evil)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).contains("verdict: REFUSED"));
    assert!(text(&o.stderr).contains("posix.system"));
    assert!(!canary.exists(), "the payload ran");

    // The scan of a refused file lists every global its pickle names, the ones after the
    // first refused global included, and says which are refused and why.
    let pkl = [
        &[0x80, 2, b'}', b'('][..],
        &s("a"),
        b"ccollections\nOrderedDict\n)R",
        &s("b"),
        b"cposix\nsystem\n(",
        &s(&cmd),
        b"tR",
        &s("c"),
        b"cbuiltins\neval\n(",
        &s("1"),
        b"tR",
        &s("d"),
        b"cposix\nsystem\n(",
        &s(&cmd),
        b"tRu.",
    ]
    .concat();
    let evil2 = dir.join("evil2.ckpt");
    std::fs::write(&evil2, torch_zip(&pkl, &[])).expect("write");
    let o = run(&["--scan", p(&evil2)]);
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    let at = |needle: &[u8]| {
        pkl.windows(needle.len())
            .position(|w| w == needle)
            .expect("in the pickle")
    };
    for needle in [
        "reason: ".to_string(),
        "globals: 3 distinct, 2 refused (read from the opcodes; nothing was run)".to_string(),
        format!(
            "  builtins.eval x1 (first at data.pkl byte {}) REFUSED: not on the allow-list",
            at(b"cbuiltins")
        ),
        format!(
            "  collections.OrderedDict x1 (first at data.pkl byte {})\n",
            at(b"ccollections")
        ),
        format!(
            "  posix.system x2 (first at data.pkl byte {}) REFUSED: not on the allow-list",
            at(b"cposix")
        ),
    ] {
        assert!(stdout.contains(&needle), "missing `{needle}` in:\n{stdout}");
    }
    // A container refused before its pickle is found says so.
    let mut broken = torch_zip(&pkl, &[]);
    let n = broken.len();
    broken[n - 22] ^= 0xff; // the end-of-central-directory signature
    std::fs::write(&evil2, &broken).expect("write");
    let stdout = text(&run(&["--scan", p(&evil2)]).stdout);
    assert!(
        stdout.contains("globals: not listed (zip container:"),
        "{stdout}"
    );
    assert!(!canary.exists(), "the payload ran");

    // A view reaching outside its storage is refused, naming the tensor.
    let mut pkl = vec![0x80, 2, b'}', b'('];
    pkl.extend(s("model.w"));
    pkl.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    pkl.extend(s("storage"));
    pkl.extend_from_slice(b"ctorch\nFloatStorage\n");
    pkl.extend(s("0"));
    pkl.extend(s("cpu"));
    pkl.extend_from_slice(&[b'K', 11, b't', b'Q', b'K', 0]);
    pkl.extend_from_slice(&[b'K', 12, 0x85, b'K', 1, 0x85, 0x89]);
    pkl.extend_from_slice(b"ccollections\nOrderedDict\n)RtRu.");
    let data: Vec<u8> = (0..11u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let oob = dir.join("oob.ckpt");
    std::fs::write(&oob, torch_zip(&pkl, &[("0", &data)])).expect("write");
    let o = run(&[p(&oob), p(&out)]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tensor `model.w` reaches outside its storage"),
        "{err}"
    );
    assert!(!out.exists());
    // A stride-0 ("expanded") view of 12 elements over 11 is refused, naming the tensor too.
    let expanded: Vec<u8> = {
        let i = pkl
            .windows(6)
            .position(|w| w == [b'K', 12, 0x85, b'K', 1, 0x85])
            .expect("size and stride tuples");
        let mut v = pkl.clone();
        v[i + 4] = 0;
        v
    };
    std::fs::write(&oob, torch_zip(&expanded, &[("0", &data)])).expect("write");
    let o = run(&[p(&oob), p(&out)]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tensor `model.w` has overlapping/expanded strides"),
        "{err}"
    );
    assert!(!out.exists());
    // The same file with the view inside its storage converts (the assembly is right).
    let fixed: Vec<u8> = {
        let i = pkl
            .windows(4)
            .position(|w| w == [b'K', 12, 0x85, b'K'])
            .expect("size tuple");
        let mut v = pkl.clone();
        v[i + 1] = 11;
        v
    };
    std::fs::write(&oob, torch_zip(&fixed, &[("0", &data)])).expect("write");
    let o = run(&[p(&oob), p(&out)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let (got, _) = read_st(&out);
    assert_eq!(got["model.w"].2, data);

    // Not a checkpoint at all.
    let junk = dir.join("junk.ckpt");
    std::fs::write(&junk, b"\x13\x37 definitely not a model").expect("write");
    let o = run(&[p(&junk), p(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The magic-number pickle a legacy (non-zip) `torch.save` writes first, in pickle protocol
/// `proto` (2 to 5; from 4 on inside a FRAME).
fn legacy_magic(proto: u8) -> Vec<u8> {
    let mut v = vec![0x80, proto];
    if proto >= 4 {
        v.push(0x95);
        v.extend_from_slice(&13u64.to_le_bytes());
    }
    v.extend_from_slice(&[
        0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ]);
    v.push(b'.');
    v
}

#[test]
fn legacy_files_of_refused_pickle_protocols_are_named() {
    let dir = tempdir("legacy-protocols");
    let out = dir.join("o.safetensors");
    // A legacy file written with pickle_protocol=4 or 5: refused by default (protocol-4
    // opcodes), and said to be what it is rather than "not a torch checkpoint".
    for proto in [4u8, 5] {
        let f = dir.join(format!("p{proto}.pt"));
        let mut bytes = legacy_magic(proto);
        bytes.extend_from_slice(&[
            0x80, proto, 0x95, 4, 0, 0, 0, 0, 0, 0, 0, b'M', 0xe9, 3, b'.',
        ]);
        std::fs::write(&f, &bytes).expect("write");
        let o = run(&["--scan", p(&f)]);
        let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
        assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
        assert!(
            stdout.contains("format: torch legacy (pre-1.6, non-zip)")
                && stdout.contains(&format!("written with pickle protocol {proto}"))
                && !stdout.contains("not a torch checkpoint"),
            "{stdout}"
        );
        let o = run(&[p(&f), p(&out)]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("legacy-format") && err.contains(&format!("pickle protocol {proto}")),
            "{err}"
        );
    }
    // Text protocols 0 and 1 spell the magic number in decimal.
    let f = dir.join("p0.pt");
    std::fs::write(&f, b"L119547037146038801333356L\n.I1001\n.").expect("write");
    let o = run(&["--scan", p(&f)]);
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("text pickle protocol 0 or 1"), "{stdout}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_and_io_errors_exit_2() {
    let dir = tempdir("usage");
    let out = dir.join("o.safetensors");
    let input = fixture("ckpt/sd_zip.ckpt");
    let missing = dir.join("missing.ckpt");
    for args in [
        vec![],
        vec![p(&input)],
        vec![p(&input), p(&out), "extra"],
        vec![p(&input), p(&out), "--dtype"],
        vec![p(&input), p(&out), "--dtype", "f8"],
        vec![p(&input), p(&out), "--frobnicate"],
        vec!["--scan"],
        vec!["--scan", p(&input), p(&out)],
        vec!["--scan", p(&input), "--dtype", "f16"],
        vec![p(&missing), p(&out)],
        vec!["--scan", p(&missing)],
        vec![p(&dir), p(&out)],
        vec![p(&input), p(&dir.join("no-such-dir/o.safetensors"))],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(!o.stderr.is_empty(), "{args:?}: no message");
    }
    // A missing output folder is named; the temporary file beside the output is not.
    let target = dir.join("no-such-dir/o.safetensors");
    let err = text(&run(&[p(&input), p(&target)]).stderr);
    assert!(
        err.contains(p(&target))
            && err.contains("no-such-dir does not exist")
            && !err.contains(".partial"),
        "{err}"
    );
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).contains("usage: convert"));
    let _ = std::fs::remove_dir_all(&dir);
}
