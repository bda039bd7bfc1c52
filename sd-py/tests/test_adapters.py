"""Adapters from Python: the same generation as the command line and the Rust API, objects and
paths interchangeable, prompt tags resolved from folders, reports, and argument errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import FIXTURES, reference

import sdrs

LORA = FIXTURES / "lora" / "kohya_locon.safetensors"
TI = FIXTURES / "ti" / "ti-alpha.pt"
HN = FIXTURES / "hypernetwork" / "hn-relu.pt"


def run_kwargs(meta: dict, prompt_key: str) -> dict:
    return {
        "prompt": meta[prompt_key],
        "negative_prompt": meta["negative_prompt"],
        "steps": int(meta["steps"]),
        "guidance_scale": float(meta["guidance"]),
        "width": 64,
        "height": 64,
        "seed": int(meta["seed"]),
        "scheduler": meta["scheduler"],
    }


def test_lora_and_embedding_match_diffusers(pipe: sdrs.Pipeline) -> None:
    tensors, meta = reference("adapters_run.safetensors")
    te, unet = float(meta["te_strength"]), float(meta["unet_strength"])
    result = pipe.generate(
        **run_kwargs(meta, "prompt_ti"), loras=[(LORA, te, unet)], embeddings=[sdrs.Embedding(TI)]
    )
    want = tensors["latents_lora_ti"]
    err = np.abs(result.latents - want).max() / np.abs(want).max()
    assert err <= 3e-5, err
    assert "lora kohya_locon: " in result.adapter_report
    assert result.unapplied_keys == {"kohya_locon": []}
    assert "Lora hashes: " in result.infotexts[0]


def test_objects_paths_and_tags_give_the_same_image(pipe: sdrs.Pipeline) -> None:
    lora = sdrs.Lora(LORA)
    assert lora.name == "kohya_locon" and len(lora.short_hash) == 12
    assert lora.modules and all(alg for _, alg in lora.modules)
    hn = sdrs.Hypernetwork(HN)
    assert hn.name == "hn-relu" and hn.widths
    base = dict(prompt="a lighthouse at dusk", width=64, height=64, steps=3, seed=5)
    by_object = pipe.generate(**base, loras=[(lora, 0.7)], hypernetworks=[(hn, 0.5)])
    by_path = pipe.generate(**base, loras=[(str(LORA), 0.7, 0.7)], hypernetworks=[(HN, 0.5)])
    by_tags = pipe.generate(
        **{**base, "prompt": "a lighthouse at dusk <lora:kohya_locon:0.7> <hypernet:hn-relu:0.5>"},
        lora_dir=LORA.parent,
        hypernetwork_dir=[HN.parent],
    )
    plain = pipe.generate(**base)
    assert np.array_equal(by_object.latents, by_path.latents)
    assert np.array_equal(by_object.latents, by_tags.latents)
    assert not np.array_equal(by_object.latents, plain.latents)
    assert plain.adapter_report == "" and plain.unapplied_keys == {}
    assert plain.skipped_embeddings == {}


def test_embedding_of_another_family_is_reported(pipe: sdrs.Pipeline) -> None:
    sdxl = sdrs.Embedding(FIXTURES / "ti" / "ti-sdxl.safetensors")
    result = pipe.generate(
        "ti-sdxl and ti-alpha", width=64, height=64, steps=1, embeddings=[sdxl, TI]
    )
    assert list(result.skipped_embeddings) == ["ti-sdxl"]
    assert "another model family" in result.skipped_embeddings["ti-sdxl"]
    assert "embedding skipped: `ti-sdxl`" in result.adapter_report


def test_prompt_options(pipe: sdrs.Pipeline) -> None:
    base = dict(width=64, height=64, steps=2, seed=3)
    a = pipe.generate("a (red:1.5) fox", **base)
    b = pipe.generate("a (red:1.5) fox", prompt_syntax="plain", **base)
    c = pipe.generate("a (red:1.5) fox", emphasis="ignore", **base)
    assert not np.array_equal(a.latents, b.latents)
    assert not np.array_equal(a.latents, c.latents)
    assert "Prompt syntax: plain" in b.infotexts[0]
    long_prompt = "a red fox in deep snow, " * 16
    split = pipe.generate(long_prompt, **base)
    padded = pipe.generate(long_prompt, pad_cond_uncond=True, **base)
    assert not np.array_equal(split.latents, padded.latents)
    assert "Pad conds: True" in padded.infotexts[0]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"loras": [(LORA, math.nan)]}, sdrs.InvalidArgumentError, "finite"),
        ({"loras": [(LORA, 1.0, 1.0, 1.0)]}, sdrs.InvalidArgumentError, "loras"),
        ({"loras": [42]}, sdrs.InvalidArgumentError, "loras"),
        ({"loras": [FIXTURES / "missing.safetensors"]}, FileNotFoundError, "missing.safetensors"),
        ({"hypernetworks": [(HN, "strong")]}, sdrs.InvalidArgumentError, "numbers"),
        ({"embeddings": [3.5]}, sdrs.InvalidArgumentError, "embeddings"),
        ({"prompt_syntax": "comfy"}, sdrs.InvalidArgumentError, "prompt_syntax"),
        ({"emphasis": "loud"}, sdrs.InvalidArgumentError, "emphasis"),
        ({"prompt": "a cat <lora:nowhere:1>"}, sdrs.InvalidArgumentError, "<lora:nowhere>"),
        ({"lora_dir": 7}, sdrs.InvalidArgumentError, "lora_dir"),
    ],
)
def test_adapter_argument_errors(pipe: sdrs.Pipeline, kwargs: dict, exc: type, match: str) -> None:
    args = {"prompt": "a cat", "width": 64, "height": 64, "steps": 1, **kwargs}
    with pytest.raises(exc, match=match):
        pipe.generate(**args)


def test_adapter_files_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        sdrs.Lora(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(sdrs.ModelLoadError):
        sdrs.Hypernetwork(bad)
    with pytest.raises(sdrs.SdrsError):
        sdrs.Embedding(bad)
