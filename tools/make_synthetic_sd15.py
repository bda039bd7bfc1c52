"""Writes a full-size SD 1.5 checkpoint with random weights, in the single-file original layout
(the layout model sites publish), for measuring load time and peak memory without downloading a
real model. Not a fixture: the file is ~2 GB in float16; write it outside the repository.

Usage: tools/.venv-ref/bin/python tools/make_synthetic_sd15.py OUT.safetensors [--dtype f16|bf16|f32]
"""

import argparse
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ldm_layout  # noqa: E402

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=512,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16", "f32"])
    args = ap.parse_args()
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    sd = {}
    unet = UNet2DConditionModel(**SD15_UNET)
    sd.update({k: v.to(dtype) for k, v in ldm_layout.unet_to_ldm(unet.state_dict(), dict(unet.config)).items()})
    del unet
    vae = AutoencoderKL(**SD15_VAE)
    sd.update({k: v.to(dtype) for k, v in ldm_layout.vae_to_ldm(vae.state_dict(), dict(vae.config)).items()})
    del vae
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                      num_hidden_layers=12, max_position_embeddings=77,
                                      hidden_act="quick_gelu", projection_dim=768))
    state = {f"text_model.{k}" if not k.startswith("text_model.") else k: v for k, v in te.state_dict().items()}
    sd.update({k: v.to(dtype) for k, v in ldm_layout.text_encoder_to_ldm(state).items()})
    sd = {k: v.contiguous() for k, v in sd.items()}
    save_file(sd, args.out)
    print(f"wrote {len(sd)} tensors to {args.out}")


if __name__ == "__main__":
    main()
