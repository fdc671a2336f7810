"""The Python API (`lowbit.plan`, `lowbit.simulate`, `lowbit.fit`), scenarios as objects, and the planner's floors."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib import resources

import pytest

import lowbit
import lowbit.planning.simulate as planning_simulate
from lowbit.cli import main
from lowbit.devices import budget
from lowbit.errors import LowbitError
from lowbit.formats.kv import kv_format
from lowbit.formats.weights import mix
from lowbit.planning.engines import VLLM, LlamaCpp
from lowbit.planning.fit import fit
from lowbit.planning.planner import plan
from lowbit.planning.scenario import ONEBIT_TURBO, Scenario


def _call(name: str):
    if name == "plan":
        return lowbit.plan("qwen3.5-4b", weights="Q1_0", kv="turbo3", context=4096)
    if name == "simulate":
        return lowbit.simulate(["qwen3.5-0.8b"], context=4096)
    if name == "fit":
        return lowbit.fit("qwen3.5-4b", "rtx-4090", context=4096)
    importlib.import_module(name)  # a subpackage import must not replace an API function
    return None


@pytest.mark.parametrize("order", [
    ["plan", "plan", "simulate", "fit", "plan", "simulate", "fit"],
    ["lowbit.planning.planner", "fit", "lowbit.planning.simulate", "simulate", "plan", "lowbit.planning.fit", "fit"],
])
def test_api_functions_answer_every_time_in_any_order(order):
    for name in order:
        _call(name)
        assert callable(lowbit.plan) and callable(lowbit.simulate) and callable(lowbit.fit)
    assert lowbit.plan("qwen3.5-4b", context=1).total_bytes == plan("qwen3.5-4b", context=1).total_bytes


def test_api_in_a_fresh_process_after_importing_the_planner():
    code = ("import lowbit, lowbit.planning.planner, lowbit.planning.simulate, lowbit.planning.fit\n"
            "for _ in range(2):\n"
            "    p = lowbit.plan('qwen3.5-122b-a10b', weights='Q1_0', kv='turbo3', context=262_144)\n"
            "    s = lowbit.simulate(['qwen3.5-0.8b'])\n"
            "    f = lowbit.fit('qwen3.5-27b', 'rtx-4090')\n"
            "print(p.total_bytes, len(s.plans), f.max_context)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(plan("qwen3.5-122b-a10b", "Q1_0", kv="turbo3").total_bytes), "2",
                           str(fit("qwen3.5-27b", "rtx-4090").max_context)]


def test_reprs_are_one_short_line():
    p = lowbit.plan("qwen3.5-122b-a10b", weights="Q1_0", kv="turbo3", context=262_144)
    for obj in (p, p.scenario, lowbit.simulate(["qwen3.5-0.8b"]), lowbit.fit("qwen3.5-27b", "rtx-4090")):
        r = repr(obj)
        assert "\n" not in r and len(r) < 160, r
    assert "qwen3.5-122b-a10b" in repr(p) and f"{p.total_bytes:,}" in repr(p)


def test_package_is_typed():
    assert resources.files("lowbit").joinpath("py.typed").is_file()


# --- scenarios -----------------------------------------------------------------------------------


def test_scenario_holds_resolved_formats_with_one_label_and_one_json():
    s = Scenario.parse("k8v4=q4_k_m+q8_0/turbo4")
    assert s.mix is mix("Q4_K_M") and s.k is kv_format("q8_0") and s.v is kv_format("turbo4")
    assert s.label() == "k8v4 (Q4_K_M+q8_0/turbo4)" and ONEBIT_TURBO.label() == "1bit-turbo (Q1_0+turbo3)"
    assert s.to_json() == {"name": "k8v4", "weights": "Q4_K_M", "kv_k": "q8_0", "kv_v": "turbo4", "pure": False}
    assert Scenario.of("Q2_K", "q8_0").name == "Q2_K+q8_0/q8_0"
    with pytest.raises(LowbitError, match="unknown KV-cache format"):
        Scenario.parse("x=Q4_K_M+f17")


def test_plan_takes_a_scenario_or_the_keywords_alike():
    s = Scenario.of("Q2_K", "q8_0", "turbo3", name="mine")
    a = plan("qwen3.5-27b", s, context=8192)
    b = plan("qwen3.5-27b", "Q2_K", kv_k="q8_0", kv_v="turbo3", context=8192, scenario_name="mine")
    assert a.to_json() == b.to_json() and a.scenario is s
    assert plan("qwen3.5-27b", s, context=1, pure=True).scenario.pure
    with pytest.raises(LowbitError, match="not both"):
        plan("qwen3.5-27b", s, kv="f16")


def test_simulate_passes_scenario_objects_through():
    s = Scenario.of("Q2_K", "q8_0", "turbo3", name="mine")
    sim = lowbit.simulate(["qwen3.5-4b"], [ONEBIT_TURBO, s], context=4096)
    assert sim.scenarios == [ONEBIT_TURBO, s] and sim.plans[1].scenario is s


def test_audit_computes_only_the_audit(monkeypatch, capsys):
    def no_simulation(*_):
        raise AssertionError("--audit ran a simulation")

    monkeypatch.setattr(planning_simulate, "resolve", no_simulation)
    assert main(["simulate", "--audit", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["claims"]
    with pytest.raises(AssertionError, match="ran a simulation"):
        main(["simulate", "--models", "qwen3.5-0.8b"])


# --- engines: every allocation rule in the engine, the planner asks it ----------------------------


def test_engines_do_not_import_the_planner():
    code = ("import sys, lowbit.planning.engines\n"
            "print(sorted(m for m in sys.modules if m.startswith('lowbit.planning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "lowbit.planning.planner" not in out and "lowbit.planning.fit" not in out


def test_plan_asks_the_engine_object_it_is_given():
    one = plan("qwen3.5-27b", context=4096, sequences=2, engine="llama.cpp")
    a = LlamaCpp().allocate(one.config, kv_format("f16"), kv_format("f16"), 4096, 2)
    assert (one.kv_k_bytes, one.kv_v_bytes, one.state_bytes, one.runtime_bytes, one.kv_cells) == (
        a.kv_k_bytes, a.kv_v_bytes, a.state_bytes, a.runtime_bytes, a.cells)
    # an engine's options change what it allocates and what it says: a larger micro-batch, a larger graph
    big = plan("qwen3.5-27b", context=4096, sequences=2, engine=LlamaCpp(n_ubatch=2048))
    assert big.runtime_bytes > one.runtime_bytes and big.kv_bytes == one.kv_bytes
    assert "-ub 2048" in big.provenance()["runtime_bytes"]


def test_fit_asks_the_engine_for_its_budget():
    b = budget("h100-80gb")
    half = lowbit.fit("qwen3.5-27b", b, engine=VLLM(gpu_memory_utilization=0.5), context=4096)
    assert half.limit == -(-80 * 2**30 // 2) and half.engine == "vllm"
    assert "gpu_memory_utilization = 0.5" in half.assumptions["budget"]
    with pytest.raises(LowbitError, match="for GPUs"):
        lowbit.fit("qwen3.5-27b", "m4-max-64gb", engine="vllm")
