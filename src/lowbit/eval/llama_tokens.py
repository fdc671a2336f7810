"""Tokenization as llama.cpp (0c1e57098, src/llama-vocab.cpp, src/unicode.cpp) does it, on the GGUF's own vocabulary.

transformers builds the tokenizer from the GGUF, but not quite as llama.cpp reads the same file:
  - byte-level BPE whose `tokenizer.ggml.pre` is "smollm" (and the other types sharing its regexes): llama.cpp
    first isolates every digit (`\\p{N}`), then splits the rest with the GPT-2 regex; transformers applies the
    GPT-2 regex alone, so a run of spaces before a digit ends differently ("\\n   1": llama.cpp "\\n   " "1",
    transformers "\\n  " " " "1"). llama.cpp's regex fallback also leaves U+FFFD (which its BPE puts for a byte
    that is not UTF-8) as a piece of its own, and an ASCII byte the vocabulary has no token for stops merges
    across it where transformers drops it first;
  - SentencePiece vocabularies (Gemma): llama.cpp matches every USER_DEFINED token whole before anything else,
    among them the runs of 2 to 31 spaces; transformers respells those runs as "▁▁…" and then skips them
    when it adds the user-defined tokens, so 33 spaces became 16 + 17 instead of llama.cpp's 31 + 2.
`conform` fixes both on a loaded tokenizer. With it, lowbit's ids equal `llama-tokenize --ids` on the whole
evaluation text for SmolLM2 and Gemma 3 (a test checks a slice against ids written out by llama-tokenize).

`escapes` and `tokenize` give the ids llama-perplexity evaluates: its `-f` drops one trailing newline and,
by default (`--escape`), turns \\n \\r \\t \\' \\" \\\\ and \\xHH in the text into the characters they name
(common/common.cpp string_process_escapes), then tokenizes once, BOS first iff the GGUF says add_bos_token.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.models.gguf_header import read_array, read_header

# llama.cpp's pre-tokenizer types that split with exactly these two regexes (llama-vocab.cpp, "smollm" group)
DIGIT_FIRST_PRE = ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva", "mellum2")
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PROBE = Path(__file__).with_name("llamacpp_tokens.json")  # llama-tokenize's ids (benchmarks/llamacpp_tokens_fixture.py)
CONFORM_VERSION = 2  # part of the saved tokenizer's name: a change to `conform` must not reuse old copies
USER_DEFINED = 4  # llama_token_type LLAMA_TOKEN_TYPE_USER_DEFINED


def conform(tok, path) -> bool:
    """Make a transformers tokenizer built from the GGUF at `path` split text as llama.cpp does; True if changed."""
    from tokenizers import AddedToken, Regex, pre_tokenizers

    meta = read_header(path).metadata
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    changed = False
    if model == "gpt2" and pre in DIGIT_FIRST_PRE:
        # An ASCII byte with no token in the vocabulary (SmolLM2 lacks 0x1D, "group separator"): llama.cpp's BPE
        # keeps it as a symbol that merges with nothing and emits no token; transformers drops it first and
        # merges its neighbours (' "\x1d"' -> ' ""' instead of ' "', '"'). Isolating it does what llama.cpp does.
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        vocab, spelling = tok.get_vocab(), bytes_to_unicode()
        missing = "".join(f"\\x{{{b:02X}}}" for b in range(0x80) if spelling[b] not in vocab)
        isolate = r"\p{N}|\x{FFFD}" + (f"|[{missing}]" if missing else "")
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(isolate), behavior="isolated"),
            pre_tokenizers.Split(Regex(GPT2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        changed = True
    if model == "llama":
        tokens = read_array(path, "tokenizer.ggml.tokens") or []
        types = read_array(path, "tokenizer.ggml.token_type") or []
        vocab = tok.get_vocab()
        # transformers stores space runs as "▁" runs, so they are matched after its normalizer (space -> ▁)
        runs = [AddedToken("\u2581" * len(t), normalized=True, special=False)
                for t, ty in zip(tokens, types)
                if ty == USER_DEFINED and t and not t.strip(" ") and t not in vocab and "\u2581" * len(t) in vocab]
        if runs:
            tok.backend_tokenizer.add_tokens(runs)
            changed = True
    return changed


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("'"): b"'", ord('"'): b'"', ord("\\"): b"\\"}
_HEX2 = re.compile(rb"[0-9a-fA-F]{2}")


def escapes(data: bytes) -> bytes:
    """llama.cpp's string_process_escapes: \\n \\r \\t \\' \\" \\\\ and \\xHH become what they name, others stay."""
    out, i, n = bytearray(), 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x5C and i + 1 < n:  # backslash
            i += 1
            d = data[i]
            if d in _ESCAPES:
                out += _ESCAPES[d]
            elif d == ord("x") and i + 2 < n and _HEX2.fullmatch(data, i + 1, i + 3):
                out.append(int(data[i + 1:i + 3], 16))
                i += 2
            else:
                out += bytes((0x5C, d))
        else:
            out.append(c)
        i += 1
    return bytes(out)


