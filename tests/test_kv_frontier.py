"""The KV frontier: best-at-size with intervals (lowbit.report.frontier), the docs it writes, and the
measurement script's row choice, saving, resuming and merging (benchmarks/kv_frontier.py, model calls faked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lowbit.eval.bootstrap import WindowStats, interval_fields
from lowbit.report import frontier, quality

ROOT = Path(__file__).resolve().parents[1]
N, T = 64, 255  # windows, scored tokens per window


def _script():
    spec = importlib.util.spec_from_file_location("kv_frontier", ROOT / "benchmarks" / "kv_frontier.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RNG = np.random.default_rng(11)
DIFFICULTY = RNG.exponential(1.0, size=N)  # windows differ; every format sees the same ones
REF_NLL = RNG.normal(2.6, 0.4, size=N) * T


def _row(k, v, bits, kld, found=10, noise=0.0005, seed=0):
    rng = np.random.default_rng(seed)
    per_token = np.maximum(kld * DIFFICULTY + rng.normal(0, noise, size=N), 0.0)
    stats = WindowStats(REF_NLL + per_token * T, np.full(N, T), per_token * T, np.full(N, T * (1 - kld)))
    trials = [{"length": 8192, "depth": round(0.05 + 0.1 * i, 2), "found": i < found, "answer": ""} for i in range(10)]
    return {"model": "toy", "kv_k": k, "kv_v": v, "boundary": 0, "bits_per_value": bits, "kld": kld, "head_dim": 64,
            "ppl": 1.0, "ppl_f16": 1.0, "top1": 1 - kld, "niah": found / 10, "niah_trials": trials,
            **interval_fields(stats, WindowStats(REF_NLL, np.full(N, T)))}


def _block():
    rows = [_row("f16", "f16", 16.0, 0.0, noise=0.0), _row("q8_0", "q8_0", 8.5, 0.001, seed=1),
            _row("q5_0", "q5_0", 5.5, 0.02, seed=2), _row("kivi4", "kivi4", 5.0, 0.08, found=0, seed=3),
            _row("q4_0", "q4_0", 4.5, 0.05, seed=4), _row("iq4_nl", "iq4_nl", 4.5, 0.05, seed=5),
            _row("turbo4", "turbo4", 4.25, 0.068, found=7, seed=6), _row("turbo3", "turbo3", 3.25, 0.3, found=2, seed=7),
            _row("q8_0", "turbo4", 6.375, 0.03, seed=8)]
    return {"model": "toy", "schema": "lowbit.kv_quality/2", "setup": {"tokens": N * 512, "context": 512},
            "text": {"name": "toy text"}, "rows": rows}


def test_best_at_size_takes_the_intervals_into_account():
    pts = {p.label: p for p in frontier.analyse(_block())}
    # kivi4 costs more bits than q4_0 / iq4_nl and is worse beyond the interval: dominated
    assert not pts["kivi4"].best_kld and pts["kivi4"].dominated_kld in ("q4_0", "iq4_nl")
    # q8_0/turbo4 at 6.375 bits loses to q5_0 at 5.5 bits (0.02 < 0.03 beyond the interval)
    assert not pts["q8_0/turbo4"].best_kld and pts["q8_0/turbo4"].dominated_kld == "q5_0"
    # q4_0 and iq4_nl: same bits, the same KLD up to noise: neither dominates the other, and they are tied
    assert pts["q4_0"].best_kld and pts["iq4_nl"].best_kld
    assert "iq4_nl" in pts["q4_0"].ties and "q4_0" in pts["iq4_nl"].ties
    # fewer bits and worse is not dominated (nothing smaller beats it)
    for name in ("f16", "q8_0", "q5_0", "turbo4", "turbo3"):
        assert pts[name].best_kld, name
    assert pts["turbo3"].ties == []
    # needles: kivi4 finds 0/10 where q4_0 (fewer bits) finds 10/10 on the same needles: dominated
    assert not pts["kivi4"].best_niah and pts["turbo3"].best_niah
    # turbo4 (7/10) against q4_0's 10/10 at more bits: fewer bits, not dominated
    assert pts["turbo4"].best_niah


def test_a_difference_inside_the_interval_is_not_a_win():
    """Two rows 1% apart in KLD with window noise far larger: the bigger one is not dominated (a tie)."""
    b = {"model": "toy", "rows": [_row("a", "a", 4.0, 0.0500, noise=0.01, seed=1),
                                  _row("b", "b", 4.5, 0.0505, noise=0.01, seed=2)]}
    pts = {p.label: p for p in frontier.analyse(b)}
    assert pts["b"].best_kld and pts["b"].ties == ["a"]
    # the same gap with little noise is beyond the interval: b is dominated
    b = {"model": "toy", "rows": [_row("a", "a", 4.0, 0.0500, noise=0.0, seed=1),
                                  _row("b", "b", 4.5, 0.0600, noise=0.0, seed=2)]}
    assert not {p.label: p for p in frontier.analyse(b)}["b"].best_kld


def test_table_marks_the_frontier_and_ties_and_shows_intervals():
    md = frontier.frontier_markdown(_block())
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "KLD, NIAH" in lines["q4_0"] and "iq4_nl" in lines["q4_0"]
    assert lines["kivi4"].split(" | ")[6] == "-"  # neither best by KLD nor by needles
    assert "[" in lines["turbo3"].split(" | ")[3]  # KLD with its interval
    assert "0/10 [0.00, 0.28]" in lines["kivi4"]
    rows = [line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| ")][2:]
    bits = [float(lines[r].split(" | ")[1]) for r in rows]
    assert bits == sorted(bits, reverse=True)  # most bits first


def test_old_files_without_windows_rank_on_point_values():
    old = {"model": "old", "rows": [{k: v for k, v in r.items() if k not in ("windows", "kld_ci", "ppl_ratio_ci")}
                                    for r in _block()["rows"]]}
    assert not frontier.has_intervals(old)
    pts = {p.label: p for p in frontier.analyse(old)}
    assert not pts["kivi4"].best_kld and pts["turbo3"].best_kld
    assert "point values only" in frontier.frontier_table(old).caption


def test_figure_draws_both_panels():
    fig = frontier.frontier_figure(_block())
    kld_ax, niah_ax = fig.axes[:2]
    assert kld_ax.get_yscale() == "log" and "needles" in niah_ax.get_ylabel()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_simulate_quality_reads_intervals_and_old_files():
    block = _block()
    assert quality.kld_interval(block, "q4_0", "q4_0") == tuple(block["rows"][4]["kld_ci"])
    scen = [SimpleNamespace(name="s", kv_label=lambda: "q4_0", k=SimpleNamespace(name="q4_0"),
                            v=SimpleNamespace(name="q4_0"))]
    t = quality.quality_table({"label": "x", "models": [block]}, scen)
    lo, hi = block["rows"][4]["kld_ci"]
    assert t.rows[0][2] == f"{block['rows'][4]['kld']:.3f} [{lo:.3f}, {hi:.3f}]"
    old = {"rows": [{"kv_k": "q4_0", "kv_v": "q4_0", "kld": 0.05}]}
    assert quality.kld_interval(old, "q4_0", "q4_0") is None
    assert quality.quality_table({"label": "x", "models": [old]}, scen).rows[0][2] == "0.050"


def test_ci_text_marks_an_interval_that_holds_the_baseline():
    assert quality.ci_text(1.0012, [0.998, 1.004], 3, same=1.0) == "~1.001 [0.998, 1.004]"
    assert quality.ci_text(1.066, [1.058, 1.074], 3, same=1.0) == "1.066 [1.058, 1.074]"
    assert quality.ci_text(0.5, None) == "0.500"


def test_write_docs_replaces_only_the_marked_section(tmp_path):
    kf = _script()
    data = tmp_path / "kv.json"
    data.write_text(json.dumps([{**_block(), "command": "python benchmarks/kv_frontier.py --out /tmp/x.json",
                                 "date": "2026-11-30", "device": "cuda:0 (H200)"}]))
    doc = tmp_path / "turboquant.md"
    doc.write_text(f"# before\n\n{kf.BEGIN}\nold table\n{kf.END}\n\n## after\n")
    kf.write_docs(data, doc)
    text = doc.read_text()
    assert text.startswith("# before\n\n") and text.endswith("\n\n## after\n") and "old table" not in text
    assert "| q4_0 |" in text and "kv_frontier_toy.png" in text and "--out /tmp" not in text
    assert (tmp_path / "kv_frontier_toy.png").stat().st_size > 1000
    kf.write_docs(data, doc)  # again: the same section, not a second one
    assert doc.read_text() == text
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        kf.write_docs(data, doc)


def test_row_selection_by_name_and_group():
    kf = _script()
    assert kf.select("all") == kf.ROWS
    picked = kf.select("llama.cpp,q8_0/turbo4")
    names = [kf.row_name(k, v, b) for _, k, v, b in picked]
    assert names[0] == "f16" and "q8_0/turbo4" in names and "iq4_nl" in names and "turbo3" not in names
    assert kf.select("turbo4:center")[-1] == ("extra", "turbo4:center", "turbo4:center", 0)
    with pytest.raises(SystemExit):
        kf.select("not a row!")


def test_measure_saves_each_row_resumes_and_keeps_other_models(tmp_path, monkeypatch, smollm2_gguf):
    """evaluate_kv faked (no model runs): the file after each row, a rerun that skips what is there, a failing
    row that does not stop the others, and another model's document left alone."""
    kf = _script()
    import lowbit.eval.kv as kv

    out = tmp_path / "kv.json"
    out.write_text(json.dumps([{"model": "other", "rows": [{"kv_k": "x", "kv_v": "x"}]}]))
    calls, sizes = [], []

    def fake(path, k, v, **kw):
        calls.append((k, v))
        sizes.append(len(json.loads(out.read_text())[-1].get("rows", [])) if out.is_file() else 0)
        if k == "q4_1":
            raise RuntimeError("broken row")
        r = _row(k, v, 4.0, 0.01 if k != "f16" else 0.0)
        return {**r, "niah": None, "niah_trials": []}

    monkeypatch.setattr(kv, "evaluate_kv", fake)
    argv = ["--model", f"toy={smollm2_gguf}", "--rows", "q8_0,q4_1,turbo3", "--tokens", "1024", "--out", str(out),
            "--commit", "abc123"]
    assert kf.main(argv) == 0
    assert calls == [("f16", "f16"), ("q8_0", "q8_0"), ("q4_1", "q4_1"), ("turbo3", "turbo3")]
    assert sizes[1:] == [1, 2, 2]  # saved after every measured row
    docs = json.loads(out.read_text())
    assert [d["model"] for d in docs] == ["other", "toy"] and docs[0]["rows"] == [{"kv_k": "x", "kv_v": "x"}]
    toy = docs[1]
    assert [r["kv_k"] for r in toy["rows"]] == ["f16", "q8_0", "turbo3"]
    assert toy["lowbit_commit"] == "abc123" and toy["setup"]["tokens"] == 1024
    assert toy["setup"]["niah_length"] == 8192 and toy["setup"]["niah_trials"] == 10  # SmolLM2's trained context
    assert toy["text"]["sha256"] and toy["device"].startswith("cpu")
    calls.clear()
    assert kf.main(argv) == 0  # resumed: only the row that failed runs again
    assert calls == [("q4_1", "q4_1")]
    calls.clear()
    assert kf.main(argv + ["--fresh"]) == 0  # --fresh: everything again
    assert len(calls) == 4
    calls.clear()
    assert kf.main([a if a != "1024" else "2048" for a in argv]) == 0  # other settings: a new document
    assert len(calls) == 4 and json.loads(out.read_text())[1]["setup"]["tokens"] == 2048


