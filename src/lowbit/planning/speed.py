"""Speed estimates: decode and prefill tokens/s of a plan on a device, labelled as estimates.

Decode: each new token reads the active weights (MoE routed experts as the router selects them: top-k of
n per token, the expected union over the sequences of a batch), the KV cache at the current context and
the recurrent state; a step takes, for every piece, the longer of its bytes over the device's effective
memory bandwidth and its FLOPs over the effective compute rate of the kernel that runs it (a roofline per
piece), summed, plus a fixed cost per layer where one was measured. Prefill: the FLOPs of the prompt
(weights x tokens, causal attention over the depth and the prompt) over effective compute, the weights
read once per micro-batch. With llama.cpp's offload (layers or routed experts in host RAM, as `fit`
places them) the host part runs on the host's CPU at its bandwidth and compute, one after the other with
the GPU part, as llama.cpp runs a single sequence; for a prompt, llama.cpp copies host-held weights to the
GPU once per micro-batch, so the host link bounds that part.

The efficiencies (speed_efficiency.json beside this module) are measured, each with where it was
measured: for CPUs on this project's machine with llama-bench (benchmarks/speed_llamacpp.py, calibrated
by benchmarks/speed_check.py on synthetic models, checked on real ones); for GPUs and Apple from public
llama-bench runs, cited. Every `Speed` carries the efficiency it assumed and that source.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from lowbit.devices import Device, budget as make_budget, device as find_device
from lowbit.errors import LowbitError
from lowbit.models.config import LINEAR, SLIDING, ModelConfig
from lowbit.models.tensors import EMBED, EXPERTS, MTP, VISION
from lowbit.planning.engines import LlamaCpp, _layer_of
from lowbit.planning.planner import Plan

__all__ = ["Item", "Speed", "Efficiency", "decode_work", "prefill_work", "estimate", "on_device", "efficiency",
           "DEFAULT_HOST", "DEFAULT_PROMPT", "DEFAULT_DEVICES"]

DEFAULT_HOST = "cpu-64gb"  # the host of a discrete GPU when none is named: a generic desktop
DEFAULT_PROMPT = 512
DEFAULT_DEVICES = ("rtx-4090", "m4-max-128gb", "cpu-64gb")  # `lowbit plan` without --device
EFFICIENCY_FILE = "speed_efficiency.json"


# ---------------------------------------------------------------------------------------------
# What a step reads and computes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One piece of a step: a weight matrix, a layer's attention, its recurrent state, or elementwise work."""

    what: str  # weights | attention | state | other
    type: str  # ggml weight type, or the KV formats ("f16", "q8_0/q4_0")
    bytes: float
    flops: float
    layer: int = -1  # the block it belongs to (-1: outside the blocks)
    expert: bool = False  # a routed-expert tensor (llama.cpp --n-cpu-moe moves these)


