"""What `lowbit plan` prints: the weights by tensor class, the memory by part with where each figure comes
from (numbered notes under the table, so the table itself stays narrow), and optionally every tensor."""

from __future__ import annotations

from lowbit.models.config import params_label
from lowbit.planning.planner import DEFAULT_CONTEXT, Plan
from lowbit.report.render import Table, fmt_bytes


def context_note(p: Plan, context_given: bool) -> str:
    """Why a plan is at fewer tokens than the default, when no context was asked for."""
    if context_given or p.context == DEFAULT_CONTEXT:
        return ""
    return (f"{p.context:,} tokens: {p.model}'s trained maximum ({p.config.max_context_from}), used as no "
            f"context was given.")


def plan_tables(p: Plan, units: str, tensors: bool = False, context_given: bool = True) -> list[Table]:
    s = p.scenario
    cfg = p.config
    kinds = Table(
        f"{p.model}: {s.mix.name}{' --pure' if s.pure else ''} weights, KV {s.k.name}/{s.v.name}, "
        f"{p.context:,} tokens x {p.sequences} seq; params {p.params_total:,} total, {p.params_active:,} active/token",
        ["tensor class", "tensors", "params", units, "bits/weight", "types"],
    )
    kinds.left_from = 5  # the types are text
    for kind, row in p.by_kind().items():
        kinds.add(kind, row["tensors"], f"{row['params']:,}", fmt_bytes(row["bytes"], units, 3),
                  f"{row['bytes'] * 8 / row['params']:.3f}", ", ".join(row["types"]))
    kinds.add("weights (all)", len(p.tensors), f"{p.params_total:,}", fmt_bytes(p.weights_bytes, units, 3),
              f"{p.weights_bytes * 8 / p.params_total:.4f}", "")
    kinds.caption = recipe_line(p)
    memory = Table(
        f"Memory ({cfg.count('full_attention')} full-attention, {cfg.count('sliding_attention')} sliding-window, "
        f"{cfg.count('linear_attention')} recurrent (Gated DeltaNet or Mamba) layers; {params_label(p.params_total)} "
        "params)",
        ["part", f"{units}", "bytes", "provenance"], right_align_from=1,
    )
    memory.left_from = 3
    prov = p.provenance()
    notes: list[str] = []
    parts = [("weights", p.weights_bytes, "weights_bytes"), ("KV cache", p.kv_bytes, "kv_bytes"),
             ("recurrent state", p.state_bytes, "state_bytes"), ("runtime buffers", p.runtime_bytes, "runtime_bytes"),
             ("total", p.total_bytes, None), ("GGUF header (not in total)", p.header_bytes, "gguf_header_bytes"),
             ("GGUF file (not in total)", p.file_bytes, "file_bytes")]
    for label, n, key in parts:
        how = ""
        if key:
            notes.append(f"({len(notes) + 1}) {label}: {prov[key]}")
            how = f"{prov[key].split(':')[0].split(' ')[0]} ({len(notes)})"
        memory.add(label, fmt_bytes(n, units, 3), f"{n:,}", how)
    note = context_note(p, context_given)
    memory.caption = "\n".join(notes + ([note] if note else []))
    out = [kinds, memory]
    if tensors:
        t = Table("Tensors (ggml order: ne0 first)", ["name", "shape", "class", "type", "bytes"], right_align_from=4)
        for x in p.tensors:
            t.add(x.name, "x".join(map(str, x.shape)), x.kind, x.type, f"{x.bytes:,}")
        out.append(t)
    return out


def recipe_line(p: Plan) -> str:
    """The llama-quantize command the weights stand for, the importance matrix, and where a GGUF was read."""
    files = p.origin.get("files", [])
    line = ""
    if p.weights_provenance.startswith("exact: llama.cpp mix"):
        r = p.recipe
        given = "given" if r.imatrix else "not given"
        why = (" (assumed: the recipe cannot be made without one)" if r.imatrix and p.imatrix_assumed else
               " (assumed: not needed)" if p.imatrix_assumed else "")
        opts = " ".join(a for a in r.args() if a not in ("--imatrix", "FILE"))
        line = f"llama-quantize {opts + ' ' if opts else ''}{p.scenario.mix.name}; importance matrix {given}{why}"
    if "fetched_bytes" in p.origin:
        line += (f"\nheader{'s' if len(files) > 1 else ''} read over HTTP from {len(files)} file(s) of "
                 f"{sum(f['bytes'] for f in files):,} bytes: fetched {p.origin['fetched_bytes']:,} bytes")
    elif len(files) > 1:
        line += f"\nsplit model: {len(files)} files"
    return line.strip()
