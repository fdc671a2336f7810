"""The KV-format frontier of one or more real models: src/lowbit/report/kv_quality.json and its docs.

    python benchmarks/kv_frontier.py --model smollm2-135m --device cuda            # every row, defaults below
    python benchmarks/kv_frontier.py --model gemma3-270m=/tmp/m/gemma.gguf --rows llama.cpp,turbo --device cuda
    python benchmarks/kv_frontier.py --merge a.json b.json                          # combine runs into --out
    python benchmarks/kv_frontier.py --write-docs                                    # tables + plots into docs/

Per model, in ONE process (the model loads once and the f16 reference is computed once), every selected row
runs `lowbit.eval.kv.evaluate_kv`: PPL / f16, KL divergence and top-1 against the f16 cache with 95% intervals
(bootstrap over windows, paired), exact bits per value, and needle-in-a-haystack retrieval at the longest
context the model was trained for (its GGUF's context_length: SmolLM2-135M 8,192, Gemma 3 270M 32,768),
`--niah-depths` x `--niah-repeats` needles (default 10 depths x 1 = 10 needles, each with its own passphrase
and haystack). `--niah-length auto` first runs the f16 cache at the trained maximum and halves it down to 1,024
until f16 finds at least 80% of the needles, and measures every row there (the probe is saved beside).

The output is saved after each row (temp file + rename) and a rerun with the same settings resumes: rows
already measured are kept, not run again (--fresh starts over). Other models' documents in --out are kept.

Document per model (schema "lowbit.kv_quality/2"; a list of these is the file):
    model, gguf (file name), schema, command, date (UTC), device, lowbit_commit, text {name, characters, sha256},
    setup {tokens, context, chunk, windows, scored_tokens, niah_length, niah_depths, niah_repeats, niah_trials,
           seed, bootstrap {samples, seed, level}, reference}, niah_probe (auto only), rows [...]
    row = evaluate_kv's result (kv_k, kv_v, boundary, bits_per_value[_k/_v], ppl, ppl_f16, ppl_ratio,
          ppl_ratio_ci, kld, kld_ci, top1, top1_ci, niah, niah_ci, niah_trials, windows {nll, tokens, kld, top1,
          nll_reference}, ...) + group (which family of rows it belongs to), row_seconds.
The frontier (best at its size, ties) is computed when read (lowbit.report.frontier), from the windows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "lowbit" / "report" / "kv_quality.json"
DOCS = ROOT / "docs" / "turboquant.md"
SCHEMA = "lowbit.kv_quality/2"
BEGIN, END = "<!-- kv-frontier:begin (benchmarks/kv_frontier.py --write-docs) -->", "<!-- kv-frontier:end -->"

# (group, K, V, boundary layers in f16)
ROWS = [
    ("f16", "f16", "f16", 0),
    # llama.cpp's cache types as llama.cpp runs them today (Hadamard-rotated), then the old unrotated ones
    ("llama.cpp", "q8_0", "q8_0", 0),
    ("llama.cpp", "q5_1", "q5_1", 0),
    ("llama.cpp", "q5_0", "q5_0", 0),
    ("llama.cpp", "q4_1", "q4_1", 0),
    ("llama.cpp", "iq4_nl", "iq4_nl", 0),
    ("llama.cpp", "q4_0", "q4_0", 0),
    ("unrotated", "q8_0:norot", "q8_0:norot", 0),
    ("unrotated", "q4_0:norot", "q4_0:norot", 0),
    # TurboQuant, whole and half bits
    ("turbo", "turbo4", "turbo4", 0),
    ("turbo", "turbo3.5", "turbo3.5", 0),
    ("turbo", "turbo3", "turbo3", 0),
    ("turbo", "turbo2.5", "turbo2.5", 0),
    ("turbo", "turbo2", "turbo2", 0),
    # K and V apart: keys carry the damage, so they get the bits
    ("mixed", "q8_0", "turbo4", 0),
    ("mixed", "q8_0", "turbo3", 0),
    ("mixed", "q8_0", "turbo2", 0),
    ("mixed", "turbo4", "turbo3", 0),
    ("mixed", "q8_0", "q4_0", 0),
    ("mixed", "q5_0", "q4_0", 0),
    ("mixed", "q4_0", "turbo3", 0),
    # KIVI (keys per channel, values per token)
    ("kivi", "kivi4", "kivi4", 0),
    ("kivi", "kivi2", "kivi2", 0),
]


def row_name(k: str, v: str, boundary: int = 0) -> str:
    return (k if k == v else f"{k}/{v}") + (f"+b{boundary}" if boundary else "")


def select(spec: str) -> list[tuple]:
    """`all`, or a comma list of row names (q8_0, q8_0/turbo4) and groups (llama.cpp, turbo, mixed, ...);
    f16 always comes first (the reference row)."""
    names = {row_name(k, v, b): (g, k, v, b) for g, k, v, b in ROWS}
    if spec.strip() in ("", "all"):
        return list(ROWS)
    out = [ROWS[0]]
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item in names:
            picked = [names[item]]
        elif any(g == item for g, *_ in ROWS):
            picked = [r for r in ROWS if r[0] == item]
        elif "/" in item or item.replace(":", "").replace(".", "").replace("_", "").isalnum():
            k, _, v = item.partition("/")  # a setting not in the list: measured all the same
            picked = [("extra", k, v or k, 0)]
        else:
            raise SystemExit(f"kv_frontier: unknown row {item!r}; rows: {', '.join(names)}")
        out += [r for r in picked if r not in out]
    return out


def model_spec(spec: str) -> tuple[str, str]:
    """NAME=PATH (a GGUF file measured under that name), or a lowbit model name or .gguf path."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (spec if not spec.lower().endswith(".gguf") else Path(spec).stem, spec)


