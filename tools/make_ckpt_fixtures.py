"""Writes the genuine PyTorch checkpoint fixtures under tests/fixtures/ckpt/.

Run from the repository root:

    tools/.venv-ref/bin/python tools/make_ckpt_fixtures.py

Every `<name>.<ext>` file written by torch.save gets a `<name>.safetensors` twin holding the
same tensors as torch itself loads them (made contiguous), under the names the Rust reader is
expected to give them:

* state-dict files: `state_dict` if present else the root, nested str-keyed dicts joined by `.`;
* embeddings: `<kind>:<key>` for each embedding part (see `sd_core::weights::pickle::EmbeddingKind`);
* hypernetworks: `<size>.k.<name>` / `<size>.v.<name>`.

Integer tensors are stored as I64, float8 as F8_E4M3; the Rust test compares raw bytes.
"""

import os
import sys
import types

import numpy as np
import torch
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "ckpt")
os.makedirs(OUT, exist_ok=True)
g = torch.Generator().manual_seed(1234)


def rnd(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(dtype)


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            out[prefix + k] = v
        elif isinstance(v, dict) and isinstance(k, str):
            out.update(flatten(v, prefix + k + "."))
    return out


def twin(name, tensors):
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, os.path.join(OUT, name + ".safetensors"))


def state_dict_tensors(obj):
    root = obj.get("state_dict", obj) if isinstance(obj.get("state_dict", None), dict) else obj
    return flatten(root)


def save(obj, name, ext, legacy=False):
    path = os.path.join(OUT, name + "." + ext)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    # Check that torch's own safe loader accepts the file and sees what we recorded.
    # Files with classes outside torch's default allow-list are reloaded in full (we just wrote them).
    loaded = torch.load(path, weights_only=name not in ("pl_train", "ti_paramdict"))
    return loaded


# --- an SD-like state dict with every tensor layout the reader must handle ---
base = rnd(4, 6)
shared = rnd(5, 3)
sd = torch.nn.Module().state_dict()  # an OrderedDict with _metadata, like a real state_dict()
sd["model.diffusion_model.w_f32"] = rnd(3, 4)
sd["model.diffusion_model.w_f16"] = rnd(2, 3, 5, dtype=torch.float16)
sd["model.diffusion_model.w_bf16"] = rnd(7, dtype=torch.bfloat16)
sd["cond_stage_model.position_ids"] = torch.arange(8, dtype=torch.int64).reshape(1, 8)
sd["first_stage_model.transposed"] = base.t()  # non-contiguous
sd["first_stage_model.cols"] = base[:, 1:4]  # non-contiguous, storage offset
sd["first_stage_model.rows"] = shared[1:4]  # contiguous, storage offset
sd["first_stage_model.rows_again"] = shared[2:]  # second view of the same storage
sd["first_stage_model.scalar"] = torch.tensor(2.5)
sd["first_stage_model.empty"] = torch.zeros(2, 0)
sd["model.param"] = torch.nn.Parameter(rnd(2, 2))
sd["model.f8"] = rnd(4).to(torch.float8_e4m3fn)
sd["model.f64"] = rnd(3, dtype=torch.float64)
ckpt = {"state_dict": sd, "global_step": 470000, "epoch": 3}
got = save(ckpt, "sd_zip", "ckpt")
twin("sd_zip", state_dict_tensors(got))

legacy_sd = {k: v for k, v in sd.items() if k != "model.f8"}  # float8 needs the zip format
got = save({"state_dict": legacy_sd, "global_step": 12}, "sd_legacy", "ckpt", legacy=True)
twin("sd_legacy", state_dict_tensors(got))

bare = {f"layer{i}.weight": rnd(*[int(x) for x in torch.randint(1, 5, (i % 3 + 1,), generator=g)]) for i in range(6)}
bare["nested"] = {"inner.weight": rnd(2, 3), "deeper": {"bias": rnd(3)}}
got = save(bare, "bare_nested", "bin")
twin("bare_nested", state_dict_tensors(got))

