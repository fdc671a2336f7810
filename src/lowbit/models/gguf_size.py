"""The size of a GGUF header before the file exists: metadata, tokenizer and tensor infos.

A GGUF file is a header (magic, version, counts, key/value metadata, one info record per tensor)
padded to the alignment, then the tensor data. For a model known only by its config.json:

- the tensor infos are exact (name, dimensions, type, offset for every tensor of the inventory);
- the tokenizer, which is nearly all of the metadata, is computed from `tokenizer.json` beside
  config.json when it is there, as llama.cpp's converter writes it: `tokenizer.ggml.tokens` (the
  vocabulary padded to the model's vocab_size with `[PADn]`), `token_type` (int32 each), and
  `merges` for BPE tokenizers or `scores` (f32 each) for SentencePiece ones (Gemma, or any model
  shipping `tokenizer.model`), plus the chat template from `tokenizer_config.json`;
- without tokenizer.json the tokenizer is estimated per vocabulary entry;
- the remaining keys (architecture hyperparameters, general.*, special token ids) are estimated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.models.config import ModelConfig

MAX_TOKENIZER_JSON = 256 << 20  # the largest real ones (262K-entry vocabularies) are ~35 MB
OTHER_METADATA = 1536  # architecture keys, general.*, special token ids: 1.26-1.33 KB in the two real files
PREFIX = 4 + 4 + 8 + 8  # magic, version, tensor count, key/value count
# per vocabulary entry without tokenizer.json: BPE (string, type, one merge) or SentencePiece (string, score, type)
PER_TOKEN_BPE, PER_TOKEN_SPM = 36, 24


def _string(s: str) -> int:
    return 8 + len(s.encode("utf-8"))


def _key(key: str) -> int:
    return _string(key) + 4  # the key, then the value's type


def _string_array(key: str, items) -> int:
    return _key(key) + 4 + 8 + sum(_string(s) for s in items)


def _scalar_array(key: str, n: int, size: int = 4) -> int:
    return _key(key) + 4 + 8 + n * size


def tensor_info_bytes(tensors) -> int:
    """One record per tensor: name, n_dims, dims (u64 each), type (u32), offset (u64)."""
    return sum(_string(t.name) + 4 + 8 * len(t.shape) + 4 + 8 for t in tensors)


@dataclass(frozen=True)
class TokenizerBytes:
    bytes: int  # the tokenizer's metadata entries, exact for what the files say
    kind: str  # "bpe" or "spm"
    entries: int  # vocabulary entries written
    source: str  # the files it was computed from
    parts: str  # the entries counted


def sentencepiece(cfg: ModelConfig, folder: Path | None = None) -> bool:
    """llama.cpp's converter writes a SentencePiece vocabulary for Gemma and for any model with tokenizer.model."""
    return cfg.arch.startswith("gemma") or (folder is not None and (folder / "tokenizer.model").is_file())


def _load_json(path: Path, limit: int) -> dict:
    try:
        size = path.stat().st_size
        if size > limit:
            raise LowbitError(f"{path} is {size:,} bytes; larger than any real tokenizer file ({limit:,})")
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise LowbitError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise LowbitError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise LowbitError(f"{path} is not a tokenizer file (not a JSON object)")
    return data


def tokenizer_bytes(folder: Path, cfg: ModelConfig) -> TokenizerBytes | None:
    """The tokenizer metadata a converted GGUF holds, from tokenizer.json (None when there is none)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    tok = _load_json(path, MAX_TOKENIZER_JSON)
    model = tok.get("model") if isinstance(tok.get("model"), dict) else {}
    vocab = model.get("vocab", {})
    pieces: dict[int, str] = {}
    if isinstance(vocab, dict):  # BPE / WordPiece: {token: id}
        pieces = {i: t for t, i in vocab.items() if isinstance(i, int) and isinstance(t, str)}
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        pieces = {i: e[0] for i, e in enumerate(vocab) if isinstance(e, list) and e and isinstance(e[0], str)}
    for added in tok.get("added_tokens") or []:
        if isinstance(added, dict) and isinstance(added.get("id"), int) and isinstance(added.get("content"), str):
            pieces[added["id"]] = added["content"]
    if not pieces:
        raise LowbitError(f"{path} holds no vocabulary (model.vocab is empty)")
    n = max(cfg.vocab_size, max(pieces) + 1)  # the converter pads to the embedding's rows with [PADn]
    tokens = (pieces.get(i, f"[PAD{i}]") for i in range(n))
    spm = sentencepiece(cfg, folder) or model.get("type") == "Unigram"
    total = _string_array("tokenizer.ggml.tokens", tokens) + _scalar_array("tokenizer.ggml.token_type", n)
    if spm:
        total += _scalar_array("tokenizer.ggml.scores", n)
    else:
        merges = model.get("merges") or []
        total += _string_array("tokenizer.ggml.merges",
                               (" ".join(m) if isinstance(m, list) else str(m) for m in merges))
    parts = ["tokens", "types", "scores" if spm else "merges"]
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = _load_json(config, 16 << 20).get("chat_template")
        if isinstance(template, str):
            total += _key("tokenizer.chat_template") + _string(template)
            parts.append("chat template")
    files = "tokenizer.json" + (" + tokenizer_config.json" if config.is_file() else "")
    return TokenizerBytes(total, "spm" if spm else "bpe", n, files, ", ".join(parts))


@dataclass(frozen=True)
class HeaderSize:
    bytes: int  # padded to the alignment: where the tensor data starts
    source: str  # "file", "tokenizer" or "estimate"
    provenance: str


def _pad(n: int, align: int = 32) -> int:
    return -(-n // align) * align


def header_size(cfg: ModelConfig, tensors, folder: Path | None = None) -> HeaderSize:
    """The GGUF header of the text model: computed from tokenizer.json when `folder` has one, else estimated."""
    infos = tensor_info_bytes(tensors)
    tok = tokenizer_bytes(folder, cfg) if folder is not None else None
    if tok is not None:
        return HeaderSize(
            _pad(PREFIX + tok.bytes + OTHER_METADATA + infos), "tokenizer",
            f"computed: {tok.source} ({tok.entries:,} {tok.kind.upper()} entries: {tok.parts}) and the "
            f"{len(tensors)} tensor infos, exact; other metadata estimated at {OTHER_METADATA:,} bytes")
    spm = sentencepiece(cfg, folder)
    per_token = PER_TOKEN_SPM if spm else PER_TOKEN_BPE
    return HeaderSize(
        _pad(PREFIX + per_token * cfg.vocab_size + OTHER_METADATA + infos), "estimate",
        f"estimated (no tokenizer.json): {per_token} bytes per vocabulary entry ("
        f"{'SentencePiece: string, score, type' if spm else 'BPE: string, type, one merge'}) and "
        f"{OTHER_METADATA:,} bytes of other metadata; the {len(tensors)} tensor infos exact")
