//! Extracts a LoRA from a fine-tuned model (a DreamBooth or other full fine-tune) and the base it
//! was trained from: the truncated SVD of every trained layer's weight difference, written as a
//! kohya-format `.safetensors` LoRA that AUTOMATIC1111, diffusers and ComfyUI load.
//!
//! ```text
//! extract_lora --base PATH --tuned PATH --output OUT.safetensors
//!              [--rank N | --energy F [--max-rank N]] [--conv] [--conv-rank N]
//!              [--dtype f16|f32|bf16] [--min-diff X] [--split up|balanced]
//!              [--no-text-encoder] [--verbose]
//! ```
//!
//! Exit status: 0 written; 1 refused (the models do not match, a model file is malformed or
//! unsupported, or nothing differs); 2 usage or I/O error.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::process::ExitCode;

use sd_core::adapters::extract::{
    ExtractOptions, ExtractProgress, ExtractedLora, FactorSplit, Network, RankRule, SkipReason,
    extract_lora,
};
use sd_core::weights::WriteDType;
use sd_core::{Error, ErrorKind};

const USAGE: &str = "\
usage: extract_lora --base PATH --tuned PATH --output OUT.safetensors
                    [--rank N | --energy F [--max-rank N]] [--conv] [--conv-rank N]
                    [--dtype f16|f32|bf16] [--min-diff X] [--split up|balanced]
                    [--no-text-encoder] [--verbose]

  --base PATH        the model the fine-tune started from: a diffusers folder or a single
                     .safetensors/.ckpt checkpoint (Stable Diffusion 1.x or 2.x)
  --tuned PATH       the fine-tuned model, in any of the same layouts
  --output FILE      the LoRA to write (.safetensors, kohya format)
  --rank N           keep N singular values per layer (default 4)
  --energy F         instead, per layer the smallest rank keeping the fraction F (0 < F <= 1) of
                     the squared singular values (kohya resize_lora sv_fro with sqrt(F))
  --max-rank N       with --energy: the largest rank a layer gets (default 128)
  --conv             also extract the ResNet and sampler 3x3 convolutions (LoCon), at --rank
                     (or by --energy)
  --conv-rank N      the rank of 3x3 convolutions (with --energy: their largest rank); implies
                     --conv
  --dtype D          f16 (default), f32 or bf16
  --min-diff X       skip layers whose largest |W_tuned - W_base| is at most X (default 0: only
                     layers that are identical, or equal at the half precision one model is
                     stored in; kohya uses 0.01 for the text encoder)
  --split S          up (default, kohya's: lora_up = U*S, lora_down = V^T) or balanced (sqrt(S)
                     on both factors)
  --no-text-encoder  extract the UNet only
  --verbose          list every layer with its rank and kept energy

exit status: 0 written, 1 refused (models do not match, malformed or unsupported model,
nothing differs), 2 usage or I/O error";

/// `println!` into a `String` (writing to a `String` cannot fail).
macro_rules! line {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// How the command ends, mapped to the exit status.
enum Failure {
    /// `--help` (exit 0).
    Help,
    /// Bad arguments (exit 2).
    Usage(String),
    /// A file could not be read or written (exit 2).
    Io(String),
    /// The models were refused (exit 1).
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

struct Args {
    base: String,
    tuned: String,
    output: String,
    options: ExtractOptions,
    dtype: WriteDType,
    verbose: bool,
}

const DEFAULT_RANK: usize = 4;
const DEFAULT_MAX_RANK: usize = 128;

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a str, Failure> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))
}

fn positive(text: &str, flag: &str) -> Result<usize, Failure> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Failure::Usage(format!(
            "{flag} `{text}`: expected a whole number of at least 1"
        ))),
    }
}

