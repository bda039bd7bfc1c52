"""Exception classes and messages, as a caller catches them."""

from __future__ import annotations

import numpy as np
import pytest

import sdrs


def test_hierarchy() -> None:
    for cls in (sdrs.ModelLoadError, sdrs.InvalidArgumentError, sdrs.DeviceError, sdrs.CancelledError):
        assert issubclass(cls, sdrs.SdrsError)
        assert cls.__module__ == "sdrs"
    assert issubclass(sdrs.SdrsError, Exception)
    assert issubclass(sdrs.InvalidArgumentError, ValueError)


def test_missing_file_is_file_not_found(tmp_path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        sdrs.Pipeline.from_file(missing)


def test_malformed_model_is_model_load_error(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(sdrs.ModelLoadError):
        sdrs.Pipeline.from_file(bad)


def test_bad_device_name() -> None:
    with pytest.raises(sdrs.InvalidArgumentError, match="device"):
        sdrs.Pipeline.from_file("whatever", device="tpu")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"width": 65}, "width"),
        ({"steps": 0}, "steps"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"batch_size": 0}, "batch_size"),
        ({"scheduler": "heun"}, "scheduler"),
        ({"clip_skip": 0}, "clip_skip"),
    ],
)
def test_invalid_arguments_name_the_parameter(pipe: sdrs.Pipeline, kwargs: dict, param: str) -> None:
    args = {"steps": 1, "width": 64, "height": 64, **kwargs}
    with pytest.raises(sdrs.InvalidArgumentError, match=f"`{param}`") as info:
        pipe.generate("x", **args)
    assert isinstance(info.value, ValueError)


def test_invalid_latents(pipe: sdrs.Pipeline) -> None:
    with pytest.raises(sdrs.InvalidArgumentError, match="latents"):
        pipe.generate("x", steps=1, width=64, height=64, latents=np.zeros((1, 4, 8, 8), np.float64))
    with pytest.raises(sdrs.InvalidArgumentError, match="latents"):
        pipe.generate("x", steps=1, width=64, height=64, latents=np.zeros((4, 8, 8), np.float32))
    strided = np.zeros((1, 4, 8, 16), np.float32)[..., ::2]
    with pytest.raises(sdrs.InvalidArgumentError, match="contiguous"):
        pipe.generate("x", steps=1, width=64, height=64, latents=strided)


def test_invalid_init_image(pipe: sdrs.Pipeline) -> None:
    with pytest.raises(sdrs.InvalidArgumentError, match="init_image"):
        pipe.generate("x", steps=1, width=64, height=64, init_image=np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(sdrs.InvalidArgumentError, match="init_image"):
        pipe.generate("x", steps=1, width=64, height=64, init_image=np.zeros((64, 64, 3), np.float32))
    with pytest.raises(sdrs.InvalidArgumentError, match="strength"):
        pipe.generate(
            "x", steps=2, width=64, height=64, init_image=np.zeros((64, 64, 3), np.uint8), strength=1.5
        )


def test_unreadable_model_is_permission_error(tmp_path) -> None:
    import os

    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root reads any file")
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(b"")
    locked.chmod(0)
    with pytest.raises(PermissionError, match="locked.safetensors"):
        sdrs.Pipeline.from_file(locked)


def test_unavailable_device_is_device_error(fixtures) -> None:
    # The wheel is built without sd-core's `cuda` feature unless asked (maturin --features cuda).
    try:
        pipe = sdrs.Pipeline.from_file(fixtures / "tiny-sd", device="cuda:7")
    except sdrs.DeviceError as e:
        assert "cuda:7" in str(e)
    else:
        pytest.skip(f"a CUDA build with a device cuda:7 ({pipe.device})")
