//! Builds the C programs in `tests/c/` and `examples/c/` against `include/sdrs.h` and the static
//! library (`libsdrs.a`, built by cargo together with this test because sd-ffi's lib target
//! lists `staticlib`), runs them under AddressSanitizer (with leak detection) and
//! UndefinedBehaviorSanitizer where the compiler supports them, and compares the pixels the C
//! API produced with the Rust API's, exactly.
//!
//! Needs a C compiler (`$CC`, default `cc`); the test fails if there is none. Without sanitizer
//! runtimes the programs run unsanitized, unless `SDRS_REQUIRE_SANITIZERS` is set
//! (`tools/test_all.sh` sets it when they are available), which makes that a failure.
//! LeakSanitizer needs no suppressions: the library's only process-lifetime allocations (the
//! worker thread pool, thread-locals) stay reachable, which LeakSanitizer does not report.

use std::path::{Path, PathBuf};
use std::process::Command;

use sd_core::image::{self, RgbImage};
use sd_core::pipeline::{GenerateRequest, LoadOptions, Pipeline};
use sd_core::schedulers::SchedulerKind;
use sd_core::{Device, Tensor};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SIDE: usize = 64;
const STEPS: usize = 4;

fn ffi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo_dir() -> PathBuf {
    ffi_dir().join("..")
}

fn model_dir() -> PathBuf {
    repo_dir().join("tests/fixtures/tiny-sd")
}

fn out_dir(name: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("c_api")
        .join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `target/<profile>/libsdrs.a`: the test binary lives in `target/<profile>/deps/`.
fn staticlib() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("test binary has no target directory")?;
    let lib = profile_dir.join("libsdrs.a");
    if !lib.exists() {
        return Err(format!("{} not found; run `cargo build -p sd-ffi`", lib.display()).into());
    }
    Ok(lib)
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_string())
}

/// Whether the compiler can build and run a sanitized program (libasan / libubsan present).
fn sanitizers_work(dir: &Path) -> bool {
    let src = dir.join("probe.c");
    let exe = dir.join("probe");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let built = Command::new(cc())
        .args(["-fsanitize=address,undefined", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    built && Command::new(&exe).status().is_ok_and(|s| s.success())
}

/// Compiles one C file with the project's strict flags against the header and the staticlib.
fn compile(source: &Path, dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let stem = source.file_stem().ok_or("no file name")?;
    let exe = dir.join(stem);
    let mut cmd = Command::new(cc());
    cmd.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Wpedantic",
        "-Werror",
        "-g",
        "-O1",
    ])
    .arg("-I")
    .arg(ffi_dir().join("..").join("include"))
    .arg("-I")
    .arg(ffi_dir().join("tests/c"));
    let sanitize = sanitizers_work(dir);
    if !sanitize && std::env::var_os("SDRS_REQUIRE_SANITIZERS").is_some() {
        return Err(
            "SDRS_REQUIRE_SANITIZERS is set but the C compiler cannot build sanitized programs"
                .into(),
        );
    }
    if sanitize {
        cmd.args([
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
        ]);
    } else {
        eprintln!(
            "note: the C compiler cannot build sanitized programs; running without ASan/UBSan"
        );
    }
    cmd.arg(source)
        .arg(staticlib()?)
        // The system libraries Rust's standard library needs (`--print native-static-libs`).
        .args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ])
        .arg("-o")
        .arg(&exe);
    let output = cmd.output()?;
    if !output.status.success() {
        return Err(format!(
            "compiling {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(exe)
}

/// Runs a compiled C program with leak detection on; fails with its output on a non-zero exit.
fn run(exe: &Path, args: &[&std::ffi::OsStr]) -> Result<String, Box<dyn std::error::Error>> {
    run_in(exe, args, Path::new("."))
}

/// [`run`] with `cwd` as the working directory.
fn run_in(
    exe: &Path,
    args: &[&std::ffi::OsStr],
    cwd: &Path,
) -> Result<String, Box<dyn std::error::Error>> {
    let output = Command::new(exe)
        .current_dir(cwd)
        .args(args)
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:halt_on_error=1",
        )
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}):\n{stdout}\n{stderr}",
            exe.display(),
            output.status
        )
        .into());
    }
    Ok(stdout)
}

