"""`lowbit inspect FILE.gguf`: what a GGUF holds: metadata summary, tensor types, exact bytes.

Everything printed is *exact*, read from the file: per-type tensor counts, parameters and bytes
(ggml_nbytes, unpadded), the header size (bytes before the first tensor) and the file size.
Uses lowbit's bounded header reader, never the tensor data, so it is fast on any file.
"""

from __future__ import annotations

import argparse

from lowbit.commands._common import add_format
from lowbit.models.catalog import gguf_path
from lowbit.formats.weights import mix_for_ftype
from lowbit.models.gguf_header import read_header
from lowbit.report.render import Table, print_json

_SUMMARY_KEYS = ("general.architecture", "general.name", "general.size_label", "general.quantization_version")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .gguf file (or smollm2-135m / gemma3-270m)")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    add_format(p, ("table", "json"))


def inspect_file(path) -> dict:
    h = read_header(gguf_path(path))
    meta = h.metadata
    ftype = meta.get("general.file_type")
    m = mix_for_ftype(int(ftype)) if isinstance(ftype, int) else None
    arch = meta.get("general.architecture")
    summary = {k: meta[k] for k in _SUMMARY_KEYS if k in meta}
    summary["general.file_type"] = ftype
    summary["mix"] = m.name if m else None
    for key in ("block_count", "embedding_length", "context_length"):
        if f"{arch}.{key}" in meta:
            summary[f"{arch}.{key}"] = meta[f"{arch}.{key}"]
    tok = meta.get("tokenizer.ggml.tokens")
    summary["tokenizer.ggml.model"] = meta.get("tokenizer.ggml.model")
    # long arrays come back from the bounded reader as their length under "<key>.count"
    count = meta.get("tokenizer.ggml.tokens.count")
    summary["tokenizer.ggml.tokens"] = count if count is not None else (len(tok) if isinstance(tok, list) else None)
    summary["tokenizer.chat_template"] = "tokenizer.chat_template" in meta
    types: dict[str, dict[str, int]] = {}
    tensors = []
    for t in h.tensors:
        n = 1
        for d in t.shape:
            n *= d
        row = types.setdefault(t.type_name, {"tensors": 0, "params": 0, "bytes": 0})
        row["tensors"] += 1
        row["params"] += n
        row["bytes"] += t.nbytes
        tensors.append({"name": t.name, "shape": list(t.shape), "type": t.type_name, "bytes": t.nbytes})
    params = sum(r["params"] for r in types.values())
    tensor_bytes = sum(r["bytes"] for r in types.values())
    return {
        "file": str(h.path), "file_bytes": h.file_size, "header_bytes": h.data_offset, "alignment": h.alignment,
        "metadata_keys": len(meta), "metadata": summary, "params": params, "tensor_bytes": tensor_bytes,
        "tensor_bytes_padded": h.tensor_bytes, "bits_per_weight": tensor_bytes * 8 / params if params else 0.0,
        "types": types, "tensors": tensors,
    }


def run(args: argparse.Namespace) -> int:
    info = inspect_file(args.file)
    if args.format == "json":
        if not args.tensors:
            info = {k: v for k, v in info.items() if k != "tensors"}
        print_json(info)
        return 0
    meta = Table(info["file"], ["key", "value"], header=False, right_align_from=2)
    for k, v in info["metadata"].items():
        meta.add(k, v)
    meta.add("file bytes", f"{info['file_bytes']:,}")
    meta.add("header bytes", f"{info['header_bytes']:,}")
    meta.add("tensor bytes", f"{info['tensor_bytes']:,} ({info['bits_per_weight']:.4f} bits/weight)")
    meta.render("table")
    t = Table("tensor types (exact, from the file)", ["type", "tensors", "params", "bytes", "bits/weight"])
    for name, r in sorted(info["types"].items(), key=lambda kv: -kv[1]["bytes"]):
        t.add(name, r["tensors"], f"{r['params']:,}", f"{r['bytes']:,}", f"{r['bytes'] * 8 / r['params']:.4f}")
    t.render("table")
    if args.tensors:
        tt = Table("tensors", ["name", "shape", "type", "bytes"], right_align_from=3)
        for x in info["tensors"]:
            tt.add(x["name"], "x".join(map(str, x["shape"])), x["type"], f"{x['bytes']:,}")
        tt.render("table")
    return 0
