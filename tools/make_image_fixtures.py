#!/usr/bin/env python3
"""Reference images for sd-core's `image` module, produced with Pillow and numpy.

Run from the repository root:

    tools/.venv-ref/bin/python tools/make_image_fixtures.py

(any Python with `pillow` and `numpy` works). Writes small files under
`tests/fixtures/reference/images/` (total well below 200 KB):

* `resize/src_*.png` and `resize/<src>_to_<W>x<H>.png`: `Image.resize((W, H), Image.LANCZOS)`
  of RGB sources, the exact call diffusers' `VaeImageProcessor.resize` makes for PIL images;
* `convert/<name>.png` (PNG in every colour type / bit depth, written by a minimal encoder here so
  that modes Pillow cannot write are covered too) and `convert/<name>.rgb.png`, the result of
  Pillow's `Image.open(path).convert("RGB")`;
* `convert/<name>.jpg` and `.rgb.png`: JPEG files and Pillow's decode of them;
* `text/*.png`: PNGs whose `parameters` text Pillow's `PngInfo.add_text` wrote (tEXt, iTXt, zTXt);
* `postprocess.json`: float32 inputs in [-1, 1] and the bytes diffusers' postprocess gives
  (`((x / 2 + 0.5).clip(0, 1) * 255).round().astype("uint8")`, numpy round-half-to-even).
"""

import json
import os
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

ROOT = os.path.join("tests", "fixtures", "reference", "images")


