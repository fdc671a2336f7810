"""llama-quantize's options beside the file type: the recipe an uploader chose.

Two files called "Q4_K_M" differ when their makers passed different options to llama-quantize:
per-tensor overrides (`--tensor-type PATTERN=TYPE`, `--output-tensor-type`, `--token-embedding-type`),
`--leave-output-tensor`, `--pure`, and whether an importance matrix was given (`--imatrix`), which
changes some of llama.cpp's choices and is required for others. A `Recipe` holds those options;
`lowbit.planning.mix` applies them as llama.cpp's `llama_tensor_get_type` does.

Patterns are read as llama-quantize reads them (tools/quantize/quantize.cpp, src/llama-quant.cpp):
lower-cased, compiled as regular expressions and *searched* in the tensor name (not matched whole);
the first pattern that matches wins. Python's `re` stands in for C++'s std::regex (ECMAScript): the
two agree on the usual syntax (alternation, classes, anchors, repetition); lookbehind and named groups
are Python-only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from lowbit.errors import LowbitError
from lowbit.formats.weights import WeightType, weight_type

MAX_PATTERNS = 4096  # a --tensor-type-file listing every tensor of a large model stays below this
MAX_PATTERN_CHARS = 4096


def _type(name: str, option: str) -> str:
    """A ggml type name as llama-quantize parses it (case-insensitive), canonical upper case."""
    try:
        wt = weight_type(str(name).strip())
    except LowbitError:
        raise LowbitError(f"{option}: invalid ggml type {name!r}") from None
    if not wt.quantized and wt.name not in ("F32", "F16", "BF16"):
        raise LowbitError(f"{option}: {wt.name} is not a type llama-quantize can write weights in")
    return wt.name


def tensor_type_option(text: str) -> tuple[str, str]:
    """`PATTERN=TYPE` as llama-quantize's parse_tensor_type reads it: split at the first '=', pattern
    lower-cased, type a ggml type name."""
    pattern, sep, qtype = str(text).partition("=")
    if not sep:
        raise LowbitError(f"--tensor-type wants PATTERN=TYPE (e.g. attn_v=q8_0), got {text!r}")
    if not pattern:
        raise LowbitError(f"--tensor-type {text!r}: missing tensor name")
    if not qtype:
        raise LowbitError(f"--tensor-type {text!r}: missing quantization type")
    return pattern.lower(), _type(qtype, f"--tensor-type {text!r}")


def _pairs(tensor_types) -> tuple[tuple[str, str], ...]:
    if not tensor_types:
        return ()
    if isinstance(tensor_types, str):
        items: Iterable = [tensor_types]
    elif isinstance(tensor_types, Mapping):
        items = [f"{k}={v}" for k, v in tensor_types.items()]
    else:
        items = tensor_types
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(tensor_type_option(item))
        elif isinstance(item, tuple) and len(item) == 2:
            out.append(tensor_type_option(f"{item[0]}={item[1]}"))
        else:
            raise LowbitError(f"tensor_types wants PATTERN=TYPE strings, (pattern, type) pairs or a mapping; got {item!r}")
    return tuple(out)


@dataclass(frozen=True)
class Recipe:
    """llama-quantize's options for one file. `imatrix=None`: with an importance matrix exactly when
    llama-quantize would refuse the recipe without one (the maker must then have given one)."""

    tensor_types: tuple[tuple[str, str], ...] = ()  # (lower-cased pattern, TYPE), in the order given
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    leave_output_tensor: bool = False
    pure: bool = False
    imatrix: bool | None = None
    _compiled: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        pairs = _pairs(self.tensor_types)
        if len(pairs) > MAX_PATTERNS:
            raise LowbitError(f"{len(pairs)} --tensor-type patterns: at most {MAX_PATTERNS}")
        compiled = []
        for pattern, qtype in pairs:
            if len(pattern) > MAX_PATTERN_CHARS:
                raise LowbitError(f"--tensor-type pattern of {len(pattern)} characters: at most {MAX_PATTERN_CHARS}")
            try:
                compiled.append((re.compile(pattern), weight_type(qtype)))
            except re.error as e:
                raise LowbitError(f"--tensor-type {pattern!r}: not a regular expression ({e})") from None
        object.__setattr__(self, "tensor_types", pairs)
        object.__setattr__(self, "_compiled", tuple(compiled))
        for name in ("output_tensor_type", "token_embedding_type"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _type(value, "--" + name.replace("_", "-")))
        if self.imatrix is not None and not isinstance(self.imatrix, bool):
            raise LowbitError(f"imatrix must be True, False or None, got {self.imatrix!r}")

    @classmethod
    def of(cls, tensor_types=(), output_tensor_type: str | None = None, token_embedding_type: str | None = None,
           leave_output_tensor: bool = False, pure: bool = False, imatrix: bool | None = None) -> Recipe:
        """`tensor_types`: 'PATTERN=TYPE' strings, (pattern, type) pairs, or an ordered mapping."""
        return cls(_pairs(tensor_types), output_tensor_type, token_embedding_type, bool(leave_output_tensor),
                   bool(pure), imatrix)

    def with_(self, **changes) -> Recipe:
        return replace(self, **changes)

    def override(self, name: str) -> WeightType | None:
        """The type of the first --tensor-type pattern found in `name` (regex_search), else None."""
        for pattern, qtype in self._compiled:
            if pattern.search(name):
                return qtype
        return None

    def named(self, name: str) -> bool:
        return any(p.search(name) for p, _ in self._compiled)

    @property
    def is_default(self) -> bool:
        return self == Recipe(imatrix=self.imatrix)

    def args(self) -> list[str]:
        """The llama-quantize options that make this recipe (`--imatrix FILE` stands for any matrix)."""
        out = []
        if self.leave_output_tensor:
            out.append("--leave-output-tensor")
        if self.pure:
            out.append("--pure")
        if self.imatrix:
            out += ["--imatrix", "FILE"]
        if self.output_tensor_type:
            out += ["--output-tensor-type", self.output_tensor_type.lower()]
        if self.token_embedding_type:
            out += ["--token-embedding-type", self.token_embedding_type.lower()]
        for pattern, qtype in self.tensor_types:
            out += ["--tensor-type", f"{pattern}={qtype.lower()}"]
        return out

    def to_json(self) -> dict:
        return {
            "tensor_types": [f"{p}={t}" for p, t in self.tensor_types],
            "output_tensor_type": self.output_tensor_type,
            "token_embedding_type": self.token_embedding_type,
            "leave_output_tensor": self.leave_output_tensor,
            "pure": self.pure,
            "imatrix": self.imatrix,
        }
