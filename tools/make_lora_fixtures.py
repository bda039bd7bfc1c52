"""Builds the LoRA / LyCORIS fixtures for the tiny SD 1.x model and their reference results.

Run from the repository root with the reference environment (tools/setup_reference_env.sh):

    tools/.venv-ref/bin/python tools/make_lora_fixtures.py

Writes tests/fixtures/lora/ (see tests/fixtures/lora/README.md):

  kohya_locon.safetensors   kohya format (f16): UNet attention linears, 1x1 and 3x3 convolutions
                            (LoCon), text encoder; per-module alpha != rank; `ss_*` metadata
  kohya_ldm.pt              the same tensors under LDM (compvis) module names, as a torch pickle
  peft.safetensors          diffusers / PEFT format (`lora_A` / `lora_B`), alpha and a rank and
                            alpha pattern in `lora_adapter_metadata`
  peft_dora.safetensors     PEFT DoRA (`lora_magnitude_vector`, per output row)
  loha, lokr, ia3, full_norm, glora, locon_cp, dora (.safetensors)   LyCORIS algorithms
  reference/kohya_locon.safetensors, reference/peft*.safetensors
                            diffusers itself (load_lora_weights, float64): text-encoder hidden
                            states and a UNet output, with the strengths in the metadata
  reference/<lycoris>.safetensors, reference/multi.safetensors
                            weight deltas from tools/a1111_lora.py (A1111's network_*.py math,
                            float64): `delta.<parameter>` = patched - original

Every tensor is random (seeded); running the script twice writes the same tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import a1111_lora  # noqa: E402
import ldm_layout  # noqa: E402
from make_fixtures import FOLDER, FIX, TEXT_PROMPTS, meta, write_safetensors  # noqa: E402

from diffusers import StableDiffusionPipeline  # noqa: E402
from peft import LoraConfig, get_peft_model_state_dict  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

OUT = os.path.join(FIX, "lora")
REF = os.path.join(OUT, "reference")
TIMESTEP = 541

# ---------------------------------------------------------------------------------------------
# The base model
# ---------------------------------------------------------------------------------------------


def load_pipe(dtype=torch.float64):
    pipe = StableDiffusionPipeline.from_pretrained(
        FOLDER, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.to(dtype).eval()
    pipe.text_encoder.to(dtype).eval()
    return pipe


def te_name(key: str) -> str:
    """transformers 5 drops `text_model.` from CLIPTextModel's module tree; files keep it."""
    return key if key.startswith("text_model.") else "text_model." + key


def model_params(pipe) -> dict[str, torch.Tensor]:
    """UNet parameters under diffusers names, text encoder under `text_model.*`, float64."""
    out = {k: v.detach().double().clone() for k, v in pipe.unet.state_dict().items()}
    for k, v in pipe.text_encoder.state_dict().items():
        if v.is_floating_point():
            out[te_name(k)] = v.detach().double().clone()
    return out


BASE = None  # set in main()


def shape(module: str) -> tuple[int, ...]:
    return tuple(BASE[module + ".weight"].shape)


def kohya(module: str) -> str:
    te = module.startswith("text_model.")
    return ("lora_te_" if te else "lora_unet_") + module.replace(".", "_")


