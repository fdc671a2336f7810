"""Write src/lowbit/eval/llamacpp_tokens.json: llama.cpp's own token ids for slices of lowbit's evaluation text.

The slices hold what lowbit's tokenizer once got wrong against llama.cpp (a run of 33 spaces, spaces before a
digit, "\\n\\n" before a list number, escapes such as \\x1d and \\x85 that llama-perplexity's -f turns into bytes).
Each model's ids come from `llama-tokenize -m GGUF -f FILE --ids --log-disable` (escapes processed, its default,
as llama-perplexity does; the file has no trailing newline). tests/test_llamacpp_protocol.py checks lowbit's
`llama_tokens.tokenize` against them.

    python benchmarks/llamacpp_tokens_fixture.py --llama-tokenize /work/llamacpp-build/bin/llama-tokenize
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# (start, end) character ranges of lowbit.eval.text.corpus() (CPython 3.11.7's pydoc_data.topics)
SLICES = [(10400, 10700), (19100, 19400), (345600, 345800), (349000, 350400)]
OUT = Path(__file__).resolve().parents[1] / "src" / "lowbit" / "eval" / "llamacpp_tokens.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-tokenize", required=True)
    ap.add_argument("--model", action="append", default=None, help="lowbit model names (default: both)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    from lowbit.eval.text import corpus
    from lowbit.models.local import model_path

    text = "\n\n".join(corpus()[a:b] for a, b in SLICES)
    version = subprocess.run([args.llama_tokenize, "--version"], capture_output=True, text=True)
    commit = m[1] if (m := re.search(r"commit (\S+)\)", version.stdout + version.stderr)) else None
    out = {"llama_cpp_commit": commit, "python": sys.version.split()[0], "slices": SLICES, "text": text,
           "escape": True, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "text.txt"
        f.write_bytes(text.encode("utf-8"))
        for name in args.model or ["smollm2-135m", "gemma3-270m"]:
            path = model_path(name)
            cmd = [args.llama_tokenize, "-m", str(path), "-f", str(f), "--ids", "--log-disable"]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out["models"][name] = {"gguf": path.name, "command": " ".join(["llama-tokenize", "-m", path.name,
                                                                              "-f", "text.txt", *cmd[5:]]),
                                   "ids": json.loads(done.stdout)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, ensure_ascii=True) + "\n")
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v['ids'])} ids" for k, v in out["models"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
