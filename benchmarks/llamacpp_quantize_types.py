"""lowbit's per-tensor types beside llama-quantize's own, for many mixes and recipes on the real files.

Runs `llama-quantize --dry-run --allow-requantize [options] FILE MIX` (it decides every tensor's type
without quantizing) on SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M, parses the type it prints for each
tensor, and compares it with `lowbit.plan(FILE, MIX, recipe=...)`. Recipes cover --pure, --tensor-type
(first match wins, manual tensors skip the layer counters), --output-tensor-type,
--token-embedding-type and an importance matrix (made once with llama-imatrix on the eval text).
A recipe llama-quantize would refuse without an importance matrix (its dry run warns) must be
refused by lowbit too.

    python benchmarks/llamacpp_quantize_types.py --bin /work/llamacpp-build/bin [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.models.local import model_path
from lowbit.eval.text import corpus
from lowbit.planning.planner import plan
from lowbit.planning.recipe import Recipe

MIXES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
         "Q5_K_S", "Q5_K_M", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS",
         "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4_MOE", "Q1_0", "F16"]
RECIPES = {
    "pure": Recipe(pure=True),
    "tensor-type, first match wins": Recipe.of([r"blk\.(0|1|4)\.(attn_v|ffn_down)=q6_k", "ffn_down=q4_k",
                                               "attn_output=q8_0"]),
    "manual attn_v skips the counters": Recipe.of([r"blk\.0\.attn_v=q8_0", r"blk\.3\.ffn_down=q2_k"]),
    "output and embedding types": Recipe.of(output_tensor_type="q8_0", token_embedding_type="q4_0"),
    "output type on a tied embedding": Recipe.of(output_tensor_type="q4_k"),
    "pure + embedding type": Recipe.of(pure=True, token_embedding_type="q8_0"),
}
_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*?\], type =\s+(\S+), size =.*?(?:\((\S+)\))?\s*$")


def llama_types(binary: Path, gguf: Path, mix: str, recipe: Recipe, imatrix: Path | None) -> tuple[dict, bool, str]:
    """(tensor -> type, whether it warned that an imatrix is required, error text or '')."""
    args = [a for a in recipe.args() if a not in ("--imatrix", "FILE")]
    if imatrix is not None:
        args += ["--imatrix", str(imatrix)]
    done = subprocess.run([str(binary), "--dry-run", "--allow-requantize", *args, str(gguf), mix],
                          capture_output=True, text=True)
    log = done.stdout + done.stderr
    types = {}
    for line in log.splitlines():
        m = _LINE.match(line)
        if m:
            types[m.group(1)] = (m.group(3) or m.group(2)).upper()
    error = "" if done.returncode == 0 else (log.strip().splitlines() or ["failed"])[-1]
    return types, "will require an imatrix" in log, error


def lowbit_types(gguf: Path, mix: str, recipe: Recipe) -> tuple[dict | None, str]:
    try:
        p = plan(str(gguf), mix, context=1, recipe=recipe)
    except LowbitError as e:
        return None, str(e)
    return {t.name: t.type for t in p.tensors}, ""


def make_imatrix(bin_dir: Path, gguf: Path, out: Path) -> Path:
    text = out.with_suffix(".txt")
    text.write_text(corpus())
    subprocess.run([str(bin_dir / "llama-imatrix"), "-m", str(gguf), "-f", str(text), "-c", "128", "--chunks", "4",
                    "-o", str(out)], check=True, capture_output=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, type=Path, help="folder with llama-quantize and llama-imatrix")
    ap.add_argument("--json", type=Path, help="write every comparison here")
    args = ap.parse_args()
    rows, bad = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("smollm2-135m", "gemma3-270m"):
            gguf = model_path(model)
            imatrix_file = make_imatrix(args.bin, gguf, Path(tmp) / f"{model}.imatrix.gguf")
            cases = [(m, "default", Recipe()) for m in MIXES] + [("Q4_K_M", n, r) for n, r in RECIPES.items()] + \
                    [("Q2_K", n, r) for n, r in RECIPES.items()]
            for mix, name, base in cases:
                for imatrix in (False, True):
                    recipe = base.with_(imatrix=imatrix)
                    theirs, warned, error = llama_types(args.bin / "llama-quantize", gguf, mix, recipe,
                                                        imatrix_file if imatrix else None)
                    ours, refusal = lowbit_types(gguf, mix, recipe)
                    if error or warned:  # llama.cpp refuses (or would, outside a dry run)
                        agree = ours is None
                        diff = [] if agree else [f"llama.cpp refuses: {error or 'requires an imatrix'}"]
                    elif ours is None:
                        agree, diff = False, [f"lowbit refuses: {refusal}"]
                    else:
                        diff = [f"{n}: llama.cpp {theirs.get(n)} lowbit {ours.get(n)}"
                                for n in sorted(set(theirs) | set(ours)) if theirs.get(n) != ours.get(n)]
                        agree = not diff
                    bad += not agree
                    rows.append({"model": model, "mix": mix, "recipe": name, "imatrix": imatrix,
                                 "llama_cpp": "refused" if (error or warned) else f"{len(theirs)} tensors",
                                 "agree": agree, "diff": diff[:5]})
                    mark = "ok " if agree else "DIFF"
                    print(f"{mark} {model:13s} {mix:9s} {'imatrix' if imatrix else 'no imatrix':10s} {name}"
                          + ("" if agree else f"  {diff[:3]}"))
    print(f"{len(rows) - bad} of {len(rows)} agree tensor by tensor (refusals included)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