class Rng:
    def __init__(self, seed: int):
        self.g = torch.Generator("cpu").manual_seed(seed)

    def normal(self, *shape, std=1.0):
        return torch.randn(shape, generator=self.g, dtype=torch.float64) * std

    def uniform(self, *shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(shape, generator=self.g, dtype=torch.float64)


def f16(t: torch.Tensor) -> torch.Tensor:
    """Rounds to float16 (kept float64 so references use exactly the stored values)."""
    return t.to(torch.float16).to(torch.float64)


def f32v(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).to(torch.float64)


def scalar(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


ST_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bool: "BOOL"}


def write_lora_file(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
    """A safetensors file with a reproducible header (sorted keys; the safetensors package
    writes metadata in hash order)."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        data = t.numpy().tobytes()
        header[k] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
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


def save_lora(name: str, lora: dict[str, torch.Tensor], metadata: dict[str, str], dtype):
    tensors = {}
    for k, v in lora.items():
        tensors[k] = v.contiguous() if v.dtype == torch.bool else v.to(dtype).contiguous()
    path = os.path.join(OUT, name)
    write_lora_file(path, tensors, metadata)
    return path


def addnet_hash(path: str) -> str:
    """sha256 of a safetensors file's bytes after the header (A1111 / kohya 'addnet hash')."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        return hashlib.sha256(f.read()).hexdigest()


def check_magnitudes(name: str, lora: dict, te_mult=1.0, unet_mult=1.0):
    """Every module's weight change is comparable to the weight itself (so a wrong scale,
    axis or order shows far above float rounding)."""
    patched = a1111_lora.apply_networks(BASE, [(lora, te_mult, unet_mult)])
    for k in patched:
        if patched[k] is BASE[k]:
            continue
        ratio = (patched[k] - BASE[k]).abs().max() / BASE[k].abs().max()
        if os.environ.get("SHOW_RATIOS"):
            print(f"  {name}: {k} {ratio:.3f}")
        if not 0.05 <= ratio <= 20:
            raise RuntimeError(f"{name}: {k} changes by {ratio:.3f} x max|W|")


def delta_reference(name: str, networks, extra_meta: dict[str, str]):
    patched = a1111_lora.apply_networks(BASE, networks)
    tensors = {}
    for k in sorted(patched):
        if patched[k] is not BASE[k]:
            tensors["delta." + k] = (patched[k] - BASE[k]).to(torch.float32)
    write_safetensors(
        os.path.join(REF, name),
        tensors,
        meta(
            source="tools/a1111_lora.py (A1111 extensions-builtin/Lora math) in float64",
            **extra_meta,
        ),
    )
    print(f"{name}: {len(tensors)} patched parameters")


# ---------------------------------------------------------------------------------------------
# (a) kohya LoRA / LoCon
# ---------------------------------------------------------------------------------------------

KOHYA_UNET = [
    "down_blocks.0.attentions.0.proj_in",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
    "down_blocks.0.attentions.0.proj_out",
    "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
    "up_blocks.2.attentions.2.transformer_blocks.0.attn1.to_v",
    # LoCon: resnet and sampler convolutions, a resnet's time projection
    "down_blocks.0.resnets.0.conv1",
    "down_blocks.1.resnets.0.conv2",
    "down_blocks.1.resnets.0.conv_shortcut",
    "mid_block.resnets.1.conv1",
    "up_blocks.1.resnets.2.time_emb_proj",
    "down_blocks.0.downsamplers.0.conv",
    "up_blocks.0.upsamplers.0.conv",
]
KOHYA_TE = [
    f"text_model.encoder.layers.{i}.{m}"
    for i in range(4)
    for m in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]
]
ALPHAS = [1.0, 3.0, 5.0, 2.0, 8.0]


def lora_pair(rng: Rng, module: str, rank: int, alpha: float, quant=f16):
    """kohya `lora_down` / `lora_up` for `module`: linear [r, in] / [out, r]; convolutions
    [r, in, kh, kw] / [out, r, 1, 1]."""
    s = shape(module)
    fan_in = math.prod(s[1:])
    if len(s) == 4:
        down = rng.normal(rank, s[1], s[2], s[3], std=1 / math.sqrt(fan_in))
        up = rng.normal(s[0], rank, 1, 1, std=1 / math.sqrt(rank))
    else:
        down = rng.normal(rank, s[1], std=1 / math.sqrt(fan_in))
        up = rng.normal(s[0], rank, std=1 / math.sqrt(rank))
    return {"lora_down.weight": quant(down), "lora_up.weight": quant(up), "alpha": quant(scalar(alpha))}


def kohya_alpha(module: str) -> float:
    """kohya writes one alpha per network part (`network_alpha`, `conv_alpha`); diffusers 0.42
    applies per-module alphas only in that pattern (it ignores alphas that vary between
    attention or text-encoder modules), so the diffusers-checked file keeps to it. Varying
    alphas are covered by the A1111-math fixtures."""
    if module.startswith("text_model."):
        return 5.0
    return 3.0 if ".attentions." in module else 2.0


def make_kohya():
    rng = Rng(11)
    lora = {}
    for m in KOHYA_UNET + KOHYA_TE:
        rank = 2 if m.startswith("text_model.") else 4
        for part, t in lora_pair(rng, m, rank, kohya_alpha(m)).items():
            lora[f"{kohya(m)}.{part}"] = t
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "3.0",
        "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "2"}),
        "ss_base_model_version": "sd_v1",
        "ss_output_name": "tiny_kohya_style",
        "ss_tag_frequency": json.dumps({"img": {"cat": 3, "sofa": 1}}),
        "ss_num_train_images": "4",
    }
    path = save_lora("kohya_locon.safetensors", lora, metadata, torch.float16)
    check_magnitudes("kohya_locon", lora)
    return lora, path


