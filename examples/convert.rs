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
//! An AUTOMATIC1111 textual-inversion file is written as an embedding (its vectors as
//! `emb_params`). A genuine file that holds no model weights (a hypernetwork, an optimizer
//! state) is not converted: the message says what it holds.
//!
//! Exit status: 0 loadable / converted; 1 refused (hostile or malformed file, or a genuine one
//! with nothing to convert; the reason on stderr); 2 usage or I/O error.

use std::process::ExitCode;

use sd_core::weights::pickle::LoadErrorKind;
use sd_core::weights::{ConvertDType, Verdict, convert_to_safetensors, scan_checkpoint};
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

exit status: 0 loadable/converted, 1 refused (hostile or malformed, or nothing to convert:
             a hypernetwork, an optimizer state), 2 usage or I/O error";

/// How the command ends, mapped to the exit status.
enum Failure {
    /// Bad arguments (exit 2).
    Usage(String),
    /// The file could not be read or written (exit 2).
    Io(String),
    /// The file was refused: hostile or malformed (exit 1).
    Refused(String),
    /// The file is genuine but holds no model weights (exit 1, as a refusal: the message says
    /// what the file holds).
    NothingToConvert(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        if let Error::Checkpoint { source, .. } = &e
            && matches!(source.kind, LoadErrorKind::NoModelWeights { .. })
        {
            return Failure::NothingToConvert(e.to_string());
        }
        match e.kind() {
            ErrorKind::Io | ErrorKind::NotFound => Failure::Io(e.to_string()),
            _ => Failure::Refused(e.to_string()),
        }
    }
}

enum Command {
    Convert {
        input: String,
        output: String,
        dtype: Option<ConvertDType>,
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
                dtype = Some(ConvertDType::parse(v).ok_or_else(|| {
                    Failure::Usage(format!("--dtype `{v}`: expected f32, f16 or bf16"))
                })?);
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

fn convert(input: &str, output: &str, dtype: Option<ConvertDType>) -> Result<(), Failure> {
    let summary = convert_to_safetensors(input, output, dtype)?;
    println!("{input} -> {output}: {summary}");
    Ok(())
}

fn scan(input: &str) -> Result<(), Failure> {
    let report = scan_checkpoint(input)?;
    println!("{report}");
    match report.verdict {
        Verdict::Loadable => Ok(()),
        Verdict::Refused { reason } => Err(Failure::Refused(reason)),
    }
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
        Err(Failure::NothingToConvert(msg)) => {
            eprintln!("convert: {msg}");
            ExitCode::from(1)
        }
    }
}
