"""Reference conditioning tensors for the A1111 prompt path of sd-core's pipeline
(`sd-core/src/pipeline/conditioning/`), written to tests/fixtures/reference/conditioning.safetensors and checked by
`tests/parity_conditioning.rs`.

Run from the repository root with the reference stack, which includes `lark` (tools/setup_reference_env.sh):

    tools/.venv-ref/bin/python tools/make_conditioning_fixtures.py

The output is byte-identical from run to run.

This is an independent PyTorch re-implementation of how AUTOMATIC1111's stable-diffusion-webui (v1.10) turns a
prompt and a negative prompt into the text conditioning of every sampling step, run with transformers'
`CLIPTextModel` of the tiny test model (`tests/fixtures/tiny-sd`) in float64. Text-level steps come from
tools/a1111_prompt_reference.py (extra-network tags, the lark schedule parser, `parse_prompt_attention`); the rest
follows, one function or class per A1111 one, each naming what it follows:

* `modules/textual_inversion/textual_inversion.py`: `EmbeddingDatabase.register_embedding_by_name`,
  `find_embedding_at_position` (trigger matching by token ids, longest first);
* `modules/sd_hijack.py`: `EmbeddingsWithFixes.forward` (embedding vectors spliced in after the token lookup);
* `modules/sd_hijack_clip.py`: `TextConditionalModel.tokenize_line` (with embeddings), `process_texts`,
  `forward` (chunks encoded as one batch per chunk index, concatenated along tokens; `TI hashes` and `Emphasis`
  infotext entries), `process_tokens`, `FrozenCLIPEmbedderWithCustomWords.encode_with_transformers` (CLIP skip:
  `hidden_states[-N]` then the final layer norm);
* `modules/sd_emphasis.py`: `EmphasisOriginal` (mean over the whole chunk batch restored), `EmphasisOriginalNoNorm`,
  `EmphasisIgnore`, `EmphasisNone`;
* `modules/prompt_parser.py`: `get_learned_conditioning` (one text-encoder batch per prompt: the texts of its
  schedule), `get_multicond_prompt_list`, `get_multicond_learned_conditioning`, `reconstruct_cond_batch`,
  `stack_conds`, `reconstruct_multicond_batch`;
* `modules/sd_samplers_cfg_denoiser.py`: `CFGDenoiser.forward` (the step counter starts at 0 and counts model
  evaluations), `pad_cond`, `pad_cond_uncond` (the "Pad prompt/negative prompt" option, which sdrs always applies;
  the empty-prompt encoding is `sd_models.get_empty_cond`, i.e. `cond_stage_model([""])`);
* `modules/processing.py`: extra-network tags are taken out of the positive prompts only
  (`parse_extra_network_prompts`); the negative prompt goes to `get_learned_conditioning`, the positive one to
  `get_multicond_learned_conditioning`, both scheduled over the requested step count.

For every case and every step k = 0..steps the file holds the conditioning A1111 hands the UNet: the stacked
positive sub-prompts `[n, tokens, width]` and the negative `[1, tokens, width]`, after padding. Identical tensors are
stored once; the JSON metadata `cases` maps each step to tensor names and records the AND weights, whether padding
happened, and the `TI hashes` / `Emphasis` infotext values (all in the one metadata entry `reference`).
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import a1111_prompt_reference as prompt_ref  # noqa: E402

MODEL = "tests/fixtures/tiny-sd"
OUT = "tests/fixtures/reference/conditioning.safetensors"
CHUNK = 75


def text_model(transformer):
    """The CLIP text transformer: transformers 4 nests it under `text_model`, transformers 5 does not."""
    return getattr(transformer, "text_model", transformer)


# ---------------------------------------------------------------- textual inversion (textual_inversion.py)

class Embedding:
    def __init__(self, name, vec, shorthash):
        self.name = name
        self.vec = vec
        self.vectors = vec.shape[0]
        self.shorthash = shorthash


class EmbeddingDatabase:
    """register_embedding_by_name / find_embedding_at_position."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids_lookup = {}

    def register(self, embedding):
        ids = self.tokenizer([embedding.name], truncation=False, add_special_tokens=False)["input_ids"][0]
        lookup = self.ids_lookup.setdefault(ids[0], [])
        lookup.append((ids, embedding))
        self.ids_lookup[ids[0]] = sorted(lookup, key=lambda x: len(x[0]), reverse=True)

    def find_embedding_at_position(self, tokens, offset):
        for ids, embedding in self.ids_lookup.get(tokens[offset], []):
            if tokens[offset:offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, None


class EmbeddingsWithFixes(torch.nn.Module):
    """sd_hijack.EmbeddingsWithFixes: the token embedding, with each fix's vectors placed after `offset` (offsets
    are counted without the BOS token, hence `offset + 1`)."""

    def __init__(self, wrapped, hijack):
        super().__init__()
        self.wrapped = wrapped
        self.hijack = hijack

    def forward(self, input_ids):
        batch_fixes = self.hijack.fixes
        self.hijack.fixes = None
        inputs_embeds = self.wrapped(input_ids)
        if not batch_fixes or max(len(x) for x in batch_fixes) == 0:
            return inputs_embeds
        vecs = []
        for fixes, tensor in zip(batch_fixes, inputs_embeds):
            for offset, embedding in fixes:
                emb = embedding.vec.to(tensor.dtype)
                emb_len = min(tensor.shape[0] - offset - 1, emb.shape[0])
                tensor = torch.cat([tensor[0:offset + 1], emb[0:emb_len], tensor[offset + 1 + emb_len:]])
            vecs.append(tensor)
        return torch.stack(vecs)


# ---------------------------------------------------------------- the text encoder wrapper (sd_hijack_clip.py)

class PromptChunk:
    def __init__(self):
        self.tokens = []
        self.multipliers = []
        self.fixes = []


class CustomWordsEncoder:
    """FrozenCLIPEmbedderWithCustomWords with the options that matter here."""

    def __init__(self, tokenizer, transformer, embedding_db, clip_skip, emphasis, comma_backtrack=20):
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.embedding_db = embedding_db
        self.clip_skip = clip_skip
        self.emphasis = emphasis
        self.comma_backtrack = comma_backtrack
        self.comma_token = tokenizer.get_vocab().get(",</w>", None)
        self.id_start = tokenizer.bos_token_id
        self.id_end = tokenizer.eos_token_id
        self.id_pad = self.id_end
        self.fixes = None
        self.extra_generation_params = {}
        emb = text_model(transformer).embeddings
        emb.token_embedding = EmbeddingsWithFixes(emb.token_embedding, self)

    def empty_chunk(self):
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (CHUNK + 1)
        chunk.multipliers = [1.0] * (CHUNK + 2)
        return chunk

    def tokenize(self, texts):
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def tokenize_line(self, line):
        """TextConditionalModel.tokenize_line."""
        if self.emphasis != "None":
            parsed = prompt_ref.parse_prompt_attention(line)
        else:
            parsed = [[line, 1.0]]
        tokenized = self.tokenize([text for text, _ in parsed])

        chunks = []
        chunk = PromptChunk()
        token_count = 0
        last_comma = -1

        def next_chunk(is_last=False):
            nonlocal token_count, last_comma, chunk
            token_count += len(chunk.tokens) if is_last else CHUNK
            to_add = CHUNK - len(chunk.tokens)
            if to_add > 0:
                chunk.tokens += [self.id_end] * to_add
                chunk.multipliers += [1.0] * to_add
            chunk.tokens = [self.id_start] + chunk.tokens + [self.id_end]
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
            last_comma = -1
            chunks.append(chunk)
            chunk = PromptChunk()

        for tokens, (text, weight) in zip(tokenized, parsed):
            if text == "BREAK" and weight == -1:
                next_chunk()
                continue
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif (self.comma_backtrack != 0 and len(chunk.tokens) == CHUNK and last_comma != -1
                      and len(chunk.tokens) - last_comma <= self.comma_backtrack):
                    break_location = last_comma + 1
                    reloc_tokens = chunk.tokens[break_location:]
                    reloc_mults = chunk.multipliers[break_location:]
                    chunk.tokens = chunk.tokens[:break_location]
                    chunk.multipliers = chunk.multipliers[:break_location]
                    next_chunk()
                    chunk.tokens = reloc_tokens
                    chunk.multipliers = reloc_mults
                if len(chunk.tokens) == CHUNK:
                    next_chunk()
                embedding, embedding_length_in_tokens = self.embedding_db.find_embedding_at_position(tokens, position)
                if embedding is None:
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    position += 1
                    continue
                emb_len = int(embedding.vectors)
                if len(chunk.tokens) + emb_len > CHUNK:
                    next_chunk()
                chunk.fixes.append((len(chunk.tokens), embedding))
                chunk.tokens += [0] * emb_len
                chunk.multipliers += [weight] * emb_len
                position += embedding_length_in_tokens

        if chunk.tokens or not chunks:
            next_chunk(is_last=True)
        return chunks, token_count

    def process_texts(self, texts):
        cache = {}
        batch_chunks = []
        for line in texts:
            if line not in cache:
                cache[line], _ = self.tokenize_line(line)
            batch_chunks.append(cache[line])
        return batch_chunks

    def forward(self, texts):
        """TextConditionalModel.forward: [len(texts), 77 * chunk_count, width]."""
        batch_chunks = self.process_texts(texts)
        used_embeddings = {}
        chunk_count = max(len(x) for x in batch_chunks)
        zs = []
        for i in range(chunk_count):
            batch_chunk = [chunks[i] if i < len(chunks) else self.empty_chunk() for chunks in batch_chunks]
            tokens = [x.tokens for x in batch_chunk]
            multipliers = [x.multipliers for x in batch_chunk]
            self.fixes = [x.fixes for x in batch_chunk]
            for fixes in self.fixes:
                for _position, embedding in fixes:
                    used_embeddings[embedding.name] = embedding
            zs.append(self.process_tokens(tokens, multipliers))

        if used_embeddings:
            hashes = []
            for name, embedding in used_embeddings.items():
                if not embedding.shorthash:
                    continue
                name = name.replace(":", "").replace(",", "")
                hashes.append(f"{name}: {embedding.shorthash}")
            if hashes:
                if self.extra_generation_params.get("TI hashes"):
                    hashes.append(self.extra_generation_params.get("TI hashes"))
                self.extra_generation_params["TI hashes"] = ", ".join(hashes)
        if any(x for x in texts if "(" in x or "[" in x) and self.emphasis != "Original":
            self.extra_generation_params["Emphasis"] = self.emphasis
        return torch.hstack(zs)

    def process_tokens(self, remade_batch_tokens, batch_multipliers):
        """TextConditionalModel.process_tokens with sd_emphasis applied after the transformer."""
        tokens = torch.asarray(remade_batch_tokens)
        if self.id_end != self.id_pad:
            for batch_pos in range(len(remade_batch_tokens)):
                index = remade_batch_tokens[batch_pos].index(self.id_end)
                tokens[batch_pos, index + 1:tokens.shape[1]] = self.id_pad
        z = self.encode_with_transformers(tokens)
        # torch.asarray of Python floats gives the default dtype, float32.
        multipliers = torch.asarray(batch_multipliers, dtype=torch.float32)
        if self.emphasis == "Original":
            original_mean = z.mean()
            z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
            new_mean = z.mean()
            z = z * (original_mean / new_mean)
        elif self.emphasis == "No norm":
            z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
        return z

    def encode_with_transformers(self, tokens):
        outputs = self.transformer(input_ids=tokens, output_hidden_states=True)
        if self.clip_skip > 1:
            z = outputs.hidden_states[-self.clip_skip]
            z = text_model(self.transformer).final_layer_norm(z)
        else:
            z = outputs.last_hidden_state
        return z


# ---------------------------------------------------------------- prompt_parser.py

def get_learned_conditioning(model, prompts, steps):
    """One text-encoder batch per distinct prompt: the texts of its schedule; [[end_at_step, cond], ...]."""
    res = []
    cache = {}
    for prompt in prompts:
        if prompt in cache:
            res.append(cache[prompt])
            continue
        schedule = prompt_ref.prompt_schedule(prompt, steps)
        conds = model.forward([text for _, text in schedule])
        cond_schedule = [(end_at_step, conds[i]) for i, (end_at_step, _) in enumerate(schedule)]
        cache[prompt] = cond_schedule
        res.append(cond_schedule)
    return res


def get_multicond_prompt_list(prompts):
    res_indexes = []
    prompt_indexes = {}
    prompt_flat_list = []
    for prompt in prompts:
        indexes = []
        for text, weight in prompt_ref.split_and(prompt):
            weight = float(weight)
            index = prompt_indexes.get(text)
            if index is None:
                index = len(prompt_flat_list)
                prompt_flat_list.append(text)
                prompt_indexes[text] = index
            indexes.append((index, weight))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list


def get_multicond_learned_conditioning(model, prompts, steps):
    res_indexes, prompt_flat_list = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, prompt_flat_list, steps)
    return [[(learned[i], weight) for i, weight in indexes] for indexes in res_indexes]