#[test]
fn error_paths() -> TestResult {
    let dir = out_dir("api_errors")?;
    let exe = compile(&ffi_dir().join("tests/c/api_errors.c"), &dir)?;
    let out = run(&exe, &[model_dir().as_os_str()])?;
    assert!(out.contains("api_errors: 0 failed checks"), "{out}");
    Ok(())
}

#[test]
fn checkpoints_are_scanned_and_converted() -> TestResult {
    let dir = out_dir("checkpoint")?;
    let canary = dir.join("canary");
    let _ = std::fs::remove_file(&canary);
    // A torch legacy checkpoint (magic-number, protocol and sys_info pickles) whose object is
    // posix.system("touch <canary>").
    let cmd = format!("touch {}", canary.display());
    let mut hostile = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    hostile.extend_from_slice(b"\x80\x02M\xe9\x03.");
    hostile.extend_from_slice(b"\x80\x02}X\x0d\x00\x00\x00little_endian\x88s.");
    hostile.extend_from_slice(b"\x80\x02cposix\nsystem\nq\x00X");
    hostile.extend_from_slice(&u32::try_from(cmd.len())?.to_le_bytes());
    hostile.extend_from_slice(cmd.as_bytes());
    hostile.extend_from_slice(b"\x85q\x01Rq\x02.");
    let hostile_path = dir.join("hostile.pkl");
    std::fs::write(&hostile_path, hostile)?;
    let _ = std::fs::remove_file(dir.join("hostile.safetensors"));

    let exe = compile(&ffi_dir().join("tests/c/checkpoint.c"), &dir)?;
    let genuine = repo_dir().join("tests/fixtures/ckpt/pl_train.ckpt");
    let out = run(
        &exe,
        &[
            genuine.as_os_str(),
            hostile_path.as_os_str(),
            dir.as_os_str(),
        ],
    )?;
    assert!(out.contains("checkpoint: 0 failed checks"), "{out}");
    assert!(!canary.exists(), "the hostile pickle's payload ran");
    assert!(
        !dir.join("hostile.safetensors").exists(),
        "an output was written for a refused file"
    );
    Ok(())
}

fn request() -> GenerateRequest {
    let mut r = GenerateRequest::new("a red lighthouse at dusk");
    r.negative_prompt = "blurry".into();
    r.width = SIDE;
    r.height = SIDE;
    r.steps = STEPS;
    r.seed = 42;
    r.scheduler = SchedulerKind::EulerAncestral;
    r
}

fn pixels(images: &[RgbImage]) -> Vec<u8> {
    images.iter().flat_map(|i| i.data.iter().copied()).collect()
}

fn assert_same(what: &str, c_file: &Path, rust: &[u8]) -> TestResult {
    let c = std::fs::read(c_file)?;
    assert_eq!(c.len(), rust.len(), "{what}: byte count");
    let differing = c.iter().zip(rust).filter(|(a, b)| a != b).count();
    assert_eq!(
        differing, 0,
        "{what}: {differing} bytes differ from the Rust API's output"
    );
    Ok(())
}

#[test]
fn generations_match_the_rust_api() -> TestResult {
    let dir = out_dir("generate")?;
    let init_png = repo_dir().join("tests/fixtures/init.png");
    let init = image::load_image(&init_png)?;
    let init_rgb = dir.join("init.rgb");
    std::fs::write(&init_rgb, &init.data)?;

    let exe = compile(&ffi_dir().join("tests/c/generate.c"), &dir)?;
    let (w, h) = (init.width.to_string(), init.height.to_string());
    let out = run(
        &exe,
        &[
            model_dir().as_os_str(),
            dir.as_os_str(),
            init_png.as_os_str(),
            init_rgb.as_os_str(),
            w.as_ref(),
            h.as_ref(),
        ],
    )?;
    assert!(out.contains("generate: 0 failed checks"), "{out}");

    let pipe = Pipeline::load(model_dir(), &LoadOptions::default())?;
    let go = |r: &GenerateRequest| pipe.generate(r, &mut |_| true);

    let mut r = request();
    r.batch_size = 2;
    let batch = go(&r)?;
    assert_same("txt2img", &dir.join("txt2img.rgb"), &pixels(&batch.images))?;
    assert_same(
        "thread",
        &dir.join("thread.rgb"),
        &pixels(&go(&request())?.images),
    )?;

    let mut r = request();
    r.batch_size = 2;
    r.scheduler = SchedulerKind::DpmPp2mKarras;
    let n = 2 * 4 * (SIDE / 8) * (SIDE / 8);
    // The same pattern as generate.c, computed in f32 the same way.
    let noise: Vec<f32> = (0..n)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    r.initial_latents = Some(Tensor::from_vec(
        noise,
        [2, 4, SIDE / 8, SIDE / 8],
        Device::Cpu,
    )?);
    assert_same(
        "latents",
        &dir.join("latents.rgb"),
        &pixels(&go(&r)?.images),
    )?;

    let mut r = request();
    r.scheduler = SchedulerKind::Ddim;
    r.strength = 0.75;
    r.init_image = Some(init);
    assert_same(
        "img2img",
        &dir.join("img2img.rgb"),
        &pixels(&go(&r)?.images),
    )?;

    // The PNG written through the C API carries the infotext.
    let text = image::read_png_text(dir.join("txt2img.png"))?;
    assert!(
        text.iter()
            .any(|(k, v)| k == "parameters" && v == &batch.infotexts[0])
    );
    Ok(())
}

