"""What a weight format costs on a real model (`lowbit eval weights`).

The reference is the model *as stored*: the GGUF's own (already 4/5/8-bit) weights, dequantized
(SmolLM2 ships as Q4_1, Gemma 3 270M as Q4_K_M). Each format is applied to those weights with
llama.cpp's mix rules (the planner's, as `lowbit quantize` writes them: e.g. the tied embedding stays
Q8_0), the model is rebuilt with the dequantized tensors, and compared on the pydoc text:
perplexity (context stated), KL divergence and top-1 agreement against the stored model.

Perplexity ratio, KLD and top-1 carry 95% intervals: a bootstrap over windows, paired with the stored
model on the same windows (lowbit.eval.bootstrap). The model runs in float32 on `device` (cpu or cuda).

Bits per weight are *exact* from what is stored: every scale, offset and rotation seed counted.
`bits_per_weight` is the whole model (all tensors, embeddings and norms included); `body_bits_per_weight`
counts only the transformer blocks' matrices.

Formats: stored (the file's own weights; `shipped`, the former word, still works), any quantizable
llama.cpp mix (Q8_0, Q4_0, Q4_1, Q5_0, MXFP4_MOE, TQ2_0, TQ1_0, Q1_0)
and lowbit's own formats (ARB1), which take the place of the ggml type they replace in the mix (Q1_0).
`pad` lets Q1_0/ARB1 take rows that are not whole 128-blocks (SmolLM2's 576): bytes counted, and
such a Q1_0 tensor is not a file llama.cpp can load.
"""

from __future__ import annotations

import json
import os
import time
from typing import NamedTuple

from lowbit.errors import LowbitError
from lowbit.limits import CALIB_TOKENS, EVAL_CONTEXT, EVAL_TOKENS, whole
from lowbit.safe_read import probe, read_bounded
from lowbit.safe_write import output_path, write_text
from lowbit.eval import lm, metrics, text
from lowbit.eval import protocol as llama_protocol
from lowbit.eval.bootstrap import interval_fields
from lowbit.eval.calibration import calibration_hessians
from lowbit.formats.kv import kv_format
from lowbit.formats.weights import mix, weight_type
from lowbit.cache import QuantizedKVCache
from lowbit.models.gguf_header import read_header
from lowbit.progress import honours_progress, progress_bar
from lowbit.quant import weights
from lowbit.quant.quantize_file import plan_types


class Row(NamedTuple):
    """One row of a results table: weights (and method), the KV cache it runs through, padded rows."""

    weights: str
    method: str | None = None
    kv: str | None = None
    pad: bool = False  # the 1-bit rows pad, so every model gets them (docs/weights.md)


LADDER = [  # the results table (docs/weights.md)
    Row("stored"), Row("Q8_0"), Row("Q4_0"), Row("TQ2_0", "ref"), Row("TQ1_0", "ref"),
    Row("TQ1_0", "absmean"), Row("TQ1_0", "absmean-group"), Row("Q1_0", "ref", pad=True), Row("Q1_0", "gptq", pad=True),
    Row("ARB1", "rht-arb", pad=True), Row("ARB1", "rht-arb-gptq", pad=True),
]
COMBINED = [  # weights x KV cache: "today" against "1-bit + TurboQuant", and the two mixed cells
    Row("stored", None, "f16"), Row("stored", None, "turbo3"), Row("Q1_0", "ref", "f16", True),
    Row("Q1_0", "ref", "turbo3", True), Row("ARB1", "rht-arb", "f16", True), Row("ARB1", "rht-arb", "turbo3", True),
]

# llama.cpp has no fallback type for Q1_0 (it refuses rows that are not whole blocks); with padding,
# Q4_0's mix makes the same choices for the rest (tied embedding -> Q8_0) and puts its own type exactly
# where Q1_0 would go.
_PADDED_MIX = {"Q1_0": "Q4_0"}


def _is_body(name: str) -> bool:
    return name.startswith("blk.") and not name.endswith("norm.weight") and len(name.split(".")) > 2


def own_type(fmt: str) -> str:
    """The type a format's own tensors get: lowbit's own format itself, else its mix's default type."""
    return fmt if weights.replaces_in_mix(fmt) else mix(fmt).default.name


