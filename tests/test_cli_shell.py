"""The CLI shell itself: version, groups without a subcommand, missing optional dependencies, the device catalog."""

import subprocess
import sys

import pytest

import lowbit
from lowbit import devices
from lowbit.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lowbit {lowbit.__version__}"


def test_group_without_subcommand_is_one_line_on_stderr(capsys):
    assert main(["eval"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "distortion, kv, weights" in err


@pytest.mark.parametrize("argv, missing", [
    (["eval", "kv", "--model", "smollm2-135m"], "torch"),
    (["eval", "distortion", "--dim", "64"], "torch"),
    (["report", "-o", "never-written.html"], "matplotlib"),
])
def test_missing_extra_is_one_line_naming_the_extra(argv, missing, tmp_path):
    # Block the module as an uninstalled one would be: `import torch` raises ModuleNotFoundError.
    code = (f"import sys; sys.modules[{missing!r}] = None; from lowbit.cli import main; "
            f"sys.exit(main({argv!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert f"needs {missing}" in r.stderr and "pip install -e '.[eval]'" in r.stderr
    assert not (tmp_path / "never-written.html").exists()


def test_every_device_names_its_source_and_common_cards_exist():
    names = {d.name for d in devices.catalog()} | {a for d in devices.catalog() for a in d.aliases}
    for wanted in ("rtx-3090", "rtx-4080", "rtx-4070", "l4", "t4", "l40s", "a10", "m1-16gb", "m2-24gb",
                   "m3-pro-36gb", "rx-7900-xtx"):
        assert wanted in names
    assert all(d.source for d in devices.catalog())
    assert all(row["source"] for row in devices.listing())
