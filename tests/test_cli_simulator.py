"""The simulator's CLI: JSON shapes, and bad input -> one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import json
import struct

import pytest

from lowbit.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_json_shape(capsys):
    code, out, _ = run(capsys, "simulate", "--format", "json", "--models", "qwen3.5-0.8b,Qwen/Qwen3.5-4B")
    assert code == 0
    data = json.loads(out)
    assert data["context"] == 262_144 and data["sequences"] == 1
    assert [s["name"] for s in data["scenarios"]] == ["today", "1bit-turbo"]
    assert {"name", "weights", "kv_k", "kv_v"} <= set(data["scenarios"][1])
    row = data["rows"][0]
    assert {"model", "scenario", "params", "weights_bytes", "kv_bytes", "state_bytes", "runtime_bytes",
            "total_bytes"} <= set(row)
    assert [r["model"] for r in data["rows"]] == ["qwen3.5-0.8b"] * 2 + ["qwen3.5-4b"] * 2
    for r in data["rows"]:
        assert r["total_bytes"] == r["weights_bytes"] + r["kv_bytes"] + r["state_bytes"] + r["runtime_bytes"]
        assert all(isinstance(r[k], int) for k in r if k.endswith("bytes"))


def test_simulate_custom_scenarios_and_asymmetric_kv(capsys):
    code, out, _ = run(capsys, "simulate", "--format", "json", "--models", "qwen3.5-27b", "--context", "32k",
                       "--scenario", "base=Q8_0+f16", "--scenario", "k8v4=Q4_K_M+q8_0/turbo4")
    assert code == 0
    data = json.loads(out)
    assert data["context"] == 32_768
    assert data["scenarios"][1] == {"name": "k8v4", "weights": "Q4_K_M", "kv_k": "q8_0", "kv_v": "turbo4", "pure": False}


@pytest.mark.parametrize("fmt", ["table", "csv", "markdown"])
def test_simulate_renders_every_format(capsys, fmt):
    code, out, _ = run(capsys, "simulate", "--models", "qwen3.5-2b", "--format", fmt, "--units", "GiB")
    assert code == 0 and "qwen3.5-2b" in out


def test_plan_json_shape(capsys):
    code, out, _ = run(capsys, "plan", "qwen3.5-122b-a10b", "--format", "json", "--weights", "Q1_0", "--kv", "turbo3")
    data = json.loads(out)
    assert code == 0 and data["model"] == "qwen3.5-122b-a10b"
    assert data["params"] == {"total": 122_111_526_912, "active": data["params"]["active"]}
    assert {"weights_bytes", "kv_bytes", "state_bytes", "runtime_bytes", "total_bytes", "tensors"} <= set(data)
    assert {"name", "shape", "type", "bytes"} <= set(data["tensors"][0])
    assert "estimated" in data["provenance"]["runtime_bytes"] and "exact" in data["provenance"]["kv_bytes"]


def test_kv_takes_a_k_v_pair_as_simulate_scenarios_do(capsys):
    """--kv q8_0/turbo4 is --kv-k q8_0 --kv-v turbo4 (plan and fit); --kv-k/--kv-v still override one side."""
    def planned(*kv):
        code, out, _ = run(capsys, "plan", "qwen3.5-27b", "--context", "32k", "--format", "json", *kv)
        assert code == 0
        data = json.loads(out)
        return data["scenario"]["kv_k"], data["scenario"]["kv_v"], data["kv_bytes"]

    pair = planned("--kv", "q8_0/turbo4")
    assert pair == planned("--kv-k", "q8_0", "--kv-v", "turbo4") != planned("--kv", "q8_0")
    assert planned("--kv", "q8_0/turbo4", "--kv-v", "f16") == planned("--kv-k", "q8_0", "--kv-v", "f16")
    code, out, _ = run(capsys, "fit", "qwen3.5-27b", "--device", "h200", "--kv", "q8_0/turbo4", "--format", "json")
    assert code == 0 and (json.loads(out)["kv_k"], json.loads(out)["kv_v"]) == ("q8_0", "turbo4")


def test_formats_lists_weights_mixes_and_kv(capsys):
    code, out, _ = run(capsys, "formats", "--format", "json")
    data = json.loads(out)
    assert code == 0
    kv = {f["name"]: f for f in data["kv_formats"]}
    assert kv["turbo3"]["bits_per_value"] == 3.125 and kv["q8_0"]["bits_per_value"] == 8.5
    assert {"Q1_0", "TQ1_0", "IQ1_S", "Q4_K"} <= {w["name"] for w in data["weight_types"]}
    assert {"Q4_K_M", "Q1_0", "MXFP4_MOE", "IQ4_XS"} <= {m["name"] for m in data["mixes"]}


def test_audit_verdicts(capsys):
    code, out, _ = run(capsys, "simulate", "--audit", "--format", "json")
    claims = {c["id"]: c for c in json.loads(out)["claims"]}
    assert code == 0
    kv = claims["122b-today-kv"]
    assert not kv["holds"] and kv["exact_bytes"] == 12 * 2 * 2 * 256 * 2 * 262_144  # 6.44 GB, not 81.43
    assert round(kv["claimed_bytes"] / kv["exact_bytes"], 1) == 12.6
    assert claims["4b-under-2gb"]["holds"] is False and 0 < claims["4b-under-2gb"]["largest_context"] < 262_144


# --- bad input -----------------------------------------------------------------------------

BAD_ARGS = [
    (["plan", "no-such-model"], "unknown model"),
    (["plan", "qwen3.5-4b", "--weights", "Q3_X"], "unknown weight format"),
    (["plan", "qwen3.5-4b", "--kv", "turbo9"], "unknown KV-cache format"),
    (["plan", "qwen3.5-4b", "--kv", "q8_0/"], "K/V"),
    (["fit", "qwen3.5-4b", "--device", "h200", "--kv", "q8_0/turbo4/f16"], "K/V"),
    (["fit", "qwen3.5-4b", "--engine", "transformers", "--gpus", "2", "--device", "h200"], "one device"),
    (["plan", "qwen3.5-4b", "--context", "0"], "context"),
    (["plan", "qwen3.5-4b", "--context", "99999999999"], "context"),
    (["plan", "qwen3.5-4b", "--context", "-5"], "context"),
    (["plan", "qwen3.5-4b", "--sequences", "0"], "sequences"),
    (["simulate", "--scenario", "nonsense"], "NAME=WEIGHTS+KV"),
    (["simulate", "--units", "furlongs"], "unit"),
    (["simulate", "--models", "qwen3.5-4b", "--scenario", "a=Q4_K_M+f16", "--weights", "Q1_0"], "either"),
]


@pytest.mark.parametrize("argv, words", BAD_ARGS)
def test_bad_arguments_exit_2_with_one_line(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lowbit: error:") and words in err


def _write(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return str(p)


def _gguf_header(n_tensors=0, n_kv=0, body=b""):
    return struct.pack("<IIQQ", 0x46554747, 3, n_tensors, n_kv) + body


BAD_FILES = [
    ("config.json", b"{not json", "not valid JSON"),
    ("config.json", b'{"model_type": "llama", "hidden_size": 64', "not valid JSON"),  # truncated
    ("config.json", b"[1, 2]", "JSON object"),
    ("config.json", b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10}',
     "num_hidden_layers"),
    ("config.json", b'{"model_type": "mamba9", "hidden_size": 64}', "unsupported architecture"),
    ("config.json", b'{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64}',
     "no model_type (architectures: ['Qwen3ForCausalLM'])"),
    ("config.json", b'{"model_type": "llama", "hidden_size": -64, "num_hidden_layers": 2, "num_attention_heads": 4,'
                    b' "vocab_size": 10, "intermediate_size": 8}', "hidden_size"),
    ("config.json", b'{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1e12, "num_attention_heads": 4,'
                    b' "vocab_size": 10, "intermediate_size": 8}', "num_hidden_layers"),
    ("m.gguf", b"GGML" + b"\0" * 60, "not a GGUF"),
    ("m.gguf", _gguf_header()[:10], "truncated"),
    ("m.gguf", _gguf_header(n_tensors=2**60), "implausible"),
    ("m.gguf", _gguf_header(n_kv=3, body=struct.pack("<Q", 2**62)), "implausible"),
    ("m.gguf", _gguf_header(n_kv=1, body=struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 0, 2**40)), "implausible"),
    ("m.gguf", _gguf_header(n_kv=1, body=struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99)), "unknown"),
    ("m.gguf", _gguf_header(n_tensors=1, body=struct.pack("<Q", 1) + b"t" + struct.pack("<IQQIQ", 2, 2**41, 2, 0, 0)),
     "absurd"),
    ("m.gguf", _gguf_header(n_kv=1, body=struct.pack("<Q", 20) + b"general.architecture" + struct.pack("<IQ", 8, 5)
                            + b"bogus"), "unsupported GGUF architecture"),
]


@pytest.mark.parametrize("name, content, words", BAD_FILES)
def test_bad_files_exit_2_with_one_line(capsys, tmp_path, name, content, words):
    code, out, err = run(capsys, "plan", _write(tmp_path, name, content))
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and words in err, err


def test_missing_file_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "plan", str(tmp_path / "absent.gguf"))
    assert code == 2 and "no such GGUF file" in err


def test_engine_option_changes_allocation_and_its_provenance(capsys):
    code, out, _ = run(capsys, "plan", "qwen3.5-27b", "--engine", "vllm", "--context", "32k", "--format", "json")
    vllm = json.loads(out)
    code2, out2, _ = run(capsys, "plan", "qwen3.5-27b", "--context", "32k", "--format", "json")
    llama = json.loads(out2)
    assert code == code2 == 0 and vllm["engine"] == "vllm" and llama["engine"] == "llama.cpp"
    assert vllm["weights_bytes"] == llama["weights_bytes"]
    assert "vLLM" in vllm["provenance"]["kv_bytes"] and "llama.cpp" in llama["provenance"]["kv_bytes"]
    assert vllm["state_bytes"] != llama["state_bytes"]  # vLLM keeps the conv state in bf16, llama.cpp in f32


def test_table_cells_are_printed_verbatim_not_as_markup(capsys):
    code, out, _ = run(capsys, "simulate", "--audit")
    assert code == 0 and "[weights]" in out and "[kv]" in out


def test_one_model_many_scenarios_prints_a_row_per_scenario(capsys):
    code, out, _ = run(capsys, "simulate", "--models", "qwen3.5-9b", "--format", "csv", "--scenario", "a=Q8_0+f16",
                       "--scenario", "b=Q4_K_M+q8_0", "--scenario", "c=Q1_0+turbo3")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("scenario,") and [l.split(",")[0] for l in lines[1:]] == ["a", "b", "c"]


def test_quality_figures_name_the_model_they_were_measured_on(capsys):
    import csv

    from lowbit.report.quality import kv_quality

    q = kv_quality()
    if q is None:
        pytest.skip("no measured KV quality shipped")
    code, out, _ = run(capsys, "simulate", "--quality", "--no-fits", "--models", "qwen3.5-4b,qwen3.5-9b",
                       "--format", "csv")
    assert code == 0
    header, *rows = list(csv.reader(out.splitlines()))
    names = [m["model"] for m in q["models"]]
    kld = [{(r["kv_k"], r["kv_v"]): max(0.0, r["kld"]) for r in m["rows"] if not r.get("boundary")} for m in q["models"]]
    cell = rows[0][len(header) - 1 - header[::-1].index("KV quality*")]  # the last scenario's (1bit-turbo) column
    # every figure beside a Qwen row carries the name of the small model it was measured on
    assert cell == ", ".join(f"{n} {k[('turbo3', 'turbo3')]:.3f}" for n, k in zip(names, kld))
    # the default table keeps the figures off the Qwen rows: one table of formats x measured models
    code, out, _ = run(capsys, "simulate", "--quality", "--no-fits", "--models", "qwen3.5-4b,qwen3.5-9b")
    memory, quality = out.split("KV-cache quality", 1)
    assert f"{kld[0][('turbo3', 'turbo3')]:.3f}" not in memory
    assert all(n in quality for n in names)
    turbo = next(line for line in quality.splitlines() if line.startswith("1bit-turbo"))
    ci = [next((r.get("kld_ci") for r in m["rows"] if (r["kv_k"], r["kv_v"]) == ("turbo3", "turbo3")
                and not r.get("boundary")), None) for m in q["models"]]
    cells = [f"{k[('turbo3', 'turbo3')]:.3f}" + (f" [{max(c[0], 0):.3f}, {c[1]:.3f}]" if c else "")
             for k, c in zip(kld, ci)]
    assert " ".join(turbo.split()[2:]) == " ".join(cells)  # with its 95% interval where the file has one


def test_the_readme_command_runs_as_a_fresh_process():
    """`lowbit simulate` in a new interpreter: catches import-order luck that in-process tests hide."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "lowbit.cli", "simulate", "--format", "json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["rows"]) == 16
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, lowbit.cli; lowbit.cli.main(['simulate', '--format', 'json']); "
                               "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"],
        capture_output=True, text=True, timeout=120).stdout.split("\n")[-2]


def test_caption_follows_the_engine(capsys):
    _, llama, _ = run(capsys, "simulate", "--models", "qwen3.5-2b", "--no-fits", "--format", "markdown")
    _, vllm, _ = run(capsys, "simulate", "--models", "qwen3.5-2b", "--no-fits", "--format", "markdown", "--engine", "vllm")
    assert "exact for llama.cpp" in llama and "vLLM" not in llama
    assert "exact for vLLM" in vllm and "512-token micro-batch" not in vllm
