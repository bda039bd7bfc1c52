"""A PyTorch re-implementation of AUTOMATIC1111's LoRA / LyCORIS weight patching, for reference
fixtures (used by tools/make_lora_fixtures.py).

It follows stable-diffusion-webui's `extensions-builtin/Lora/` files, function by function:

  lyco_helpers.py   rebuild_conventional, rebuild_cp_decomposition, make_weight_cp
  network.py        NetworkModule.multiplier, calc_scale, finalize_updown, apply_weight_decompose
  network_lora.py   NetworkModuleLora.calc_updown     (LoRA / LoCon / CP `lora_mid`)
  network_hada.py   NetworkModuleHada.calc_updown     (LoHa, Tucker `hada_t1/t2`)
  network_lokr.py   NetworkModuleLokr.calc_updown, make_kron
  network_ia3.py    NetworkModuleIa3.calc_updown
  network_glora.py  NetworkModuleGLora.calc_updown
  network_full.py   NetworkModuleFull.calc_updown     (`diff`, `diff_b`)
  network_norm.py   NetworkModuleNorm.calc_updown     (`w_norm`, `b_norm`)
  networks.py       load_network (module grouping, `module_types` order), network_apply_weights
                    (W <- W + updown for each network in order, ex_bias added to the bias)

One extension over A1111's `apply_weight_decompose`: a `dora_scale` whose shape is `[out, 1, ..]`
(or 1-D of length out != in) is treated as a per-output-row magnitude (the LyCORIS `wd_on_out`
and PEFT convention), where A1111 would broadcast it against its per-input-column norm.

Models are plain dicts of float64 parameters under diffusers / transformers names; LoRA module
names (`lora_unet_*`, `lora_te_*`) are matched against `module_path.replace('.', '_')`, the table
A1111 builds from the model's own modules.
"""

from __future__ import annotations

import torch


# --- lyco_helpers.py ---------------------------------------------------------------------------


def rebuild_conventional(up, down, shape):
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return (up @ down).reshape(shape)


def rebuild_cp_decomposition(up, down, mid):
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return torch.einsum("n m k l, i n, m j -> i j k l", mid, up, down)


def make_weight_cp(t, wa, wb):
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


# --- network.py --------------------------------------------------------------------------------


class NetworkModule:
    def __init__(self, w: dict, weight_shape, te_module: bool, te_mult: float, unet_mult: float):
        self.w = w
        self.shape = weight_shape
        self.te_module = te_module
        self.te_mult = te_mult
        self.unet_mult = unet_mult
        self.dim = None
        self.bias = w.get("bias")
        self.alpha = w["alpha"].item() if "alpha" in w else None
        self.scale = w["scale"].item() if "scale" in w else None
        self.dora_scale = w.get("dora_scale")
        self.dora_norm_dims = len(self.shape) - 1

    def multiplier(self):
        # network.py: the text-encoder multiplier for 'transformer' keys, else the UNet's.
        return self.te_mult if self.te_module else self.unet_mult

    def calc_scale(self):
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def apply_weight_decompose(self, updown, orig_weight):
        merged = updown + orig_weight
        ds = self.dora_scale.to(merged.dtype)
        out_dim = merged.shape[0]
        in_dim = merged.shape[1] if merged.dim() >= 2 else None
        if ds.dim() >= 2:
            per_output = ds.shape[0] == out_dim and all(d == 1 for d in ds.shape[1:])
        else:
            per_output = ds.shape[0] == out_dim and ds.shape[0] != in_dim
        if per_output:
            norm = merged.reshape(out_dim, -1).norm(dim=1, keepdim=True)
            norm = norm.reshape(out_dim, *[1] * self.dora_norm_dims)
            ds = ds.reshape(out_dim, *[1] * self.dora_norm_dims)
        else:
            # A1111: transpose(0, 1) -> reshape(in, -1) -> norm(dim=1) -> broadcast as [1, in, ..]
            norm = (
                merged.transpose(0, 1)
                .reshape(merged.shape[1], -1)
                .norm(dim=1, keepdim=True)
                .reshape(merged.shape[1], *[1] * self.dora_norm_dims)
                .transpose(0, 1)
            )
        return merged * (ds / norm) - orig_weight

    def finalize_updown(self, updown, orig_weight, output_shape, ex_bias=None):
        if self.bias is not None:
            updown = updown.reshape(self.bias.shape)
            updown = updown + self.bias.to(updown.dtype)
            updown = updown.reshape(output_shape)
        if len(output_shape) == 4:
            updown = updown.reshape(output_shape)
        if orig_weight.numel() == updown.numel():
            updown = updown.reshape(orig_weight.shape)
        if ex_bias is not None:
            ex_bias = ex_bias * self.multiplier()
        updown = updown * self.calc_scale()
        if self.dora_scale is not None:
            updown = self.apply_weight_decompose(updown, orig_weight)
        return updown * self.multiplier(), ex_bias


