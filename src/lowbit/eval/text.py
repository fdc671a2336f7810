"""The evaluation text: real English prose from CPython's `pydoc_data.topics` (about 465k characters).

The topics are joined in sorted-key order with blank lines, so the corpus is the same on every run
of a given Python version (other versions edit the topics: `source()` names the version and a hash of
the text); it is tokenized once per tokenizer and cut into windows of `context` tokens.
$LOWBIT_EVAL_TEXT, a UTF-8 file, replaces it (e.g. the same text written out on another machine with
`python -c "from lowbit.eval.text import corpus; print(corpus(), end='')" > eval_text.txt`).
Models whose tokenizer prepends BOS (Gemma) get BOS as the first token of every window, as
llama.cpp's perplexity tool does; models that don't (SmolLM2) see plain text.

Evaluations take DEFAULT_TOKENS (32,768) text tokens unless told otherwise, or the whole corpus where it
is shorter (`default_tokens`): about 110k tokens here, so 64 windows of 512.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from dataclasses import dataclass

from lowbit.errors import LowbitError
from lowbit.safe_read import read_bounded, short

DEFAULT_TOKENS = 32_768
TEXT_ENV = "LOWBIT_EVAL_TEXT"
MAX_TEXT_BYTES = 256 << 20


def _text_file() -> str | None:
    return os.environ.get(TEXT_ENV) or None


@functools.lru_cache(maxsize=2)
def _corpus(path: str | None) -> str:
    if path is not None:
        raw = read_bounded(path, MAX_TEXT_BYTES, f"text file (${TEXT_ENV})")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LowbitError(f"${TEXT_ENV}: {short(path)} is not UTF-8 text") from None
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def corpus() -> str:
    """The evaluation text ($LOWBIT_EVAL_TEXT's file, else the pydoc topics)."""
    return _corpus(_text_file())


def source() -> dict:
    """Which text: its name, size and a hash (the same hash means the same text, on any machine)."""
    text = corpus()
    path = _text_file()
    name = f"file {os.path.basename(path)} (${TEXT_ENV})" if path else \
        f"pydoc_data.topics of Python {platform.python_version()}"
    return {"name": name, "characters": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


def default_tokens(tokenizer) -> int:
    """DEFAULT_TOKENS, or the whole corpus where it has fewer tokens."""
    return min(DEFAULT_TOKENS, len(corpus_tokens(tokenizer)))


@functools.lru_cache(maxsize=8)
def _stream(tokenizer, path: str | None) -> tuple[int, ...]:
    return tuple(tokenizer(_corpus(path), add_special_tokens=False)["input_ids"])


def corpus_tokens(tokenizer) -> tuple[int, ...]:
    """The whole corpus as token ids, without special tokens (cached per tokenizer and text)."""
    return _stream(tokenizer, _text_file())


def bos_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer prepends one to plain text, else None."""
    ids = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    return bos if bos is not None and ids and ids[0] == bos else None


def eval_tokens(tokenizer, n_tokens: int, offset: int = 0) -> list[int]:
    """`n_tokens` consecutive corpus tokens starting at `offset`."""
    stream = corpus_tokens(tokenizer)
    if n_tokens < 1 or offset < 0:
        raise LowbitError(f"token count must be >= 1 and offset >= 0 (got {n_tokens}, {offset})")
    if offset + n_tokens > len(stream):
        raise LowbitError(f"the evaluation text ({source()['name']}) has {len(stream):,} tokens for this tokenizer; "
                          f"asked for {offset + n_tokens:,}")
    return list(stream[offset : offset + n_tokens])


@dataclass(frozen=True)
class Windows:
    """Evaluation windows: `ids[i]` is one window of `context` tokens, the model sees each independently.

    Within a window, the first `prefill` tokens are context only; the model is scored on predicting
    tokens prefill+1 .. context-1 (llama.cpp's perplexity scores the second half the same way), so
    each window yields `scored` = context - prefill - 1 predictions.
    """

    ids: "object"  # torch.LongTensor [n_windows, context]
    context: int
    prefill: int

    @property
    def n_windows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def scored(self) -> int:
        return self.context - self.prefill - 1

    @property
    def tokens(self) -> int:
        """Scored predictions over all windows."""
        return self.n_windows * self.scored

    @functools.cached_property
    def key(self) -> str:
        """A fingerprint of the token ids and split, for caching reference logits."""
        h = hashlib.sha1(self.ids.numpy().tobytes())
        h.update(f"{self.context}/{self.prefill}".encode())
        return h.hexdigest()[:16]


def windows(tokenizer, n_tokens: int = 4096, context: int = 512, prefill: int | None = None, offset: int = 0) -> Windows:
    """Cut `n_tokens` corpus tokens into n_tokens // context windows of `context` tokens.

    prefill defaults to context // 2. With a BOS-prepending tokenizer each window is BOS + context - 1
    corpus tokens (the corpus is consumed contiguously either way).
    """
    import torch

    if context < 4:
        raise LowbitError(f"context must be at least 4 tokens (got {context})")
    prefill = context // 2 if prefill is None else prefill
    if not 1 <= prefill <= context - 2:
        raise LowbitError(f"prefill must be between 1 and context - 2 = {context - 2} (got {prefill})")
    n = n_tokens // context
    if n < 1:
        raise LowbitError(f"need at least one window: tokens ({n_tokens}) < context ({context})")
    bos = bos_id(tokenizer)
    body = context - (bos is not None)
    stream = eval_tokens(tokenizer, n * body, offset)
    rows = []
    for i in range(n):
        chunk = stream[i * body : (i + 1) * body]
        rows.append(([bos] if bos is not None else []) + chunk)
    return Windows(torch.tensor(rows, dtype=torch.long), context, prefill)
