"""Arguments several commands share, and their parsing into validated values."""

from __future__ import annotations

import argparse
import re

from lowbit.errors import LowbitError
from lowbit.planning.engines import engine_model


_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]i?)?\s*$")


def count(text: str) -> int:
    """'262144', '256k', '1M' -> int. k and M are binary (256k = 262144), as context sizes are written."""
    m = _COUNT.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a positive count: {text!r}")
    value, suffix = float(m.group(1)), (m.group(2) or "")
    scale = {"": 1, "k": 1024, "ki": 1024, "m": 1024**2, "mi": 1024**2}[suffix.lower()]
    n = int(value * scale)
    if n != value * scale:
        raise argparse.ArgumentTypeError(f"not a whole count: {text!r}")
    return n


def add_model_options(p: argparse.ArgumentParser, weights_default: str | None = "Q4_K_M") -> None:
    p.add_argument("--context", type=count, default=262_144,
                   help="tokens per sequence (default 262144; suffix k = 1024, so 256k = 262144)")
    p.add_argument("--sequences", type=count, default=1, help="parallel sequences, each with the full context")
    p.add_argument("--weights", default=weights_default, help="weight format: a llama.cpp mix (Q4_K_M, Q1_0, ...)")
    p.add_argument("--kv", default=None, help="KV-cache format for K and V (f16, q8_0, turbo3, ...)")
    p.add_argument("--kv-k", default=None, help="KV-cache format for K only")
    p.add_argument("--kv-v", default=None, help="KV-cache format for V only")
    p.add_argument("--pure", action="store_true", help="no per-tensor overrides (llama-quantize --pure)")
    p.add_argument("--mtp", action="store_true", help="add the MTP layer and its KV cache")
    p.add_argument("--vision", action="store_true", help="add the vision tower (llama.cpp's mmproj, F16)")
    p.add_argument("--engine", default="llama.cpp", help="allocation model: llama.cpp (default) or vllm (estimated)")
    p.add_argument("--units", default="GB", help="GB (10^9, default) or GiB (2^30)")


def add_format(p: argparse.ArgumentParser, choices=("table", "json", "csv", "markdown")) -> None:
    p.add_argument("--format", default="table", choices=choices, help="output format (default table)")


def kv_pair(args: argparse.Namespace, default: str) -> tuple[str, str]:
    base = args.kv or default
    return (args.kv_k or base).lower(), (args.kv_v or base).lower()



def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """llama-quantize's options beside the mix (--pure comes with add_model_options)."""
    g = p.add_argument_group("llama-quantize options (the recipe the file was made with)")
    g.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE",
                   help="type for tensors whose name contains a match of PATTERN (a regex, as llama-quantize reads "
                        "it; repeatable, the first match wins), e.g. attn_v=q8_0")
    g.add_argument("--output-tensor-type", metavar="TYPE", help="type of output.weight (and of a tied embedding)")
    g.add_argument("--token-embedding-type", metavar="TYPE", help="type of token_embd.weight")
    g.add_argument("--leave-output-tensor", action="store_true", help="output.weight stays in the source type")
    im = g.add_mutually_exclusive_group()
    im.add_argument("--imatrix", dest="imatrix", action="store_const", const=True, default=None,
                    help="an importance matrix was given (default: only when the recipe cannot be made without one)")
    im.add_argument("--no-imatrix", dest="imatrix", action="store_const", const=False,
                    help="no importance matrix: llama.cpp's choices without one, and its refusals")


def recipe_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of plan() that add_recipe_options defines."""
    return {"tensor_types": list(args.tensor_type), "output_tensor_type": args.output_tensor_type,
            "token_embedding_type": args.token_embedding_type, "leave_output_tensor": args.leave_output_tensor,
            "imatrix": args.imatrix}


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """llama.cpp's -b/-ub: they size its compute buffer (and a sliding-window cache)."""
    p.add_argument("-b", "--batch-size", type=count, default=None, metavar="N",
                   help="llama.cpp logical batch (default 2048)")
    p.add_argument("-ub", "--ubatch-size", type=count, default=None, metavar="N",
                   help="llama.cpp micro-batch (default 512)")


def engine_arg(args: argparse.Namespace):
    """--engine, with -b/-ub given to llama.cpp's engine."""
    options = {k: v for k, v in (("n_batch", args.batch_size), ("n_ubatch", args.ubatch_size)) if v is not None}
    if options and str(args.engine).lower().replace("-", "").replace("_", "") not in ("llama.cpp", "llamacpp", "llama"):
        raise LowbitError("-b/-ub are llama.cpp's options; vLLM's batch is --engine vllm's max_num_batched_tokens")
    return engine_model(args.engine, **options)
