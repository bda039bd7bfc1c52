//! Converts PyTorch checkpoints to safetensors, or reports what one holds, without running any
//! of its code.
//!
//! ```text
//! convert INPUT OUTPUT.safetensors [--dtype f32|f16|bf16]
//! convert --scan INPUT
//! ```
//!
//! `INPUT` is a `.ckpt`/`.pt`/`.bin` (torch zip or legacy format) or a `.safetensors` file; the
//! format is recognised from the content, never from the extension. Tensor names are kept as
//! the reader names them (the `state_dict` entry if the root has one, nested dicts flattened
//! with `.`), scalar entries such as `global_step` become safetensors metadata (strings).
//! Without `--dtype` every tensor keeps its stored dtype; with it, float tensors are converted
//! and integer/bool tensors (`position_ids`) are kept as stored.
//!
//! Exit status: 0 loadable / converted; 1 refused (hostile or malformed file; the reason on
//! stderr); 2 usage or I/O error.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use half::{bf16, f16};
use sd_core::weights::ckpt::{CkptFile, CkptFormat};
use sd_core::weights::layout::{FileKind, sniff};
use sd_core::weights::pickle::Limits;
use sd_core::weights::{
    RawTensor, SafetensorsFile, StoredDType, TensorSource, write_safetensors_raw,
};
use sd_core::{Error, ErrorKind};

const USAGE: &str = "\
usage: convert INPUT OUTPUT.safetensors [--dtype f32|f16|bf16]
       convert --scan INPUT

  INPUT            a .ckpt/.pt/.bin PyTorch checkpoint (zip or legacy format) or a .safetensors
                   file; pickle code is never run
  OUTPUT           the .safetensors file to write (tensor names and metadata kept as stored)
  --dtype D        convert float tensors to f32, f16 or bf16 (default: keep each stored dtype;
                   integer and bool tensors are always kept)
  --scan           report the format, tensors, metadata and every global the pickle names,
                   and a verdict, without converting

exit status: 0 loadable/converted, 1 refused (hostile or malformed), 2 usage or I/O error";

/// Tensors listed one by one up to this count; beyond it, the first ones and a summary.
const LIST_ALL_UP_TO: usize = 64;

/// How the command ends, mapped to the exit status.
enum Failure {
    /// Bad arguments (exit 2).
    Usage(String),
    /// The file could not be read or written (exit 2).
    Io(String),
    /// The file was refused: hostile or malformed (exit 1).
    Refused(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Io | ErrorKind::NotFound => Failure::Io(e.to_string()),
            _ => Failure::Refused(e.to_string()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    F32,
    F16,
    BF16,
}

enum Command {
    Convert {
        input: String,
        output: String,
        dtype: Option<Target>,
    },
    Scan {
        input: String,
    },
}

fn parse_args(args: &[String]) -> Result<Command, Failure> {
    let mut positional = Vec::new();
    let mut dtype = None;
    let mut scan = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Err(Failure::Usage(String::new())),
            "--scan" => scan = true,
            "--dtype" => {
                let v = it
                    .next()
                    .ok_or_else(|| Failure::Usage("--dtype needs a value".to_string()))?;
                dtype = Some(match v.as_str() {
                    "f32" => Target::F32,
                    "f16" => Target::F16,
                    "bf16" => Target::BF16,
                    other => {
                        return Err(Failure::Usage(format!(
                            "--dtype `{other}`: expected f32, f16 or bf16"
                        )));
                    }
                });
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(Failure::Usage(format!("unknown option `{s}`")));
            }
            _ => positional.push(a.clone()),
        }
    }
    match (scan, positional.as_slice(), dtype) {
        (true, [input], None) => Ok(Command::Scan {
            input: input.clone(),
        }),
        (true, _, Some(_)) => Err(Failure::Usage("--scan takes no --dtype".to_string())),
        (true, _, None) => Err(Failure::Usage("--scan takes exactly one INPUT".to_string())),
        (false, [input, output], dtype) => Ok(Command::Convert {
            input: input.clone(),
            output: output.clone(),
            dtype,
        }),
        (false, _, _) => Err(Failure::Usage(
            "expected INPUT and OUTPUT.safetensors".to_string(),
        )),
    }
}

