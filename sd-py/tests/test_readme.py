"""The README's Python snippet runs as written."""

from __future__ import annotations

import re

import pytest
from conftest import FIXTURES


def test_readme_snippet_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    root = FIXTURES.parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(root)
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "step 20/20" in out
    assert "Seed: 42" in out
    assert "(1, 4, 8, 8)" in out