def test_a_resumed_auto_run_keeps_its_niah_probe(tmp_path, monkeypatch, smollm2_gguf):
    """--niah-length auto probes once; a rerun with the same probe settings keeps it, --fresh or others probe again."""
    kf = _script()
    import lowbit.eval.kv as kv

    probes = []

    def fake_probe(model_name, path, depths, repeats, seed, device, top, need=0.8):
        probes.append(seed)
        return 2048, {"8192": "1/10", "4096": "7/10", "2048": "9/10"}

    monkeypatch.setattr(kf, "niah_probe", fake_probe)
    monkeypatch.setattr(kv, "evaluate_kv", lambda path, k, v, **kw: {**_row(k, v, 4.0, 0.0), "niah": None,
                                                                      "niah_trials": []})
    out = tmp_path / "kv.json"
    argv = ["--model", f"toy={smollm2_gguf}", "--rows", "q8_0", "--tokens", "1024", "--niah-length", "auto",
            "--out", str(out), "--commit", "abc123"]
    assert kf.main(argv) == 0 and probes == [0]
    assert kf.main(argv) == 0 and probes == [0]  # kept
    doc = json.loads(out.read_text())[0]
    assert doc["setup"]["niah_length"] == 2048 and doc["niah_probe"]["2048"] == "9/10"
    assert kf.main(argv + ["--fresh"]) == 0 and probes == [0, 0]
    assert kf.main(argv + ["--seed", "1"]) == 0 and probes == [0, 0, 1]  # another probe