def commit(given: str | None) -> str:
    if given:
        return given
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def load(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else [data]


def save(path: Path, docs: list[dict]) -> None:
    from lowbit.safe_write import write_text  # whole or not at all (temp file + rename)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(docs, indent=1) + "\n", force=True)


def put(docs: list[dict], doc: dict) -> list[dict]:
    """docs with this model's document replaced (or added), in the order first seen."""
    out = [d for d in docs if d.get("model") != doc["model"]]
    at = next((i for i, d in enumerate(docs) if d.get("model") == doc["model"]), len(out))
    return out[:at] + [doc] + out[at:]


def same_setup(a: dict, b: dict) -> bool:
    keys = ("tokens", "context", "chunk", "niah_length", "niah_depths", "niah_repeats", "seed", "bootstrap")
    return all(a.get(k) == b.get(k) for k in keys)


def niah_probe(model_name: str, path: str, depths, repeats: int, seed: int, device: str, top: int,
               need: float = 0.8) -> tuple[int, dict]:
    """The longest length, from the trained maximum halving down to 1,024, where the f16 cache finds >= need."""
    from lowbit.cache import QuantizedKVCache
    from lowbit.eval import lm, niah

    model, tok = lm.load_model(path, device=device), lm.load_tokenizer(path)
    probe, n = {}, top
    while True:
        r = niah.niah(model, tok, lengths=(n,), depths=tuple(depths), make_cache=lambda c: QuantizedKVCache(c, "f16"),
                      seed=seed, repeats=repeats, progress=False)
        probe[str(n)] = f"{sum(t.found for t in r.trials)}/{len(r.trials)}"
        print(f"{model_name} NIAH probe f16 at {n:,}: {probe[str(n)]}", file=sys.stderr, flush=True)
        if r.score >= need or n <= 1024:
            return n, probe
        n //= 2


def measure(args, model_name: str, path: str, rows: list[tuple], command: str) -> dict:
    from lowbit.eval import lm, text
    from lowbit.eval.bootstrap import LEVEL
    from lowbit.eval.kv import evaluate_kv

    dev = lm.torch_device(args.device)
    info = lm.gguf_info(path)
    tok = lm.load_tokenizer(path)
    tokens = args.tokens or text.default_tokens(tok)
    depths = [round(float(x), 4) for x in args.niah_depths.split(",") if x.strip()]
    probe = None
    old = next((d for d in load(args.out) if d.get("model") == model_name), None)
    same_source = old is not None and (old.get("text") or {}).get("sha256") == text.source()["sha256"] \
        and old.get("device", "").split(" ")[0].split(":")[0] == dev.type  # one device's figures per document
    if args.niah_length == "auto":
        # a resumed run keeps its probe (a minute of GPU time) when the probe would be the same
        same_probe = same_source and not args.fresh and old.get("niah_probe") and \
            all(old["setup"].get(k) == v for k, v in (("niah_depths", depths), ("niah_repeats", args.niah_repeats),
                                                       ("seed", args.seed)))
        if same_probe:
            niah_length, probe = old["setup"]["niah_length"], old["niah_probe"]
            print(f"{model_name} NIAH probe kept from the earlier run: {niah_length:,}", file=sys.stderr)
        else:
            niah_length, probe = niah_probe(model_name, path, depths, args.niah_repeats, args.seed, str(dev),
                                            info.context_length)
    elif args.niah_length == "max":
        niah_length = info.context_length
    else:
        niah_length = int(args.niah_length)
    windows = tokens // args.context
    setup = {"tokens": tokens, "context": args.context, "chunk": args.chunk, "windows": windows,
             "scored_tokens": windows * (args.context - args.context // 2 - 1), "niah_length": niah_length,
             "niah_depths": depths, "niah_repeats": args.niah_repeats, "niah_trials": len(depths) * args.niah_repeats,
             "seed": args.seed, "bootstrap": {"samples": args.bootstrap_samples, "seed": args.bootstrap_seed,
                                              "level": LEVEL},
             "reference": "f16 QuantizedKVCache on the same windows"}
    resumable = same_source and old.get("schema") == SCHEMA and same_setup(old["setup"], setup)
    keep = old["rows"] if resumable and not args.fresh else []
    doc = {"model": model_name, "gguf": Path(info.path).name, "schema": SCHEMA, "command": command,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": lm.device_name(dev), "lowbit_commit": commit(args.commit), "text": text.source(),
           "setup": setup, "provenance": "measured (bits_per_value: exact, from lowbit.formats.kv)", "rows": []}
    if probe:
        doc["niah_probe"] = probe
    done = {row_name(r["kv_k"], r["kv_v"], r.get("boundary", 0)) for r in keep}
    if keep:
        print(f"{model_name}: resuming, {len(keep)} rows already measured with these settings", file=sys.stderr)
    doc["rows"] = list(keep)
    for group, k, v, boundary in rows:
        if row_name(k, v, boundary) in done:
            continue
        t0 = time.perf_counter()
        try:
            r = evaluate_kv(path, k, v, boundary=boundary, tokens=tokens, context=args.context, chunk=args.chunk,
                            niah_lengths=(niah_length,) if depths else (), niah_depths=tuple(depths),
                            niah_repeats=args.niah_repeats, seed=args.seed, device=str(dev),
                            bootstrap_samples=args.bootstrap_samples, bootstrap_seed=args.bootstrap_seed,
                            progress=args.progress)
        except Exception as e:  # one bad row (an unknown spec on an older checkout) must not lose the others
            print(f"{model_name} {row_name(k, v, boundary)}: FAILED: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)
            continue
        r["model"] = model_name
        r["group"] = group
        r["row_seconds"] = round(time.perf_counter() - t0, 1)
        doc["rows"].append(r)
        save(args.out, put(load(args.out), doc))
        niah = "-" if r["niah"] is None else f"{sum(t['found'] for t in r['niah_trials'])}/{len(r['niah_trials'])}"
        print(f"{model_name} {row_name(k, v, boundary)}: bpv {r['bits_per_value']:.3f} "
              f"ppl/f16 {r['ppl_ratio']:.4f} [{r['ppl_ratio_ci'][0]:.4f}, {r['ppl_ratio_ci'][1]:.4f}] "
              f"kld {r['kld']:.5f} [{r['kld_ci'][0]:.5f}, {r['kld_ci'][1]:.5f}] top1 {r['top1']:.4f} niah {niah} "
              f"[{r['row_seconds']:.0f} s]", file=sys.stderr, flush=True)
    save(args.out, put(load(args.out), doc))
    return doc


def merge(paths: list[Path], out: Path) -> list[dict]:
    """Combine finished outputs: one document per model; rows of runs with the same settings are joined
    (a later file's row replaces an earlier one of the same name)."""
    docs: list[dict] = load(out) if out.is_file() else []
    fresh: dict[str, dict] = {}
    for p in paths:
        for d in load(p):
            m = d["model"]
            if m in fresh and fresh[m].get("schema") == d.get("schema") == SCHEMA \
                    and same_setup(fresh[m]["setup"], d["setup"]):
                rows = {row_name(r["kv_k"], r["kv_v"], r.get("boundary", 0)): r for r in fresh[m]["rows"]}
                rows.update({row_name(r["kv_k"], r["kv_v"], r.get("boundary", 0)): r for r in d["rows"]})
                fresh[m] = {**fresh[m], "rows": list(rows.values())}
                if d["command"] not in fresh[m]["command"]:
                    fresh[m]["command"] += " ; " + d["command"]
            else:
                fresh[m] = d
    for d in fresh.values():
        docs = put(docs, d)
    save(out, docs)
    return docs


def docs_section(docs: list[dict], figures: Path) -> str:
    """The markdown between the markers of docs/turboquant.md: per model its provenance, table and figure."""
    from lowbit.report.frontier import analyse, frontier_markdown, has_intervals, save_figure

    parts = [BEGIN, "", "Generated from `src/lowbit/report/kv_quality.json` by `python benchmarks/kv_frontier.py "
             "--write-docs`; do not edit by hand.", ""]
    for d in docs:
        pts = analyse(d)
        fig = figures / f"kv_frontier_{d['model']}.png"
        save_figure(d, fig, pts)
        setup = d.get("setup", {})
        text = d.get("text") or {"name": setup.get("text", "?")}
        parts += [f"### {d['model']}", ""]
        lines = [f"Measured {d.get('date', '?')} on {d.get('device', d.get('provenance', '?'))}"
                 + (f", lowbit {d['lowbit_commit']}" if d.get("lowbit_commit") else "") + "."]
        if "sha256" in text:
            lines.append(f"Text: {text['name']} ({text['characters']:,} characters, sha256 {text['sha256']}), "
                         f"{setup.get('tokens', 0):,} tokens in {setup.get('windows', '?')} windows of "
                         f"{setup.get('context')} ({setup.get('scored_tokens', 0):,} scored).")
        if d.get("niah_probe"):
            lines.append("NIAH length chosen by the f16 probe: " + ", ".join(f"{int(k):,}: {v}" for k, v in
                                                                            d["niah_probe"].items()) + ".")
        if not has_intervals(d):
            lines.append("This block predates the intervals: point values only.")
        command = re.sub(r"\s+--out\s+/\S+", "", d.get("command", "?"))  # not the measuring machine's temp files
        lines.append(f"Command: `{command}`")
        parts += [" ".join(lines), "", frontier_markdown(d, pts).rstrip(), "",
                  f"![{d['model']}: bits per value against KL divergence and needles found]"
                  f"({fig.name})", ""]
    parts.append(END)
    return "\n".join(parts)


def write_docs(json_path: Path, doc_path: Path = DOCS) -> None:
    from lowbit.safe_write import write_text

    docs = load(json_path)
    if not docs:
        raise SystemExit(f"kv_frontier: {json_path} has no measurements")
    text = doc_path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"kv_frontier: {doc_path} has no {BEGIN!r} ... {END!r} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    write_text(doc_path, head + docs_section(docs, doc_path.parent) + tail, force=True)
    print(f"wrote {doc_path} and {len(docs)} figure(s) in {doc_path.parent}", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", "--models", dest="models", default="smollm2-135m",
                    help="comma list: lowbit model names, .gguf paths, or NAME=PATH")
    ap.add_argument("--rows", default="all", help="all, or rows (q8_0, q8_0/turbo4) and groups: "
                    + ", ".join(dict.fromkeys(g for g, *_ in ROWS)))
    ap.add_argument("--tokens", type=int, default=None, help="text tokens (default 32,768 or the whole text)")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--niah-length", default="max", help="max (the model's trained context), auto, or a number")
    ap.add_argument("--niah-depths", default=",".join(f"{0.05 + 0.1 * i:.2f}" for i in range(10)),
                    help="needle depths (comma list; empty: no NIAH)")
    ap.add_argument("--niah-repeats", type=int, default=1, help="needles per depth")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap-samples", type=int, default=2000)
    ap.add_argument("--bootstrap-seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--commit", default=None, help="the lowbit commit measured (default: git, where there is one)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--fresh", action="store_true", help="do not resume: measure every selected row again")
    ap.add_argument("--progress", action="store_true", help="progress bars on stderr")
    ap.add_argument("--merge", nargs="+", type=Path, help="combine finished outputs into --out")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the tables and plots in docs/ from --out")
    args = ap.parse_args(argv)
    if args.merge:
        docs = merge(args.merge, args.out)
        print(f"merged {len(args.merge)} file(s): {', '.join(d['model'] for d in docs)} in {args.out}")
        return 0
    if args.write_docs:
        write_docs(args.out)
        return 0
    from lowbit.report.frontier import frontier_markdown

    rows = select(args.rows)
    command = "python benchmarks/kv_frontier.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for spec in (m for m in args.models.split(",") if m.strip()):
        name, path = model_spec(spec.strip())
        doc = measure(args, name, path, rows, command)
        print(frontier_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