# --- a PyTorch-Lightning-like training checkpoint: class-keyed callbacks, numpy scalars ---
mc_mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")


class ModelCheckpoint:
    pass


ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
mc_mod.ModelCheckpoint = ModelCheckpoint
for m in ["pytorch_lightning", "pytorch_lightning.callbacks"]:
    sys.modules.setdefault(m, types.ModuleType(m))
sys.modules["pytorch_lightning.callbacks.model_checkpoint"] = mc_mod
pl = {
    "epoch": 5,
    "global_step": 1000,
    "pytorch-lightning_version": "1.4.2",
    "state_dict": {"model.w": rnd(2, 3)},
    "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.25), "monitor": None}},
    "optimizer_states": [],
    "lr_schedulers": [],
}
got = save(pl, "pl_train", "ckpt")
twin("pl_train", state_dict_tensors(got))

# --- textual inversion, every pickle layout ---
ti = {
    "string_to_token": {"*": 265},
    "string_to_param": {"*": rnd(2, 8).requires_grad_()},
    "name": "test-emb",
    "step": 100,
    "sd_checkpoint": "abcdef1234",
    "sd_checkpoint_name": "model",
}
got = save(ti, "ti_a1111", "pt")
twin("ti_a1111", {"A1111:*": got["string_to_param"]["*"].detach()})

pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(rnd(3, 8))})
got = save({"string_to_token": {"*": 265}, "string_to_param": pd, "name": "old", "step": 7}, "ti_paramdict", "pt")
twin("ti_paramdict", {"ParameterDict:*": got["string_to_param"]["*"].detach()})

got = save({"<cat-toy>": rnd(8)}, "ti_diffusers", "bin")
twin("ti_diffusers", {"Diffusers:<cat-toy>": got["<cat-toy>"]})

got = save({"emb_params": rnd(3, 8)}, "ti_kohya", "pt")
twin("ti_kohya", {"Kohya:emb_params": got["emb_params"]})

got = save({"clip_l": rnd(2, 8), "clip_g": rnd(2, 12)}, "ti_sdxl", "pt")
twin("ti_sdxl", {"Sdxl:clip_l": got["clip_l"], "Sdxl:clip_g": got["clip_g"]})

# --- an A1111 hypernetwork: int keys → (state_dict_k, state_dict_v), plus metadata keys ---
def mlp(dim):
    return {
        "linear.0.weight": rnd(dim * 2, dim),
        "linear.0.bias": rnd(dim * 2),
        "linear.2.weight": rnd(dim, dim * 2),
        "linear.2.bias": rnd(dim),
    }


hn = {8: (mlp(8), mlp(8)), 4: (mlp(4), mlp(4))}
hn.update(
    {
        "layer_structure": [1, 2, 1],
        "activation_func": "relu",
        "is_layer_norm": False,
        "weight_initialization": "Normal",
        "use_dropout": False,
        "dropout_structure": [0.0, 0.0, 0.0],
        "last_layer_dropout": False,
        "activate_output": False,
        "name": "hn",
        "step": 5,
        "sd_checkpoint": "abc",
        "sd_checkpoint_name": "m",
        "optional_info": None,
    }
)
got = save(hn, "hypernet", "pt")
tw = {}
for size in (8, 4):
    for side, d in zip("kv", got[size]):
        for k, v in d.items():
            tw[f"{size}.{side}.{k}"] = v
twin("hypernet", tw)

total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
print(f"wrote {len(os.listdir(OUT))} files, {total} bytes")

# The raw data.pkl of sd_zip.ckpt, for the truncation / byte-flip sweep of the interpreter.
import zipfile  # noqa: E402

with zipfile.ZipFile(os.path.join(OUT, "sd_zip.ckpt")) as z:
    with open(os.path.join(OUT, "sd_zip.data.pkl"), "wb") as f:
        f.write(z.read("sd_zip/data.pkl"))
