"""The inverse solvers agree with the forward simulator: the answer fits and one step more does not."""

from __future__ import annotations

from functools import lru_cache

from hypothesis import HealthCheck, given, settings, strategies as st

from lowbit.devices import budget
from lowbit.formats.kv import kv_format
from lowbit.planning.engines import LlamaCpp
from lowbit.planning.fit import CANDIDATE_MIXES, Costs, best_weights
from lowbit.planning.planner import plan

MODELS = ["qwen3.5-0.8b", "qwen3.5-27b", "qwen3.5-35b-a3b", "llama-3.1-8b"]
KVS = ["f16", "q8_0", "q4_0", "turbo3", "turbo2"]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=None)
def _weights(model: str, mix: str) -> int:
    return plan(model, mix, context=1).weights_bytes


@st.composite
def unified_case(draw):
    model = draw(st.sampled_from(MODELS))
    mix = draw(st.sampled_from(["Q4_K_M", "Q1_0", "Q8_0"]))
    kv = draw(st.sampled_from(KVS))
    users = draw(st.integers(1, 4))
    extra = draw(st.integers(0, 40 * 2**30))  # memory beyond the weights
    return model, mix, kv, users, _weights(model, mix) + extra


@SETTINGS
@given(unified_case())
def test_max_context_on_one_pool_is_exactly_the_simulators_edge(case):
    model, mix, kv, users, memory = case
    b = budget(memory=f"{memory}B")
    costs = Costs(model, b, mix, kv)
    m = costs.max_context(users)
    if m is None:
        assert plan(model, mix, kv=kv, context=1, sequences=users).total_bytes > memory
        return
    assert plan(model, mix, kv=kv, context=m, sequences=users).total_bytes <= memory
    if m < costs.context_cap():
        assert plan(model, mix, kv=kv, context=m + 1, sequences=users).total_bytes > memory
    else:
        assert m == costs.cfg.max_context


@SETTINGS
@given(unified_case(), st.integers(1, 300_000))
def test_max_users_is_exactly_the_simulators_edge(case, context):
    model, mix, kv, _, memory = case
    costs = Costs(model, budget(memory=f"{memory}B"), mix, kv)
    u = costs.max_users(context)
    at = dict(kv=kv, context=context, force_context=True)  # any context: the edge, not the policy, is under test
    if u is None:
        assert plan(model, mix, sequences=1, **at).total_bytes > memory
        return
    assert plan(model, mix, sequences=u, **at).total_bytes <= memory
    assert plan(model, mix, sequences=u + 1, **at).total_bytes > memory


@SETTINGS
@given(st.sampled_from(MODELS), st.sampled_from(["llama.cpp", "vllm"]), st.sampled_from([1, 2, 4]),
       st.sampled_from(KVS), st.integers(1, 3), st.integers(1, 200) )
def test_gpu_solvers_agree_with_need(model, engine, gpus, kv, users, gib):
    b = budget(memory=f"{gib}GiB", gpus=gpus)
    costs = Costs(model, b, "Q4_K_M", kv, engine=engine)
    m = costs.max_context(users)
    if m is None:
        assert costs.need(1, users).device_bytes > costs.limit
    else:
        assert costs.need(m, users).device_bytes <= costs.limit
        assert m == costs.context_cap() or costs.need(m + 1, users).device_bytes > costs.limit


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(MODELS), st.integers(2, 100), st.sampled_from([4096, 65_536]))
def test_best_weights_fits_and_every_bigger_mix_does_not(model, gib, context):
    b = budget(memory=f"{gib}GiB")
    best = best_weights(model, b, context)
    sizes = {m: _weights(model, m) for m in CANDIDATE_MIXES}
    fits = {m: Costs(model, b, m).fits(context) for m in CANDIDATE_MIXES}
    if best is None:
        assert not any(fits.values())
    else:
        assert fits[best]
        assert not any(fits[m] for m in CANDIDATE_MIXES if sizes[m] > sizes[best])


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(MODELS), st.sampled_from(KVS), st.integers(1, 300_000), st.integers(1, 8), st.booleans())
def test_per_layer_cache_adds_up_to_the_planners_kv_and_state(model, kv, context, users, mtp):
    p = plan(model, kv=kv, context=context, sequences=users, mtp=mtp, force_context=True)  # any context adds up
    f = kv_format(kv)
    layers = LlamaCpp().layer_cache_bytes(p.config, f, f, context, users, mtp)
    assert sum(layers) == p.kv_bytes + p.state_bytes