def ldm_module_name(module: str) -> str:
    """A diffusers UNet module path in the original LDM layout (tools/ldm_layout.py)."""
    renamed = ldm_layout.unet_to_ldm({module + ".weight": None}, dict(UNET_CONFIG))
    (key,) = renamed
    return key[len("model.diffusion_model."):-len(".weight")]


def make_kohya_ldm(lora: dict[str, torch.Tensor]):
    """The kohya file with compvis (LDM) UNet module names, saved by torch.save."""
    back = {kohya(m): m for m in KOHYA_UNET}
    out = {}
    for key, value in lora.items():
        module, _, part = key.partition(".")
        if module in back:
            module = "lora_unet_" + ldm_module_name(back[module]).replace(".", "_")
        out[f"{module}.{part}"] = value.to(torch.float16)
    path = os.path.join(OUT, "kohya_ldm.pt")
    torch.save(dict(sorted(out.items())), path)
    return path


# ---------------------------------------------------------------------------------------------
# diffusers references
# ---------------------------------------------------------------------------------------------

def model_inputs():
    tok = CLIPTokenizer.from_pretrained(os.path.join(FOLDER, "tokenizer"))
    ids = tok(TEXT_PROMPTS[:2], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    g = torch.Generator("cpu").manual_seed(7)
    sample = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    ehs = torch.randn(1, 77, 16, generator=g, dtype=torch.float64)
    return ids, sample, ehs


@torch.no_grad()
def run_models(pipe, inputs):
    ids, sample, ehs = inputs
    te = pipe.text_encoder(ids).last_hidden_state
    unet = pipe.unet(sample, TIMESTEP, encoder_hidden_states=ehs).sample
    return te, unet


@torch.no_grad()
def diffusers_patched_modules(path: str) -> set[str]:
    """Loads `path` with diffusers, fuses it and lists the modules whose weight changed, so that
    a key diffusers silently dropped cannot pass unnoticed."""
    pipe = load_pipe()
    base = model_params(pipe)
    pipe.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), adapter_name="x")
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0)
    pipe.unload_lora_weights()
    fused = model_params(pipe)
    if set(fused) != set(base):
        raise RuntimeError(f"{path}: parameter names changed after fuse/unload")
    changed = {k.rsplit(".", 1)[0] for k in base if not torch.equal(base[k], fused[k])}
    return changed, fused


