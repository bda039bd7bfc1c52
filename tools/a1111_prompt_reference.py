"""Reference outputs for sd-core's prompt language (`sd-core/src/prompt/`), written to
tests/fixtures/reference/prompt_cases.json and checked by `sd-core/tests/prompt_reference.rs`.

Run from the repository root with the reference stack plus `lark` (the parser AUTOMATIC1111 uses for prompt
scheduling; it is not part of tools/.venv-ref):

    tools/.venv-ref/bin/python -m venv /tmp/venv-prompt
    /tmp/venv-prompt/bin/pip install lark==1.1.2
    tools/.venv-ref/bin/python -c "import site; print(site.getsitepackages()[0])" \
        > "$(/tmp/venv-prompt/bin/python -c 'import site; print(site.getsitepackages()[0])')/venv_ref.pth"
    /tmp/venv-prompt/bin/python tools/a1111_prompt_reference.py

(`tools/.venv-ref/bin/python tools/a1111_prompt_reference.py` works as well once lark is installed there.)
`--large PATH` writes a bigger random set in the same layout instead (see `large`).

This is an independent re-implementation of the AUTOMATIC1111 stable-diffusion-webui (v1.10) prompt handling, one
function per A1111 function, each naming the file and function it follows:

* extra-network tags: `modules/extra_networks.py` (`re_extra_net`, `parse_prompt`, `ExtraNetworkParams`),
  `extensions-builtin/Lora/extra_networks_lora.py` (`ExtraNetworkLora.activate`: te/unet/dyn rules),
  `modules/extra_networks_hypernet.py` (`ExtraNetworkHypernet.activate`);
* scheduling: `modules/prompt_parser.py` (`schedule_parser` lark grammar, `get_learned_conditioning_prompt_schedules`
  with its `collect_steps` / `at_step` helpers), run through the real lark Earley parser;
* composable diffusion: `modules/prompt_parser.py` (`re_AND`, `re_weight`, `get_multicond_prompt_list`);
* emphasis: `modules/prompt_parser.py` (`re_attention`, `re_break`, `parse_prompt_attention`);
* chunking: `modules/sd_hijack_clip.py` (`FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line`, `next_chunk`,
  `FrozenCLIPEmbedderWithCustomWords.tokenize` / `comma_token`), with the transformers 5 `CLIPTokenizer` of the
  tiny test model and the default `comma_padding_backtrack` of 20 (plus a few cases with other values).

Floats that must compare exactly (emphasis weights, multipliers, LoRA strengths) are written as Python `repr`
strings, which round-trip exactly; chunk multipliers are run-length encoded as [[repr, count], ...].
"""

import json
import os
import random
import re
import subprocess
import sys

import lark
from transformers import CLIPTokenizer

OUT = "tests/fixtures/reference/prompt_cases.json"
TOKENIZER_DIR = "tests/fixtures/tiny-sd/tokenizer"


# ---------------------------------------------------------------- extra networks (modules/extra_networks.py)

RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


def extra_network_params(items):
    """ExtraNetworkParams.__init__: `key=value` items (exactly one `=` split into two parts) are named."""
    positional, named = [], {}
    for item in items:
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    return positional, named


def parse_extra_networks(prompt):
    """extra_networks.parse_prompt: every `<kind:args>` tag is removed from the prompt, args split on `:`."""
    found = []

    def repl(m):
        found.append((m.group(1), m.group(2).split(":")))
        return ""

    return re.sub(RE_EXTRA_NET, repl, prompt), found


def lora_values(items):
    """extra_networks_lora.ExtraNetworkLora.activate, for one tag (alias `lyco` goes to the same network)."""
    positional, named = extra_network_params(items)
    name = positional[0]  # IndexError when every item is named
    te = float(positional[1]) if len(positional) > 1 else 1.0
    te = float(named.get("te", te))
    unet = float(positional[2]) if len(positional) > 2 else te
    unet = float(named.get("unet", unet))
    dyn = int(positional[3]) if len(positional) > 3 else None
    dyn = int(named["dyn"]) if "dyn" in named else dyn
    return {"name": name, "te": repr(te), "unet": repr(unet), "dyn": dyn}


