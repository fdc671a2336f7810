"""Measure llama.cpp decode (tg) and prefill (pp) tokens/s on this CPU with llama-bench, for the speed model.

    python benchmarks/speed_llamacpp.py --make-variants --models-dir /work/speed-models \
        --synth-dir /work/speed-synth --llama-bench /path/to/llama-bench \
        --llama-quantize /path/to/llama-quantize --out docs/speed_results/llamacpp_cpu.json [--pass 2]

Files (stored outside the repository): both built-in real models (smollm2-135m, gemma3-270m) requantized by
llama-quantize to F16, Q8_0, Q4_K_M, TQ2_0, TQ1_0 and Q1_0, plus --pure Q4_0 (and Q1_0 for Gemma) files;
and synthetic llama models for calibration (`SYNTH`: every matrix 256-aligned, so `--pure` gives each
weight type to every matrix, K-quants and ternary included).

Cases: `calibration` (each synthetic file at depth 0, tg and pp; the wide Q4_0 file with KV f16 / q8_0 /
q4_0 at depth 2048 (tg) and 1024 (pp)), then `check` (each real file at depth 0; the Q4_K_M files with each
KV type at depth 512 and 2048 (tg) and 512 (pp)). Each case runs llama-bench (-fa 1, -o json) twice, with
1 and 4 repetitions, and keeps tokens per CPU-second from the difference (see `bench`), the wall-clock
samples, the load average, the machine, llama.cpp's commit and the exact commands. A later `--pass N`
repeats the finished cases; benchmarks/speed_check.py takes the median over the passes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("smollm2-135m", "gemma3-270m")
TYPES = ("F16", "Q8_0", "Q4_K_M", "TQ2_0", "TQ1_0", "Q1_0")
PURE = {"gemma3-270m": ("Q4_0", "Q1_0"), "smollm2-135m": ("Q4_0",)}
KV_TYPES = ("f16", "q8_0", "q4_0")
# SmolLM2's attention and FFN-input rows hold 576 values, not a multiple of Q1_0's 128-value block, and
# llama-quantize has no Q1_0 fallback: only its ffn_down (1536-value rows) can be Q1_0; the rest is Q4_0.
SMOLLM2_Q1_0_OVERRIDES = [f"{t}=q4_0" for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def make_variants(quantize: str, out_dir: Path) -> list[Path]:
    """Requantize both built-in models into `out_dir` (skipping files already there)."""
    from lowbit.models.local import model_path

    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name in MODELS:
        f16 = out_dir / f"{name}-F16.gguf"
        jobs = [(model_path(name), f16, "F16", [])]
        for t in TYPES[1:]:
            extra = [a for o in SMOLLM2_Q1_0_OVERRIDES for a in ("--tensor-type", o)] \
                if (name, t) == ("smollm2-135m", "Q1_0") else []
            jobs.append((f16, out_dir / f"{name}-{t}.gguf", t, extra))
        for t in PURE[name]:
            jobs.append((f16, out_dir / f"{name}-{t}-pure.gguf", t, ["--pure"]))
        for src, dst, t, extra in jobs:
            if not dst.exists():
                tmp = dst.with_suffix(".tmp.gguf")
                r = _run([quantize, "--allow-requantize", *extra, str(src), str(tmp), t, "1"])
                if r.returncode:
                    sys.exit(f"llama-quantize failed for {dst.name}:\n{r.stderr[-2000:]}")
                tmp.replace(dst)
            made.append(dst)
    return made


# Synthetic llama models for calibration: every matrix a multiple of 256 wide, so `llama-quantize --pure` can
# give every weight (the tied output head too) one type, Q4_K, Q6_K and TQ1_0/TQ2_0 included. Random weights:
# speed does not depend on the values. "narrow" has the same layers and vocabulary with 1/16 the matrix
# parameters, which separates the per-layer overhead from the per-weight cost.
SYNTH = {
    "synth-wide": {"n_embd": 1024, "n_ff": 3072, "n_head": 16, "n_head_kv": 4, "n_layer": 12},
    "synth-narrow": {"n_embd": 256, "n_ff": 768, "n_head": 4, "n_head_kv": 1, "n_layer": 12},
}
SYNTH_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_0", "Q3_K", "Q2_K", "TQ2_0", "TQ1_0", "Q1_0")


def write_synthetic(name: str, dims: dict, tokenizer_from: Path, out: Path) -> None:
    """A llama-architecture F16 GGUF with random weights and SmolLM2's tokenizer (49,152 tokens, tied output)."""
    import gguf
    import numpy as np

    src = gguf.GGUFReader(str(tokenizer_from))
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(name)
    w.add_block_count(dims["n_layer"])
    w.add_context_length(8192)
    w.add_embedding_length(dims["n_embd"])
    w.add_feed_forward_length(dims["n_ff"])
    w.add_head_count(dims["n_head"])
    w.add_head_count_kv(dims["n_head_kv"])
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    head_dim = dims["n_embd"] // dims["n_head"]
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(1)
    for key, field in src.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                w.add_key_value(key, field.contents(), vtype, field.types[1])
            else:
                w.add_key_value(key, field.contents(), vtype)
    rng = np.random.default_rng(0)
    e, f, kv = dims["n_embd"], dims["n_ff"], dims["n_head_kv"] * head_dim
    vocab = len(src.fields["tokenizer.ggml.tokens"].data)

    def mat(rows: int, cols: int) -> np.ndarray:  # numpy shape (rows, cols) = ggml ne (cols, rows)
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", mat(vocab, e))
    w.add_tensor("output_norm.weight", np.ones(e, np.float32))
    for i in range(dims["n_layer"]):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(b + "attn_q.weight", mat(e, e))
        w.add_tensor(b + "attn_k.weight", mat(kv, e))
        w.add_tensor(b + "attn_v.weight", mat(kv, e))
        w.add_tensor(b + "attn_output.weight", mat(e, e))
        w.add_tensor(b + "ffn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(b + "ffn_gate.weight", mat(f, e))
        w.add_tensor(b + "ffn_up.weight", mat(f, e))
        w.add_tensor(b + "ffn_down.weight", mat(e, f))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_synthetic(quantize: str, out_dir: Path) -> list[Path]:
    """The synthetic calibration models: wide at every SYNTH_TYPES type (--pure), narrow at F16 and Q4_0."""
    from lowbit.models.local import model_path

    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name, dims in SYNTH.items():
        f16 = out_dir / f"{name}-F16.gguf"
        if not f16.exists():
            tmp = f16.with_suffix(".tmp.gguf")
            write_synthetic(name, dims, model_path("smollm2-135m"), tmp)
            tmp.replace(f16)
        made.append(f16)
        for t in SYNTH_TYPES[1:] if name == "synth-wide" else ("Q4_0",):
            dst = out_dir / f"{name}-{t}.gguf"
            if not dst.exists():
                tmp = dst.with_suffix(".tmp.gguf")
                r = _run([quantize, "--pure", str(f16), str(tmp), t, "1"])
                if r.returncode:
                    sys.exit(f"llama-quantize failed for {dst.name}:\n{r.stderr[-2000:]}")
                tmp.replace(dst)
            made.append(dst)
    return made


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory_bytes": mem, "platform": platform.platform()}


def llama_version(bench: str) -> str:
    r = _run([bench, "--version"])
    return (r.stdout + r.stderr).strip()


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench(bench_bin: str, case: dict, reps: tuple[int, int]) -> dict:
    """One case (file, test, tokens, depth, KV, threads), run at two repetition counts.

    On a shared machine wall-clock tokens/s measure the share of the CPU the scheduler gave, so the
    figure used is CPU-time based: the extra CPU seconds of the longer run over its extra repetitions (the
    model load, warmup and the depth fill, which llama-bench caches after the first repetition, cancel).
    With one thread that is the speed of an unloaded core (busy-waiting threads would inflate it, hence
    threads=1). Wall-clock samples of the longer run are kept beside it.
    """
    n_p, n_g = (case["n"], 0) if case["test"] == "pp" else (0, case["n"])
    base = [bench_bin, "-m", str(case["path"]), "-fa", "1", "-o", "json", "-t", str(case["threads"]),
            "-p", str(n_p), "-n", str(n_g), "-d", str(case["depth"]), "-ctk", case["kv"], "-ctv", case["kv"]]
    out = {k: v for k, v in case.items() if k != "path"}
    load0 = os.getloadavg()
    cpu, rows, cmds = [], None, []
    for r in reps:
        cmd = base + ["-r", str(r)]
        c0 = _cpu_seconds()
        res = _run(cmd)
        cpu.append(_cpu_seconds() - c0)
        if res.returncode:
            sys.exit(f"llama-bench failed ({shlex.join(cmd)}):\n{res.stderr[-2000:]}")
        rows = json.loads(res.stdout)
        cmds.append(shlex.join(cmd))
    row = rows[0]
    per_test = (cpu[1] - cpu[0]) / (reps[1] - reps[0])
    out.update({
        "cpu_seconds": [round(c, 4) for c in cpu], "reps": list(reps),
        "cpu_ts": case["n"] / per_test if per_test > 0 else None,
        "wall_samples_ts": row["samples_ts"], "wall_avg_ts": row["avg_ts"], "wall_max_ts": max(row["samples_ts"]),
        "model_size": row["model_size"], "model_n_params": row["model_n_params"], "model_type": row["model_type"],
        "build_commit": row["build_commit"], "cpu_info": row["cpu_info"],
        "loadavg_before": load0, "loadavg_after": os.getloadavg(), "commands": cmds,
    })
    return out


def cases(files: list[Path], synth: list[Path], n_prompt: int, n_gen: int, threads: int) -> list[dict]:
    """Calibration cases (the synthetic models) first, then the check cases (the real models)."""
    out = []

    def add(role: str, f: Path, test: str, depth: int = 0, kv: str = "f16") -> None:
        out.append({"role": role, "file": f.name, "path": f, "test": test, "n": n_prompt if test == "pp" else n_gen,
                    "depth": depth, "kv": kv, "threads": threads})

    for f in synth:
        add("calibration", f, "tg")
        add("calibration", f, "pp")
    for f in synth:
        if f.name == "synth-wide-Q4_0.gguf":
            for kv in KV_TYPES:
                add("calibration", f, "tg", 2048, kv)
                add("calibration", f, "pp", 1024, kv)
    for f in files:
        add("check", f, "tg")
        add("check", f, "pp")
    for f in files:
        if f.name.endswith("-Q4_K_M.gguf"):
            for kv in KV_TYPES:
                for d in (512, 2048):
                    add("check", f, "tg", d, kv)
                add("check", f, "pp", 512, kv)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, required=True, help="where the requantized real models live")
    ap.add_argument("--synth-dir", type=Path, required=True, help="where the synthetic calibration models live")
    ap.add_argument("--make-variants", action="store_true", help="create the files with llama-quantize first")
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH", "llama-bench"))
    ap.add_argument("--llama-quantize", default=os.environ.get("LLAMA_QUANTIZE", "llama-quantize"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", default="1,4", help="the two repetition counts whose CPU-time difference is used")
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--only", default="", help="comma-separated substrings: keep only files whose name has one")
    ap.add_argument("--role", default="", help="calibration or check: run only those cases")
    ap.add_argument("--pass", dest="pass_no", type=int, default=1,
                    help="pass number: a second or third pass repeats finished cases (the check uses the median)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    if args.make_variants:
        make_variants(args.llama_quantize, args.models_dir)
        make_synthetic(args.llama_quantize, args.synth_dir)
    files = sorted(args.models_dir.glob("*.gguf"))
    synth = sorted(args.synth_dir.glob("synth-*.gguf"))
    if args.only:
        keep = args.only.split(",")
        files = [f for f in files if any(k in f.name for k in keep)]
        synth = [f for f in synth if any(k in f.name for k in keep)]
    if not files and not synth:
        sys.exit(f"no .gguf files in {args.models_dir} or {args.synth_dir} (give --make-variants)")
    reps = tuple(int(r) for r in args.reps.split(","))
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "llama_cpp": llama_version(args.llama_bench), "script": shlex.join([sys.executable, *sys.argv]),
           "method": bench.__doc__.strip(), "runs": []}
    if args.out.exists():  # resume or another pass: keep finished cases and the first date
        old = json.loads(args.out.read_text())
        doc["runs"] = old.get("runs", [])
        doc["date"], doc["updated"] = old.get("date", doc["date"]), doc["date"]
    done = {(r["file"], r["test"], r["n"], r["depth"], r["kv"], r["threads"], r.get("pass", 1)) for r in doc["runs"]}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(fh.name, args.out)

    for case in cases(files, synth, args.n_prompt, args.n_gen, args.threads):
        key = (case["file"], case["test"], case["n"], case["depth"], case["kv"], case["threads"], args.pass_no)
        if key in done or (args.role and case["role"] != args.role):
            continue
        r = dict(bench(args.llama_bench, case, reps), **{"pass": args.pass_no})
        doc["runs"].append(r)
        print(f"{r['file']:30s} {r['test']}{r['n']}@d{r['depth']} kv={r['kv']} t={r['threads']}: "
              f"{r['cpu_ts']:.1f} tok/CPU-s (wall {r['wall_avg_ts']:.1f}, load {r['loadavg_before'][0]:.1f})",
              flush=True)
        save()
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
