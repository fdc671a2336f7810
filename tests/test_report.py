"""The HTML report: built whole (atomically); a summary first; plots true to scale with readable, non-overlapping
text; tables for people (headers with units, no exponents, no negative KL); no internal paths."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from importlib import resources

import pytest

from lowbit.cli import main
from lowbit.report.render import UNITS, fmt_bytes

matplotlib = pytest.importorskip("matplotlib", reason="lowbit report draws with matplotlib: pip install -e '.[eval]'")
matplotlib.use("Agg")

from lowbit.report import html as report  # noqa: E402  (after the skip: the module draws with matplotlib)


class Page(HTMLParser):
    """Tables (header and cell texts, and whether a scrolling box holds them), pictures, meta tags."""

    def __init__(self, text: str):
        super().__init__()
        self.stack: list[tuple[str, dict]] = []
        self.tables: list[dict] = []
        self.meta: list[dict] = []
        self.pictures: list[list[str]] = []
        self.cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "meta":
            self.meta.append(a)
            return
        if tag in ("source", "img"):
            if tag == "img" or self.pictures:
                self.pictures[-1].append(a.get("srcset") or a.get("src") or "")
            return
        if tag == "picture":
            self.pictures.append([])
        if tag == "table":
            parent = self.stack[-1][1] if self.stack else {}
            self.tables.append({"scroll": parent.get("class") == "scroll", "th": [], "td": []})
        if tag in ("th", "td"):
            self.cell = []
        self.stack.append((tag, a))

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self.cell is not None:
            self.tables[-1][tag].append("".join(self.cell).strip())
            self.cell = None
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


@pytest.fixture(scope="module")
def page(report_html):
    return report_html.read_text()


@pytest.fixture(scope="module")
def parsed(page):
    return Page(page)


def _json(name):
    import json

    path = resources.files("lowbit.report").joinpath(name)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else [data]


def test_the_report_is_written_whole(report_html):
    assert not report_html.with_name(report_html.name + ".tmp").exists()
    assert report_html.read_text().rstrip().endswith("</html>")


def test_whole_model_decode_shows_every_run_and_what_did_not_fit(page):
    """Each shipped end-to-end run is a row; a run whose bf16 baseline did not fit shows no speedup but says why."""
    e2e = _json("decode_e2e.json")
    if not e2e:
        pytest.skip("no end-to-end measurements ship")
    rows = [r for b in e2e for r in b["rows"]]
    part = page[page.index("<h3>Whole-model decode</h3>"):]
    table = part[part.index("<table>"):part.index("</table>")]
    assert table.count("<tr>") == len(rows) + 1
    assert table.count("bf16 cache does not fit") == sum("note" in r for r in rows) > 0
    for r in rows:
        if "speedup" in r:
            assert f"{r['speedup']:.2f}x" in table
        assert ("speedup" in r) != ("note" in r) or r["kv"] == "bf16"
    for b in e2e:  # each run names its date, device, commit and command
        assert f"lowbit {b['commit']}" in part and b["command"].split(" --out")[0][:60] in part


def test_the_kernel_section_names_every_run(page):
    """Each shipped decode-attention run is named with its commit and command, and each of its rows is a row."""
    kernels = _json("kernels.json")
    if not kernels:
        pytest.skip("no kernel measurements ship")
    part = page[page.index('id="kernels"'):page.index("<h3>Whole-model decode</h3>")]
    table = part[part.index("<table>"):part.index("</table>")]
    assert table.count("<tr>") == sum(len(b["rows"]) for b in kernels) + 1
    for b in kernels:
        assert f"lowbit {b['commit']}" in part and b["command"].split(" --out")[0][:60] in part


def test_the_step_figure_draws_every_profiled_kernel_group():
    """Each kernel group a shipped profile measured belongs to one part of the figure (none is dropped), and its
    parts add up to the run's measured device time."""
    blocks = [b for b in _json("decode_e2e.json") or [] if any(r.get("profile_us") for r in b["rows"])]
    if not blocks:
        pytest.skip("no profiled end-to-end runs ship")
    drawn = {g for _, _, groups in report.STEP_PARTS for g in groups}
    for b in blocks:  # the run's own JSON, named by the block's source
        run = json.loads((Path(__file__).parents[1] / b["source"].split()[0]).read_text())
        totals = {(x["context"], x["batch"], x["kv"]): x["profile"]["us_per_step"] for x in run["runs"] if x.get("profile")}
        for r in b["rows"]:
            assert set(r["profile_us"]) <= drawn, r["profile_us"]
            assert sum(r["profile_us"].values()) == pytest.approx(totals[(r["context"], r["batch"], r["kv"])], abs=1.0)


