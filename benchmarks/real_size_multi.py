"""Two GPUs, existing engines: one Qwen3.5 model split by layers (accelerate's device_map) and by tensor
parallelism (transformers' tp_plan "auto" under torchrun), each with lowbit's QuantizedKVCache and its fused
decode attention on every GPU; greedy tokens against the one-GPU run over the same quantized cache, each GPU's
K/V and recurrent state against lowbit's plan for that split, decode tokens/s.

    # one process: an 8-layer calibration model, then the model on cuda:0 alone (the reference), then the same
    # weights split by layers over cuda:0 and cuda:1 with accelerate.dispatch_model
    python benchmarks/real_size_multi.py layers --out $OUT/layers.json --reference /tmp/ref.pt
    # tensor parallel: one process per GPU; compares with the reference the layers run saved
    python -m torch.distributed.run --nproc-per-node 2 benchmarks/real_size_multi.py tp --reference /tmp/ref.pt \
        --out $OUT/tp.json
    # CPU (CI): the tiny config; "layers" puts accelerate's hooks on one CPU, "tp" runs two gloo processes
    python benchmarks/real_size_multi.py layers --tiny --device cpu --out /tmp/l.json --reference /tmp/r.pt

Weights: random bf16, each tensor drawn by its own generator seeded from its name (`real_size.random_tensor`),
so the one-GPU model, the layer split (the same tensors moved) and every tensor-parallel rank (its shard of
the same full draw) compute with the same weights. Tensor parallel is transformers' own: the model class's
`prepare_distribute_model({"tp_size": N, "tp_plan": "auto"})` and `maybe_distribute_model`, which
`from_pretrained(tp_plan="auto")` calls around loading a checkpoint; here the full tensors are drawn on each
rank's GPU before sharding instead of read from a file. Its plan for Qwen3.5 shards attention heads (q/k/v
colwise, o rowwise) and the MLP, and gathers the Gated DeltaNet projections' outputs, so every rank runs the
whole Gated DeltaNet and holds its whole recurrent state; a rank's attention layers see only its KV heads.

Runs (`--runs KV@TOKENS ...`): a fresh cache per run takes a random prompt in chunks, then decodes greedily.
Memory per GPU: `lowbit.cache.held_bytes` over the cache layers on that GPU, and `torch.cuda.memory_allocated`
deltas. Predicted per GPU: `lowbit fit --gpus 2` (llama.cpp's layer split for device_map; vLLM's tensor parallel
for tp) and transformers' own rule for that split (`rule_per_device`), with the differences named.
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
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import real_size as rs  # noqa: E402
from lowbit.devices import budget as make_budget  # noqa: E402
from lowbit.models.config import FULL, LINEAR  # noqa: E402
from lowbit.planning.engines import shard_config  # noqa: E402
from lowbit.planning.fit import fit  # noqa: E402

GPUS = 2
TINY_TP = {"num_attention_heads": 4, "num_key_value_heads": 2}  # 2 KV heads: one per rank (transformers splits heads)


# --- what each device holds ---------------------------------------------------------------------------------
def layer_device(layer) -> str | None:
    """The device of a cache layer's tensors (None before it holds any)."""
    for name in ("k_store", "v_store"):
        store = getattr(layer, name, None)
        t = getattr(store, "packed", None) if store is not None else None
        if t is not None:
            return str(t.device)
    for name in ("keys", "conv_states", "recurrent_states"):
        obj = getattr(layer, name, None)
        for t in (obj.values() if isinstance(obj, dict) else [obj]):
            if isinstance(t, torch.Tensor) and t.numel():
                return str(t.device)
    return None


def held_by_device(cache) -> dict[str, dict]:
    """`held_bytes` of the cache layers on each device, and which layers those are."""
    from lowbit.cache import held_bytes

    groups: dict[str, list] = {}
    for i, layer in enumerate(cache.layers):
        groups.setdefault(layer_device(layer) or "none", []).append((i, layer))
    return {dev: {**held_bytes(SimpleNamespace(layers=[lay for _, lay in items])),
                  "layers": [i for i, _ in items]} for dev, items in sorted(groups.items())}


