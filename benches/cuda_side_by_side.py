"""Side-by-side GPU timing of sdrs (CUDA backend) and diffusers + torch on SD 1.5 shapes.

Times, on random weights built in-process from SD 1.5's configs:
  * one UNet step with guidance (batch 2, 64x64 latents, 77x768 context),
  * one VAE decode (64x64 latents to 512x512),
  * a 20-step image (20 guided UNet steps with an Euler-style update, then the VAE decode),
for torch eager in fp16 with SDPA attention (the diffusers default), torch eager in fp32, and
torch.compile (fp16, mode "max-autotune-no-cudagraphs" and, with --cudagraphs, "reduce-overhead"),
then runs `cuda_bench` (sdrs) and prints the medians and ratios as JSON.

Timing: CUDA events around each call after warm-up runs, median of --runs; torch.compile's
compilation happens in the warm-up and is reported separately.

Usage, on the GPU machine (its python3 has torch but not diffusers: carry the wheel):
    # here:   pip download diffusers==0.42.1 importlib_metadata --no-deps -d .gpu/wheels   # diffusers as in the reference venv
    #         cargo build --release --features cuda --example cuda_bench
    # there:  python3 -m pip install --no-deps .gpu/wheels/diffusers-*.whl
    #         LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(":".join(os.path.join(os.path.dirname(nvidia.__path__[0]), "nvidia", d, "lib") for d in ("cu13", "cublas", "cuda_nvrtc")))'):$LD_LIBRARY_PATH \
    #         python3 benches/cuda_side_by_side.py --binary target/release/examples/cuda_bench
Options: --runs N, --steps N, --only unet|vae|image, --skip-compile, --skip-sdrs, --cudagraphs.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

try:
    from diffusers import AutoencoderKL, UNet2DConditionModel
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("diffusers is not installed: carry its wheel (see the docstring) and pip install --no-deps it")

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=512,
)


def time_cuda(fn, runs, warmup=2):
    """Median seconds of `fn` over `runs` timed calls, with CUDA events; also the warm-up time."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), times, warm


def build(dtype, channels_last):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).to("cuda", dtype).eval()
    vae = AutoencoderKL(**SD15_VAE).to("cuda", dtype).eval()
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
        vae = vae.to(memory_format=torch.channels_last)
    return unet, vae


def bench_torch(label, unet, vae, dtype, args, results):
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=dtype)
    ctx = torch.randn(2, 77, 768, device="cuda", dtype=dtype)
    z = torch.randn(1, 4, 64, 64, device="cuda", dtype=dtype)
    t = torch.tensor(500, device="cuda")

    def image():
        latent = torch.full((1, 4, 64, 64), 0.3, device="cuda", dtype=dtype)
        for i in range(args.steps):
            step_t = torch.tensor(999.0 * (1 - i / args.steps), device="cuda")
            eps = unet(torch.cat([latent, latent]), step_t, encoder_hidden_states=ctx).sample
            uncond, cond = eps.chunk(2)
            latent = latent - 0.05 * (uncond + 7.5 * (cond - uncond))
        return vae.decode(latent / 0.18215).sample

    cases = {
        "unet_step_s": lambda: unet(x, t, encoder_hidden_states=ctx),
        "vae_decode_s": lambda: vae.decode(z),
        "image_s": image,
    }
    with torch.inference_mode():
        for what, fn in cases.items():
            if args.only and not what.startswith(args.only):
                continue
            runs = args.runs if what != "image_s" else max(1, min(args.runs, 3))
            med, raw, warm = time_cuda(fn, runs)
            results[f"{label}_{what}"] = med
            print(f"{label:28s} {what:13s} median {med * 1e3:9.2f} ms  runs {[round(r * 1e3, 2) for r in raw]}  warm-up {warm:.1f} s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--only", choices=["unet", "vae", "image"])
    ap.add_argument("--binary", default="target/release/examples/cuda_bench")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-sdrs", action="store_true")
    ap.add_argument("--cudagraphs", action="store_true", help="also torch.compile mode=reduce-overhead")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    results = {}

    for label, dtype in (("torch_eager_fp16_sdpa", torch.float16), ("torch_eager_fp32", torch.float32)):
        unet, vae = build(dtype, channels_last=False)
        bench_torch(label, unet, vae, dtype, args, results)
        del unet, vae
        torch.cuda.empty_cache()

    if not args.skip_compile:
        modes = ["max-autotune-no-cudagraphs"] + (["reduce-overhead"] if args.cudagraphs else [])
        for mode in modes:
            unet, vae = build(torch.float16, channels_last=True)
            unet = torch.compile(unet, mode=mode, fullgraph=True)
            vae.decode = torch.compile(vae.decode, mode=mode)
            bench_torch(f"torch_compile_fp16_{mode}", unet, vae, torch.float16, args, results)
            del unet, vae
            torch.cuda.empty_cache()

    if not args.skip_sdrs:
        cmd = [args.binary, "--runs", str(args.runs), "--steps", str(args.steps)]
        if args.only:
            cmd += ["--only", args.only]
        out = subprocess.run(cmd, capture_output=True, text=True)
        print(out.stderr.strip(), flush=True)
        if out.returncode != 0:
            print(f"sdrs cuda_bench failed with status {out.returncode}", flush=True)
        else:
            ours = json.loads(out.stdout.strip().splitlines()[-1])
            results.update({f"sdrs_fp32_{k}": v for k, v in ours.items()})
            for what, v in ours.items():
                for ref in ("torch_eager_fp32", "torch_eager_fp16_sdpa"):
                    t_ref = results.get(f"{ref}_{what}")
                    if t_ref:
                        print(f"{what:13s} sdrs fp32 {v * 1e3:9.2f} ms   {ref} {t_ref * 1e3:9.2f} ms   ratio {t_ref / v:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
