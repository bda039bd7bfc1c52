#!/usr/bin/env bash
# Builds the Python package `sdrs` (sd-py) into a virtual environment and runs its tests:
# the stub drift check (mypy.stubtest) and pytest.
# Usage: bash tools/test_python.sh     (needs python3 >= 3.10 with venv, and access to PyPI)
# The venv lives in target/py-venv (override with SDRS_PY_VENV) and is reused between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SDRS_PY_VENV:-target/py-venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# Pinned, so that a fresh machine tests against the same versions.
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "maturin==1.9.6" "pytest==8.4.2" "numpy==2.3.4" "pillow==11.3.0" "safetensors==0.6.2" \
  "tqdm==4.67.1" "mypy==1.18.2"

# The dev profile (optimised dependencies) keeps the build short; the wheel a user gets from
# `pip install ./sd-py` is built in release mode.
(cd sd-py && VIRTUAL_ENV="$PWD/../$venv" PATH="$PWD/../$venv/bin:$PATH" \
  "../$venv/bin/maturin" develop --quiet)

echo "== stub drift check (sdrs/_sdrs.pyi against the built module)"
(cd sd-py && "../$venv/bin/python" -m mypy.stubtest sdrs._sdrs)

echo "== pytest"
(cd sd-py && "../$venv/bin/python" -m pytest -q tests)
