"""Real size: Qwen3.5 models at 32K and 128K tokens on one GPU, the KV cache and recurrent state measured
against lowbit's plan, and decode speed with transformers' DynamicCache (bf16) and QuantizedKVCache.

    # on the GPU (flash-linear-attention importable: the Gated DeltaNet layers use its kernels)
    python benchmarks/real_size.py --out docs/real_size_results/qwen3.5-27b.json
    python benchmarks/real_size.py --models qwen3.5-35b-a3b --out ... --merge
    python benchmarks/real_size.py --layers 8 --contexts 8192 --dense-check   # a quick check: 8 of 64 layers
    python benchmarks/real_size.py --tiny --device cpu --out /tmp/t.json  # CPU, a tiny config, seconds (CI)

Models come from lowbit's built-in configs (their text_config), built by transformers with random bf16
weights straight on the device (normal, std 0.02, each tensor from its own generator seeded by its name, so
any process or GPU draws the same weights; no initialisation pass, no checkpoint). A model whose
bf16 weights plus its largest cache do not fit the device is skipped and says so (qwen3.5-122b-a10b is
244 GB in bf16). For every context and cache, a fresh cache takes a random prompt of N tokens in chunks
(`--chunk`, bounding activations), then decodes `--decode-tokens` greedily, batch 1.

Caches: `bf16` is transformers' DynamicCache; `K/V` (turbo3/turbo3, q8_0/turbo4) is lowbit's
QuantizedKVCache with fused decode attention (`lowbit.cache.attention.enable`). Linear-attention layers keep
transformers' own conv and recurrent states in every cache.

Memory, two methods, both in the JSON:
- held: `lowbit.cache.memory.held_bytes`, the storage bytes of every distinct tensor the cache object holds:
  K/V bytes in use (`kv_live`), what the K/V buffers hold including growth room (`kv_capacity`: the packed
  stores grow by doubling), the linear-attention states (`state`), codec constants (`other`);
- allocated: `torch.cuda.memory_allocated()` after the prefill (synchronized, logits freed) minus before
  the cache was made; the same after decoding; the prefill's peak above the start.
Predicted: `lowbit.planning.planner.plan(..., engine=...)` kv_bytes and state_bytes for llama.cpp (the
table) and vLLM (in the JSON), and transformers' own rule (`transformers_rule` below): K/V bytes per token
held exactly (no 256-cell padding, no pages), the conv window at `linear_conv_kernel_dim` columns in the model
dtype, the recurrent state in float32.
Decode: CUDA events around each step after `--warmup-steps` (ms/token, median), and wall-clock tokens/s over
the same steps. Which Gated DeltaNet kernels ran (flash-linear-attention or transformers' PyTorch fallback),
which decode-attention kernel read the packed cache (cuda/triton/reference) and the dense fallbacks are
recorded; `--dense-check` decodes each quantized cache a second time without fused attention (the same
packed bytes, read back densely) and compares tokens and logits.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep rather than spin (the CPU run shares a small machine; see lowbit/eval/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from lowbit.errors import LowbitError  # noqa: E402
from lowbit.formats.kv import parse_kv_spec  # noqa: E402
from lowbit.models.catalog import ResolvedModel, resolve  # noqa: E402
from lowbit.models.config import FULL, LINEAR, from_hf_config  # noqa: E402
from lowbit.planning.engines import Transformers  # noqa: E402
from lowbit.planning.planner import plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
MOE = {"qwen3_5_moe", "qwen3_5_moe_text"}
HEADROOM = 8 * GIB  # activations of one prefill chunk, the dequantized layer, SDPA's repeated K/V
TINY = {  # Qwen3.5's shape at toy size: 3 Gated DeltaNet layers per full-attention layer
    "model_type": "qwen3_5_text", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 128, "linear_num_value_heads": 4, "linear_num_key_heads": 2,
    "linear_key_head_dim": 32, "linear_value_head_dim": 32, "linear_conv_kernel_dim": 4, "vocab_size": 256,
    "intermediate_size": 128, "full_attention_interval": 4, "attn_output_gate": True, "partial_rotary_factor": 0.25,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
    "layer_types": ["linear_attention"] * 3 + ["full_attention"],
}


# --- the model ---------------------------------------------------------------------------------------------
def text_config(name: str, layers: int | None) -> tuple[dict, ResolvedModel]:
    """transformers' text config (a dict) and lowbit's model for the same shapes (layers cut to `layers`)."""
    if name == "tiny":
        raw = {"model_type": "qwen3_5_text", "text_config": dict(TINY)}
    else:
        raw = json.loads((ROOT / "src/lowbit/models/catalog" / f"{resolve(name).config.name}.json").read_text())
    text = dict(raw["text_config"])
    text.setdefault("tie_word_embeddings", raw.get("tie_word_embeddings", False))  # small ones tie at the top
    if layers:
        if not 1 <= layers <= text["num_hidden_layers"]:
            raise SystemExit(f"--layers must be 1..{text['num_hidden_layers']} for {name}")
        text["num_hidden_layers"] = layers
        text["layer_types"] = text["layer_types"][:layers]
    label = name if not layers else f"{name} ({layers} layers)"
    cfg = from_hf_config({**{k: v for k, v in raw.items() if k != "vision_config"}, "text_config": text}, name=label)
    return text, ResolvedModel(cfg)


def build_model(text: dict, device: str, dtype: torch.dtype, std: float, seed: int):
    """The Qwen3.5 causal LM of a text config with random weights (see `random_model`)."""
    import transformers

    moe = text["model_type"] in MOE
    cfg_cls = transformers.Qwen3_5MoeTextConfig if moe else transformers.Qwen3_5TextConfig
    model_cls = transformers.Qwen3_5MoeForCausalLM if moe else transformers.Qwen3_5ForCausalLM
    return random_model(model_cls, cfg_cls(**{k: v for k, v in text.items() if k != "model_type"}), device, dtype,
                        std, seed)


def random_model(model_cls, cfg, device: str, dtype: torch.dtype, std: float, seed: int):
    """model_cls(cfg) with random weights made on `device` in `dtype` (no init pass, no float32 copy)."""
    from transformers.initialization import no_init_weights

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights():
            model = model_cls(cfg)
    finally:
        torch.set_default_dtype(old)
    model.tie_weights()  # init_weights ties the embeddings, and no_init_weights skipped it
    fill_random(model, std, seed)
    model.eval()
    model.set_attn_implementation("sdpa")
    return model


def tensor_seed(seed: int, name: str) -> int:
    """A generator seed for one parameter, from the run's seed and the parameter's name alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:7], "little")


