"""`--protocol llama.cpp`: llama-perplexity's text, tokens, windows and sums (lowbit.eval.protocol, llama_tokens)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lowbit.errors import LowbitError
from lowbit.eval import llama_tokens, protocol

torch = pytest.importorskip("torch")

FIXTURE = Path(__file__).parents[1] / "src" / "lowbit" / "eval" / "llamacpp_tokens.json"


# ------------------------------------------------------------------------------------------------------- text

def test_escapes_as_llama_cpp_processes_them():
    # common.cpp string_process_escapes: six one-letter escapes, \xHH with two hex digits, anything else kept
    assert llama_tokens.escapes(rb"a\nb\tc\rd") == b"a\nb\tc\rd"
    assert llama_tokens.escapes(rb"\'\"\\") == b"'\"\\"
    assert llama_tokens.escapes(rb"\\n") == b"\\n"  # an escaped backslash, then a plain n
    assert llama_tokens.escapes(rb'"\x1d" "\x85"') == b'"\x1d" "\x85"'
    assert llama_tokens.escapes(rb"\x4g \u2028 \N{x} \a") == rb"\x4g \u2028 \N{x} \a"
    assert llama_tokens.escapes(rb"\x41") == b"A"
    assert llama_tokens.escapes(rb"a\x4") == rb"a\x4"  # two hex digits must follow
    assert llama_tokens.escapes(b"end\\") == b"end\\"


def test_perplexity_text_drops_one_trailing_newline():
    assert llama_tokens.perplexity_text("a\\n\n\n") == b"a\n\n"
    assert llama_tokens.perplexity_text("a\\n\n", escape=False) == b"a\\n"
    assert llama_tokens.perplexity_text("a") == b"a"


def _fixture_case(name: str):
    data = json.loads(FIXTURE.read_text())
    return data, data["models"][name]


@pytest.mark.parametrize("name, gguf", [("smollm2-135m", "smollm2_gguf"), ("gemma3-270m", "gemma3_gguf")])
def test_tokens_equal_llama_tokenize(name, gguf, request):
    """lowbit's ids equal `llama-tokenize --ids` (llama.cpp 0c1e57098) on slices that once differed."""
    pytest.importorskip("transformers")
    path = request.getfixturevalue(gguf)
    from lowbit.eval import lm

    data, case = _fixture_case(name)
    assert data["llama_cpp_commit"] == "0c1e57098" and data["escape"]
    tok = lm.load_tokenizer(path)
    ids = llama_tokens.tokenize(tok, path, llama_tokens.escapes(data["text"].encode("utf-8")))
    assert ids == case["ids"]


def test_fixture_catches_transformers_own_splitting(smollm2_gguf):
    """Without llama_tokens.conform (transformers' plain byte-level split) the same slices tokenize differently."""
    pytest.importorskip("transformers")
    import copy

    from tokenizers import pre_tokenizers

    from lowbit.eval import lm

    data, case = _fixture_case("smollm2-135m")
    tok = copy.deepcopy(lm.load_tokenizer(smollm2_gguf))
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ids = llama_tokens.tokenize(tok, smollm2_gguf, llama_tokens.escapes(data["text"].encode("utf-8")))
    assert ids != case["ids"]
    # and the evaluation refuses to measure with it (a tokenizer built by another transformers once did this)
    with pytest.raises(LowbitError, match="does not tokenize as llama.cpp"):
        llama_tokens.check(tok, smollm2_gguf)
    llama_tokens.check(lm.load_tokenizer(smollm2_gguf), smollm2_gguf)  # the conformed one passes


def test_a_wrongly_built_tokenizer_falls_back_to_a_conforming_saved_copy(smollm2_gguf, tmp_path, monkeypatch):
    """When this transformers builds a tokenizer that fails the probe, a copy saved for the same GGUF under another
    version that passes is used (the device's transformers 5.17 builds Gemma 3's wrongly); without one, an error."""
    pytest.importorskip("transformers")
    import shutil

    from tokenizers import pre_tokenizers

    from lowbit.eval import lm

    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWBIT_CACHE", str(cache))
    good = lm.load_tokenizer(smollm2_gguf)
    shutil.rmtree(cache, ignore_errors=True)  # whatever loading it saved: this version's own copy must not exist

    def build_wrongly(tok, path):  # stands in for a transformers version that splits as GPT-2 does
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        return True

    monkeypatch.setattr(llama_tokens, "conform", build_wrongly)
    with pytest.raises(LowbitError, match="does not tokenize as llama.cpp"):
        lm._load_tokenizer(Path(smollm2_gguf))

    size = Path(smollm2_gguf).stat().st_size
    other = cache / "tokenizers" / f"{Path(smollm2_gguf).stem}-{size}-1-tf0.0-llamacpp{llama_tokens.CONFORM_VERSION}"
    good.save_pretrained(str(other))
    tok = lm._load_tokenizer(Path(smollm2_gguf))
    llama_tokens.check(tok, smollm2_gguf)
    # and nothing wrong was saved under this version's name for a later run to pick up
    assert [p.name for p in (cache / "tokenizers").iterdir()] == [other.name]
    shutil.rmtree(other)


