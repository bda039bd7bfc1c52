"""Generation through the Python API matches the diffusers references, in both output modes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import reference, request_kwargs

import sdrs

# Same tolerance as the Rust parity tests: 3e-5 of the reference's largest magnitude.
RTOL_OF_MAX = 3e-5


def assert_latents_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32
    assert got.shape == want.shape
    tol = RTOL_OF_MAX * float(np.abs(want).max())
    worst = float(np.abs(got - want).max())
    assert worst <= tol, f"latents differ by {worst:.3g} (tolerance {tol:.3g})"


def test_txt2img_ddim_matches_reference(pipe: sdrs.Pipeline) -> None:
    tensors, meta = reference("txt2img_ddim.safetensors")
    result = pipe.generate(**request_kwargs(meta))
    assert_latents_close(result.latents, tensors["latents"])
    assert len(result) == len(result.images) == len(result.infotexts) == 1
    image = np.asarray(result.images[0])
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    want = np.round(tensors["image"][0].transpose(1, 2, 0) * 255.0).astype(np.int32)
    assert np.abs(image.astype(np.int32) - want).max() <= 1
    assert "Seed: 1234" in result.infotexts[0]
    assert "Steps: 10" in result.infotexts[0]


def test_pil_images_when_pillow_is_installed(pipe: sdrs.Pipeline) -> None:
    pil = pytest.importorskip("PIL.Image")
    result = pipe.generate("a cat", steps=2, width=64, height=64, seed=1, batch_size=2)
    assert len(result.images) == 2
    assert all(isinstance(im, pil.Image) for im in result.images)
    assert result.images[0].size == (64, 64) and result.images[0].mode == "RGB"
    assert result.latents.shape == (2, 4, 8, 8)
    assert [np.asarray(im).shape for im in result] == [(64, 64, 3)] * 2


def test_numpy_only_without_pillow(pipe: sdrs.Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    tensors, meta = reference("txt2img_ddim.safetensors")
    result = pipe.generate(**request_kwargs(meta))
    image = result.images[0]
    assert isinstance(image, np.ndarray)
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    assert image.flags["C_CONTIGUOUS"]
    assert_latents_close(result.latents, tensors["latents"])


def test_caller_latents_match_reference(pipe: sdrs.Pipeline) -> None:
    tensors, meta = reference("txt2img_latents_in.safetensors")
    result = pipe.generate(**request_kwargs(meta), latents=tensors["init_latents"])
    assert_latents_close(result.latents, tensors["latents"])


@pytest.mark.parametrize("name", ["ddim", "euler-a"])
def test_img2img_matches_reference(pipe: sdrs.Pipeline, fixtures, name: str) -> None:
    tensors, meta = reference(f"img2img_{name}.safetensors")
    kwargs = request_kwargs(meta)
    strength = float(meta["strength"])
    from_path = pipe.generate(**kwargs, init_image=fixtures / "init.png", strength=strength)
    assert_latents_close(from_path.latents, tensors["latents"])
    pil = pytest.importorskip("PIL.Image")
    with pil.open(fixtures / "init.png") as im:
        as_array = np.asarray(im.convert("RGB"))
        from_pil = pipe.generate(**kwargs, init_image=im, strength=strength)
    from_array = pipe.generate(**kwargs, init_image=as_array, strength=strength)
    np.testing.assert_array_equal(from_pil.latents, from_path.latents)
    np.testing.assert_array_equal(from_array.latents, from_path.latents)


def test_seed_none_is_random_and_recorded(pipe: sdrs.Pipeline) -> None:
    a = pipe.generate("x", steps=1, width=64, height=64)
    b = pipe.generate("x", steps=1, width=64, height=64)
    assert "Seed: " in a.infotexts[0]
    assert not np.array_equal(a.latents, b.latents)


def test_module_surface(pipe: sdrs.Pipeline) -> None:
    assert isinstance(sdrs.__version__, str) and sdrs.__version__
    assert "ddim" in sdrs.SCHEDULERS and "pndm" in sdrs.SCHEDULERS
    assert pipe.device == "cpu"
    assert pipe.default_size == (64, 64) or all(s > 0 for s in pipe.default_size)
    assert "Args:" in (sdrs.Pipeline.generate.__doc__ or "")
    assert "Pipeline" in repr(pipe)