def random_tensor(name: str, shape, dtype, device, std: float, seed: int) -> torch.Tensor | None:
    """The full value of parameter `name`, drawn by its own generator on `device` (None: a constant the module
    constructs). Every process and GPU that draws `name` gets the same values, whatever else it draws first,
    so one GPU, a layer split and each tensor-parallel rank (which keeps its shard of the full draw) run the
    same weights."""
    gen = torch.Generator(device=device).manual_seed(tensor_seed(seed, name))
    if len(shape) >= 2:  # matrices, embeddings, conv kernels, expert stacks
        return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std, generator=gen)
    if name.endswith("A_log"):  # the Gated DeltaNet decay, drawn as its module draws it: log U(0.01, 16)
        return torch.empty(shape, dtype=torch.float32, device=device).uniform_(0.01, 16, generator=gen).log_().to(dtype)
    return None  # norms and dt_bias: the constants their modules construct


def fill_random(model, std: float, seed: int) -> None:
    """Give every parameter its per-name random value (`random_tensor`), in place."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = random_tensor(name, tuple(p.shape), p.dtype, p.device, std, seed)
            if value is not None:
                p.copy_(value)


def _implementation(fn) -> str:
    """The function transformers resolved behind one of its kernel-or-fallback wrappers."""
    impl = inspect.getclosurevars(fn).nonlocals.get("implementation") if callable(fn) else None
    if impl is None:
        return "unknown"
    return f"{impl.__module__}.{impl.__qualname__}"


def gdn_kernels(model) -> dict:
    """Which implementation each Gated DeltaNet function of the model's module resolved to."""
    from transformers.utils import import_utils

    mod = sys.modules[type(model).__module__]
    names = ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
             "causal_conv1d_update")
    out = {n: _implementation(getattr(mod, n, None)) for n in names}
    check = getattr(import_utils, "is_flash_linear_attention_available", None)
    out["is_flash_linear_attention_available"] = bool(check()) if check else None
    try:
        import fla
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: F401 - what transformers resolves

        out["fla_version"] = fla.__version__
    except Exception as e:  # noqa: BLE001 - any failure to import is the answer
        out["fla_version"] = None
        out["fla_import_error"] = f"{type(e).__name__}: {e}"
    chunk = out["torch_chunk_gated_delta_rule"]
    # "unknown": a transformers whose wrapper hides the resolved function; then fla importable is the answer
    out["fla_used"] = chunk.startswith("fla.") or (chunk == "unknown" and out["fla_version"] is not None)
    out["causal_conv1d_used"] = out["causal_conv1d_fn"].startswith("causal_conv1d")
    out["experts_implementation"] = getattr(model.config, "_experts_implementation", None)
    return out