def check_peft_dora(path: str, fused: dict[str, torch.Tensor]):
    """PEFT DoRA, written out: W' = m / ||W + s·B·A||_row · (W + s·B·A) with s = alpha / r;
    diffusers' fused weights must agree, which shows the magnitudes were really loaded."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        cfg = json.loads(f.metadata()["lora_adapter_metadata"])
    lora = {k: v.double() for k, v in load_file(path).items()}
    s = cfg["unet.lora_alpha"] / cfg["unet.r"]
    worst = 0.0
    for key in lora:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len("unet."):-len(".lora_A.weight")]
        a, b = lora[key], lora[f"unet.{module}.lora_B.weight"]
        m = lora[f"unet.{module}.lora_magnitude_vector"]
        w = BASE[module + ".weight"]
        merged = w + s * (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)).reshape(w.shape)
        norm = merged.reshape(w.shape[0], -1).norm(dim=1)
        want = merged * (m.reshape(-1) / norm).reshape(-1, *[1] * (w.dim() - 1))
        worst = max(worst, ((want - fused[module + ".weight"]).abs().max() / want.abs().max()).item())
    if worst > 1e-12:
        raise RuntimeError(f"{path}: diffusers' DoRA fuse differs from the formula by {worst:.2e}")


def diffusers_reference(name: str, path: str, modules: set[str], te_strength, unet_strength, fuse=False, a1111=None, dora_check=False, extra_meta=None):
    changed, fused = diffusers_patched_modules(path)
    if changed != modules:
        raise RuntimeError(
            f"{name}: diffusers patched {sorted(changed ^ modules)} differently from the file's modules"
        )
    if dora_check:
        check_peft_dora(path, fused)
    if a1111 is not None:
        # The A1111 re-implementation agrees with diffusers at strength 1.
        mine = a1111_lora.apply_networks(BASE, [(a1111, 1.0, 1.0)])
        worst = max(((mine[k] - fused[k]).abs().max() / fused[k].abs().max()).item() for k in fused)
        if worst > 1e-12:
            raise RuntimeError(f"{name}: A1111 re-implementation differs from diffusers by {worst:.2e}")
    pipe = load_pipe()
    pipe.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), adapter_name="x")
    if fuse:
        if te_strength != unet_strength:
            raise RuntimeError("fuse_lora takes one scale")
        pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=te_strength)
    else:
        pipe.set_adapters(["x"], adapter_weights=[{"unet": unet_strength, "text_encoder": te_strength}])
    inputs = model_inputs()
    te, unet = run_models(pipe, inputs)
    base_te, base_unet = run_models(load_pipe(), inputs)
    te_expected = any(m.startswith("text_model.") for m in modules)
    for what, a, b in [("text encoder", te, base_te), ("unet", unet, base_unet)]:
        change = ((a - b).abs().max() / b.abs().max()).item()
        if what == "text encoder" and not te_expected:
            if change != 0:
                raise RuntimeError(f"{name}: the text encoder changed")
            continue
        if change < 1e-2:
            raise RuntimeError(f"{name}: the LoRA barely changes the {what} ({change:.2e})")
    ids, sample, ehs = inputs
    write_safetensors(
        os.path.join(REF, name),
        {
            "input_ids": ids.to(torch.int64),
            "te_out": te.float(),
            "sample": sample.float(),
            "encoder_hidden_states": ehs.float(),
            "unet_out": unet.float(),
        },
        meta(
            source="diffusers load_lora_weights, float64 model",
            lora=os.path.basename(path),
            text_encoder_strength=te_strength,
            unet_strength=unet_strength,
            timestep=TIMESTEP,
            patched_modules=len(modules),
            addnet_hash=addnet_hash(path),
            **(extra_meta or {}),
        ),
    )
    print(f"{name}: diffusers patched {len(changed)} modules")


# ---------------------------------------------------------------------------------------------
# (b) diffusers / PEFT format
# ---------------------------------------------------------------------------------------------

# PEFT `target_modules` regexes (full match against module names inside each model).
PEFT_UNET_TARGETS = (
    r"down_blocks\.0\.attentions\.0\..*(to_q|to_k|to_v|to_out\.0|ff\.net\.0\.proj|ff\.net\.2|proj_in|proj_out)"
    r"|down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn(1\.to_out\.0|2\.to_k)"
    r"|down_blocks\.1\.resnets\.0\.(conv1|conv_shortcut|time_emb_proj)"
    r"|up_blocks\.1\.resnets\.1\.conv2|mid_block\.attentions\.0\.proj_out"
)
PEFT_DORA_TARGETS = (
    r"down_blocks\.0\.attentions\.0\..*(to_q|to_v|ff\.net\.2|proj_in)"
    r"|down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k"
    r"|down_blocks\.1\.resnets\.0\.(conv1|conv_shortcut)"
)
PEFT_TE_TARGETS = r".*layers\.[02]\.(self_attn\.(q|k|v|out)_proj|mlp\.fc1|mlp\.fc2)"


@torch.no_grad()
def randomise_adapter(model, rng: Rng, dora: bool):
    for name, p in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            fan_in = math.prod(p.shape[1:])
            p.copy_(rng.normal(*p.shape, std=1 / math.sqrt(fan_in)).to(p.dtype))
        elif "lora_magnitude_vector" in name:
            p.mul_(rng.uniform(*p.shape, lo=0.6, hi=1.4).to(p.dtype))


def adapter_metadata(cfg: LoraConfig) -> dict:
    """The LoraConfig as diffusers stores it, without the local path PEFT records."""
    d = cfg.to_dict()
    d["base_model_name_or_path"] = None
    return d


def make_peft(name: str, dora: bool, seed: int):
    rng = Rng(seed)
    pipe = load_pipe(torch.float32)
    unet_cfg = LoraConfig(
        r=4,
        lora_alpha=6,
        target_modules=PEFT_DORA_TARGETS if dora else PEFT_UNET_TARGETS,
        init_lora_weights=True,
        use_dora=dora,
        rank_pattern={} if dora else {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": 2},
        alpha_pattern={} if dora else {"attn1.to_out.0": 3},
    )
    pipe.unet.add_adapter(unet_cfg)
    randomise_adapter(pipe.unet, rng, dora)
    unet_sd = get_peft_model_state_dict(pipe.unet)
    # transformers does not load a text encoder's DoRA magnitudes back from diffusers files
    # (its state-dict keys lack the `.weight` the module expects), so the DoRA file is UNet-only.
    te_cfg, te_sd = None, None
    if not dora:
        te_cfg = LoraConfig(r=2, lora_alpha=3, target_modules=PEFT_TE_TARGETS, init_lora_weights=True)
        pipe.text_encoder.add_adapter(te_cfg)
        randomise_adapter(pipe.text_encoder, rng, dora)
        te_sd = {k: v.float() for k, v in get_peft_model_state_dict(pipe.text_encoder).items()}
    tmp = tempfile.mkdtemp()
    StableDiffusionPipeline.save_lora_weights(
        tmp,
        unet_lora_layers={k: v.float() for k, v in unet_sd.items()},
        text_encoder_lora_layers=te_sd,
        unet_lora_adapter_metadata=adapter_metadata(unet_cfg),
        text_encoder_lora_adapter_metadata=adapter_metadata(te_cfg) if te_cfg else None,
        weight_name=name,
    )
    path = os.path.join(OUT, name)
    from safetensors import safe_open

    with safe_open(os.path.join(tmp, name), "pt") as f:
        written_meta = f.metadata()
    write_lora_file(path, load_file(os.path.join(tmp, name)), written_meta)
    shutil.rmtree(tmp)
    modules = set()
    for k in load_file(path):
        stem = k.split(".lora_", 1)[0]
        component, rest = stem.split(".", 1)
        modules.add(te_name(rest) if component == "text_encoder" else rest)
    return path, modules


# ---------------------------------------------------------------------------------------------
# (c) LyCORIS algorithms, against A1111's math
# ---------------------------------------------------------------------------------------------

U0 = "down_blocks.0.attentions.0.transformer_blocks.0."
U1 = "down_blocks.1.attentions.0.transformer_blocks.0."


def put(lora: dict, module: str, parts: dict):
    for part, t in parts.items():
        lora[f"{kohya(module)}.{part}"] = t


def make_loha():
    rng = Rng(21)
    lora = {}
    # Plain, linear [32, 16].
    m = U1 + "attn2.to_k"
    r, a = 4, 2.0
    c = (0.5 / a) ** 0.25
    put(lora, m, {
        "hada_w1_a": rng.normal(32, r, std=c), "hada_w1_b": rng.normal(r, 16, std=c),
        "hada_w2_a": rng.normal(32, r, std=c), "hada_w2_b": rng.normal(r, 16, std=c),
        "alpha": scalar(a),
    })
    # Plain, 3x3 conv [32, 16, 3, 3] with flattened w1b/w2b.
    m = "down_blocks.1.resnets.0.conv1"
    r, a = 3, 6.0
    c = (0.1 / a) ** 0.25
    put(lora, m, {
        "hada_w1_a": rng.normal(32, r, std=c), "hada_w1_b": rng.normal(r, 144, std=c),
        "hada_w2_a": rng.normal(32, r, std=c), "hada_w2_b": rng.normal(r, 144, std=c),
        "alpha": scalar(a),
    })
    # 4-D w1b / w2b on a 3x3 conv [16, 16, 3, 3].
    m = "down_blocks.0.resnets.1.conv1"
    r = 2
    c = 0.1 ** 0.25
    put(lora, m, {
        "hada_w1_a": rng.normal(16, r, std=c), "hada_w1_b": rng.normal(r, 16, 3, 3, std=c),
        "hada_w2_a": rng.normal(16, r, std=c), "hada_w2_b": rng.normal(r, 16, 3, 3, std=c),
        "alpha": scalar(1.0),
    })
    # Tucker, 3x3 conv [32, 32, 3, 3].
    m = "down_blocks.1.resnets.0.conv2"
    r, a = 2, 1.0
    c = 0.45
    put(lora, m, {
        "hada_t1": rng.normal(r, r, 3, 3, std=c), "hada_w1_a": rng.normal(r, 32, std=c), "hada_w1_b": rng.normal(r, 32, std=c),
        "hada_t2": rng.normal(r, r, 3, 3, std=c), "hada_w2_a": rng.normal(r, 32, std=c), "hada_w2_b": rng.normal(r, 32, std=c),
        "alpha": scalar(a),
    })
    # Text encoder fc1 [37, 16], no alpha (scale 1).
    m = "text_model.encoder.layers.1.mlp.fc1"
    r = 2
    c = 0.3 ** 0.25
    put(lora, m, {
        "hada_w1_a": rng.normal(37, r, std=c), "hada_w1_b": rng.normal(r, 16, std=c),
        "hada_w2_a": rng.normal(37, r, std=c), "hada_w2_b": rng.normal(r, 16, std=c),
    })
    return lora


def make_lokr():
    rng = Rng(22)
    lora = {}
    # Both factors full: alpha present but unused (no dim), scale 1.
    put(lora, U0 + "attn1.to_k", {"lokr_w1": rng.normal(4, 4, std=0.5), "lokr_w2": rng.normal(4, 4, std=0.5), "alpha": scalar(7.0)})
    # w2 factorized [256, 32] = kron([8, 4], [32, 3] @ [3, 8]).
    put(lora, U1 + "ff.net.0.proj", {
        "lokr_w1": rng.normal(8, 4, std=0.5), "lokr_w2_a": rng.normal(32, 3, std=0.5), "lokr_w2_b": rng.normal(3, 8, std=0.3),
        "alpha": scalar(2.0),
    })
    # w1 factorized [32, 16] = kron([4, 2] @ [2, 4], [8, 4]).
    put(lora, U1 + "attn2.to_v", {
        "lokr_w1_a": rng.normal(4, 2, std=0.6), "lokr_w1_b": rng.normal(2, 4, std=0.6), "lokr_w2": rng.normal(8, 4, std=0.4),
        "alpha": scalar(1.0),
    })
    # 3x3 conv [32, 32, 3, 3], w2 full 4-D: w1 unsqueezed to [4, 4, 1, 1].
    put(lora, "down_blocks.1.resnets.1.conv1", {"lokr_w1": rng.normal(4, 4, std=0.3), "lokr_w2": rng.normal(8, 8, 3, 3, std=0.3)})
    # 3x3 conv with a Tucker w2: cp(t2 [2, 2, 3, 3], w2_a [2, 16], w2_b [2, 8]) = [16, 8, 3, 3].
    put(lora, "down_blocks.1.resnets.1.conv2", {
        "lokr_w1": rng.normal(2, 4, std=0.4), "lokr_t2": rng.normal(2, 2, 3, 3, std=0.5),
        "lokr_w2_a": rng.normal(2, 16, std=0.5), "lokr_w2_b": rng.normal(2, 8, std=0.5), "alpha": scalar(1.5),
    })
    # 3x3 conv [32, 64, 3, 3] with a flat factorized w2 [8, 72]: 2-D kron, then reshape.
    put(lora, "up_blocks.1.resnets.0.conv1", {
        "lokr_w1": rng.normal(4, 8, std=0.4), "lokr_w2_a": rng.normal(8, 2, std=0.4), "lokr_w2_b": rng.normal(2, 72, std=0.3),
        "alpha": scalar(1.0),
    })
    # Text encoder, both factorized: dim is w2_b's rank (2), the last one A1111 reads.
    put(lora, "text_model.encoder.layers.2.self_attn.q_proj", {
        "lokr_w1_a": rng.normal(4, 1, std=0.7), "lokr_w1_b": rng.normal(1, 4, std=0.7),
        "lokr_w2_a": rng.normal(4, 2, std=0.5), "lokr_w2_b": rng.normal(2, 4, std=0.5), "alpha": scalar(3.0),
    })
    return lora


def make_ia3():
    rng = Rng(23)
    lora = {}
    put(lora, U1 + "attn2.to_k", {"weight": rng.normal(32, std=0.7), "on_input": torch.tensor(False)})
    put(lora, U1 + "ff.net.2", {"weight": rng.normal(128, std=0.7), "on_input": torch.tensor(True)})
    put(lora, "text_model.encoder.layers.3.mlp.fc2", {"weight": rng.normal(37, std=0.7), "on_input": torch.tensor(True)})
    put(lora, "text_model.encoder.layers.0.self_attn.v_proj", {"weight": rng.normal(16, std=0.7), "on_input": torch.tensor(False)})
    return lora


def make_full_norm():
    rng = Rng(24)
    lora = {}
    for m, bias in [
        (U1 + "attn2.to_out.0", True),
        ("down_blocks.0.resnets.0.conv2", True),
        ("down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q", False),
        ("text_model.encoder.layers.0.mlp.fc1", True),
    ]:
        s = shape(m)
        parts = {"diff": rng.normal(*s, std=0.5 / math.sqrt(math.prod(s[1:])))}
        if bias:
            parts["diff_b"] = rng.normal(s[0], std=0.1)
        put(lora, m, parts)
    for m in [
        "down_blocks.1.resnets.0.norm1",
        U1 + "norm2",
        "down_blocks.1.attentions.0.norm",
        "text_model.final_layer_norm",
        "text_model.encoder.layers.2.layer_norm1",
    ]:
        n = shape(m)[0]
        put(lora, m, {"w_norm": rng.normal(n, std=0.3), "b_norm": rng.normal(n, std=0.1)})
    return lora


def make_glora():
    rng = Rng(25)
    lora = {}
    for m, r in [(U1 + "attn2.to_k", 3), (U0 + "ff.net.2", 2), ("text_model.encoder.layers.1.mlp.fc1", 2)]:
        out, inp = shape(m)
        put(lora, m, {
            "a1.weight": rng.normal(r, inp, std=0.5 / math.sqrt(inp)),
            "a2.weight": rng.normal(inp, r, std=0.5),
            "b1.weight": rng.normal(r, inp, std=1 / math.sqrt(inp)),
            "b2.weight": rng.normal(out, r, std=1 / math.sqrt(r)),
            "alpha": scalar(float(r)),
        })
    return lora


def make_locon_cp():
    rng = Rng(26)
    lora = {}
    # CP decomposition (lora_mid) on 3x3 convolutions.
    for m, r, a in [("down_blocks.1.resnets.0.conv1", 4, 2.0), ("down_blocks.0.downsamplers.0.conv", 3, 3.0)]:
        out, inp, kh, kw = shape(m)
        put(lora, m, {
            "lora_down.weight": rng.normal(r, inp, 1, 1, std=1 / math.sqrt(inp)),
            "lora_mid.weight": rng.normal(r, r, kh, kw, std=1 / math.sqrt(r * kh * kw)),
            "lora_up.weight": rng.normal(out, r, 1, 1, std=1 / math.sqrt(r)),
            "alpha": scalar(a),
        })
    # `scale` overrides alpha / dim.
    parts = lora_pair(rng, U0 + "attn1.to_q", 4, 2.0, quant=f32v)
    parts["scale"] = scalar(0.37)
    put(lora, U0 + "attn1.to_q", parts)
    parts = lora_pair(rng, "text_model.encoder.layers.3.self_attn.out_proj", 2, 1.0, quant=f32v)
    parts["scale"] = scalar(1.8)
    put(lora, "text_model.encoder.layers.3.self_attn.out_proj", parts)
    # `bias`: a weight-shaped term added to the product before scaling.
    parts = lora_pair(rng, U0 + "attn2.to_out.0", 4, 3.0, quant=f32v)
    parts["bias"] = rng.normal(16, 16, std=0.1)
    put(lora, U0 + "attn2.to_out.0", parts)
    parts = lora_pair(rng, "down_blocks.0.resnets.1.conv2", 2, 2.0, quant=f32v)
    parts["bias"] = rng.normal(16, 16, 3, 3, std=0.05)
    put(lora, "down_blocks.0.resnets.1.conv2", parts)
    # 2-D down / up on a 1x1 convolution.
    r = 2
    put(lora, "down_blocks.0.attentions.1.proj_in", {
        "lora_down.weight": rng.normal(r, 16, std=0.25), "lora_up.weight": rng.normal(16, r, std=0.7),
        "alpha": scalar(1.0),
    })
    # A textual-inversion embedding bundled in the LoRA (A1111 `bundle_emb`), and an SDXL one.
    lora["bundle_emb.tinystyle.string_to_param.*"] = rng.normal(2, 16, std=0.5)
    lora["bundle_emb.xlstyle.clip_l"] = rng.normal(1, 768, std=0.5)
    lora["bundle_emb.xlstyle.clip_g"] = rng.normal(1, 1280, std=0.5)
    return lora


def dora_scale(rng: Rng, module: str, per_output: bool, shape_out):
    """Magnitudes near the weight's own column (or row) norms."""
    w = BASE[module + ".weight"]
    if per_output:
        norms = w.reshape(w.shape[0], -1).norm(dim=1)
    else:
        norms = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    return (norms * rng.uniform(norms.numel(), lo=0.6, hi=1.4)).reshape(shape_out)


