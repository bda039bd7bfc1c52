"""Shared fixtures: the tiny random-weight model and the diffusers references in tests/fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sdrs

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def pipe() -> sdrs.Pipeline:
    return sdrs.Pipeline.from_file(FIXTURES / "tiny-sd")


def reference(name: str) -> tuple[dict, dict]:
    """The tensors and metadata of a reference file written by diffusers."""
    from safetensors import safe_open

    path = FIXTURES / "reference" / name
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def request_kwargs(meta: dict) -> dict:
    """The generate() arguments a reference was made with."""
    return {
        "prompt": meta["prompt"],
        "negative_prompt": meta["negative_prompt"],
        "steps": int(meta["steps"]),
        "guidance_scale": float(meta["guidance"]),
        "width": int(meta["width"]),
        "height": int(meta["height"]),
        "seed": int(meta["seed"]),
        "scheduler": meta["scheduler"],
    }


__all__ = ["FIXTURES", "json", "reference", "request_kwargs"]
