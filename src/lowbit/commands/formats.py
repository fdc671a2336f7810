"""lowbit formats: every weight type, mix and KV-cache format, with bits and where each is defined."""

from __future__ import annotations

import argparse

from lowbit.commands._common import add_format, add_wide
from lowbit.errors import LowbitError
from lowbit.formats.kv import KV_FORMATS, LLAMACPP_COMMIT, VLLM_VERSION
from lowbit.formats.weights import MIXES, WEIGHT_TYPES
from lowbit.report.render import Table, print_json


KV_CAPTION = (f"llama.cpp's quantized types are stored as llama.cpp {LLAMACPP_COMMIT} stores them: each K/V head "
              "vector Hadamard-rotated (K in blocks of the largest power of two >= 64 dividing head_dim, V in 64s; "
              "none when 64 does not divide head_dim). 'q4_0:norot' etc.: unrotated (LLAMA_ATTN_ROT_DISABLE=1); "
              f"'q4_0:rot': the default, written out. fp8: vLLM {VLLM_VERSION} without checkpoint KV scales "
              "(scale 1.0); 'fp8:amax': scale amax/448 of the prefill. Rotation and scale add no bytes.")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head-dim", type=int, default=128, help="head_dim for KV bits per value (default 128)")
    add_wide(p, "the source of each row as a column")
    add_format(p)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.head_dim <= 65536:
        raise LowbitError(f"--head-dim must be from 1 to 65536, got {args.head_dim}")
    hd = args.head_dim
    data = {
        "weight_types": [{"name": t.name, "ggml_type": int(t.ggml), "block": t.block, "block_bytes": t.block_bytes,
                          "bits_per_weight": float(t.bits_per_weight), "source": "gguf GGML_QUANT_SIZES"}
                         for t in WEIGHT_TYPES.values()],
        "mixes": [{"name": m.name, "ftype": int(m.ftype), "default_type": m.default.name, "source": m.source}
                  for m in MIXES.values()],
        "kv_formats": [{"name": f.name, "family": f.family, "bits_per_value": float(f.bits_per_value(hd)),
                        "bytes_per_vector": f.vector_bytes(hd), "head_dim": hd, "description": f.description,
                        "source": f.source} for f in KV_FORMATS.values() if _fits(f, hd)],
    }
    if args.format == "json":
        print_json(data)
        return 0
    wide = args.wide or args.format != "table"
    sections = [
        ("Weight types (ggml)", ["type", "id", "block", "bytes/block", "bits/weight"], 1,
         [[w["name"], w["ggml_type"], w["block"], w["block_bytes"], f"{w['bits_per_weight']:.4g}", w["source"]]
          for w in data["weight_types"]]),
        ("Mixes (llama-quantize targets; per-tensor rules in lowbit/planning/mix.py)", ["mix", "ftype", "default type"],
         4, [[m["name"], m["ftype"], m["default_type"], m["source"]] for m in data["mixes"]]),
        (f"KV-cache formats (head_dim {hd})", ["format", "family", "bits/value", "bytes/vector", "description"], 2,
         [[f["name"], f["family"], f"{f['bits_per_value']:.4g}", f["bytes_per_vector"], f["description"], f["source"]]
          for f in data["kv_formats"]]),
    ]
    for title, cols, right, rows in sections:
        t = Table(title, cols + (["source"] if wide else []), right_align_from=right)
        if title.startswith("KV"):
            t.left_from = 4  # the description is text
        for r in rows:
            t.add(*(r if wide else r[:-1]))
        if not wide:  # each source once, with what it defines
            by_source: dict[str, list[str]] = {}
            for r in rows:
                by_source.setdefault(r[-1], []).append(str(r[0]))
            t.caption = "\n".join(f"Source: {src}" + ("" if len(by_source) == 1 else f" ({', '.join(names)})")
                                  for src, names in by_source.items())
        if title.startswith("KV"):
            t.caption += ("\n" if t.caption else "") + KV_CAPTION
        if title.startswith("Mixes"):
            t.caption += ("\n" if t.caption else "") + "Also accepted wherever a weight format is: stored, a .gguf's " \
                         "or a checkpoint's own tensor types."
        t.render(args.format)
    return 0


def _fits(f, hd: int) -> bool:
    try:
        f.vector_bytes(hd)
        return True
    except LowbitError:  # a block that does not divide this head_dim
        return False
