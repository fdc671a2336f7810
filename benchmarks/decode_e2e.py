"""End-to-end decode on a GPU: whole models with random weights, a bf16 cache with the fastest SDPA against lowbit's
packed caches with fused decode attention, in the same run.

    python benchmarks/decode_e2e.py --out docs/kernels_results/decode_e2e_h200.json          # the full matrix
    python benchmarks/decode_e2e.py --models qwen3.5-27b --contexts 32768 --batches 1 8 --new-tokens 32
    python benchmarks/decode_e2e.py --tiny --device cpu --out /tmp/e2e.json                   # CI: toy sizes, CPU
    python benchmarks/decode_e2e.py --report-rows docs/kernels_results/decode_e2e_27b_32k_2ebd073_h200.json
                                                # a recorded run's rows as `lowbit report` ships them (no GPU)

Models: Qwen3.5-27B (hybrid: 48 Gated DeltaNet layers, 16 attention layers with 4 KV heads of 256) and
Llama-3.1-8B (32 attention layers, 8 KV heads of 128), from lowbit's built-in configs, built by transformers with
random bf16 weights on the device (`real_size.random_model`). The Gated DeltaNet layers decode through whatever
transformers resolved (flash-linear-attention's kernels when importable; `gdn_kernels` in the JSON says which).

The context: a real prefill of `--prompt` tokens (dense attention; the Gated DeltaNet prefill through transformers'
PyTorch path where it can be reached, so flash-linear-attention's chunked kernels need not be compiled for 32
tokens), then every attention layer's cache is extended to the context with random normal K/V vectors written
through the cache's own store path (the packed bytes a prefill would write, for random vectors). The recurrent
and conv states are the prefill's. Decode cost depends on the shapes and the bytes, not on the values.

Caches, each with room for the context plus the new tokens allocated once (no growth copies):
- `bf16`: K/V in bf16 buffers (`StaticBF16Layer`); decode attention is torch SDPA with the fastest of flash /
  efficient / cuDNN, GQA or packed-GQA form, measured on the filled layer in the same run
  (`decode_attention.best_sdpa`);
- `K/V` (turbo3/turbo3, q8_0/turbo3, ...): lowbit's QuantizedKVCache with fused decode attention
  (`lowbit.cache.attention.enable`): the decode kernels read the packed bytes (`fused` in the JSON counts the
  steps and the CUDA kernel's launches).

Timing, per (model, context, batch, cache):
- `eager`: greedy decode of `--new-tokens` tokens through model.forward (CUDA events per step after
  `--warmup-steps`; tokens/s from the wall clock). Python launches every kernel: at small batch this measures the
  host, not the GPU;
- `graph`: one decode step at the context captured as a CUDA graph (transformers' own modules, the same cache)
  and replayed `--graph-steps` times; each replay writes the same new slot and attends over context + 1 tokens, so
  it is the GPU time of one step at that context (ms per step; tokens/s = batch x 1000 / ms). Where capture
  fails, the error is recorded.
Peak memory: torch.cuda.max_memory_allocated() from the cache's creation to the end of its runs (weights included).
Check (`--check`): for each quantized cache at the first context and batch, a second cache built the same way
(same seeds, same packed bytes) decodes `--check-tokens` tokens without fused attention (the layer dequantized
for SDPA), and a third with float32 attention over the same packed bytes (`lowbit.kernels.reference`, through
the same hook); the greedy tokens and the first step's logits are compared, fused with dense and each with the
float32 attention (`vs_float32_attention`: which path rounds more).
Runs that do not fit (bf16 weights + the cache at context + new tokens, from lowbit's plan, + headroom > the
device's memory) are skipped with the reason.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode_attention  # noqa: E402  (benchmarks/: the fastest-SDPA search)
import real_size  # noqa: E402  (benchmarks/: random-weight models, machine info, kernel counts)

from lowbit.cache import QuantizedKVCache, QuantizedKVLayer, backend_for, cache_kwarg  # noqa: E402
from lowbit.cache.cache import FUSED_MAX_NEW  # noqa: E402
from lowbit.kernels import reference  # noqa: E402
from lowbit.models.catalog import ResolvedModel, resolve  # noqa: E402
from lowbit.models.config import from_hf_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
HEADROOM = 6 * GIB  # activations of a step at batch 32, SDPA and kernel workspaces, the fill's chunk
MODELS = ("qwen3.5-27b", "llama-3.1-8b")
KVS = ("bf16", "turbo3/turbo3", "q8_0/turbo3", "q8_0/turbo4", "turbo4/turbo4")
BF16_ATTENTION = "lowbit_bf16_sdpa"
TINY_LLAMA = {"model_type": "llama", "vocab_size": 256, "hidden_size": 256, "intermediate_size": 512,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


# --- models --------------------------------------------------------------------------------------------------------
def load(name: str, device: str, std: float, seed: int, dtype=torch.bfloat16):
    """(model, lowbit's ResolvedModel for the plan, is_hybrid)."""
    import transformers

    if name.startswith("qwen"):
        text, resolved = real_size.text_config("tiny" if name == "qwen-tiny" else name, None)
        return real_size.build_model(text, device, dtype, std, seed), resolved, True
    if name == "llama-tiny":
        raw = dict(TINY_LLAMA)
    else:
        raw = json.loads((ROOT / "src/lowbit/models/catalog" / f"{resolve(name).config.name}.json").read_text())
    hf = {k: v for k, v in raw.items() if not k.startswith("_") and k not in ("architectures", "model_type")}
    model = real_size.random_model(transformers.LlamaForCausalLM, transformers.LlamaConfig(**hf), device,
                                   dtype, std, seed)
    resolved = ResolvedModel(from_hf_config({**hf, "model_type": "llama"}, name=name)) if name == "llama-tiny" \
        else resolve(name)
    return model, resolved, False


def gdn_prefill_fallback(model):
    """transformers' PyTorch chunked Gated DeltaNet (what its kernel wrapper falls back to), or None: the prefill's
    32 tokens take it, so flash-linear-attention's autotuned chunked kernels are not compiled for them."""
    mod = sys.modules[type(model).__module__]
    fn = getattr(mod, "torch_chunk_gated_delta_rule", None)
    while fn is not None and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn if fn is not None and getattr(fn, "__module__", "") == mod.__name__ else None


# --- caches --------------------------------------------------------------------------------------------------------
def _static_layer_class():
    from transformers.cache_utils import DynamicLayer

    class StaticBF16(DynamicLayer):
        """bf16 K/V in buffers made once for `capacity` tokens: a step writes its token and attends over a view
        (DynamicCache concatenates, copying the whole layer every step)."""

        is_croppable = False

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.n = capacity, 0

        def lazy_initialization(self, key_states, value_states=None):
            self.dtype, self.device = key_states.dtype, key_states.device
            B, H, _, D = key_states.shape
            self.kbuf = torch.empty(B, H, self.capacity, D, dtype=key_states.dtype, device=self.device)
            self.vbuf = torch.empty(B, H, self.capacity, value_states.shape[-1], dtype=value_states.dtype,
                                    device=self.device)
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            self.kbuf[:, :, self.n:self.n + n] = key_states
            self.vbuf[:, :, self.n:self.n + n] = value_states
            self.n += n
            self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]
            return self.keys, self.values

        def extend_random(self, tokens: int, gen) -> None:
            """Random normal K/V from the current length up to `tokens`."""
            self.kbuf[:, :, self.n:tokens].normal_(generator=gen)
            self.vbuf[:, :, self.n:tokens].normal_(generator=gen)
            self.n = tokens
            self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]

        def get_seq_length(self) -> int:
            return self.n

        def get_max_length(self) -> int:
            return -1

        def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
            return self.n + query_length, 0

        def nbytes(self) -> int:  # bytes in use, as the packed stores count theirs
            return (self.keys.numel() + self.values.numel()) * self.kbuf.element_size() if self.is_initialized else 0

    return StaticBF16