def rule_per_device(cfg, kv: str, tokens: int, layer_devices: list[str], kv_heads_div: int = 1,
                    dtype_bytes: int = 2) -> dict[str, dict]:
    """transformers' own rule (real_size.transformers_rule) per device: K/V of the attention layers it holds, with
    `kv_heads_div` of their KV heads (tensor parallel), and the whole conv + recurrent state of its
    linear-attention layers (transformers' tensor parallel plan does not shard Gated DeltaNet)."""
    k, v = rs.kv_formats(kv)
    per_vec = k.fmt.vector_bytes(cfg.head_dim) + v.fmt.vector_bytes(cfg.head_dim)
    state = (cfg.linear_conv_kernel_dim * cfg.gdn_conv_dim * dtype_bytes
             + cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4)
    out: dict[str, dict] = {}
    for i, (t, dev) in enumerate(zip(cfg.layer_types, layer_devices)):
        d = out.setdefault(dev, {"kv_bytes": 0, "state_bytes": 0})
        if t == LINEAR:
            d["state_bytes"] += state
        elif t == FULL:
            d["kv_bytes"] += cfg.num_kv_heads[i] // kv_heads_div * tokens * per_vec
    return out


def fit_per_gpu(resolved, kv: str, tokens: int, engine: str) -> dict:
    """`lowbit fit MODEL --device h200 --gpus 2 --weights BF16 --kv-k K --kv-v V --context N --engine E`, each GPU."""
    k, v = rs.kv_formats(kv)
    r = fit(resolved, make_budget("h200-141gb", gpus=GPUS), "BF16", k.name, v.name, tokens, engine=engine,
            force_context=True)
    return {"command": f"lowbit fit {resolved.config.name} --device h200 --gpus {GPUS} --weights BF16 --kv-k {k.name} "
                       f"--kv-v {v.name} --context {tokens} --engine {engine} --format json",
            "engine": engine, "per_gpu": r.to_json()["per_gpu"]}


# --- running --------------------------------------------------------------------------------------------------
class Clocks:
    """Synchronize and read the allocator on several devices (CUDA), or nothing (CPU). Duck-types real_size.Clock."""

    def __init__(self, devices: list[str]):
        self.devices = [torch.device(d) for d in dict.fromkeys(devices)]
        self.cuda = self.devices[0].type == "cuda"
        if self.cuda:
            torch.cuda.set_device(self.devices[0])

    def sync(self):
        if self.cuda:
            for d in self.devices:
                torch.cuda.synchronize(d)

    def allocated(self) -> dict[str, int] | None:
        return {str(d): torch.cuda.memory_allocated(d) for d in self.devices} if self.cuda else None


def parse_runs(specs: list[str]) -> list[tuple[str, int]]:
    out = []
    for s in specs:
        kv, _, n = s.partition("@")
        rs.kv_formats(kv) if kv != "bf16" else None
        out.append((kv, int(n)))
    return out


def one(model, resolved, kv: str, context: int, args, clock: Clocks, input_device: str) -> tuple[dict, torch.Tensor]:
    """A fresh cache: prefill, greedy decode; memory per device; the first decode step's logits (not in JSON)."""
    gen = torch.Generator(device="cpu").manual_seed(args.seed + context)
    ids = torch.randint(0, resolved.config.vocab_size, (1, context), generator=gen).to(input_device)
    gc.collect()
    clock.sync()
    before = clock.allocated()
    cache = rs.make_cache(model, kv)
    t0 = time.perf_counter()
    with torch.no_grad(), rs.KernelCounts() as counts:
        nxt, last = rs.prefill(model, ids, cache, args.chunk)
        clock.sync()
        prefill_s = time.perf_counter() - t0
        finite = bool(torch.isfinite(last).all())
        del last
        gc.collect()
        after = clock.allocated()
        held = held_by_device(cache)
        counts.counts = {"cuda": 0, "reference": 0}
        dec, first = rs.decode(model, cache, nxt, args.decode_tokens, args.warmup_steps, clock)
        gc.collect()
        after_decode = clock.allocated()
        held_decode = held_by_device(cache)
    fused = rs.fused_report(cache, counts)
    del cache
    delta = None if before is None else {d: after[d] - before[d] for d in before}
    delta_decode = None if before is None else {d: after_decode[d] - before[d] for d in before}
    return {"kv": kv, "context": context, "prefill_s": prefill_s, "logits_finite": finite,
            "held_after_prefill": held, "allocated_delta_after_prefill": delta,
            "held_after_decode": held_decode, "allocated_delta_after_decode": delta_decode,
            "decode": dec, "fused": fused}, first.detach().float().cpu()