def make_dora():
    rng = Rng(27)
    lora = {}
    cases = [
        (U1 + "attn2.to_k", False, (1, 16)),  # [32, 16], per input column
        ("down_blocks.1.resnets.0.conv1", False, (1, 16, 1, 1)),
        (U1 + "ff.net.2", True, (32, 1)),  # [32, 128], per output row
        ("down_blocks.1.resnets.0.conv_shortcut", True, (32, 1, 1, 1)),
        (U1 + "ff.net.0.proj", True, (256,)),  # 1-D, length out != in
        (U0 + "attn1.to_q", False, (16,)),  # 1-D on a square weight: per input
        (U0 + "attn1.to_v", True, (16, 1)),  # square, [out, 1]: per output
        ("text_model.encoder.layers.0.mlp.fc1", False, (1, 16)),
    ]
    for i, (m, per_output, ds_shape) in enumerate(cases):
        parts = lora_pair(rng, m, 3, ALPHAS[i % len(ALPHAS)], quant=f32v)
        parts["dora_scale"] = dora_scale(rng, m, per_output, ds_shape)
        put(lora, m, parts)
    # DoRA on a LoHa module.
    m = U1 + "attn1.to_q"
    c = 0.3 ** 0.25
    put(lora, m, {
        "hada_w1_a": rng.normal(32, 2, std=c), "hada_w1_b": rng.normal(2, 32, std=c),
        "hada_w2_a": rng.normal(32, 2, std=c), "hada_w2_b": rng.normal(2, 32, std=c),
        "alpha": scalar(2.0), "dora_scale": dora_scale(rng, m, False, (1, 32)),
    })
    return lora


