"""llama.cpp's own perplexity (and KL divergence against its f16-KV run) on lowbit's models and text.

Runs a built `llama-perplexity` per (model, context, KV type), parses its log, writes JSON (command,
llama.cpp commit, machine, date, per case PPL ± llama.cpp's standard error) and prints a table.
KV type T runs `-ctk T -ctv T -fa on`; `T:norot` adds LLAMA_ATTN_ROT_DISABLE=1, which turns off the
Hadamard rotation llama.cpp applies to quantized caches by default (PR #21038). --kld DIR: f16 runs first
and saves its logits in DIR (n_chunks * n_ctx/2 * n_vocab * 2 bytes: cap with --tokens); every other type
runs `--kl-divergence` against them. --text: lowbit's text (`lowbit.eval.text.corpus()` in a file). No torch.

    python benchmarks/llamacpp_perplexity.py --llama-perplexity PATH --model smollm2-135m \
        --text eval_text.txt --kv f16,q8_0,q4_0,q4_0:norot --ctx 512 --tokens 32768 --out out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

NUM = r"([-+0-9.eE]+|nan|inf)"
PM = rf"\s*{NUM}\s*±\s*{NUM}"  # "value ± error" as the KL-divergence summary prints it
PATTERNS = {  # key -> regex over llama-perplexity's log; groups are value[, error]
    "ppl": rf"Final estimate: PPL = {NUM} \+/- {NUM}",
    "chunks": r"calculating perplexity over (\d+) chunks",
    "kld_chunks": r"kl_divergence: computing over (\d+) chunks",
    "kld_ppl": rf"Mean PPL\(Q\)\s*:{PM}",
    "kld_ppl_base": rf"Mean PPL\(base\)\s*:{PM}",
    "kld_ppl_ratio": rf"Mean PPL\(Q\)/PPL\(base\)\s*:{PM}",
    "kld": rf"Mean    KLD:{PM}",
    "same_top_pct": rf"Same top p:{PM}",
    "attn_rot_k": r"attn_rot_k = (\d)",
    "attn_rot_v": r"attn_rot_v = (\d)",
}


def parse(log: str) -> dict:
    out = {}
    for key, pat in PATTERNS.items():
        if m := re.search(pat, log):
            vals = [int(g) if g.isdigit() else float(g) for g in m.groups()]
            out[key] = vals if len(vals) > 1 else vals[0]
    return out


def model_path(spec: str) -> tuple[str, str]:
    """NAME=PATH, a .gguf path, or a lowbit built-in model name (resolved without torch)."""
    name, sep, path = spec.partition("=")
    if sep or spec.lower().endswith(".gguf"):
        return (name, path) if sep else (Path(spec).stem, spec)
    from lowbit.models.local import model_path as lowbit_model_path  # no torch behind it

    return spec, str(lowbit_model_path(spec))


def run_case(exe: str, model: str, ctx: int, kv: str, args, base: str | None) -> dict:
    kv_type, _, opt = kv.partition(":")
    cmd = [exe, "-m", model, "-f", args.text, "-c", str(ctx), "-t", str(args.threads), "-fa", "on", "-lv", "4",
           "-ctk", kv_type, "-ctv", kv_type, *(["--chunks", str(args.tokens // ctx)] if args.tokens else [])]
    if base:  # f16 saves the base logits, every other type is compared with them
        cmd += ["--kl-divergence-base", base] + ([] if kv == "f16" else ["--kl-divergence"])
    extra = {"LLAMA_ATTN_ROT_DISABLE": "1"} if opt == "norot" else {}
    env = {**{k: v for k, v in os.environ.items() if k != "LLAMA_ATTN_ROT_DISABLE"}, **extra}
    t0, done = time.perf_counter(), subprocess.run(cmd, env=env, capture_output=True, text=True)
    log = done.stdout + done.stderr
    case = {"kv": kv, "ctx": ctx, "returncode": done.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "env": extra, "command": " ".join(cmd), **parse(log)}
    case.setdefault("ppl", case.get("kld_ppl"))  # a KL-divergence run prints its PPL in the summary
    case["scored_tokens"] = (case.get("chunks") or case.get("kld_chunks") or 0) * (ctx - 1 - ctx // 2)
    if args.log_dir:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        tag = f"{Path(model).stem}.c{ctx}.{kv.replace(':', '-')}{'.kld' if base and kv != 'f16' else ''}"
        (Path(args.log_dir) / f"{tag}.log").write_text(log)
    if done.returncode != 0:
        print(f"  failed ({done.returncode}): {log.strip().splitlines()[-1:]}", file=sys.stderr)
    return case


def table(cases: list[dict]) -> str:
    nan = (float("nan"), float("nan"))
    rows = [f"{'model':14} {'ctx':>5} {'kv':11} {'rot':>3} {'chunks':>6} {'PPL':>9} {'±':>7} {'vs f16':>8} "
            f"{'KLD':>8} {'±':>7} {'top1 %':>6} {'wall s':>6}"]
    f16 = {(c["model"], c["ctx"]): c["ppl"][0] for c in cases if c["kv"] == "f16" and c.get("ppl")}
    for c in cases:
        ppl, err = c.get("ppl") or nan
        rel = f"{100 * (ppl / ref - 1):+.2f}%" if (ref := f16.get((c["model"], c["ctx"]))) else ""
        (kld, kerr), top = c.get("kld", nan), c.get("same_top_pct", nan)[0]
        rows.append(f"{c['model']:14} {c['ctx']:>5} {c['kv']:11} {c.get('attn_rot_k', '-'):>3} "
                    f"{c.get('chunks', c.get('kld_chunks', '-')):>6} {ppl:9.4f} {err:7.4f} {rel:>8} "
                    f"{kld:8.5f} {kerr:7.5f} {top:6.2f} {c['wall_s']:6.0f}")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-perplexity", default=os.environ.get("LOWBIT_LLAMA_PERPLEXITY"),
                    help="path to llama-perplexity (default: $LOWBIT_LLAMA_PERPLEXITY)")
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH, PATH.gguf or a lowbit model name")
    ap.add_argument("--text", required=True, help="the evaluation text file")
    ap.add_argument("--kv", default="f16,q8_0,q4_0", help="comma list of cache types; T:norot = unrotated")
    ap.add_argument("--ctx", default="512", help="comma list of context sizes (-c)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens", type=int, default=0, help="only the first N text tokens: N // ctx windows (0: all)")
    ap.add_argument("--kld", metavar="DIR", help="also KL divergence against f16 logits saved in DIR")
    ap.add_argument("--log-dir", help="keep each run's full log here")
    ap.add_argument("--out", help="write the JSON here (default: stdout)")
    args = ap.parse_args()
    if not (exe := args.llama_perplexity) or not Path(exe).is_file():
        ap.error("give --llama-perplexity PATH or set LOWBIT_LLAMA_PERPLEXITY")
    kvs = [k.strip() for k in args.kv.split(",") if k.strip()]
    if args.kld:  # the base logits come from the f16 run, so it goes first
        kvs = ["f16"] + [k for k in kvs if k != "f16"]
        Path(args.kld).mkdir(parents=True, exist_ok=True)
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = m[1].strip() if (m := re.search(r"model name\s*:(.*)", info)) else platform.processor()
    v = subprocess.run([exe, "--version"], capture_output=True, text=True)  # prints version and commit
    vm = re.search(r"version: (\S+) \(build (\d+), commit (\S+)\)", v.stdout + v.stderr)
    result = {
        "tool": "llama-perplexity", "exe": str(Path(exe).resolve()),
        "llama_cpp": {"version": vm[1], "build": int(vm[2]), "commit": vm[3]} if vm else None,
        "argv": sys.argv, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "threads": args.threads},
        "text": {"path": str(Path(args.text).resolve()), "bytes": Path(args.text).stat().st_size},
        "models": {}, "cases": [],
    }
    for spec in args.model:
        name, path = model_path(spec)
        result["models"][name] = path
        for ctx in [int(c) for c in args.ctx.split(",")]:
            base = str(Path(args.kld) / f"{name}.c{ctx}.f16.kld") if args.kld else None
            for kv in kvs:
                print(f"{name} c={ctx} {kv} ...", file=sys.stderr, flush=True)
                result["cases"].append({"model": name, **run_case(exe, path, ctx, kv, args, base)})
                if args.out:  # after every case, so a long series keeps what it measured
                    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not args.out:
        print(json.dumps(result, indent=1))
    print("\n" + table(result["cases"]), file=sys.stderr)
    return 0 if all(c["returncode"] == 0 for c in result["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