_SDPA_CHOICE: dict = {}


def bf16_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Decode steps (one new token; batches carry no padding here, so the mask is all true) run the SDPA variant
    measured fastest on this cache; everything else is transformers' SDPA path."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    choice = _SDPA_CHOICE.get("variant")
    if query.shape[2] == 1 and choice is not None and not dropout and kwargs.get("softcap") is None:
        backend, form = choice
        out = decode_attention.sdpa_call(backend, form, query, key, value, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def register_bf16_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(BF16_ATTENTION, bf16_attention)
    AttentionMaskInterface.register(BF16_ATTENTION, sdpa_mask)


def make_cache(model, kv: str, capacity: int, attention: str = "fused"):
    """The cache of a run (empty): bf16 static layers, or lowbit's packed cache read by the fused decode kernels
    ("fused"), by float32 attention over the same packed bytes ("reference": `lowbit.kernels.reference`), or
    dequantized to the model's dtype for SDPA ("dense")."""
    from transformers import DynamicCache
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    from lowbit.cache import attention as fused_attention

    if kv == "bf16":
        register_bf16_attention()
        model.set_attn_implementation(BF16_ATTENTION)
        cache = DynamicCache(config=model.config)
        static = _static_layer_class()
        for i, layer in enumerate(cache.layers):
            if not isinstance(layer, LinearAttentionCacheLayerMixin) and not getattr(layer, "is_sliding", False):
                cache.layers[i] = static(capacity)
        return cache
    k, v = real_size.kv_formats(kv)
    if attention != "dense":
        decode = reference.decode_attention if attention == "reference" else None
        return fused_attention.enable(model, decode=decode, kv_k=k.name, kv_v=v.name)
    model.set_attn_implementation("sdpa")
    return QuantizedKVCache(model.config, k.name, v.name)


def attention_layers(cache) -> list:
    return [layer for layer in cache.layers if isinstance(layer, QuantizedKVLayer) or hasattr(layer, "extend_random")]


def fill(cache, context: int, capacity: int, seed: int, chunk_bytes: int = 1 << 28) -> None:
    """Extend every attention layer to `context` tokens with random normal K/V (bf16 vectors through the cache's
    own store path for packed layers), with room for `capacity` tokens."""
    for i, layer in enumerate(attention_layers(cache)):
        gen = torch.Generator(device=layer.device).manual_seed(seed * 1009 + i)
        if hasattr(layer, "extend_random"):
            layer.extend_random(context, gen)
            continue
        backend = backend_for(layer.device)
        for store in (layer.k_store, layer.v_store):
            store.reserve(capacity)
            B, H = store.packed.shape[:2]
            D = store.codec.head_dim
            step = max(16, chunk_bytes // (B * H * D * 2))
            for t in range(len(store), context, step):
                n = min(step, context - t)
                x = torch.randn(B, H, n, D, generator=gen, device=layer.device, dtype=torch.bfloat16)  # as a bf16 model writes them
                backend.store(store, x)
        layer.cumulative_length = context


def cache_bytes(cache) -> int:
    return sum(layer.nbytes() if hasattr(layer, "extend_random") else sum(layer.nbytes())
               for layer in attention_layers(cache))


# --- running --------------------------------------------------------------------------------------------------------
def forward(model, ids, cache):
    return model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg(model): cache})