# ---------------------------------------------------------------------------------------------


UNET_CONFIG = None


def main():
    global BASE, UNET_CONFIG
    torch.manual_seed(0)
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(REF)
    pipe = load_pipe()
    BASE = model_params(pipe)
    UNET_CONFIG = pipe.unet.config

    # (a) kohya, and the same file with LDM names as a pickle.
    kohya_lora, kohya_path = make_kohya()
    ldm_path = make_kohya_ldm(kohya_lora)
    with open(ldm_path, "rb") as f:
        ldm_sha256 = hashlib.sha256(f.read()).hexdigest()
    kohya_modules = set(KOHYA_UNET) | set(KOHYA_TE)
    diffusers_reference(
        "kohya_locon.safetensors", kohya_path, kohya_modules, 0.5, 0.75, a1111=kohya_lora,
        extra_meta={"kohya_ldm_pt_sha256": ldm_sha256},
    )

    # (b) PEFT, plain and DoRA.
    path, modules = make_peft("peft.safetensors", dora=False, seed=12)
    diffusers_reference("peft.safetensors", path, modules, 1.3, 0.8)
    path, modules = make_peft("peft_dora.safetensors", dora=True, seed=13)
    diffusers_reference("peft_dora.safetensors", path, modules, 1.0, 1.0, fuse=True, dora_check=True)

    # (c) LyCORIS algorithms, each at its own TE / UNet strengths.
    lycoris = {
        "loha": (make_loha(), 0.7, 1.3),
        "lokr": (make_lokr(), 1.2, 0.9),
        "ia3": (make_ia3(), 0.8, 1.1),
        "full_norm": (make_full_norm(), 0.6, 1.4),
        "glora": (make_glora(), 1.5, 0.7),
        "locon_cp": (make_locon_cp(), 0.9, 1.2),
        "dora": (make_dora(), 1.1, 0.8),
    }
    for name, (lora, te, unet) in lycoris.items():
        save_lora(f"{name}.safetensors", lora, {"ss_network_module": "lycoris.kohya"}, torch.float32)
        check_magnitudes(name, lora)
        delta_reference(
            f"{name}.safetensors", [(lora, te, unet)],
            {"lora": f"{name}.safetensors", "text_encoder_strength": te, "unet_strength": unet},
        )

    # (d) several at once, in order, each with its own strengths (DoRA and IA3 read the weight
    # as the earlier ones left it).
    order = [
        ("kohya_locon.safetensors", kohya_lora, 0.5, 0.8),
        ("loha.safetensors", lycoris["loha"][0], -0.7, 1.2),
        ("dora.safetensors", lycoris["dora"][0], 1.0, 0.6),
        ("ia3.safetensors", lycoris["ia3"][0], 0.3, 0.9),
        ("full_norm.safetensors", lycoris["full_norm"][0], 1.0, 0.5),
    ]
    delta_reference(
        "multi.safetensors",
        [(lora, te, unet) for _, lora, te, unet in order],
        {"uses": json.dumps([[name, te, unet] for name, _, te, unet in order])},
    )
    total = sum(os.path.getsize(os.path.join(d, f)) for d in [OUT, REF] for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
    print(f"fixtures written under {OUT}: {total} bytes")


if __name__ == "__main__":
    main()
