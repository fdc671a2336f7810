"""llama-perplexity's protocol (llama.cpp 0c1e57098, tools/perplexity/perplexity.cpp): `--protocol llama.cpp`.

lowbit's own protocol (lowbit.eval.metrics) prefills half a window and decodes the rest through the cache in
chunks. This one follows llama-perplexity instead, so that a figure can be set beside llama.cpp's own:

  text     llama-perplexity -f FILE: one trailing newline dropped, escapes processed (llama_tokens.perplexity_text)
  tokens   tokenized once, BOS first iff the GGUF's add_bos_token, with llama.cpp's splitting (llama_tokens)
  windows  n_chunk = n_tokens // n_ctx contiguous windows tokens[i*n_ctx, (i+1)*n_ctx), no overlap, the rest
           dropped, capped by --chunks (here: --tokens // n_ctx); with add_bos the first token of every window is
           *overwritten* by BOS (window i >= 1 loses one text token to it)
  forward  each window in one pass with a fresh cache: every token's K and V go into the cache and attention
           reads them back from it (a quantized cache quantizes the prompt's own K/V, as llama.cpp's does)
  scored   first = n_ctx // 2; tokens first+1 .. n_ctx-1 from the logits at first .. n_ctx-2
           (n_ctx - 1 - n_ctx // 2 per window)
  PPL      exp(mean NLL), ± = PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (count - 1)) (tokens taken as independent)
  KLD      against a base run (f16 cache; for weights the model as stored, f16 cache): the base log-probabilities
           stored as llama.cpp stores them (uint16 steps over [max-16, max]), KL(base||test) summed over the
           vocabulary entries with log p_base > -16 only; mean ± sqrt(var / (count - 1)) (0 for count <= 10);
           ln(PPL/PPL_base) ± from the covariance of the two NLL series; same top token ± sqrt(p(1-p)/(count-1)).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from lowbit.cache import cache_kwarg
from lowbit.errors import LowbitError
from lowbit.eval import PROTOCOLS, llama_tokens, text
from lowbit.eval.bootstrap import WindowStats
from lowbit.eval.lm import load_tokenizer
from lowbit.eval.metrics import Quality
from lowbit.eval.text import Windows
from lowbit.models.gguf_header import read_header
from lowbit.progress import progress_bar

LOG_PROB_CUT = -16.0  # llama-perplexity's KL divergence skips base entries at or below this log-probability
UINT16_STEPS = 65535.0


def check(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise LowbitError(f"--protocol must be one of {', '.join(PROTOCOLS)} (got {protocol!r})")
    return protocol


# ---------------------------------------------------------------------------------------------- tokens, windows

@functools.lru_cache(maxsize=4)
def _stream(path, escape: bool) -> tuple[int, ...]:

    data = llama_tokens.perplexity_text(text.corpus(), escape)
    return tuple(llama_tokens.tokenize(load_tokenizer(path), path, data))


def corpus_tokens(path, escape: bool = True) -> tuple[int, ...]:
    """The evaluation text as llama-perplexity tokenizes it for the GGUF at `path` (BOS first iff add_bos_token)."""
    return _stream(path, escape)


def bos_id(path) -> int | None:
    """BOS if llama.cpp adds it for this GGUF (tokenizer.ggml.add_bos_token), else None."""
    meta = read_header(path).metadata
    add = meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama")
    return meta.get("tokenizer.ggml.bos_token_id") if add else None


def chunk(tokens: Sequence[int], n_ctx: int, max_chunks: int | None = None, bos: int | None = None) -> Windows:
    """llama-perplexity's windows over `tokens` (already holding the leading BOS when the model adds one)."""
    import torch

    if n_ctx < 4:
        raise LowbitError(f"context must be at least 4 tokens (got {n_ctx})")
    if len(tokens) < 2 * n_ctx:  # llama-perplexity refuses the same
        raise LowbitError(f"need at least 2 * context = {2 * n_ctx} tokens, the text has {len(tokens)}")
    n = len(tokens) // n_ctx
    if max_chunks is not None:
        if max_chunks < 1:
            raise LowbitError(f"need at least one window (got {max_chunks})")
        n = min(n, max_chunks)
    ids = torch.tensor(list(tokens[: n * n_ctx]), dtype=torch.long).reshape(n, n_ctx).clone()
    if bos is not None:
        ids[:, 0] = bos
    return Windows(ids, n_ctx, n_ctx // 2)


def windows(path, n_tokens: int, n_ctx: int, escape: bool = True) -> Windows:
    """`n_tokens // n_ctx` windows of the evaluation text (llama-perplexity's --chunks = n_tokens // n_ctx)."""
    if n_tokens < n_ctx:
        raise LowbitError(f"need at least one window: tokens ({n_tokens}) < context ({n_ctx})")
    return chunk(corpus_tokens(path, escape), n_ctx, n_tokens // n_ctx, bos_id(path))


def token_digest(win: Windows) -> str:
    """sha256 (first 16 hex digits) of the windows' int32 ids: compare with llama.cpp's (its .kld file holds them)."""
    return hashlib.sha256(win.ids.numpy().astype("<i4").tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- forward pass

def window_logits(model, ids, first: int, make_cache: Callable[[object], object] | None):
    """float32 logits [n_ctx - 1 - first, vocab] of one window in one pass (through a fresh cache when given)."""
    import torch

    n_ctx = int(ids.shape[-1])
    dev = getattr(model, "device", None)  # a model on a GPU: ids go there, the logits come back to the CPU
    ids = ids.reshape(1, n_ctx).to(dev)
    pos = torch.arange(n_ctx, device=dev).reshape(1, n_ctx)
    kw = {"use_cache": False} if make_cache is None else {cache_kwarg(model): make_cache(model.config), "use_cache": True}
    with torch.inference_mode():
        out = model(input_ids=ids, position_ids=pos, logits_to_keep=n_ctx - first, **kw)
    return out.logits[0, :-1].float().cpu()


# -------------------------------------------------------------------------------------------- llama.cpp's sums

def base_log_probs(logits):
    """What llama-perplexity --kl-divergence-base keeps of one position's logits, read back as log-probabilities.

    Logits within 16 of the maximum are stored as uint16 steps of (max - min)/65535 above min = max(min logit,
    max - 16); everything at or below min reads back as min's log-probability. float64 [n, vocab].
    """
    import torch

    if logits.shape[0] > 32:  # row blocks bound the float64 temporaries (Gemma: 2 MB per row and array)
        return torch.cat([base_log_probs(logits[i:i + 32]) for i in range(0, logits.shape[0], 32)])
    x = logits.double()
    mx = x.max(-1, keepdim=True).values
    mn = torch.maximum(x.min(-1, keepdim=True).values, mx - 16)
    lse = torch.log(torch.exp(x - mx).sum(-1, keepdim=True))
    scale = (mx - mn) / UINT16_STEPS
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.where(x > mn, torch.floor((x - mn) / safe + 0.5), torch.zeros_like(x))  # nearest_int
    q = torch.where(scale > 0, q, torch.zeros_like(q))
    return scale * q + (mn - mx - lse)


@dataclass
class Sums:
    """Running sums of one series (llama.cpp's kl_divergence_result, plus the plain PPL sums)."""

    count: int = 0
    nll: float = 0.0
    nll2: float = 0.0
    nll_base: float = 0.0
    nll_base2: float = 0.0
    nll_nll_base: float = 0.0
    kld: float = 0.0
    kld2: float = 0.0
    same_top: int = 0

    def add(self, logits, targets, base_lp=None, rows: int = 32) -> None:
        """Fold in one window: test logits [n, vocab], targets [n], base log-probs [n, vocab] (base_log_probs).

        float64 throughout, `rows` positions at a time (Gemma's 262k vocabulary makes 2 MB per position and array).
        """
        for i in range(0, int(targets.shape[0]), rows):
            self._add(logits[i:i + rows], targets[i:i + rows], None if base_lp is None else base_lp[i:i + rows])

    def _add(self, logits, targets, base_lp) -> None:
        import torch

        lp = torch.log_softmax(logits.double(), -1)
        nll = -lp.gather(-1, targets[:, None]).squeeze(-1)
        self.count += int(nll.numel())
        self.nll += float(nll.sum())
        self.nll2 += float((nll * nll).sum())
        if base_lp is None:
            return
        nll_b = -base_lp.gather(-1, targets[:, None]).squeeze(-1)
        self.nll_base += float(nll_b.sum())
        self.nll_base2 += float((nll_b * nll_b).sum())
        self.nll_nll_base += float((nll * nll_b).sum())
        keep = base_lp > LOG_PROB_CUT
        kl = torch.where(keep, base_lp.exp() * (base_lp - lp), torch.zeros_like(lp)).sum(-1)
        self.kld += float(kl.sum())
        self.kld2 += float((kl * kl).sum())
        self.same_top += int((logits.argmax(-1) == base_lp.argmax(-1)).sum())


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """llama-perplexity's mean_and_uncertainty: (mean, sqrt(var / (count - 1))), uncertainty 0 for count <= 10."""
    if count < 1:
        return 0.0, 0.0
    f = total / count
    df = total2 / count - f * f
    return f, math.sqrt(df / (count - 1)) if df > 0 and count > 10 else 0.0


def ppl_and_error(s: Sums) -> tuple[float, float]:
    """llama-perplexity's "Final estimate: PPL = X +/- Y" (no small-count rule there, unlike the KLD summary)."""
    mean = s.nll / s.count
    var = s.nll2 / s.count - mean * mean
    ppl = math.exp(mean)
    return ppl, ppl * math.sqrt(var / (s.count - 1)) if var > 0 and s.count > 1 else 0.0


def summary(s: Sums) -> dict:
    """The figures llama-perplexity --kl-divergence prints, from one series' sums (a base must have been given)."""
    n = s.count
    log_ppl, log_ppl_unc = mean_and_uncertainty(s.nll, s.nll2, n)
    log_base, log_base_unc = mean_and_uncertainty(s.nll_base, s.nll_base2, n)
    cov = (s.nll_nll_base / n - (s.nll / n) * (s.nll_base / n)) / (n - 1) if n >= 10 else 0.0
    ln_ratio = log_ppl - log_base
    ln_ratio_unc = math.sqrt(max(log_ppl_unc ** 2 + log_base_unc ** 2 - 2 * cov, 0.0))
    kld, kld_unc = mean_and_uncertainty(s.kld, s.kld2, n)
    top = s.same_top / n
    return {
        "ppl": math.exp(log_ppl), "ppl_unc": math.exp(log_ppl) * log_ppl_unc,
        "ppl_base": math.exp(log_base), "ppl_base_unc": math.exp(log_base) * log_base_unc,
        "ln_ppl_ratio": ln_ratio, "ln_ppl_ratio_unc": ln_ratio_unc,
        "ppl_ratio": math.exp(ln_ratio), "ppl_ratio_unc": math.exp(ln_ratio) * ln_ratio_unc,
        "kld": kld, "kld_unc": kld_unc,
        "same_top": top, "same_top_unc": math.sqrt(top * (1 - top) / (n - 1)) if n > 1 else 0.0,
        "tokens": n,
    }


# ----------------------------------------------------------------------------------------------- evaluation

Run = tuple  # (model, make_cache or None)


@dataclass(frozen=True)
class Result:
    """One test series against the base, as llama-perplexity --kl-divergence reports it."""

    ppl: float
    ppl_unc: float
    ppl_base: float  # from the base as stored (uint16): what llama.cpp's "Mean PPL(base)" shows
    ppl_base_unc: float
    ppl_ratio: float
    ppl_ratio_unc: float
    ln_ppl_ratio: float
    ln_ppl_ratio_unc: float
    kld: float
    kld_unc: float
    same_top: float
    same_top_unc: float
    tokens: int
    windows: int
    context: int
    seconds: float
    stats: WindowStats | None = None  # per-window sums (NLL, KLD, same top), for bootstrap intervals

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stats"] = None if self.stats is None else self.stats.as_dict()
        return d


@dataclass(frozen=True)
class Base:
    """The base series on its own float logits: llama-perplexity's "Final estimate" of the base run."""

    ppl: float
    ppl_unc: float
    stats: WindowStats  # per-window NLL and scored tokens


def compare(win: Windows, base: Run, tests: Sequence[Run], *, progress: bool = True,
            description: str = "llama.cpp protocol",
            on_base: Callable[[int, object], None] | None = None) -> tuple[Base, list[Result]]:
    """The base on its own, and each test series against the base, window by window.

    Nothing is stored between windows: the base's logits of a window are computed once and compared with every
    test's, so several formats cost one base pass. on_base(w, logits) sees each window's base logits.
    """
    t0 = time.perf_counter()
    first = win.prefill
    base_sums, sums = Sums(), [Sums() for _ in tests]
    base_nll, per_window = [], [([], [], []) for _ in tests]  # per test: NLL, KLD, same-top sums of each window
    bar, task = progress_bar(progress, description, win.tokens * (1 + len(tests)))
    with bar:
        for w in range(win.n_windows):
            ids, targets = win.ids[w], win.ids[w, first + 1:]
            b_logits = window_logits(base[0], ids, first, base[1])
            if on_base is not None:
                on_base(w, b_logits)
            before = base_sums.nll
            base_sums.add(b_logits, targets)
            base_nll.append(base_sums.nll - before)
            b_lp = base_log_probs(b_logits)
            bar.advance(task, win.scored)
            for (model, make_cache), s, (nll, kld, top) in zip(tests, sums, per_window):
                was = (s.nll, s.kld, s.same_top)
                s.add(window_logits(model, ids, first, make_cache), targets, b_lp)
                nll.append(s.nll - was[0])
                kld.append(s.kld - was[1])
                top.append(s.same_top - was[2])
                bar.advance(task, win.scored)
    seconds = time.perf_counter() - t0
    counts = np.full(win.n_windows, win.scored)
    results = [Result(**summary(s), windows=win.n_windows, context=win.context, seconds=seconds,
                      stats=WindowStats(np.array(nll), counts, np.array(kld), np.array(top)))
               for s, (nll, kld, top) in zip(sums, per_window)]
    ppl, unc = ppl_and_error(base_sums)
    return Base(ppl, unc, WindowStats(np.array(base_nll), counts)), results


def describe(path, win: Windows, escape: bool = True) -> dict:
    """What a result needs to say about the protocol, for a reader to set it beside llama.cpp's."""
    return {
        "protocol": "llama.cpp",
        "protocol_source": "llama.cpp 0c1e57098 tools/perplexity/perplexity.cpp",
        "protocol_text": "lowbit.eval.text.corpus() as llama-perplexity -f reads it: one trailing newline dropped, "
                         + ("escapes processed (its default)" if escape else "no escapes (--no-escape)"),
        "tokenizer": "the GGUF vocabulary split as llama.cpp splits it (lowbit.eval.llama_tokens)",
        "bos_overwrite": bos_id(path) is not None,
        "scored_per_window": win.scored,
        "token_ids_sha256_16": token_digest(win),
    }


def quality(path, n_tokens: int, n_ctx: int, base: Run, test: Run, *, progress: bool = True,
            description: str = "llama.cpp protocol", escape: bool = True):
    """One test series against its base under llama-perplexity's protocol: (metrics.Quality, the protocol's fields).

    Quality.ppl_reference is the base's own PPL (llama-perplexity's "Final estimate" of the base run) and its
    stats feed lowbit's bootstrap intervals; "llama_cpp_sums" holds the figures with the ± llama.cpp prints
    (`ppl_base_stored`: the base as the KL-divergence run reads it back, uint16, which its `ppl_ratio` divides by).
    """

    win = windows(path, n_tokens, n_ctx, escape)
    b, (r,) = compare(win, base, [test], progress=progress, description=description)
    q = Quality(ppl=r.ppl, kld=r.kld, top1=r.same_top, tokens=r.tokens, context=n_ctx, prefill=win.prefill,
                chunk=None, windows=win.n_windows, ppl_reference=b.ppl, seconds=r.seconds, stats=r.stats,
                reference_stats=b.stats)
    sums = {"ppl": r.ppl, "ppl_unc": r.ppl_unc, "ppl_f16": b.ppl, "ppl_f16_unc": b.ppl_unc,
            "ppl_base_stored": r.ppl_base, "ppl_ratio": r.ppl_ratio, "ppl_ratio_unc": r.ppl_ratio_unc,
            "kld": r.kld, "kld_unc": r.kld_unc, "same_top": r.same_top, "same_top_unc": r.same_top_unc}
    return q, {**describe(path, win, escape), "llama_cpp_sums": sums}