#[test]
fn c_example_builds_and_runs() -> TestResult {
    let dir = out_dir("example")?;
    let exe = compile(&repo_dir().join("examples/c/txt2img.c"), &dir)?;
    let png = dir.join("example.png");
    let out = run(
        &exe,
        &[
            model_dir().as_os_str(),
            "a lighthouse".as_ref(),
            png.as_os_str(),
        ],
    )?;
    assert!(out.contains("Steps: 10"), "{out}");
    let text = image::read_png_text(&png)?;
    assert!(text.iter().any(|(k, _)| k == "parameters"));
    Ok(())
}

/// The README's C program (the first ```c block of its "From C" section) compiles with the
/// strict flags, runs from the repository root and writes its image.
#[test]
fn readme_c_snippet_builds_and_runs() -> TestResult {
    let readme = std::fs::read_to_string(repo_dir().join("README.md"))?;
    let section = readme
        .split("## From C")
        .nth(1)
        .ok_or("README has no `## From C` section")?;
    let snippet = section
        .split("```c\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .ok_or("the `From C` section has no ```c block")?;
    let dir = out_dir("readme")?;
    let source = dir.join("readme_snippet.c");
    std::fs::write(&source, snippet)?;
    let exe = compile(&source, &dir)?;
    let png = repo_dir().join("readme.png");
    let _ = std::fs::remove_file(&png);
    let out = run_in(&exe, &[], &repo_dir());
    let written = image::read_png_text(&png);
    let _ = std::fs::remove_file(&png);
    let out = out?;
    assert!(out.contains("Seed: 42"), "{out}");
    assert!(written?.iter().any(|(k, _)| k == "parameters"));
    Ok(())
}

/// Adapters through the C API give the same pixels as through the Rust API.
#[test]
fn adapters_match_the_rust_api() -> TestResult {
    use sd_core::adapters::{Embedding, Hypernetwork, Lora, LoraUse};
    use sd_core::pipeline::HypernetworkUse;
    use std::sync::Arc;

    let dir = out_dir("adapters")?;
    let fixtures = repo_dir().join("tests/fixtures");
    let exe = compile(&ffi_dir().join("tests/c/adapters.c"), &dir)?;
    let out = run(
        &exe,
        &[
            model_dir().as_os_str(),
            fixtures.as_os_str(),
            dir.as_os_str(),
        ],
    )?;
    assert!(out.contains("adapters: 0 failed checks"), "{out}");

    let pipe = Pipeline::load(model_dir(), &LoadOptions::default())?;
    let mut r = GenerateRequest::new("a red lighthouse in the style of ti-alpha");
    r.negative_prompt = "blurry".into();
    r.width = 64;
    r.height = 64;
    r.steps = 4;
    r.seed = 42;
    r.scheduler = SchedulerKind::Euler;
    let lora = Lora::open(fixtures.join("lora/kohya_locon.safetensors"))?;
    r.loras = vec![LoraUse::with_strengths(Arc::new(lora), 0.5, 0.8)];
    let hn = Hypernetwork::open(fixtures.join("hypernetwork/hn-relu.pt"))?;
    r.hypernetworks = vec![HypernetworkUse::new(Arc::new(hn), 0.6)];
    r.embeddings = vec![Arc::new(Embedding::open(fixtures.join("ti/ti-alpha.pt"))?)];
    let rust = pipe.generate(&r, &mut |_| true)?;
    assert_same("adapters", &dir.join("adapters.rgb"), &pixels(&rust.images))
}