/// An opened input: a checkpoint or a safetensors file.
enum Input {
    Ckpt(CkptFile),
    Safetensors(SafetensorsFile),
}

impl Input {
    fn source(&self) -> &dyn TensorSource {
        match self {
            Input::Ckpt(c) => c,
            Input::Safetensors(s) => s,
        }
    }

    fn raw_bytes(&self, name: &str) -> Result<Vec<u8>, Error> {
        match self {
            Input::Ckpt(c) => {
                let id = c.tensor_id(name).ok_or_else(|| Error::MissingWeight {
                    name: name.to_string(),
                    source_desc: c.describe(),
                })?;
                c.read_bytes(id)
            }
            Input::Safetensors(s) => s.read_bytes(name),
        }
    }
}

fn file_kind(path: &Path) -> Result<FileKind, Failure> {
    let meta =
        std::fs::metadata(path).map_err(|e| Failure::Io(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Failure::Io(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| Failure::Io(format!("{}: {e}", path.display())))?;
    Ok(sniff(&head, meta.len()))
}

fn open_input(path: &Path, kind: FileKind) -> Result<Input, Failure> {
    match kind {
        FileKind::Safetensors => Ok(Input::Safetensors(SafetensorsFile::open(path)?)),
        FileKind::Zip | FileKind::Pickle => {
            Ok(Input::Ckpt(CkptFile::open(path, &Limits::default())?))
        }
        other => Err(Failure::Refused(format!(
            "{}: {}, not a checkpoint this tool reads",
            path.display(),
            describe_kind(other)
        ))),
    }
}

fn describe_kind(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Safetensors => "safetensors",
        FileKind::Zip => "zip archive",
        FileKind::Pickle => "pickle stream",
        FileKind::Tar => "tar archive (pre-1.0 torch format)",
        FileKind::SevenZip => "7-zip archive",
        FileKind::Gguf => "GGUF file",
        FileKind::Empty => "empty file",
        FileKind::Unknown => "unknown format",
    }
}

fn encode(values: &[f32], t: Target) -> (StoredDType, Vec<u8>) {
    match t {
        Target::F32 => (
            StoredDType::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        Target::F16 => (
            StoredDType::F16,
            values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        Target::BF16 => (
            StoredDType::BF16,
            values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
        ),
    }
}

fn convert(input: &str, output: &str, dtype: Option<Target>) -> Result<(), Failure> {
    let path = Path::new(input);
    let file = open_input(path, file_kind(path)?)?;
    let src = file.source();
    let names = src.tensor_names();
    if names.is_empty() {
        return Err(Failure::Refused(format!(
            "{input}: holds no state-dict tensors (an embedding or hypernetwork layout, or an \
             empty checkpoint); nothing to convert"
        )));
    }
    let mut tensors = Vec::with_capacity(names.len());
    for name in &names {
        let info = src.tensor_info(name).ok_or_else(|| {
            Failure::Refused(format!("{input}: tensor `{name}` has no declaration"))
        })?;
        let (dt, data) = match dtype {
            Some(t) if info.dtype.is_float() && !is_target(info.dtype, t) => {
                encode(&src.read_f32(name)?, t)
            }
            _ => (info.dtype, file.raw_bytes(name)?),
        };
        tensors.push(RawTensor {
            name: name.clone(),
            dtype: dt,
            shape: info.shape.dims().to_vec(),
            data,
        });
    }
    let metadata: HashMap<String, String> = src.metadata();
    let meta = (!metadata.is_empty()).then_some(&metadata);
    write_safetensors_raw(output, &tensors, meta).map_err(|e| Failure::Io(e.to_string()))?;
    println!(
        "{input} -> {output}: {} tensors, {} metadata entries",
        tensors.len(),
        metadata.len()
    );
    Ok(())
}

fn is_target(d: StoredDType, t: Target) -> bool {
    matches!(
        (d, t),
        (StoredDType::F32, Target::F32)
            | (StoredDType::F16, Target::F16)
            | (StoredDType::BF16, Target::BF16)
    )
}

fn scan(input: &str) -> Result<(), Failure> {
    let path = Path::new(input);
    let kind = file_kind(path)?;
    println!("file: {input}");
    let file = match open_input(path, kind) {
        Ok(f) => f,
        Err(Failure::Refused(reason)) => {
            println!("format: {}", describe_kind(kind));
            println!("verdict: REFUSED (nothing was executed)");
            return Err(Failure::Refused(reason));
        }
        Err(e) => return Err(e),
    };
    let format = match &file {
        Input::Safetensors(_) => "safetensors".to_string(),
        Input::Ckpt(c) => match c.format() {
            CkptFormat::Zip {
                prefix,
                version,
                unreferenced_records,
            } => format!(
                "torch zip (directory `{prefix}`, version {version}, {unreferenced_records} \
                 unreferenced storage records)"
            ),
            CkptFormat::Legacy => "torch legacy (pre-1.6, non-zip)".to_string(),
        },
    };
    println!("format: {format}");
    let src = file.source();
    let names = src.tensor_names();
    println!("tensors: {}", names.len());
    let mut by_dtype: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let Some(info) = src.tensor_info(name) else {
            continue;
        };
        let numel: u64 = info.shape.dims().iter().map(|&d| d as u64).product();
        let entry = by_dtype.entry(info.dtype.to_string()).or_default();
        entry.0 += 1;
        entry.1 += numel * info.dtype.size_in_bytes() as u64;
        if names.len() <= LIST_ALL_UP_TO || i < LIST_ALL_UP_TO / 2 {
            println!(
                "  {} {} {:?}",
                sd_core::weights::pickle::escape(name),
                info.dtype,
                info.shape.dims()
            );
        } else if i == LIST_ALL_UP_TO / 2 {
            println!("  ... {} more", names.len() - i);
        }
    }
    for (dt, (count, bytes)) in &by_dtype {
        println!("  summary: {count} tensors of {dt}, {bytes} bytes");
    }
    let mut meta: Vec<_> = src.metadata().into_iter().collect();
    meta.sort();
    println!("metadata: {}", meta.len());
    for (k, v) in &meta {
        println!(
            "  {} = {}",
            sd_core::weights::pickle::escape(k),
            sd_core::weights::pickle::escape(v)
        );
    }
    if let Input::Ckpt(c) = &file {
        let doc = c.document();
        let mut globals: BTreeMap<(String, String), (usize, u64)> = BTreeMap::new();
        for g in &doc.globals {
            let e = globals
                .entry((g.module.clone(), g.name.clone()))
                .or_insert((0, g.offset));
            e.0 += 1;
        }
        println!("globals: {} distinct", globals.len());
        for ((m, n), (count, first)) in &globals {
            println!("  {m}.{n} x{count} (first at pickle byte {first})");
        }
        let sd = c.state_dict();
        println!(
            "verdict: LOADABLE (nothing was executed; every global is on the allow-list; {} \
             tensors, {} entries ignored)",
            names.len(),
            sd.ignored
        );
    } else {
        println!("verdict: LOADABLE (safetensors holds no code)");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(|cmd| match cmd {
        Command::Convert {
            input,
            output,
            dtype,
        } => convert(&input, &output, dtype),
        Command::Scan { input } => scan(&input),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("convert: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Io(msg)) => {
            eprintln!("convert: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Refused(msg)) => {
            eprintln!("convert: refused: {msg}");
            ExitCode::from(1)
        }
    }
}
