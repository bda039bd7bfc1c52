"""Checkpoint scanning and conversion, as a caller uses them: genuine files are reported and
converted; hostile ones are refused without anything from them running."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import sdrs

from conftest import FIXTURES

GENUINE = FIXTURES / "ckpt" / "pl_train.ckpt"


def hostile_checkpoint(path: Path, canary: Path) -> None:
    """A torch legacy checkpoint whose object is posix.system("touch <canary>")."""
    magic = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."
    protocol = b"\x80\x02M\xe9\x03."
    sys_info = b"\x80\x02}X\x0d\x00\x00\x00little_endian\x88s."
    cmd = f"touch {canary}".encode()
    payload = b"\x80\x02cposix\nsystem\nq\x00X" + struct.pack("<I", len(cmd)) + cmd + b"\x85q\x01Rq\x02."
    path.write_bytes(magic + protocol + sys_info + payload)


def test_genuine_checkpoint_is_loadable() -> None:
    report = sdrs.scan_checkpoint(GENUINE)
    assert report.loadable
    assert report.reason is None
    assert report.format.startswith("torch")
    assert report.tensors, "no tensors listed"
    for name, dtype, shape in report.tensors:
        assert name and dtype and all(d > 0 for d in shape)
    assert ("torch._utils", "_rebuild_tensor_v2") in {(m, n) for m, n, _ in report.globals}
    assert report.refused_globals == []
    assert "global_step" in report.metadata
    text = str(report)
    assert "verdict: LOADABLE" in text and report.format in text
    assert "loadable=True" in repr(report)


def test_hostile_checkpoint_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    bad = tmp_path / "evil.ckpt"
    hostile_checkpoint(bad, canary)
    report = sdrs.scan_checkpoint(bad)
    assert not report.loadable
    assert report.reason is not None and "posix.system" in report.reason
    assert report.tensors == [] and report.globals == []
    refused = {(m, n): why for m, n, _, why in report.refused_globals}
    assert refused.keys() == {("posix", "system")}, report.refused_globals
    assert refused[("posix", "system")] and "not on the allow-list" in refused[("posix", "system")]
    assert "REFUSED" in str(report)
    out = tmp_path / "evil.safetensors"
    with pytest.raises(sdrs.ModelLoadError, match="posix.system"):
        sdrs.convert_checkpoint(bad, out)
    assert not out.exists()
    assert not canary.exists(), "the payload ran"


def test_convert_keeps_names_and_converts_floats(tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    count = sdrs.convert_checkpoint(GENUINE, out, dtype="f16")
    scanned = sdrs.scan_checkpoint(GENUINE)
    assert count == len(scanned.tensors)
    converted = load_file(str(out))
    assert sorted(converted) == sorted(name for name, _, _ in scanned.tensors)
    dtypes = {name: dtype for name, dtype, _ in scanned.tensors}
    for name, array in converted.items():
        if dtypes[name] in ("F32", "F16", "BF16", "F64"):
            assert array.dtype == np.float16, name
    again = sdrs.scan_checkpoint(out)
    assert again.loadable and again.format == "safetensors"
    assert again.metadata.get("global_step") == scanned.metadata["global_step"]


def test_convert_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(sdrs.InvalidArgumentError, match="dtype"):
        sdrs.convert_checkpoint(GENUINE, tmp_path / "x.safetensors", dtype="f8")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        sdrs.convert_checkpoint(tmp_path / "missing.ckpt", tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        sdrs.scan_checkpoint(tmp_path / "missing.ckpt")