# --- predictions --------------------------------------------------------------------------------------------
def transformers_rule(cfg, kv: str, tokens: int, batch: int, model_dtype_bytes: int) -> dict:
    """What transformers holds by its own rules: `lowbit plan --engine transformers` (the tokens held, in
    lowbit's format bytes for a QuantizedKVCache; the conv window at kernel-size columns in the model dtype;
    the recurrent state in float32, as the Gated DeltaNet kernels return it)."""
    k, v = kv_formats(kv)
    engine = Transformers(dtype_bytes=model_dtype_bytes)
    a = engine.allocate(cfg, k.fmt, v.fmt, tokens, batch)
    conv, ssm = engine.state_parts(cfg)
    return {"kv_bytes": a.kv_bytes, "state_bytes": a.state_bytes, "conv_bytes_per_layer": conv,
            "ssm_bytes_per_layer": ssm}


def kv_formats(kv: str):
    k, _, v = kv.partition("/")
    return parse_kv_spec(k), parse_kv_spec(v or k)


def predictions(resolved: ResolvedModel, kv: str, tokens: int, batch: int, model_dtype_bytes: int) -> dict:
    k, v = kv_formats(kv)
    out = {}
    for engine in ("llama.cpp", "vllm"):
        p = plan(resolved, weights="BF16", kv_k=k.name, kv_v=v.name, context=tokens, sequences=batch, engine=engine)
        out[engine] = {"kv_bytes": p.kv_bytes, "state_bytes": p.state_bytes, "kv_cells": p.kv_cells}
    out["transformers_rule"] = transformers_rule(resolved.config, kv, tokens, batch, model_dtype_bytes)
    return out


def explain(cfg, measured: dict, pred: dict, tokens: int, model_dtype_bytes: int) -> dict:
    """Measured minus llama.cpp's plan, split into the named differences (exact when `residual` is 0)."""
    lc = pred["llama.cpp"]
    cells = lc["kv_cells"].get(FULL, tokens)
    per_token = lc["kv_bytes"] // cells if cells else 0
    padding = -(cells - tokens) * per_token  # llama.cpp pads KV cells to 256
    conv_cols = -cfg.count(LINEAR) * cfg.gdn_conv_dim * (
        (cfg.linear_conv_kernel_dim - 1) * 4 - cfg.linear_conv_kernel_dim * model_dtype_bytes)
    kv_diff = measured["kv_live"] - lc["kv_bytes"]
    state_diff = measured["state"] - lc["state_bytes"]
    return {
        "kv_live_minus_llama_cpp": kv_diff, "kv_256_cell_padding": padding, "kv_residual": kv_diff - padding,
        "kv_growth_room": measured["kv_capacity"] - measured["kv_live"],
        "state_minus_llama_cpp": state_diff,
        "state_conv_window": conv_cols,  # transformers: k columns in the model dtype; llama.cpp: k-1 in f32
        "state_residual": state_diff - conv_cols,
    }


# --- running -------------------------------------------------------------------------------------------------
class Clock:
    """Synchronize and read the allocator on the run's device (CUDA), or nothing (CPU)."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is not None:
            torch.cuda.set_device(self.device)  # events, streams and kernels on the run's GPU

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def allocated(self) -> int | None:
        return torch.cuda.memory_allocated(self.device) if self.cuda else None

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else None


def make_cache(model, kv: str):
    from transformers import DynamicCache

    from lowbit.cache import attention as fused

    if kv == "bf16":
        model.set_attn_implementation("sdpa")
        return DynamicCache(config=model.config)
    k, v = kv_formats(kv)
    return fused.enable(model, kv_k=k.name, kv_v=v.name)


def forward(model, ids, cache):
    from lowbit.cache import cache_kwarg

    return model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg(model): cache})


def prefill(model, ids, cache, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed the prompt in chunks; the greedy next token and the last position's logits."""
    for s in range(0, ids.shape[1], chunk):
        out = forward(model, ids[:, s:s + chunk], cache)
        last = out.logits[:, -1].float()
        del out
    return last.argmax(-1, keepdim=True), last


