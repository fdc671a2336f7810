"""The HTML report is built whole (atomically), with its plots and the audit."""

from lowbit.cli import main


def test_report_builds_a_self_contained_page(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "-o", str(out), "--context", "32k"]) == 0
    page = out.read_text()
    from lowbit.report.quality import kv_quality

    from importlib import resources

    kernels = resources.files("lowbit.report").joinpath("kernels.json").is_file()
    # family bars and KV-vs-context always; the quality scatter and the kernel speedups when their measurements ship
    assert page.count("data:image/png;base64,") == 2 + (kv_quality() is not None) + kernels
    if kernels:
        assert "GPU decode attention over the packed cache, measured" in page and "H100" in page
    assert "qwen3.5-397b-a17b" in page and "81.43GB for KV cache" in page and "32,768 tokens" in page
    assert not (tmp_path / "r.html.tmp").exists()


def test_report_into_a_missing_folder_is_one_error_line(tmp_path, capsys):
    assert main(["report", "-o", str(tmp_path / "nope" / "r.html")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_report_accepts_every_unit_the_tables_do(tmp_path):
    from lowbit.report.render import UNITS

    for u in UNITS:
        assert main(["report", "-o", str(tmp_path / f"{u}.html"), "--units", u, "--context", "4k"]) == 0