def target_index(schedule, current_step):
    for current, (end_at_step, _) in enumerate(schedule):
        if current_step <= end_at_step:
            return current
    return 0


def reconstruct_cond_batch(c, current_step):
    return torch.stack([schedule[target_index(schedule, current_step)][1] for schedule in c])


def stack_conds(tensors):
    token_count = max(x.shape[0] for x in tensors)
    for i in range(len(tensors)):
        if tensors[i].shape[0] != token_count:
            last_vector = tensors[i][-1:]
            last_vector_repeated = last_vector.repeat([token_count - tensors[i].shape[0], 1])
            tensors[i] = torch.vstack([tensors[i], last_vector_repeated])
    return torch.stack(tensors)


def reconstruct_multicond_batch(c, current_step):
    tensors = []
    conds_list = []
    for composable_prompts in c:
        conds_for_batch = []
        for schedule, weight in composable_prompts:
            conds_for_batch.append((len(tensors), weight))
            tensors.append(schedule[target_index(schedule, current_step)][1])
        conds_list.append(conds_for_batch)
    return conds_list, stack_conds(tensors)


# ---------------------------------------------------------------- sd_samplers_cfg_denoiser.py

def pad_cond(tensor, repeats, empty):
    return torch.cat([tensor, empty.repeat((tensor.shape[0], repeats, 1))], axis=1)