fn parse_args(args: &[String]) -> Result<Args, Failure> {
    let (mut base, mut tuned, mut output) = (None, None, None);
    let (mut rank, mut energy, mut max_rank, mut conv_rank) = (None, None, None, None);
    let mut conv = false;
    let mut dtype = WriteDType::F16;
    let mut options = ExtractOptions::default();
    let mut verbose = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Err(Failure::Help),
            "--base" => base = Some(value(&mut it, a)?.to_string()),
            "--tuned" => tuned = Some(value(&mut it, a)?.to_string()),
            "--output" | "-o" => output = Some(value(&mut it, a)?.to_string()),
            "--rank" => rank = Some(positive(value(&mut it, a)?, a)?),
            "--max-rank" => max_rank = Some(positive(value(&mut it, a)?, a)?),
            "--conv-rank" => conv_rank = Some(positive(value(&mut it, a)?, a)?),
            "--conv" => conv = true,
            "--energy" => {
                let v = value(&mut it, a)?;
                match v.parse::<f64>() {
                    Ok(f) if f > 0.0 && f <= 1.0 => energy = Some(f),
                    _ => {
                        return Err(Failure::Usage(format!(
                            "--energy `{v}`: expected a fraction in (0, 1], such as 0.9"
                        )));
                    }
                }
            }
            "--min-diff" => {
                let v = value(&mut it, a)?;
                match v.parse::<f32>() {
                    Ok(x) if x.is_finite() && x >= 0.0 => options.min_diff = x,
                    _ => {
                        return Err(Failure::Usage(format!(
                            "--min-diff `{v}`: expected a number of at least 0"
                        )));
                    }
                }
            }
            "--dtype" => {
                dtype = match value(&mut it, a)? {
                    "f16" | "fp16" => WriteDType::F16,
                    "f32" | "float" => WriteDType::F32,
                    "bf16" => WriteDType::BF16,
                    other => {
                        return Err(Failure::Usage(format!(
                            "--dtype `{other}`: expected f16, f32 or bf16"
                        )));
                    }
                }
            }
            "--split" => {
                options.split = match value(&mut it, a)? {
                    "up" => FactorSplit::Up,
                    "balanced" => FactorSplit::Balanced,
                    other => {
                        return Err(Failure::Usage(format!(
                            "--split `{other}`: expected up or balanced"
                        )));
                    }
                }
            }
            "--no-text-encoder" => options.text_encoder = false,
            "--verbose" | "-v" => verbose = true,
            other => {
                return Err(Failure::Usage(if other.starts_with('-') {
                    format!("unknown option `{other}`")
                } else {
                    format!(
                        "unexpected argument `{other}` (paths go after --base, --tuned, --output)"
                    )
                }));
            }
        }
    }
    let missing = |flag: &str| Failure::Usage(format!("{flag} is required"));
    let base = base.ok_or_else(|| missing("--base"))?;
    let tuned = tuned.ok_or_else(|| missing("--tuned"))?;
    let output = output.ok_or_else(|| missing("--output"))?;
    if !output.to_ascii_lowercase().ends_with(".safetensors") {
        return Err(Failure::Usage(format!(
            "--output `{output}`: the LoRA is written as .safetensors; name the file so"
        )));
    }
    options.rank = match (rank, energy, max_rank) {
        (Some(_), Some(_), _) => {
            return Err(Failure::Usage(
                "--rank and --energy exclude each other (--max-rank caps --energy)".to_string(),
            ));
        }
        (_, None, Some(_)) => {
            return Err(Failure::Usage("--max-rank goes with --energy".to_string()));
        }
        (r, None, None) => RankRule::Fixed(r.unwrap_or(DEFAULT_RANK)),
        (None, Some(fraction), cap) => RankRule::Energy {
            fraction,
            max_rank: cap.unwrap_or(DEFAULT_MAX_RANK),
        },
    };
    if conv || conv_rank.is_some() {
        options.conv_rank = Some(match options.rank {
            RankRule::Fixed(r) => RankRule::Fixed(conv_rank.unwrap_or(r)),
            RankRule::Energy { fraction, max_rank } => RankRule::Energy {
                fraction,
                max_rank: conv_rank.unwrap_or(max_rank),
            },
        });
    }
    Ok(Args {
        base,
        tuned,
        output,
        options,
        dtype,
        verbose,
    })
}

fn run(args: &Args) -> Result<(), Failure> {
    if Path::new(&args.base) == Path::new(&args.tuned) {
        return Err(Failure::Usage(
            "--base and --tuned name the same model".to_string(),
        ));
    }
    // Progress only on a terminal; scripts read the summary.
    let interactive = std::io::stderr().is_terminal();
    let mut progress = |p: &ExtractProgress<'_>| {
        if interactive && (p.step.is_multiple_of(16) || p.step == p.total) {
            eprint!("\rextract_lora: {}/{} tensors compared", p.step, p.total);
            if p.step == p.total {
                eprintln!();
            }
        }
        true
    };
    let lora = extract_lora(&args.base, &args.tuned, &args.options, &mut progress)?;
    if lora.layers.is_empty() {
        return Err(Failure::Refused(format!(
            "no layer a LoRA trains differs between {} and {} ({} identical or negligible); \
             nothing written",
            args.base,
            args.tuned,
            lora.skipped.len()
        )));
    }
    lora.save(&args.output, args.dtype)?;
    // Ignore a closed stdout (`| head`): the file is written.
    let _ = std::io::stdout().write_all(summary(&lora, args).as_bytes());
    Ok(())
}

