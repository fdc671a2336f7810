"""A real GGUF model as a transformers CausalLM in float32, on the CPU (default) or a GPU.

transformers can read GGUF itself, but only with `accelerate` installed (not a lowbit dependency)
and slowly (24 s / 35 s for SmolLM2 / Gemma 3 here); so lowbit builds the config from the GGUF
metadata (lowbit.models.gguf_header) and the state dict from the memory-mapped tensor data through
`gguf.quants.dequantize`, naming tensors with gguf's own table. Checked once against transformers'
loader (accelerate installed aside): bit-identical logits on both models.

Two conversions undo what llama.cpp's convert_hf_to_gguf.py did:
  llama  attn_q / attn_k rows were permuted (rotary pairs interleaved); we permute them back.
  gemma3 every *norm.weight had 1 added (HF Gemma scales by 1 + w); we subtract it.

The weights API speaks GGUF: tensor names like "blk.0.attn_q.weight" and numpy arrays in the shape
`gguf.GGUFReader` gives (rows, row_length), i.e. quantization blocks run along the last axis. So a
weight quantizer does `w = gguf_weights(path)[name]`, quantizes and dequantizes w, and evaluates
`load_model(path, replace={name: w_hat})`. Both models tie their output layer to token_embd.weight:
replacing token_embd replaces the output projection too, as in llama.cpp.

Devices: `load_model(..., device="cuda")` moves the float32 model to the GPU with TF32 off (matrix products
and cuDNN in full float32, so a GPU figure differs from the CPU's by float rounding only); everything the
model needs comes from the GGUF file alone (no hub, no network). The tokenizer is built from the GGUF
too; a saved copy goes to $LOWBIT_CACHE/tokenizers (default ~/.cache/lowbit), which only saves time: a
missing or read-only cache directory costs the ~12 s of building it again. Where this transformers version
builds a tokenizer that does not tokenize as llama.cpp (the probe in llama_tokens.check), a copy of the same GGUF's
tokenizer saved under another version that passes the probe is used instead; without one it is an error.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from lowbit.errors import LowbitError
from lowbit.eval import llama_tokens
from lowbit.models.catalog import gguf_path
from lowbit.models.config import from_gguf_metadata
from lowbit.models.local import cache_dir
from lowbit.models.gguf_header import read_header
from lowbit.printable import printable
from lowbit.progress import progress_bar, step
from lowbit.safe_write import TMP_PREFIX, clean_stale

SUPPORTED_ARCHS = ("llama", "gemma3")


@dataclass(frozen=True)
class GGUFInfo:
    """What lowbit needs from a GGUF file's metadata."""

    path: Path
    arch: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context_length: int  # the longest context the model was trained for


def resolve(model: str | os.PathLike) -> Path:
    """A local real model's name or a .gguf path -> the resolved GGUF path (the cache key everywhere)."""
    return gguf_path(model).resolve()


@functools.lru_cache(maxsize=8)
def _header(path: Path):
    # lowbit's bounded header reader: 0.1 s on Gemma 3 where gguf.GGUFReader takes ~8 s decoding the
    # 262k-entry vocabulary; tensor data is then read straight from the file at the header's offsets.
    return read_header(path)