# --- network_lora.py ---------------------------------------------------------------------------


class ModuleLora(NetworkModule):
    @staticmethod
    def accepts(w):
        return "lora_up.weight" in w and "lora_down.weight" in w

    def __init__(self, *args):
        super().__init__(*args)
        is_conv = len(self.shape) == 4
        up, down = self.w["lora_up.weight"], self.w["lora_down.weight"]
        mid = self.w.get("lora_mid.weight")
        # create_module: linear weights are 2-D; a conv's down/up become conv kernels.
        if is_conv:
            if down.dim() == 2:
                down = down.reshape(down.shape[0], -1, 1, 1)
            if up.dim() == 2:
                up = up.reshape(up.shape[0], -1, 1, 1)
        else:
            down = down.reshape(down.shape[0], -1)
            up = up.reshape(up.shape[0], -1)
        self.up, self.down, self.mid = up, down, mid
        self.dim = self.w["lora_down.weight"].shape[0]

    def calc_updown(self, orig_weight):
        up, down = self.up, self.down
        output_shape = [up.size(0), down.size(1)]
        if self.mid is not None:
            updown = rebuild_cp_decomposition(up, down, self.mid)
            output_shape += list(self.mid.shape[2:])
        else:
            if len(down.shape) == 4:
                output_shape += list(down.shape[2:])
            updown = rebuild_conventional(up, down, output_shape)
        return self.finalize_updown(updown, orig_weight, output_shape)


# --- network_hada.py ---------------------------------------------------------------------------