def test_merge_joins_runs_with_the_same_settings(tmp_path):
    kf = _script()
    setup = {"tokens": 32768, "context": 512, "chunk": 128, "niah_length": 8192, "niah_depths": [0.5],
             "niah_repeats": 1, "seed": 0, "bootstrap": {"samples": 2000, "seed": 0, "level": 0.95}}
    a = {"model": "m", "schema": kf.SCHEMA, "setup": setup, "command": "run a",
         "rows": [{"kv_k": "f16", "kv_v": "f16"}, {"kv_k": "q8_0", "kv_v": "q8_0", "kld": 1}]}
    b = {**a, "command": "run b", "rows": [{"kv_k": "q8_0", "kv_v": "q8_0", "kld": 2}, {"kv_k": "q4_0", "kv_v": "q4_0"}]}
    g = {"model": "g", "schema": kf.SCHEMA, "setup": setup, "command": "run g", "rows": []}
    for name, doc in (("a", [a]), ("b", [b, g])):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    out = tmp_path / "out.json"
    kf.merge([tmp_path / "a.json", tmp_path / "b.json"], out)
    docs = {d["model"]: d for d in json.loads(out.read_text())}
    assert [r["kv_k"] for r in docs["m"]["rows"]] == ["f16", "q8_0", "q4_0"]
    assert docs["m"]["rows"][1]["kld"] == 2 and docs["m"]["command"] == "run a ; run b"
    assert set(docs) == {"m", "g"}


def test_html_report_section_has_a_frontier_per_model_with_intervals():
    pytest.importorskip("matplotlib")
    from lowbit.report import html as report

    old = {"model": "old", "date": "2026-11-28", "rows": [{k: v for k, v in r.items() if k != "windows"}
                                                          for r in _block()["rows"]]}
    page = report._kv_quality_section([{**_block(), "date": "2026-11-30", "device": "cuda:0 (H200)"}, old])
    assert page.count("<h3>") == 1 and "toy: which KV format at which size" in page  # the old block has none
    assert page.count("<figure>") == 2  # the dot plot of every row, and toy's frontier
    assert "KLD, NIAH" in page and "0/10 [0.00, 0.28]" in page
