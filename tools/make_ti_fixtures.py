"""Writes textual-inversion embedding files for tests/fixtures/tiny-sd, in every file layout
sd-core reads, and the text-encoder hidden states diffusers computes for prompts that use them.

Run from the repository root (after `bash tools/setup_reference_env.sh`):

    tools/.venv-ref/bin/python tools/make_ti_fixtures.py

Writes
    tests/fixtures/ti/*                                 the embedding files (see FILES below)
    tests/fixtures/reference/textual_inversion.safetensors
        vectors_<trigger>   the vectors each file holds, [n, 16] (what a loader must return)
        embeds_<i>          diffusers' prompt embedding of PROMPTS[i], [1, 77, 16]
        input_ids_<i>       the token ids diffusers fed its text encoder for PROMPTS[i] (ids of
                            added tokens are >= 49408, one per vector)
        metadata: prompts (JSON list), files (JSON: file -> {trigger, vectors, sha256_12}),
                  precision, versions

Layouts (sd-core's names; formats.md section 4.2):
    A1111 `.pt` (torch.save of `Embedding.save`'s dict, AUTOMATIC1111
    modules/textual_inversion/textual_inversion.py), the old `ParameterDict` form, diffusers
    `learned_embeds` (.bin and .safetensors, one tensor keyed by its token, 1-D or 2-D), kohya
    `emb_params` (.safetensors and .pt), SDXL `clip_l`/`clip_g`, a PNG with the `sd-ti-embedding`
    text chunk (written the way A1111's image_embedding.py `embedding_to_b64` writes it: base64 of
    JSON, tensors as {"TORCHTENSOR": nested lists}), a PNG with the data drawn into its pixels
    (`insert_image_data_embed`, re-implemented below and checked by reading it back as
    `extract_image_data_embed` does), and a bare tensor saved with torch.save.

How the reference is computed: the tiny model's pipeline is converted to float64, every
embedding is loaded with `pipe.load_textual_inversion` (diffusers registers a multi-vector
embedding `tok` as the added tokens `tok`, `tok_1`, ... and rewrites `tok` in a prompt into
`tok tok_1 ...`), and `pipe.encode_prompt` encodes each prompt. Triggers are chosen so that
diffusers and AUTOMATIC1111 see the same text around them: the A1111-style loader in sd-core
triggers on the file stem (or, for a diffusers file, on the token stored in it, as diffusers does),
so the diffusers token for each file is set to the same word. A1111 then puts an embedding's n
vectors where its trigger's tokens were; diffusers puts its n added tokens there; the text before
and after tokenizes the same, so both sides hold the same vectors at the same positions.

Everything is seeded and single-threaded; running the script twice writes identical files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import StableDiffusionPipeline

torch.set_num_threads(1)
torch.manual_seed(0)  # diffusers draws the resized embedding rows before they are overwritten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
FOLDER = os.path.join(FIX, "tiny-sd")
OUT = os.path.join(FIX, "ti")
REF = os.path.join(FIX, "reference", "textual_inversion.safetensors")

VERSIONS = {
    "torch": torch.__version__,
    "diffusers": diffusers.__version__,
    "transformers": transformers.__version__,
    "numpy": np.__version__,
}

PROMPTS = [
    "a photo of ti-alpha on a sofa",
    "ti-bravo, a painting by <ti-charlie> and ti-echo",
    "<ti-delta> ti-foxtrot in a garden with ti-golf",
    "ti-hotel next to ti-india, ti-alpha at night",
    "ti-bravo ti-bravo ti-delta-like words stay plain",
    "a ti-juliet portrait",
]

g = torch.Generator().manual_seed(4321)


def rnd(*shape):
    # The tiny text encoder's token embeddings are 0.5 * N(0, 1); embeddings get the same scale.
    return 0.5 * torch.randn(*shape, generator=g, dtype=torch.float32)


def sha12(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def a1111_dict(vec, name):
    # AUTOMATIC1111 Embedding.save (textual_inversion.py).
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vec},
        "name": name,
        "step": 1500,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "tiny-sd",
    }


class _TensorJson(json.JSONEncoder):
    # As AUTOMATIC1111 image_embedding.py EmbeddingEncoder: tensors become {"TORCHTENSOR": lists}.
    def default(self, o):
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.cpu().detach().numpy().tolist()}
        return json.JSONEncoder.default(self, o)


def write_png_embedding(path, data):
    # As AUTOMATIC1111 image_embedding.py embedding_to_b64 + PngInfo.add_text("sd-ti-embedding").
    b64 = base64.b64encode(json.dumps(data, cls=_TensorJson).encode())
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", b64)
    pixels = (np.arange(8 * 8 * 3, dtype=np.uint32) * 37 % 251).astype(np.uint8).reshape(8, 8, 3)
    Image.fromarray(pixels, "RGB").save(path, "PNG", pnginfo=info)


def _lcg_block(shape):
    # image_embedding.py lcg(): seed = (1664525 seed + 1013904223) mod 2^32, yields seed % 255.
    seed, out = 0, []
    for _ in range(int(np.prod(shape))):
        seed = (1664525 * seed + 1013904223) % 2**32
        out.append(seed % 255)
    return np.array(out).astype(np.uint8).reshape(shape)


def _xor_block(block):
    return np.bitwise_xor(block.astype(np.uint8), _lcg_block(block.shape) & 0x0F)


def _style_block(block, sequence):
    # image_embedding.py style_block: dots drawn into the high nibbles.
    from PIL import ImageDraw

    im = Image.new("RGB", (block.shape[1], block.shape[0]))
    draw = ImageDraw.Draw(im)
    i = 0
    for x in range(-6, im.size[0], 8):
        for yi, y in enumerate(range(-6, im.size[1], 8)):
            offset = 4 if yi % 2 == 0 else 0
            shade = sequence[i % len(sequence)]
            i += 1
            draw.ellipse((x + offset, y, x + 6 + offset, y + 6), fill=(shade, shade, shade))
    return block ^ (np.array(im).astype(np.uint8) & 0xF0)


def write_pixel_embedding(path, data, picture):
    """As image_embedding.py insert_image_data_embed: zlib(JSON) split into nibbles, drawn in
    blocks left and right of the picture, one black column between each block and the picture."""
    d = 3
    compressed = np.frombuffer(zlib.compress(json.dumps(data, cls=_TensorJson).encode(), level=9), np.uint8).copy()
    high, low = compressed >> 4, compressed & 0x0F
    h = picture.size[1]
    next_size = low.shape[0] + (h - (low.shape[0] % h))
    next_size = next_size + ((h * d) - (next_size % (h * d)))
    low = np.resize(low, next_size).reshape((h, -1, d))
    high = np.resize(high, next_size).reshape((h, -1, d))
    edge = list(data["string_to_param"].values())[0].cpu().detach().numpy().tolist()[0][:1024]
    edge = (np.abs(edge) / np.max(np.abs(edge)) * 255).astype(np.uint8)
    low = _xor_block(_style_block(low, sequence=edge))
    high = _xor_block(_style_block(high, sequence=edge[::-1]))
    im_low, im_high = Image.fromarray(low, mode="RGB"), Image.fromarray(high, mode="RGB")
    canvas = Image.new("RGB", (picture.size[0] + im_low.size[0] + im_high.size[0] + 2, h), (0, 0, 0))
    canvas.paste(im_low, (0, 0))
    canvas.paste(picture, (im_low.size[0] + 1, 0))
    canvas.paste(im_high, (im_low.size[0] + 1 + picture.size[0] + 1, 0))
    canvas.save(path, "PNG")
    # Read it back as image_embedding.py extract_image_data_embed does.
    arr = np.array(Image.open(path).convert("RGB")).astype(np.uint8)
    mask = (arr > 0).all(2)
    m0, m1 = mask.any(0), mask.any(1)
    arr = arr[m1.argmax() : arr.shape[0] - m1[::-1].argmax(), m0.argmax() : arr.shape[1] - m0[::-1].argmax()] & 0x0F
    black = np.where(np.sum(arr, axis=(0, 2)) == 0)[0]
    lower = _xor_block(arr[:, : black.min(), :])
    upper = _xor_block(arr[:, black.max() + 1 :, :])
    back = json.loads(zlib.decompress(((upper << 4) | lower).flatten().tobytes()))
    if back != json.loads(json.dumps(data, cls=_TensorJson)):
        raise RuntimeError(f"{path} does not read back")


def main():
    os.makedirs(OUT, exist_ok=True)
    pipe = StableDiffusionPipeline.from_pretrained(
        FOLDER, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    width = pipe.text_encoder.config.hidden_size

    vec = {
        "ti-alpha": rnd(1, width),
        "ti-bravo": rnd(3, width),
        "<ti-charlie>": rnd(width),  # 1-D, as diffusers' textual_inversion.py saves one vector
        "<ti-delta>": rnd(2, width),
        "ti-echo": rnd(4, width),
        "ti-foxtrot": rnd(2, width),
        "ti-golf": rnd(2, width),
        "ti-hotel": rnd(2, width),
        "ti-india": rnd(3, width),
        "ti-juliet": rnd(2, width),
    }
    files = {}  # file -> (trigger, what diffusers loads, token passed to diffusers)

    def put(fname, trigger, diffusers_source, diffusers_token):
        files[fname] = (trigger, diffusers_source, diffusers_token)

    p = os.path.join(OUT, "ti-alpha.pt")
    torch.save(a1111_dict(vec["ti-alpha"], "ti-alpha"), p)
    put("ti-alpha.pt", "ti-alpha", p, None)  # diffusers takes A1111's `name`

    p = os.path.join(OUT, "ti-bravo.pt")
    # A1111's stored `name` differs from the stem on purpose: A1111 triggers on the stem.
    torch.save(a1111_dict(vec["ti-bravo"], "bravo-as-trained"), p)
    put("ti-bravo.pt", "ti-bravo", p, "ti-bravo")

    p = os.path.join(OUT, "learned_embeds.bin")
    torch.save({"<ti-charlie>": vec["<ti-charlie>"]}, p)
    put("learned_embeds.bin", "<ti-charlie>", p, None)

    p = os.path.join(OUT, "ti-delta.safetensors")
    save_file({"<ti-delta>": vec["<ti-delta>"]}, p)
    put("ti-delta.safetensors", "<ti-delta>", p, None)

    p = os.path.join(OUT, "ti-echo.safetensors")
    save_file({"emb_params": vec["ti-echo"]}, p)
    put("ti-echo.safetensors", "ti-echo", p, "ti-echo")

    p = os.path.join(OUT, "ti-foxtrot.pt")
    torch.save({"emb_params": vec["ti-foxtrot"]}, p)
    put("ti-foxtrot.pt", "ti-foxtrot", p, "ti-foxtrot")

    # The original textual-inversion layout: a pickled ParameterDict and a tensor token id.
    p = os.path.join(OUT, "ti-golf.pt")
    pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec["ti-golf"].clone())})
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": pd, "name": "golf", "step": 7}, p)
    # diffusers' loader refuses the ParameterDict class (weights_only); it gets the same tensor.
    put("ti-golf.pt", "ti-golf", {"ti-golf": vec["ti-golf"]}, "ti-golf")

    p = os.path.join(OUT, "ti-hotel-image.png")
    write_png_embedding(p, a1111_dict(vec["ti-hotel"], "ti-hotel"))
    # A1111 triggers an image embedding on the `name` it stores.
    put("ti-hotel-image.png", "ti-hotel", {"ti-hotel": vec["ti-hotel"]}, "ti-hotel")

    p = os.path.join(OUT, "ti-juliet-pixels.png")
    # A bright picture (no channel of any pixel has a zero low nibble, so no column of it reads
    # as a separator).
    picture = Image.fromarray((np.arange(6 * 10 * 3).reshape(6, 10, 3) * 7 % 200 + 33).astype(np.uint8) | 1, "RGB")
    write_pixel_embedding(p, a1111_dict(vec["ti-juliet"], "ti-juliet"), picture)
    put("ti-juliet-pixels.png", "ti-juliet", {"ti-juliet": vec["ti-juliet"]}, "ti-juliet")

    p = os.path.join(OUT, "raw-tensor.pt")
    torch.save(vec["ti-india"], p)
    put("raw-tensor.pt", "ti-india", p, "ti-india")

    # SDXL: one part per text encoder (widths 16 and 24 stand for 768 and 1280).
    p = os.path.join(OUT, "ti-sdxl.safetensors")
    sdxl_l, sdxl_g = rnd(2, width), rnd(2, 24)
    save_file({"clip_g": sdxl_g, "clip_l": sdxl_l}, p)

    # ---- diffusers reference ----
    pipe.text_encoder.double()
    for fname, (trigger, source, token) in files.items():
        pipe.load_textual_inversion(source, token=token)
    tokenizer = pipe.tokenizer

    tensors = {}
    for trigger, v in vec.items():
        tensors[f"vectors_{trigger}"] = v.reshape(-1, width).clone()
    tensors["vectors_sdxl_clip_l"] = sdxl_l.clone()
    tensors["vectors_sdxl_clip_g"] = sdxl_g.clone()
    with torch.no_grad():
        for i, prompt in enumerate(PROMPTS):
            converted = pipe.maybe_convert_prompt(prompt, tokenizer)
            ids = tokenizer(
                converted, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            ).input_ids
            embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
            tensors[f"embeds_{i}"] = embeds.to(torch.float32)
            tensors[f"input_ids_{i}"] = ids.to(torch.int64)
            if not torch.isfinite(embeds).all():
                raise RuntimeError(f"prompt {i}: non-finite embedding")

    listing = {
        fname: {
            "trigger": trigger,
            "vectors": int(vec[trigger].reshape(-1, width).shape[0]),
            "sha256_12": sha12(os.path.join(OUT, fname)),
        }
        for fname, (trigger, _, _) in files.items()
    }
    listing["ti-sdxl.safetensors"] = {
        "trigger": "ti-sdxl",
        "vectors": 2,
        "sha256_12": sha12(os.path.join(OUT, "ti-sdxl.safetensors")),
    }
    metadata = {
        "prompts": json.dumps(PROMPTS),
        "files": json.dumps(listing, sort_keys=True),
        "precision": "float64 text encoder, stored as float32",
    }
    metadata.update({f"version_{k}": v for k, v in VERSIONS.items()})
    write_bad_files(width)
    write_safetensors(REF, tensors, metadata)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files in {OUT} ({total} bytes), {REF} ({os.path.getsize(REF)} bytes)")


def write_bad_files(width):
    """Files every loader must refuse with a specific error."""
    bad = os.path.join(OUT, "bad")
    os.makedirs(bad, exist_ok=True)
    nan = rnd(2, width)
    nan[1, 3] = float("nan")
    torch.save(a1111_dict(nan, "nan"), os.path.join(bad, "nan.pt"))
    inf = rnd(1, width)
    inf[0, 0] = float("inf")
    save_file({"emb_params": inf}, os.path.join(bad, "inf.safetensors"))
    two = a1111_dict(rnd(1, width), "two")
    two["string_to_param"] = {"*": rnd(1, width), "#": rnd(1, width)}
    torch.save(two, os.path.join(bad, "two-terms.pt"))
    save_file({"<a>": rnd(1, width), "<b>": rnd(1, width)}, os.path.join(bad, "two-keys.safetensors"))
    save_file({"emb_params": torch.zeros(0, width)}, os.path.join(bad, "empty.safetensors"))
    save_file({"emb_params": rnd(76, width)}, os.path.join(bad, "too-many-vectors.safetensors"))
    torch.save({"emb_params": rnd(2, 2, width)}, os.path.join(bad, "three-dims.pt"))
    torch.save({"emb_params": torch.arange(width).reshape(1, width)}, os.path.join(bad, "integers.pt"))
    save_file({"clip_l": rnd(2, width), "clip_g": rnd(3, 24)}, os.path.join(bad, "sdxl-counts.safetensors"))
    torch.save({"step": 5, "name": "x"}, os.path.join(bad, "no-tensor.pt"))


def write_safetensors(path, tensors, metadata):
    """A safetensors file with a byte-for-byte reproducible header (sorted keys)."""
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    offset = 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        data = t.numpy().tobytes()
        header[k] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for b in blobs:
            f.write(b)
    check = load_file(path)
    if set(check) != set(tensors) or any(not torch.equal(check[k], tensors[k]) for k in tensors):
        raise RuntimeError(f"{path} does not read back identically")


if __name__ == "__main__":
    main()