def prepare(model, kv: str, context: int, batch: int, args, capacity: int, attention: str = "fused",
            hybrid: bool = False):
    """A cache holding `context` tokens for `batch` sequences, and the first decode input (the prefill's argmax)."""
    gen = torch.Generator(device="cpu").manual_seed(args.seed + batch)
    ids = torch.randint(0, model.config.vocab_size, (batch, args.prompt), generator=gen).to(args.device)
    cache = make_cache(model, kv, capacity, attention)
    mod = sys.modules[type(model).__module__]
    fallback = gdn_prefill_fallback(model) if hybrid else None
    saved = getattr(mod, "torch_chunk_gated_delta_rule", None)
    try:
        if fallback is not None:
            mod.torch_chunk_gated_delta_rule = fallback
        with torch.no_grad():
            logits = forward(model, ids, cache).logits[:, -1]
    finally:
        if fallback is not None:
            mod.torch_chunk_gated_delta_rule = saved
    nxt = logits.argmax(-1, keepdim=True)
    fill(cache, context, capacity, args.seed)
    return cache, nxt


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def eager(model, cache, nxt, steps: int, warmup: int, device) -> tuple[dict, torch.Tensor]:
    """Greedy decode through model.forward; per-step CUDA events (wall clock on the CPU)."""
    cuda = torch.device(device).type == "cuda"
    tokens, ms, first = [], [], None
    t_start = None
    with torch.no_grad():
        for i in range(steps):
            if i == warmup:
                sync(device)
                t_start = time.perf_counter()
            if cuda:
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
            w0 = time.perf_counter()
            logits = forward(model, nxt, cache).logits[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            if first is None:
                first = logits.float()
            tokens.append(nxt)
            if cuda:
                e1.record()
                ms.append((e0, e1))
            else:
                ms.append((time.perf_counter() - w0) * 1e3)
    sync(device)
    wall = time.perf_counter() - t_start if t_start is not None else float("nan")
    ms = [a.elapsed_time(b) for a, b in ms] if cuda else ms
    timed = sorted(ms[warmup:])
    n = len(timed)
    batch = nxt.shape[0]
    return {"steps": steps, "warmup_steps": warmup, "ms_per_token_median": timed[n // 2] if n else None,
            "ms_per_token_mean": sum(timed) / n if n else None,
            "tokens_per_s": batch * n / wall if n and wall == wall else None,
            "tokens": torch.cat(tokens, 1).tolist(), "nxt": nxt}, first


def graph(model, cache, nxt, replays: int, device) -> dict:
    """One decode step captured as a CUDA graph and replayed: the GPU time of a step at this context."""
    if torch.device(device).type != "cuda" or replays <= 0:
        return {"error": "no CUDA device" if replays > 0 else "not asked"}
    import transformers.masking_utils as mu

    mod = model.model if hasattr(model, "model") else model
    patched = hasattr(mod, "_update_linear_attn_mask")
    if patched:  # older transformers test cache_position[0] > 0 on the host; with no mask the answer is None
        mod._update_linear_attn_mask = lambda attention_mask, *a, **k: attention_mask
    keep = mu._ignore_causal_mask_sdpa

    def no_mask_for_one_token(padding_mask, q_length, *a, **k):
        # While a stream captures, transformers builds the causal mask instead of skipping it (it cannot look at a
        # padding mask then). Here there is none and one new token sees every cached one: the mask is all true.
        return (padding_mask is None and q_length == 1) or keep(padding_mask, q_length, *a, **k)

    mu._ignore_causal_mask_sdpa = no_mask_for_one_token
    try:
        static = nxt.clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(2):  # workspaces of the libraries on the capture's stream kind
                forward(model, static, cache)
        torch.cuda.current_stream(device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(g):
            out = forward(model, static, cache)
        g.replay()
        sync(device)
        times = []
        for _ in range(max(1, replays // 8)):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(8):
                g.replay()
            e1.record()
            sync(device)
            times.append(e0.elapsed_time(e1) / 8)
        finite = bool(torch.isfinite(out.logits).all())
        del g, out
        times.sort()
        ms = times[len(times) // 2]
        return {"ms_per_step_median": ms, "ms_per_step_min": times[0], "replays": 8 * len(times),
                "tokens_per_s": nxt.shape[0] * 1000.0 / ms, "logits_finite": finite}
    except Exception as e:  # noqa: BLE001 - recorded: the eager numbers stand alone
        sync(device)
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    finally:
        mu._ignore_causal_mask_sdpa = keep
        if patched:
            del mod._update_linear_attn_mask


KERNEL_GROUPS = (  # (group, substrings of kernel names): where a decode step's device time goes
    ("decode attention (lowbit CUDA split kernel)", ("lowbit_decode",)),
    ("decode attention (lowbit Triton stage 1)", ("_stage1",)),
    ("split merge (lowbit stage 2)", ("_stage2",)),
    ("query rotation (lowbit)", ("_rotate_queries",)),
    ("K/V store (lowbit q8_0)", ("_q8_store_kernel",)),
    ("K/V store (lowbit turbo)", ("_store_kernel", "_deferred_kernel")),
    ("SDPA (bf16 baseline)", ("flash", "fmha", "cudnn", "attention", "sdpa", "efficient")),
    ("matmul (weights)", ("gemm", "gemv", "sm90_xmma", "cutlass", "nvjet", "matmul", "addmm", "mm")),
    ("Gated DeltaNet (fla)", ("fused_recurrent", "chunk_gated", "gated_delta", "causal_conv1d")),
)


def profile_step(model, cache, nxt, steps: int, device) -> dict:
    """Device time per decode step by kernel group, from torch.profiler over `steps` eager steps (kernel durations
    do not depend on how they were launched; the graph's step time is this sum plus the gaps between kernels)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.no_grad():
        forward(model, nxt, cache)  # one untimed step: nothing compiles inside the trace
        sync(device)
        with profile(activities=acts) as prof:
            for _ in range(steps):
                forward(model, nxt, cache)
            sync(device)
    kernels = {}
    for e in prof.key_averages():
        # the kernels themselves on a GPU (an aten op's device time would count its kernels twice); aten ops on a CPU
        on_gpu = cuda and e.device_type == torch.autograd.DeviceType.CUDA
        us = e.self_device_time_total if on_gpu else 0 if cuda else e.self_cpu_time_total
        if us > 0 and (cuda or e.key.startswith("aten::")):
            us0, calls0 = kernels.get(e.key, (0.0, 0.0))
            kernels[e.key] = (us0 + us / steps, calls0 + e.count / steps)
    groups: dict[str, float] = {}
    for name, (us, _) in kernels.items():
        low = name.lower()
        group = next((g for g, keys in KERNEL_GROUPS if any(k.lower() in low for k in keys)), "other")
        groups[group] = groups.get(group, 0.0) + us
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:20]
    return {"steps": steps, "clock": "device" if cuda else "cpu (aten ops, self time)",
            "us_per_step": round(sum(us for us, _ in kernels.values()), 1),
            "groups_us": {g: round(us, 1) for g, us in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"name": n[:120], "us_per_step": round(us, 2), "calls_per_step": round(c, 2)}
                    for n, (us, c) in top]}


def choose_sdpa(model, cache) -> dict:
    """The fastest SDPA variant on this cache's first attention layer (one new token, its heads and length)."""
    layer = attention_layers(cache)[0]
    cfg = model.config.get_text_config(decoder=True)
    B, HKV, T, D = layer.keys.shape
    q = torch.randn(B, cfg.num_attention_heads, 1, D, device=layer.keys.device, dtype=torch.bfloat16)
    name, ms, all_ms = decode_attention.best_sdpa(q, [(layer.keys, layer.values)])
    backend, form = name.split("/")
    _SDPA_CHOICE["variant"] = (decode_attention.sdpa_variants()[backend], form)
    return {"variant": name, "layer_ms": round(ms, 5), "all_ms": {k: round(v, 5) for k, v in all_ms.items()}}


def one_run(model, kv, context, batch, args, hybrid) -> dict:
    device = args.device
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    capacity = context + args.new_tokens + 8 + (args.profile + 1 if args.profile else 0)
    t0 = time.perf_counter()
    cache, nxt = prepare(model, kv, context, batch, args, capacity, hybrid=hybrid)
    sync(device)
    fill_s = time.perf_counter() - t0
    sdpa = choose_sdpa(model, cache) if kv == "bf16" and torch.device(device).type == "cuda" else None
    with real_size.KernelCounts() as counts:
        dec, first = eager(model, cache, nxt, args.new_tokens, args.warmup_steps, device)
        fused = real_size.fused_report(cache, counts)
    nxt = dec.pop("nxt")
    held = cache_bytes(cache)  # after the greedy tokens, before the profile's steps add theirs
    prof = profile_step(model, cache, nxt, args.profile, device) if args.profile else None
    g = graph(model, cache, nxt, args.graph_steps, device)
    _SDPA_CHOICE.pop("variant", None)
    peak = torch.cuda.max_memory_allocated(device) if torch.device(device).type == "cuda" else None
    run = {"context": context, "batch": batch, "kv": kv, "cache_bytes": held, "fill_s": round(fill_s, 2),
           "peak_allocated": peak, "sdpa": sdpa, "eager": dec, "graph": g, "fused": fused,
           **({"profile": prof} if prof else {})}
    del cache
    return run, first


def dense_check(model, kv, context, batch, args, fused_tokens, fused_first, hybrid) -> dict:
    """The same cache (same seeds: the same packed bytes) decoded twice more: densely (the layer dequantized to
    the model's dtype for SDPA) and with float32 attention over the packed bytes (`lowbit.kernels.reference`).
    Fused against dense: do the kernels give the dense path's tokens? Each against float32 attention: which path
    rounds more."""
    capacity = context + args.new_tokens + 8
    decoded = {}
    for attention in ("dense", "reference"):
        cache, nxt = prepare(model, kv, context, batch, args, capacity, attention=attention, hybrid=hybrid)
        dec, first = eager(model, cache, nxt, args.check_tokens, 0, args.device)
        decoded[attention] = dec["tokens"], first
        del cache
    fused = [row[:args.check_tokens] for row in fused_tokens], fused_first
    return {"kv": kv, "context": context, "batch": batch, "tokens_compared": batch * args.check_tokens,
            **agreement(fused, decoded["dense"]),
            "vs_float32_attention": {"fused": agreement(fused, decoded["reference"]),
                                     "dense": agreement(decoded["dense"], decoded["reference"])}}


def agreement(a: tuple[list, torch.Tensor], b: tuple[list, torch.Tensor]) -> dict:
    """Greedy tokens and first-step logits of two decodes of the same cache."""
    (ta, la), (tb, lb) = a, b
    diff = [(s, i) for s, (ra, rb) in enumerate(zip(ta, tb)) for i, (x, y) in enumerate(zip(ra, rb)) if x != y]
    return {"tokens_equal": not diff, "first_difference": diff[0] if diff else None, "differences": len(diff),
            "first_step_logits_max_rel_diff": float((la - lb).abs().max() / lb.abs().max())}


def plan_fit(resolved, kv: str, context: int, batch: int, tokens_after: int, device: str, hybrid: bool):
    """(bytes needed, why it does not fit or None), from lowbit's plan of the weights and transformers' rule for the
    cache (K/V bytes per token exactly, the recurrent and conv states)."""
    from lowbit.planning.planner import plan

    weights = plan(resolved, weights="BF16", kv="bf16", context=1024).weights_bytes
    rule = real_size.transformers_rule(resolved.config, kv.replace("bf16", "bf16/bf16"), tokens_after, batch, 2)
    need = weights + rule["kv_bytes"] + (rule["state_bytes"] if hybrid else 0) + HEADROOM
    if torch.device(device).type != "cuda":
        return need, None
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    if need > total:
        return need, (f"{weights / 1e9:.0f} GB bf16 weights + {rule['kv_bytes'] / 1e9:.1f} GB {kv} cache at "
                      f"{tokens_after:,} tokens x {batch} + states + {HEADROOM / GIB:.0f} GiB headroom = "
                      f"{need / 1e9:.0f} GB > {total / 1e9:.0f} GB")
    return need, None


# --- output ----------------------------------------------------------------------------------------------------------
def summarize(runs: list[dict]) -> list[dict]:
    base = {(r["model"], r["context"], r["batch"]): r for r in runs if r["kv"] == "bf16"}
    out = []
    for r in runs:
        b = base.get((r["model"], r["context"], r["batch"]))
        g, bg = r["graph"].get("ms_per_step_median"), b["graph"].get("ms_per_step_median") if b else None
        e, be = r["eager"]["ms_per_token_median"], b["eager"]["ms_per_token_median"] if b else None
        out.append({"model": r["model"], "context": r["context"], "batch": r["batch"], "kv": r["kv"],
                    "graph_ms": g, "graph_tok_s": r["graph"].get("tokens_per_s"),
                    "graph_speedup": round(bg / g, 3) if g and bg else None,
                    "eager_ms": e, "eager_tok_s": r["eager"]["tokens_per_s"],
                    "eager_speedup": round(be / e, 3) if e and be else None,
                    "peak_gb": None if r["peak_allocated"] is None else round(r["peak_allocated"] / 1e9, 1),
                    "cache_gb": round(r["cache_bytes"] / 1e9, 2)})
    return out


def report_rows(result: dict) -> list[dict]:
    """The rows `lowbit report` ships for a run (src/lowbit/report/decode_e2e.json): the CUDA-graph step of each
    cache, its speedup over the same run's bf16 (or why there is none), the profile's kernel groups, and for bf16
    the time its attention layers spent in SDPA (the step's attention-free ceiling)."""
    runs = {(r["model"], r["context"], r["batch"], r["kv"]): r for r in result["runs"]}
    layers = {r["model"]: r["fused"]["attention_layers"] for r in result["runs"] if r.get("fused")}
    out = []
    for s in result["summary"]:
        run = runs[(s["model"], s["context"], s["batch"], s["kv"])]
        row = {"model": s["model"], "context": s["context"], "batch": s["batch"], "kv": s["kv"],
               "step_ms": round(s["graph_ms"], 2), "tok_s": round(s["graph_tok_s"], 1), "peak_gb": s["peak_gb"],
               "cache_gb": s["cache_gb"]}
        if s["graph_speedup"] is not None:
            row["speedup"] = s["graph_speedup"]
        else:
            row["note"] = "bf16 cache does not fit"
        if run.get("profile"):
            row["profile_us"] = {k: round(v, 1) for k, v in run["profile"]["groups_us"].items()}
        if s["kv"] == "bf16" and s["model"] in layers:
            row["attention_ms"] = round(run["sdpa"]["layer_ms"] * layers[s["model"]], 3)
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    head = ("model", "ctx", "B", "kv", "graph ms", "tok/s", "x bf16", "eager ms", "tok/s", "x bf16", "peak GB", "cache GB")
    keys = ("model", "context", "batch", "kv", "graph_ms", "graph_tok_s", "graph_speedup", "eager_ms", "eager_tok_s",
            "eager_speedup", "peak_gb", "cache_gb")

    def cell(v):
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [head] + [tuple(cell(r[k]) for k in keys) for r in rows]
    w = [max(len(x[i]) for x in lines) for i in range(len(head))]
    return "\n".join(" | ".join(c.ljust(n) for c, n in zip(x, w)) for x in lines)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--contexts", nargs="+", type=int, default=[32768, 131072])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--kv", nargs="+", default=list(KVS), help="bf16 first: the baseline of each (model, ctx, batch)")
    ap.add_argument("--new-tokens", type=int, default=128, help="greedy tokens decoded eagerly per run")
    ap.add_argument("--warmup-steps", type=int, default=4)
    ap.add_argument("--graph-steps", type=int, default=64, help="CUDA-graph replays of one step (0: none)")
    ap.add_argument("--prompt", type=int, default=2 * FUSED_MAX_NEW, help="real prefill tokens before the fill")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="after the timings, profile STEPS eager steps: device time per step by kernel group")
    ap.add_argument("--check", action="store_true", help="fused vs dense tokens at the first context and batch")
    ap.add_argument("--report-rows", metavar="RUN_JSON",
                    help="print a recorded run's rows as the report ships them (report_rows), then exit")
    ap.add_argument("--check-tokens", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="toy models (llama-tiny, qwen-tiny), short contexts (CI)")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                    help="model weights and activations (float32: the fused-vs-dense check without bf16 rounding)")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, help="skip the runs that would start after this")
    ap.add_argument("--out", help="JSON (rewritten after every run)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.models = [m for m in args.models if m in ("llama-tiny", "qwen-tiny")] or ["llama-tiny"]
        if args.contexts == [32768, 131072]:
            args.contexts = [96]
        if args.batches == [1, 8, 32]:
            args.batches = [1, 2]
    if args.new_tokens <= args.warmup_steps:
        ap.error("--new-tokens must exceed --warmup-steps")
    if args.prompt <= FUSED_MAX_NEW:
        ap.error(f"--prompt must exceed {FUSED_MAX_NEW} (shorter prompts take the fused decode path)")
    for kv in args.kv:
        if kv != "bf16":
            real_size.kv_formats(kv)
    return args


def write(result: dict, out: str | None) -> None:
    if out:
        real_size.write(result, out)


def main(argv=None) -> int:
    args = parse(argv)
    if args.report_rows:
        print(json.dumps(report_rows(json.loads(Path(args.report_rows).read_text())), indent=1))
        return 0
    started = time.perf_counter()
    if torch.device(args.device).type == "cuda":
        from lowbit.cache import install

        if torch.device(args.device).index is not None:
            torch.cuda.set_device(torch.device(args.device))
        install("cuda")  # caches on CUDA store (and dequantize) with the kernels: Triton turbo, torch q8_0
    kvs = ["bf16"] + [k for k in args.kv if k != "bf16"] if "bf16" in args.kv else list(args.kv)
    result = {"benchmark": "decode_e2e", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "benchmarks/decode_e2e.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": {**real_size.machine(args.device),
                          **({"commit": os.environ["LOWBIT_COMMIT"]} if os.environ.get("LOWBIT_COMMIT") else {})},
              "settings": {k: getattr(args, k) for k in ("contexts", "batches", "new_tokens", "warmup_steps",
                                                         "graph_steps", "prompt", "check_tokens", "std", "seed", "dtype")},
              "models": [], "runs": [], "skipped": [], "checks": []}
    for name in args.models:
        t0 = time.perf_counter()
        model, resolved, hybrid = load(name, args.device, args.std, args.seed, getattr(torch, args.dtype))
        sync(args.device)
        entry = {"name": name, "hybrid": hybrid, "params": sum(p.numel() for p in model.parameters()),
                 "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                 "build_s": round(time.perf_counter() - t0, 1)}
        if hybrid:
            entry["gdn_kernels"] = real_size.gdn_kernels(model)
            fb = gdn_prefill_fallback(model)
            entry["gdn_prefill"] = "transformers' PyTorch chunked rule (32 tokens, untimed)" if fb else \
                entry["gdn_kernels"]["torch_chunk_gated_delta_rule"]
        result["models"].append(entry)
        print(f"{name}: {entry['param_bytes'] / 1e9:.1f} GB built in {entry['build_s']} s", file=sys.stderr, flush=True)
        checked = False
        for context in args.contexts:
            for batch in args.batches:
                for kv in kvs:
                    need, why = plan_fit(resolved, kv, context, batch, context + args.new_tokens + 8, args.device,
                                         hybrid)
                    if why is None and args.max_minutes and time.perf_counter() - started > 60 * args.max_minutes:
                        why = f"--max-minutes {args.max_minutes} reached"
                    if why:
                        result["skipped"].append({"model": name, "context": context, "batch": batch, "kv": kv,
                                                  "reason": why})
                        print(f"  skip {context} x{batch} {kv}: {why}", file=sys.stderr, flush=True)
                        continue
                    t1 = time.perf_counter()
                    run, first = one_run(model, kv, context, batch, args, hybrid)
                    run = {"model": name, "planned_bytes": need, **run}
                    result["runs"].append(run)
                    g = run["graph"]
                    print(f"  {context} x{batch} {kv}: eager {run['eager']['ms_per_token_median']:.2f} ms, graph "
                          f"{g.get('ms_per_step_median', g.get('error'))} ({time.perf_counter() - t1:.0f} s)",
                          file=sys.stderr, flush=True)
                    if args.check and kv != "bf16" and not checked:
                        result["checks"].append({"model": name, **dense_check(
                            model, kv, context, batch, args, run["eager"]["tokens"], first, hybrid)})
                    del first
                    result["summary"] = summarize(result["runs"])
                    write(result, args.out)
                checked = checked or args.check
        del model
        gc.collect()
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    result["summary"] = summarize(result["runs"])
    write(result, args.out)
    m = result["machine"]
    print(f"\n{m.get('gpu', m['device'])} | torch {m['torch']} | transformers {m['transformers']} | commit {m['commit']} "
          f"| {result['date']}")
    for e in result["models"]:
        if e["hybrid"]:
            g = e["gdn_kernels"]
            print(f"{e['name']}: Gated DeltaNet decode={g.get('torch_recurrent_gated_delta_rule')}, "
                  f"conv update={g.get('causal_conv1d_update')}, prefill={e['gdn_prefill']}")
    for c in result["checks"]:
        ref = c["vs_float32_attention"]
        pairs = (("fused vs dense", c), ("fused vs float32", ref["fused"]), ("dense vs float32", ref["dense"]))
        print(f"check {c['model']} {c['kv']} {c['context']} x{c['batch']}: " + "; ".join(
            f"{name}: {x['differences']} of {c['tokens_compared']} tokens differ, logits rel diff "
            f"{x['first_step_logits_max_rel_diff']:.2e}" for name, x in pairs))
    for s in result["skipped"]:
        print(f"skipped: {s['model']} {s['context']} x{s['batch']} {s['kv']}: {s['reason']}")
    print(table(result["summary"]))
    for r in result["runs"]:
        if r.get("profile"):  # where the step's device time went (--profile)
            p = r["profile"]
            parts = ", ".join(f"{g} {us:,.0f}" for g, us in p["groups_us"].items())
            print(f"profile {r['model']} {r['context']} x{r['batch']} {r['kv']}: {p['us_per_step']:,.0f} µs per step "
                  f"({p['clock']}) = {parts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
