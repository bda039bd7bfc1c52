"""Builds the tiny Stable Diffusion 1.x fixture model and its reference outputs.

Run (from the repository root, after `bash tools/setup_reference_env.sh`):

    tools/.venv-ref/bin/python tools/make_fixtures.py

Writes (see tests/fixtures/README.md for the full description):
    tests/fixtures/tiny-sd/                       diffusers folder, float32
    tests/fixtures/tiny-sd.safetensors            same weights, LDM single-file layout, float16
    tests/fixtures/init.png                       64x64 img2img init image
    tests/fixtures/reference/text_encoder.safetensors, unet.safetensors, vae.safetensors
    tests/fixtures/reference/txt2img_*.safetensors, img2img_*.safetensors

Everything is seeded; running it twice gives the same files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clip_vocab  # noqa: E402
import ldm_layout  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
FOLDER = os.path.join(FIX, "tiny-sd")
SINGLE = os.path.join(FIX, "tiny-sd.safetensors")
INIT_PNG = os.path.join(FIX, "init.png")
REF = os.path.join(FIX, "reference")

PROMPT = "a photo of a cat sitting on a red sofa, highly detailed"
NEGATIVE = "blurry, low quality"
SEED = 1234
STEPS = 10
GUIDANCE = 7.5

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp-2m-karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}

# SD 1.5 scheduler/scheduler_config.json
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
    prediction_type="epsilon",
    timestep_spacing="leading",
    trained_betas=None,
)

TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": {
        "__type": "AddedToken",
        "content": "<|startoftext|>",
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    },
    "do_lower_case": True,
    "eos_token": {
        "__type": "AddedToken",
        "content": "<|endoftext|>",
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    },
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "openai/clip-vit-large-patch14",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {
        "__type": "AddedToken",
        "content": "<|endoftext|>",
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    },
}

SPECIAL_TOKENS_MAP = {
    "bos_token": {
        "content": "<|startoftext|>",
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    },
    "eos_token": {
        "content": "<|endoftext|>",
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    },
    "pad_token": "<|endoftext|>",
    "unk_token": {
        "content": "<|endoftext|>",
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    },
}

VERSIONS = {
    "torch": torch.__version__,
    "diffusers": diffusers.__version__,
    "transformers": transformers.__version__,
    "numpy": np.__version__,
}

# Smallest magnitude kept: float16's smallest normal number. Values below it are flushed to zero so
# that every stored value is exactly representable in float16 (normal range) and bfloat16.
F16_MIN_NORMAL = 2.0**-14


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def round_f16_bf16(x: torch.Tensor) -> torch.Tensor:
    """Rounds to a value exactly representable in float16 and bfloat16 (8 significant bits)."""
    y = x.float().to(torch.bfloat16).float()
    y = torch.where(y.abs() < F16_MIN_NORMAL, torch.zeros_like(y), y)
    if not torch.equal(y.half().float(), y) or not torch.equal(y.bfloat16().float(), y):
        raise RuntimeError("rounding did not produce f16/bf16-exact values")
    return y


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """Gives EVERY parameter a random value (rules in tests/fixtures/README.md), rounded."""
    g = torch.Generator("cpu").manual_seed(seed)
    seen = set()

    def normal(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                value = 1.0 + 0.2 * normal(p.shape) if p_name == "weight" else 0.1 * normal(p.shape)
            elif isinstance(module, torch.nn.Embedding):
                value = 0.5 * normal(p.shape)
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                if p_name == "weight":
                    fan_in = math.prod(p.shape[1:])
                    value = normal(p.shape) / math.sqrt(fan_in)
                else:
                    value = 0.1 * normal(p.shape)
            else:
                raise RuntimeError(f"no initialisation rule for {full} ({type(module).__name__})")
            p.copy_(round_f16_bf16(value))
            seen.add(full)
    missing = {n for n, _ in model.named_parameters()} - seen
    if missing:
        raise RuntimeError(f"parameters not randomised: {sorted(missing)}")


def build_models():
    te_config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=16,
        intermediate_size=37,
        num_hidden_layers=4,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    text_encoder = CLIPTextModel(te_config).eval()
    randomise(text_encoder, 1)

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        norm_num_groups=4,
        norm_eps=1e-5,
    ).eval()
    randomise(unet, 2)

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()
    randomise(vae, 3)

    # from_config keeps clip_sample=False in the saved config (PNDM ignores it; DDIM reads it).
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    return text_encoder, unet, vae, scheduler


def write_tokenizer(folder: str) -> CLIPTokenizer:
    tok_dir = os.path.join(folder, "tokenizer")
    shutil.rmtree(tok_dir, ignore_errors=True)
    clip_vocab.write_tokenizer_files(tok_dir)
    with open(os.path.join(tok_dir, "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=2)
        f.write("\n")
    with open(os.path.join(tok_dir, "special_tokens_map.json"), "w") as f:
        json.dump(SPECIAL_TOKENS_MAP, f, indent=2)
        f.write("\n")
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    ids = tok("a photo of a cat").input_ids
    if ids != [49406, 320, 1125, 539, 320, 2368, 49407]:
        raise RuntimeError(f"tokenizer check failed: {ids}")
    return tok


def save_folder(text_encoder, unet, vae, scheduler):
    shutil.rmtree(FOLDER, ignore_errors=True)
    # A placeholder tokenizer for save_pretrained; the real files are written afterwards.
    tmp_tok_dir = os.path.join(FIX, ".tok-tmp")
    tok = write_tokenizer(tmp_tok_dir)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(FOLDER, safe_serialization=True)
    shutil.rmtree(tmp_tok_dir)
    # Store the text encoder under the `text_model.*` names published SD 1.x folders use.
    te_file = os.path.join(FOLDER, "text_encoder", "model.safetensors")
    te_state = ldm_layout.hf_text_encoder_keys(load_file(te_file))
    save_file({k: v.contiguous() for k, v in te_state.items()}, te_file, metadata={"format": "pt"})
    # Replace whatever the tokenizer saved with the exact SD 1.5 tokenizer folder contents.
    write_tokenizer(FOLDER)
    with open(os.path.join(FOLDER, "model_index.json")) as f:
        index = json.load(f)
    expected = {
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"],
    }
    for k, v in expected.items():
        if index.get(k) != v:
            raise RuntimeError(f"model_index.json: {k} = {index.get(k)}, expected {v}")
    if index.get("_class_name") != "StableDiffusionPipeline":
        raise RuntimeError(f"model_index.json: _class_name = {index.get('_class_name')}")


def save_single_file(text_encoder, unet, vae):
    sd = {}
    sd.update(ldm_layout.unet_to_ldm(unet.state_dict(), dict(unet.config)))
    sd.update(ldm_layout.vae_to_ldm(vae.state_dict(), dict(vae.config)))
    sd.update(ldm_layout.text_encoder_to_ldm(text_encoder.state_dict()))
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    # Original SD 1.x checkpoints also carry the CLIP position_ids buffer (int64).
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(
        77, dtype=torch.int64
    )[None]
    save_file(sd, SINGLE, metadata={"format": "pt"})
    return sd


def verify_single_file(text_encoder, unet, vae):
    """Loads the single file with diffusers and checks every tensor against the folder."""
    ref = StableDiffusionPipeline.from_pretrained(FOLDER, safety_checker=None)
    loaded = StableDiffusionPipeline.from_single_file(
        SINGLE, config=FOLDER, local_files_only=True, torch_dtype=torch.float32,
        safety_checker=None,
    )
    total = 0
    # The folder itself must load back to exactly the weights that were saved.
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        a = model.state_dict()
        b = getattr(ref, name).state_dict()
        for k in a:
            if not torch.equal(a[k], b[k]):
                raise RuntimeError(f"folder {name}.{k} does not load back identically")
    for name in ("unet", "vae", "text_encoder"):
        a = getattr(ref, name).state_dict()
        b = getattr(loaded, name).state_dict()
        a = {k: v for k, v in a.items() if not k.endswith("position_ids")}
        b = {k: v for k, v in b.items() if not k.endswith("position_ids")}
        if set(a) != set(b):
            raise RuntimeError(f"{name}: key mismatch {sorted(set(a) ^ set(b))[:10]}")
        for k in a:
            if a[k].shape != b[k].shape or not torch.equal(a[k].float(), b[k].float()):
                raise RuntimeError(f"{name}.{k}: single-file tensor differs from folder")
        total += len(a)
    print(f"single file verified: {total} tensors equal to the diffusers folder")


# ---------------------------------------------------------------------------------------------
# Reference outputs
# ---------------------------------------------------------------------------------------------


def meta(**kw) -> dict[str, str]:
    out = {k: str(v) for k, v in kw.items()}
    out.update({f"version_{k}": v for k, v in VERSIONS.items()})
    return out


def f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def save_ref(name: str, tensors: dict, metadata: dict):
    os.makedirs(REF, exist_ok=True)
    out = {}
    for k, v in tensors.items():
        out[k] = v.contiguous() if v.dtype == torch.int64 else f32(v)
        if out[k].is_floating_point() and not torch.isfinite(out[k]).all():
            raise RuntimeError(f"{name}: {k} is not finite")
    write_safetensors(os.path.join(REF, name), out, metadata)


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
    """Writes a safetensors file with a byte-for-byte reproducible header (sorted keys)."""
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    offset = 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        data = t.numpy().tobytes()
        header[k] = {
            "dtype": dtypes[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for b in blobs:
            f.write(b)
    check = load_file(path)
    if set(check) != set(tensors) or any(not torch.equal(check[k], tensors[k]) for k in tensors):
        raise RuntimeError(f"{path} does not read back identically")


TEXT_PROMPTS = [
    "a photo of a cat",
    "",
    "A painting of a Lighthouse at sunset, (highly detailed:1.2), 4k; trending on artstation!",
    " ".join(["a very long prompt that keeps going and going past the limit"] * 8),
]


@torch.no_grad()
def text_encoder_reference(text_encoder, tokenizer):
    te = CLIPTextModel(text_encoder.config)
    te.load_state_dict(text_encoder.state_dict())
    te = te.double().eval()
    ids = tokenizer(
        TEXT_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    out = te(ids, output_hidden_states=True)
    ln = getattr(te, "text_model", te).final_layer_norm
    save_ref(
        "text_encoder.safetensors",
        {
            "input_ids": ids.to(torch.int64),
            "last_hidden_state": out.last_hidden_state,
            "clip_skip_2": ln(out.hidden_states[-2]),
            "clip_skip_3": ln(out.hidden_states[-3]),
        },
        meta(prompts=json.dumps(TEXT_PROMPTS), precision="float64 model, stored as float32"),
    )


@torch.no_grad()
def unet_reference(unet):
    u = UNet2DConditionModel.from_config(unet.config)
    u.load_state_dict(unet.state_dict())
    u = u.double().eval()
    g = torch.Generator("cpu").manual_seed(100)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    ehs = torch.randn(2, 77, 16, generator=g)
    ts = [999, 541, 1]
    tensors = {
        "sample": sample,
        "encoder_hidden_states": ehs,
        "timesteps": torch.tensor(ts, dtype=torch.float32),
    }
    for t in ts:
        tensors[f"out_{t}"] = u(sample.double(), t, encoder_hidden_states=ehs.double()).sample
    sample_odd = torch.randn(1, 4, 9, 7, generator=g)
    ehs_odd = torch.randn(1, 77, 16, generator=g)
    tensors["sample_odd"] = sample_odd
    tensors["ehs_odd"] = ehs_odd
    tensors["out_odd"] = u(sample_odd.double(), 500, encoder_hidden_states=ehs_odd.double()).sample
    save_ref(
        "unet.safetensors",
        tensors,
        meta(
            timesteps="999,541,1",
            odd_timestep=500,
            precision="float64 model, stored as float32 (diffusers computes the sinusoidal "
            "timestep embedding in float32 before casting)",
        ),
    )


def smooth_pattern(h: int, w: int) -> np.ndarray:
    """A smooth colourful pattern in [0, 1], shape [h, w, 3]."""
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    r = 0.5 + 0.5 * np.sin(2 * np.pi * (x + 0.3 * y))
    gch = 0.5 + 0.5 * np.cos(2 * np.pi * (1.5 * y - 0.5 * x))
    b = 0.5 + 0.5 * np.sin(2 * np.pi * (x * y * 2.0) + 1.0)
    return np.stack([r, gch, b], axis=-1)


@torch.no_grad()
def vae_reference(vae):
    v = AutoencoderKL.from_config(vae.config)
    v.load_state_dict(vae.state_dict())
    v = v.double().eval()
    g = torch.Generator("cpu").manual_seed(200)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    decoded = v.decode(latents.double()).sample
    pattern = torch.from_numpy(smooth_pattern(64, 64)).permute(2, 0, 1)[None].float() * 2 - 1
    image = (pattern * 0.85 + 0.1 * torch.randn(1, 3, 64, 64, generator=g)).clamp(-1, 1)
    dist = v.encode(image.double()).latent_dist
    save_ref(
        "vae.safetensors",
        {
            "latents": latents,
            "decoded": decoded,
            "image": image,
            "encoded_mean": dist.mean,
            "encoded_std": dist.std,
        },
        meta(precision="float64 model, stored as float32", scaling="none applied"),
    )


def write_init_png():
    img = (smooth_pattern(64, 64) * 255).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(INIT_PNG, optimize=True)


def load_pipe():
    pipe = StableDiffusionPipeline.from_pretrained(
        FOLDER, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_both(pipe, **kw):
    """Runs a pipeline twice with the same seed: once for latents, once for the image."""
    lat = pipe(generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent", **kw)
    img = pipe(generator=torch.Generator("cpu").manual_seed(SEED), output_type="np", **kw)
    image = torch.from_numpy(np.asarray(img.images)).permute(0, 3, 1, 2)
    return lat.images, image


def sched_meta(pipe) -> dict[str, str]:
    """The effective scheduler config and its full timestep list after set_timesteps
    (img2img runs only the last int(steps * strength) of them)."""
    config = dict(pipe.scheduler.config)
    # diffusers keeps this list as an unordered set; sort it so the files are reproducible.
    config["_use_default_values"] = sorted(config.get("_use_default_values", []))
    return {
        "scheduler_config": json.dumps(config, sort_keys=True, default=str),
        "scheduler_timesteps": json.dumps([float(t) for t in pipe.scheduler.timesteps]),
    }


def sched(pipe, name):
    """The scheduler `name` as a user gets it from the SD 1.5 scheduler config. Always built from
    the pristine config: building from `pipe.scheduler.config` would inherit overrides (such as
    use_karras_sigmas) from whichever scheduler the previous run installed."""
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(PNDMScheduler.from_config(SD15_SCHEDULER).config, **overrides)


@torch.no_grad()
def txt2img_references():
    pipe = load_pipe()
    common = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
    )

    def md(name, width=64, height=64, **extra):
        _, overrides = SCHEDULERS[name]
        return meta(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            seed=SEED,
            steps=STEPS,
            guidance=GUIDANCE,
            width=width,
            height=height,
            scheduler=name,
            scheduler_class=SCHEDULERS[name][0].__name__,
            scheduler_overrides=json.dumps(overrides),
            **extra,
        )

    for name in SCHEDULERS:
        pipe.scheduler = sched(pipe, name)
        latents, image = run_both(pipe, height=64, width=64, **common)
        save_ref(
            f"txt2img_{name}.safetensors",
            {"latents": latents, "image": image},
            md(name, **sched_meta(pipe)),
        )
        print(f"txt2img {name}: latents std {latents.std():.3f}, image mean {image.mean():.3f}")

    pipe.scheduler = sched(pipe, "euler-a")
    latents, image = run_both(pipe, height=64, width=64, num_images_per_prompt=2, **common)
    save_ref(
        "txt2img_batch2.safetensors",
        {"latents": latents, "image": image},
        md("euler-a", num_images_per_prompt=2, **sched_meta(pipe)),
    )

    pipe.scheduler = sched(pipe, "ddim")
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator("cpu").manual_seed(SEED + 1))
    latents, image = run_both(pipe, height=64, width=64, latents=init.clone(), **common)
    save_ref(
        "txt2img_latents_in.safetensors",
        {"init_latents": init, "latents": latents, "image": image},
        md("ddim", latents_seed=SEED + 1, **sched_meta(pipe)),
    )

    pipe.scheduler = sched(pipe, "dpmpp-2m")
    latents, image = run_both(pipe, height=56, width=72, **common)
    save_ref(
        "txt2img_72x56.safetensors",
        {"latents": latents, "image": image},
        md("dpmpp-2m", width=72, height=56, **sched_meta(pipe)),
    )


@torch.no_grad()
def img2img_references():
    base = load_pipe()
    pipe = StableDiffusionImg2ImgPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    init = Image.open(INIT_PNG).convert("RGB")
    for name in ("ddim", "euler-a"):
        pipe.scheduler = sched(pipe, name)
        kw = dict(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            image=init,
            strength=0.6,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
        )
        latents, image = run_both(pipe, **kw)
        _, overrides = SCHEDULERS[name]
        save_ref(
            f"img2img_{name}.safetensors",
            {"latents": latents, "image": image},
            meta(
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                seed=SEED,
                steps=STEPS,
                guidance=GUIDANCE,
                strength=0.6,
                width=64,
                height=64,
                init_image="tests/fixtures/init.png",
                scheduler=name,
                scheduler_class=SCHEDULERS[name][0].__name__,
                scheduler_overrides=json.dumps(overrides),
                **sched_meta(pipe),
            ),
        )
        print(f"img2img {name}: latents std {latents.std():.3f}, image mean {image.mean():.3f}")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reductions
    text_encoder, unet, vae, scheduler = build_models()
    save_folder(text_encoder, unet, vae, scheduler)
    save_single_file(text_encoder, unet, vae)
    verify_single_file(text_encoder, unet, vae)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(FOLDER, "tokenizer"))
    text_encoder_reference(text_encoder, tokenizer)
    unet_reference(unet)
    vae_reference(vae)
    write_init_png()
    txt2img_references()
    img2img_references()
    print("fixtures written under", FIX)


if __name__ == "__main__":
    main()