def _params(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _tied_output(plan: Plan) -> bool:
    return not any(t.name == "output.weight" for t in plan.tensors)


def _expert_fraction(cfg: ModelConfig, tokens: int) -> float:
    """Expected share of a layer's routed experts that `tokens` tokens touch, each choosing top-k of n
    (uniform routing assumed): 1 - (1 - k/n)^tokens."""
    if not cfg.is_moe or not cfg.num_experts:
        return 1.0
    return 1.0 - (1.0 - cfg.num_experts_used / cfg.num_experts) ** tokens


def _weight_items(plan: Plan, tokens: int, reads: int, logits: int) -> list[Item]:
    """Weights of a step of `tokens` tokens, read `reads` times (once per micro-batch); the output head
    computes `logits` rows."""
    cfg = plan.config
    tied = _tied_output(plan)
    k_over_n = cfg.num_experts_used / cfg.num_experts if cfg.is_moe and cfg.num_experts else 1.0
    touched = _expert_fraction(cfg, min(tokens, 4096))
    out = []
    for t in plan.tensors:
        if t.kind in (VISION, MTP):
            continue  # the vision tower and the MTP drafter do not run in plain decoding
        n = _params(t.shape)
        layer = _layer_of(t.name)
        if t.kind == EMBED:
            if tied and t.name == "token_embd.weight":  # the output head reads the whole table
                out.append(Item("weights", t.type, t.bytes * reads, 2.0 * n * logits, -1))
            else:  # get_rows: one row per token
                out.append(Item("other", t.type, t.bytes / max(1, t.shape[-1]) * tokens, 0.0, -1))
            continue
        if t.name == "output.weight":
            out.append(Item("weights", t.type, t.bytes * reads, 2.0 * n * logits, -1))
            continue
        if len(t.shape) == 1:
            out.append(Item("other", t.type, t.bytes * reads, float(n * tokens), layer))
            continue
        if t.kind == EXPERTS:
            out.append(Item("weights", t.type, t.bytes * touched * reads, 2.0 * n * k_over_n * tokens, layer, True))
            continue
        out.append(Item("weights", t.type, t.bytes * reads, 2.0 * n * tokens, layer))
    return out


def _kv_label(plan: Plan) -> str:
    s = plan.scenario
    return s.k.name if s.k == s.v else f"{s.k.name}/{s.v.name}"


def _window(plan: Plan, layer_type: str) -> int:
    """The sliding window llama.cpp applies to a layer (0: none). Only architectures it runs with a
    sliding-window cache (gemma3) get one; for the rest it attends over the whole context."""
    eng = plan.engine if isinstance(plan.engine, LlamaCpp) else LlamaCpp()
    cfg = plan.config
    return cfg.sliding_window if layer_type == SLIDING and cfg.sliding_window and cfg.arch in eng.SWA_ARCHES else 0


def _seen(queries: int, depth: int, window: int) -> float:
    """Cells the `queries` new tokens attend to, summed: token j sees depth + j cells (causal), at most
    `window`. Masked cells cost nothing: llama.cpp's flash attention skips them (ggml-cpu ops.cpp)."""
    full = queries * depth + queries * (queries + 1) / 2
    if not window or depth + queries <= window:
        return full
    if depth >= window:
        return queries * window
    below = window - depth  # tokens that still see fewer than `window` cells
    return below * depth + below * (below + 1) / 2 + (queries - below) * window


def _attention_items(plan: Plan, queries: int, depth: int, sequences: int, reads: int) -> list[Item]:
    """Attention of `queries` new tokens per sequence after `depth` cached ones, per layer: the K and V
    cells in reach are read once per micro-batch, and each query costs 4 x heads x head_dim FLOPs per cell
    it sees."""
    cfg = plan.config
    s = plan.scenario
    hd = cfg.head_dim
    per_cell = s.k.vector_bytes(hd) + s.v.vector_bytes(hd)
    kv = _kv_label(plan)
    out = []
    for i, lt in enumerate(cfg.layer_types):
        heads_kv = cfg.num_kv_heads[i]
        if lt == LINEAR or not heads_kv:
            continue
        w = _window(plan, lt)
        cells = min(w, depth + queries) if w else depth + queries
        flops = 4.0 * cfg.num_heads * hd * _seen(queries, depth, w) * sequences
        out.append(Item("attention", kv, float(cells * heads_kv * per_cell * sequences * reads), flops, i))
    return out


def _state_items(plan: Plan, tokens: int, sequences: int) -> list[Item]:
    """Recurrent layers (Gated DeltaNet, Mamba-2): the f32 state is read and written once per step per
    sequence; its update costs about 4 x heads x dk x dv FLOPs per token."""
    cfg = plan.config
    n_linear = cfg.count(LINEAR)
    if not n_linear:
        return []
    per_layer = LlamaCpp.recurrent_state_bytes(cfg, 1) // n_linear
    flops = 4.0 * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * tokens
    return [Item("state", "f32", 2.0 * per_layer * sequences, flops * sequences, i)
            for i, lt in enumerate(cfg.layer_types) if lt == LINEAR]


def decode_work(plan: Plan, context: int | None = None, sequences: int | None = None) -> list[Item]:
    """What one decode step reads and computes: `sequences` sequences (default the plan's) each add one
    token after `context` cached tokens (default the plan's context)."""
    ctx = plan.context if context is None else context
    seqs = plan.sequences if sequences is None else sequences
    return (_weight_items(plan, seqs, 1, seqs) + _attention_items(plan, 1, ctx, seqs, 1)
            + _state_items(plan, 1, seqs))


def prefill_work(plan: Plan, prompt: int, depth: int = 0) -> list[Item]:
    """What a prompt of `prompt` tokens after `depth` cached ones costs (one sequence), in micro-batches of
    the engine's n_ubatch; only the last token's logits are computed (llama.cpp's default)."""
    eng = plan.engine if isinstance(plan.engine, LlamaCpp) else LlamaCpp()
    reads = -(-prompt // eng.n_ubatch)
    return (_weight_items(plan, prompt, reads, 1) + _attention_items(plan, prompt, depth, 1, reads)
            + _state_items(plan, prompt, 1))


# ---------------------------------------------------------------------------------------------
# Efficiencies
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _table() -> dict:
    return json.loads(resources.files("lowbit.planning").joinpath(EFFICIENCY_FILE).read_text())


@dataclass(frozen=True)
class Efficiency:
    """An engine's efficiencies on one kind of device, with where they were measured."""

    kind: str
    bandwidth: dict  # weight type (or "default") -> fraction of peak bandwidth reached
    decode: dict  # weight type -> fraction of peak FLOP/s a decode (matrix-vector) kernel reaches
    prefill: dict  # weight type -> fraction of peak FLOP/s a prompt (matrix-matrix) kernel reaches
    attention_decode: dict  # KV format -> fraction of peak FLOP/s
    attention_prefill: dict
    layer_seconds_decode: float  # fixed cost per layer per decode step (CPU: measured)
    layer_seconds_prefill: float  # per layer per micro-batch
    fallback: dict  # unmeasured weight type -> the measured one it is taken as
    source: str
    host_link_bytes_s: float = 0.0  # GPU: host-to-device copy rate for offloaded weights in a prompt
    host_link_source: str = ""
    notes: dict = field(default_factory=dict)
    step_seconds_decode: float = 0.0  # fixed cost per decode step, whatever the layers (GPU eager engines: measured)

    def _get(self, table: dict, key: str, what: str) -> tuple[float, str]:
        if key in table:
            return float(table[key]), ""
        alt = self.fallback.get(key)
        if alt and alt in table:
            return float(table[alt]), f"{key} {what} not measured: taken as {alt}'s"
        return float(table["default"]), ""  # the kind's stated default covers every type without its own figure

    def bw(self, wtype: str, measured: bool = False) -> tuple[float, str]:
        """`measured`: the device's bandwidth was measured (this-cpu's streaming read), not a peak figure."""
        if measured and "measured" in self.bandwidth:
            return float(self.bandwidth["measured"]), ""
        return self._get(self.bandwidth, wtype, "bandwidth efficiency")

    def compute(self, wtype: str, phase: str) -> tuple[float, str]:
        return self._get(self.decode if phase == "decode" else self.prefill, wtype, f"{phase} kernel rate")

    def attention(self, kv: str, phase: str) -> tuple[float, str]:
        table = self.attention_decode if phase == "decode" else self.attention_prefill
        return self._get(table, kv, f"{phase} attention rate")


def efficiency(engine: str, kind: str) -> Efficiency:
    """The measured efficiencies of `engine` on a device `kind` (gpu, apple, cpu, phone)."""
    tab = _table()
    eng = tab["engines"].get(engine)
    if eng is None:
        raise LowbitError(f"no speed efficiencies for engine {engine!r}; known: {', '.join(tab['engines'])}")
    k = eng["kinds"].get(kind) or eng["kinds"].get(eng.get("alias", {}).get(kind, ""))
    if k is None:
        raise LowbitError(f"no speed efficiencies for {engine} on a {kind} device")
    return Efficiency(kind, k["bandwidth"], k["decode"], k["prefill"], k["attention_decode"],
                      k["attention_prefill"], float(k.get("layer_seconds_decode", 0.0)),
                      float(k.get("layer_seconds_prefill", 0.0)), dict(tab.get("fallback", {})), k["source"],
                      float(k.get("host_link_bytes_s", 0.0)), k.get("host_link_source", ""), k.get("notes", {}),
                      float(k.get("step_seconds_decode", 0.0)))


# ---------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """Time of the items that run on one device."""

    device: str
    seconds: float
    memory_seconds: float  # the part of `seconds` where bandwidth, not compute, bounds an item
    bytes: float
    flops: float
    overhead_seconds: float


@dataclass(repr=False)
class Speed:
    """Estimated decode and prefill speed of a plan on a device (an estimate: see `assumption`)."""

    device: str
    engine: str
    context: int  # tokens in the cache when decoding
    sequences: int
    prompt: int
    decode_tps: float  # tokens/s of each sequence
    prefill_tps: float  # prompt tokens/s (one sequence, from an empty cache)
    decode_bound: str
    prefill_bound: str
    decode_bytes: float  # bytes one decode step reads, every device together
    decode_parts: list[Part]
    prefill_parts: list[Part]
    efficiency: dict  # what was assumed, by device
    assumption: str
    notes: list[str] = field(default_factory=list)
    fits: bool = True  # False: the plan does not fit the device even with offload (the figures are moot)
    placement: str = "all on the device"  # or llama.cpp's offload arguments

    @property
    def decode_total_tps(self) -> float:
        return self.decode_tps * self.sequences

    def __repr__(self) -> str:
        return (f"<Speed {self.device} ({self.engine}): decode ~{self.decode_tps:,.1f} tok/s ({self.decode_bound}), "
                f"prefill ~{self.prefill_tps:,.0f} tok/s ({self.prefill_bound}) [estimate]>")

    def to_json(self) -> dict:
        return {
            "estimate": True, "device": self.device, "engine": self.engine, "context": self.context,
            "sequences": self.sequences, "prompt": self.prompt,
            "decode_tokens_per_s": round(self.decode_tps, 3), "decode_bound": self.decode_bound,
            "prefill_tokens_per_s": round(self.prefill_tps, 3), "prefill_bound": self.prefill_bound,
            "decode_bytes_per_step": int(self.decode_bytes),
            "parts": {"decode": [p.__dict__ for p in self.decode_parts],
                      "prefill": [p.__dict__ for p in self.prefill_parts]},
            "efficiency": self.efficiency, "assumption": self.assumption, "notes": self.notes,
            "fits": self.fits, "placement": self.placement,
        }


def _time(items: list[Item], dev: Device, eff: Efficiency, phase: str, layers: int, ubatches: int,
          notes: set[str], link: float = 0.0) -> Part:
    """Roofline per item, summed; `link` > 0: the weights come over the host link instead (prompt offload).
    An efficiency taken from another type is noted when its items carry at least 1% of the bytes."""
    total = mem_total = 0.0
    nbytes = flops = 0.0
    measured = dev.threads > 0
    borrowed: dict[str, float] = {}
    for it in items:
        if it.what == "attention":
            ebw, note_b = eff.bw("default", measured)
            ec, note_c = eff.attention(it.type, phase)
        elif it.what == "weights":
            ebw, note_b = eff.bw(it.type, measured)
            ec, note_c = eff.compute(it.type, phase)
        else:  # state and elementwise work: bandwidth only
            ebw, note_b = eff.bw("default", measured)
            ec, note_c = 0.0, ""
        for n in (note_b, note_c):
            if n:
                borrowed[n] = borrowed.get(n, 0.0) + it.bytes
        bw = link if (link and it.what == "weights") else dev.bandwidth_bytes_s * ebw
        t_mem = it.bytes / bw if bw > 0 else math.inf
        t_cmp = it.flops / (dev.flops * ec) if ec > 0 and it.flops else 0.0
        total += max(t_mem, t_cmp)
        if t_mem >= t_cmp:
            mem_total += t_mem
        nbytes += it.bytes
        flops += it.flops
    notes.update(n for n, b in borrowed.items() if b >= 0.01 * nbytes)
    per_layer = eff.layer_seconds_decode if phase == "decode" else eff.layer_seconds_prefill
    overhead = per_layer * layers * (1 if phase == "decode" else ubatches)
    if phase == "decode" and layers:
        overhead += eff.step_seconds_decode
    return Part(dev.name, total + overhead, mem_total, nbytes, flops, overhead)


def _bound(parts: list[Part]) -> str:
    if len(parts) > 1:
        slow = max(parts, key=lambda p: p.seconds)
        what = "memory" if slow.memory_seconds >= (slow.seconds - slow.overhead_seconds) / 2 else "compute"
        return f"{what} ({slow.device}, host part)" if slow is not parts[0] else f"{what} ({slow.device})"
    p = parts[0]
    if p.overhead_seconds > (p.seconds - p.overhead_seconds):
        return "per-layer overhead"
    return "memory" if p.memory_seconds >= (p.seconds - p.overhead_seconds) / 2 else "compute"


def _split(items: list[Item], n_layers: int, offload: dict | None) -> tuple[list[Item], list[Item]]:
    """(device items, host items) as llama.cpp places them: -ngl G keeps the first n-G blocks (and the
    output head unless G covers it) in host RAM, --n-cpu-moe M the routed experts of the first M blocks."""
    if not offload or offload.get("layers_on_cpu") is None:
        return items, []
    ngl = int(offload.get("gpu_layers", n_layers))
    cpu_moe = int(offload.get("expert_layers_on_cpu", 0) or 0)
    first_gpu = n_layers - ngl
    dev, host = [], []
    for it in items:
        if it.layer < 0:
            on_host = ngl < n_layers and it.what == "weights"  # the output head follows -ngl > layers
        else:
            on_host = it.layer < first_gpu or (it.expert and it.layer < cpu_moe)
        (host if on_host else dev).append(it)
    return dev, host


def estimate(plan: Plan, device: str | Device, offload: dict | None = None, host: str | Device | None = None,
             gpus: int = 1, prompt: int = DEFAULT_PROMPT, context: int | None = None,
             sequences: int | None = None, runtime: str | None = None, split: str | None = None) -> Speed:
    """Decode and prefill tokens/s of `plan` on `device` (a name or a lowbit.devices.Device).

    `offload`: fit's placement (`FitResult.offload`) for a discrete GPU that does not hold everything;
    `host`: the CPU that runs the offloaded part (default a generic desktop, cpu-64gb; `this-cpu` for this
    machine). `gpus`: llama.cpp splits layers over them and runs them one after the other (one sequence
    sees no speed-up); vLLM splits each matrix (tensor parallel), so each GPU reads its share.
    `runtime`: the efficiency row to use instead of the plan engine's (e.g. "transformers": eager transformers
    with flash-linear-attention, measured on an H200); `split`: "layers" or "tensor" over the `gpus` (default:
    tensor for vLLM, layers otherwise).
    """
    dev = find_device(device) if isinstance(device, str) else device
    if not dev.bandwidth_bytes_s or not dev.flops:
        raise LowbitError(f"{dev.name} has no bandwidth or FLOP rate in the catalog; no speed estimate")
    if split not in (None, "layers", "tensor"):
        raise LowbitError(f"split must be 'layers' or 'tensor', got {split!r}")
    engine = plan.engine.name
    eff_engine = runtime or ("llama.cpp" if engine not in _table()["engines"] else engine)
    eff = efficiency(eff_engine, dev.kind)
    ctx = plan.context if context is None else context
    seqs = plan.sequences if sequences is None else sequences
    n_layers = plan.config.num_layers
    notes: set[str] = set()
    if eff_engine != engine and runtime is None:
        notes.add(f"{engine}: no efficiencies measured for it; llama.cpp's are used")
    eng = plan.engine if isinstance(plan.engine, LlamaCpp) else LlamaCpp()
    ubatches = -(-prompt // eng.n_ubatch)

    dec = decode_work(plan, ctx, seqs)
    pre = prefill_work(plan, prompt, 0)
    tensor = split == "tensor" or (split is None and engine == "vllm")
    tp = gpus if tensor and gpus > 1 else 1
    if tp > 1:  # tensor parallel: each GPU reads and computes 1/tp (all-reduce time not counted)
        dec = [Item(i.what, i.type, i.bytes / tp, i.flops / tp, i.layer, i.expert) for i in dec]
        pre = [Item(i.what, i.type, i.bytes / tp, i.flops / tp, i.layer, i.expert) for i in pre]
        notes.add(f"tensor parallel over {tp} GPUs: each reads 1/{tp}; all-reduce time not counted")
    elif gpus > 1:
        notes.add(f"layer split over {gpus} GPUs: layers run one after the other, so one sequence "
                  "decodes as fast as on one GPU holding everything")
    used = {dev.name: _eff_json(eff, dev)}
    dev_dec, host_dec = _split(dec, n_layers, offload if dev.kind == "gpu" else None)
    dev_pre, host_pre = _split(pre, n_layers, offload if dev.kind == "gpu" else None)
    dec_parts = [_time(dev_dec, dev, eff, "decode", n_layers, 1, notes)]
    pre_parts = [_time(dev_pre, dev, eff, "prefill", n_layers, ubatches, notes)]
    if host_dec:
        hdev = find_device(host or DEFAULT_HOST) if not isinstance(host, Device) else host
        heff = efficiency(eff_engine, hdev.kind)
        used[hdev.name] = _eff_json(heff, hdev)
        host_layers = n_layers - int(offload.get("gpu_layers", n_layers))
        dec_parts.append(_time(host_dec, hdev, heff, "decode", host_layers, 1, notes))
        # a prompt's host-held weights cross the host link once per micro-batch; the GPU computes them
        link = eff.host_link_bytes_s
        pre_parts.append(_time(host_pre, dev, eff, "prefill", 0, ubatches, notes, link=link))
        pre_parts[-1] = Part(f"{dev.name} via host link", *list(pre_parts[-1].__dict__.values())[1:])
        notes.add(f"offloaded weights in a prompt: copied to the GPU per micro-batch at "
                  f"{link / 1e9:.0f} GB/s ({eff.host_link_source})")
    t_dec = sum(p.seconds for p in dec_parts)
    t_pre = sum(p.seconds for p in pre_parts)
    assumption = (f"estimate: {eff_engine} on {dev.name} at the efficiencies measured for {dev.kind} devices "
                  f"({eff.source})")
    return Speed(
        device=dev.name, engine=runtime or engine, context=ctx, sequences=seqs, prompt=prompt,
        decode_tps=1.0 / t_dec if t_dec > 0 else math.inf, prefill_tps=prompt / t_pre if t_pre > 0 else math.inf,
        decode_bound=_bound(dec_parts), prefill_bound=_bound(pre_parts),
        decode_bytes=sum(p.bytes for p in dec_parts), decode_parts=dec_parts, prefill_parts=pre_parts,
        efficiency=used, assumption=assumption, notes=sorted(notes),
    )


def _eff_json(eff: Efficiency, dev: Device) -> dict:
    return {"kind": eff.kind, "bandwidth_bytes_s": dev.bandwidth_bytes_s, "flops": dev.flops,
            "device_source": dev.perf_source, "bandwidth_efficiency": eff.bandwidth.get("default"),
            "source": eff.source}


def on_device(plan: Plan, device: str | Device, host: str | Device | None = None, gpus: int = 1,
              prompt: int = DEFAULT_PROMPT) -> Speed:
    """`estimate` with the placement `fit` would choose: on a discrete GPU that cannot hold the plan,
    llama.cpp's offload (routed experts, then layers, in host RAM); where nothing fits, `fits` is False."""
    dev = find_device(device) if isinstance(device, str) else device
    b = make_budget(dev.name, gpus=gpus)
    offload, fits, where = None, True, "all on the device"
    if b is not None:
        mtp = any(t.kind == MTP for t in plan.tensors)
        placed = plan.engine.place(plan.config, plan.scenario.k, plan.scenario.v, plan.tensors, b, mtp,
                                   pad=plan.padded)
        if placed.need(plan.context, plan.sequences).device_bytes > placed.limit:
            offload = placed.offload(plan.context, plan.sequences)
            if offload is None or offload.get("layers_on_cpu") is None or offload.get("gpu_layers") == 0:
                fits, offload, where = False, None, "does not fit"
            else:
                where = offload.get("llama_args", "") or "offloaded"
    s = estimate(plan, dev, offload=offload, host=host, gpus=gpus, prompt=prompt)
    s.fits, s.placement = fits, where
    if not fits:
        s.notes.append(f"{plan.model} does not fit {dev.name} at {plan.context:,} tokens: the figures assume it did")
    return s
