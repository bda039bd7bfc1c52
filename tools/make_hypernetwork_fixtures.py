"""Writes AUTOMATIC1111 hypernetwork files for tests/fixtures/tiny-sd and the outputs A1111's
hypernetwork code gives with them: on the diffusers UNet, and on bare contexts.

Run from the repository root (after `bash tools/setup_reference_env.sh`):

    tools/.venv-ref/bin/python tools/make_hypernetwork_fixtures.py

The A1111 behaviour comes from tools/a1111_hypernetwork.py, a re-implementation of
`modules/hypernetworks/hypernetwork.py` (see there). Files are written as A1111's
`Hypernetwork.save` writes them: `torch.save` of a dict with int keys (the context width a pair
of modules applies to) mapping to `(state_dict_k, state_dict_v)`, plus metadata keys.

Writes
    tests/fixtures/hypernetwork/*.pt        the hypernetworks (FILES below), and bad/*.pt
    tests/fixtures/reference/hypernetwork.safetensors
        sample, encoder_hidden_states       UNet inputs ([2, 4, 8, 8], [2, 77, 16]), timestep 541
        unet_plain                          the UNet output without hypernetworks
        unet_<case>                         the output with the hypernetworks of UNET_CASES[case]
        ctx16, ctx32                        bare contexts [2, 7, 16] and [2, 5, 32]
        k_<file>_<w>, v_<file>_<w>          A1111's apply_hypernetworks([hn at STRENGTH]) on ctx<w>
        metadata: unet_cases, context_cases (JSON), precision, versions

The tiny UNet's attention widths: 16 (down_blocks.0 / up_blocks.2 self-attention, and every
cross-attention, whose context is the 16-wide text encoder output) and 32 (self-attention of the
other blocks). Every parameter is random: Linear weights N(0,1)/sqrt(fan_in) times a gain, biases
0.1 N(0,1), LayerNorm weights 1 + 0.2 N(0,1) and biases 0.1 N(0,1), PReLU weights 0.25 + 0.1 N(0,1).
References run in float64 (UNet and modules); the files hold float32.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import a1111_hypernetwork as a1111  # noqa: E402
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from make_ti_fixtures import write_safetensors  # noqa: E402

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "hypernetwork")
REF = os.path.join(FIX, "reference", "hypernetwork.safetensors")
TIMESTEP = 541

g = torch.Generator().manual_seed(9876)


def randomise(module: torch.nn.Module, gain: float):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain / m.in_features**0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(0.25 + 0.1 * torch.randn(m.weight.shape, generator=g))


def module_state(dim, meta, gain):
    """A random module's state dict, built as Hypernetwork.load would rebuild it."""
    layer_structure = meta.get("layer_structure", [1, 2, 1])
    dropout = meta.get("dropout_structure", None)
    use_dropout = True if dropout is not None and any(dropout) else meta.get("use_dropout", False)
    if dropout is None:
        dropout = a1111.parse_dropout_structure(layer_structure, use_dropout, meta.get("last_layer_dropout", False))
    m = a1111.HypernetworkModule(
        dim, None, layer_structure, meta.get("activation_func", None), meta.get("is_layer_norm", False),
        meta.get("activate_output", True), dropout,
    )
    randomise(m, gain)
    return m.state_dict()


def a1111_file(name, sizes, meta, gain=1.0, legacy=False):
    """torch.save of the dict Hypernetwork.save writes (int keys first, then the metadata)."""
    d = {}
    for size in sizes:
        pair = []
        for _ in range(2):
            sd = module_state(size, meta, gain)
            if legacy:
                # fix_old_state_dict's inverse: NAI / early A1111 key names.
                sd = {k.replace("linear.0.", "linear1.").replace("linear.1.", "linear2."): v for k, v in sd.items()}
            pair.append(sd)
        d[size] = tuple(pair)
    d.update(meta)
    path = os.path.join(OUT, name + ".pt")
    torch.save(d, path)
    return path


