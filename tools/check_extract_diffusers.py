"""Checks LoRA extraction against diffusers: a fine-tune of the tiny fixture model is made here
(known low-rank differences on every kind of layer the extractor handles), the `extract_lora`
example extracts a LoRA from it, diffusers loads that file into the base pipeline with
`load_lora_weights` (its kohya reader), and the patched text encoder and UNet must reproduce the
fine-tune's outputs.

Run from the repository root, after `cargo build --example extract_lora`:

    tools/.venv-ref/bin/python tools/check_extract_diffusers.py [--bin PATH] [--write-fixture]

`--bin` defaults to target/debug/examples/extract_lora. Exit status 0 when every comparison is
within its tolerance. `--write-fixture` also writes what the Rust test
`extract_lora.rs::diffusers_reading_of_the_committed_lora_is_reproduced` compares against:

    tests/fixtures/extract/lora_rank4_conv.safetensors   the f32 LoRA the extractor wrote
    tests/fixtures/reference/extract_lora.safetensors    inputs; diffusers' base+LoRA outputs
                                                         and the fine-tune's (float64, stored
                                                         as float32)

Rerunning gives the same tensors; the order of the metadata keys in the LoRA's header may
differ (the safetensors writer serializes a hash map).

The fine-tune. With a seeded numpy generator, each layer below gets ΔW = Σ σ_k a_k b_kᵀ with
orthonormal a_k, b_k (QR of Gaussian matrices; for convolutions b_k spans in·kh·kw) and the
listed singular values, all of rank ≤ 4; every other parameter is the base's. Everything is
computed in float64 and rounded once to the stored float32.

Tolerances (largest |difference| / largest |reference| per output, float64 evaluation):
- f32 LoRA: 1e-6. The factors are ΔW to float32 rounding (2^-24, 6e-8 of each term) and the
  fine-tune is stored in float32, so the outputs agree to about 1e-7 (measured 3e-8); a wrong
  name, shape, scale or transpose moves them by 1e-2 or more.
- f16 LoRA: 2e-4. Rounding the factors to float16 (2^-12 of each value) moves each ΔW element by
  up to about 5e-4 of the terms that make it, ΔW is at most about a third of the weights, and
  errors of random sign partly cancel (measured 3e-5).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import diffusers
import peft
import transformers
from diffusers import StableDiffusionPipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
BASE = os.path.join(FIX, "tiny-sd")
LORA_FIXTURE = os.path.join(FIX, "extract", "lora_rank4_conv.safetensors")
REFERENCE = os.path.join(FIX, "reference", "extract_lora.safetensors")

PROMPT = "a photo of a cat"
TIMESTEP = 541
TOL_F32 = 1e-6
TOL_F16 = 2e-4

# (component, parameter, singular values)
EDITS = [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", [0.4, 0.2, 0.1]),
    ("unet", "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight", [0.3, 0.1]),
    ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.weight", [0.25, 0.2]),
    ("unet", "down_blocks.1.attentions.1.proj_in.weight", [0.3, 0.15, 0.05]),
    ("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
     [0.5, 0.25, 0.125, 0.06]),
    ("unet", "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2.weight", [0.2, 0.1]),
    ("unet", "up_blocks.2.attentions.0.proj_out.weight", [0.3]),
    ("unet", "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_v.weight", [0.2, 0.2, 0.1]),
    ("unet", "down_blocks.1.resnets.0.conv1.weight", [0.3, 0.15]),
    ("unet", "down_blocks.1.resnets.0.conv_shortcut.weight", [0.2, 0.1]),
    ("unet", "mid_block.resnets.1.conv2.weight", [0.25, 0.1, 0.05]),
    ("unet", "down_blocks.0.downsamplers.0.conv.weight", [0.2, 0.1, 0.05]),
    ("unet", "up_blocks.0.upsamplers.0.conv.weight", [0.2, 0.1]),
    ("unet", "up_blocks.1.resnets.2.time_emb_proj.weight", [0.15]),
    ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj.weight", [0.3, 0.1]),
    ("text_encoder", "text_model.encoder.layers.1.self_attn.out_proj.weight", [0.2, 0.1, 0.05]),
    ("text_encoder", "text_model.encoder.layers.2.mlp.fc1.weight", [0.3, 0.12]),
    ("text_encoder", "text_model.encoder.layers.3.mlp.fc2.weight", [0.25, 0.1, 0.1, 0.05]),
]


def low_rank(rng: np.random.Generator, rows: int, cols: int, sigma: list[float]) -> np.ndarray:
    k = len(sigma)
    a, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    b, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    return (a * np.asarray(sigma)) @ b.T


def make_tuned(out_dir: str) -> None:
    """Copies the base folder to `out_dir` and adds the edits to its UNet and text encoder."""
    shutil.copytree(BASE, out_dir)
    rng = np.random.default_rng(20260101)
    files = {
        "unet": os.path.join(out_dir, "unet", "diffusion_pytorch_model.safetensors"),
        "text_encoder": os.path.join(out_dir, "text_encoder", "model.safetensors"),
    }
    for component, path in files.items():
        with safe_open(path, "pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for comp, name, sigma in EDITS:
            if comp != component:
                continue
            w = tensors[name]
            rows = w.shape[0]
            delta = low_rank(rng, rows, w.numel() // rows, sigma).reshape(w.shape)
            tensors[name] = torch.from_numpy(w.double().numpy() + delta).float()
        save_file(tensors, path, metadata=metadata)


def extract(binary: str, tuned: str, out: str, dtype: str) -> None:
    cmd = [binary, "--base", BASE, "--tuned", tuned, "--output", out, "--rank", "4", "--conv",
           "--dtype", dtype]
    result = subprocess.run(cmd, capture_output=True, text=True)
    print(result.stdout.strip())
    if result.returncode != 0:
        sys.exit(f"extract_lora failed ({result.returncode}): {result.stderr}")


def load(path: str, lora: str | None) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    if lora is not None:
        pipe.load_lora_weights(lora)
    pipe.unet.to(torch.float64)
    pipe.text_encoder.to(torch.float64)
    return pipe


def lora_layer_count(module: torch.nn.Module) -> int:
    """Layers that peft gave a LoRA adapter."""
    return sum(1 for m in module.modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0)


@torch.no_grad()
def outputs(pipe: StableDiffusionPipeline, ids: torch.Tensor, sample: torch.Tensor):
    ehs = pipe.text_encoder(ids)[0]
    out = pipe.unet(sample, TIMESTEP, encoder_hidden_states=ehs).sample
    return ehs, out


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_bin = os.path.join(ROOT, "target", "debug", "examples", "extract_lora")
    parser.add_argument("--bin", default=default_bin)
    parser.add_argument("--write-fixture", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    work = tempfile.mkdtemp(prefix="sdrs-extract-check-")
    tuned_dir = os.path.join(work, "tuned")
    make_tuned(tuned_dir)

    tokenizer = transformers.CLIPTokenizer.from_pretrained(os.path.join(BASE, "tokenizer"))
    ids = tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    gen = torch.Generator().manual_seed(7)
    sample = torch.randn((1, 4, 8, 8), generator=gen, dtype=torch.float64)

    tuned = load(tuned_dir, None)
    ehs_tuned, out_tuned = outputs(tuned, ids, sample)
    base = load(BASE, None)
    ehs_base, out_base = outputs(base, ids, sample)
    print(f"base vs fine-tune: text encoder {rel(ehs_base, ehs_tuned):.3e}, "
          f"UNet {rel(out_base, out_tuned):.3e}")

    failures = []
    unet_edits = sum(1 for c, _, _ in EDITS if c == "unet")
    te_edits = len(EDITS) - unet_edits
    results = {}
    for dtype, tol in [("f32", TOL_F32), ("f16", TOL_F16)]:
        lora_path = os.path.join(work, f"lora_{dtype}.safetensors")
        extract(args.bin, tuned_dir, lora_path, dtype)
        pipe = load(BASE, lora_path)
        counts = (lora_layer_count(pipe.unet), lora_layer_count(pipe.text_encoder))
        if counts != (unet_edits, te_edits):
            failures.append(f"{dtype}: diffusers applied {counts} (UNet, text encoder) LoRA "
                            f"layers, expected {(unet_edits, te_edits)}")
        ehs, out = outputs(pipe, ids, sample)
        te_err, unet_err = rel(ehs, ehs_tuned), rel(out, out_tuned)
        # The UNet alone, fed the fine-tune's conditioning.
        with torch.no_grad():
            alone = pipe.unet(sample, TIMESTEP, encoder_hidden_states=ehs_tuned).sample
        unet_only = rel(alone, out_tuned)
        print(f"{dtype} LoRA via diffusers vs fine-tune: text encoder {te_err:.3e}, "
              f"UNet {unet_err:.3e}, UNet on the fine-tune's conditioning {unet_only:.3e} "
              f"(tolerance {tol:.0e})")
        for what, err in [("text encoder", te_err), ("UNet", unet_err), ("UNet alone", unet_only)]:
            if not err <= tol:
                failures.append(f"{dtype} {what}: {err:.3e} > {tol:.0e}")
        results[dtype] = (lora_path, ehs, out, te_err, unet_err)

    if args.write_fixture:
        lora_path, ehs, out, te_err, unet_err = results["f32"]
        os.makedirs(os.path.dirname(LORA_FIXTURE), exist_ok=True)
        shutil.copyfile(lora_path, LORA_FIXTURE)
        save_file(
            {
                "input_ids": ids.to(torch.int64).contiguous(),
                "sample": sample.float().contiguous(),
                "te_out": ehs.float().contiguous(),
                "unet_out": out.float().contiguous(),
                "te_tuned": ehs_tuned.float().contiguous(),
                "unet_tuned": out_tuned.float().contiguous(),
            },
            REFERENCE,
            metadata={
                "timestep": str(TIMESTEP),
                "prompt": PROMPT,
                "lora": os.path.relpath(LORA_FIXTURE, ROOT),
                "lora_vs_tuned": json.dumps({"text_encoder": te_err, "unet": unet_err}),
                "version_torch": torch.__version__,
                "version_diffusers": diffusers.__version__,
                "version_transformers": transformers.__version__,
                "version_peft": peft.__version__,
            },
        )
        print(f"wrote {os.path.relpath(LORA_FIXTURE, ROOT)} and {os.path.relpath(REFERENCE, ROOT)}")

    shutil.rmtree(work, ignore_errors=True)
    if failures:
        sys.exit("FAILED:\n  " + "\n  ".join(failures))
    print("ok")


if __name__ == "__main__":
    main()
