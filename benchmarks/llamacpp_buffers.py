"""llama.cpp's own CPU buffers (KV cache, output, compute) beside lowbit's LlamaCpp engine, over contexts,
-b/-ub and sequence counts, on the two real models.

Builds a tiny program (llamacpp_ctx_probe.c beside this file) against a llama.cpp build, which creates one
context with flash attention on and exits without decoding; llama.cpp logs every buffer it allocated.
Those log lines are parsed (the compute buffer from the destructor's line, to 1/10000 MiB) and compared
with `LlamaCpp(n_batch=.., n_ubatch=..)`. Writes JSON and prints predicted vs measured.

    python benchmarks/llamacpp_buffers.py --src LLAMA_CPP_SOURCE --build LLAMA_CPP_BUILD [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from lowbit.models.local import model_path
from lowbit.formats.kv import kv_format
from lowbit.models.catalog import resolve
from lowbit.planning.engines import LlamaCpp

MIB = 1 << 20
CONTEXTS = [1, 64, 256, 512, 1024, 4096, 16384, 32768, 65536, 131072]  # tokens per sequence
BATCHES = [(2048, 512), (512, 512), (2048, 2048), (512, 128), (64, 32), (8, 1)]  # (-b, -ub)
SEQUENCES = [1, 2, 4]
MAX_TOTAL = 131072  # cells of all sequences together, to keep the KV cache in this machine's memory
# past the output head: where the f16 KQ mask outgrows the logits (one sequence, two micro-batches)
LONG = {"smollm2-135m": [262144], "gemma3-270m": [524288, 1048576]}
RESOLUTION = {"kv": 0.005 * MIB, "output": 0.005 * MIB, "compute": 0.00005 * MIB}
_LINES = {
    "output": re.compile(r"CPU\s+output buffer size =\s+([\d.]+) MiB"),
    "kv": re.compile(r"CPU KV buffer size =\s+([\d.]+) MiB"),
    "compute": re.compile(r"~llama_context:\s+CPU compute buffer size is\s+([\d.]+) MiB"),
}


def build_probe(src: Path, build: Path, out: Path) -> Path:
    binary = out / "llamacpp_ctx_probe"
    libs = build / "bin"
    subprocess.run(["cc", "-O1", "-o", str(binary), str(Path(__file__).with_name("llamacpp_ctx_probe.c")),
                    f"-I{src / 'include'}", f"-I{src / 'ggml' / 'include'}", f"-L{libs}", "-lllama", "-lggml",
                    "-lggml-base", f"-Wl,-rpath,{libs}"], check=True)
    return binary


def measure(binary: Path, gguf: Path, n_ctx: int, n_batch: int, n_ubatch: int, n_seq: int) -> dict:
    done = subprocess.run([str(binary), str(gguf), str(n_ctx), str(n_batch), str(n_ubatch), str(n_seq), "0"],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"llama.cpp failed for n_ctx={n_ctx}: {done.stderr[-500:]}")
    out = {}
    for key, pattern in _LINES.items():
        values = [float(x) for x in pattern.findall(done.stdout)]
        out[key] = round(sum(values) * MIB)  # iSWA models log two KV buffers
    return out


def predict(cfg, context: int, n_batch: int, n_ubatch: int, n_seq: int) -> dict:
    engine = LlamaCpp(n_batch=n_batch, n_ubatch=n_ubatch)
    f16 = kv_format("f16")
    a = engine.allocate(cfg, f16, f16, context, n_seq)
    parts = engine.runtime_parts(cfg, context, n_seq)
    return {"kv": a.kv_bytes, "output": parts["output"], "compute": parts["compute"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="llama.cpp source tree (for llama.h)")
    ap.add_argument("--build", type=Path, required=True, help="llama.cpp build folder (bin/libllama.so)")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument("--quick", action="store_true", help="fewer points")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_probe(args.src, args.build, Path(tmp))
        for name in ("smollm2-135m", "gemma3-270m"):
            gguf = model_path(name)
            cfg = resolve(str(gguf)).config
            contexts = CONTEXTS[::3] if args.quick else CONTEXTS
            points = [(s, b, u, c) for s in (SEQUENCES[:1] if args.quick else SEQUENCES) for b, u in BATCHES
                      for c in contexts if c * s <= MAX_TOTAL]
            points += [(1, b, u, c) for b, u in ((2048, 512), (512, 128)) for c in LONG[name]]
            for n_seq, n_batch, n_ubatch, per_seq in points:
                # lowbit's context is per sequence; llama.cpp's n_ctx is all sequences together
                measured = measure(binary, gguf, per_seq * n_seq, n_batch, n_ubatch, n_seq)
                predicted = predict(cfg, per_seq, n_batch, n_ubatch, n_seq)
                row = {"model": name, "context": per_seq, "n_ctx": per_seq * n_seq, "n_batch": n_batch,
                       "n_ubatch": n_ubatch, "sequences": n_seq, "measured": measured, "predicted": predicted}
                for k in ("kv", "output", "compute"):
                    # the log prints KV and output buffers to 0.01 MiB and the compute buffer to 0.0001 MiB:
                    # a difference within half of that is no difference
                    m, p, res = measured[k], predicted[k], RESOLUTION[k]
                    row[f"{k}_error"] = (1 if p > m else -1) * max(0, abs(p - m) - res) / m if m else float(p != 0)
                rows.append(row)
                print(f"{name:13s} ctx {per_seq:>9,} x{n_seq} -b {n_batch:>4} -ub {n_ubatch:>4}  compute "
                      f"{measured['compute'] / MIB:9.3f} MiB, predicted {predicted['compute'] / MIB:9.3f} "
                      f"({row['compute_error']:+.3%})  output {row['output_error']:+.2%}  kv {row['kv_error']:+.2%}",
                      flush=True)
    worst = {k: max(abs(r[f"{k}_error"]) for r in rows) for k in ("kv", "output", "compute")}
    print("worst |error|: " + ", ".join(f"{k} {v:.2%}" for k, v in worst.items()))
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "processor": platform.processor(),
                                         "rows": rows, "worst": worst}, indent=1))
    return 0 if max(worst.values()) <= 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
