"""A PyTorch re-implementation of AUTOMATIC1111's hypernetworks, for reference fixtures.

Follows AUTOMATIC1111/stable-diffusion-webui `modules/hypernetworks/hypernetwork.py` (commit
3157fe28): `HypernetworkModule` (the per-width MLP, its `activation_dict`, `fix_old_state_dict`
and `forward`), `parse_dropout_structure`, `Hypernetwork.load` (defaults of absent keys),
`apply_single_hypernetwork` and `apply_hypernetworks`; and `modules/sd_hijack_optimizations.py`,
whose attention forwards call `apply_hypernetworks(shared.loaded_hypernetworks, context)` on the
key/value context (`context = default(context, x)`, so self-attention transforms its own input).

`HypernetAttnProcessor` puts that hook into a diffusers UNet: it is diffusers'
`AttnProcessor` (models/attention_processor.py) with the key/value context replaced as A1111's
hijacked attention replaces it. Written for the reference fixtures only; it loads files with
`torch.load(weights_only=True)` (the plain dicts A1111 saves need nothing else).
"""

from __future__ import annotations

import inspect
import os

import torch


def _activation_dict():
    # HypernetworkModule.activation_dict: seven fixed names, then every class defined in
    # torch.nn.modules.activation by its lower-cased name ("swish" stays Hardswish).
    d = {
        "linear": torch.nn.Identity,
        "relu": torch.nn.ReLU,
        "leakyrelu": torch.nn.LeakyReLU,
        "elu": torch.nn.ELU,
        "swish": torch.nn.Hardswish,
        "tanh": torch.nn.Tanh,
        "sigmoid": torch.nn.Sigmoid,
    }
    d.update(
        {
            name.lower(): cls
            for name, cls in inspect.getmembers(torch.nn.modules.activation)
            if inspect.isclass(cls) and cls.__module__ == "torch.nn.modules.activation"
        }
    )
    return d


ACTIVATIONS = _activation_dict()


class HypernetworkModule(torch.nn.Module):
    """HypernetworkModule.__init__ and forward. With `state_dict=None` the modules keep torch's
    initialisation (A1111 then applies its `weight_init`; the fixture script sets random values)."""

    def __init__(self, dim, state_dict, layer_structure, activation_func, add_layer_norm, activate_output, dropout_structure):
        super().__init__()
        self.multiplier = 1.0
        assert layer_structure is not None, "layer_structure must not be None"
        assert layer_structure[0] == 1, "Multiplier Sequence should start with size 1!"
        assert layer_structure[-1] == 1, "Multiplier Sequence should end with size 1!"
        linears = []
        for i in range(len(layer_structure) - 1):
            linears.append(torch.nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])))
            if activation_func == "linear" or activation_func is None or (i >= len(layer_structure) - 2 and not activate_output):
                pass
            elif activation_func in ACTIVATIONS:
                linears.append(ACTIVATIONS[activation_func]())
            else:
                raise RuntimeError(f"hypernetwork uses an unsupported activation function: {activation_func}")
            if add_layer_norm:
                linears.append(torch.nn.LayerNorm(int(dim * layer_structure[i + 1])))
            if dropout_structure is not None and dropout_structure[i + 1] > 0:
                assert 0 < dropout_structure[i + 1] < 1, "Dropout probability should be 0 or float between 0 and 1!"
                linears.append(torch.nn.Dropout(p=dropout_structure[i + 1]))
        self.linear = torch.nn.Sequential(*linears)
        if state_dict is not None:
            state_dict = dict(state_dict)
            self.fix_old_state_dict(state_dict)
            self.load_state_dict(state_dict)  # strict: every key present, none extra, shapes equal
        self.eval()

    @staticmethod
    def fix_old_state_dict(state_dict):
        changes = {
            "linear1.bias": "linear.0.bias",
            "linear1.weight": "linear.0.weight",
            "linear2.bias": "linear.1.bias",
            "linear2.weight": "linear.1.weight",
        }
        for fr, to in changes.items():
            x = state_dict.get(fr, None)
            if x is None:
                continue
            del state_dict[fr]
            state_dict[to] = x

    def forward(self, x):
        return x + self.linear(x) * (self.multiplier if not self.training else 1)


def parse_dropout_structure(layer_structure, use_dropout, last_layer_dropout):
    if layer_structure is None:
        layer_structure = [1, 2, 1]
    if not use_dropout:
        return [0] * len(layer_structure)
    dropout_values = [0]
    dropout_values.extend([0.3] * (len(layer_structure) - 3))
    if last_layer_dropout:
        dropout_values.append(0.3)
    else:
        dropout_values.append(0)
    dropout_values.append(0)
    return dropout_values


class Hypernetwork:
    """Hypernetwork.load (without the optimizer side file) and set_multiplier."""

    def __init__(self, filename, dtype=torch.float32):
        self.name = os.path.splitext(os.path.basename(filename))[0]
        state_dict = torch.load(filename, map_location="cpu", weights_only=True)
        self.layer_structure = state_dict.get("layer_structure", [1, 2, 1])
        self.activation_func = state_dict.get("activation_func", None)
        self.add_layer_norm = state_dict.get("is_layer_norm", False)
        self.dropout_structure = state_dict.get("dropout_structure", None)
        self.use_dropout = (
            True
            if self.dropout_structure is not None and any(self.dropout_structure)
            else state_dict.get("use_dropout", False)
        )
        self.activate_output = state_dict.get("activate_output", True)
        self.last_layer_dropout = state_dict.get("last_layer_dropout", False)
        if self.dropout_structure is None:
            self.dropout_structure = parse_dropout_structure(self.layer_structure, self.use_dropout, self.last_layer_dropout)
        self.layers = {}
        for size, sd in state_dict.items():
            if type(size) == int:  # noqa: E721 (as A1111)
                self.layers[size] = tuple(
                    HypernetworkModule(
                        size, sd[i], self.layer_structure, self.activation_func, self.add_layer_norm,
                        self.activate_output, self.dropout_structure,
                    ).to(dtype)
                    for i in (0, 1)
                )
        self.name = state_dict.get("name", self.name)

    def set_multiplier(self, multiplier):
        for layers in self.layers.values():
            for layer in layers:
                layer.multiplier = multiplier
        return self


def apply_single_hypernetwork(hypernetwork, context_k, context_v):
    layers = (hypernetwork.layers if hypernetwork is not None else {}).get(context_k.shape[2], None)
    if layers is None:
        return context_k, context_v
    # A1111 runs the modules in float32 (devices.cond_cast_float); the reference runs everything
    # in the dtype the modules were built in (float64).
    return layers[0](context_k), layers[1](context_v)


def apply_hypernetworks(hypernetworks, context):
    context_k = context
    context_v = context
    for hypernetwork in hypernetworks:
        context_k, context_v = apply_single_hypernetwork(hypernetwork, context_k, context_v)
    return context_k, context_v


class HypernetAttnProcessor:
    """diffusers AttnProcessor with A1111's key/value context hook (sd_hijack_optimizations.py)."""

    def __init__(self, hypernetworks):
        self.hypernetworks = hypernetworks

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        assert attn.spatial_norm is None and attn.group_norm is None and hidden_states.ndim == 3
        residual = hidden_states
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states  # ldm: context = default(context, x)
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        context_k, context_v = apply_hypernetworks(self.hypernetworks, encoder_hidden_states)
        key = attn.to_k(context_k)
        value = attn.to_v(context_v)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        attention_probs = attn.get_attention_scores(query, key, attention_mask)
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
