"""eval kv / eval weights on the real SmolLM2: per-window sums that add up to the totals, intervals in the
results, the default amount of text, the --device option, and a model and tokenizer built from the GGUF
alone (no cache directory, no hub)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import subprocess_env
from lowbit.cli import main
from lowbit.eval import metrics, text

pytestmark = pytest.mark.usefixtures("smollm2_gguf")
SMALL = dict(tokens=256, context=64, chunk=16, niah_lengths=(), progress=False)


def test_window_sums_add_up_to_the_totals(smollm2):
    from lowbit.cache import QuantizedKVCache

    model, tok = smollm2
    win = text.windows(tok, n_tokens=256, context=64)
    ref = metrics.reference(model, win, make_cache=lambda c: QuantizedKVCache(c, "f16"), chunk=16, name="f16-test")
    q = metrics.evaluate(model, win, make_cache=lambda c: QuantizedKVCache(c, "q4_0"), chunk=16, reference=ref,
                         progress=False)
    s = q.stats
    assert s.n == win.n_windows == 4 and list(s.tokens) == [win.scored] * 4
    assert math.exp(s.nll.sum() / s.tokens.sum()) == pytest.approx(q.ppl, rel=1e-12)
    assert s.kld.sum() / s.tokens.sum() == pytest.approx(q.kld, rel=1e-12)
    assert s.top1.sum() / s.tokens.sum() == pytest.approx(q.top1, rel=1e-12)
    assert (s.kld > 0).all() and ((0 <= s.top1) & (s.top1 <= win.scored)).all()
    assert math.exp(q.reference_stats.nll.sum() / q.reference_stats.tokens.sum()) == pytest.approx(ref.ppl, rel=1e-12)


def test_eval_kv_reports_intervals_paired_with_its_reference():
    from lowbit.eval.kv import evaluate_kv

    r = evaluate_kv("smollm2-135m", "q4_0", **SMALL)
    lo, hi = r["ppl_ratio_ci"]
    assert r["ppl_ratio"] == pytest.approx(r["ppl"] / r["ppl_f16"], rel=1e-9) and lo <= r["ppl_ratio"] <= hi
    assert r["kld_ci"][0] <= r["kld"] <= r["kld_ci"][1] and r["top1_ci"][0] <= r["top1"] <= r["top1_ci"][1]
    w = r["windows"]
    assert len(w["nll"]) == len(w["nll_reference"]) == len(w["kld"]) == r["windows_count"] == 4
    assert r["text"]["name"].startswith("pydoc_data.topics") and len(r["text"]["sha256"]) == 16
    assert r["text_tokens"] == 256 and r["device"].startswith("cpu")
    assert r["bootstrap"]["samples"] == 2000 and r["bootstrap"]["unit"] == "window"
    # the reference against itself: no width at all
    f16 = evaluate_kv("smollm2-135m", "f16", **SMALL)
    assert f16["ppl_ratio_ci"] == [1.0, 1.0] and f16["kld_ci"][1] < 1e-6


def test_default_is_the_default_token_count_or_the_whole_text(monkeypatch, tmp_path):
    from lowbit.eval.kv import evaluate_kv

    kw = {k: v for k, v in SMALL.items() if k != "tokens"}
    monkeypatch.setattr(text, "DEFAULT_TOKENS", 192)
    assert evaluate_kv("smollm2-135m", "q8_0", **kw)["text_tokens"] == 192  # 3 windows of 64
    # a text shorter than the default: all of it (whole windows)
    short = tmp_path / "short.txt"
    short.write_text("The quick brown fox jumps over the lazy dog. " * 12)
    monkeypatch.setenv(text.TEXT_ENV, str(short))
    r = evaluate_kv("smollm2-135m", "q8_0", **kw)
    assert r["text"]["name"] == f"file short.txt (${text.TEXT_ENV})" and r["text"]["characters"] == 45 * 12
    from lowbit.eval.lm import load_tokenizer

    n = len(text.corpus_tokens(load_tokenizer("smollm2-135m")))
    assert n < 192 and r["text_tokens"] == n // 64 * 64


def test_command_defaults_and_table_show_intervals(capsys, monkeypatch):
    from lowbit.cli import build_parser

    args = build_parser().parse_args(["eval", "kv"])
    assert args.tokens is None and args.device == "cpu"
    args = build_parser().parse_args(["eval", "weights"])
    assert args.tokens is None and args.device == "cpu"
    assert main(["eval", "kv", "--kv", "q4_0", "--tokens", "256", "--context", "64", "--chunk", "16", "--no-niah",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "256 text tokens (pydoc_data.topics" in out and "95% CI" in out
    row = next(line for line in out.splitlines() if line.startswith("q4_0/q4_0"))
    assert row.count("[") == 3  # PPL ratio, KLD and top-1 intervals


@pytest.mark.parametrize("device,message", [("tpu", "must be cpu or cuda"), ("cuda:x", "must be cpu or cuda")]
                         + ([] if torch.cuda.is_available() else [("cuda", "no CUDA device")]))
def test_bad_device_is_one_line_and_status_2(device, message, capsys):
    for cmd in (["eval", "kv", "--no-niah"], ["eval", "weights", "--weights", "Q8_0"]):
        assert main(cmd + ["--device", device]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lowbit: error:") and message in err[0]


def test_weights_eval_reports_intervals(capsys):
    assert main(["eval", "weights", "--model", "smollm2-135m", "--weights", "Q4_0", "--tokens", "128",
                 "--context", "32", "--format", "json", "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    lo, hi = r["ppl_ratio_ci"]
    assert lo <= r["ppl"] / r["ppl_reference"] <= hi and r["kld_ci"][0] <= r["kld"] <= r["kld_ci"][1]
    assert len(r["windows"]["kld"]) == 4 and r["device"].startswith("cpu") and r["text_tokens"] == 128


def test_model_and_tokenizer_load_from_the_gguf_alone(tmp_path, smollm2_gguf):
    """A fresh process with an empty cache directory and the hub switched off, as on a machine without network."""
    code = ("from lowbit.eval import lm; import sys; p = sys.argv[1]; t = lm.load_tokenizer(p); "
            "m = lm.load_model(p, device='cpu'); ids = t('Hello world')['input_ids']; "
            "print(len(ids), m.config.num_hidden_layers)")
    env = subprocess_env(LOWBIT_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                         HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-c", code, str(smollm2_gguf)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    n_ids, layers = map(int, done.stdout.split())
    assert n_ids >= 2 and layers == 30
    assert list((tmp_path / "cache" / "tokenizers").iterdir())  # the saved copy went to $LOWBIT_CACHE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    from lowbit.eval.kv import evaluate_kv

    kw = {**SMALL, "niah_lengths": (1024,), "niah_depths": (0.5,)}
    for fmt in ("q4_0", "turbo3"):
        cpu = evaluate_kv("smollm2-135m", fmt, **kw)
        gpu = evaluate_kv("smollm2-135m", fmt, device="cuda", **kw)
        assert gpu["device"].startswith("cuda") and "TF32 off" in gpu["device"]
        assert gpu["ppl_f16"] == pytest.approx(cpu["ppl_f16"], rel=1e-4)
        assert gpu["ppl"] == pytest.approx(cpu["ppl"], rel=2e-3)
        assert gpu["kld"] == pytest.approx(cpu["kld"], rel=0.05, abs=1e-4)
        assert np.allclose(gpu["windows"]["nll_reference"], cpu["windows"]["nll_reference"], rtol=1e-4)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
