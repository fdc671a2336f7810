"""lowbit's `--protocol llama.cpp` beside llama.cpp's own llama-perplexity: same text, same GGUF, same windows.

For each KV cache type (llama.cpp `-ctk T -ctv T -fa on`; `T:norot` with LLAMA_ATTN_ROT_DISABLE=1) and each weight
type (`llama-quantize --allow-requantize --pure GGUF OUT TYPE`, then llama-perplexity on OUT with an f16 cache),
llama.cpp's PPL ±, PPL ratio to f16 ±, KLD ± and same-top are set beside lowbit's, measured by
lowbit.eval.protocol on the same windows (the token ids are checked against the ones llama.cpp stores in its
--kl-divergence-base file). Weights: lowbit quantizes the same tensors to the same types with its own
quantizers (lowbit.eval.weights.quantized_weights, pure), and the bytes are compared with llama-quantize's file;
a type lowbit cannot quantize (Q4_K) is evaluated from llama-quantize's tensors. lowbit's f16 logits are also
compared directly with the base log-probabilities llama.cpp stored (KLD(llama.cpp f16 || lowbit f16)).

    nice -n 10 python benchmarks/llamacpp_agreement.py --bin /work/llamacpp-build/bin --model smollm2-135m \
        --ctx 512 --tokens 32768 --kv f16,q8_0:norot=q8_0,q4_0:norot=q4_0 --weights Q8_0,Q4_0,Q4_K_M \
        --work /work/lq --reuse docs/quality_results/llamacpp_0c1e57098_smollm2_c512.json --f32 f16,q8_0,q4_0 \
        --out docs/quality_results/llamacpp_agreement_smollm2_c512.json

--kv takes LLAMA[=LOWBIT] pairs: the llama.cpp cache type and the lowbit KV format that does the same
(default: the same name). --reuse: llama.cpp cases already measured by benchmarks/llamacpp_perplexity.py with the
same binary, text, model, -c and --chunks are taken from that JSON instead of re-run (their command is kept).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_perplexity as lp  # noqa: E402  (its log parser and case runner)


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


# ------------------------------------------------------------------------------------------- llama.cpp side

def llama_case(args, exe: str, model: str, kv: str, base: str, kld: bool, tag: str) -> dict:
    """One llama-perplexity run: -ctk/-ctv kv, saving (kld False) or reading (kld True) the base logits."""
    kv_type, _, opt = kv.partition(":")
    cmd = [exe, "-m", model, "-f", args.text, "-c", str(args.ctx), "-t", str(args.threads), "-fa", "on", "-lv", "4",
           "-ctk", kv_type, "-ctv", kv_type, "--chunks", str(args.tokens // args.ctx), "--kl-divergence-base", base]
    cmd += ["--kl-divergence"] if kld else []
    extra = {"LLAMA_ATTN_ROT_DISABLE": "1"} if opt == "norot" else {}
    env = {**{k: v for k, v in os.environ.items() if k != "LLAMA_ATTN_ROT_DISABLE"}, **extra}
    print(f"llama.cpp {tag} ...", file=sys.stderr, flush=True)
    t0, done = time.perf_counter(), subprocess.run(cmd, env=env, capture_output=True, text=True)
    log = done.stdout + done.stderr
    (Path(args.work) / f"{Path(model).stem}.c{args.ctx}.{tag}.log").write_text(log)
    if done.returncode:
        raise SystemExit(f"llama-perplexity failed ({done.returncode}): {log.strip().splitlines()[-1:]}")
    case = {"kv": kv, "ctx": args.ctx, "wall_s": round(time.perf_counter() - t0, 1), "env": extra,
            "command": " ".join(cmd), **lp.parse(log)}
    case.setdefault("ppl", case.get("kld_ppl"))
    return case


def reused(args, model_name: str, kind: str, name: str, base: str) -> dict | None:
    """A case measured before with the same -c, --chunks and base logits file (the text is checked by the caller):
    from llamacpp_perplexity.py's "cases" (KV types) or this script's own output (any kind)."""
    for f in args.reuse or []:
        data = json.loads(Path(f).read_text())
        cases = [{**c, "kind": "kv", "name": c["kv"]} for c in data.get("cases", [])] + \
                [{**c, "model": data.get("model"), "returncode": 0} for c in data.get("llama_cpp", [])]
        for c in cases:
            cmd = c["command"] + " "
            if (c.get("model") == model_name and c["ctx"] == args.ctx and c["kind"] == kind and c["name"] == name
                    and c.get("returncode") == 0 and f"--chunks {args.tokens // args.ctx} " in cmd
                    and f"--kl-divergence-base {base} " in cmd):
                return {k: v for k, v in c.items() if k not in ("kind", "name", "model", "gguf")} | {"reused_from": f}
    return None


def quantize(args, src: str, wtype: str) -> Path:
    out = Path(args.work) / f"{Path(src).stem}.pure.{wtype}.gguf"
    if not out.exists():
        cmd = [str(Path(args.bin) / "llama-quantize"), "--allow-requantize", "--pure", src, str(out), wtype,
               str(args.threads)]
        print(" ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, capture_output=True, check=True)
    return out


def llama_base_reader(path: str, n_ctx: int):
    """(tokens [n_chunk, n_ctx] as stored, log_probs(w) -> float64 tensor [scored, vocab]) of a .kld base file."""
    import numpy as np
    import torch

    with open(path, "rb") as f:
        magic = f.read(8)
        ctx, n_vocab, n_chunk = struct.unpack("<iii", f.read(12))
    if magic != b"_logits_" or ctx != n_ctx:
        raise SystemExit(f"{path}: not a llama-perplexity base for -c {n_ctx}")
    start = 20 + 4 * ctx * n_chunk
    tokens = np.memmap(path, dtype="<i4", mode="r", offset=20, shape=(n_chunk, ctx))
    nv, scored = 2 * ((n_vocab + 1) // 2) + 4, ctx - 1 - ctx // 2
    data = np.memmap(path, dtype="<u2", mode="r", offset=start, shape=(n_chunk, scored, nv))

    def log_probs(w: int):
        block = np.array(data[w])
        head = block[:, :4].copy().view("<f4")  # scale, min_log_prob
        q = torch.from_numpy(block[:, 4:4 + n_vocab].astype(np.float64))
        return torch.from_numpy(head[:, :1].astype(np.float64)) * q + torch.from_numpy(head[:, 1:2].astype(np.float64))

    return np.array(tokens), log_probs


# ---------------------------------------------------------------------------------------------- lowbit side

def lowbit_weights(path, wtype: str, qfile: Path):
    """(replace dict, how): lowbit's own quantizer where it has one (bytes compared with llama-quantize's)."""
    import numpy as np

    from lowbit.errors import LowbitError
    from lowbit.eval import lm
    from lowbit.eval.weights import tensor_types
    from lowbit.models.gguf_header import read_header
    from lowbit.quant import weights

    h = read_header(qfile)
    theirs = {t.name: t.type_name for t in h.tensors}
    mine = tensor_types(path, wtype, True, False)
    src, raw = lm.gguf_weights(path), np.memmap(qfile, dtype=np.uint8, mode="r")
    info = {"same_tensor_types": mine == theirs, "types": {t: sum(v == t for v in theirs.values())
                                                           for t in sorted(set(theirs.values()))}}
    own = lm.gguf_tensor_types(path)
    replace, identical, quantized = {}, 0, 0
    try:
        for t in h.tensors:
            if t.type_name == own[t.name] and t.type_name in ("F32", "F16"):
                continue
            q = weights.quantize(src[t.name], mine[t.name], None, name=t.name)
            quantized += 1
            identical += bool(np.array_equal(q.data.reshape(-1), raw[h.data_offset + t.offset:][:t.nbytes]))
            replace[t.name] = q.values
        info.update(quantizer="lowbit", tensors_quantized=quantized, tensors_bytes_identical=identical)
    except (LowbitError, NotImplementedError) as e:  # gguf-py has no Q4_K quantizer: evaluate llama.cpp's bytes
        qsrc = lm.gguf_weights(qfile)
        replace = {n: qsrc[n] for n, ty in theirs.items() if ty not in ("F32", "F16")}
        info.update(quantizer="llama-quantize's tensors (lowbit cannot quantize this type: "
                    f"{str(e).splitlines()[0][:80]})")
    return replace, info


def lowbit_side(args, path, kvs: list[tuple[str, str]], wfiles: dict[str, Path], bases: dict[str, str]) -> dict:
    from lowbit.cache import QuantizedKVCache
    from lowbit.eval import lm, protocol

    model = lm.load_model(path)
    win = protocol.windows(path, args.tokens, args.ctx)
    out = {"describe": protocol.describe(path, win)}
    tests, names = [], []
    for llama_kv, lowbit_kv in kvs:
        if llama_kv == "f16":
            continue
        tests.append((model, lambda c, f=lowbit_kv: QuantizedKVCache(c, f)))
        names.append(("kv", llama_kv, lowbit_kv))

    def f16(config):
        return QuantizedKVCache(config, "f16")

    for wtype, qfile in wfiles.items():
        replace, info = lowbit_weights(path, wtype, qfile)
        tests.append((lm.load_model(path, replace=replace), f16))
        names.append(("weights", wtype, info))
    # lowbit's f16 logits against each base llama.cpp stored (its f16 cache on the GGUF as it is, and on F32 weights)
    cross, readers = {k: protocol.Sums() for k in bases}, {}
    for key, base_file in bases.items():
        tokens, readers[key] = llama_base_reader(base_file, args.ctx)
        bos = protocol.bos_id(path)
        stored = tokens[: win.n_windows].copy()
        if bos is not None:
            stored[:, 0] = bos
        out[f"same_token_ids_as_llama_cpp_{key}"] = bool((stored == win.ids.numpy()).all())

    t0 = time.perf_counter()

    def on_base(w, logits):
        for key, read in readers.items():
            cross[key].add(logits, win.ids[w, win.prefill + 1:], read(w))
        print(f"  window {w + 1}/{win.n_windows} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    print(f"lowbit: {win.n_windows} windows x {1 + len(tests)} series", file=sys.stderr, flush=True)
    base, results = protocol.compare(win, (model, f16), tests, progress=sys.stderr.isatty(), on_base=on_base)
    out["f16"] = {"ppl": base.ppl, "ppl_unc": base.ppl_unc, "tokens": win.tokens, "windows": win.n_windows,
                  "window_nll": base.stats.as_dict()["nll"]}
    for key, sums in cross.items():
        s = protocol.summary(sums)  # "test" = lowbit f16, "base" = llama.cpp's stored f16 run
        out[f"f16_vs_llama_cpp_f16_{key}"] = {"kld": s["kld"], "kld_unc": s["kld_unc"], "same_top": s["same_top"],
                                              "ppl_ratio": s["ppl_ratio"], "ppl_ratio_unc": s["ppl_ratio_unc"],
                                              "ppl_llama_cpp_stored": s["ppl_base"]}
    out["series"] = [{"kind": k, "name": n, "lowbit": lowbit_name if k == "kv" else None,
                      **({"weights_info": lowbit_name} if k == "weights" else {}), **r.as_dict()}
                     for (k, n, lowbit_name), r in zip(names, results)]
    return out


# ---------------------------------------------------------------------------------------------------- table

def rows(result: dict) -> list[dict]:
    """One row per type: llama.cpp and lowbit side by side, differences in percentage points."""
    lc = {(c["kind"], c["name"]): c for c in result["llama_cpp"]}
    lb = result["lowbit"]
    f16_l, f16_b = lc[("kv", "f16")]["ppl"][0], lb["f16"]["ppl"]
    out = [{"type": "f16 (KV)", "ppl_llama_cpp": f16_l, "ppl_lowbit": f16_b,
            "ppl_diff_pct": 100 * (f16_b / f16_l - 1)}]
    series = list(lb["series"])
    if ("kv-f32", "f16") in lc:  # the KV rows again, against llama.cpp on F32 weights
        f16_32 = lc[("kv-f32", "f16")]["ppl"][0]
        out.append({"type": "f16 (KV, llama.cpp on F32 weights)", "ppl_llama_cpp": f16_32, "ppl_lowbit": f16_b,
                    "ppl_diff_pct": 100 * (f16_b / f16_32 - 1)})
        series += [{**s, "kind": "kv-f32"} for s in lb["series"] if s["kind"] == "kv" and ("kv-f32", s["name"]) in lc]
    for s in series:
        c = lc[(s["kind"], s["name"])]
        f16_l = lc[("kv-f32" if s["kind"] == "kv-f32" else "kv", "f16")]["ppl"][0]
        inc_l = 100 * (c["ppl"][0] / f16_l - 1)
        inc_b = 100 * (s["ppl"] / f16_b - 1)
        kind = {"kv": "KV", "weights": "weights", "kv-f32": "KV, llama.cpp on F32 weights"}[s["kind"]]
        out.append({"type": f"{s['name']} ({kind})",
                    "lowbit_format": s.get("lowbit"),
                    "ppl_llama_cpp": c["ppl"][0], "ppl_lowbit": s["ppl"], "ppl_diff_pct": 100 * (s["ppl"] / c["ppl"][0] - 1),
                    "increase_llama_cpp_pct": inc_l, "increase_lowbit_pct": inc_b, "increase_diff_pp": inc_b - inc_l,
                    "kld_llama_cpp": c.get("kld", [None])[0], "kld_lowbit": s["kld"],
                    "same_top_llama_cpp_pct": c.get("same_top_pct", [None])[0], "same_top_lowbit_pct": 100 * s["same_top"]})
    return out


def markdown(table: list[dict]) -> str:
    f = lambda x, fmt: "—" if x is None else format(x, fmt)  # noqa: E731
    lines = ["| type | PPL llama.cpp | PPL lowbit | lowbit / llama.cpp | increase over f16, llama.cpp | lowbit | "
             "difference (pp) | KLD llama.cpp | KLD lowbit | same top llama.cpp | lowbit |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table:
        lines.append(f"| {r['type']} | {r['ppl_llama_cpp']:.4f} | {r['ppl_lowbit']:.4f} | {r['ppl_diff_pct']:+.2f}% | "
                     f"{f(r.get('increase_llama_cpp_pct'), '+.2f')}% | {f(r.get('increase_lowbit_pct'), '+.2f')}% | "
                     f"{f(r.get('increase_diff_pp'), '+.2f')} | {f(r.get('kld_llama_cpp'), '.5f')} | "
                     f"{f(r.get('kld_lowbit'), '.5f')} | {f(r.get('same_top_llama_cpp_pct'), '.2f')} | "
                     f"{f(r.get('same_top_lowbit_pct'), '.2f')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="folder with llama-perplexity and llama-quantize")
    ap.add_argument("--model", required=True, help="a lowbit model name (smollm2-135m, gemma3-270m)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=32768, help="text tokens: tokens // ctx windows")
    ap.add_argument("--kv", default="f16,q8_0,q4_0", help="LLAMA[=LOWBIT] cache types, comma list (f16 first)")
    ap.add_argument("--weights", default="", help="llama-quantize types (--pure), comma list")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", required=True, help="folder for the base logits, quantized files and logs")
    ap.add_argument("--text", help="the text file (default: lowbit's corpus written to WORK/eval_text.txt)")
    ap.add_argument("--reuse", action="append", help="llamacpp_perplexity.py JSON whose matching cases are reused")
    ap.add_argument("--base", help="llama.cpp's f16 --kl-divergence-base file (default: WORK/MODEL.cCTX.f16.kld)")
    ap.add_argument("--f32", default="", help="llama.cpp cache types (comma list, f16 first) to run again on the "
                    "weights requantized to F32 (the same values; llama.cpp then multiplies f32 activations, as lowbit "
                    "does)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from lowbit.eval import lm
    from lowbit.eval.text import corpus

    Path(args.work).mkdir(parents=True, exist_ok=True)
    data = corpus().encode("utf-8")
    if args.text is None:
        args.text = str(Path(args.work) / "eval_text.txt")
        Path(args.text).write_bytes(data)
    if Path(args.text).read_bytes() != data:
        raise SystemExit(f"{args.text} is not lowbit's evaluation text")
    path = lm.resolve(args.model)
    kvs = [(k.partition("=")[0], k.partition("=")[2] or k.partition("=")[0]) for k in args.kv.split(",") if k]
    if not kvs or kvs[0][0] != "f16":
        raise SystemExit("--kv must start with f16 (the base)")
    exe = str(Path(args.bin) / "llama-perplexity")
    v = subprocess.run([exe, "--version"], capture_output=True, text=True)
    vm = re.search(r"version: (\S+) \(build (\d+), commit (\S+)\)", v.stdout + v.stderr)
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    result = {
        "what": "lowbit --protocol llama.cpp beside llama-perplexity", "argv": sys.argv,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lowbit_commit": git_commit(), "llama_cpp_version": {"version": vm[1], "commit": vm[3]} if vm else None,
        "machine": {"platform": platform.platform(), "cpu": m[1].strip() if (m := re.search(r"model name\s*:(.*)", info))
                    else platform.processor(), "cpu_count": os.cpu_count(), "threads": args.threads},
        "text": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "model": args.model, "gguf": path.name, "ctx": args.ctx, "tokens": args.tokens, "llama_cpp": [],
    }
    base = args.base or str(Path(args.work) / f"{args.model}.c{args.ctx}.f16.kld")

    def save():
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    for llama_kv, _ in kvs:
        case = reused(args, args.model, "kv", llama_kv, base) if Path(base).exists() else None
        if case is None:
            case = llama_case(args, exe, str(path), llama_kv, base, llama_kv != "f16", f"kv-{llama_kv}")
        result["llama_cpp"].append({"kind": "kv", "name": llama_kv, **case})
        save()
    wfiles = {}
    for wtype in [w for w in args.weights.split(",") if w]:
        wfiles[wtype] = quantize(args, str(path), wtype)
        case = reused(args, args.model, "weights", wtype, base) if Path(base).exists() else None
        if case is None:
            case = llama_case(args, exe, str(wfiles[wtype]), "f16", base, True, f"weights-{wtype}")
        result["llama_cpp"].append({"kind": "weights", "name": wtype, "gguf": wfiles[wtype].name, **case})
        save()
    bases = {"stored": base}
    if args.f32:  # llama.cpp on F32 weights: its matmuls then take f32 activations, not q8_1/q8_0 ones
        fpath, bases["f32"] = quantize(args, str(path), "F32"), str(Path(args.work) / f"{args.model}.c{args.ctx}.F32.f16.kld")
        for llama_kv in args.f32.split(","):
            case = reused(args, args.model, "kv-f32", llama_kv, bases["f32"]) if Path(bases["f32"]).exists() else None
            if case is None:
                case = llama_case(args, exe, str(fpath), llama_kv, bases["f32"], llama_kv != "f16",
                                  f"f32-kv-{llama_kv}")
            result["llama_cpp"].append({"kind": "kv-f32", "name": llama_kv, "gguf": fpath.name, **case})
            save()
    result["lowbit"] = lowbit_side(args, path, kvs, wfiles, bases)
    result["table"] = rows(result)
    save()
    print(markdown(result["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