def test_the_batch_1_share_is_computed_from_the_shipped_profile(page):
    """The page's batch-1 figures come from the profiled run, not typed in: the cache's own kernels and bf16's
    attention, summed here from the same JSON."""
    rows = [r for b in _json("decode_e2e.json") or [] for r in b["rows"] if r.get("profile_us") and r["batch"] == 1]
    turbo = next((r for r in rows if r["kv"] == "turbo3/turbo3"), None)
    if turbo is None:
        pytest.skip("no profiled batch-1 turbo3 run ships")
    base = next(r for r in rows if r["kv"] == "bf16" and (r["model"], r["context"]) == (turbo["model"], turbo["context"]))
    attention, merge, store = (groups for _, _, groups in report.STEP_PARTS[1:4])
    ours = sum(turbo["profile_us"].get(g, 0.0) for g in (*attention, *merge, *store)) / 1e3
    bf16 = sum(base["profile_us"].get(g, 0.0) for g in attention) / 1e3
    assert f"take {ours:.1f} ms of the {sum(turbo['profile_us'].values()) / 1e3:.1f} ms" in page
    assert f"bf16's attention {bf16:.1f} ms" in page


def test_shipped_speed_rows_are_their_runs_rows():
    """The report's measured speed rows are not typed in: each kernel row equals its run's row (the fields it
    keeps), and each whole-model row is what `decode_e2e.report_rows` makes of its run's JSON."""
    import sys

    root = Path(__file__).parents[1]
    for b in _json("kernels.json") or []:
        src = json.loads((root / b["source"].split()[0]).read_text())
        runs = {(r["shape"], r["context"], r["batch"], r["kv"]): r for r in src["rows"] if "kv" in r}
        for r in b["rows"]:
            run = runs[(r["shape"], r["context"], r["batch"], r["kv"])]
            assert {k: run.get(k) for k in r} == r
    e2e = _json("decode_e2e.json") or []
    if not e2e:
        return
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import decode_e2e
    finally:
        sys.path.remove(str(root / "benchmarks"))
    for b in e2e:
        made = {(r["model"], r["context"], r["batch"], r["kv"]): r
                for r in decode_e2e.report_rows(json.loads((root / b["source"].split()[0]).read_text()))}
        for r in b["rows"]:
            assert made[(r["model"], r["context"], r["batch"], r["kv"])] == r


def test_the_free_attention_ceiling_comes_from_the_runs_and_bounds_every_speedup(page):
    """A bf16 row's "speedup if attention cost nothing" is its step less its attention layers' SDPA time, both from
    the run's own JSON; no packed cache of the same model, context and batch beats it."""
    blocks = _json("decode_e2e.json") or []
    ceilings = {}
    for b in blocks:
        run = json.loads((Path(__file__).parents[1] / b["source"].split()[0]).read_text())
        layers = {r["model"]: r["fused"]["attention_layers"] for r in run["runs"] if r.get("fused")}
        sdpa = {(r["model"], r["context"], r["batch"]): r["sdpa"]["layer_ms"] for r in run["runs"] if r["kv"] == "bf16"}
        for r in b["rows"]:
            if r["kv"] == "bf16" and "attention_ms" in r:
                key = (r["model"], r["context"], r["batch"])
                assert r["attention_ms"] == pytest.approx(sdpa[key] * layers[r["model"]], abs=1e-3)
                ceilings[key] = report.free_attention(r)
                assert f"{ceilings[key]:.2f}x" in page
    if not ceilings:
        pytest.skip("no bf16 end-to-end rows with their attention time ship")
    for r in (r for b in blocks for r in b["rows"]):
        if r.get("speedup") and (r["model"], r["context"], r["batch"]) in ceilings:
            assert r["speedup"] <= ceilings[(r["model"], r["context"], r["batch"])], r


