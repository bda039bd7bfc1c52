"""Renames diffusers / transformers Stable Diffusion 1.x state dicts to the original LDM
(CompVis) single-file checkpoint layout.

Used by make_fixtures.py: tools/.venv-ref/bin/python tools/make_fixtures.py

Layout produced:
  model.diffusion_model.*                 UNet (time_embed, input_blocks, middle_block,
                                          output_blocks, out)
  first_stage_model.*                     VAE (encoder.down.N.block.M, mid.block_1/attn_1/block_2,
                                          decoder.up.N in reversed order, quant_conv, ...)
  cond_stage_model.transformer.text_model.*  CLIP text encoder (transformers naming)
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------------------------

_UNET_RESNET = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
]

_UNET_TOP = [
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
]


def _unet_prefix_map(unet_config: dict) -> list[tuple[str, str]]:
    """Module-prefix renames (diffusers -> LDM) for a UNet2DConditionModel config."""
    down_types = unet_config["down_block_types"]
    up_types = unet_config["up_block_types"]
    layers = unet_config["layers_per_block"]
    n = len(down_types)
    per_level = layers + 1  # resnets (+attentions) then one downsample/skip slot
    out: list[tuple[str, str]] = []
    for i, kind in enumerate(down_types):
        for j in range(layers):
            idx = per_level * i + j + 1
            out.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{idx}.0."))
            if kind.startswith("CrossAttn"):
                out.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{idx}.1."))
        if i < n - 1:
            out.append(
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per_level * (i + 1)}.0.op.")
            )
    for i, kind in enumerate(up_types):
        has_attn = kind.startswith("CrossAttn")
        for j in range(layers + 1):
            idx = per_level * i + j
            out.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{idx}.0."))
            if has_attn:
                out.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{idx}.1."))
        if i < n - 1:
            slot = 2 if has_attn else 1
            out.append(
                (f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{per_level * i + layers}.{slot}.")
            )
    out.append(("mid_block.attentions.0.", "middle_block.1."))
    for j in range(2):
        out.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}."))
    return out


def unet_to_ldm(state: dict[str, torch.Tensor], unet_config: dict) -> dict[str, torch.Tensor]:
    """Diffusers UNet2DConditionModel state dict -> `model.diffusion_model.*` keys."""
    prefixes = _unet_prefix_map(unet_config)
    result = {}
    for key, value in state.items():
        new = key
        for src, dst in _UNET_TOP:
            if new.startswith(src):
                new = dst + new[len(src) :]
                break
        else:
            for src, dst in prefixes:
                if new.startswith(src):
                    rest = new[len(src) :]
                    if ".resnets." in src:
                        for r_src, r_dst in _UNET_RESNET:
                            if rest.startswith(r_src):
                                rest = r_dst + rest[len(r_src) :]
                                break
                    new = dst + rest
                    break
            else:
                raise KeyError(f"unmapped UNet key {key}")
        result["model.diffusion_model." + new] = value
    return result


# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------

_VAE_ATTN = [
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]


def vae_to_ldm(state: dict[str, torch.Tensor], vae_config: dict) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL state dict -> `first_stage_model.*` keys.

    Mid-block attention projections become 1x1 convolutions ([C, C] -> [C, C, 1, 1]).
    """
    n = len(vae_config["block_out_channels"])
    result = {}
    for key, value in state.items():
        new = key
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        new = new.replace(".conv_norm_out.", ".norm_out.")
        new = new.replace(".mid_block.resnets.0.", ".mid.block_1.")
        new = new.replace(".mid_block.resnets.1.", ".mid.block_2.")
        if ".mid_block.attentions.0." in new:
            new = new.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            head, tail = new.split(".mid.attn_1.", 1)
            for src, dst in _VAE_ATTN:
                if tail.startswith(src):
                    tail = dst + tail[len(src) :]
                    break
            else:
                raise KeyError(f"unmapped VAE attention key {key}")
            new = f"{head}.mid.attn_1.{tail}"
            if tail.endswith("weight") and not tail.startswith("norm.") and value.dim() == 2:
                value = value[:, :, None, None]
        if new.startswith("encoder.down_blocks."):
            parts = new.split(".")
            i = parts[2]
            rest = ".".join(parts[3:])
            rest = rest.replace("resnets.", "block.", 1).replace("downsamplers.0.", "downsample.", 1)
            new = f"encoder.down.{i}.{rest}"
        elif new.startswith("decoder.up_blocks."):
            parts = new.split(".")
            i = n - 1 - int(parts[2])
            rest = ".".join(parts[3:])
            rest = rest.replace("resnets.", "block.", 1).replace("upsamplers.0.", "upsample.", 1)
            new = f"decoder.up.{i}.{rest}"
        if "_blocks" in new or "mid_block" in new:
            raise KeyError(f"unmapped VAE key {key}")
        result["first_stage_model." + new] = value
    return result


# ---------------------------------------------------------------------------------------------
# Text encoder
# ---------------------------------------------------------------------------------------------


def text_encoder_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel state dict -> `cond_stage_model.transformer.*` keys."""
    result = {}
    for key, value in hf_text_encoder_keys(state).items():
        result["cond_stage_model.transformer." + key] = value
    return result


def hf_text_encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Puts CLIPTextModel keys in the `text_model.*` form every published checkpoint uses.

    Recent transformers versions drop the `text_model.` level from the module tree (and add it
    back when loading), so their state dicts may come without it.
    """
    return {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()}
