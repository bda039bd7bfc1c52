"""Writes tests/fixtures/tiny-sd.ckpt: the tiny single-file model as a pickle checkpoint.

Run from the repository root:

    tools/.venv-ref/bin/python tools/make_ckpt_model_fixture.py

The tensors are those of tests/fixtures/tiny-sd.safetensors (float16, original LDM layout),
saved unchanged (same names, same dtype, same bytes) with torch.save in its zip format, nested
under `state_dict` beside `global_step` and `epoch`, the way the original Stable Diffusion
checkpoints were saved. Loading both files must give bitwise identical weights.
"""

import collections
import os

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
SRC = os.path.join(FIX, "tiny-sd.safetensors")
DST = os.path.join(FIX, "tiny-sd.ckpt")


def main():
    tensors = load_file(SRC)
    state = collections.OrderedDict((k, tensors[k].contiguous()) for k in sorted(tensors))
    ckpt = {"epoch": 6, "global_step": 470000, "state_dict": state}
    torch.save(ckpt, DST)
    # Check: torch reads back exactly the same bytes.
    back = torch.load(DST, weights_only=True)
    assert back["global_step"] == 470000
    for k, v in tensors.items():
        w = back["state_dict"][k]
        assert w.dtype == v.dtype and w.shape == v.shape and torch.equal(w, v), k
    print(f"wrote {DST}: {len(state)} tensors, {os.path.getsize(DST)} bytes")


if __name__ == "__main__":
    main()
