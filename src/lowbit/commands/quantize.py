"""`lowbit quantize MODEL --to Q1_0 [--method gptq] [--pure] -o out.gguf`: a real GGUF, llama.cpp's mix.

Per-tensor types come from the simulator's mix rules (lowbit.planning: the same call `lowbit plan` makes),
so the written tensor bytes are exactly what the planner predicts. A tensor already stored in its
target type is copied byte for byte; every other tensor is dequantized from the source file and
quantized with lowbit's quantizers (Q1_0, ternary) or gguf's reference ones (Q4_0 ... Q8_0, MXFP4).
`--method` applies to the tensors that get the mix's own type (the 1-bit / ternary ones).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from lowbit.commands._common import add_format
from lowbit.report.render import print_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .gguf path, or smollm2-135m / gemma3-270m")
    p.add_argument("--to", required=True, help="llama.cpp mix: Q1_0, TQ1_0, TQ2_0, Q4_0, Q8_0, ...")
    p.add_argument("--method", default=None,
                   help="for the mix's own type: Q1_0 ref|gptq; TQ1_0/TQ2_0 ref|absmean|absmean-group (default ref)")
    p.add_argument("--pure", action="store_true", help="every quantizable tensor gets the mix's type (llama-quantize --pure)")
    p.add_argument("-o", "--output", required=True, help="output .gguf path (written atomically)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens for --method gptq (default 4096)")
    add_format(p, ("table", "json"))


def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def plan_types(path, mix_name: str, pure: bool, r=None) -> dict[str, str]:
    """GGUF tensor name -> type, by the simulator's mix rules applied to the file's own tensors."""
    from lowbit.models.catalog import resolve
    from lowbit.models.gguf_header import read_header
    from lowbit.models.tensors import Tensor
    from lowbit.planning.planner import weight_types

    # names and shapes only: the bounded header reader is fast where gguf's reader parses the vocabulary
    listed = r.tensors if r is not None else read_header(path).tensors
    tensors = [Tensor(t.name, tuple(int(d) for d in t.shape), "weights", _layer(t.name), len(t.shape) == 1)
               for t in listed]
    cfg = resolve(str(path)).config
    return {n: wt.name for n, wt in weight_types(cfg, tensors, mix_name, pure).items()}


def quantize_file(model, to: str, out, method: str | None = None, pure: bool = False, force: bool = False,
                  calib_tokens: int = 4096, progress: bool = True) -> dict:
    """Write the quantized GGUF; return a summary dict (types, bytes, seconds)."""
    import numpy as np
    from gguf import GGUFValueType
    from gguf.quants import dequantize

    from lowbit.errors import LowbitError
    from lowbit.eval.artifacts import model_path
    from lowbit.formats.weights import mix
    from lowbit.quant import gguf_io
    from lowbit.quant import weights as W

    t0 = time.perf_counter()
    path = model_path(model)
    m = mix(to)
    own = m.default.name
    if method is not None:
        if own not in W.METHODS:
            raise LowbitError(f"--method applies to Q1_0 and TQ1_0/TQ2_0 mixes, not {m.name}")
        _, method = W.check(own, method)
        if method.startswith("rht") or own == "ARB1":
            raise LowbitError(f"method {method!r} is not a llama.cpp format; measure it with `lowbit eval weights`")
    src = gguf_io.reader(path)
    types = plan_types(path, m.name, pure, src)
    by_name = {t.name: t for t in src.tensors}
    specs = [gguf_io.TensorSpec(t.name, tuple(int(d) for d in t.shape), types[t.name]) for t in src.tensors]
    hessians = {}
    if method and W.needs_hessian(method):
        from lowbit.quant.binarize import calibration_hessians

        targets = [s.name for s in specs if s.type == own and by_name[s.name].tensor_type.name != own]
        hessians = calibration_hessians(path, targets, n_tokens=calib_tokens, progress=progress)

    def produce(spec):
        t = by_name[spec.name]
        if t.tensor_type.name == spec.type:  # already in the target type: copy, lossless
            return np.asarray(t.data)
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        meth = method if spec.type == own else None
        q = W.quantize(w, spec.type, meth, hessian=hessians.get(spec.name), name=spec.name)
        if spec.type in ("F32", "F16"):
            return q.values.astype(np.float32 if spec.type == "F32" else np.float16)
        return q.data

    from lowbit.eval.metrics import progress_bar

    bar, task = progress_bar(progress, f"quantize {m.name}", len(specs))

    def produce_with_bar(spec):
        out_data = produce(spec)
        bar.advance(task, 1)
        return out_data

    with bar:
        written = gguf_io.write(out, src, specs, produce_with_bar,
                                metadata={"general.file_type": (int(m.ftype), GGUFValueType.UINT32)}, overwrite=force)
    counts: dict[str, dict[str, int]] = {}
    for s in specs:
        row = counts.setdefault(s.type, {"tensors": 0, "params": 0, "bytes": 0})
        row["tensors"] += 1
        row["params"] += int(np.prod(s.shape))
        row["bytes"] += s.nbytes
    params = sum(r["params"] for r in counts.values())
    tensor_bytes = sum(r["bytes"] for r in counts.values())
    return {
        "model": str(path), "output": str(written), "mix": m.name, "method": method or "ref", "pure": pure,
        "file_bytes": written.stat().st_size, "tensor_bytes": tensor_bytes, "params": params,
        "bits_per_weight": tensor_bytes * 8 / params, "types": counts, "seconds": time.perf_counter() - t0,
    }


def run(args: argparse.Namespace) -> int:
    if args.calib_tokens < 1:
        from lowbit.errors import LowbitError

        raise LowbitError(f"--calib-tokens must be a positive number of tokens, got {args.calib_tokens}")
    summary = quantize_file(args.model, args.to, args.output, args.method, args.pure, args.force, args.calib_tokens)
    if args.format == "json":
        print_json(summary)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['output']}  ({summary['mix']}, method {summary['method']}{', pure' if args.pure else ''})")
    for col in ("type", "tensors", "params", "bytes", "bits/weight"):
        table.add_column(col, justify="right" if col != "type" else "left")
    for name, r in sorted(summary["types"].items(), key=lambda kv: -kv[1]["bytes"]):
        table.add_row(name, str(r["tensors"]), f"{r['params']:,}", f"{r['bytes']:,}", f"{r['bytes'] * 8 / r['params']:.4f}")
    table.add_row("all", "", f"{summary['params']:,}", f"{summary['tensor_bytes']:,}", f"{summary['bits_per_weight']:.4f}")
    Console().print(table)
    print(f"file {summary['file_bytes']:,} bytes (exact, measured); written in {summary['seconds']:.1f} s", file=sys.stderr)
    return 0