def hypernet_values(items):
    """extra_networks_hypernet.ExtraNetworkHypernet.activate: name = items[0], multiplier = float(items[1])."""
    mult = float(items[1]) if len(items) > 1 else 1.0
    return {"name": items[0], "multiplier": repr(mult)}


def extra_network_case(prompt):
    text, found = parse_extra_networks(prompt)
    tags = []
    error = False
    for kind, items in found:
        tag = {"kind": kind, "args": items}
        try:
            if kind in ("lora", "lyco"):
                tag["lora"] = lora_values(items)
            elif kind == "hypernet":
                tag["hypernet"] = hypernet_values(items)
        except (ValueError, IndexError):
            error = True
        tags.append(tag)
    return {"prompt": prompt, "text": text, "tags": tags, "error": error}


# ---------------------------------------------------------------- scheduling (modules/prompt_parser.py)

SCHEDULE_PARSER = lark.Lark(r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
""")


def prompt_schedule(prompt, base_steps, hires_steps=None, use_old_scheduling=False):
    """get_learned_conditioning_prompt_schedules for one prompt: [[until_step, text], ...]."""
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps

    try:
        tree = SCHEDULE_PARSER.parse(prompt)
    except lark.exceptions.LarkError:
        return [[steps, prompt]]

    # collect_steps: every scheduled `when` (converted in place to a step) and, for alternation, every step.
    bounds = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            s = node.children[-2]
            v = float(s)
            if use_old_scheduling:
                v = v * steps if v < 1 else v
            elif "." in s:
                v = (v - flt_offset) * steps
            else:
                v = v - int_offset
            node.children[-2] = min(steps, int(v))
            if node.children[-2] >= 1:
                bounds.add(node.children[-2])
        elif node.data == "alternate":
            bounds.update(range(1, steps + 1))

    def text_at(step, node):
        # at_step: `from` (or nothing) while step <= when, `to` afterwards; alternation picks (step - 1) % n.
        if isinstance(node, lark.Token):
            return str(node)
        if node is None:
            return ""
        if node.data == "scheduled":
            before, after, _, when, _ = node.children
            return text_at(step, before) if step <= when else text_at(step, after)
        if node.data == "alternate":
            options = node.children
            return text_at(step, options[(step - 1) % len(options)])
        return "".join(text_at(step, c) for c in node.children)

    return [[t, text_at(t, tree)] for t in sorted(bounds)]


# ---------------------------------------------------------------- AND (modules/prompt_parser.py)

RE_AND = re.compile(r"\bAND\b")
RE_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt):
    """get_multicond_prompt_list for one prompt: [[text, weight], ...] (before de-duplication)."""
    out = []
    for sub in RE_AND.split(prompt):
        m = RE_WEIGHT.search(sub)
        text, weight = m.groups() if m is not None else (sub, 1.0)
        out.append([text, repr(float(weight) if weight is not None else 1.0)])
    return out


# ---------------------------------------------------------------- emphasis (modules/prompt_parser.py)

RE_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)

RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    """parse_prompt_attention: [[text, weight], ...] with BREAK markers ["BREAK", -1] and equal weights merged."""
    res = []
    round_open, square_open = [], []

    def scale_from(start, factor):
        for i in range(start, len(res)):
            res[i][1] *= factor

    for m in RE_ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale_from(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            scale_from(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(re.split(RE_BREAK, piece)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for start in round_open:
        scale_from(start, 1.1)
    for start in square_open:
        scale_from(start, 1 / 1.1)

    if not res:
        res = [["", 1.0]]

    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


# ---------------------------------------------------------------- chunking (modules/sd_hijack_clip.py)

CHUNK = 75


def tokenize_line(tok, line, comma_backtrack=20, emphasis=True):
    """FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line (no textual-inversion embeddings):
    returns ([(tokens[77], multipliers[77]), ...], token_count)."""
    parsed = parse_prompt_attention(line) if emphasis else [[line, 1.0]]
    tokenized = tok([t for t, _ in parsed], truncation=False, add_special_tokens=False)["input_ids"]
    comma = tok.get_vocab().get(",</w>")
    bos, eos = tok.bos_token_id, tok.eos_token_id

    chunks = []
    state = {"tokens": [], "mults": [], "count": 0, "last_comma": -1}

    def next_chunk(is_last=False):
        state["count"] += len(state["tokens"]) if is_last else CHUNK
        pad = CHUNK - len(state["tokens"])
        toks = state["tokens"] + [eos] * max(pad, 0)
        mults = state["mults"] + [1.0] * max(pad, 0)
        chunks.append(([bos] + toks + [eos], [1.0] + mults + [1.0]))
        state["tokens"], state["mults"], state["last_comma"] = [], [], -1

    for tokens, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        for token in tokens:
            if token == comma:
                state["last_comma"] = len(state["tokens"])
            elif (comma_backtrack != 0 and len(state["tokens"]) == CHUNK and state["last_comma"] != -1
                  and len(state["tokens"]) - state["last_comma"] <= comma_backtrack):
                cut = state["last_comma"] + 1
                moved_t, moved_m = state["tokens"][cut:], state["mults"][cut:]
                state["tokens"], state["mults"] = state["tokens"][:cut], state["mults"][:cut]
                next_chunk()
                state["tokens"], state["mults"] = moved_t, moved_m
            if len(state["tokens"]) == CHUNK:
                next_chunk()
            state["tokens"].append(token)
            state["mults"].append(weight)

    if state["tokens"] or not chunks:
        next_chunk(is_last=True)
    return chunks, state["count"]


# ---------------------------------------------------------------- cases

SCHEDULE_CASES = [
    # the doctests of get_learned_conditioning_prompt_schedules (steps 10, and 10 + 10 hires)
    ("test", 10, None, False),
    ("a [b:3]", 10, None, False),
    ("a [b: 3]", 10, None, False),
    ("a [[[b]]:2]", 10, None, False),
    ("[(a:2):3]", 10, None, False),
    ("a [b : c : 1] d", 10, None, False),
    ("a[b:[c:d:2]:1]e", 10, None, False),
    ("a [unbalanced", 10, None, False),
    ("a [b:.5] c", 10, None, False),
    ("a [{b|d{:.5] c", 10, None, False),
    ("((a][:b:c [d:3]", 10, None, False),
    ("[a|(b:1.1)]", 10, None, False),
    ("[fe|]male", 10, None, False),
    ("[fe|||]male", 10, None, False),
    ("a [b:.5] c", 10, 10, False),
    ("a [b:1.5] c", 10, 10, False),
    # the example in the comment at the top of prompt_parser.py
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
     "[ in background:0.25] [shoddy:masterful:0.5]", 100, None, False),
    # more
    ("a [cat:dog:5] in a hat", 20, None, False),
    ("a [cat:dog:0.5] in a hat", 20, None, False),
    ("a [cat:dog:0.33] in a hat", 20, None, False),
    ("a [cat:dog:1.0] in a hat", 20, None, False),
    ("a [cat:dog:1] in a hat", 20, None, False),
    ("a [cat:dog:0] in a hat", 20, None, False),
    ("a [cat:dog:25] in a hat", 20, None, False),
    ("a [cat:dog:-3] in a hat", 20, None, False),
    ("a [cat:dog:+4] in a hat", 20, None, False),
    ("a [cat:dog:1e1] in a hat", 20, None, False),
    ("a [cat:dog:2.5e-1] in a hat", 20, None, False),
    ("a [cat:dog:4 ] in a hat", 20, None, False),
    ("a [cat::7] and [hat:12]", 20, None, False),
    ("a [cat:dog:x] in a hat", 20, None, False),
    ("a [cat:dog:1.5.5] hat", 20, None, False),
    ("[red|green|blue] ball", 7, None, False),
    ("[red|[green|blue]] ball", 8, None, False),
    ("[[a|b]:c:4] d", 8, None, False),
    ("[a:[b|c]:3]", 6, None, False),
    ("a | b", 10, None, False),
    ("trailing backslash \\", 10, None, False),
    ("escaped \\[a:b:3\\] text", 10, None, False),
    ("\\(x\\) [y:z:2]", 10, None, False),
    ("(a [b:c:3]:1.2) d", 10, None, False),
    ("(unclosed [b:c:3]", 10, None, False),
    ("[a:[b:1]]", 10, None, False),
    ("[a:1] [b:2]]", 10, None, False),
    ("[b:2]]", 10, None, False),
    ("(x) [b:2]]", 10, None, False),
    ("[b:2]):", 10, None, False),
    ("[[a:1]:2]", 10, None, False),
    ("]x[ [a:b:2] :", 10, None, False),
    ("a [b:c:3] d", 10, 20, False),
    ("a [b:c:12] d", 10, 20, False),
    ("a [b:c:0.5] d", 10, 20, True),
    ("a [b:c:3] d", 10, 20, True),
    ("", 10, None, False),
    ("[:3]", 10, None, False),
    ("[::3]", 10, None, False),
    ("a [b:c:3] [d|e] f", 5, None, False),
    ("line one [x:y:2]\nline two", 4, None, False),
]

ATTENTION_CASES = [
    "normal text",
    "an (important) word",
    "(unbalanced",
    "\\(literal\\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "[[[faded]]] and ((bold))",
    "(negative:-1.5) weight",
    "(zero:0) weight",
    "(spaced : 1.25 ) weight",
    "(bad:1.2.3) weight",
    "stray: colon and (a:b) text",
    "unmatched ) and ] closers",
    "back\\\\slash and \\ lone",
    "a BREAK b",
    "BREAK at start",
    "at end BREAK",
    "(a BREAK b:1.2)",
    "notBREAK BREAKnot BREAK",
    "(a BREAK b:0)",
    "(([nested] mix):1.4) end",
    "",
    "(:1.5)",
    "(((",
    "[a] [b] [c]",
]

LORA_CASES = [
    "a photo <lora:myStyle:0.8> of a cat",
    "<lora:myStyle>",
    "<lora:myStyle:0.5:0.25>",
    "<lora:myStyle:0.5:0.25:16>",
    "<lora:myStyle:te=0.3:unet=0.6>",
    "<lora:myStyle:0.9:unet=0.2:dyn=8>",
    "<lora:myStyle:1:te=0.4>",
    "<lyco:otherNet:0.7> and <hypernet:hn1:0.35>",
    "<hypernet:hn2>",
    "<foo:bar:baz> unknown kind",
    "<lora:bad:abc>",
    "<lora:bad:1:2:3.5>",
    "<lora:te=1>",
    "<lora:weird:a=b=c:0.5>",
    "<lora:spaced: 0.5 >",
    "<lora:neg:-1.25>",
    "not a tag <lora> or <:x> or <lora:>",
    "two <lora:a:0.1><lora:b:0.2> adjacent",
    "<lora:ünïcode_name:1.5> text",
    "<lora:x:1e-1:+2>",
]

AND_CASES = [
    "a cat AND a dog",
    "a cat AND a dog:0.7",
    "a cat:1.5 AND a dog : -0.25  ",
    "x AND",
    "AND y:2.",
    "BANDAID and ANDROID",
    "multi\nline AND part:.5\n",
    "(weighted:1.2) AND [x:y:3]:0.4",
    "no weight: here AND colon:",
]

CHUNK_CASES = [
    ("a photo of a cat", 20, True),
    ("", 20, True),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", 20, True),
    ("first part BREAK second part", 20, True),
    ("BREAK", 20, True),
    ("a BREAK", 20, True),
    ("(emphasis BREAK inside:1.3) tail", 20, True),
    ("(literal) brackets (x:1.5) with emphasis off", 20, False),
    ("(neg:-0.5) and (zero:0) weights", 20, True),
]


def long_prompt(rng, n_words, comma_every):
    words = ["red", "blue", "cat", "house", "mountain", "river", "detailed", "masterpiece", "lighting", "sky",
             "(glow:1.2)", "[dark]", "photorealistic", "8k", "portrait", "forest", "((sharp))", "sunset"]
    out = []
    for i in range(n_words):
        out.append(rng.choice(words))
        if comma_every and (i + 1) % comma_every == 0:
            out.append(",")
    return " ".join(out).replace(" ,", ",")


def run_length(values):
    """[[repr(value), count], ...] for runs of equal values (keeps the fixture small)."""
    out = []
    for v in values:
        r = repr(float(v))
        if out and out[-1][0] == r:
            out[-1][1] += 1
        else:
            out.append([r, 1])
    return out


def schedules_across_seeds(cases, seeds=tuple(range(8))):
    """Schedules of `cases` ([prompt, steps, hires_steps, old_scheduling]) computed under several
    PYTHONHASHSEED values. lark's Earley parser breaks ties between equally ranked parses in set-iteration
    order, so prompts with a stray closing bracket after a construct (`[b:2]]`) get different readings from one
    process to the next: A1111 itself has no fixed answer for them. Returns, per case, the distinct readings in
    first-seen order."""
    results = []
    for seed in seeds:
        env = dict(os.environ, PYTHONHASHSEED=str(seed))
        out = subprocess.run([sys.executable, __file__, "--schedules"], input=json.dumps(cases),
                             capture_output=True, text=True, env=env, check=True)
        results.append(json.loads(out.stdout))
    readings = []
    for per_seed in zip(*results):
        distinct = []
        for r in per_seed:
            if r not in distinct:
                distinct.append(r)
        readings.append(distinct)
    return readings


def main():
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    rng = random.Random(1234)

    chunk_cases = list(CHUNK_CASES)
    # long prompts: no commas, commas everywhere, commas near the 75-token boundary, exact multiples of 75
    chunk_cases.append((" ".join(["cat"] * 75), 20, True))
    chunk_cases.append((" ".join(["cat"] * 76), 20, True))
    chunk_cases.append((" ".join(["cat"] * 150), 20, True))
    chunk_cases.append((" ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10), 20, True))
    chunk_cases.append((" ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 30), 20, True))
    chunk_cases.append((" ".join(["cat"] * 54) + ", " + " ".join(["dog"] * 30), 20, True))
    chunk_cases.append((" ".join(["cat"] * 55) + ", " + " ".join(["dog"] * 30), 20, True))
    chunk_cases.append((" ".join(["cat"] * 74) + ", " + " ".join(["dog"] * 5), 20, True))
    chunk_cases.append((" ".join(["cat"] * 75) + ", " + " ".join(["dog"] * 5), 20, True))
    chunk_cases.append((" ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10), 0, True))
    chunk_cases.append((" ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 30), 10, True))
    chunk_cases.append((" ".join(["cat"] * 60) + ", " + " ".join(["(dog:1.3)"] * 30), 20, True))
    chunk_cases.append((" ".join(["cat"] * 40) + " BREAK " + " ".join(["dog"] * 80), 20, True))
    for n, every in [(90, 0), (120, 3), (160, 7), (200, 13), (110, 25)]:
        chunk_cases.append((long_prompt(rng, n, every), 20, True))

    # short random prompts over the grammar's special characters, to pin down which bracket readings the
    # Earley parser picks when several are possible
    alphabet = ["a", "b", " ", "[", "]", "(", ")", ":", ":", "|", "2", ".5", "1", "\\\\", "x y", " 3 "]
    fuzz = set()
    while len(fuzz) < 220:
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 14)))
        if "[" in s and (":" in s or "|" in s):
            fuzz.add(s)
    cases = [list(c) for c in SCHEDULE_CASES] + [[p, 4, None, False] for p in sorted(fuzz)]
    schedule = []
    for (prompt, steps, hires, old), readings in zip(cases, schedules_across_seeds(cases)):
        case = {"prompt": prompt, "steps": steps, "hires_steps": hires, "old_scheduling": old}
        if len(readings) == 1:
            case["segments"] = readings[0]
        else:
            case["readings"] = readings
        schedule.append(case)
    print(f"schedules: {len(schedule)} cases, {sum('readings' in c for c in schedule)} with a "
          "hash-seed dependent lark reading")

    attention = []
    for text in ATTENTION_CASES:
        try:
            parsed = [[t, repr(float(w))] for t, w in parse_prompt_attention(text)]
            attention.append({"prompt": text, "parsed": parsed, "error": False})
        except ValueError:
            attention.append({"prompt": text, "parsed": None, "error": True})

    chunks = []
    for text, backtrack, emphasis in chunk_cases:
        got, count = tokenize_line(tok, text, backtrack, emphasis)
        chunks.append({"prompt": text, "comma_backtrack": backtrack, "emphasis": emphasis, "token_count": count,
                       "chunks": [{"ids": t, "multipliers": run_length(w)} for t, w in got]})

    extra = [extra_network_case(p) for p in LORA_CASES]
    composable = [{"prompt": p, "parts": split_and(p)} for p in AND_CASES]

    doc = {
        "about": "AUTOMATIC1111 prompt handling reference, written by tools/a1111_prompt_reference.py",
        "versions": {"lark": lark.__version__, "transformers": __import__("transformers").__version__},
        "schedule": schedule,
        "attention": attention,
        "chunks": chunks,
        "extra_networks": extra,
        "and": composable,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    total = len(schedule) + len(attention) + len(chunks) + len(extra) + len(composable)
    print(f"wrote {OUT}: {total} cases")


def large(path):
    """A larger random set in the same layout (not committed): 3000 schedules, 2000 emphasis parses, 150 long
    prompts to chunk. Check it with `SDRS_PROMPT_CASES=PATH cargo test -p sd-core --test prompt_reference`."""
    rng = random.Random(99)
    alphabet = ["a", "b", " ", "[", "]", "(", ")", ":", ":", "|", "2", ".5", "1", "\\\\", "x y", " 3 ", "-1", "e2",
                "\n", "[", "]"]
    fuzz = set()
    while len(fuzz) < 3000:
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 18)))
        if "[" in s:
            fuzz.add(s)
    cases = [[p, 5, None, False] for p in sorted(fuzz)]
    schedule = []
    for (prompt, steps, hires, old), readings in zip(cases, schedules_across_seeds(cases, seeds=(0, 1, 2, 3))):
        case = {"prompt": prompt, "steps": steps, "hires_steps": hires, "old_scheduling": old}
        case.update({"segments": readings[0]} if len(readings) == 1 else {"readings": readings})
        schedule.append(case)
    alphabet = ["a", "b ", " ", "[", "]", "(", ")", ":", ":1.2", ":-0.5", ": 2 )", "|", "\\\\", "\\\\(", " BREAK ",
                "BREAK", ",", "x y", "1.", ".."]
    attention = []
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16)))
        try:
            parsed = [[t, repr(float(w))] for t, w in parse_prompt_attention(s)]
            attention.append({"prompt": s, "parsed": parsed, "error": False})
        except ValueError:
            attention.append({"prompt": s, "parsed": None, "error": True})
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    words = ["cat", "dog,", "(red:1.3)", "[blue]", "BREAK", "sky", ",", "big house", "((x))"]
    chunks = []
    for _ in range(150):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(1, 170)))
        backtrack = rng.choice([20, 20, 0, 5, 40])
        got, count = tokenize_line(tok, s, backtrack, True)
        chunks.append({"prompt": s, "comma_backtrack": backtrack, "emphasis": True, "token_count": count,
                       "chunks": [{"ids": t, "multipliers": run_length(w)} for t, w in got]})
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"schedule": schedule, "attention": attention, "chunks": chunks, "extra_networks": []}, f)
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--large":
        large(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "--schedules":
        json.dump([prompt_schedule(*c) for c in json.load(sys.stdin)], sys.stdout)
    else:
        main()
