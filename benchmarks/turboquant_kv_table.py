"""The KV-cache quality table of docs/turboquant.md, measured on the real GGUF models on CPU.

(benchmarks/kv_frontier.py is its successor for kv_quality.json: 32,768 tokens, intervals, the frontier,
--device cuda, resumable; this script stays for the older tables' commands.)

    python benchmarks/turboquant_kv_table.py [--models smollm2-135m,gemma3-270m] [--tokens 1024]

Runs `lowbit eval kv` (lowbit.eval.kv.evaluate_kv) for every row below, in one process so
the f16 reference is computed once per model. Rows are saved after each one (temp file + rename) to
--out (default src/lowbit/report/kv_quality.json, read by `lowbit simulate --quality`), and a
markdown table is printed at the end. Bits per value are exact (formats/kv.py); the rest is measured.

The output is a list with one document per model: {"model", "command", "date", "setup", "rows"}.
Models can run in separate processes (2 CPU cores go further that way) and be combined with
    python benchmarks/turboquant_kv_table.py --merge a.json b.json --out src/lowbit/report/kv_quality.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "lowbit" / "report" / "kv_quality.json"

# (K, V, boundary layers in f16)
ROWS = [
    # llama.cpp's types as llama.cpp 0c1e57098 runs them (Hadamard-rotated), then unrotated (LLAMA_ATTN_ROT_DISABLE=1),
    # KIVI and TurboQuant at each width
    ("f16", "f16", 0),
    ("q8_0", "q8_0", 0),
    ("q5_1", "q5_1", 0),
    ("q5_0", "q5_0", 0),
    ("q4_1", "q4_1", 0),
    ("iq4_nl", "iq4_nl", 0),
    ("q4_0", "q4_0", 0),
    ("q8_0:norot", "q8_0:norot", 0),
    ("q4_0:norot", "q4_0:norot", 0),
    ("kivi4", "kivi4", 0),
    ("kivi2", "kivi2", 0),
    ("turbo4", "turbo4", 0),
    ("turbo3", "turbo3", 0),
    ("turbo2", "turbo2", 0),
    ("turbo4-prod", "turbo4-prod", 0),
    ("turbo3-prod", "turbo3-prod", 0),
    ("turbo3.5", "turbo3.5", 0),
    ("turbo2.5", "turbo2.5", 0),
    ("q8_0", "turbo4", 0),  # k8v4: keys 8-bit, values TurboQuant 4-bit (llama.cpp -ctk q8_0 -ctv turbo4)
    # extras
    ("q8_0", "turbo3", 0),
    ("turbo3", "turbo3", 2),  # vLLM-style boundary protection: first and last 2 layers f16
    ("turbo3:nonc", "turbo3:nonc", 0),
    ("fp8", "fp8", 0),  # vLLM 0.33.0 without checkpoint KV scales: scale 1.0
    ("fp8:amax", "fp8:amax", 0),  # per-tensor amax/448 from the prefill, as transformers' quantized cache
    ("turbo3", "q8_0", 0),  # keys alone at 3 bits: K sensitivity
    ("turbo4", "q8_0", 0),
    # lowbit's addition (not the paper's): per-channel mean removed before TurboQuant
    ("turbo4:center", "turbo4:center", 0),
    ("turbo3:center", "turbo3:center", 0),
    ("turbo2.5:center", "turbo2.5:center", 0),
]


def _save(path: Path, doc) -> None:
    from lowbit.safe_write import write_text  # whole or not at all; a rerun replaces the file

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(doc, indent=1) + "\n", force=True)


def markdown(rows: list[dict]) -> str:
    out = ["| model | K | V | bits/value (exact) | PPL | PPL f16 | KLD | top-1 | NIAH |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        v = r["kv_v"] + (f" (+{r['boundary']} f16 boundary layers)" if r.get("boundary") else "")
        trials = r.get("niah_trials") or []
        niah = "-" if r.get("niah") is None else f"{sum(t['found'] for t in trials)}/{len(trials)}"
        out.append(f"| {r['model']} | {r['kv_k']} | {v} | {r['bits_per_value']:.3f} | {r['ppl']:.3f} | "
                   f"{r['ppl_f16']:.3f} | {max(r['kld'], 0.0):.4f} | {r['top1']:.3f} | {niah} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--niah-lengths", default="1024")
    ap.add_argument("--niah-depths", default="0.1,0.5,0.9")
    ap.add_argument("--rows", default="", help="only these row numbers (comma list, 0-based)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--merge", nargs="+", type=Path, help="combine finished outputs into --out and print the table")
    args = ap.parse_args(argv)
    if args.merge:
        by_model: dict[str, dict] = {}  # one document per model; rows of several runs are concatenated
        for path in args.merge:
            data = json.loads(path.read_text())
            for d in data if isinstance(data, list) else [data]:
                if d["model"] not in by_model:
                    by_model[d["model"]] = {**d, "rows": list(d["rows"])}
                else:
                    m = by_model[d["model"]]
                    m["rows"] += d["rows"]
                    if d["command"] not in m["command"]:
                        m["command"] += " ; " + d["command"]
        docs = list(by_model.values())
        _save(args.out, docs)
        print(markdown([r for d in docs for r in d["rows"]]))
        return 0

    from lowbit.eval.kv import evaluate_kv

    command = "python benchmarks/turboquant_kv_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    setup = {"tokens": args.tokens, "context": args.context, "chunk": args.chunk, "niah_lengths": args.niah_lengths,
             "niah_depths": args.niah_depths, "text": "pydoc_data.topics", "reference": "f16 QuantizedKVCache"}
    pick = {int(i) for i in args.rows.split(",") if i.strip()}
    lengths = tuple(int(x) for x in args.niah_lengths.split(",") if x)
    depths = tuple(float(x) for x in args.niah_depths.split(",") if x)
    docs = []
    for model in args.models.split(","):
        doc = {"model": model, "command": command.strip(), "date": datetime.date.today().isoformat(),
               "provenance": "measured on CPU (bits_per_value: exact, from lowbit.formats.kv)", "setup": setup,
               "rows": []}
        docs.append(doc)
        for i, (k, v, boundary) in enumerate(ROWS):
            if pick and i not in pick:
                continue
            r = evaluate_kv(model, k, v, boundary=boundary, tokens=args.tokens, context=args.context,
                            chunk=args.chunk, niah_lengths=lengths, niah_depths=depths, progress=False)
            doc["rows"].append(r)
            _save(args.out, docs)
            print(f"{model} K={r['kv_k']} V={r['kv_v']} b={boundary}: bpv {r['bits_per_value']:.3f} ppl {r['ppl']:.3f} "
                  f"(f16 {r['ppl_f16']:.3f}) kld {r['kld']:.4f} top1 {r['top1']:.3f} niah {r['niah']} "
                  f"[{r['seconds']:.0f}s]", file=sys.stderr, flush=True)
    print(markdown([r for d in docs for r in d["rows"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