def tensor_types(path, fmt: str, pure: bool, pad: bool) -> dict[str, str]:
    """Per-tensor types: the planner's mix rules; lowbit's own format (ARB1) takes the place of the type it replaces."""
    place = weights.replaces_in_mix(fmt) or fmt
    try:
        types = plan_types(path, place, pure)
    except LowbitError:
        # lowbit's own format takes rows of any length; Q1_0 only with padding
        if place not in _PADDED_MIX or not (pad or place != fmt):
            raise
        fallback = _PADDED_MIX[place]
        types = {n: (place if t == fallback else t) for n, t in plan_types(path, fallback, pure).items()}
    return {n: (fmt if t == place else t) for n, t in types.items()}


@honours_progress
def quantized_weights(model, fmt: str, method: str | None, pure: bool = False, pad: bool = False,
                      calib_tokens: int = 4096, progress: bool = True):
    """(replace dict for lm.load_model, bits dict, the format's own type) for one format."""
    path = lm.resolve(model)
    own_types = lm.gguf_tensor_types(path)
    src = lm.gguf_weights(path)
    n = {k: int(v.size) for k, v in src.items()}
    if fmt == "stored":
        nbytes = {t.name: t.nbytes for t in read_header(path).tensors}
        return {}, _bits(nbytes, n), "as stored"
    types = tensor_types(path, fmt, pure, pad)
    own = own_type(fmt)
    chosen = weights.method_for(own, method) if method is not None else None
    hessians = {}
    if chosen is not None and chosen.calibrated:
        targets = [k for k, t in types.items() if t == own]
        hessians = calibration_hessians(path, targets, n_tokens=calib_tokens, progress=progress)
    replace, nbytes = {}, {}
    bar, task = progress_bar(progress, f"quantize {fmt}" + (f" {method}" if method else ""), len(types), unit="tensors")
    with bar:
        for name, t in types.items():
            if t == own_types[name]:  # already stored that way: kept byte for byte
                nbytes[name] = weight_type(t).tensor_bytes(tuple(reversed(src[name].shape)))
            else:
                q = weights.quantize(src[name], t, method if t == own else None, hessian=hessians.get(name), pad=pad,
                                     name=name)
                replace[name] = q.values
                nbytes[name] = q.nbytes
            bar.advance(task)
    return replace, _bits(nbytes, n), own


def _bits(nbytes: dict[str, int], n: dict[str, int]) -> dict:
    body = [k for k in nbytes if _is_body(k)]
    return {
        "bits_per_weight": sum(nbytes.values()) * 8 / sum(n.values()),
        "body_bits_per_weight": sum(nbytes[k] for k in body) * 8 / sum(n[k] for k in body),
        "tensor_bytes": sum(nbytes.values()),
    }


def _cache_factory(kv: str | None, default=None):
    if kv is None:
        return default
    if kv.lower() == "f16":
        return default or metrics.dynamic_cache

    def make(config, _kv=kv.lower()):
        return QuantizedKVCache(config, _kv)

    make.__qualname__ = f"QuantizedKVCache[{kv.lower()}]"
    return make


def check_settings(model, tokens: int | None, context: int, calib_tokens: int, kv: str | None,
                   device: str = "cpu") -> None:
    """What every row of a run shares, checked before any model loads (a ladder checks it once)."""
    if tokens is not None:
        whole(tokens, "--tokens", EVAL_TOKENS)
    whole(context, "--context", EVAL_CONTEXT)
    whole(calib_tokens, "--calib-tokens", CALIB_TOKENS)
    if tokens is not None and tokens < context:
        raise LowbitError(f"--tokens ({tokens}) must be at least --context ({context})")
    if kv is not None:
        kv_format(kv)
    lm.torch_device(device)
    lm.resolve(model)


