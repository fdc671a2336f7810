"""Arguments several commands share, and their parsing into validated values.

llama.cpp's flag names are accepted where they mean the same thing: -ctk/--cache-type-k and
-ctv/--cache-type-v (KV-cache types), -np/--parallel (parallel sequences), -ub/--ubatch-size and
-b/--batch-size (the micro-batch the compute buffer and sliding-window cache are sized for), -ngl
(layers on the GPU, `fit`). -c/--ctx-size is llama.cpp's *total* context, which its parallel
sequences share (each gets c / np tokens); --context is per sequence, so the two agree for one.
"""

from __future__ import annotations

import argparse
import re
from fractions import Fraction

from lowbit.errors import LowbitError
from lowbit.planning.engines import Engine, LlamaCpp, engine_model

_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]i?)?\s*$")
LLAMA_BATCH, LLAMA_UBATCH = LlamaCpp.n_batch, LlamaCpp.n_ubatch  # llama.cpp's defaults for -b and -ub
CONTEXT_POLICY = ("A context beyond the model's trained maximum (max_position_embeddings, or the GGUF's "
                  "context_length) is refused unless --force-context: lowbit follows vLLM here, which refuses such "
                  "a max_model_len unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (llama.cpp only warns).")


def count(text: str) -> int:
    """'262144', '256k', '1M' -> int. k and M are binary (256k = 262144), as context sizes are written."""
    m = _COUNT.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a positive count: {text!r}")
    if len(m.group(1)) > 24:  # beyond every range below; a float of 400 digits would overflow
        raise argparse.ArgumentTypeError(f"count {text.strip()[:30]}... is far too large")
    value, suffix = Fraction(m.group(1)), (m.group(2) or "")  # exact: no float rounding, no overflow
    scale = {"": 1, "k": 1024, "ki": 1024, "m": 1024**2, "mi": 1024**2}[suffix.lower()]
    n = int(value * scale)
    if n != value * scale:
        raise argparse.ArgumentTypeError(f"not a whole count: {text!r}")
    return n


def add_context(p: argparse.ArgumentParser, default_help: str) -> None:
    """--context (per sequence), llama.cpp's -c/--ctx-size (shared by the parallel sequences), --force-context."""
    p.add_argument("--context", type=count, default=None,
                   help=f"tokens per sequence ({default_help}; suffix k = 1024, so 256k = 262144)")
    p.add_argument("-c", "--ctx-size", dest="ctx_size", type=count, default=None, metavar="N",
                   help="llama.cpp's context: N tokens shared by the parallel sequences (each gets N / np)")
    p.add_argument("--force-context", action="store_true",
                   help="plan a context beyond the model's trained maximum (as vLLM's VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)")


def add_sequences(p: argparse.ArgumentParser, name: str = "--sequences", help_text: str = "parallel sequences") -> None:
    p.add_argument(name, "-np", "--parallel", dest=name.lstrip("-"), type=count, default=1, metavar="N",
                   help=f"{help_text}, each with its own context (llama.cpp -np)")


def add_kv(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--kv", default=default, help="KV-cache format for K and V (f16, q8_0, turbo3, ...), or K/V "
                                                 "apart (q8_0/turbo4)"
                   + (f"; default {default}" if default else ""))
    p.add_argument("--kv-k", "-ctk", "--cache-type-k", dest="kv_k", default=None, metavar="TYPE",
                   help="KV-cache format for K only (llama.cpp -ctk)")
    p.add_argument("--kv-v", "-ctv", "--cache-type-v", dest="kv_v", default=None, metavar="TYPE",
                   help="KV-cache format for V only (llama.cpp -ctv)")


def add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="llama.cpp",
                   help="allocation model: llama.cpp (default), vllm (estimated) or transformers (Hugging Face's "
                        "cache, or lowbit's QuantizedKVCache; one device)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=count, default=None, metavar="N",
                   help=f"llama.cpp logical batch (default {LLAMA_BATCH}); the micro-batch is at most this")
    p.add_argument("-ub", "--ubatch-size", dest="ubatch_size", type=count, default=None, metavar="N",
                   help=f"llama.cpp micro-batch (default {LLAMA_UBATCH}): sizes the compute buffer and the "
                        "sliding-window cache")


