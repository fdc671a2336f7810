"""Quantize a whole GGUF file to a llama.cpp mix and write a real GGUF (what `lowbit quantize` runs).

Per-tensor types come from the simulator's mix rules (lowbit.plan: the same call `lowbit plan` makes),
so the written tensor bytes are exactly what the planner predicts. A tensor already stored in its
target type is copied byte for byte; every other tensor is dequantized from the source file and
quantized with lowbit's quantizers (Q1_0, ternary) or gguf's reference ones (Q4_0 ... Q8_0, MXFP4).
`method` applies to the tensors that get the mix's own type (the 1-bit / ternary ones).
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from lowbit.errors import LowbitError
from lowbit.formats.weights import mix
from lowbit.models.catalog import resolve
from lowbit.models.gguf_header import read_header
from lowbit.models.tensors import Tensor
from lowbit.planning.planner import weight_types
from lowbit.progress import honours_progress, progress_bar
from lowbit.quant import gguf_io, weights
from lowbit.safe_write import check_target

# names of the tensors a calibrated method will quantize -> their input Hessians (lowbit.eval.calibration)
Calibrate = Callable[[list[str]], dict[str, np.ndarray]]


def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def plan_types(path: str | os.PathLike, mix_name: str, pure: bool, source: GGUFReader | None = None) -> dict[str, str]:
    """GGUF tensor name -> type, by the simulator's mix rules applied to the file's own tensors."""
    # names and shapes only: the bounded header reader is fast where gguf's reader parses the vocabulary
    listed = source.tensors if source is not None else read_header(path).tensors
    tensors = [Tensor(t.name, tuple(int(d) for d in t.shape), "weights", _layer(t.name), len(t.shape) == 1)
               for t in listed]
    cfg = resolve(str(path)).config
    return {n: wt.name for n, wt in weight_types(cfg, tensors, mix_name, pure).items()}


@honours_progress
def quantize_file(path: str | os.PathLike, to: str, out: str | os.PathLike, method: str | None = None,
                  pure: bool = False, force: bool = False, *, calibrate: Calibrate | None = None,
                  progress: bool = True) -> dict:
    """Write the quantized GGUF of the file at `path`; return a summary dict (types, bytes, seconds).

    A calibrated method (gptq) gets its Hessians from `calibrate(names)`, called once before writing.
    """
    t0 = time.perf_counter()
    m = mix(to)
    own = m.default.name
    chosen = None
    if method is not None:
        if own not in weights.formats():
            raise LowbitError(f"--method applies to Q1_0 and TQ1_0/TQ2_0 mixes, not {m.name}")
        chosen = weights.method_for(own, method)
        if not chosen.loadable:
            raise LowbitError(f"method {method!r} is not a llama.cpp format; measure it with `lowbit eval weights`")
    check_target(out, force)  # a bad -o fails before the model is read
    src = gguf_io.reader(path, progress)
    types = plan_types(path, m.name, pure, src)
    by_name = {t.name: t for t in src.tensors}
    specs = [gguf_io.TensorSpec(t.name, tuple(int(d) for d in t.shape), types[t.name]) for t in src.tensors]
    # before calibration and quantization: a bad -o, a read-only folder or a full disk fails now, not minutes later
    header_bytes = read_header(path).data_offset
    check_target(out, force, need_bytes=header_bytes + sum(s.nbytes for s in specs))
    hessians = {}
    if chosen is not None and chosen.calibrated:
        if calibrate is None:
            raise LowbitError(f"method {method!r} needs calibration activations: pass calibrate")
        targets = [s.name for s in specs if s.type == own and by_name[s.name].tensor_type.name != own]
        hessians = calibrate(targets)

    def produce(spec):
        t = by_name[spec.name]
        if t.tensor_type.name == spec.type:  # already in the target type: copy, lossless
            return np.asarray(t.data)
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        meth = method if spec.type == own else None
        q = weights.quantize(w, spec.type, meth, hessian=hessians.get(spec.name), name=spec.name)
        if spec.type in ("F32", "F16"):
            return q.values.astype(np.float32 if spec.type == "F32" else np.float16)
        return q.data

    bar, task = progress_bar(progress, f"quantize {m.name}", len(specs), unit="tensors")

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