def compare(run: dict, first: torch.Tensor, ref: dict | None) -> None:
    """Greedy tokens and the first decode step's logits against the one-GPU run of the same cache."""
    if ref is None:
        return
    r = ref.get((run["kv"], run["context"]))
    if r is None:
        run["vs_single"] = None
        return
    a, b = run["decode"]["tokens"], r["tokens"]
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    run["vs_single"] = {"tokens_equal": not diff, "first_difference": diff[0] if diff else None,
                        "matching_prefix": diff[0] if diff else len(a),
                        "first_step_logits_max_rel_diff": float((first - r["first"]).abs().max() / r["first"].abs().max()),
                        "first_step_argmax_equal": int(first.argmax()) == int(r["first"].argmax())}


def predictions(resolved, run: dict, layer_devices: list[str], mode: str) -> None:
    """Per device: transformers' rule for this split and lowbit fit's plan, after the prefill."""
    cfg = resolved.config
    tokens = run["context"]
    if run["kv"] == "bf16":
        kv = "f16/f16"  # the same bytes per value as bf16
    else:
        kv = run["kv"]
    run["predicted_transformers_rule"] = rule_per_device(cfg, kv, tokens, layer_devices,
                                                         kv_heads_div=GPUS if mode == "tp" else 1)
    run["predicted_fit"] = fit_per_gpu(resolved, kv, tokens, "vllm" if mode == "tp" else "llama.cpp")


def explain_layers(run: dict, cfg) -> None:
    """Measured per GPU minus llama.cpp's layer-split plan, split into the named differences."""
    devs = sorted(run["held_after_prefill"])
    out = {}
    for d, dev in enumerate(devs):
        held = run["held_after_prefill"][dev]
        plan_gpu = run["predicted_fit"]["per_gpu"][d]
        n_linear = sum(1 for i in held["layers"] if cfg.layer_types[i] == LINEAR)
        conv = -n_linear * cfg.gdn_conv_dim * ((cfg.linear_conv_kernel_dim - 1) * 4 - cfg.linear_conv_kernel_dim * 2)
        out[dev] = {"kv_minus_plan": held["kv_live"] - plan_gpu["kv_bytes"],
                    "state_minus_plan": held["state"] - plan_gpu["state_bytes"],
                    "state_conv_window": conv,
                    "state_residual": held["state"] - plan_gpu["state_bytes"] - conv}
    run["explained_vs_fit"] = out


def explain_tp(run: dict, rank_held: dict, cfg, tokens: int) -> None:
    """One rank minus vLLM's tensor-parallel plan: vLLM's page rounding (K/V) and its Gated DeltaNet sharding and
    state layout (transformers keeps the whole state on every rank)."""
    plan_gpu = run["predicted_fit"]["per_gpu"][0]
    k, v = rs.kv_formats(run["kv"] if run["kv"] != "bf16" else "f16/f16")
    rank = shard_config(cfg, GPUS)
    exact_kv = sum(h * tokens * (k.fmt.vector_bytes(cfg.head_dim) + v.fmt.vector_bytes(cfg.head_dim))
                   for h, t in zip(rank.num_kv_heads, cfg.layer_types) if t == FULL)
    run["explained_vs_fit"] = {
        "kv_minus_plan": rank_held["kv_live"] - plan_gpu["kv_bytes"],
        "kv_vllm_page_rounding": exact_kv - plan_gpu["kv_bytes"],
        "kv_residual": rank_held["kv_live"] - exact_kv,
        "state_minus_plan": rank_held["state"] - plan_gpu["state_bytes"],
        "note": "vLLM shards Gated DeltaNet heads over the ranks (conv state 2 B x (kernel-1) columns); "
                "transformers' plan gathers the Gated DeltaNet projections, so every rank holds the whole state",
    }


# --- models ---------------------------------------------------------------------------------------------------
def config(args) -> tuple[dict, object]:
    text, resolved = rs.text_config("tiny" if args.tiny else args.model, args.layers)
    if args.tiny:
        text.update(TINY_TP)
        cfg = rs.from_hf_config({"model_type": "qwen3_5_text", "text_config": text}, name="tiny")
        resolved = rs.ResolvedModel(cfg)
    return text, resolved