@functools.lru_cache(maxsize=8)
def _metadata(path: Path) -> tuple[GGUFInfo, object]:
    """(info, HF config) built from the GGUF metadata."""
    header = _header(path)
    meta = header.metadata
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise LowbitError(f"{path.name}: architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")
    a = lambda k, d=None: meta.get(f"{arch}.{k}", d)  # noqa: E731
    names = {t.name for t in header.tensors}
    # Shapes and layer types come from the simulator's own metadata reader (validated, LowbitError on gaps).
    cfg = from_gguf_metadata({**meta, "lowbit.has_output_tensor": "output.weight" in names}, path.name)
    head_dim = cfg.head_dim
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=max(cfg.num_kv_heads),
        head_dim=head_dim,
        max_position_embeddings=cfg.max_context,
        rms_norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-6)),
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    _import_transformers()
    if arch == "llama":
        from transformers import LlamaConfig

        config = LlamaConfig(
            **common,
            hidden_act="silu",
            attention_bias=False,
            mlp_bias=False,
            rope_parameters={"rope_type": "default", "rope_theta": float(a("rope.freq_base", 10000.0))},
        )
    else:
        from transformers import Gemma3TextConfig

        # Not in the GGUF metadata; llama.cpp hard-codes the same values for Gemma 3 (llama-model.cpp):
        # local layers with rope base 10k, attention scale 1/sqrt(head_dim). Which layers are local comes
        # from the metadata reader (every 6th layer global unless the file says otherwise).
        config = Gemma3TextConfig(
            **common,
            hidden_activation="gelu_pytorch_tanh",
            layer_types=list(cfg.layer_types),
            sliding_window=cfg.sliding_window,
            query_pre_attn_scalar=head_dim,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": float(a("rope.freq_base", 1e6))},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        )
    info = GGUFInfo(path, arch, cfg.num_layers, cfg.hidden_size, cfg.num_heads, max(cfg.num_kv_heads), head_dim,
                    cfg.max_context)
    return info, config


def _import_transformers() -> None:
    """torch and transformers, imported with a bar the first time (several seconds on a laptop)."""
    if "transformers" not in sys.modules:
        with step(True, "loading torch and transformers"):
            import transformers  # noqa: F401


def gguf_info(model: str | os.PathLike) -> GGUFInfo:
    return _metadata(resolve(model))[0]


def hf_config(model: str | os.PathLike):
    """The transformers config (LlamaConfig or Gemma3TextConfig) for a GGUF file; a fresh copy."""
    return copy.deepcopy(_metadata(resolve(model))[1])


@functools.lru_cache(maxsize=2)
def _gguf_weights(path: Path) -> dict[str, np.ndarray]:
    header = _header(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    bar, task = progress_bar(True, f"reading {path.name}", len(header.tensors), unit="tensors")
    with bar:
        for t in header.tensors:
            out[t.name] = _dequantized(raw, header, t)
            bar.advance(task)
    return out


def _dequantized(raw: np.memmap, header, t) -> np.ndarray:
    qtype = GGMLQuantizationType[t.type_name]
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    start = header.data_offset + t.offset
    # rows of packed bytes, numpy order (outermost dimension first), as gguf's dequantize expects
    data = raw[start : start + t.nbytes].reshape(*reversed(t.shape[1:]), t.shape[0] // block * block_bytes)
    w = np.asarray(dequantize(data, qtype), dtype=np.float32).reshape(tuple(reversed(t.shape)))
    if np.may_share_memory(w, raw):
        w = w.copy()  # never a view of the memory map (F32/F16 tensors)
    w.flags.writeable = False  # shared by every caller: nobody may edit the cached copy
    return w


def gguf_weights(model: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of the GGUF file dequantized to float32, by GGUF name, in GGUF (rows, row_length) shape.

    Cached per process and read-only: copy before modifying in place.
    """
    return dict(_gguf_weights(resolve(model)))


def gguf_tensor(model: str | os.PathLike, name: str) -> np.ndarray:
    """One tensor dequantized to float32 as gguf_weights gives it, read alone (no other tensor is decoded)."""
    path = resolve(model)
    header = _header(path)
    t = next((t for t in header.tensors if t.name == name), None)
    if t is None:
        raise LowbitError(f"{path.name} has no tensor {name!r}")
    return _dequantized(np.memmap(path, dtype=np.uint8, mode="r"), header, t)


def gguf_tensor_types(model: str | os.PathLike) -> dict[str, str]:
    """GGUF tensor name -> its GGML type name as shipped (e.g. "Q4_K")."""
    return {t.name: t.type_name for t in _header(resolve(model)).tensors}


@functools.lru_cache(maxsize=8)
def _name_map(path: Path) -> dict[str, str]:
    info, config = _metadata(path)
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "gemma3": gguf.MODEL_ARCH.GEMMA3}[info.arch]
    table = gguf.get_tensor_name_map(arch, info.n_layers)
    gguf_names = {t.name for t in _header(path).tensors}
    mapping = {}
    for hf_name in _hf_parameter_names(config):
        stem, _, suffix = hf_name.rpartition(".")
        g = table.get_name(stem)
        if g is None:
            raise LowbitError(f"{path.name}: no GGUF tensor for HF parameter {hf_name}")
        if f"{g}.{suffix}" in gguf_names:
            mapping[f"{g}.{suffix}"] = hf_name
        elif not (hf_name == "lm_head.weight" and config.tie_word_embeddings):
            raise LowbitError(f"{path.name}: GGUF tensor {g}.{suffix} (for {hf_name}) is missing")
    extra = gguf_names - set(mapping)
    if extra:  # a tensor we would silently ignore means the model is not the one we think it is
        raise LowbitError(f"{path.name}: GGUF tensors with no HF parameter: {sorted(extra)[:5]}")
    return mapping


def _hf_parameter_names(config) -> tuple[str, ...]:
    """The state-dict keys transformers expects for this config (a weightless model on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return tuple(AutoModelForCausalLM.from_config(config).state_dict().keys())


def gguf_to_hf_names(model: str | os.PathLike) -> dict[str, str]:
    """GGUF tensor name -> HF parameter name (e.g. "blk.0.attn_q.weight" -> "model.layers.0.self_attn.q_proj.weight")."""
    return dict(_name_map(resolve(model)))


def hf_to_gguf_names(model: str | os.PathLike) -> dict[str, str]:
    return {v: k for k, v in _name_map(resolve(model)).items()}


def to_hf(info: GGUFInfo, gguf_name: str, w: np.ndarray) -> np.ndarray:
    """One GGUF tensor (GGUF shape) as the HF parameter it came from."""
    if info.arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
        heads = info.n_heads if ".attn_q." in gguf_name else info.n_kv_heads
        # convert_hf_to_gguf permuted rows (head, 2, d/2) -> (head, d/2, 2); undo it.
        w = w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    elif info.arch == "gemma3" and gguf_name.endswith("norm.weight"):
        w = w - 1.0
    return w


def _state_dict(path: Path, replace: dict[str, np.ndarray] | None):
    info, _ = _metadata(path)
    weights = _gguf_weights(path)
    names = _name_map(path)
    replace = dict(replace or {})
    unknown = sorted(set(replace) - set(weights))
    if unknown:
        raise LowbitError(f"replace: no such GGUF tensor(s) in {path.name}: {', '.join(unknown[:5])}")
    sd = {}
    for g, hf_name in names.items():
        w = weights[g]
        if g in replace:
            new = np.asarray(replace[g], dtype=np.float32)
            if new.shape != w.shape:
                raise LowbitError(f"replace[{g!r}] has shape {new.shape}, the GGUF tensor has {w.shape}")
            if not np.isfinite(new).all():  # a quantizer bug, not a quality to measure
                raise LowbitError(f"replace[{g!r}] has NaN or infinite values")
            w = new
        sd[hf_name] = _as_tensor(np.ascontiguousarray(to_hf(info, g, w), dtype=np.float32))
    return sd


def _as_tensor(a: np.ndarray):
    """A tensor sharing memory with `a`, read-only or not (the model never writes its weights)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _build(path: Path, replace: dict[str, np.ndarray] | None):
    _, config = _metadata(path)
    _gguf_weights(path)  # with its own bar, before the next one
    with step(True, f"building the model from {path.name}"):
        return _assemble(path, config, replace)


def _assemble(path: Path, config, replace: dict[str, np.ndarray] | None):
    import torch
    from transformers import AutoModelForCausalLM

    sd = _state_dict(path, replace)
    with _skip_init():  # parameters are overwritten below; buffers (rotary inv_freq, embed scale) are computed as usual
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    # assign=True adopts our tensors instead of copying them into the freshly allocated ones.
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise LowbitError(f"{path.name}: state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.eval()
    model.requires_grad_(False)
    return model


def _skip_init():
    """Skip random initialisation (seconds for a 262k x 640 embedding) where transformers offers it."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally, only slower
        return contextlib.nullcontext()
    return no_init_weights()


@functools.lru_cache(maxsize=2)
def _base_model(path: Path, device: str = "cpu"):
    model = _build(path, None)
    return model if device == "cpu" else model.to(device)


def torch_device(device: str | None = "cpu"):
    """`device` ("cpu", "cuda", "cuda:N") as a torch.device, checked: a GPU that is not there is a LowbitError.
    On CUDA, TF32 is switched off for matrix products and cuDNN (lowbit measures float32 models)."""
    import torch

    text = "cpu" if device is None else str(device).strip().lower()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise LowbitError(f"--device must be cpu or cuda[:N], got {printable(text)[:40]}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise LowbitError(f"--device must be cpu or cuda[:N], got {printable(text)[:40]}")
    if not torch.cuda.is_available():
        raise LowbitError("--device cuda: no CUDA device is available to torch here")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LowbitError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s)")
    no_tf32()
    return dev


def device_name(dev) -> str:
    """`cpu (torch 2.13.0)` or `cuda:0 (NVIDIA H200, torch 2.11.0, TF32 off)`: where a figure was measured."""
    import torch

    dev = torch.device(dev)
    if dev.type != "cuda":
        return f"cpu (torch {torch.__version__})"
    return f"{dev} ({torch.cuda.get_device_name(dev)}, torch {torch.__version__}, TF32 off)"


def _current_cuda() -> int:
    import torch

    return torch.cuda.current_device()


def no_tf32() -> None:
    """Full float32 matrix products on CUDA (torch's defaults may use TF32 for cuDNN convolutions; newer torch
    spells the same switch fp32_precision)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def load_model(model: str | os.PathLike, replace: dict[str, np.ndarray] | None = None, device: str = "cpu"):
    """The model as a float32 transformers CausalLM in eval mode, on `device` (default the CPU).

    replace: GGUF tensor name -> float32 array in GGUF shape (see `gguf_weights`), e.g. the
    quantize->dequantize round trip of that tensor. Without it the shipped model is returned, cached
    per process and device (treat it as read-only); with it a new model is built that shares every
    tensor not replaced (on the CPU; on another device it is a copy there).
    """
    path = resolve(model)
    dev = torch_device(device)
    name = "cpu" if dev.type == "cpu" else f"cuda:{dev.index if dev.index is not None else _current_cuda()}"
    if not replace:
        return _base_model(path, name)
    built = _build(path, replace)
    return built if name == "cpu" else built.to(name)


@functools.lru_cache(maxsize=4)
def _tokenizer(path: Path):
    _import_transformers()
    with step(True, f"loading the tokenizer of {path.name}"):
        return _load_tokenizer(path)


def _load_tokenizer(path: Path):
    import transformers
    from transformers import AutoTokenizer

    # Building the tokenizer from GGUF takes ~12 s for Gemma 3 (transformers decodes the whole file's
    # metadata); a saved copy in the lowbit cache loads in 0.2 s (SmolLM2) to 3 s (Gemma 3). The copy is saved
    # after llama_tokens.conform (it splits text as llama.cpp does), hence "-llamacpp" in its name.
    st = path.stat()
    saved = cache_dir() / "tokenizers" / (f"{path.stem}-{st.st_size}-{st.st_mtime_ns}-tf{transformers.__version__}"
                                          f"-llamacpp{llama_tokens.CONFORM_VERSION}")
    tok = _saved_copy(saved)
    built = tok is None
    if built:
        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as e:
            raise LowbitError(f"cannot build a tokenizer from {path.name}: {e}") from e
        llama_tokens.conform(tok, path)
    try:
        llama_tokens.check(tok, path)
    except LowbitError:
        # transformers versions build some GGUF tokenizers wrongly (5.17: Gemma 3 as a Unigram model without
        # BOS); a copy that another version saved for this same file and that passes the probe is the fix.
        tok = _conforming_copy(path, st.st_size)
        if tok is None:
            raise
        return tok
    if built:
        _save_quietly(tok, saved)
    return tok


def _saved_copy(saved: Path):
    """A tokenizer saved in the lowbit cache, or None where there is none or it is damaged (then it is rebuilt)."""
    from transformers import AutoTokenizer

    if not (saved / "tokenizer_config.json").is_file():
        return None
    try:
        return AutoTokenizer.from_pretrained(str(saved))
    except Exception:
        return None


def _conforming_copy(path: Path, size: int):
    """A saved tokenizer of this GGUF (same name and size, any transformers version) that tokenizes as llama.cpp."""
    pattern = f"{path.stem}-{size}-*-llamacpp{llama_tokens.CONFORM_VERSION}"
    for saved in sorted((cache_dir() / "tokenizers").glob(pattern)):
        tok = _saved_copy(saved)
        if tok is None:
            continue
        try:
            llama_tokens.check(tok, path)
        except LowbitError:  # built wrongly too: try the next
            continue
        return tok
    return None


def _save_quietly(tok, target: Path) -> None:
    """Save a tokenizer copy atomically (temp dir, then rename); a read-only cache only costs speed."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target.parent)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=TMP_PREFIX + "tok-"))
        try:
            tok.save_pretrained(str(tmp))
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass


def load_tokenizer(model: str | os.PathLike):
    """The model's tokenizer, built from the GGUF vocabulary (cached per process and on disk)."""
    return _tokenizer(resolve(model))
