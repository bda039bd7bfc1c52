"""Reference streams of PyTorch's seeded CPU generator, for the `noise` module's tests.

Run from the repository root:

    tools/.venv-ref/bin/python tools/make_randn_fixtures.py

Writes tests/fixtures/reference/randn.safetensors. Every case starts from
`torch.Generator("cpu").manual_seed(seed)` and makes one or more successive calls on that one
generator (`torch.randn(count, dtype=torch.float32)` or `torch.rand(count)`). The safetensors
metadata key "cases" holds a JSON list of cases:

    {"name": str, "seed": int, "calls": [call, ...]}

and each call is

    {"op": "randn" | "rand", "count": int, "tensor": str, "stored": "full" | "head_tail",
     "bits_sum": int, "sum": float}

`tensor` names the stored float32 values: all `count` of them ("full"), or for large calls the
first HEAD_TAIL and last HEAD_TAIL concatenated ("head_tail"). `bits_sum` is the sum of the
IEEE-754 bit patterns of all `count` values as unsigned 32-bit integers (a bit-exact checksum
of the whole output) and `sum` their float64 sum. Metadata "torch_version" and
"cpu_capability" record where the values came from; the vectorised path (counts >= 16) is the
x86-64 AVX2 kernel, also used on AVX-512 machines.
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

OUT = Path("tests/fixtures/reference/randn.safetensors")
HEAD_TAIL = 128
FULL_LIMIT = 1024

SEEDS = [0, 1, 42, 1234567890, 2**32 + 5, 2**63 - 1, 2**64 - 1]
COUNTS = [1, 2, 7, 15, 16, 17, 31, 32, 100, 256, 2 * 4 * 8 * 8, 4 * 64 * 64]
SEQUENCES = [
    [("randn", 5), ("randn", 16), ("randn", 3), ("randn", 33)],
    [("randn", 1), ("randn", 1), ("randn", 1), ("randn", 17), ("randn", 2)],
    [("randn", 40), ("randn", 7), ("randn", 7), ("randn", 15), ("randn", 16)],
    [("randn", 3), ("rand", 5), ("randn", 3), ("rand", 20), ("randn", 18)],
    [("randn", 2 * 4 * 64 * 64), ("randn", 9), ("randn", 2 * 4 * 64 * 64)],
    # Crosses twister state refills (624 words) at odd offsets.
    [("randn", 700), ("randn", 11), ("randn", 623), ("rand", 1), ("randn", 1250)],
]


def main() -> None:
    tensors = {}
    cases = []

    def run(name, seed, calls):
        g = torch.Generator("cpu").manual_seed(seed)
        record = []
        for i, (op, count) in enumerate(calls):
            fn = torch.randn if op == "randn" else torch.rand
            values = fn(count, generator=g, dtype=torch.float32).numpy()
            key = f"{name}.{i}"
            if count <= FULL_LIMIT:
                tensors[key] = values.copy()
                stored = "full"
            else:
                tensors[key] = np.concatenate([values[:HEAD_TAIL], values[-HEAD_TAIL:]])
                stored = "head_tail"
            record.append({
                "op": op,
                "count": count,
                "tensor": key,
                "stored": stored,
                "bits_sum": int(values.view(np.uint32).astype(np.uint64).sum()),
                "sum": float(values.astype(np.float64).sum()),
            })
        cases.append({"name": name, "seed": seed, "calls": record})

    for seed in SEEDS:
        for count in COUNTS:
            run(f"s{seed}_n{count}", seed, [("randn", count)])
        run(f"s{seed}_rand", seed, [("rand", 1), ("rand", 16), ("rand", 37)])
    for i, calls in enumerate(SEQUENCES):
        run(f"seq{i}", [42, 0, 1234567890, 7, 2**63 - 1, 99][i], calls)

    metadata = {
        "cases": json.dumps(cases),
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