def out(*parts):
    path = os.path.join(ROOT, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def raw_png(path, width, height, color_type, bit_depth, rows, plte=None, trns=None):
    """Writes a PNG from already packed scanlines (bytes per row, big-endian samples)."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if plte is not None:
        data += chunk(b"PLTE", plte)
    if trns is not None:
        data += chunk(b"tRNS", trns)
    data += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def pack_bits(values, bits):
    """Packs small integers MSB-first into bytes, as PNG does for sub-byte depths."""
    out_bytes = bytearray()
    acc, n = 0, 0
    for v in values:
        acc = (acc << bits) | int(v)
        n += bits
        if n == 8:
            out_bytes.append(acc)
            acc, n = 0, 0
    if n:
        out_bytes.append(acc << (8 - n))
    return bytes(out_bytes)


def make_resize(rng):
    noise = rng.integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack(
        [xx * 4, yy * 5, ((xx + yy) * 2) % 256], axis=-1
    ).astype(np.int32) + rng.integers(-12, 13, size=(48, 64, 3))
    smooth = smooth.clip(0, 255).astype(np.uint8)
    checker = (((np.indices((10, 12)).sum(axis=0)) % 2) * 255).astype(np.uint8)
    checker = np.stack([checker, 255 - checker, checker], axis=-1)
    sources = {
        "noise": (noise, [(64, 40), (50, 50), (41, 29), (16, 9), (5, 3), (1, 1), (20, 60), (37, 23)]),
        "smooth": (smooth, [(32, 24), (24, 17), (7, 5), (128, 96), (64, 13)]),
        "checker": (checker, [(50, 37), (7, 7), (3, 11)]),
    }
    for name, (arr, sizes) in sources.items():
        src = Image.fromarray(arr, "RGB")
        src.save(out("resize", f"src_{name}.png"))
        for w, h in sizes:
            src.resize((w, h), resample=Image.LANCZOS).save(out("resize", f"{name}_to_{w}x{h}.png"))


def make_convert(rng):
    w, h = 7, 5
    cases = {}
    g8 = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    cases["gray8"] = (0, 8, [bytes(r) for r in g8], None, None)
    g16 = rng.integers(0, 65536, size=(h, w)).astype(">u2")
    g16[0, :4] = [0, 200, 255, 256]  # values around the 8-bit boundary
    cases["gray16"] = (0, 16, [r.tobytes() for r in g16], None, None)
    for bits in (1, 2, 4):
        g = rng.integers(0, 1 << bits, size=(h, w))
        cases[f"gray{bits}"] = (0, bits, [pack_bits(r, bits) for r in g], None, None)
    rgb8 = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    cases["rgb8"] = (2, 8, [r.tobytes() for r in rgb8], None, None)
    rgb16 = rng.integers(0, 65536, size=(h, w, 3)).astype(">u2")
    cases["rgb16"] = (2, 16, [r.tobytes() for r in rgb16], None, None)
    la8 = rng.integers(0, 256, size=(h, w, 2), dtype=np.uint8)
    cases["graya8"] = (4, 8, [r.tobytes() for r in la8], None, None)
    la16 = rng.integers(0, 65536, size=(h, w, 2)).astype(">u2")
    cases["graya16"] = (4, 16, [r.tobytes() for r in la16], None, None)
    rgba8 = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
    cases["rgba8"] = (6, 8, [r.tobytes() for r in rgba8], None, None)
    rgba16 = rng.integers(0, 65536, size=(h, w, 4)).astype(">u2")
    cases["rgba16"] = (6, 16, [r.tobytes() for r in rgba16], None, None)
    plte = rng.integers(0, 256, size=(16, 3), dtype=np.uint8).tobytes()
    idx8 = rng.integers(0, 16, size=(h, w), dtype=np.uint8)
    cases["palette8"] = (3, 8, [bytes(r) for r in idx8], plte, None)
    cases["palette8_trns"] = (3, 8, [bytes(r) for r in idx8], plte, bytes([0, 128, 255, 7]))
    idx4 = rng.integers(0, 16, size=(h, w))
    cases["palette4"] = (3, 4, [pack_bits(r, 4) for r in idx4], plte, None)
    cases["rgb8_trns"] = (2, 8, [r.tobytes() for r in rgb8], None, struct.pack(">HHH", *(int(c) for c in rgb8[0, 0])))
    for name, (ct, bd, rows, pl, tr) in cases.items():
        path = out("convert", f"{name}.png")
        raw_png(path, w, h, ct, bd, rows, pl, tr)
        with Image.open(path) as im:
            im.convert("RGB").save(out("convert", f"{name}.rgb.png"))

    yy, xx = np.mgrid[0:21, 0:30]
    photo = np.stack([xx * 8, yy * 12, (xx * yy) % 256], axis=-1).clip(0, 255).astype(np.uint8)
    jpegs = {
        "jpeg420": dict(quality=90, subsampling=2),
        "jpeg444": dict(quality=95, subsampling=0),
    }
    for name, kw in jpegs.items():
        path = out("convert", f"{name}.jpg")
        Image.fromarray(photo, "RGB").save(path, **kw)
        with Image.open(path) as im:
            im.convert("RGB").save(out("convert", f"{name}.rgb.png"))
    path = out("convert", "jpeg_gray.jpg")
    Image.fromarray(photo[..., 0], "L").save(path, quality=90)
    with Image.open(path) as im:
        im.convert("RGB").save(out("convert", "jpeg_gray.rgb.png"))


def make_text():
    img = Image.new("RGB", (2, 2), (10, 20, 30))
    texts = {
        "latin1": "a cat, <lora:x:0.5>\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Lora hashes: \"x: 0123456789ab\"",
        "unicode": "猫, café ☕\nSteps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 2, Size: 64x64",
    }
    for name, text in texts.items():
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        img.save(out("text", f"{name}.png"), pnginfo=info)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", texts["latin1"], zip=True)
    info.add_text("Comment", "second entry")
    img.save(out("text", "ztxt.png"), pnginfo=info)


def make_postprocess(rng):
    x = rng.uniform(-1.1, 1.1, size=200).astype(np.float32)
    # Inputs whose scaled value lands on (or next to) a .5 boundary exercise the rounding rule.
    k = np.arange(0, 255, 17, dtype=np.float32)
    x = np.concatenate([x, ((k + 0.5) / 255 - 0.5) * 2, np.array([-1, 0, 1, -2, 2], dtype=np.float32)])
    x = x.astype(np.float32)
    v = np.clip(x / np.float32(2) + np.float32(0.5), 0, 1).astype(np.float32)
    y = (v * np.float32(255)).round().astype(np.uint8)
    with open(out("postprocess.json"), "w") as f:
        json.dump({"x": [float(a) for a in x], "u8": [int(a) for a in y]}, f)


def main():
    rng = np.random.default_rng(20240611)
    make_resize(rng)
    make_convert(rng)
    make_text()
    make_postprocess(rng)


if __name__ == "__main__":
    main()