def warm(model, runs, args, clock, input_device) -> float:
    """Compile and autotune the kernels (fla, Triton) on a short prompt before anything is timed (CUDA only)."""
    if not clock.cuda:
        return 0.0
    t0 = time.perf_counter()
    n = min(args.chunk, 256)
    ids = torch.randint(0, 32, (1, 2 * n), device=input_device)
    with torch.no_grad():
        for kv in dict.fromkeys(kv for kv, _ in runs):
            cache = rs.make_cache(model, kv)
            nxt, _ = rs.prefill(model, ids, cache, n)
            for _ in range(3):
                nxt = rs.forward(model, nxt, cache).logits[:, -1:].argmax(-1)
            del cache
    clock.sync()
    gc.collect()
    return time.perf_counter() - t0


def param_bytes_by_device(model) -> dict[str, int]:
    from torch.distributed.tensor import DTensor

    out: dict[str, int] = {}
    for p in model.parameters():
        t = p.to_local() if isinstance(p, DTensor) else p
        out[str(t.device)] = out.get(str(t.device), 0) + t.numel() * t.element_size()
    return out


def split_map(model, n_layers: int, devices: list[str]) -> dict[str, str]:
    """llama.cpp's even layer split (layer i on GPU i * n // layers), as an accelerate device_map: the embedding
    with the first layer, the final norm, rotary tables and output head with the last."""
    n = len(devices)
    dm = {"model.embed_tokens": devices[0]}
    for i in range(n_layers):
        dm[f"model.layers.{i}"] = devices[min(n - 1, i * n // n_layers)]
    for name, _ in model.named_children():
        if name != "model":
            dm[name] = devices[-1]
    for name, _ in model.model.named_children():
        if name not in ("embed_tokens", "layers"):
            dm[f"model.{name}"] = devices[-1]
    return dm


def machine(device: str) -> dict:
    out = rs.machine(device)
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:
        out["accelerate"] = None
    if torch.device(device).type == "cuda":
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out


def header(args, argv, device) -> dict:
    return {"benchmark": "real_size_multi", "mode": args.mode,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/real_size_multi.py", *argv]), "machine": machine(device),
            "settings": {"runs": args.runs, "decode_tokens": args.decode_tokens, "warmup_steps": args.warmup_steps,
                         "chunk": args.chunk, "batch": 1, "dtype": "bfloat16", "seed": args.seed,
                         "weights": f"random normal, std {args.std}, seeded per tensor by name",
                         "layers": args.layers, "tiny": args.tiny}}


def calibrate(args, clock_device: str) -> list[dict]:
    """Decode steps of the model cut to its first `--calibrate-layers` layers at a short context: the per-layer
    cost of eager transformers that the speed model's `transformers` row takes (CUDA only)."""
    if not args.calibrate_layers or torch.device(clock_device).type != "cuda":
        return []
    text, resolved = rs.text_config(args.model, args.calibrate_layers)
    model = rs.build_model(text, clock_device, torch.bfloat16, args.std, args.seed)
    clock = Clocks([clock_device])
    runs = [(kv, args.calibrate_context) for kv in ("bf16", "turbo3/turbo3")]
    warm_s = warm(model, runs, args, clock, clock_device)
    out = []
    for kv, n in runs:
        run, _ = one(model, resolved, kv, n, args, clock, clock_device)
        run.update(layers=resolved.config.num_layers, warmup_s=warm_s,
                   param_bytes=param_bytes_by_device(model))
        out.append(run)
        print(f"  calibration {resolved.config.name} {kv}@{n}: {run['decode']['ms_per_token_median']:.2f} ms/token",
              file=sys.stderr)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def run_layers(args, argv) -> int:
    """The one-GPU reference, then the same weights split by layers with accelerate (skipped, and said so in the
    JSON, where accelerate is not installed: the reference alone is what the tensor-parallel run needs)."""
    devices = [args.device] * GPUS if torch.device(args.device).type == "cpu" else \
        [f"cuda:{i}" for i in range(GPUS)]
    if torch.device(args.device).type == "cuda" and torch.cuda.device_count() < GPUS:
        raise SystemExit(f"layers: {GPUS} GPUs needed, {torch.cuda.device_count()} visible")
    result = header(args, argv, devices[0])
    result["calibration"] = calibrate(args, devices[0])
    text, resolved = config(args)
    runs = parse_runs(args.runs)
    t0 = time.perf_counter()
    model = rs.build_model(text, devices[0], torch.bfloat16, args.std, args.seed)
    build_s = time.perf_counter() - t0
    result["model"] = {"name": resolved.config.name, "layers": resolved.config.num_layers, "build_s": build_s,
                       "gdn_kernels": rs.gdn_kernels(model), "param_bytes_single": param_bytes_by_device(model)}
    clock = Clocks([devices[0]])
    result["model"]["warmup_s_single"] = warm(model, runs, args, clock, devices[0])
    ref: dict = {}
    result["single"] = []
    for kv, n in runs:
        run, first = one(model, resolved, kv, n, args, clock, devices[0])
        ref[(kv, n)] = {"tokens": run["decode"]["tokens"], "first": first}
        result["single"].append(run)
        print(f"  single {kv}@{n}: {run['decode']['ms_per_token_median']:.2f} ms/token", file=sys.stderr)
        rs.write(result, args.out)
    if args.reference:
        torch.save({f"{kv}@{n}": r for (kv, n), r in ref.items()}, args.reference)
    try:
        import accelerate
    except ImportError:
        result["layers_split"] = {"skipped": "accelerate is not installed"}
        rs.write(result, args.out)
        return 0
    # the split: accelerate moves each module to its device and hooks its inputs there (io_same_device on the model)
    dm = split_map(model, resolved.config.num_layers, devices)
    t0 = time.perf_counter()
    model = accelerate.dispatch_model(model, device_map=dm, skip_keys=model._skip_keys_device_placement,
                                      force_hooks=len(set(devices)) == 1)
    clock = Clocks(devices)
    clock.sync()
    layer_devices = [dm[f"model.layers.{i}"] for i in range(resolved.config.num_layers)]
    result["layers_split"] = {"device_map": dm, "dispatch_s": time.perf_counter() - t0,
                              "param_bytes": param_bytes_by_device(model), "layer_devices": layer_devices}
    result["layers"] = []
    for kv, n in runs:
        run, first = one(model, resolved, kv, n, args, clock, devices[0])
        compare(run, first, ref)
        predictions(resolved, run, [str(torch.device(d)) for d in layer_devices], "layers")
        if torch.device(args.device).type == "cuda":
            explain_layers(run, resolved.config)
        result["layers"].append(run)
        print(f"  layers {kv}@{n}: {run['decode']['ms_per_token_median']:.2f} ms/token, "
              f"tokens equal: {run['vs_single']['tokens_equal']}", file=sys.stderr)
        rs.write(result, args.out)
    rs.write(result, args.out)
    return 0


def run_tp(args, argv) -> int:
    """Each rank builds its shard with transformers' tensor-parallel plan and decodes; rank 0 writes the JSON."""
    import torch.distributed as dist
    import transformers
    from transformers.initialization import no_init_weights

    text, resolved = config(args)
    cfg = resolved.config
    world = int(os.environ.get("WORLD_SIZE", "1"))
    bad = [h for h in set(cfg.num_kv_heads) if h and h % world]
    if bad:  # k_proj/v_proj are split by output features: a rank would get part of a head
        raise SystemExit(f"tp: {bad[0]} KV heads cannot be split over {world} ranks by transformers' plan "
                         "(vLLM replicates KV heads then; `lowbit fit --engine vllm` plans that)")
    moe = text["model_type"] in rs.MOE
    model_cls = transformers.Qwen3_5MoeForCausalLM if moe else transformers.Qwen3_5ForCausalLM
    cfg_cls = transformers.Qwen3_5MoeTextConfig if moe else transformers.Qwen3_5TextConfig
    dcfg, device_map, mesh = model_cls.prepare_distribute_model({"tp_size": world, "tp_plan": "auto"})
    rank = dist.get_rank()
    device = str(device_map) if not isinstance(device_map, dict) else "cpu"
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device), no_init_weights():
            model = model_cls(cfg_cls(**{k: v for k, v in text.items() if k != "model_type"}))
    finally:
        torch.set_default_dtype(old)
    model.tie_weights()
    rs.fill_random(model, args.std, args.seed)  # the full tensors, as the one-GPU run draws them
    model = model_cls.maybe_distribute_model(model, dcfg, mesh)  # each rank keeps its shards
    model.eval()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    build_s = time.perf_counter() - t0
    clock = Clocks([device])
    runs = parse_runs(args.runs)
    info = {"name": cfg.name, "layers": cfg.num_layers, "build_s": build_s, "world_size": world,
            "gdn_kernels": rs.gdn_kernels(model), "param_bytes": param_bytes_by_device(model),
            "tp_plan": dict(model.tp_plan)}
    info["warmup_s"] = warm(model, runs, args, clock, device)
    ref = None
    if args.reference and Path(args.reference).exists():
        raw = torch.load(args.reference)
        ref = {(k.rpartition("@")[0], int(k.rpartition("@")[2])): v for k, v in raw.items()}
    mine = []
    for kv, n in runs:
        run, first = one(model, resolved, kv, n, args, clock, device)
        compare(run, first, ref)
        mine.append(run)
        if rank == 0:
            print(f"  tp {kv}@{n}: {run['decode']['ms_per_token_median']:.2f} ms/token", file=sys.stderr)
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "device": device, "model": info, "runs": mine})
    if rank == 0:
        result = header(args, argv, device)
        result["model"] = info
        result["ranks"] = gathered
        result["tp"] = []
        for j, (kv, n) in enumerate(runs):
            run = dict(mine[j])
            run["per_rank"] = [{"rank": g["rank"], "device": g["device"],
                                "held_after_prefill": g["runs"][j]["held_after_prefill"],
                                "allocated_delta_after_prefill": g["runs"][j]["allocated_delta_after_prefill"],
                                "tokens": g["runs"][j]["decode"]["tokens"],
                                "ms_per_token_median": g["runs"][j]["decode"]["ms_per_token_median"]}
                               for g in gathered]
            run["ranks_agree"] = len({tuple(p["tokens"]) for p in run["per_rank"]}) == 1
            predictions(resolved, run, ["rank"] * cfg.num_layers, "tp")
            held0 = next(iter(run["held_after_prefill"].values()))
            explain_tp(run, held0, cfg, n)
            run["explained_vs_fit"]["state_residual_vs_transformers_rule"] = (
                held0["state"] - run["predicted_transformers_rule"]["rank"]["state_bytes"])
            result["tp"].append(run)
        rs.write(result, args.out)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("layers", "tp"))
    ap.add_argument("--model", default="qwen3.5-27b", help="a built-in dense Qwen3.5 (default qwen3.5-27b)")
    ap.add_argument("--runs", nargs="+", default=None,
                    help="KV@TOKENS: bf16 (DynamicCache) or K/V formats of a QuantizedKVCache, and the prompt "
                         "(default turbo3/turbo3@32768 q8_0/turbo4@8192 bf16@32768)")
    ap.add_argument("--decode-tokens", type=int, default=None, help="greedy new tokens (default 10; tiny 6)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="decode steps left out of the timing (default 2)")
    ap.add_argument("--chunk", type=int, default=None, help="prefill chunk (default 4096; tiny 128)")
    ap.add_argument("--layers", type=int, help="keep only the first N layers")
    ap.add_argument("--calibrate-layers", type=int, default=8,
                    help="layers mode on CUDA: first time decode on the model cut to N layers (0: skip)")
    ap.add_argument("--calibrate-context", type=int, default=2048)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a tiny Qwen3.5-shaped config (CPU test)")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--reference", help="layers: save the one-GPU tokens and logits here; tp: compare with them")
    args = ap.parse_args(argv)
    args.runs = args.runs or (["turbo3/turbo3@256", "q8_0/turbo4@256"] if args.tiny
                              else ["turbo3/turbo3@32768", "q8_0/turbo4@8192", "bf16@32768"])
    parse_runs(args.runs)
    args.decode_tokens = args.decode_tokens if args.decode_tokens is not None else (6 if args.tiny else 10)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else 2
    args.chunk = args.chunk or (128 if args.tiny else 4096)
    if args.decode_tokens <= args.warmup_steps:
        ap.error("--decode-tokens must exceed --warmup-steps")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    return run_layers(args, argv) if args.mode == "layers" else run_tp(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
