"""lowbit devices: the device catalog, with the memory each kind holds back (an estimate, named);
--measure measures this machine into a device profile (`this-cpu`)."""

from __future__ import annotations

import argparse

from lowbit.commands._common import add_wide
from lowbit.devices import THIS_CPU, catalog, format_bytes, listing, load_profile, measure, profile_path, \
    reserve_rules, save_profile
from lowbit.report.render import Table, print_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("phone", "apple", "gpu", "cpu"), help="only devices of this kind")
    add_wide(p, "the aliases, memory bandwidth and FLOP rate of each device")
    p.add_argument("--measure", action="store_true",
                   help="measure this machine (streaming bandwidth, f32 matrix FLOP rate; about 15 s; and each CUDA "
                        "GPU torch sees: copy bandwidth, bf16 matrix rate) and store it as the device profile "
                        f"`{THIS_CPU}` in the user cache")
    p.add_argument("--format", default="table", choices=("table", "json"), help="output format (default table)")


def _measure(args: argparse.Namespace) -> int:
    prof = measure()
    path = save_profile(prof)
    if args.format == "json":
        print_json({"profile": prof, "path": str(path)})
        return 0
    t = Table(f"{THIS_CPU}: this machine, measured ({prof['cpu']}, {prof['logical_cpus']} logical CPUs)",
              ["figure", "value"], right_align_from=1, header=False)
    t.add("read bandwidth, 1 thread", f"{prof['read_bandwidth_bytes_s'] / 1e9:.1f} GB/s")
    t.add("copy bandwidth, 1 thread", f"{prof['copy_bandwidth_bytes_s'] / 1e9:.1f} GB/s")
    t.add("f32 matmul, 1 thread", f"{prof['flops'] / 1e9:.1f} GFLOP/s")
    for g in prof.get("gpus") or []:
        t.add(f"GPU {g['index']} ({g['name']}) copy bandwidth", f"{g['copy_bandwidth_bytes_s'] / 1e12:.2f} TB/s")
        t.add(f"GPU {g['index']} read bandwidth", f"{g['read_bandwidth_bytes_s'] / 1e12:.2f} TB/s")
        t.add(f"GPU {g['index']} bf16 matmul", f"{g['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s")
    load = prof.get("loadavg")
    t.caption = (f"Stored in {path}. Method: {prof['method']}. "
                 + (f"Load average while measuring: {load[0]:.2f} (CPU time is the clock, so other jobs on a "
                    "shared machine slow the measurement less than they slow a wall clock)." if load else ""))
    t.render("table")
    return 0


def _perf_rows(rows: list[dict]) -> None:
    perf = {d.name: d for d in catalog()}
    for r in rows:
        d = perf[r["name"]]
        r.update(bandwidth_bytes_s=d.bandwidth_bytes_s, flops=d.flops, perf_source=d.perf_source)


def run(args: argparse.Namespace) -> int:
    if args.measure:
        return _measure(args)
    rows = [r for r in listing() if not args.kind or r["kind"] == args.kind]
    _perf_rows(rows)
    prof = load_profile()
    if args.format == "json":
        print_json({"devices": rows, "reserve": reserve_rules(),
                    THIS_CPU: {"profile": prof, "path": str(profile_path())} if prof else None})
        return 0
    perf_cols = ["GB/s", "TFLOP/s"] if args.wide else []
    t = Table("Devices (vendor memory is exact; usable memory is an estimate, see the notes)",
              ["name", "kind", "memory", "usable"] + perf_cols + ["label"] + (["aliases"] if args.wide else []),
              right_align_from=2)
    t.left_from = 4 + len(perf_cols)  # the label (and aliases) are text
    for r in rows:
        perf = [f"{r['bandwidth_bytes_s'] / 1e9:,.0f}", f"{r['flops'] / 1e12:,.1f}"] if args.wide else []
        t.add(r["name"], r["kind"], format_bytes(r["memory_bytes"]), format_bytes(r["usable_bytes"]), *perf,
              r["label"], *([", ".join(r["aliases"])] if args.wide else []))
    notes = [f"{kind}: {rule['why']}" for kind, rule in reserve_rules().items()]
    if args.wide:
        notes.append("GB/s: peak memory bandwidth; TFLOP/s: peak matrix rate (GPUs dense FP16 tensor, Apple FP32 GPU, "
                     "CPUs FP32 SIMD); sources in `lowbit devices --format json` (perf_source)")
    notes.append(f"{THIS_CPU}: " + (f"measured {prof['measured_at']}: {prof['read_bandwidth_bytes_s'] / 1e9:.1f} GB/s "
                                    f"read and {prof['flops'] / 1e9:.0f} GFLOP/s f32 per thread, "
                                    f"{prof['logical_cpus']} threads" if prof else
                                    "not measured yet (`lowbit devices --measure`)"))
    t.caption = "\n".join(notes)
    t.render("table")
    return 0