def pad_cond_uncond(cond, uncond, empty):
    num_repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
    if num_repeats < 0:
        return pad_cond(cond, -num_repeats, empty), uncond, True
    if num_repeats > 0:
        return cond, pad_cond(uncond, num_repeats, empty), True
    return cond, uncond, False


# ---------------------------------------------------------------- cases

def words(n, comma_every, weighted_every=0):
    vocab = ["red", "blue", "cat", "house", "mountain", "river", "detailed", "lighting", "sky", "forest", "sunset"]
    out = []
    for i in range(n):
        w = vocab[(i * 7) % len(vocab)]
        if weighted_every and i % weighted_every == 0:
            w = f"({w}:1.2)"
        out.append(w)
        if comma_every and (i + 1) % comma_every == 0:
            out[-1] += ","
    return " ".join(out)


LONG = words(100, 6, 9)
LONG_NEGATIVE = words(90, 0, 0)

# (name, prompt, negative, steps, clip_skip, emphasis)
CASES = [
    ("plain", "a red fox in the snow", "blurry", 2, 1, "Original"),
    ("emphasis", "a (red:1.3) fox, ((nested)) and [less] \\(escaped\\) text, (unbalanced", "blurry", 2, 1,
     "Original"),
    ("break", "a red fox BREAK (in the snow:1.2)", "", 2, 1, "Original"),
    ("long_prompt", LONG, "blurry", 2, 1, "Original"),
    ("long_negative", "a (cat:1.1)", LONG_NEGATIVE, 2, 1, "Original"),
    ("embedding", "a photo in neonstyle, (neonstyle:1.2) colors", "badhands, blurry", 2, 1, "Original"),
    ("editing", "a [cat:dog:3] in a [red:(blue:1.4):0.5] hat", "[ugly::2] blurry", 8, 1, "Original"),
    ("alternation", "a [red|green|(blue:1.5)] ball", "", 7, 1, "Original"),
    ("and", "a (cat:1.2) AND a dog:0.7 AND a fox [running:jumping:2]:-0.3", "blurry", 4, 1, "Original"),
    ("and_lengths", "short AND " + LONG + " :0.5", "", 2, 1, "Original"),
    ("edit_long", "[" + LONG_NEGATIVE + " (x:1.3):short:2] tail", "", 4, 1, "Original"),
    ("clip_skip", "a (red:1.3) fox", "(blurry:0.8)", 1, 2, "Original"),
    ("tags", "a <lora:foo:0.5> cat <hypernet:bar:0.3> (sitting:1.1)", "<lora:neg:1> blurry", 1, 1, "Original"),
    ("no_norm", "a (red:1.3) fox [dark]", "blurry", 1, 1, "No norm"),
    ("ignore", "a (red:1.3) fox [dark]", "blurry", 1, 1, "Ignore"),
    ("none", "a (red:1.3) fox [dark] BREAK x", "blurry", 1, 1, "None"),
]