# ---------------------------------------------------------------------------------------------------- windows

def test_windows_contiguous_remainder_dropped():
    tokens = list(range(100, 127))  # 27 tokens, n_ctx 8: three windows, three tokens dropped
    w = protocol.chunk(tokens, 8)
    assert w.ids.tolist() == [tokens[0:8], tokens[8:16], tokens[16:24]]
    assert (w.context, w.prefill, w.scored, w.tokens) == (8, 4, 3, 9)
    assert protocol.chunk(tokens, 8, max_chunks=2).ids.tolist() == [tokens[0:8], tokens[8:16]]


def test_bos_overwrites_first_token_of_every_window():
    tokens = [1] + list(range(100, 126))  # the stream already starts with BOS (id 1), as llama.cpp tokenizes it
    w = protocol.chunk(tokens, 8, bos=1)
    assert w.ids.tolist() == [[1] + tokens[1:8], [1] + tokens[9:16], [1] + tokens[17:24]]
    # window 1 lost text token tokens[8] to BOS; lowbit's own windows would have inserted BOS before it instead


def test_windows_need_two_contexts_of_text():
    with pytest.raises(LowbitError, match="2 \\* context"):
        protocol.chunk(list(range(15)), 8)
    protocol.chunk(list(range(16)), 8)


# ----------------------------------------------------------------------------------------- scoring and sums

class _Recorder(torch.nn.Module):
    """A fake causal LM: logits at position p are row table[ids[p], p] of a fixed random table; records calls."""

    def __init__(self, vocab: int, n_ctx: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, n_ctx, vocab, generator=g) * 3
        self.calls = []
        self.config = None

    def forward(self, input_ids, position_ids, logits_to_keep, use_cache=False, **kw):
        self.calls.append((input_ids.shape[-1], logits_to_keep, use_cache))
        ids, pos = input_ids[0], position_ids[0]
        logits = self.table[ids, pos][None]
        return type("Out", (), {"logits": logits[:, -logits_to_keep:]})()


