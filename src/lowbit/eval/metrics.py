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
add noise of about 1e-5 nats, the size of a good 8-bit KV cache's whole effect. On a GPU the reference
stays in GPU memory when it fits (Gemma 3 at 32K text tokens: 17 GB).

Per-window sums (NLL, KLD, top-1 matches, scored tokens) are kept beside the totals, for the reference
and for every evaluation (`Quality.windows_stats`, `Reference.window_nll`): lowbit.eval.bootstrap turns
them into confidence intervals, paired over the same windows.

The model may live on any device (lm.load_model(..., device=)): the windows go to the model's device,
and everything per token is computed there; only per-window sums come back to the host.
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
from lowbit.eval.bootstrap import WindowStats
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
    stats: WindowStats | None = None  # per-window sums (bootstrap intervals)
    reference_stats: WindowStats | None = None  # the reference's, on the same windows

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stats"] = None if self.stats is None else self.stats.as_dict()
        d["reference_stats"] = None if self.reference_stats is None else self.reference_stats.as_dict()
        return d


@dataclass(frozen=True)
class Reference:
    """Reference next-token distributions over a set of windows."""

    logprobs: object  # float32 [windows, scored, vocab] log-softmax: numpy array, memmap, or a device tensor
    argmax: object  # torch.int64 [windows, scored], on the model's device
    ppl: float
    windows_key: str
    name: str
    window_nll: tuple[float, ...] = ()  # per-window NLL sums
    window_tokens: tuple[int, ...] = ()

    @property
    def stats(self) -> WindowStats:
        return WindowStats(np.array(self.window_nll), np.array(self.window_tokens))

    def window(self, w: int, device=None):
        """Log-probabilities of window w as a float32 tensor [scored, vocab] (on `device` if given)."""
        import torch

        if isinstance(self.logprobs, torch.Tensor):
            t = self.logprobs[w]
        else:
            t = torch.from_numpy(np.array(self.logprobs[w], dtype=np.float32))
        return t if device is None else t.to(device)


def model_device(model):
    """The device a model's parameters live on (the CPU for a model without parameters)."""
    import torch

    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def window_logits(model, ids, prefill: int, make_cache: CacheFactory | None = None, chunk: int = 32):
    """float32 logits [context - prefill - 1, vocab] of the scored positions of one window ([context] ids)."""
    import torch

    from lowbit.cache import cache_kwarg

    context = int(ids.shape[-1])
    device = model_device(model)
    ids = ids.reshape(1, context).to(device)
    keep = context - prefill  # positions prefill .. context-1; the last one's target is outside the window
    with torch.inference_mode():
        if make_cache is None:
            out = model(input_ids=ids, use_cache=False, logits_to_keep=keep)
            return out.logits[0, :-1].float()
        if chunk < 1:
            raise LowbitError(f"chunk must be >= 1 (got {chunk})")
        kw = cache_kwarg(model)
        cache = make_cache(model.config)
        pos = torch.arange(context, device=device).reshape(1, context)
        model(input_ids=ids[:, :prefill], position_ids=pos[:, :prefill], use_cache=True, logits_to_keep=1, **{kw: cache})
        parts = []
        for s in range(prefill, context, chunk):
            e = min(s + chunk, context)
            out = model(input_ids=ids[:, s:e], position_ids=pos[:, s:e], use_cache=True, **{kw: cache})
            parts.append(out.logits[0].float())
        return torch.cat(parts)[:-1]


def _nll(logprobs, targets):
    return -logprobs.gather(-1, targets[:, None]).squeeze(-1)


def _targets(windows: Windows, w: int, device):
    return windows.ids[w, windows.prefill + 1 :].to(device)


_REFERENCES: "OrderedDict[tuple, tuple[object, Reference]]" = OrderedDict()
MAX_CACHED_REFERENCES = 2
REFERENCE_RAM_BYTES = 512 << 20  # larger references live in a memory-mapped temporary file


GPU_RESERVE_BYTES = 8 << 30  # left free on the GPU beside a reference kept there (activations, caches)


def _reference_store(shape: tuple[int, int, int], device=None):
    import torch

    nbytes = int(np.prod(shape)) * 4
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if nbytes + GPU_RESERVE_BYTES <= free:
            return torch.empty(shape, dtype=torch.float32, device=device)
    if nbytes <= REFERENCE_RAM_BYTES:
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
    store, argmaxes, nll = None, [], []
    device = model_device(model)
    bar, task = progress_bar(progress, f"reference ({name})", windows.tokens)
    with bar:
        for w in range(windows.n_windows):
            logits = window_logits(model, windows.ids[w], windows.prefill, make_cache, chunk)
            lp = torch.log_softmax(logits, dim=-1)
            if store is None:
                store = _reference_store((windows.n_windows, *lp.shape), device)
            if isinstance(store, torch.Tensor):
                store[w] = lp
            else:
                store[w] = lp.cpu().numpy()
            nll.append(float(_nll(lp, _targets(windows, w, device)).sum(dtype=torch.float64)))
            argmaxes.append(logits.argmax(-1))
            bar.advance(task, windows.scored)
    ref = Reference(store, torch.stack(argmaxes), math.exp(sum(nll) / windows.tokens), windows.key, name,
                    tuple(nll), (windows.scored,) * windows.n_windows)
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
    device = model_device(model)
    nll, kld, agree = [], [], []
    bar, task = progress_bar(progress, description, windows.tokens)
    with bar:
        for w in range(windows.n_windows):
            logits = window_logits(model, windows.ids[w], windows.prefill, make_cache, chunk)
            lp = torch.log_softmax(logits, dim=-1)
            nll.append(float(_nll(lp, _targets(windows, w, device)).sum(dtype=torch.float64)))
            if reference is not None:
                ref = reference.window(w, lp.device)
                if ref.shape != lp.shape:
                    raise LowbitError(f"reference vocabulary/shape {tuple(ref.shape)} differs from the model's {tuple(lp.shape)}")
                kld.append(float((ref.exp() * (ref - lp)).sum(-1, dtype=torch.float64).sum()))
                agree.append(int((logits.argmax(-1) == reference.argmax[w].to(logits.device)).sum()))
            bar.advance(task, windows.scored)
    n = windows.tokens
    counts = np.full(windows.n_windows, windows.scored)
    stats = WindowStats(np.array(nll), counts, np.array(kld) if reference is not None else None,
                        np.array(agree) if reference is not None else None)
    return Quality(
        ppl=math.exp(sum(nll) / n),
        kld=sum(kld) / n if reference is not None else None,
        top1=sum(agree) / n if reference is not None else None,
        tokens=n,
        context=windows.context,
        prefill=windows.prefill,
        chunk=chunk if make_cache is not None else None,
        windows=windows.n_windows,
        ppl_reference=reference.ppl if reference is not None else None,
        seconds=time.perf_counter() - t0,
        stats=stats,
        reference_stats=reference.stats if reference is not None else None,
    )
