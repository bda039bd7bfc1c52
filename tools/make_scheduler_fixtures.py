"""Reference trajectories of the diffusers schedulers for sdrs' scheduler tests.

Run from the repository root:

    tools/.venv-ref/bin/python tools/make_scheduler_fixtures.py

Writes tests/fixtures/reference/schedulers.safetensors. Every scheduler is built the way a
Stable Diffusion 1.5 pipeline builds it: `Cls.from_config(pndm.config, **overrides)` where `pndm`
is the PNDMScheduler of SD 1.5's scheduler_config.json. Fields that file does not set
(timestep_spacing, prediction_type) are not carried over by from_config, so each class uses its
own default spacing unless a case overrides it. A synthetic denoising loop on a [1, 4, 8, 8]
sample uses the model `0.7 * cos(t / 300) * scaled_input + 0.3 * fixed`, so that the trajectory
depends on the timesteps, the input scaling and every update coefficient. Keys:

  sample0, fixed, clean, img2img_noise      shared inputs ([1, 4, 8, 8] float32)
  alphas_cumprod                            the training schedule (float32)
  {case}/timesteps                          float64, the scheduler's timesteps (all of them)
  {case}/init_noise_sigma                   float64 [1]
  {case}/start                              float64 [1], index of the first step run
  {case}/samples                            float32 [k + 1, 1, 4, 8, 8]: the sample entering the
                                            first step, then after every step
  {case}/noise                              float32 [k, 1, 4, 8, 8], ancestral noise per step

with case = "t2i/{kind}/{prediction}/{steps}/{spacing}" (text-to-image: sample0 *
init_noise_sigma) or "i2i/{kind}/{prediction}/{steps}/{spacing}" (img2img at strength 0.6: add_noise(clean, img2img_noise) at
the start index, then the shortened loop); spacing is "default" (the class's own) or an explicit
timestep_spacing.
"""

import math
import os

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from safetensors.torch import save_file

SD15 = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SHAPE = (1, 4, 8, 8)
STRENGTH = 0.6
DPM = dict(
    algorithm_type="dpmsolver++",
    solver_order=2,
    solver_type="midpoint",
    lower_order_final=True,
    final_sigmas_type="zero",
)
KINDS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, dict(DPM, use_karras_sigmas=False)),
    "dpmpp-2m-karras": (DPMSolverMultistepScheduler, dict(DPM, use_karras_sigmas=True)),
}
# Explicit spacings besides each class's default (leading for DDIM/PNDM, linspace otherwise).
SPACINGS = [
    ("ddim", "trailing"),
    ("ddim", "linspace"),
    ("pndm", "trailing"),
    ("euler", "leading"),
    ("euler", "trailing"),
    ("euler-a", "leading"),
    ("lms", "leading"),
    ("dpmpp-2m", "leading"),
    ("dpmpp-2m", "trailing"),
    ("dpmpp-2m-karras", "leading"),
]
SAMPLE_PREDICTION = ["ddim", "euler", "lms", "dpmpp-2m", "dpmpp-2m-karras"]


def randn(seed):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


SAMPLE0, FIXED, CLEAN, NOISE = randn(0), randn(1), randn(2), randn(3)
BASE = PNDMScheduler.from_config(SD15)


def build(kind, prediction, spacing):
    cls, extra = KINDS[kind]
    overrides = dict(extra, prediction_type=prediction)
    if spacing != "default":
        overrides["timestep_spacing"] = spacing
    sched = cls.from_config(BASE.config, **overrides)
    assert sched.config.prediction_type == prediction
    return sched


def model(x, t):
    return (0.7 * math.cos(float(t) / 300.0)) * x + 0.3 * FIXED


def run(kind, prediction, steps, spacing, img2img):
    sched = build(kind, prediction, spacing)
    sched.set_timesteps(steps)
    all_timesteps = sched.timesteps.clone()
    if img2img:
        init = min(int(steps * STRENGTH), steps)
        start = max(steps - init, 0) * sched.order
        timesteps = sched.timesteps[start:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        latents = sched.add_noise(CLEAN, NOISE, timesteps[:1])
    else:
        start = 0
        timesteps = sched.timesteps
        latents = SAMPLE0 * sched.init_noise_sigma
    gen = torch.Generator().manual_seed(1234)
    twin = torch.Generator().manual_seed(1234)
    samples, noises = [latents], []
    for t in timesteps:
        inp = sched.scale_model_input(latents, t)
        out = model(inp, t)
        if kind == "euler-a":
            noises.append(torch.randn(SHAPE, generator=twin, dtype=torch.float32))
            latents = sched.step(out, t, latents, generator=gen).prev_sample
        else:
            latents = sched.step(out, t, latents).prev_sample
        samples.append(latents)
    assert torch.equal(gen.get_state(), twin.get_state()), "noise capture out of sync"
    tensors = {
        "timesteps": all_timesteps.to(torch.float64),
        "init_noise_sigma": torch.tensor([float(sched.init_noise_sigma)], dtype=torch.float64),
        "start": torch.tensor([float(start)], dtype=torch.float64),
        "samples": torch.stack(samples).to(torch.float32),
    }
    if noises:
        tensors["noise"] = torch.stack(noises)
    return tensors


def main():
    out = {
        "sample0": SAMPLE0,
        "fixed": FIXED,
        "clean": CLEAN,
        "img2img_noise": NOISE,
        "alphas_cumprod": BASE.alphas_cumprod.to(torch.float32),
    }
    cases = []
    for kind in KINDS:
        for prediction in ["epsilon", "v_prediction"]:
            for steps in [10, 25]:
                cases.append(("t2i", kind, prediction, steps, "default"))
        cases.append(("i2i", kind, "epsilon", 25, "default"))
    for kind in SAMPLE_PREDICTION:
        cases.append(("t2i", kind, "sample", 10, "default"))
    for kind, spacing in SPACINGS:
        cases.append(("t2i", kind, "epsilon", 10, spacing))
    cases.append(("i2i", "euler", "epsilon", 10, "leading"))
    for mode, kind, prediction, steps, spacing in cases:
        name = f"{mode}/{kind}/{prediction}/{steps}/{spacing}"
        for key, value in run(kind, prediction, steps, spacing, mode == "i2i").items():
            out[f"{name}/{key}"] = value.contiguous()
    path = os.path.join("tests", "fixtures", "reference", "schedulers.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(out, path, metadata={"generator": "tools/make_scheduler_fixtures.py"})
    print(f"wrote {path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
