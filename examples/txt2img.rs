//! The sdrs command line: text-to-image and image-to-image from a Stable Diffusion checkpoint.
//!
//! ```text
//! cargo run --release --example txt2img -- --model model.safetensors --prompt "a lighthouse at dusk" \
//!     --steps 20 --scheduler dpmpp-2m-karras --seed 42 --output out.png
//! ```
//!
//! Run with no `--model`, it uses the tiny random-weight model in `tests/fixtures/tiny-sd`, which
//! checks an install but draws only noise-like pictures. `--help` lists every flag.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use sd_core::adapters::{
    AdapterLibrary, Embedding, Hypernetwork, Lora, LoraUse, load_embedding_dir,
};
use sd_core::image::{self, RgbImage};
use sd_core::pipeline::{
    GenerateRequest, HypernetworkUse, LoadOptions, Pipeline, Progress, PromptSyntax,
};
use sd_core::schedulers::SchedulerKind;
use sd_core::weights::{SafetensorsFile, TensorSource, WriteDType, write_safetensors};
use sd_core::{Device, Tensor};

const USAGE: &str = "\
usage: txt2img [--model PATH] --prompt TEXT [options]

  --model PATH            checkpoint: a .safetensors or .ckpt/.pt/.bin file (original layout; pickle
                          checkpoints are read without running their code) or a diffusers folder
                          (default: the tiny random-weight test model, for checking an install)
  --config-dir DIR        diffusers-layout folder whose */config.json and
                          scheduler/scheduler_config.json describe a single-file checkpoint
                          (default: sizes inferred from tensor shapes, SD 1.5's scheduler)
  --prompt TEXT           what to draw
  --negative-prompt TEXT  what to steer away from (default: empty)
  --prompt-syntax NAME    a1111 (default): AUTOMATIC1111's prompt language, i.e. (word:1.2)
                          emphasis, [word], BREAK, prompts over 75 tokens, [from:to:step] editing,
                          [a|b] alternation, AND with weights; plain: the text as written,
                          truncated to 77 tokens, as diffusers reads it
  --steps N               denoising steps (default: 50)
  --guidance X            classifier-free guidance scale (default: 7.5)
  --scheduler NAME        ddim | pndm | euler | euler-a | lms | dpmpp-2m | dpmpp-2m-karras (default: pndm)
  --seed N                noise seed, as torch.manual_seed (default: random, printed)
  --width N --height N    image size, multiples of 8 (default: the model's native size, 512 for SD 1.x)
  --batch N               images per run (default: 1)
  --init-image PATH       img2img: start from this PNG or JPEG
  --strength X            img2img strength in (0, 1] (default: 0.8)
  --init-latents FILE     safetensors file with one f32 tensor `latents` [batch, 4, h/8, w/8]: unit
                          noise used instead of the seeded draw (scaled by the initial sigma)
  --save-latents FILE     write the final latents (before decoding) to FILE, same format
  --output PATH           PNG to write (default: output.png; batches add -1, -2, ... before .png)
  --device NAME           cpu (default), cuda or cuda:N
  --clip-skip N           use the text encoder's hidden state N layers from the end, counted as
                          AUTOMATIC1111 counts it (default: 1, the last layer)

adapters (each flag may be given several times; they apply in the order given):
  --lora PATH[:STRENGTH]  a LoRA / LyCORIS file (.safetensors, .pt, .ckpt, .bin) at STRENGTH
                          (default 1); PATH:TE:UNET gives separate text-encoder and UNet strengths
  --embedding PATH        a textual-inversion embedding, triggered by writing its name (the file
                          name without extension) in the prompt (a1111 prompt syntax only);
                          one made for another model family is skipped, and said so
  --hypernetwork PATH[:STRENGTH]
                          an AUTOMATIC1111 hypernetwork (.pt) at STRENGTH (default 1)
  --lora-dir DIR          folder where <lora:NAME:TE:UNET> tags in the prompt are looked up
  --hypernetwork-dir DIR  folder where <hypernet:NAME:STRENGTH> tags are looked up
  --embedding-dir DIR     load every embedding in DIR (as AUTOMATIC1111's embeddings folder)

  --help                  this text
";

/// Parsed command-line options.
struct Args {
    model: Option<PathBuf>,
    config_dir: Option<PathBuf>,
    prompt: Option<String>,
    negative_prompt: String,
    prompt_syntax: PromptSyntax,
    steps: usize,
    guidance: f64,
    scheduler: SchedulerKind,
    seed: Option<u64>,
    width: Option<usize>,
    height: Option<usize>,
    batch: usize,
    init_image: Option<PathBuf>,
    strength: f64,
    init_latents: Option<PathBuf>,
    save_latents: Option<PathBuf>,
    output: PathBuf,
    device: Device,
    clip_skip: usize,
    loras: Vec<(PathBuf, f32, f32)>,
    embeddings: Vec<PathBuf>,
    hypernetworks: Vec<(PathBuf, f32)>,
    lora_dirs: Vec<PathBuf>,
    hypernetwork_dirs: Vec<PathBuf>,
    embedding_dirs: Vec<PathBuf>,
}

/// Splits `PATH[:X[:Y]]`: trailing `:number` parts are strengths (at most `max`), the rest is
/// the path (which may itself contain `:`).
fn path_and_strengths(flag: &str, value: &str, max: usize) -> Result<(PathBuf, Vec<f32>), String> {
    let mut path = value;
    let mut numbers = Vec::new();
    while numbers.len() < max {
        let Some((head, tail)) = path.rsplit_once(':') else {
            break;
        };
        let Ok(x) = tail.parse::<f32>() else {
            // `FILE:word` where FILE exists and `FILE:word` does not: a mistyped strength
            // rather than a file name with a colon in it.
            if !Path::new(path).exists() && Path::new(head).is_file() {
                return Err(format!(
                    "{flag}: strength `{tail}` (after {head}) is not a number"
                ));
            }
            break;
        };
        if !x.is_finite() {
            return Err(format!("{flag}: strength `{tail}` is not a finite number"));
        }
        numbers.insert(0, x);
        path = head;
    }
    if path.is_empty() {
        return Err(format!("{flag}: `{value}` names no file"));
    }
    Ok((PathBuf::from(path), numbers))
}

fn parse_args(argv: &[String]) -> Result<Option<Args>, String> {
    let mut args = Args {
        model: None,
        config_dir: None,
        prompt: None,
        negative_prompt: String::new(),
        prompt_syntax: PromptSyntax::A1111,
        steps: 50,
        guidance: 7.5,
        scheduler: SchedulerKind::Pndm,
        seed: None,
        width: None,
        height: None,
        batch: 1,
        init_image: None,
        strength: 0.8,
        init_latents: None,
        save_latents: None,
        output: PathBuf::from("output.png"),
        device: Device::Cpu,
        clip_skip: 1,
        loras: Vec::new(),
        embeddings: Vec::new(),
        hypernetworks: Vec::new(),
        lora_dirs: Vec::new(),
        hypernetwork_dirs: Vec::new(),
        embedding_dirs: Vec::new(),
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: `{v}` is not a valid number"))
        }
        match flag.as_str() {
            "--model" => args.model = Some(PathBuf::from(value()?)),
            "--config-dir" => args.config_dir = Some(PathBuf::from(value()?)),
            "--prompt" => args.prompt = Some(value()?.clone()),
            "--negative-prompt" => args.negative_prompt = value()?.clone(),
            "--prompt-syntax" => {
                let v = value()?;
                args.prompt_syntax = v
                    .parse::<PromptSyntax>()
                    .map_err(|_| format!("--prompt-syntax: unknown `{v}` (a1111 or plain)"))?;
            }
            "--steps" => args.steps = number(flag, value()?)?,
            "--guidance" => args.guidance = number(flag, value()?)?,
            "--scheduler" => {
                let v = value()?;
                args.scheduler = v.parse::<SchedulerKind>().map_err(|_| {
                    format!("--scheduler: unknown `{v}` (ddim, pndm, euler, euler-a, lms, dpmpp-2m, dpmpp-2m-karras)")
                })?;
            }
            "--seed" => args.seed = Some(number(flag, value()?)?),
            "--width" => args.width = Some(number(flag, value()?)?),
            "--height" => args.height = Some(number(flag, value()?)?),
            "--batch" => args.batch = number(flag, value()?)?,
            "--init-image" => args.init_image = Some(PathBuf::from(value()?)),
            "--strength" => args.strength = number(flag, value()?)?,
            "--init-latents" => args.init_latents = Some(PathBuf::from(value()?)),
            "--save-latents" => args.save_latents = Some(PathBuf::from(value()?)),
            "--output" => args.output = PathBuf::from(value()?),
            "--device" => args.device = Device::parse(value()?).map_err(|e| e.to_string())?,
            "--clip-skip" => args.clip_skip = number(flag, value()?)?,
            "--lora" => {
                let (path, s) = path_and_strengths(flag, value()?, 2)?;
                let (te, unet) = match s.as_slice() {
                    [] => (1.0, 1.0),
                    [x] => (*x, *x),
                    [te, unet, ..] => (*te, *unet),
                };
                args.loras.push((path, te, unet));
            }
            "--hypernetwork" => {
                let (path, s) = path_and_strengths(flag, value()?, 1)?;
                args.hypernetworks
                    .push((path, s.first().copied().unwrap_or(1.0)));
            }
            "--embedding" => args.embeddings.push(PathBuf::from(value()?)),
            "--lora-dir" => args.lora_dirs.push(PathBuf::from(value()?)),
            "--hypernetwork-dir" => args.hypernetwork_dirs.push(PathBuf::from(value()?)),
            "--embedding-dir" => args.embedding_dirs.push(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(args))
}

/// The tiny fixture model shipped in the repository.
fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd")
}

fn output_path(base: &Path, index: usize, batch: usize) -> PathBuf {
    if batch == 1 {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = base
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    base.with_file_name(format!("{stem}-{}.{ext}", index + 1))
}

/// Fails before the model loads when an output would go into a folder that does not exist, so
/// a long generation is not thrown away at the end.
fn check_output_folder(flag: &str, path: &Path) -> Result<(), String> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(format!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        )),
        _ => Ok(()),
    }
}

fn read_latents(path: &Path) -> sd_core::Result<Tensor> {
    let file = SafetensorsFile::open(path)?;
    let info = file
        .tensor_info("latents")
        .ok_or_else(|| sd_core::Error::MissingWeight {
            name: "latents".into(),
            source_desc: path.display().to_string(),
        })?;
    let data = file.read_f32("latents")?;
    Tensor::from_vec(data, info.shape, Device::Cpu)
}

/// Loads the adapters the flags name into the request.
fn add_adapters(args: &Args, request: &mut GenerateRequest) -> sd_core::Result<()> {
    for (path, te, unet) in &args.loras {
        let lora = Arc::new(Lora::open(path)?);
        request
            .loras
            .push(LoraUse::with_strengths(lora, *te, *unet));
    }
    for (path, strength) in &args.hypernetworks {
        request.hypernetworks.push(HypernetworkUse::new(
            Arc::new(Hypernetwork::open(path)?),
            *strength,
        ));
    }
    for dir in &args.embedding_dirs {
        let found = load_embedding_dir(dir)?;
        for (path, e) in &found.skipped {
            eprintln!("note: skipped embedding {}: {e}", path.display());
        }
        request.embeddings.extend(found.embeddings);
    }
    for path in &args.embeddings {
        request.embeddings.push(Arc::new(Embedding::open(path)?));
    }
    if !args.lora_dirs.is_empty() || !args.hypernetwork_dirs.is_empty() {
        let mut library = AdapterLibrary::new();
        for dir in &args.lora_dirs {
            library = library.with_lora_dir(dir);
        }
        for dir in &args.hypernetwork_dirs {
            library = library.with_hypernetwork_dir(dir);
        }
        request.adapter_library = Some(Arc::new(library));
    }
    Ok(())
}

/// A progress bar on stderr.
fn draw_progress(p: &Progress, started: Instant) {
    const WIDTH: usize = 30;
    let filled = WIDTH * p.step / p.total_steps.max(1);
    let per_step = started.elapsed().as_secs_f64() / p.step.max(1) as f64;
    eprint!(
        "\r[{}{}] {}/{} steps, {:.2} s/step ",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        p.step,
        p.total_steps,
        per_step
    );
    if p.step == p.total_steps {
        eprintln!();
    }
}

fn run(args: Args) -> Result<(), String> {
    let prompt = args
        .prompt
        .clone()
        .ok_or("--prompt is required (see --help)")?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            eprintln!(
                "note: no --model given; using the tiny random-weight test model in {}.\n      \
                 It checks that sdrs works; its pictures are noise. Pass --model for real images.",
                fixture_model().display()
            );
            fixture_model()
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        (nanos as u64) & 0xffff_ffff
    });
    check_output_folder("--output", &args.output)?;
    if let Some(path) = &args.save_latents {
        check_output_folder("--save-latents", path)?;
    }
    let load_started = Instant::now();
    let pipeline = Pipeline::load(
        &model,
        &LoadOptions {
            device: args.device,
            config_dir: args.config_dir.clone(),
            ..LoadOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "loaded {} in {:.1} s",
        model.display(),
        load_started.elapsed().as_secs_f64()
    );

    let (default_w, default_h) = pipeline.default_size();
    let mut request = GenerateRequest::new(prompt);
    request.negative_prompt = args.negative_prompt.clone();
    request.prompt_syntax = args.prompt_syntax;
    request.steps = args.steps;
    request.guidance_scale = args.guidance;
    request.scheduler = args.scheduler;
    request.seed = seed;
    request.width = args.width.unwrap_or(default_w);
    request.height = args.height.unwrap_or(default_h);
    request.batch_size = args.batch;
    request.strength = args.strength;
    request.clip_skip = args.clip_skip;
    add_adapters(&args, &mut request).map_err(|e| e.to_string())?;
    if let Some(path) = &args.init_image {
        request.init_image = Some(image::load_image(path).map_err(|e| e.to_string())?);
        if args.width.is_none() && args.height.is_none() {
            // As diffusers: without an explicit size, img2img keeps the image's size (rounded
            // down to the latent factor).
            let f = pipeline.latent_factor();
            let img: &RgbImage = request.init_image.as_ref().ok_or("init image vanished")?;
            request.width = img.width / f * f;
            request.height = img.height / f * f;
        }
    }
    if let Some(path) = &args.init_latents {
        request.initial_latents = Some(read_latents(path).map_err(|e| e.to_string())?);
    }
    eprintln!(
        "seed {seed}, {}x{}, {} steps, {}",
        request.width,
        request.height,
        request.steps,
        request.scheduler.as_str()
    );

    let started = Instant::now();
    let result = pipeline
        .generate(&request, &mut |p| {
            draw_progress(p, started);
            true
        })
        .map_err(|e| e.to_string())?;
    eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());
    // What the adapters did: modules patched, every key of a LoRA file not applied, by name.
    eprint!("{}", result.adapters);

    if let Some(path) = &args.save_latents {
        let data = result.latents.to_vec().map_err(|e| e.to_string())?;
        write_safetensors(
            path,
            &[("latents", result.latents.dims(), &data)],
            WriteDType::F32,
            None,
        )
        .map_err(|e| e.to_string())?;
        eprintln!("wrote latents to {}", path.display());
    }
    for (i, (img, info)) in result.images.iter().zip(&result.infotexts).enumerate() {
        let out = output_path(&args.output, i, result.images.len());
        image::save_png(&out, img, &[("parameters", info.as_str())]).map_err(|e| e.to_string())?;
        println!("{}", out.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&argv) {
        Ok(None) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Some(args)) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}\n(txt2img --help lists every flag)");
            ExitCode::from(2)
        }
    }
}
