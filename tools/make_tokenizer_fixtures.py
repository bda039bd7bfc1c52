"""Writes the reference token ids for the CLIP tokenizer tests (`sd-core/tests/tokenizer.rs`).

There are two references, one per text clean-up that sd-core reproduces (`TextCleanup` in sd-core):

* transformers 5's `CLIPTokenizer` (backed by the `tokenizers` library; what diffusers loads with transformers 5),
  written to tests/fixtures/reference/tokenizer_ids_v5.json. Run from the repository root with the reference
  environment:

      tools/.venv-ref/bin/python tools/make_tokenizer_fixtures.py

  The tokenizer is loaded exactly as diffusers loads it, `CLIPTokenizer.from_pretrained(
  "tests/fixtures/tiny-sd/tokenizer")`, after checking that its vocabulary and merges are the ones sd-core embeds.

* transformers 4's Python `CLIPTokenizer` without `ftfy` (its `BasicTokenizer` clean-up, as AUTOMATIC1111 uses it),
  written to tests/fixtures/reference/tokenizer_ids.json. transformers 5 no longer has that class, so run the same
  script in a small environment with transformers 4.x:

      python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install "transformers<5"
      /tmp/tokvenv/bin/python tools/make_tokenizer_fixtures.py

  The vocabulary is rebuilt from the same `bpe_simple_vocab_16e6.txt.gz` that sd-core embeds, exactly as CLIP
  derives it, and written as a diffusers-style `vocab.json` + `merges.txt` pair into a temporary directory. If
  `ftfy` happens to be installed, the tokenizer is switched back to its built-in `BasicTokenizer` clean-up, which
  is the behaviour sd-core reproduces.

The script picks the reference from the installed transformers version. Both files hold the same prompts; for each
one they store the ids without special tokens and untruncated (`tokenizer(text, add_special_tokens=False).input_ids`)
and the 77 ids an SD 1.x pipeline feeds the text encoder
(`tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids`).
"""

import gzip
import json
import os
import sys
import tempfile
import unicodedata

import transformers
from transformers import CLIPTokenizer

V5 = int(transformers.__version__.split(".")[0]) >= 5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BPE_GZ = os.path.join(ROOT, "sd-core", "data", "bpe_simple_vocab_16e6.txt.gz")
TINY_SD_TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tiny-sd", "tokenizer")
OUT = os.path.join(
    ROOT, "tests", "fixtures", "reference", "tokenizer_ids_v5.json" if V5 else "tokenizer_ids.json"
)
MAX_LEN = 77


def bytes_to_unicode():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, [chr(c) for c in chars]))