def perplexity_text(text: str, escape: bool = True) -> bytes:
    """The bytes llama-perplexity -f evaluates for a file holding `text`: one trailing newline dropped, escapes."""
    data = text.encode("utf-8")
    if data.endswith(b"\n"):
        data = data[:-1]
    return escapes(data) if escape else data


def tokenize(tok, path, data: bytes, add_special: bool = True) -> list[int]:
    """llama.cpp's common_tokenize(data, add_special, parse_special=false) on a tokenizer `conform`ed to it.

    Bytes that are not UTF-8 (an escaped \\x85): byte-level BPE reads each as U+FFFD, a SentencePiece vocabulary
    gets its <0xHH> byte token, as llama.cpp does.
    """
    meta = read_header(path).metadata
    model = meta.get("tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise LowbitError(f"llama.cpp tokenization of a {model!r} vocabulary is not implemented (gpt2, llama)")
    bos = meta.get("tokenizer.ggml.bos_token_id")
    ids = [bos] if add_special and meta.get("tokenizer.ggml.add_bos_token", model == "llama") and bos is not None \
        else []
    if model == "gpt2":
        return ids + _encode(tok, data.decode("utf-8", errors="replace"))
    pos = 0
    while pos < len(data):
        try:
            ids += _encode(tok, data[pos:].decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            ids += _encode(tok, data[pos:pos + e.start].decode("utf-8"))
            byte = tok.convert_tokens_to_ids(f"<0x{data[pos + e.start]:02X}>")
            if byte is None or byte == tok.unk_token_id:
                raise LowbitError(f"the vocabulary has no byte token for 0x{data[pos + e.start]:02X}") from None
            ids.append(byte)
            pos += e.start + 1
    return ids


def _encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


@functools.lru_cache(maxsize=1)
def _probe() -> dict:
    return json.loads(PROBE.read_text(encoding="utf-8"))


def check(tok, path) -> None:
    """Refuse a tokenizer that does not tokenize as llama.cpp on the probe slices, for a GGUF the probe knows.

    transformers builds the tokenizer from the GGUF, and versions differ: transformers 5.17 builds Gemma 3's with
    runs of spaces as separate tokens and no BOS (8,667 ids for 20,000 characters where llama.cpp has 4,666),
    which measured f16 perplexity 84.7 instead of about 12. Measuring with such a tokenizer gives wrong figures
    without a word, so it is an error."""
    probe = _probe()
    name = Path(path).name
    case = next((c for c in probe["models"].values() if c["gguf"] == name), None)
    if case is None:
        return
    ids = tokenize(tok, path, escapes(probe["text"].encode("utf-8")))
    if ids != case["ids"]:
        import transformers

        first = next((i for i, (a, b) in enumerate(zip(ids, case["ids"])) if a != b), min(len(ids), len(case["ids"])))
        raise LowbitError(f"the tokenizer transformers {transformers.__version__} builds from {name} does not tokenize "
                          f"as llama.cpp {probe['llama_cpp_commit']} does (the probe text: {len(ids)} ids against "
                          f"{len(case['ids'])}, first difference at id {first}); its measurements would be wrong (a copy that "
                          f"another transformers version saved in $LOWBIT_CACHE/tokenizers is used if it passes)")