def test_scored_positions_are_first_to_n_ctx_minus_2():
    n_ctx, vocab = 10, 7
    model = _Recorder(vocab, n_ctx)
    ids = torch.tensor([3, 1, 4, 1, 5, 2, 6, 5, 3, 5])
    logits = protocol.window_logits(model, ids, n_ctx // 2, None)
    assert model.calls == [(n_ctx, n_ctx - n_ctx // 2, False)]  # one pass, logits kept from `first` on
    first = n_ctx // 2
    want = torch.stack([model.table[ids[p], p] for p in range(first, n_ctx - 1)])
    assert torch.equal(logits, want)  # logits of positions first .. n_ctx-2, which predict first+1 .. n_ctx-1
    s = protocol.Sums()
    s.add(logits, ids[first + 1:])
    lp = torch.log_softmax(want.double(), -1)
    assert s.count == n_ctx - 1 - first
    assert s.nll == pytest.approx(-sum(float(lp[i, ids[first + 1 + i]]) for i in range(s.count)))


def _logits_for_nll(nlls):
    """Two-token vocabulary, target 1: logits [log(e^nll - 1), 0] give exactly that NLL."""
    return torch.tensor([[math.log(math.expm1(x)), 0.0] for x in nlls], dtype=torch.float64)


def test_ppl_and_its_error_by_hand():
    s = protocol.Sums()
    s.add(_logits_for_nll([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 1, 1, 1]))
    ppl, err = protocol.ppl_and_error(s)
    # mean 2.5, mean of squares 7.5, variance 1.25: PPL = e^2.5, ± = e^2.5 * sqrt(1.25 / 3)
    assert ppl == pytest.approx(math.exp(2.5), rel=1e-12)
    assert err == pytest.approx(math.exp(2.5) * math.sqrt(1.25 / 3), rel=1e-12)


def test_base_log_probs_as_llama_cpp_stores_them():
    logits = torch.tensor([[2.0, 1.0, -5.0, -40.0]])
    got = protocol.base_log_probs(logits)[0]
    exact = torch.log_softmax(logits.double(), -1)[0]
    step = 16 / 65535  # max - min = 16: the -40 logit is below max - 16
    assert torch.allclose(got[:3], exact[:3], atol=step / 2 + 1e-12)
    assert float(got[3]) == pytest.approx(-16 - math.log(float(torch.exp(logits.double() - 2).sum())))


def test_kld_counts_only_base_entries_above_minus_16():
    vocab = 1000
    base = torch.full((1, vocab), -30.0, dtype=torch.float64)
    base[0, :2] = 0.0
    test = base.clone()
    test[0, 0] = math.log(3.0)
    s = protocol.Sums()
    s.add(test, torch.tensor([0]), protocol.base_log_probs(base))
    # kept: the two entries at the maximum, p_base = 1/(2 + 998 e^-30) each; q = (3, 1)/(4 + 998 e^-30)
    zb, zq = 2 + 998 * math.exp(-30), 4 + 998 * math.exp(-30)
    want = (1 / zb) * (math.log(1 / zb) - math.log(3 / zq)) + (1 / zb) * (math.log(1 / zb) - math.log(1 / zq))
    assert s.kld == pytest.approx(want, rel=1e-6)
    # the 998 floor entries read back at log p = -16 - log zb, just below the cut; counting them would add
    floor = -16 - math.log(zb)
    assert 998 * math.exp(floor) * (floor - math.log(math.exp(-30) / zq)) > 1e-4  # ... far more than rounding
    assert s.same_top == 1  # argmax test 0; argmax base: the first of the two maxima, 0


def test_ratio_uncertainty_is_that_of_the_paired_difference():
    rng = np.random.default_rng(1)
    nll_b = rng.uniform(0.5, 5, 200)
    nll_t = nll_b + rng.normal(0.05, 0.2, 200).clip(-0.4, None)
    s = protocol.Sums()
    base = protocol.base_log_probs(_logits_for_nll(nll_b))  # what the sums read the base back as
    s.add(_logits_for_nll(nll_t), torch.ones(200, dtype=torch.long), base)
    nll_b_stored = -base[:, 1].numpy()
    r = protocol.summary(s)
    n = 200
    assert r["ln_ppl_ratio"] == pytest.approx(np.mean(nll_t) - np.mean(nll_b_stored), rel=1e-9)
    assert r["ln_ppl_ratio_unc"] == pytest.approx(math.sqrt(np.var(nll_t - nll_b_stored) / (n - 1)), rel=1e-6)
    assert r["same_top_unc"] == pytest.approx(math.sqrt(r["same_top"] * (1 - r["same_top"]) / (n - 1)))
    same = protocol.Sums()
    same.add(_logits_for_nll(nll_b), torch.ones(200, dtype=torch.long), protocol.base_log_probs(_logits_for_nll(nll_b)))
    assert protocol.summary(same)["ln_ppl_ratio_unc"] < 1e-6  # a series against itself: no uncertainty left


def test_small_counts_give_no_kld_uncertainty():
    s = protocol.Sums()
    s.add(_logits_for_nll([1.0, 2.0]), torch.tensor([1, 1]), protocol.base_log_probs(_logits_for_nll([1.5, 1.5])))
    r = protocol.summary(s)
    assert r["kld"] > 0 and r["kld_unc"] == 0.0  # llama.cpp reports 0 for 10 tokens or fewer


# ---------------------------------------------------------------------------------------------- a real pass

def test_one_pass_through_the_cache_on_a_tiny_model(tmp_path, write_tiny_gguf):
    """compare() on a one-layer GGUF (head_dim 16): an f16 cache against itself is KLD 0, a 3-bit TurboQuant cache
    is not; the base PPL is the model's own on the scored positions."""
    pytest.importorskip("transformers")
    from lowbit.cache import QuantizedKVCache
    from lowbit.eval import lm

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    model = lm.load_model(path)
    rng = np.random.default_rng(0)
    win = protocol.chunk(rng.integers(0, 256, 3 * 32 + 5).tolist(), 32)

    def f16(c):
        return QuantizedKVCache(c, "f16")

    def q4(c):
        return QuantizedKVCache(c, "turbo3")

    base, (same, quant) = protocol.compare(win, (model, f16), [(model, f16), (model, q4)], progress=False)
    assert same.kld == pytest.approx(0, abs=1e-6) and same.same_top == 1.0 and same.tokens == 3 * 15
    assert quant.kld > 1e-4
    # per-window sums (for the bootstrap) add up to the totals
    assert quant.stats.n == 3 and quant.stats.tokens.tolist() == [15, 15, 15]
    assert float(quant.stats.kld.sum()) / 45 == pytest.approx(quant.kld, rel=1e-9)
    assert math.exp(float(quant.stats.nll.sum()) / 45) == pytest.approx(quant.ppl, rel=1e-9)
    assert math.exp(float(base.stats.nll.sum()) / 45) == pytest.approx(base.ppl, rel=1e-9)
    ppl = base.ppl
    with torch.inference_mode():  # the same scored positions, without any cache
        lp = torch.log_softmax(model(input_ids=win.ids).logits[:, win.prefill:-1].double(), -1)
    nll = -lp.gather(-1, win.ids[:, win.prefill + 1:, None]).squeeze(-1)
    assert ppl == pytest.approx(math.exp(float(nll.mean())), rel=1e-3)  # f16 K/V rounding aside


def test_protocol_names_are_checked():
    with pytest.raises(LowbitError, match="--protocol"):
        protocol.check("llama")
    from lowbit.cli import main

    assert main(["eval", "kv", "--protocol", "llama", "--no-niah"]) == 2