def main():
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(MODEL, "tokenizer"))
    transformer = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder")).double().eval()
    width = transformer.config.hidden_size
    g = torch.Generator().manual_seed(20240601)
    embeddings = {
        "neonstyle": Embedding("neonstyle", torch.randn(3, width, generator=g), "a1b2c3d4e5f6"),
        "badhands": Embedding("badhands", torch.randn(2, width, generator=g), "0f1e2d3c4b5a"),
    }
    db = EmbeddingDatabase(tokenizer)
    for e in embeddings.values():
        db.register(e)

    tensors = {f"embedding.{name}": e.vec.clone() for name, e in embeddings.items()}
    by_bytes = {}

    def store(t):
        t = t.to(torch.float32).contiguous()
        key = t.numpy().tobytes() + str(tuple(t.shape)).encode()
        if key not in by_bytes:
            name = f"t{len(by_bytes)}"
            by_bytes[key] = name
            tensors[name] = t
        return by_bytes[key]

    cases = []
    with torch.no_grad():
        for name, prompt, negative, steps, clip_skip, emphasis in CASES:
            model = CustomWordsEncoder(tokenizer, transformer, db, clip_skip, emphasis)
            empty = model.forward([""])  # sd_models.get_empty_cond
            model.extra_generation_params = {}
            # processing.py: tags come out of the positive prompt only.
            positive, tags = prompt_ref.parse_extra_networks(prompt)
            uc = get_learned_conditioning(model, [negative], steps)
            c = get_multicond_learned_conditioning(model, [positive], steps)
            calls = []
            padded_any = False
            weights = None
            for k in range(steps + 1):
                conds_list, cond = reconstruct_multicond_batch(c, k)
                uncond = reconstruct_cond_batch(uc, k)
                cond, uncond, padded = pad_cond_uncond(cond, uncond, empty)
                padded_any = padded_any or padded
                weights = [repr(w) for _, w in conds_list[0]]
                calls.append([store(cond), store(uncond)])
            # Restore the plain token embedding for the next case.
            emb = text_model(transformer).embeddings
            emb.token_embedding = emb.token_embedding.wrapped
            cases.append({
                "name": name, "prompt": prompt, "negative_prompt": negative, "steps": steps,
                "clip_skip": clip_skip, "emphasis": emphasis, "weights": weights, "calls": calls,
                "padded": padded_any, "tags": [[kind, args] for kind, args in tags],
                "infotext": [[k, v] for k, v in model.extra_generation_params.items()],
            })
            print(f"{name}: {len(c[0])} sub-prompt(s), cond {tuple(cond.shape)}, uncond {tuple(uncond.shape)}, "
                  f"padded {padded_any}, infotext {model.extra_generation_params}")

    # One metadata entry: safetensors writes several in hash-map order, which would change the file from run to run.
    reference = {
        "about": "A1111 per-step conditioning, written by tools/make_conditioning_fixtures.py",
        "precision": "float64 text encoder, stored as float32",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "embeddings": [{"name": e.name, "hash": e.shorthash} for e in embeddings.values()],
        "cases": cases,
    }
    metadata = {"reference": json.dumps(reference, ensure_ascii=False)}
    save_file(tensors, OUT, metadata=metadata)
    print(f"wrote {OUT}: {len(cases)} cases, {len(by_bytes)} distinct tensors, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
