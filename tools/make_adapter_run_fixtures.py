"""Whole text-to-image runs of the tiny SD 1.x model with adapters, made by diffusers: the
reference for `tests/pipeline_adapters.rs` (adapters applied by the pipeline, step for step and
draw for draw as diffusers runs them).

Writes tests/fixtures/reference/adapters_run.safetensors:
    latents_lora     kohya LoRA (tests/fixtures/lora/kohya_locon.safetensors) at text-encoder
                     strength 0.5 and UNet strength 0.8, loaded by `load_lora_weights` and
                     weighted by `set_adapters`
    latents_lora_ti  the same LoRA and a two-vector textual inversion
                     (tests/fixtures/ti/ti-alpha.pt, token `ti-alpha`) used in the prompt
    metadata: prompt(s), negative prompt, seed, steps, guidance, scheduler, strengths

Run with the environment of tools/setup_reference_env.sh:
    tools/.venv-ref/bin/python tools/make_adapter_run_fixtures.py
Deterministic: single-threaded float32 CPU runs from fixed seeds.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (its constants, scheduler table and writer)

LORA_DIR = os.path.join(mf.FIX, "lora")
LORA_FILE = "kohya_locon.safetensors"
TI_FILE = os.path.join(mf.FIX, "ti", "ti-alpha.pt")
TE_STRENGTH = 0.5
UNET_STRENGTH = 0.8
STEPS = 6
SCHEDULER = "euler-a"
PROMPT_LORA = "a lighthouse on a cliff at dusk, oil painting"
PROMPT_TI = "a lighthouse in the style of ti-alpha, oil painting"


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    pipe = mf.load_pipe()
    pipe.scheduler = mf.sched(pipe, SCHEDULER)
    pipe.load_lora_weights(LORA_DIR, weight_name=LORA_FILE, adapter_name="locon")
    pipe.set_adapters(["locon"], adapter_weights=[{"text_encoder": TE_STRENGTH, "unet": UNET_STRENGTH}])
    common = dict(
        negative_prompt=mf.NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=mf.GUIDANCE,
        height=64,
        width=64,
        output_type="latent",
    )
    lora = pipe(prompt=PROMPT_LORA, generator=torch.Generator("cpu").manual_seed(mf.SEED), **common).images
    pipe.load_textual_inversion(TI_FILE, token="ti-alpha")
    lora_ti = pipe(prompt=PROMPT_TI, generator=torch.Generator("cpu").manual_seed(mf.SEED), **common).images
    meta = mf.meta(
        prompt_lora=PROMPT_LORA,
        prompt_ti=PROMPT_TI,
        negative_prompt=mf.NEGATIVE,
        seed=mf.SEED,
        steps=STEPS,
        guidance=mf.GUIDANCE,
        scheduler=SCHEDULER,
        lora_file=LORA_FILE,
        te_strength=TE_STRENGTH,
        unet_strength=UNET_STRENGTH,
        ti_file="ti-alpha.pt",
        versions=json.dumps({"diffusers": mf.diffusers.__version__, "torch": torch.__version__}),
    )
    mf.save_ref("adapters_run.safetensors", {"latents_lora": lora, "latents_lora_ti": lora_ti}, meta)
    print(f"lora: std {lora.std():.4f}; lora+ti: std {lora_ti.std():.4f}")


if __name__ == "__main__":
    main()