def add_weights(p: argparse.ArgumentParser, default: str | None, default_help: str) -> None:
    p.add_argument("--weights", default=default,
                   help=f"weight format: a llama.cpp mix (Q4_K_M, Q1_0, ...) or `stored`, the file's own tensor types "
                        f"(a .gguf, or a checkpoint folder's safetensors); {default_help}")


def add_model_options(p: argparse.ArgumentParser, weights_help: str = "default Q4_K_M; a .gguf: stored") -> None:
    add_context(p, "default 262144, or the model's trained maximum if smaller")
    add_sequences(p)
    add_weights(p, None, weights_help)
    add_kv(p, None)
    p.add_argument("--pure", action="store_true", help="no per-tensor overrides (llama-quantize --pure)")
    p.add_argument("--mtp", action="store_true", help="add the MTP layer and its KV cache")
    p.add_argument("--vision", action="store_true", help="add the vision tower (llama.cpp's mmproj, F16)")
    add_engine(p)
    p.add_argument("--units", default="GB", help="GB (10^9, default) or GiB (2^30)")
    p.epilog = CONTEXT_POLICY


def add_format(p: argparse.ArgumentParser, choices=("table", "json", "csv", "markdown")) -> None:
    p.add_argument("--format", default="table", choices=choices, help="output format (default table)")


def add_wide(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wide", action="store_true", help=f"every column ({what}); the default table fits 80 columns")


def kv_pair(args: argparse.Namespace, default: str | None) -> tuple[str | None, str | None]:
    """(K format, V format) from --kv (one format, or K/V as in `q8_0/turbo4`), --kv-k and --kv-v."""
    k, pair, v = (args.kv or "").partition("/")
    if pair and (not k or not v or "/" in v):
        raise LowbitError(f"--kv takes one format or K/V (e.g. q8_0/turbo4), got {args.kv!r}")
    k, v = k or default, v or k or default
    return tuple(None if f is None else f.lower() for f in (args.kv_k or k, args.kv_v or v))


def context_arg(args: argparse.Namespace, parallel: int) -> int | None:
    """Tokens per sequence from --context, or from llama.cpp's -c N shared by `parallel` sequences."""
    if args.ctx_size is None:
        return args.context
    if args.context is not None:
        raise LowbitError("give either --context (per sequence) or -c/--ctx-size (shared, llama.cpp), not both")
    if args.ctx_size == 0:  # llama.cpp: the trained context, shared by the sequences
        raise LowbitError("-c 0 (llama.cpp: the model's trained context) is not taken here: leave the context out "
                          "to plan each sequence at the model's maximum (at most 262,144 tokens)")
    if parallel < 1:  # checked here too: the division below comes before the planner's own check
        raise LowbitError(f"-np/--parallel must be at least 1, got {parallel}")
    if args.ctx_size < parallel:
        raise LowbitError(f"-c {args.ctx_size} leaves no context for each of {parallel} parallel sequences")
    return args.ctx_size // parallel  # llama.cpp: n_ctx_seq = n_ctx / n_seq_max


def engine_from(args: argparse.Namespace) -> str | Engine:
    """The --engine, with llama.cpp's micro-batch from -b/-ub (llama.cpp runs min(b, ub))."""
    if args.batch_size is None and args.ubatch_size is None:
        return args.engine
    engine = engine_model(args.engine)
    if not isinstance(engine, LlamaCpp):
        raise LowbitError(f"-b/--batch-size and -ub/--ubatch-size are llama.cpp's, not {engine.name}'s")
    batch = LLAMA_BATCH if args.batch_size is None else args.batch_size
    ubatch = LLAMA_UBATCH if args.ubatch_size is None else args.ubatch_size
    if min(batch, ubatch) < 1:
        raise LowbitError("-b and -ub must be at least 1")
    return engine_model(engine, n_batch=batch, n_ubatch=ubatch)  # it runs min(context, b, ub)


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
