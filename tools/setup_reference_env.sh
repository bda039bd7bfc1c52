#!/usr/bin/env bash
# Creates the Python reference environment used to generate the test fixtures
# (tests/fixtures/) that the Rust test suite compares against.
#
# Usage: bash tools/setup_reference_env.sh [VENV_DIR]      (default: tools/.venv-ref)
#
# Pinned versions (the fixtures committed under tests/fixtures/ were made with these):
#   torch 2.15.0, diffusers 0.42.1, transformers 5.23.0, safetensors 0.8.0,
#   numpy 2.4.6, pillow 13.0.0, peft 0.21.2 (diffusers' LoRA loader needs it),
#   lark 1.1.2 (the parser A1111 uses for prompt schedules; tools/a1111_prompt_reference.py and
#   tools/make_conditioning_fixtures.py need it) (Python 3.11)
#
# Notes:
# - The only reachable index is PyPI, whose Linux x86_64 torch wheel is the CUDA build.
#   There is no CPU-only torch wheel on PyPI, and the CUDA build refuses to import without
#   its nvidia-* runtime packages (it preloads libcublas etc.), so the full dependency set is
#   installed (several GB of disk). Everything runs on the CPU regardless.
# - ftfy is deliberately NOT installed: transformers' CLIPTokenizer must take its built-in
#   BasicTokenizer text-cleaning path, which is what the Rust tokenizer reproduces.
set -euo pipefail

VENV_DIR="${1:-$(cd "$(dirname "$0")" && pwd)/.venv-ref}"
PYTHON="${PYTHON:-python3}"

TORCH_VERSION=2.15.0
DIFFUSERS_VERSION=0.42.1
TRANSFORMERS_VERSION=5.23.0
SAFETENSORS_VERSION=0.8.0
NUMPY_VERSION=2.4.6
PILLOW_VERSION=13.0.0
PEFT_VERSION=0.21.2
LARK_VERSION=1.1.2

"$PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
"$VENV_DIR/bin/python" -m pip install --quiet \
    "torch==${TORCH_VERSION}" \
    "diffusers==${DIFFUSERS_VERSION}" \
    "transformers==${TRANSFORMERS_VERSION}" \
    "safetensors==${SAFETENSORS_VERSION}" \
    "numpy==${NUMPY_VERSION}" \
    "pillow==${PILLOW_VERSION}" \
    "peft==${PEFT_VERSION}" \
    "lark==${LARK_VERSION}"

if "$VENV_DIR/bin/python" -c "import ftfy" 2>/dev/null; then
    echo "error: ftfy got installed into $VENV_DIR; remove it (pip uninstall ftfy)" >&2
    exit 1
fi

"$VENV_DIR/bin/python" - <<'PY'
import diffusers, lark, numpy, peft, PIL, safetensors, torch, transformers
x = torch.randn(4, 4, generator=torch.Generator("cpu").manual_seed(0))
assert torch.isfinite(x @ x.T).all()
print("torch", torch.__version__, "| diffusers", diffusers.__version__,
      "| transformers", transformers.__version__, "| safetensors", safetensors.__version__,
      "| numpy", numpy.__version__, "| pillow", PIL.__version__, "| peft", peft.__version__,
      "| lark", lark.__version__)
PY
echo "reference environment ready: $VENV_DIR"
