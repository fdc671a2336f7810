"""Honest inputs: a context past the model's trained maximum is refused (as vLLM refuses it) unless forced;
llama.cpp's flag names mean what they mean there; `stored` is one word for a file's own weights."""

from __future__ import annotations

import json

import pytest

from lowbit.cli import build_parser, main
from lowbit.errors import LowbitError
from lowbit.models.config import derived_max_context, from_hf_config
from lowbit.models.gguf_header import read_header
from lowbit.planning.planner import plan


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def js(capsys, *argv):
    code, out, err = run(capsys, *argv, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def _smollm2() -> str:
    from lowbit.models.local import model_path

    try:
        return str(model_path("smollm2-135m"))
    except LowbitError as e:
        pytest.skip(f"smollm2-135m not available: {e}")


# --- the trained maximum ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["plan", "llama-3.1-8b", "--context", "256k"],
    ["simulate", "--models", "llama-3.1-8b", "--context", "256k"],
    ["fit", "llama-3.1-8b", "--device", "h100-80gb", "--context", "256k"],
    ["plan", "llama-3.1-8b", "-c", "256k"],
])
def test_a_context_past_the_trained_maximum_is_refused_naming_it(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("lowbit: error:")
    assert "131,072" in err and "max_position_embeddings" in err and "--force-context" in err and "vLLM" in err


def test_force_context_plans_it_anyway(capsys):
    at_max = js(capsys, "plan", "llama-3.1-8b", "--context", "128k")
    forced = js(capsys, "plan", "llama-3.1-8b", "--context", "256k", "--force-context")
    assert forced["context"] == 262_144 and forced["kv_bytes"] == 2 * at_max["kv_bytes"]  # every layer full attention
    assert js(capsys, "fit", "llama-3.1-8b", "--device", "h100-80gb", "--context", "256k",
              "--force-context")["context"] == 262_144


def test_without_a_context_each_model_gets_the_default_or_its_maximum(capsys):
    data = js(capsys, "simulate", "--models", "qwen3.5-0.8b,llama-3.1-8b", "--no-fits")
    contexts = {r["model"]: r["context"] for r in data["rows"]}
    assert contexts == {"qwen3.5-0.8b": 262_144, "llama-3.1-8b": 131_072}
    assert data["context"] == 262_144
    code, out, _ = run(capsys, "simulate", "--models", "qwen3.5-0.8b,llama-3.1-8b", "--no-fits")
    assert code == 0 and "trained maximum" in out and "llama-3.1-8b 131,072 tokens" in out
    assert js(capsys, "plan", "llama-3.1-8b")["context"] == 131_072
    # the Qwen3.5 family's native maximum is the default itself: the main job is unchanged
    assert {r["context"] for r in js(capsys, "simulate", "--no-fits")["rows"]} == {262_144}


def test_simulate_names_every_model_it_refuses(capsys):
    code, _, err = run(capsys, "simulate", "--models", "qwen3.5-27b,llama-3.1-8b", "--context", "200k")
    assert code == 2 and "llama-3.1-8b (131,072" in err and "qwen3.5-27b" not in err


def test_a_gguf_maximum_is_its_context_length(capsys):
    path = _smollm2()
    code, _, err = run(capsys, "plan", path, "--context", "16k")
    assert code == 2 and "8,192" in err and "llama.context_length" in err
    assert js(capsys, "plan", path)["context"] == 8_192


def test_the_maximum_is_derived_as_vllm_derives_it():
    base = {"max_position_embeddings": 32_768}
    assert derived_max_context(base)[0] == 32_768
    yarn = {**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32_768}}
    assert derived_max_context(yarn)[0] == 131_072
    linear = {**base, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert derived_max_context(linear)[0] == 65_536
    llama3 = {"max_position_embeddings": 131_072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    assert derived_max_context(llama3)[0] == 131_072  # already counted in max_position_embeddings
    assert derived_max_context(linear, "gemma3_text")[0] == 32_768  # Gemma 3's is already scaled
    cfg = from_hf_config({"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "vocab_size": 100, "intermediate_size": 128, **yarn})
    assert cfg.max_context == 131_072 and "yarn" in cfg.max_context_from
    with pytest.raises(LowbitError, match="131,072"):
        plan(cfg_model(cfg), context=131_073)
    assert plan(cfg_model(cfg), context=131_073, force_context=True).context == 131_073


def cfg_model(cfg):
    from lowbit.models.catalog import ResolvedModel

    return ResolvedModel(cfg)


# --- llama.cpp's flag names -----------------------------------------------------------------------


def test_llama_cpp_kv_and_parallel_flags_are_the_same_options(capsys):
    mine = js(capsys, "plan", "qwen3.5-9b", "--context", "8192", "--kv-k", "q8_0", "--kv-v", "turbo3",
              "--sequences", "2")
    llama = js(capsys, "plan", "qwen3.5-9b", "--context", "8192", "-ctk", "q8_0", "-ctv", "turbo3", "-np", "2")
    long = js(capsys, "plan", "qwen3.5-9b", "--context", "8192", "--cache-type-k", "q8_0", "--cache-type-v",
              "turbo3", "--parallel", "2")
    assert mine == llama == long and mine["kv_k_bytes"] != mine["kv_v_bytes"]
    assert js(capsys, "fit", "qwen3.5-9b", "--device", "rtx-4090", "-np", "3")["users"] == 3


def test_ctx_size_is_shared_by_the_parallel_sequences_as_in_llama_cpp(capsys):
    # llama.cpp: -c is the whole cache, each of -np sequences gets c / np tokens
    shared = js(capsys, "plan", "qwen3.5-27b", "-c", "32k", "-np", "4")
    per_sequence = js(capsys, "plan", "qwen3.5-27b", "--context", "8k", "--sequences", "4")
    assert shared == per_sequence
    assert js(capsys, "plan", "qwen3.5-27b", "-c", "32k") == js(capsys, "plan", "qwen3.5-27b", "--context", "32k")
    code, _, err = run(capsys, "plan", "qwen3.5-27b", "-c", "32k", "--context", "32k")
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "plan", "qwen3.5-27b", "-c", "0")  # llama.cpp's "from the model": said, not guessed
    assert code == 2 and "trained context" in err


def test_batch_sizes_set_llama_cpps_micro_batch(capsys):
    def runtime(*flags):
        return js(capsys, "plan", "qwen3.5-4b", "--context", "4096", *flags)["runtime_bytes"]

    r256, r512, r768 = runtime("-ub", "256"), runtime(), runtime("-ub", "768")
    assert r256 < r512 < r768 and r512 - r256 == r768 - r512  # the compute buffer grows with the micro-batch
    assert runtime("-b", "256") == r256  # llama.cpp runs min(batch, ubatch)
    assert runtime("--batch-size", "4096", "--ubatch-size", "768") == r768
    code, _, err = run(capsys, "plan", "qwen3.5-4b", "--engine", "vllm", "-ub", "256")
    assert code == 2 and "llama.cpp" in err


def test_n_gpu_layers_places_that_many_layers_on_the_gpu(capsys):
    args = ["fit", "qwen3.5-27b", "--device", "rtx-4090", "--context", "8k"]
    auto = js(capsys, *args)
    everything = js(capsys, *args, "-ngl", "99")
    none = js(capsys, *args, "-ngl", "0")
    some = js(capsys, *args, "--n-gpu-layers", "20")
    assert everything["need_bytes"] == auto["need_bytes"]  # all layers and the output: llama.cpp's default
    assert none["need_bytes"] == none["breakdown"]["runtime_bytes"]  # only the compute buffer on the GPU
    assert none["need_bytes"] < some["need_bytes"] < everything["need_bytes"]
    assert some["offload"]["gpu_layers"] == 20 and some["offload"]["llama_args"] == "-ngl 20"
    # what leaves the GPU lands in host RAM: the two sides add up to the same model
    assert some["need_bytes"] + some["host_bytes"] == none["need_bytes"] + none["host_bytes"]
    for bad in (["--engine", "vllm"], ["--gpus", "2"]):
        code, _, err = run(capsys, *args, "-ngl", "20", *bad)
        assert code == 2 and "-ngl" in err


def test_eval_commands_take_llama_cpp_names_too():
    ns = build_parser(["eval", "kv"]).parse_args(["eval", "kv", "-ctk", "q8_0", "-ctv", "turbo3", "-c", "256"])
    assert (ns.kv_k, ns.kv_v, ns.context) == ("q8_0", "turbo3", 256)
    ns = build_parser(["eval", "weights"]).parse_args(["eval", "weights", "--ctx-size", "128"])
    assert ns.context == 128


# --- stored -----------------------------------------------------------------------------------------


def test_a_gguf_is_planned_as_stored_by_default(capsys):
    path = _smollm2()
    header = read_header(path)
    p = js(capsys, "plan", path)
    assert p["scenario"]["weights"] == "stored"
    assert {t["name"]: t["type"] for t in p["tensors"]} == {t.name: t.type_name for t in header.tensors}
    assert p["weights_bytes"] == header.tensor_bytes  # each tensor padded to the file's alignment
    assert "GGUF's own tensor types" in p["provenance"]["weights_bytes"]
    assert js(capsys, "plan", path, "--weights", "Q4_K_M")["weights_bytes"] != p["weights_bytes"]
    assert js(capsys, "plan", path, "--weights", "stored") == p


def test_stored_is_accepted_wherever_a_weights_format_is(capsys):
    path = _smollm2()
    header = read_header(path)
    sim = js(capsys, "simulate", "--models", path, "--scenario", "s=stored+f16", "--scenario", "q=Q4_0+turbo3",
             "--no-fits")
    assert sim["rows"][0]["weights_bytes"] == header.tensor_bytes
    fit = js(capsys, "fit", path, "--device", "phone-8gb", "--weights", "stored")
    assert fit["weights"] == "stored" and fit["breakdown"]["weights_bytes"] == header.tensor_bytes
    code, _, err = run(capsys, "plan", "qwen3.5-27b", "--weights", "stored")
    assert code == 2 and "needs a file" in err and err.count("\n") == 1
    code, _, err = run(capsys, "plan", path, "--weights", "stored", "--pure")
    assert code == 2 and "--pure" in err