@honours_progress
def evaluate_weights(model, fmt: str, method: str | None = None, tokens: int | None = None, context: int = 512,
                     pure: bool = False, pad: bool = False, calib_tokens: int = 4096, progress: bool = True,
                     kv: str | None = None, device: str = "cpu", protocol: str = "lowbit") -> dict:
    """tokens: text tokens to evaluate (None: text.DEFAULT_TOKENS, or the whole text where it is shorter).
    protocol: "lowbit" (one pass per window, no cache) or "llama.cpp" (lowbit.eval.protocol, an f16 cache)."""
    t0 = time.perf_counter()
    llama_protocol.check(protocol)
    fmt = "stored" if fmt.lower() in ("stored", "shipped") else fmt.upper()
    check_settings(model, tokens, context, calib_tokens, kv, device)
    if fmt != "stored":  # refuse bad names before minutes of model loading
        weights.method_for(own_type(fmt), method)
    dev = lm.torch_device(device)
    path = lm.resolve(model)
    tok = lm.load_tokenizer(path)
    if tokens is None:
        tokens = text.default_tokens(tok)
        if tokens < context:
            raise LowbitError(f"the evaluation text has {tokens} tokens, fewer than --context ({context})")
    win = text.windows(tok, n_tokens=tokens, context=context) if protocol == "lowbit" else None
    base = lm.load_model(path, device=str(dev))
    ref = metrics.reference(base, win, progress=progress) if win is not None else None
    replace, bits, own = quantized_weights(path, fmt, method, pure, pad, calib_tokens, progress)
    net = lm.load_model(path, replace=replace, device=str(dev)) if replace else base
    extra = {"protocol": protocol}
    if protocol == "llama.cpp":  # llama-perplexity's windows and sums; its default cache is f16 (-ctk f16)
        def f16(config):
            return QuantizedKVCache(config, "f16")

        q, extra = llama_protocol.quality(path, tokens, context, (base, f16), (net, _cache_factory(kv, f16)),
                                          progress=progress, description=f"{fmt} {method or ''} {kv or ''} (llama.cpp)")
    else:
        q = metrics.evaluate(net, win, reference=ref, progress=progress, make_cache=_cache_factory(kv),
                             description=f"{fmt} {method or ''} {kv or ''}".strip())
    _, stored_bits, _ = quantized_weights(path, "stored", None)  # the baseline's bits: header only
    return {
        "model": str(model), "weights": fmt, "method": method or ("ref" if fmt != "stored" else None),
        "bits_per_weight": round(bits["bits_per_weight"], 4),
        "body_bits_per_weight": round(bits["body_bits_per_weight"], 4),
        "tensor_bytes": bits["tensor_bytes"], "tokens": q.tokens, "context": q.context,
        "text": text.source(), "text_tokens": q.windows * q.context, "windows_count": q.windows,
        "device": lm.device_name(dev),
        "ppl": q.ppl, "ppl_reference": q.ppl_reference, "kld": q.kld, "top1": q.top1,
        **interval_fields(q.stats, q.reference_stats),
        "reference_bits_per_weight": round(stored_bits["bits_per_weight"], 4),
        "reference_body_bits_per_weight": round(stored_bits["body_bits_per_weight"], 4),
        "pure": pure, "padded": pad, "kv": kv, "seconds": round(time.perf_counter() - t0, 1), **extra,
    }


MAX_RESULTS_BYTES = 64 << 20


def merge_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """Replace this model's rows in the report JSON, atomically."""
    p = output_path(path)
    data = {"rows": []}
    if probe(p) is not None:
        raw = read_bounded(p, MAX_RESULTS_BYTES, "results JSON")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise LowbitError(f"{p} is not valid JSON ({e}); lowbit merges its rows into a results file only") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows", []), list) \
                or not all(isinstance(r, dict) and "model" in r for r in data.get("rows", [])):
            raise LowbitError(f"{p} is not a lowbit results file (an object with a list of rows)")
    models = {r["model"] for r in rows}
    kinds = {r.get("kv") is not None for r in rows}  # ladder rows (no KV) and combined rows are kept apart
    data["rows"] = [r for r in data.get("rows", [])
                    if r["model"] not in models or (r.get("kv") is not None) not in kinds] + rows
    # an update in place by design (--write names the results file to merge into): replacing is the point
    write_text(p, json.dumps(data, indent=2) + "\n", force=True)