# Full metadata as the current A1111 Hypernetwork.save writes it.
def current_meta(**kw):
    meta = {
        "step": 250,
        "name": None,
        "layer_structure": [1.0, 2.0, 1.0],
        "activation_func": "linear",
        "is_layer_norm": False,
        "weight_initialization": "Normal",
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "tiny-sd",
        "activate_output": False,
        "use_dropout": False,
        "dropout_structure": [0.0, 0.0, 0.0],
        "last_layer_dropout": False,
        "optional_info": None,
    }
    meta.update(kw)
    return meta


FILES = {
    # [1, 2, 1], relu, output not activated, no norm, no dropout; both widths.
    "hn-relu": ([16, 32], current_meta(name="hn-relu", activation_func="relu")),
    # Swish (= Hardswish in A1111), layer norm after every Linear, explicit dropout slots,
    # fractional layer widths, activated output.
    "hn-swish-norm-dropout": (
        [16, 32],
        current_meta(
            name="hn-swish-norm-dropout",
            layer_structure=[1.0, 1.5, 0.5, 1.0],
            activation_func="swish",
            is_layer_norm=True,
            use_dropout=True,
            dropout_structure=[0.0, 0.25, 0.1, 0.0],
            activate_output=True,
        ),
    ),
    # use_dropout + last_layer_dropout without a dropout_structure key (derived: [0, .3, .3, 0]);
    # a 32-wide module only, so 16-wide contexts pass through.
    "hn-leaky-derived-dropout": (
        [32],
        {
            "layer_structure": [1, 2, 2, 1],
            "activation_func": "leakyrelu",
            "use_dropout": True,
            "last_layer_dropout": True,
            "activate_output": False,
            "name": "hn-leaky-derived-dropout",
        },
    ),
    # PReLU: its learnable weight is a parameter of the Sequential too.
    "hn-prelu": ([16, 32], current_meta(name="hn-prelu", activation_func="prelu", activate_output=True)),
}

# NAI / early A1111: only int keys, `linear1`/`linear2` names; every metadata default applies
# ([1, 2, 1], no activation, activate_output True).
LEGACY = ("hn-legacy", [16])

# Every activation name A1111 accepts and sd-core computes; one 16-wide module each, [1, 2, 1],
# output activated, larger weights so that pre-activations reach every regime (relu6's 6,
# softplus' threshold 20, the shrink thresholds).
ACTIVATIONS = [
    "linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "celu", "gelu", "hardshrink",
    "hardsigmoid", "hardswish", "hardtanh", "logsigmoid", "mish", "prelu", "relu6", "rrelu", "selu",
    "silu", "softplus", "softshrink", "softsign", "tanhshrink",
]

UNET_CASES = {
    "relu": [("hn-relu", 1.0)],
    "swish_norm_dropout": [("hn-swish-norm-dropout", 0.8)],
    "leaky_derived_dropout": [("hn-leaky-derived-dropout", -0.6)],
    "prelu": [("hn-prelu", 1.0)],
    "legacy": [("hn-legacy", 1.3)],
    "chain_two": [("hn-swish-norm-dropout", 0.7), ("hn-relu", 1.2)],
    "chain_three": [("hn-legacy", 1.0), ("hn-leaky-derived-dropout", 0.5), ("hn-prelu", 0.9)],
}

CONTEXT_STRENGTH = 0.75


def load(name, multiplier):
    hn = a1111.Hypernetwork(os.path.join(OUT, name + ".pt"), dtype=torch.float64)
    return hn.set_multiplier(multiplier)


