"""Side-by-side timing of sdrs and diffusers + torch on the same SD 1.5 shapes, in one run.

Times one UNet step with guidance (batch 2, 64x64 latents, 77x768 context) and one VAE decode
(64x64 latents to 512x512), float32, on random weights built in-process from SD 1.5's configs,
with torch limited to the same number of threads sdrs uses. Prints the medians and the ratios.

Usage (after `bash tools/setup_reference_env.sh`):
    cargo build --release --example bench_models
    tools/.venv-ref/bin/python benches/side_by_side.py [--runs 3] [--threads 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

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


def time_runs(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--binary", default="target/release/examples/bench_models")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    with torch.inference_mode():
        unet = UNet2DConditionModel(**SD15_UNET).eval()
        x = torch.randn(2, 4, 64, 64)
        ctx = torch.randn(2, 77, 768)
        t = torch.tensor(500)
        results["torch_unet_step_s"], raw = time_runs(lambda: unet(x, t, encoder_hidden_states=ctx), args.runs)
        print(f"torch unet step: {raw}", flush=True)
        del unet
        vae = AutoencoderKL(**SD15_VAE).eval()
        z = torch.randn(1, 4, 64, 64)
        results["torch_vae_decode_s"], raw = time_runs(lambda: vae.decode(z), args.runs)
        print(f"torch vae decode: {raw}", flush=True)
        del vae

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    out = subprocess.run([args.binary, "--runs", str(args.runs)], check=True, capture_output=True, text=True, env=env)
    ours = json.loads(out.stdout.strip().splitlines()[-1])
    print(out.stderr.strip())
    results.update({f"sdrs_{k}": v for k, v in ours.items()})

    for what in ("unet_step_s", "vae_decode_s"):
        t_torch, t_ours = results[f"torch_{what}"], results[f"sdrs_{what}"]
        print(f"{what[:-2]:12s} torch {t_torch:8.3f} s   sdrs {t_ours:8.3f} s   torch/sdrs = {t_torch / t_ours:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