class KernelCounts:
    """Counts which decode-attention kernel read the packed cache (the CUDA kernel's launches, the
    reference's calls; the rest of the fused steps ran the Triton kernel)."""

    def __init__(self):
        from lowbit.kernels import cuda_decode, reference

        self.targets = [(cuda_decode, "stage1", "cuda"), (reference, "decode_attention", "reference")]
        self.counts = {"cuda": 0, "reference": 0}
        self.saved = []

    def __enter__(self):
        for mod, attr, key in self.targets:
            orig = getattr(mod, attr)
            self.saved.append((mod, attr, orig))

            def wrapped(*a, _orig=orig, _key=key, **k):
                self.counts[_key] += 1
                return _orig(*a, **k)

            setattr(mod, attr, wrapped)
        return self

    def __exit__(self, *exc):
        for mod, attr, orig in self.saved:
            setattr(mod, attr, orig)


def decode(model, cache, nxt, steps: int, warmup: int, clock: Clock) -> tuple[dict, torch.Tensor]:
    """Greedy steps, timed after `warmup`; the timings and tokens, and the first step's logits."""
    tokens, events, walls = [], [], []
    t_start = first = None
    for i in range(steps):
        if i == warmup:
            clock.sync()
            t_start = time.perf_counter()
        if clock.cuda:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
        else:
            w0 = time.perf_counter()
        out = forward(model, nxt, cache)
        nxt = out.logits[:, -1:].argmax(-1)
        if i == 0:
            first = out.logits[:, -1].float()
        del out
        tokens.append(nxt)
        if clock.cuda:
            e1.record()
            events.append((e0, e1))
        else:
            walls.append((time.perf_counter() - w0) * 1e3)
    clock.sync()
    wall = time.perf_counter() - t_start if t_start is not None else float("nan")
    ms = [a.elapsed_time(b) for a, b in events] if clock.cuda else walls
    timed = sorted(ms[warmup:])
    n = len(timed)
    return {
        "tokens": torch.cat(tokens, 1)[0].tolist(),
        "steps": steps, "warmup_steps": warmup, "timed_steps": n,
        "ms_per_token_median": timed[n // 2] if n else None,
        "ms_per_token_mean": sum(timed) / n if n else None,
        "ms_per_token_max": timed[-1] if n else None,
        "tokens_per_s": n / wall if n and wall == wall else None,
        "timer": "CUDA events per step; tokens/s from wall clock over the timed steps" if clock.cuda
        else "wall clock per step",
    }, first


def dense_check(model, ids, kv: str, args, fused_tokens: list[int], fused_first: torch.Tensor) -> dict:
    """The same prompt through a QuantizedKVCache without fused attention (the same seeds, so the same packed
    bytes; the model's attention reads the dequantized cache): do the fused steps give its tokens and logits?"""
    from lowbit.cache import QuantizedKVCache

    k, v = kv_formats(kv)
    cache = QuantizedKVCache(model.config, k.name, v.name)
    with torch.no_grad():
        nxt, _ = prefill(model, ids, cache, args.chunk)
        tokens, first = [], None
        for _ in range(args.decode_tokens):
            logits = forward(model, nxt, cache).logits[:, -1].float()
            first = logits if first is None else first
            nxt = logits.argmax(-1, keepdim=True)
            tokens.append(int(nxt))
    diff = [i for i, (a, b) in enumerate(zip(tokens, fused_tokens)) if a != b]
    rel = float((fused_first - first).abs().max() / first.abs().max())
    return {"tokens_equal": not diff, "first_difference": diff[0] if diff else None,
            "first_step_logits_max_rel_diff": rel, "dense_fallbacks": cache.dense_fallbacks}


def fused_report(cache, counts: KernelCounts) -> dict | None:
    from lowbit.cache import QuantizedKVLayer

    if not hasattr(cache, "fused_steps"):
        return None
    kernels = sorted({layer.support.decode or "none" for layer in cache.layers
                      if isinstance(layer, QuantizedKVLayer) and layer.support is not None})
    return {"fused_steps": cache.fused_steps, "dense_fallbacks": cache.dense_fallbacks,
            "fallback_reasons": dict(cache.fallback_reasons), "declared_decode_kernels": kernels,
            "cuda_kernel_launches": counts.counts["cuda"], "reference_calls": counts.counts["reference"],
            "attention_layers": sum(isinstance(layer, QuantizedKVLayer) for layer in cache.layers)}


def one_run(model, resolved, kv: str, context: int, args, clock: Clock, dtype_bytes: int) -> dict:
    from lowbit.cache import held_bytes

    gen = torch.Generator(device="cpu").manual_seed(args.seed + context)
    ids = torch.randint(0, resolved.config.vocab_size, (1, context), generator=gen).to(args.device)
    gc.collect()
    clock.sync()
    clock.reset_peak()
    before = clock.allocated()
    cache = make_cache(model, kv)
    t0 = time.perf_counter()
    with torch.no_grad(), KernelCounts() as counts:
        nxt, last = prefill(model, ids, cache, args.chunk)
        clock.sync()
        prefill_s = time.perf_counter() - t0
        finite = bool(torch.isfinite(last).all())  # random weights: check the activations stayed in range
        del last
        gc.collect()
        after = clock.allocated()
        peak = clock.peak() - before if clock.cuda else None
        held_prefill = held_bytes(cache)
        counts.counts = {"cuda": 0, "reference": 0}  # count the decode steps only
        dec, first = decode(model, cache, nxt, args.decode_tokens, args.warmup_steps, clock)
        gc.collect()
        after_decode = clock.allocated()
        held_decode = held_bytes(cache)
    fused = fused_report(cache, counts)
    del cache
    check = None
    if args.dense_check and kv != "bf16":
        gc.collect()
        check = dense_check(model, ids, kv, args, dec["tokens"], first)
    del first
    tokens_after = context + args.decode_tokens
    pred = predictions(resolved, kv, context, 1, dtype_bytes)
    pred_after = predictions(resolved, kv, tokens_after, 1, dtype_bytes)
    return {
        "model": resolved.config.name, "context": context, "kv": kv,
        "cache": "transformers DynamicCache" if kv == "bf16" else "lowbit QuantizedKVCache (fused decode)",
        "prefill_s": prefill_s, "prefill_chunk": args.chunk, "logits_finite": finite,
        "after_prefill": {
            "tokens": context, "held": held_prefill,
            "allocated_delta": None if before is None else after - before,
            "peak_allocated_delta": peak,
            "predicted": pred, "explained": explain(resolved.config, held_prefill, pred, context, dtype_bytes),
        },
        "after_decode": {
            "tokens": tokens_after, "held": held_decode,
            "allocated_delta": None if before is None else after_decode - before,
            "predicted": pred_after,
            "explained": explain(resolved.config, held_decode, pred_after, tokens_after, dtype_bytes),
        },
        "decode": dec, "fused": fused, "dense_check": check,
    }


def warm_up(model, kvs, args, clock: Clock) -> float:
    """Compile and autotune every kernel the runs take (chunked prefill, decode) on a short prompt, and let
    cuBLAS and friends make their workspaces, so the measured deltas hold only the cache (CUDA only: on the
    CPU nothing is timed for real and the held bytes need no warm-up)."""
    t0 = time.perf_counter()
    if not clock.cuda:
        return 0.0
    n = min(args.chunk, 256)
    ids = torch.randint(0, 32, (1, 2 * n), device=args.device)
    with torch.no_grad():
        for kv in kvs:
            cache = make_cache(model, kv)
            nxt, _ = prefill(model, ids, cache, n)
            for _ in range(3):
                nxt = forward(model, nxt, cache).logits[:, -1:].argmax(-1)
            del cache
    clock.sync()
    gc.collect()
    return time.perf_counter() - t0


def fits(resolved, contexts, device: str) -> str | None:
    """Why the model cannot run here (bf16 weights + the largest bf16 cache + headroom), or None."""
    if torch.device(device).type != "cuda":
        return None
    p = plan(resolved, weights="BF16", kv="bf16", context=max(contexts))
    need = p.weights_bytes + p.kv_bytes + p.state_bytes + HEADROOM
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    if need > total:
        return (f"does not fit: {p.weights_bytes / 1e9:.0f} GB of bf16 weights + {p.kv_bytes / 1e9:.1f} GB bf16 KV at "
                f"{max(contexts):,} tokens + {HEADROOM / GIB:.0f} GiB headroom > {total / GIB:.0f} GiB")
    return None


def machine(device: str) -> dict:
    import transformers

    out = {"device": device, "platform": platform.platform(), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        out.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                       timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["commit"] = None
    return out


def _gb(n) -> str:
    """Bytes in GB (1e9) at real size, in kB or MB for the tiny config."""
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale / 10:
            return f"{n / scale:.3f} {unit}"
    return f"{n} B"


def table(result: dict) -> str:
    head = ("model", "ctx", "kv", "plan KV llama.cpp", "KV live", "KV capacity", "plan state llama.cpp",
            "state", "state (tf rule)", "alloc Δ", "ms/tok", "tok/s")
    rows = [head]
    for r in result["runs"]:
        a = r["after_prefill"]
        d = r["decode"]
        rows.append((r["model"], f"{r['context']:,}", r["kv"], _gb(a["predicted"]["llama.cpp"]["kv_bytes"]),
                     _gb(a["held"]["kv_live"]), _gb(a["held"]["kv_capacity"]),
                     _gb(a["predicted"]["llama.cpp"]["state_bytes"]), _gb(a["held"]["state"]),
                     _gb(a["predicted"]["transformers_rule"]["state_bytes"]), _gb(a["allocated_delta"]),
                     "-" if d["ms_per_token_median"] is None else f"{d['ms_per_token_median']:.2f}",
                     "-" if d["tokens_per_s"] is None else f"{d['tokens_per_s']:.1f}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(GB = 1e9 bytes; memory after the prefill of ctx tokens; decode at batch 1)"


def write(result: dict, out: str | None) -> None:
    if not out:
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["qwen3.5-27b"],
                    help="built-in Qwen3.5 names (qwen3.5-27b, qwen3.5-35b-a3b, qwen3.5-122b-a10b, ...)")
    ap.add_argument("--contexts", nargs="+", type=int, default=None, help="prompt tokens (default 32768 131072)")
    ap.add_argument("--kv", nargs="+", default=["bf16", "turbo3/turbo3", "q8_0/turbo4"],
                    help="bf16 (DynamicCache) or K/V formats of a QuantizedKVCache")
    ap.add_argument("--decode-tokens", type=int, default=None, help="greedy new tokens (default 64; tiny 6)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="decode steps left out of the timing")
    ap.add_argument("--chunk", type=int, default=None, help="prefill chunk in tokens (default 4096; tiny 128)")
    ap.add_argument("--layers", type=int, help="keep only the first N layers (a quick check; recorded)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a tiny Qwen3.5-shaped config (CPU test, seconds)")
    ap.add_argument("--std", type=float, default=0.02, help="std of the random weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON here (rewritten after every run)")
    ap.add_argument("--merge", action="store_true", help="append to the runs already in --out")
    ap.add_argument("--dense-check", action="store_true",
                    help="also decode each quantized cache densely (no fused attention) and compare tokens and logits")
    ap.add_argument("--max-minutes", type=float, help="skip the runs that would start after this")
    ap.add_argument("--allow-torch-gdn", action="store_true",
                    help="run on CUDA even when the Gated DeltaNet layers would take transformers' PyTorch fallback")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.contexts = args.contexts or ([256] if tiny else [32768, 131072])
    args.decode_tokens = args.decode_tokens if args.decode_tokens is not None else (6 if tiny else 64)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (2 if tiny else 4)
    args.chunk = args.chunk or (128 if tiny else 4096)
    if tiny:
        args.models = ["tiny"]
    if args.decode_tokens <= args.warmup_steps:
        ap.error("--decode-tokens must exceed --warmup-steps")
    for kv in args.kv:
        try:
            kv_formats(kv)  # a bad name fails here, before any model is built
        except LowbitError as e:
            ap.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    clock = Clock(args.device)
    dtype, dtype_bytes = torch.bfloat16, 2
    started = time.perf_counter()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result = {"benchmark": "real_size", "date": now,
              "command": " ".join(["python", "benchmarks/real_size.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(args.device),
              "settings": {"contexts": args.contexts, "kv": args.kv, "decode_tokens": args.decode_tokens,
                           "warmup_steps": args.warmup_steps, "chunk": args.chunk, "batch": 1, "dtype": "bfloat16",
                           "weights": f"random normal, std {args.std}", "layers": args.layers, "tiny": args.tiny},
              "memory_methods": {
                  "held": "lowbit.cache.memory.held_bytes: storage bytes of every distinct tensor the cache object "
                          "holds (kv_live: K/V bytes in use; kv_capacity: K/V buffers incl. growth room; state: "
                          "linear-attention conv + recurrent states; other: codec constants)",
                  "allocated_delta": "torch.cuda.memory_allocated() after the prefill (synchronized, logits "
                                     "freed) minus before the cache was made (the caching allocator rounds blocks)",
                  "peak_allocated_delta": "torch.cuda.max_memory_allocated() during the prefill minus the start"},
              "models": [], "runs": [], "skipped": []}
    if args.merge and args.out and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        result["runs"], result["models"], result["skipped"] = old["runs"], old["models"], old.get("skipped", [])
        result["previous"] = [{k: old[k] for k in ("date", "command", "machine")}] + old.get("previous", [])
    for name in args.models:
        text, resolved = text_config(name, args.layers)
        reason = fits(resolved, args.contexts, args.device)
        if reason:
            print(f"{name}: {reason}", file=sys.stderr)
            result["skipped"].append({"model": name, "reason": reason})
            write(result, args.out)
            continue
        clock.sync()
        base = clock.allocated()
        t0 = time.perf_counter()
        model = build_model(text, args.device, dtype, args.std, args.seed)
        clock.sync()
        build_s = time.perf_counter() - t0
        gdn = gdn_kernels(model)
        if clock.cuda and not gdn["fla_used"] and not args.allow_torch_gdn:
            print(f"{name}: the Gated DeltaNet layers would run transformers' PyTorch fallback "
                  f"({gdn.get('fla_import_error', 'flash-linear-attention not importable')}); install "
                  "flash-linear-attention (and fla-core, einops) or pass --allow-torch-gdn", file=sys.stderr)
            return 2
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        wplan = plan(resolved, weights="BF16", kv="bf16", context=max(args.contexts))
        warm_s = warm_up(model, args.kv, args, clock)
        entry = {"name": resolved.config.name, "builtin": name, "layers": resolved.config.num_layers,
                 "layers_reduced": bool(args.layers), "linear_layers": resolved.config.count(LINEAR),
                 "attention_layers": resolved.config.count(FULL), "params": sum(p.numel() for p in model.parameters()),
                 "param_bytes": param_bytes, "weights_allocated": None if base is None else clock.allocated() - base,
                 "plan_weights_bytes_bf16": wplan.weights_bytes, "build_s": build_s, "warmup_s": warm_s,
                 "gdn_kernels": gdn}
        result["models"].append(entry)
        print(f"{resolved.config.name}: built in {build_s:.1f} s, {param_bytes / 1e9:.1f} GB; warm-up {warm_s:.1f} s; "
              f"Gated DeltaNet: {gdn['torch_chunk_gated_delta_rule']}", file=sys.stderr)
        for context in args.contexts:
            for kv in args.kv:
                if args.max_minutes and time.perf_counter() - started > 60 * args.max_minutes:
                    result["skipped"].append({"model": name, "context": context, "kv": kv,
                                              "reason": f"--max-minutes {args.max_minutes} reached"})
                    continue
                run = one_run(model, resolved, kv, context, args, clock, dtype_bytes)
                result["runs"].append(run)
                write(result, args.out)
                a = run["after_prefill"]
                print(f"  {context:>7,} {kv:<14} prefill {run['prefill_s']:.1f} s, KV {_gb(a['held']['kv_live'])} "
                      f"(plan {_gb(a['predicted']['llama.cpp']['kv_bytes'])}), state {_gb(a['held']['state'])}, "
                      f"{run['decode']['ms_per_token_median']:.2f} ms/token", file=sys.stderr)
        del model
        gc.collect()
        if clock.cuda:
            torch.cuda.empty_cache()
    result["elapsed_s"] = time.perf_counter() - started
    write(result, args.out)
    m = result["machine"]
    print(f"\n{m.get('gpu', m['device'])} | torch {m['torch']} | transformers {m['transformers']} | "
          f"triton {m['triton']} | commit {m['commit']} | {result['date']}")
    for e in result["models"]:
        g = e["gdn_kernels"]
        print(f"{e['name']}: Gated DeltaNet chunk={g['torch_chunk_gated_delta_rule']}, "
              f"conv={g['causal_conv1d_fn']}{' (layers reduced)' if e['layers_reduced'] else ''}")
    for s in result["skipped"]:
        print(f"skipped: {s}")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
