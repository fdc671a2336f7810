"""Quality measurement on real models: GGUF loading (lm), eval text (text), PPL/KLD/top-1 (metrics), NIAH (niah).

    from lowbit.eval import lm, metrics, niah, text
    model, tok = lm.load_model("smollm2-135m"), lm.load_tokenizer("smollm2-135m")
    win = text.windows(tok, n_tokens=4096, context=512)          # 8 windows, second halves scored
    ref = metrics.reference(model, win)                          # computed once, cached
    # a weight format: swap GGUF tensors for their quantize->dequantize round trip
    w = lm.gguf_weights("smollm2-135m")["blk.0.ffn_up.weight"]
    q = metrics.evaluate(lm.load_model("smollm2-135m", replace={"blk.0.ffn_up.weight": w_hat}), win, reference=ref)
    # a KV format: a factory config -> transformers Cache; prefill, then 32-token chunks through it
    q = metrics.evaluate(model, win, make_cache=my_cache, chunk=32, reference=ref)
    r = niah.niah(model, tok, lengths=(1024, 2048), make_cache=my_cache)   # r.score, r.trials

Importing this package before torch makes idle OpenMP threads sleep instead of spin
(OMP_WAIT_POLICY=PASSIVE, unless already set): on a shared 2-core machine with several torch
processes, spinning threads made a 64-token forward pass 30x slower (14 s against 0.5 s, measured).
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `--protocol` of `lowbit eval kv|weights` (lowbit.eval.protocol); here so the commands need not import it to parse
PROTOCOLS = ("lowbit", "llama.cpp")
