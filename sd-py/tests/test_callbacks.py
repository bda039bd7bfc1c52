"""Progress callbacks: step reporting, cancelling, exceptions and Ctrl-C."""

from __future__ import annotations

import _thread

import pytest

import sdrs

SMALL = {"width": 64, "height": 64, "seed": 3, "scheduler": "ddim"}


def test_callback_sees_every_step(pipe: sdrs.Pipeline) -> None:
    seen: list[tuple[int, int]] = []
    pipe.generate("x", steps=4, callback=lambda s, t: seen.append((s, t)), **SMALL)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_returning_false_cancels(pipe: sdrs.Pipeline) -> None:
    seen: list[int] = []

    def stop_at_two(step: int, total: int) -> bool:
        seen.append(step)
        return step < 2

    with pytest.raises(sdrs.CancelledError, match="cancelled"):
        pipe.generate("x", steps=5, callback=stop_at_two, **SMALL)
    assert seen == [1, 2]


def test_exception_in_callback_propagates_unchanged(pipe: sdrs.Pipeline) -> None:
    class Boom(Exception):
        pass

    def explode(step: int, total: int) -> None:
        raise Boom(f"at {step}/{total}")

    with pytest.raises(Boom, match="at 1/3"):
        pipe.generate("x", steps=3, callback=explode, **SMALL)


def test_ctrl_c_interrupts(pipe: sdrs.Pipeline) -> None:
    seen: list[int] = []

    def interrupt(step: int, total: int) -> None:
        seen.append(step)
        if step == 1:
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        pipe.generate("x", steps=5, callback=interrupt, **SMALL)
    assert seen == [1]


def test_progress_bar(pipe: sdrs.Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    pipe.generate("x", steps=3, progress=True, **SMALL)
    assert "3/3" in capsys.readouterr().err
