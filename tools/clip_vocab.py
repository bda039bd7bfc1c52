"""Builds the CLIP BPE tokenizer files (vocab.json, merges.txt) used by Stable Diffusion 1.x.

Run: tools/.venv-ref/bin/python tools/clip_vocab.py OUT_DIR   (normally called by make_fixtures.py)

The original CLIP merges list (`bpe_simple_vocab_16e6.txt.gz`) ships inside the
`open_clip_torch` package on PyPI. It is fetched with `pip download --no-deps` (the wheel is
only opened as a zip, never installed) and the vocabulary is derived the way CLIP's simple
tokenizer derives it:

  * the 256 byte-level characters (bytes_to_unicode order),
  * the same 256 characters with the end-of-word marker "</w>",
  * one entry per merge (the two parts concatenated), for the first 48894 merges,
  * "<|startoftext|>" and "<|endoftext|>",

49408 entries in total, identical to the openai/clip-vit-large-patch14 tokenizer files.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import zipfile

OPEN_CLIP_VERSION = "3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48894: the vocabulary size CLIP uses is 49408
VOCAB_SIZE = 49408


def bytes_to_unicode() -> dict[int, str]:
    """Maps every byte to a printable unicode character (GPT-2 / CLIP byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    # Insertion order matters: the vocabulary lists the printable bytes first, then the
    # remapped ones (in byte order), exactly as CLIP's simple tokenizer does.
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def fetch_bpe_gz() -> bytes:
    """Downloads the open_clip_torch wheel (no install) and returns the gzipped merges file."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                f"open_clip_torch=={OPEN_CLIP_VERSION}",
                "-d",
                tmp,
            ],
            check=True,
        )
        wheels = glob.glob(os.path.join(tmp, "open_clip_torch-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one open_clip_torch wheel, found {wheels}")
        with zipfile.ZipFile(wheels[0]) as zf:
            return zf.read(BPE_MEMBER)


def build_vocab(bpe_gz: bytes) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Returns (vocab, merges) derived from the CLIP merges file."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    # The first line is a version header; CLIP uses the next NUM_MERGES lines.
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise RuntimeError("unexpected CLIP merges file layout")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE or len(set(tokens)) != VOCAB_SIZE:
        raise RuntimeError(f"vocabulary has {len(tokens)} entries ({len(set(tokens))} unique)")
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(out_dir: str) -> None:
    """Writes vocab.json and merges.txt (Hugging Face CLIPTokenizer layout) into out_dir."""
    vocab, merges = build_vocab(fetch_bpe_gz())
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: clip_vocab.py OUT_DIR")
    write_tokenizer_files(sys.argv[1])