def test_real_size_rows_equal_the_plan_to_the_byte(page):
    """Every shipped GPU measurement is a row, and each shows the plan's K/V and state equal to the held bytes
    (the page computes the plan when it is built: a change to the engine's rules would show here)."""
    runs = _json("real_size.json")
    if not runs:
        pytest.skip("no real-size measurements ship")
    part = page[page.index('id="real-size"'):]
    table = part[part.index("<table>"):part.index("</table>")]
    rows = [r for b in runs for r in b["rows"]]
    assert table.count("<tr>") == len(rows) + 1 and table.count(">0 / 0<") == len(rows)
    for r in rows:
        assert f"{r['kv_held']:,}" in table and f"{r['state_held']:,}" in table
    assert f"held the planned bytes exactly in {len(rows)} of {len(rows)} runs" in page  # the summary says so too


def test_page_is_self_contained_and_made_for_phones(page, parsed):
    assert any(m.get("name") == "viewport" and "width=device-width" in m.get("content", "") for m in parsed.meta)
    assert not re.search(r'(src|srcset|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    kv, kernels = _json("kv_quality.json"), _json("kernels.json")
    # family and KV-against-context always; the quality dot plot and the kernel speedups when measurements ship,
    # and a frontier plot per model measured with intervals
    profiled = bool(kernels) and any(r.get("profile_us") for b in _json("decode_e2e.json") or [] for r in b["rows"])
    assert len(parsed.pictures) == 2 + bool(kv) + len(report._frontier_blocks(kv)) + bool(kernels) + profiled
    for sources in parsed.pictures:  # a phone layout and a wide one, both inlined
        assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") and s.endswith(" 2x") for s in sources)
    assert "img{max-width:100%" in page
    assert parsed.tables and all(t["scroll"] for t in parsed.tables)


def test_summary_comes_first_and_states_the_audits_figures(page):
    from lowbit.report.audit import audit

    result = audit()
    claims = {c["id"]: c for c in result["claims"]}
    start, first_plot = page.index('class="summary"'), page.index("<figure")
    summary = page[start:page.index("</section>", start)]
    assert start < first_plot
    held = sum(c["holds"] for c in result["claims"])
    assert f"{held} of {len(result['claims'])} figures hold" in summary
    for cid in ("122b-today-total", "122b-today-kv", "122b-after-total", "35b-under-6gb", "4b-under-2gb"):
        assert f"{fmt_bytes(claims[cid]['claimed_bytes'])} GB" in summary  # the post's figure
        assert f"{fmt_bytes(claims[cid]['exact_bytes'])} GB" in summary  # lowbit's exact one
    assert f"{claims['122b-ratio']['exact_ratio']:.2f}x" in summary
    if _json("kv_quality.json"):  # the measured quality stands beside the bytes
        kl = [r["kld"] for b in _json("kv_quality.json") for r in b["rows"]
              if r["kv_k"] == r["kv_v"] == "turbo3" and not r["boundary"]]
        assert all(f"{v:.4f}" in summary for v in kl)


def test_tables_have_human_headers_and_numbers_for_people(parsed):
    headers = [h for t in parsed.tables for h in t["th"]]
    for raw in ("kv_k", "bits_per_value", "triton_speedup", "ppl_f16", "baseline_ms"):
        assert raw not in headers
    assert not [h for h in headers if re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", h)]  # a field name, not a header
    cells = [c for t in parsed.tables for c in t["td"]]
    assert not [c for c in cells if re.search(r"\d[eE][+-]?\d", c)]  # no 9.557e+11, no -9.096e-06
    assert not [c for c in cells if c.lower() in ("nan", "none", "null")]
    # a byte column states its unit in its header
    assert "total (GB)" in headers and "KV cache (GB)" in headers


def test_a_kl_that_is_zero_shows_as_zero_and_says_why(page, parsed):
    kv = _json("kv_quality.json")
    if not kv:
        pytest.skip("no KV quality measurements ship with this checkout")
    tiny = [r for b in kv for r in b["rows"] if -report.KL_ROUNDING < r["kld"] < 0]
    if not tiny:  # an f16 cache against itself measures exactly 0 where the same kernels ran both
        pytest.skip("no measured KL divergence is a tiny negative number")
    cells = [c for t in parsed.tables for c in t["td"]]
    assert cells.count("0.0000*") >= len(tiny)
    assert report.CLAMP_NOTE in page
    assert not [c for c in cells if re.fullmatch(r"-0\.0+\*?", c)]


def test_number_formats():
    assert report.fmt_kl(-9.096e-06) == ("0.0000", True)
    assert report.fmt_kl(0.29356883) == ("0.2936", False)
    assert report.fmt_kl(-0.5) == ("-0.5000", False)  # not rounding: shown, never hidden
    assert report.fmt_large(955731321658.418) == "956 billion"
    assert report.fmt_large(7357934.6) == "7.36 million"
    assert report.fmt_large(731712.67) == "731,713"
    assert report.fmt_large(744.794571) == "744.8"
    assert report.fmt_large(11.93771) == "11.94"
    assert report.fmt_sig(0.000458438, 3) == "0.000458"
    assert report.fmt_pct(0.0004902) == "0.05%" and report.fmt_pct(1.0) == "100.0%"
    assert report.fmt_tokens(32768) == "32K" and report.fmt_tokens(1 << 20) == "1M"


def test_no_internal_paths(page):
    for internal in ("/tmp/", "../shared", "/work/", "/home/", "/root/"):
        assert internal not in page
    assert report.public_command("python b.py --x 1 --out /tmp/kvq/a.json ; python b.py --x 1 --out /tmp/b.json") \
        == "python b.py --x 1"
    assert report.public_command("python d.py --out decode.json") == "python d.py --out decode.json"
    assert report.public_command("python k.py --model gemma3-270m=/tmp/m/g.gguf --device cuda") \
        == "python k.py --model gemma3-270m --device cuda"


# ------------------------------------------------------------------------------------------------ the plots


def _figures():
    from lowbit.planning.simulate import simulate

    sim = simulate()
    kv, kernels = _json("kv_quality.json"), _json("kernels.json")
    out = [("family", lambda n: report.family_figure(sim, "GB", n)),
           ("kv", lambda n: report.kv_figure(report.KV_MODEL, report.KV_FORMATS, "GB", n))]
    if kv:
        out.append(("quality", lambda n: report.quality_figure([r for b in kv for r in b["rows"]], n)))
    if kernels:
        out.append(("kernels", lambda n: report.kernels_figure([r for b in kernels for r in b["rows"]], n)))
    profiled = [r for b in _json("decode_e2e.json") or [] for r in b["rows"] if r.get("profile_us")]
    if profiled:
        out.append(("decode step", lambda n: report.step_figure(profiled, n)))
    from lowbit.report.frontier import frontier_figure

    for b in report._frontier_blocks(kv or []):
        out.append((f"frontier {b['model']}", lambda n, b=b: frontier_figure(b, n)))
    return out


def _texts(fig):
    """Every piece of text drawn: titles, axis labels, tick labels in view, annotations, legends."""
    from matplotlib.text import Text

    fig.canvas.draw()
    texts = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            texts += [t.label1 for t in axis.get_major_ticks() + axis.get_minor_ticks()
                      if t.label1.get_visible() and lo - 1e-9 * abs(hi) <= t.get_loc() <= hi * (1 + 1e-9)]
    for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]:
        texts += [*leg.get_texts(), leg.get_title()]
    texts += [t for t in fig.texts if isinstance(t, Text)]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


_DRAWN: dict[bool, list] = {}


def _draw(narrow: bool) -> list:
    """Every figure of the report in one layout, drawn once per module: (name, figure, its texts)."""
    if narrow not in _DRAWN:
        with matplotlib.rc_context(report.FONT):
            _DRAWN[narrow] = [(name, fig, _texts(fig)) for name, draw in _figures() for fig in [draw(narrow)]]
    return _DRAWN[narrow]


@pytest.fixture(scope="module", params=[False, True], ids=["wide", "narrow"])
def drawn(request):
    yield request.param, _draw(request.param)


@pytest.fixture(scope="module", autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
    _DRAWN.clear()


def test_plot_text_never_overlaps_and_stays_inside(drawn):
    _, figures = drawn
    for name, fig, texts in figures:
        renderer = fig.canvas.get_renderer()
        boxes = [(t.get_text(), t.get_window_extent(renderer).expanded(1, 1).padded(-0.5)) for t in texts]
        fb = fig.bbox
        for text, b in boxes:
            assert fb.x0 - 1 <= b.x0 and b.x1 <= fb.x1 + 1 and fb.y0 - 1 <= b.y0 and b.y1 <= fb.y1 + 1, (name, text)
        for i, (t1, b1) in enumerate(boxes):
            for t2, b2 in boxes[i + 1:]:
                assert not b1.overlaps(b2), (name, t1, t2)


def test_plots_are_true_to_scale(drawn):
    """A bar that does not start at zero (a stacked segment) stands only on a linear axis."""
    from matplotlib.container import BarContainer

    bars = 0
    for name, fig, _ in drawn[1]:
        for ax in fig.axes:
            for c in ax.containers:
                if isinstance(c, BarContainer):
                    vertical = c.orientation == "vertical"
                    bases = [p.get_y() if vertical else p.get_x() for p in c.patches]
                    scale = ax.get_yscale() if vertical else ax.get_xscale()
                    bars += len(bases)
                    assert scale == "linear" or not any(bases), name
    assert bars  # the check had bars to look at


def _plain(tick: str) -> str:
    return re.sub(r"\$\\mathdefault\{(.*)\}\$", r"\1", tick)


def test_every_numeric_axis_has_its_unit(drawn):
    for name, fig, _ in drawn[1]:
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            for axis in (ax.xaxis, ax.yaxis):
                ticks = [_plain(t.get_text()) for t in axis.get_ticklabels() if t.get_text()]
                if ticks and all(re.fullmatch(r"[\d.,\-−^{} ]+", t) for t in ticks):
                    # plain numbers: the unit is in the axis label, e.g. "KV cache (GB, log scale)"
                    assert re.search(r"\(.+\)", axis.get_label().get_text()), (name, ticks)
                else:  # the unit is in every tick label that holds a number: "40 GB", "32K tokens"
                    assert all(re.search(r"[A-Za-z]", t) for t in ticks if re.search(r"\d", t)), (name, ticks)


def test_phone_plots_are_drawn_to_be_read_on_a_phone():
    for name, fig, texts in _draw(True):
        # shown unscaled on a 420-px screen (100 CSS px per inch, the page's 12-px padding on each side)
        assert fig.get_figwidth() * 100 <= 420 - 2 * 12, name
        assert min(t.get_fontsize() for t in texts) >= 8, name  # 8 pt = 11 CSS px


# ------------------------------------------------------------------------------------------------ options


def test_report_other_units_and_context(tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", "-o", str(out), "--context", "32k", "--units", "GiB"]) == 0
    page = Page(out.read_text())
    headers = [h for t in page.tables for h in t["th"]]
    assert "total (GiB)" in headers and "The Qwen3.5 family at 32,768 tokens" in out.read_text()


@pytest.mark.parametrize("u", list(UNITS))
def test_every_unit_the_tables_accept_reaches_every_part(u):
    from lowbit.planning.simulate import simulate
    from lowbit.report.audit import audit

    sim = simulate(context=4096)
    assert f"total ({u})" in report._family_table(sim, u)
    assert f" {u}</td>" in report._audit_table(audit(), u)
    assert f" {u}" in report.summary(audit(), u, [], [])
    fig = report.family_figure(sim, u, True)
    assert any(t.get_text().endswith(f" {u}") for t in fig.axes[0].get_yticklabels())
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_report_into_a_missing_folder_is_one_error_line(tmp_path, capsys):
    assert main(["report", "-o", str(tmp_path / "nope" / "r.html")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_report_never_replaces_without_force_nor_writes_through_a_link(tmp_path, capsys):
    existing, victim, link = tmp_path / "r.html", tmp_path / "victim", tmp_path / "l.html"
    existing.write_text("mine")
    victim.write_text("precious")
    link.symlink_to(victim)
    assert main(["report", "-o", str(existing)]) == 2
    assert main(["report", "-o", str(link), "--force"]) == 2
    assert main(["report", "-o", "/dev/null", "--force"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "pass --force" in err[0] and "symbolic link" in err[1] and "character device" in err[2]
    assert existing.read_text() == "mine" and victim.read_text() == "precious" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.html", "r.html", "victim"]


def test_bonsai_reference_file_beside_lowbits_prediction():
    """PrismML's Bonsai-27B Q1_0 GGUF (3.53 GiB on its model page) beside qwen3.5-27b under the bonsai scenario."""
    from lowbit.planning.planner import plan
    from lowbit.planning.scenario import BONSAI, Scenario
    from lowbit.report.audit import audit_rows, reference_files

    (row,) = [r for r in reference_files() if r["id"] == "bonsai-27b-q1_0"]
    assert "huggingface.co/prism-ml/Bonsai-27B-gguf" in row["source"] and "model page" in row["source"]
    p = plan("qwen3.5-27b", BONSAI, context=1)
    assert {t.type for t in p.tensors if t.kind != "norms" and "ssm_conv1d" not in t.name
            and len(t.shape) > 1} == {"Q1_0"}  # every matrix 1 bit, embeddings and output head included
    assert row["file_bytes"] == p.file_bytes and row["tensor_bytes"] == p.weights_bytes
    assert row["published_bytes"] == round(3.53 * 2**30)
    assert row["holds"] and abs(row["error"]) < 0.01
    # the page's two decimals are the tensor data; the row says what the whole file adds
    assert f"{p.weights_bytes / 2**30:.2f}" == "3.53" and "tensor data" in row["differs"]
    assert Scenario.parse("bonsai") == BONSAI and BONSAI.pure and BONSAI.mix.name == "Q1_0"
    assert any("Bonsai-27B" in r[0] and r[3] == "holds" for r in audit_rows({"claims": [],
                                                                           "reference_files": [row]}, "GiB"))


def test_simulate_takes_the_bonsai_preset(capsys):
    import json as _json

    from lowbit.cli import main

    assert main(["simulate", "--models", "qwen3.5-27b", "--scenario", "today", "--scenario", "bonsai",
                 "--context", "4096", "--no-fits", "--format", "json"]) == 0
    doc = _json.loads(capsys.readouterr().out)
    bonsai = next(r for r in doc["rows"] if r["scenario"] == "bonsai")
    assert bonsai["weights_bytes"] < next(r for r in doc["rows"] if r["scenario"] == "today")["weights_bytes"] / 3
