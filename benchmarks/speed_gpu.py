"""The speed model against the GPU runs: eager transformers + flash-linear-attention on the lent H200s.

    python benchmarks/speed_gpu.py --profile docs/speed_results/device_profile_h200.json \\
        --layers docs/real_size_results/qwen3.5-27b_2gpu_layers_h200.json \\
        --tp docs/real_size_results/qwen3.5-27b_2gpu_tp_h200.json \\
        --single docs/real_size_results/qwen3.5-27b_h200.json --write-efficiency --out docs/speed_results/gpu_check.json

The `transformers` row of lowbit/planning/speed_efficiency.json (kind gpu) is measured, from these files only:
- bandwidth: the H200's copy bandwidth as `lowbit devices --measure` measured it, over the datasheet's 4.8 TB/s;
- decode compute (matrix-vector, attention): the measured bf16 matrix-product rate over the datasheet's peak;
- a fixed cost per layer and per decode step (Python dispatch and kernel launches of eager mode): solved from two
  runs of the turbo3/turbo3 cache on one GPU, the 27B cut to 8 layers at 2,048 tokens and whole at 32,768
  (`calibration` and `single` in the layer-split file), after the bytes each step reads at that bandwidth;
- prefill compute: from the 8-layer run's 2,048-token prefill.
Every other run is a check, predicted with that row (`estimate(..., runtime="transformers", split=...)`):
the q8_0/turbo4 and bf16 caches, the same three split by layers (accelerate) and tensor parallel, the 8-layer
bf16 run, and the one-GPU runs of docs/real_size_results/qwen3.5-27b_h200.json (32K and 128K).
Measured decode tokens/s: wall clock over the timed steps (`tokens_per_s`); prefill: prompt tokens over the
prefill's wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_size as rs  # noqa: E402
from lowbit.devices import device as find_device  # noqa: E402
from lowbit.planning import speed  # noqa: E402
from lowbit.planning.planner import plan  # noqa: E402

EFF_PATH = Path(speed.__file__).with_name(speed.EFFICIENCY_FILE)
DEVICE = "h200-141gb"
RUNTIME = "transformers"


def model_plan(model: str, layers: int | None, kv: str, context: int):
    _, resolved = rs.text_config(model, layers)
    k, v = ("f16", "f16") if kv == "bf16" else (s.name for s in rs.kv_formats(kv))
    return plan(resolved, weights="BF16", kv_k=k, kv_v=v, context=context, engine="llama.cpp")


def row_from(tab: dict, source: str, notes: dict) -> dict:
    return {"source": source, "bandwidth": {"default": tab["bw"]}, "decode": {"default": tab["compute"]},
            "prefill": {"default": tab["prefill"]}, "attention_decode": {"default": tab["compute"]},
            "attention_prefill": {"default": tab["prefill"]}, "layer_seconds_decode": tab["layer_s"],
            "layer_seconds_prefill": 0.0, "step_seconds_decode": tab["step_s"], "notes": notes}


def efficiency(row: dict) -> speed.Efficiency:
    return speed.Efficiency("gpu", row["bandwidth"], row["decode"], row["prefill"], row["attention_decode"],
                            row["attention_prefill"], row["layer_seconds_decode"], row["layer_seconds_prefill"], {},
                            row["source"], step_seconds_decode=row["step_seconds_decode"])


def decode_seconds(p, eff: speed.Efficiency, context: int, tp: int = 1) -> speed.Part:
    items = speed.decode_work(p, context=context, sequences=1)
    if tp > 1:
        items = [speed.Item(i.what, i.type, i.bytes / tp, i.flops / tp, i.layer, i.expert) for i in items]
    return speed._time(items, find_device(DEVICE), eff, "decode", p.config.num_layers, 1, set())


def prefill_seconds(p, eff: speed.Efficiency, prompt: int, tp: int = 1) -> float:
    items = speed.prefill_work(p, prompt, 0)
    if tp > 1:
        items = [speed.Item(i.what, i.type, i.bytes / tp, i.flops / tp, i.layer, i.expert) for i in items]
    return speed._time(items, find_device(DEVICE), eff, "prefill", p.config.num_layers, -(-prompt // 512), set()).seconds


def calibrate(profile: dict, layers_file: dict) -> tuple[dict, dict]:
    dev = find_device(DEVICE)
    gpu = profile["gpus"][0]
    tab = {"bw": gpu["copy_bandwidth_bytes_s"] / dev.bandwidth_bytes_s, "compute": gpu["bf16_matmul_flops"] / dev.flops,
           "prefill": 1.0, "layer_s": 0.0, "step_s": 0.0}
    cal = next(r for r in layers_file["calibration"] if r["kv"] == "turbo3/turbo3")
    full = next(r for r in layers_file["single"] if r["kv"] == "turbo3/turbo3")
    model = layers_file["command"].split("--model ")[1].split()[0] if "--model " in layers_file["command"] else \
        "qwen3.5-27b"
    bare = efficiency(row_from(tab, "", {}))
    pts = []
    for r, layers in ((cal, cal["layers"]), (full, None)):
        p = model_plan(model, layers, r["kv"], r["context"])
        t = 1.0 / r["decode"]["tokens_per_s"]
        pts.append((p.config.num_layers, t - decode_seconds(p, bare, r["context"]).seconds))
    (l1, o1), (l2, o2) = pts
    tab["layer_s"] = (o2 - o1) / (l2 - l1)
    tab["step_s"] = o1 - l1 * tab["layer_s"]
    # prefill: the rate that reproduces the 8-layer prompt (bisection on a decreasing time)
    p = model_plan(model, cal["layers"], cal["kv"], cal["context"])
    lo, hi = 1e-3, 1.0
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        t = prefill_seconds(p, efficiency(row_from({**tab, "prefill": mid}, "", {})), cal["context"])
        lo, hi = (lo, mid) if t < cal["prefill_s"] else (mid, hi)
    tab["prefill"] = (lo * hi) ** 0.5
    used = {"bandwidth": f"copy {gpu['copy_bandwidth_bytes_s'] / 1e12:.3f} TB/s measured / {dev.bandwidth_bytes_s / 1e12:.1f}"
                         " TB/s datasheet",
            "decode": f"bf16 matmul {gpu['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s measured / {dev.flops / 1e12:.0f} "
                      "TFLOP/s datasheet",
            "overhead": f"decode {1e3 / cal['decode']['tokens_per_s']:.2f} ms/token at {cal['layers']} layers "
                        f"({cal['context']:,} tokens) and {1e3 / full['decode']['tokens_per_s']:.2f} ms/token at 64 "
                        f"layers ({full['context']:,} tokens), turbo3/turbo3, one GPU, less the bytes at the measured "
                        f"bandwidth: {tab['layer_s'] * 1e3:.3f} ms per layer + {tab['step_s'] * 1e3:.2f} ms per step",
            "prefill": f"{cal['context']:,}-token prompt of the {cal['layers']}-layer model in {cal['prefill_s']:.3f} s"}
    return tab, used


def checks(tab: dict, layers_file: dict, tp_file: dict | None, single_file: dict | None) -> list[dict]:
    eff = efficiency(row_from(tab, "", {}))
    model = "qwen3.5-27b"
    rows = []

    def add(label: str, r: dict, layers: int | None, split: str, calibration: bool, note: str = ""):
        p = model_plan(model, layers, r["kv"], r["context"])
        tp = 2 if split == "tensor" else 1
        ctx = r["context"] + r["decode"]["warmup_steps"] + r["decode"]["timed_steps"] // 2
        part = decode_seconds(p, eff, ctx, tp)
        pred = 1.0 / part.seconds
        meas = r["decode"]["tokens_per_s"]
        bytes_s = part.memory_seconds
        pre_pred = r["context"] / prefill_seconds(p, eff, r["context"], tp)
        rows.append({
            "run": label, "layers": p.config.num_layers, "kv": r["kv"], "context": r["context"], "split": split,
            "gpus": 1 if split == "none" else 2, "calibration": calibration, "note": note,
            "measured_ms_per_token_median": r["decode"]["ms_per_token_median"], "measured_tokens_per_s": meas,
            "predicted_tokens_per_s": pred, "error": pred / meas - 1,
            "predicted_parts_ms": {"bytes": bytes_s * 1e3, "compute_over_bytes": (part.seconds - part.overhead_seconds
                                                                                   - bytes_s) * 1e3,
                                   "per_layer": p.config.num_layers * tab["layer_s"] * 1e3, "per_step": tab["step_s"] * 1e3},
            "bytes_per_step": part.bytes, "bound": speed._bound([part]),
            "measured_prefill_tokens_per_s": r["context"] / r["prefill_s"],
            "predicted_prefill_tokens_per_s": pre_pred,
            "prefill_error": None if pre_pred is None else pre_pred / (r["context"] / r["prefill_s"]) - 1,
        })

    for j, r in enumerate(layers_file["calibration"]):
        add(f"one GPU, {r['layers']} layers", r, r["layers"], "none", r["kv"] == "turbo3/turbo3",
            "first prompt of this length: Triton autotuning in its prefill time" if j == 0 else "")
    for r in layers_file["single"]:
        add("one GPU", r, None, "none", r["kv"] == "turbo3/turbo3",
            "first 32K prefill after the warm-up: Triton autotuning in its time" if r["prefill_s"] > 10 else "")
    seen = set()
    for r in layers_file.get("layers", []):  # the first prompt on the second GPU autotunes there
        first = r["kv"] == layers_file["layers"][0]["kv"] and not seen
        seen.add(r["kv"])
        add("2 GPUs, layers (accelerate)", r, None, "layers", False,
            "first prompt on the second GPU: Triton autotuning there in its time" if first else "")
    for r in (tp_file or {}).get("tp", []):
        add("2 GPUs, tensor parallel", r, None, "tensor", False)
    for r in (single_file or {}).get("runs", []):
        if r["kv"] == "q8_0/turbo4":
            continue  # that session's q8_0 keys still went through host memory (removed since): not this engine
        add("one GPU (real-size session)", r, None, "none", False)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| run | layers | cache | context | measured tok/s (ms/token) | predicted tok/s | error | "
            "predicted: bytes + layers + step (ms) | prefill tok/s measured / predicted |")
    out = [head, "|" + "---|" * 9]
    for r in rows:
        pp = r["predicted_parts_ms"]
        pre = (f"{r['measured_prefill_tokens_per_s']:,.0f} / {r['predicted_prefill_tokens_per_s']:,.0f} "
               f"({r['prefill_error']:+.0%})" if r["predicted_prefill_tokens_per_s"] else
               f"{r['measured_prefill_tokens_per_s']:,.0f} / -")
        mark = " (calibration)" if r["calibration"] else ""
        out.append(f"| {r['run']}{mark} | {r['layers']} | {r['kv']} | {r['context']:,} | "
                   f"{r['measured_tokens_per_s']:.2f} ({r['measured_ms_per_token_median']:.1f}) | "
                   f"{r['predicted_tokens_per_s']:.2f} | {r['error']:+.0%} | "
                   f"{pp['bytes']:.1f} + {pp['per_layer']:.1f} + {pp['per_step']:.1f} | {pre} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=Path, required=True, help="lowbit devices --measure JSON (a `gpus` list)")
    ap.add_argument("--layers", type=Path, required=True, help="real_size_multi.py layers JSON")
    ap.add_argument("--tp", type=Path, help="real_size_multi.py tp JSON")
    ap.add_argument("--single", type=Path, help="real_size.py JSON (one GPU, more contexts)")
    ap.add_argument("--write-efficiency", action="store_true", help="write the transformers row into the model")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    profile = json.loads(args.profile.read_text())
    profile = profile.get("profile", profile)
    layers_file = json.loads(args.layers.read_text())
    tp_file = json.loads(args.tp.read_text()) if args.tp else None
    single_file = json.loads(args.single.read_text()) if args.single else None
    tab, used = calibrate(profile, layers_file)
    m = layers_file["machine"]
    source = (f"measured on the lent {profile['gpus'][0]['name']} (nvidia-h200-x2), {layers_file['date'][:10]}: eager "
              f"transformers {m['transformers']} + flash-linear-attention "
              f"{layers_file['model']['gdn_kernels'].get('fla_version')} for Gated DeltaNet, torch {m['torch']}, "
              "batch 1, bf16 weights, lowbit's QuantizedKVCache or DynamicCache; bandwidth and matmul rate from "
              "`lowbit devices --measure`, per-layer and per-step decode cost from qwen3.5-27b at 8 and 64 layers "
              "(benchmarks/speed_gpu.py)")
    row = row_from(tab, source, used)
    rows = checks(tab, layers_file, tp_file, single_file)
    print(markdown(rows))
    print(json.dumps(row, indent=1))
    if args.write_efficiency:
        eff = json.loads(EFF_PATH.read_text())
        eff["engines"][RUNTIME] = {"kinds": {"gpu": row}}
        EFF_PATH.write_text(json.dumps(eff, indent=1) + "\n")
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "speed_gpu", "device": DEVICE, "runtime": RUNTIME,
                                        "efficiency": row, "rows": rows,
                                        "command": "python benchmarks/speed_gpu.py " + " ".join(argv or sys.argv[1:])},
                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