fn percent(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// The summary printed after writing (a string, so that a closed pipe cannot panic the printing).
fn summary(lora: &ExtractedLora, args: &Args) -> String {
    let mut out = String::new();
    let o = &lora.options;
    let count = |n: Network| lora.layers.iter().filter(|l| l.target.network == n).count();
    let bytes = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    line!(
        out,
        "wrote {}: {} layers ({} text encoder, {} UNet), {}, {:.1} KiB",
        args.output,
        lora.layers.len(),
        count(Network::TextEncoder),
        count(Network::Unet),
        match args.dtype {
            WriteDType::F16 => "f16",
            WriteDType::F32 => "f32",
            WriteDType::BF16 => "bf16",
        },
        bytes as f64 / 1024.0
    );
    let conv = o
        .conv_rank
        .map(|r| format!("; 3x3 convolutions: {}", r.describe()))
        .unwrap_or_default();
    line!(out, "rule: {}{conv}", o.rank.describe());
    let mut ranks: Vec<usize> = lora.layers.iter().map(|l| l.rank()).collect();
    ranks.sort_unstable();
    line!(
        out,
        "ranks: min {}, median {}, max {}",
        ranks[0],
        ranks[ranks.len() / 2],
        ranks[ranks.len() - 1]
    );
    let energies: Vec<f64> = lora
        .layers
        .iter()
        .map(|l| l.factors.kept_energy())
        .collect();
    let mean = energies.iter().sum::<f64>() / energies.len() as f64;
    if let Some((worst, e)) = lora
        .layers
        .iter()
        .zip(&energies)
        .min_by(|a, b| a.1.total_cmp(b.1))
    {
        line!(
            out,
            "kept energy: mean {}, least {} ({})",
            percent(mean),
            percent(*e),
            worst.name()
        );
    }
    if args.verbose {
        for (l, e) in lora.layers.iter().zip(&energies) {
            line!(
                out,
                "  {} rank {}/{} energy {} max |dW| {:.3e}",
                l.name(),
                l.rank(),
                l.factors.singular_values.len(),
                percent(*e),
                l.max_abs_diff
            );
        }
    }
    if !lora.skipped.is_empty() {
        let identical = lora
            .skipped
            .iter()
            .filter(|s| s.reason == SkipReason::Identical)
            .count();
        line!(
            out,
            "skipped {} layers ({identical} identical, {} equal at half precision or within \
             --min-diff)",
            lora.skipped.len(),
            lora.skipped.len() - identical
        );
        let shown = if args.verbose { usize::MAX } else { 10 };
        for s in lora
            .skipped
            .iter()
            .filter(|s| args.verbose || s.reason != SkipReason::Identical)
            .take(shown)
        {
            line!(out, "  {}: {}", s.target.kohya_name(), s.reason);
        }
    }
    if !lora.uncovered.is_empty() {
        line!(
            out,
            "not carried by the LoRA: {} other tensors differ (biases, norms, embeddings, layers \
             left out{})",
            lora.uncovered.len(),
            if o.conv_rank.is_none() {
                "; add --conv for 3x3 convolutions"
            } else {
                ""
            }
        );
        let mut sorted: Vec<_> = lora.uncovered.iter().collect();
        sorted.sort_by(|a, b| b.max_abs_diff.total_cmp(&a.max_abs_diff));
        let shown = if args.verbose { sorted.len() } else { 10 };
        for u in sorted.iter().take(shown) {
            line!(
                out,
                "  {} {}: max |diff| {:.3e}",
                u.component,
                u.name,
                u.max_abs_diff
            );
        }
        if sorted.len() > shown {
            line!(
                out,
                "  ... {} more (--verbose lists them)",
                sorted.len() - shown
            );
        }
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args).and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("extract_lora: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Io(msg)) => {
            eprintln!("extract_lora: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Refused(msg)) => {
            eprintln!("extract_lora: refused: {msg}");
            ExitCode::from(1)
        }
    }
}
