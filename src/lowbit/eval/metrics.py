"""Perplexity, KL divergence and top-1 agreement of a model on evaluation windows.

What is measured, per window of `context` tokens (see text.Windows):

  no cache factory   one forward pass over the window (the model as it is; reference and weight evals);
  make_cache given   the first `prefill` tokens go through the model in one pass, filling a fresh
                     cache = make_cache(model.config); the rest of the window is then teacher-forced
                     `chunk` tokens at a time, each chunk attending over everything in the cache. So
                     every scored token's attention reads keys/values back from the cache object,
                     which is where a quantized KV cache does its work. chunk=1 is pure decoding.

Either way the scored predictions are those of positions prefill .. context-2 (targets prefill+1 ..
context-1), so both modes score the same tokens and, with transformers' plain DynamicCache, give the
same logits up to float rounding (a test checks it).

  ppl    exp(mean negative log-likelihood of the targets)
  kld    mean over scored tokens of KL(reference || test) in nats, over the full vocabulary, as
         llama.cpp's --kl-divergence reports it
  top1   fraction of scored tokens where test and reference agree on the most likely next token

The reference is the same windows through a reference model/cache. Its float32 log-probabilities
are kept exactly (in memory up to REFERENCE_RAM_BYTES, beyond that in an unlinked temporary file,
memory-mapped: Gemma 3's 262k vocabulary makes 2 GB at the default 2040 scored tokens) and reused
across evaluations, so comparing many formats computes it once. A model against itself measures
|KLD| < 1e-8 (float32 summation); 16-bit storage, as llama.cpp's --kl-divergence-base uses, would
add noise of about 1e-5 nats, the size of a good 8-bit KV cache's whole effect.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from lowbit.errors import LowbitError
from lowbit.eval.text import Windows
from lowbit.progress import progress_bar

# make_cache(model.config) -> a transformers Cache; called once per window (and per NIAH trial).
CacheFactory = Callable[[object], object]


def dynamic_cache(config):
    """transformers' own full-precision cache (sliding-window layers where the config has them)."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


@dataclass(frozen=True)
class Quality:
    ppl: float
    kld: float | None  # None without a reference
    top1: float | None
    tokens: int  # scored predictions
    context: int
    prefill: int
    chunk: int | None  # None: one forward pass per window, no cache
    windows: int
    ppl_reference: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """Reference next-token distributions over a set of windows."""

    logprobs: object  # numpy float32 [windows, scored, vocab] log-softmax (an array or a memmap)
    argmax: object  # torch.int64 [windows, scored]
    ppl: float
    windows_key: str
    name: str

    def window(self, w: int):
        """Log-probabilities of window w as a float32 tensor [scored, vocab]."""
        import torch

        return torch.from_numpy(np.array(self.logprobs[w], dtype=np.float32))


def window_logits(model, ids, prefill: int, make_cache: CacheFactory | None = None, chunk: int = 32):
    """float32 logits [context - prefill - 1, vocab] of the scored positions of one window ([context] ids)."""
    import torch

    from lowbit.cache import cache_kwarg

    context = int(ids.shape[-1])
    ids = ids.reshape(1, context)
    keep = context - prefill  # positions prefill .. context-1; the last one's target is outside the window
    with torch.inference_mode():
        if make_cache is None:
            out = model(input_ids=ids, use_cache=False, logits_to_keep=keep)
            return out.logits[0, :-1].float()
        if chunk < 1:
            raise LowbitError(f"chunk must be >= 1 (got {chunk})")
        kw = cache_kwarg(model)
        cache = make_cache(model.config)
        pos = torch.arange(context).reshape(1, context)
        model(input_ids=ids[:, :prefill], position_ids=pos[:, :prefill], use_cache=True, logits_to_keep=1, **{kw: cache})
        parts = []
        for s in range(prefill, context, chunk):
            e = min(s + chunk, context)
            out = model(input_ids=ids[:, s:e], position_ids=pos[:, s:e], use_cache=True, **{kw: cache})
            parts.append(out.logits[0].float())
        return torch.cat(parts)[:-1]


def _nll(logprobs, targets):
    return -logprobs.gather(-1, targets[:, None]).squeeze(-1)