def write_bad_files():
    """Files the loader must refuse, each for one reason."""
    bad = os.path.join(OUT, "bad")
    os.makedirs(bad, exist_ok=True)

    def save(name, d):
        torch.save(d, os.path.join(bad, name + ".pt"))

    def pair(meta, dim=16):
        return (module_state(dim, meta, 1.0), module_state(dim, meta, 1.0))

    relu = current_meta(activation_func="relu")
    save("unknown-activation", {16: pair(relu), **current_meta(activation_func="swishy")})
    save("softmax-activation", {16: pair(current_meta(activation_func="linear")), **current_meta(activation_func="softmax")})
    k, v = pair(relu)
    k["linear.2.weight"] = k["linear.2.weight"][:, :-1].clone()
    save("wrong-shape", {16: (k, v), **relu})
    k, v = pair(relu)
    del v["linear.2.bias"]
    save("missing-key", {16: (k, v), **relu})
    k, v = pair(relu)
    k["linear.1.weight"] = torch.ones(32)
    save("unexpected-key", {16: (k, v), **relu})
    k, v = pair(relu)
    v["linear.0.weight"][3, 2] = float("nan")
    save("nan", {16: (k, v), **relu})
    save("layer-structure", {16: pair(relu), **current_meta(activation_func="relu", layer_structure=[2.0, 1.0])})
    save(
        "dropout-probability",
        {16: pair(relu), **current_meta(activation_func="relu", dropout_structure=[0.0, 1.5, 0.0])},
    )
    # A LayerNorm slot (1-D weight) where the structure says Linear (2-D): the plan of a [1, 2, 1]
    # relu module with layer norm, read as one without.
    norm = current_meta(activation_func="relu", is_layer_norm=True)
    save("norm-as-linear", {16: pair(norm), **relu})
    save("no-layers", current_meta())


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (sizes, meta) in FILES.items():
        a1111_file(name, sizes, meta)
    a1111_file(LEGACY[0], LEGACY[1], {}, legacy=True)
    for act in ACTIVATIONS:
        a1111_file(f"act-{act}", [16], {"activation_func": act, "activate_output": True}, gain=4.0)
    write_bad_files()

    unet = UNet2DConditionModel.from_pretrained(os.path.join(FIX, "tiny-sd"), subfolder="unet").double().eval()
    gi = torch.Generator().manual_seed(55)
    sample = torch.randn(2, 4, 8, 8, generator=gi)
    ehs = torch.randn(2, 77, 16, generator=gi)
    tensors = {"sample": sample, "encoder_hidden_states": ehs}
    with torch.no_grad():
        unet.set_attn_processor(a1111.HypernetAttnProcessor([]))
        tensors["unet_plain"] = unet(sample.double(), TIMESTEP, encoder_hidden_states=ehs.double()).sample
        for case, chain in UNET_CASES.items():
            hns = [load(name, m) for name, m in chain]
            unet.set_attn_processor(a1111.HypernetAttnProcessor(hns))
            out = unet(sample.double(), TIMESTEP, encoder_hidden_states=ehs.double()).sample
            tensors[f"unet_{case}"] = out

        ctx = {16: 1.5 * torch.randn(2, 7, 16, generator=gi), 32: 1.5 * torch.randn(2, 5, 32, generator=gi)}
        tensors["ctx16"], tensors["ctx32"] = ctx[16], ctx[32]
        context_cases = {}
        names = list(FILES) + [LEGACY[0]] + [f"act-{a}" for a in ACTIVATIONS]
        for name in names:
            hn = load(name, CONTEXT_STRENGTH)
            context_cases[name] = sorted(hn.layers)
            for w in sorted(hn.layers):
                k, v = a1111.apply_hypernetworks([hn], ctx[w].double())
                tensors[f"k_{name}_{w}"] = k
                tensors[f"v_{name}_{w}"] = v

    for k, t in tensors.items():
        if not torch.isfinite(t).all():
            raise RuntimeError(f"{k} is not finite")
    out = {k: t.detach().to(torch.float32).contiguous() for k, t in tensors.items()}
    metadata = {
        "timestep": str(TIMESTEP),
        "unet_cases": json.dumps(UNET_CASES, sort_keys=True),
        "context_cases": json.dumps(context_cases, sort_keys=True),
        "context_strength": str(CONTEXT_STRENGTH),
        "precision": "float64 UNet and hypernetwork modules, stored as float32",
        "version_torch": torch.__version__,
        "version_diffusers": diffusers.__version__,
        "version_transformers": transformers.__version__,
        "version_numpy": np.__version__,
    }
    write_safetensors(REF, out, metadata)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({size} bytes), {REF} ({os.path.getsize(REF)} bytes)")


if __name__ == "__main__":
    main()
