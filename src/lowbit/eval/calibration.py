"""Calibration for GPTQ: the Hessian H = E[x x^T] of each weight's real input activations.

It needs the model run on text, so it lives with the evaluation harness; the quantizers in
lowbit.quant take the Hessians as plain arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.errors import LowbitError
from lowbit.eval import lm, text
from lowbit.progress import honours_progress, progress_bar

CALIBRATION_TOKENS = 4096
CALIBRATION_CONTEXT = 512


@honours_progress
def calibration_hessians(model, names: list[str], n_tokens: int = CALIBRATION_TOKENS,
                         context: int = CALIBRATION_CONTEXT, progress: bool = True) -> dict[str, np.ndarray]:
    """H = mean x x^T of the real inputs of each named GGUF weight, from the shipped model on text.

    Calibration text is the *end* of the pydoc corpus, disjoint from the evaluation windows, which
    start at its beginning. All Hessians come from one pass of the unquantized model (not GPTQ's
    layer-by-layer sequential variant), which keeps calibration to one forward pass.
    """
    tok = lm.load_tokenizer(model)
    net = lm.load_model(model)
    to_hf = lm.gguf_to_hf_names(model)
    stream_len = len(text.corpus_tokens(tok))
    n_tokens = min(n_tokens, stream_len // 4)
    ids = text.eval_tokens(tok, n_tokens // context * context, offset=stream_len - n_tokens // context * context)
    batch = torch.tensor(ids, dtype=torch.long).reshape(-1, context)
    modules = dict(net.named_modules())
    sums: dict[str, torch.Tensor] = {}
    count = {"n": 0}
    hooks = []
    by_module: dict[str, list[str]] = {}
    for g in names:
        mod = to_hf[g].rsplit(".", 1)[0]
        if mod not in modules:
            raise LowbitError(f"no module {mod} for {g}")
        by_module.setdefault(mod, []).append(g)

    def hook(mod_name):
        def f(_m, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            h = (x.T @ x).double()  # float32 product per window (fast), float64 running sum
            sums[mod_name] = sums[mod_name] + h if mod_name in sums else h
        return f

    for mod in by_module:
        hooks.append(modules[mod].register_forward_pre_hook(hook(mod)))
    bar, task = progress_bar(progress, "calibration", batch.numel())
    try:
        with bar, torch.inference_mode():
            for row in batch:
                net(input_ids=row[None], use_cache=False, logits_to_keep=1)
                count["n"] += row.numel()
                bar.advance(task, row.numel())
    finally:
        for h in hooks:
            h.remove()
    return {g: (sums[mod] / count["n"]).numpy() for mod, gs in by_module.items() for g in gs}