class ModuleHada(NetworkModule):
    @staticmethod
    def accepts(w):
        return all(k in w for k in ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"])

    def __init__(self, *args):
        super().__init__(*args)
        self.w1a, self.w1b = self.w["hada_w1_a"], self.w["hada_w1_b"]
        self.w2a, self.w2b = self.w["hada_w2_a"], self.w["hada_w2_b"]
        self.t1, self.t2 = self.w.get("hada_t1"), self.w.get("hada_t2")
        self.dim = self.w1b.shape[0]

    def calc_updown(self, orig_weight):
        w1a, w1b, w2a, w2b = self.w1a, self.w1b, self.w2a, self.w2b
        output_shape = [w1a.size(0), w1b.size(1)]
        if self.t1 is not None:
            output_shape = [w1a.size(1), w1b.size(1)]
            updown1 = make_weight_cp(self.t1, w1a, w1b)
            output_shape += list(self.t1.shape[2:])
        else:
            if len(w1b.shape) == 4:
                output_shape += list(w1b.shape[2:])
            updown1 = rebuild_conventional(w1a, w1b, output_shape)
        if self.t2 is not None:
            updown2 = make_weight_cp(self.t2, w2a, w2b)
        else:
            updown2 = rebuild_conventional(w2a, w2b, output_shape)
        return self.finalize_updown(updown1 * updown2, orig_weight, output_shape)


# --- network_ia3.py ----------------------------------------------------------------------------


class ModuleIa3(NetworkModule):
    @staticmethod
    def accepts(w):
        return "weight" in w

    def __init__(self, *args):
        super().__init__(*args)
        self.iw = self.w["weight"]
        self.on_input = bool(self.w["on_input"].item())

    def calc_updown(self, orig_weight):
        w = self.iw
        output_shape = [w.size(0), orig_weight.size(1)]
        if self.on_input:
            output_shape.reverse()
        else:
            w = w.reshape(-1, 1)
        return self.finalize_updown(orig_weight * w, orig_weight, output_shape)


# --- network_lokr.py ---------------------------------------------------------------------------


def make_kron(orig_shape, w1, w2):
    if len(w2.shape) == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return torch.kron(w1, w2.contiguous()).reshape(orig_shape)


class ModuleLokr(NetworkModule):
    @staticmethod
    def accepts(w):
        has_1 = "lokr_w1" in w or ("lokr_w1_a" in w and "lokr_w1_b" in w)
        has_2 = "lokr_w2" in w or ("lokr_w2_a" in w and "lokr_w2_b" in w)
        return has_1 and has_2

    def __init__(self, *args):
        super().__init__(*args)
        g = self.w.get
        self.w1, self.w1a, self.w1b = g("lokr_w1"), g("lokr_w1_a"), g("lokr_w1_b")
        self.dim = self.w1b.shape[0] if self.w1b is not None else self.dim
        self.w2, self.w2a, self.w2b = g("lokr_w2"), g("lokr_w2_a"), g("lokr_w2_b")
        self.dim = self.w2b.shape[0] if self.w2b is not None else self.dim
        self.t2 = g("lokr_t2")

    def calc_updown(self, orig_weight):
        w1 = self.w1 if self.w1 is not None else self.w1a @ self.w1b
        if self.w2 is not None:
            w2 = self.w2
        elif self.t2 is None:
            w2 = self.w2a @ self.w2b
        else:
            w2 = make_weight_cp(self.t2, self.w2a, self.w2b)
        output_shape = [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
        if len(orig_weight.shape) == 4:
            output_shape = list(orig_weight.shape)
        updown = make_kron(output_shape, w1, w2)
        return self.finalize_updown(updown, orig_weight, output_shape)


# --- network_full.py ---------------------------------------------------------------------------


class ModuleFull(NetworkModule):
    @staticmethod
    def accepts(w):
        return "diff" in w

    def calc_updown(self, orig_weight):
        diff = self.w["diff"]
        return self.finalize_updown(diff, orig_weight, list(diff.shape), self.w.get("diff_b"))


# --- network_norm.py ---------------------------------------------------------------------------


class ModuleNorm(NetworkModule):
    @staticmethod
    def accepts(w):
        return "w_norm" in w and "b_norm" in w

    def calc_updown(self, orig_weight):
        w_norm = self.w["w_norm"]
        return self.finalize_updown(w_norm, orig_weight, list(w_norm.shape), self.w.get("b_norm"))


# --- network_glora.py --------------------------------------------------------------------------


class ModuleGLora(NetworkModule):
    @staticmethod
    def accepts(w):
        return all(k in w for k in ["a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight"])

    def calc_updown(self, orig_weight):
        w1a, w1b = self.w["a1.weight"], self.w["b1.weight"]
        w2a, w2b = self.w["a2.weight"], self.w["b2.weight"]
        output_shape = [w1a.size(0), w1b.size(1)]
        updown = (w2b @ w1b) + ((orig_weight @ w2a) @ w1a)
        return self.finalize_updown(updown, orig_weight, output_shape)


# networks.py `module_types`, in A1111's order (OFT is not reproduced here).
MODULE_TYPES = [ModuleLora, ModuleHada, ModuleIa3, ModuleLokr, ModuleFull, ModuleNorm, ModuleGLora]


# --- networks.py -------------------------------------------------------------------------------


def group_modules(lora: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """networks.load_network: `key.partition('.')` into module name and weight kind."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        module, _, part = key.partition(".")
        if module == "bundle_emb":
            continue
        groups.setdefault(module, {})[part] = value.double()
    return groups


def apply_networks(params: dict[str, torch.Tensor], networks) -> dict[str, torch.Tensor]:
    """networks.network_apply_weights over a whole model.

    `params` maps every parameter name (diffusers UNet names; text-encoder names starting with
    `text_model.`) to a float64 tensor; `networks` is a list of
    `(lora_state_dict, te_multiplier, unet_multiplier)` applied in order. Returns the patched
    parameters (a new dict; untouched tensors are shared).
    """
    out = dict(params)
    table = {}
    for name in params:
        module = name.rsplit(".", 1)[0]
        te = name.startswith("text_model.")
        table[("lora_te_" if te else "lora_unet_") + module.replace(".", "_")] = (module, te)
    for lora, te_mult, unet_mult in networks:
        for name, w in group_modules(lora).items():
            if name not in table:
                raise KeyError(f"no module for {name}")
            module, te = table[name]
            weight = out[module + ".weight"]
            kind = next((t for t in MODULE_TYPES if t.accepts(w)), None)
            if kind is None:
                raise KeyError(f"no algorithm for {name}: {sorted(w)}")
            net = kind(w, weight.shape, te, te_mult, unet_mult)
            updown, ex_bias = net.calc_updown(weight)
            out[module + ".weight"] = weight + updown
            if ex_bias is not None:
                out[module + ".bias"] = out[module + ".bias"] + ex_bias
    return out