def write_tokenizer_files(directory):
    """The vocabulary and merges exactly as CLIP's simple_tokenizer derives them from the gzip file."""
    with gzip.open(BPE_GZ, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    vocab_path = os.path.join(directory, "vocab.json")
    merges_path = os.path.join(directory, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return vocab_path, merges_path


LONG_A = ", ".join(
    [
        "masterpiece",
        "best quality",
        "ultra-detailed",
        "(photorealistic:1.4)",
        "1girl",
        "solo",
        "long hair",
        "looking at viewer",
        "smile",
        "blue eyes",
        "blonde hair",
        "dress",
        "outdoors",
        "sky",
        "day",
        "cloud",
        "tree",
        "blue sky",
        "cherry blossoms",
        "wind",
        "petals",
        "depth of field",
        "bokeh",
        "cinematic lighting",
        "8k uhd",
        "dslr",
        "soft lighting",
        "high quality",
        "film grain",
        "Fujifilm XT3",
    ]
)
LONG_B = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
LONG_C = "A photograph of an astronaut riding a horse on the moon, " * 9 + "BREAK " + "extremely detailed " * 6

PROMPTS = [
    # plain English
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT Riding A Horse",
    "portrait of a cat, oil painting, trending on artstation",
    "hello world",
    "HELLO",
    "The Quick Brown Fox Jumps Over The Lazy Dog.",
    "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "abababababababababab",
    "xyzzy qwfp zxqj",
    # empty and whitespace
    "",
    " ",
    "     ",
    "\t\n\r",
    "  leading and trailing spaces  ",
    "tabs\tbetween\twords",
    "new\nlines\n\nhere",
    "carriage\r\nreturn",
    "non\u00a0breaking\u00a0space",
    "ideographic\u3000space and em\u2003space and thin\u2009space",
    "zero\u200bwidth\u200cnon\u200djoiner",
    "line\u2028separator\u2029paragraph",
    "vertical\x0btab and form\x0cfeed",
    "\ufeffbyte order mark",
    "soft\u00adhyphen",
    # control characters and invalid replacement char
    "null\x00char",
    "bell\x07 and escape\x1b[31m codes",
    "delete\x7f char and \x85 next line",
    "replacement \ufffd char",
    "private use \ue000\uf8ff area",
    "unit\x1fseparator\x1crecord",
    # apostrophes and contractions
    "it's a dog's life, isn't it? we're here, they've gone, I'm fine, you'll see, he'd know",
    "IT'S WE'RE THEY'VE I'M YOU'LL HE'D DON'T",
    "rock 'n' roll 'quoted' ''double'' '",
    "'s't're've'm'll'd",
    "it\u2019s curly apostrophe",
    "\u201csmart quotes\u201d and \u2018single\u2019",
    # digits and decimals
    "1girl, 2boys, 3 cats",
    "0123456789",
    "3.14159 2.71828 -1.5 +2e10",
    "1,000,000 and 1.000.000",
    "1920x1080 4k 8K 16:9",
    "year 2023",
    "\u0661\u0662\u0663 arabic-indic digits, \u00bd \u2153 \u00b2 \u2460 \u2167 fractions and numbers",
    # punctuation runs
    "!!!???...",
    "wow!!! really??? ok...",
    "a-b_c/d\\e|f@g#h$i%j^k&l*m",
    "~`<>{}[]()",
    "--- === +++ ***",
    "hello,world;foo:bar",
    "\u2014em dash\u2013en dash\u2026ellipsis",
    "\u00bfqu\u00e9? \u00a1s\u00ed!",
    "<|startoftext|>",
    "a <|endoftext|> b",
    "<|endoftext|><|endoftext|>",
    "<|ENDOFTEXT|> upper special",
    "x<|startoftext|>y",
    "!<|endoftext|>",
    "<|endof\x00text|>",
    # accents
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade",
    "cafe\u0301 decomposed accent",
    "CAF\u00c9 \u00dcBER \u00c5NGSTR\u00d6M",
    "\u00c5ngstr\u00f6m \u212b sign",
    "stra\u00dfe STRASSE \u1e9e",
    "\u0130stanbul \u0131 dotless",
    "\u03a3\u0399\u03a3\u03a5\u03a6\u039f\u03a3 \u03bf\u03b4\u03cc\u03c2 final sigma",
    "\u1f00\u03bb\u03c6\u03b1 Greek polytonic",
    "Z\u0151l\u0151 Kov\u00e1cs, \u0141\u00f3d\u017a, \u010cesk\u00fd Krumlov",
    "\ufb01 ligature and \u017f long s 'ſ",
    "\u2160\u2161\u2162 roman numerals",
    "\uff21\uff22\uff23 fullwidth \uff11\uff12\uff13",
    # scripts
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041a\u041e\u0428\u041a\u0410",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0627\u0644\u0633\u0651\u064e\u0644\u0627\u0645\u064f \u0639\u064e\u0644\u064e\u064a\u0652\u0643\u064f\u0645\u0652",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01",
    "\u4f60\u597d\u4e16\u754c",
    "\u4e00\u53ea\u732b\u5728\u8349\u5730\u4e0a, a cat on grass",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c \u30ab\u30bf\u30ab\u30ca",
    "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4",
    "\uf900\uf901 compatibility ideographs \u3400\u4db5 ext A \U00020000 ext B",
    "mixed\u6f22\u5b57text",
    # emoji
    "\U0001f600 smile",
    "\U0001f525\U0001f525\U0001f525 fire",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "\U0001f44d\U0001f3fd thumbs up medium skin",
    "\U0001f3f3\ufe0f\u200d\U0001f308 rainbow flag",
    "\U0001f1ef\U0001f1f5 flag \u2764\ufe0f heart",
    "\U0001f469\U0001f3fe\u200d\U0001f4bb technologist",
    "cat\U0001f431dog\U0001f436",
    "\u2600\u2601\u2602 \u2605\u2606 \u266b symbols",
    "\u00a9 \u00ae \u2122 \u00b0C \u20ac100 \u00a35 \u00a5",
    # A1111 prompt syntax
    "(masterpiece:1.2), (best quality), [worse], ((very detailed)), (((extreme)))",
    "a (red:1.5) car BREAK a (blue:0.8) house",
    "<lora:add_detail:0.7>, <hypernet:anime:1>, 1girl",
    "[cat:dog:0.5] in a [field|forest]",
    "\\(escaped parens\\) and \\[brackets\\]",
    "embedding:easynegative, lowres, bad anatomy, bad hands, text, error",
    "(worst quality, low quality:1.4), (monochrome:1.1), nsfw",
    "a photo of sks dog, <lora:sks_v2:0.85>",
    # urls and code-like text
    "https://example.com/path?query=1&other=two#frag",
    "user@example.org www.test.co.uk",
    "C:\\Users\\name\\file.png",
    "snake_case_name camelCaseName kebab-case-name",
    "#hashtag @mention $100 50%",
    # long prompts
    LONG_A,
    LONG_B,
    LONG_C,
    "\U0001f600" * 60,
    "\u4f60\u597d" * 50,
    "word " * 74 + "end",
    "word " * 75,
    "word " * 76,
    # cases that separate the transformers 5 pipeline from the transformers 4 slow tokenizer
    "<|STARTOFTEXT|> a cat",
    "<|StartOfText|>x<|startofTEXT|>",
    "<|EndOfText|>",
    "a<|ENDOFTEXT|>b",
    "!<|ENDOFTEXT|>! and !<|endoftext|>!",
    "<|startoftext|>\u0338 <|endoftext|>\u0338 composing after a special token",
    "\u03a3\u039f\u03a6\u039f\u03a3 \u03a3 A\u03a3 \u03a3. \u03c3\u03a3\u03c3",
    "\u0130I\u0131 \u0130stanbul",
    "x\u200dy\u200cz\u2060w",
    "\x00\x01\x02 controls \x1c\x1d\x1e\x1f",
    "tab\x0bvt\x0cff end",
    "\u00ad\u061c\u200e\u200f\u2066format\u2069 chars",
    "\u6f22\u5b57\u304b\u306a\u4ea4\u3058\u308a\u6587",
    "\U0002a700\U0002b740 ext C D \U00030000 ext G",
    "\ue000 private \U000f0000 plane 15",
    "\u0378 unassigned \U000e0001 tag",
    "\u01c4\u01c5\u01c6 \u01c5ungla titlecase",
    "\u2126mega \u212a kelvin \u212b angstrom",
    "\ufb00\ufb03 \ufb05 ligatures \ufb01re",
    "don'\u017f 'S 'T 'RE 'VE 'M 'LL 'D",
    "a\u0085b\u3000c\u2003d\u180ee\u200bf",
    "\u1e9b\u0323 \u0041\u030a\u0301 \u1100\u1161\u11a8 jamo",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466" * 10,
    "\u732b" * 80,
    "a\ufffdb \ufffd\ufffd",
    "\u0924\u0345r x\u0345 \u03b9\u0345 ypogegrammeni",
    "\u0924\u0301\u08d3 \u1ace\u094d\u0301 e\u0301\u1df6 marks newer than Unicode 9",
]


def load_v5():
    """transformers 5's CLIPTokenizer as diffusers loads it, checked to use the vocabulary sd-core embeds."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path = write_tokenizer_files(tmp)
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = f.read().split("\n")[1:]
    with open(os.path.join(TINY_SD_TOKENIZER, "merges.txt"), encoding="utf-8") as f:
        tiny_merges = f.read().split("\n")[1:]
    strip = lambda lines: [line for line in lines if line.strip()]  # noqa: E731
    assert strip(tiny_merges) == strip(merges), "tiny-sd merges differ from the embedded ones"
    tok = CLIPTokenizer.from_pretrained(TINY_SD_TOKENIZER)
    assert tok.get_vocab() == vocab, "tiny-sd vocabulary differs from the embedded one"
    return tok


def load_v4():
    """transformers 4's Python CLIPTokenizer with its built-in clean-up."""
    from transformers.models.clip.tokenization_clip import BasicTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path = write_tokenizer_files(tmp)
        tok = CLIPTokenizer(vocab_path, merges_path)
    if tok.fix_text is not None:
        # ftfy is installed; use the clean-up transformers falls back to without it.
        tok.fix_text = None
        tok.nlp = BasicTokenizer(strip_accents=False, do_split_on_punc=False)
    return tok


def main():
    tok = load_v5() if V5 else load_v4()
    assert len(set(PROMPTS)) == len(PROMPTS), "duplicate prompts"
    cases = []
    for text in PROMPTS:
        ids = tok(text, add_special_tokens=False).input_ids
        padded = tok(text, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids
        assert len(padded) == MAX_LEN
        cases.append({"text": text, "ids": ids, "padded": padded})
    out = {
        "generator": "tools/make_tokenizer_fixtures.py",
        "tokenizer": type(tok).__module__ + "." + type(tok).__name__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "unicode": unicodedata.unidata_version,
        "max_length": MAX_LEN,
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "vocab_size": tok.vocab_size,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    # One case per line keeps the file small and its diffs readable.
    body = json.dumps({k: v for k, v in out.items() if k != "cases"}, ensure_ascii=True)
    lines = [json.dumps(c, ensure_ascii=True, separators=(",", ":")) for c in cases]
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(body[:-1] + ',\n"cases": [\n' + ",\n".join(lines) + "\n]}\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
