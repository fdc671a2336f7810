"""Needle in a haystack: can the model retrieve a fact planted in long real text through its KV cache?

One trial, for a total prompt length L (tokens) and a depth d in [0, 1]:
  prompt = [BOS] haystack[: i] + needle + haystack[i:] + question,   i = d * len(haystack) (moved back
  to the nearest line break, if one is within 64 tokens, so the needle is its own sentence), where
  haystack is pydoc corpus text, needle = " The secret passphrase is <adjective> <noun>. " (a random pair
  per trial, seeded), question = "...What is the secret passphrase...? Answer: The secret passphrase is".
  Everything up to the question is prefilled through make_cache(model.config) in chunks of
  `prefill_chunk` tokens; the question is then fed as one chunk attending over the cache, and the
  answer is greedy-decoded token by token through the same cache.
  found = the decoded answer's first two words are exactly the planted pair (case-insensitive).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field

from lowbit.errors import LowbitError
from lowbit.eval.metrics import CacheFactory, dynamic_cache, model_device
from lowbit.eval.text import bos_id, corpus_tokens
from lowbit.progress import progress_bar

ADJECTIVES = ("purple", "golden", "silent", "frozen", "crimson", "hidden", "ancient", "velvet", "copper", "gentle", "rapid", "hollow")
NOUNS = ("falcon", "harbor", "lantern", "meadow", "river", "castle", "garden", "mirror", "thunder", "orchard", "compass", "violin")
QUESTION = "\n\nQuestion: What is the secret passphrase mentioned in the text above?\nAnswer: The secret passphrase is"
DEPTHS = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Trial:
    length: int  # prompt tokens, question included
    depth: float
    passphrase: str
    answer: str
    found: bool


@dataclass(frozen=True)
class NiahResult:
    trials: list[Trial] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(t.found for t in self.trials) / len(self.trials) if self.trials else float("nan")

    def by_cell(self) -> dict[tuple[int, float], float]:
        """(length, depth) -> fraction found over that cell's repeats."""
        cells: dict[tuple[int, float], list[bool]] = {}
        for t in self.trials:
            cells.setdefault((t.length, t.depth), []).append(t.found)
        return {k: sum(v) / len(v) for k, v in cells.items()}

    def as_dict(self) -> dict:
        return {"score": self.score, "trials": [asdict(t) for t in self.trials]}


def default_lengths(model, cap: int = 4096) -> tuple[int, ...]:
    """Powers of two from 1024 up to the model's longest context, capped for CPU time."""
    top = min(int(model.config.max_position_embeddings), cap)
    out, n = [], 1024
    while n <= top:
        out.append(n)
        n *= 2
    return tuple(out) or (top,)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _prompt(tokenizer, length: int, depth: float, passphrase: str, offset: int) -> tuple[list[int], int]:
    """Token ids of one trial's prompt and the index where the question starts."""
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    needle, question = enc(f" The secret passphrase is {passphrase}. "), enc(QUESTION)
    bos = bos_id(tokenizer)
    head = [bos] if bos is not None else []
    n_hay = length - len(head) - len(needle) - len(question)
    if n_hay < 16:
        raise LowbitError(f"NIAH length {length} is too short for the needle and question ({length - n_hay} tokens)")
    stream = corpus_tokens(tokenizer)
    if offset + n_hay > len(stream):
        raise LowbitError(f"NIAH length {length} exceeds the pydoc corpus ({len(stream)} tokens)")
    hay = list(stream[offset : offset + n_hay])
    at = int(round(depth * n_hay))
    for j in range(at, max(at - 64, 0), -1):  # prefer a line break just before the insertion point
        if "\n" in tokenizer.decode(hay[j - 1 : j]):
            at = j
            break
    ids = head + hay[:at] + needle + hay[at:]
    return ids + question, len(ids)


def trial(
    model,
    tokenizer,
    length: int,
    depth: float,
    make_cache: CacheFactory | None = None,
    seed: int = 0,
    max_new_tokens: int = 8,
    prefill_chunk: int = 1024,
) -> Trial:
    import torch

    from lowbit.cache import cache_kwarg

    if not 0.0 <= depth <= 1.0:
        raise LowbitError(f"NIAH depth must be in [0, 1] (got {depth})")
    if length > model.config.max_position_embeddings:
        raise LowbitError(f"NIAH length {length} exceeds the model's context ({model.config.max_position_embeddings})")
    rng = random.Random(f"{seed}/{length}/{depth}")
    passphrase = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    ids, q_start = _prompt(tokenizer, length, depth, passphrase, offset=rng.randrange(0, 20000))
    make_cache = make_cache or dynamic_cache
    kw = cache_kwarg(model)
    cache = make_cache(model.config)
    device = model_device(model)
    ids_t = torch.tensor([ids], device=device)
    eos = tokenizer.eos_token_id

    def step(s: int, e: int, token_ids=None):
        x = ids_t[:, s:e] if token_ids is None else token_ids
        pos = torch.arange(s, e, device=device).reshape(1, -1)
        return model(input_ids=x, position_ids=pos, use_cache=True, logits_to_keep=1, **{kw: cache}).logits[0, -1]

    with torch.inference_mode():
        for s in range(0, q_start, prefill_chunk):
            step(s, min(s + prefill_chunk, q_start))
        logits = step(q_start, len(ids))
        out: list[int] = []
        n = len(ids)
        for _ in range(max_new_tokens):
            tok = int(logits.argmax())
            if tok == eos:
                break
            out.append(tok)
            if len(_words(tokenizer.decode(out))) > 2 or "\n" in tokenizer.decode(out):
                break
            logits = step(n, n + 1, torch.tensor([[tok]], device=device))
            n += 1
    answer = tokenizer.decode(out)
    return Trial(length, depth, passphrase, answer, _words(answer)[:2] == passphrase.split())


def niah(
    model,
    tokenizer,
    lengths: tuple[int, ...] | None = None,
    depths: tuple[float, ...] = DEPTHS,
    make_cache: CacheFactory | None = None,
    seed: int = 0,
    repeats: int = 1,
    progress: bool = True,
    **kw,
) -> NiahResult:
    """`repeats` trials (seeds seed, seed+1, ...: other passphrases and haystacks) per (length, depth);
    the score is the fraction found. kw goes to `trial` (max_new_tokens, prefill_chunk)."""
    lengths = tuple(lengths or default_lengths(model))
    if repeats < 1 or not lengths or not depths:
        raise LowbitError("NIAH needs at least one length, one depth and one repeat")
    trials = []
    bar, task = progress_bar(progress, "needle in a haystack", len(lengths) * len(depths) * repeats)
    with bar:
        for length in lengths:
            for depth in depths:
                for r in range(repeats):
                    trials.append(trial(model, tokenizer, length, depth, make_cache, seed + r, **kw))
                    bar.advance(task)
    return NiahResult(trials)