_REFERENCES: "OrderedDict[tuple, tuple[object, Reference]]" = OrderedDict()
MAX_CACHED_REFERENCES = 2
REFERENCE_RAM_BYTES = 512 << 20  # larger references live in a memory-mapped temporary file


def _reference_store(shape: tuple[int, int, int]):
    if np.prod(shape) * 4 <= REFERENCE_RAM_BYTES:
        return np.empty(shape, dtype=np.float32)
    # An unlinked file: the OS frees it when the process ends, however it ends.
    return np.memmap(tempfile.TemporaryFile(prefix="lowbit-ref-"), dtype=np.float32, mode="w+", shape=shape)


def reference(
    model,
    windows: Windows,
    make_cache: CacheFactory | None = None,
    chunk: int = 32,
    name: str | None = None,
    progress: bool = True,
) -> Reference:
    """Reference distributions of `model` on `windows` (cached per model, windows and name).

    name identifies the reference setting in the cache (e.g. "f16-cache"); it defaults to "model" when
    make_cache is None, else to the factory's qualified name and the chunk size.
    """
    import torch

    if name is None:
        name = "model" if make_cache is None else f"{getattr(make_cache, '__qualname__', repr(make_cache))}/chunk{chunk}"
    key = (id(model), windows.key, name)
    hit = _REFERENCES.get(key)
    if hit is not None and hit[0] is model:
        _REFERENCES.move_to_end(key)
        return hit[1]
    store, argmaxes, nll = None, [], 0.0
    bar, task = progress_bar(progress, f"reference ({name})", windows.tokens)
    with bar:
        for w in range(windows.n_windows):
            logits = window_logits(model, windows.ids[w], windows.prefill, make_cache, chunk)
            lp = torch.log_softmax(logits, dim=-1)
            if store is None:
                store = _reference_store((windows.n_windows, *lp.shape))
            store[w] = lp.numpy()
            nll += float(_nll(lp, windows.ids[w, windows.prefill + 1 :]).sum())
            argmaxes.append(logits.argmax(-1))
            bar.advance(task, windows.scored)
    ref = Reference(store, torch.stack(argmaxes), math.exp(nll / windows.tokens), windows.key, name)
    _REFERENCES[key] = (model, ref)  # holding the model keeps id(model) from being reused while cached
    while len(_REFERENCES) > MAX_CACHED_REFERENCES:
        _REFERENCES.popitem(last=False)
    return ref


def evaluate(
    model,
    windows: Windows,
    *,
    make_cache: CacheFactory | None = None,
    chunk: int = 32,
    reference: Reference | None = None,
    progress: bool = True,
    description: str = "eval",
) -> Quality:
    """Perplexity of `model` on `windows`, plus KLD and top-1 against `reference` when given."""
    import torch

    if reference is not None and reference.windows_key != windows.key:
        raise LowbitError("the reference was computed on different windows")
    t0 = time.perf_counter()
    nll = kld = agree = 0.0
    bar, task = progress_bar(progress, description, windows.tokens)
    with bar:
        for w in range(windows.n_windows):
            logits = window_logits(model, windows.ids[w], windows.prefill, make_cache, chunk)
            lp = torch.log_softmax(logits, dim=-1)
            nll += float(_nll(lp, windows.ids[w, windows.prefill + 1 :]).sum())
            if reference is not None:
                ref = reference.window(w)
                if ref.shape != lp.shape:
                    raise LowbitError(f"reference vocabulary/shape {tuple(ref.shape)} differs from the model's {tuple(lp.shape)}")
                kld += float((ref.exp() * (ref - lp)).sum(-1, dtype=torch.float64).sum())
                agree += float((logits.argmax(-1) == reference.argmax[w]).sum())
            bar.advance(task, windows.scored)
    n = windows.tokens
    return Quality(
        ppl=math.exp(nll / n),
        kld=kld / n if reference is not None else None,
        top1=agree / n if reference is not None else None,
        tokens=n,
        context=windows.context,
        prefill=windows.prefill,
        chunk=chunk if make_cache is not None else None,
        windows=windows.n_windows,
        ppl_reference=reference.ppl if reference is not None else None,
        seconds=time.perf_counter() - t0,
    )
