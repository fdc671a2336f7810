"""The README's examples run as printed: every command of its ```bash blocks (install lines aside) and every
```python block, in a fresh process, in one scratch folder, in the README's order; a non-zero exit fails.

A line whose comment says "not run by the test suite" is left out (it says how long it takes instead); a
command that needs an extra or a real model that is not installed skips with the line that installs it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_RUN = "not run by the test suite"
INSTALL = ("pip", "make")  # install lines: what the examples need, not examples
# The one error line of a command whose extra or real model is missing (lowbit/cli.py, lowbit/models/local.py)
MISSING = re.compile(r"^lowbit: error: (`lowbit [^`]+` needs \w+; install it with: .*|\S+ is not installed.*)$")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.S | re.M)


def _commands() -> list[str]:
    """Each runnable command line (a `&&` chain stays one line), comments stripped."""
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            if NOT_RUN in line:
                continue
            code = re.sub(r"(^|\s)#.*$", "", line).strip()  # the comment after a command
            parts = [p.strip() for p in code.split("&&") if p.strip()]
            parts = [p for p in parts if shlex.split(p)[0] not in INSTALL]
            if parts:
                out.append(" && ".join(parts))
    return out


def _left_out() -> list[str]:
    return [line for block in _blocks("bash") for line in block.splitlines() if NOT_RUN in line]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


def _env() -> dict[str, str]:
    env = subprocess_env()
    env.pop("COLUMNS", None)
    return env


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def _check(r: subprocess.CompletedProcess, what: str) -> None:
    err = r.stderr.strip().splitlines()
    if r.returncode == 2 and len(err) == 1 and MISSING.match(err[0]):
        pytest.skip(err[0])
    assert r.returncode == 0, f"{what}\nexit {r.returncode}\n{r.stderr[-3000:]}"


def test_the_readme_has_examples_and_marks_the_few_it_leaves_out():
    commands = _commands()
    assert len(commands) >= 15 and any(c.startswith("lowbit simulate") for c in commands)
    assert not any(re.search(r"path/to|model\.gguf|<\w+>", c) for c in commands)  # no placeholders
    left_out = _left_out()
    assert len(left_out) <= 2
    assert all(re.search(r"~\s*\d+ (s|min)", line) for line in left_out)  # each says how long it takes


@pytest.mark.parametrize("command", _commands())
def test_readme_command_runs(command, scratch):
    for part in command.split("&&"):
        args = shlex.split(part)
        assert args[0] == "lowbit", part
        _check(_run([sys.executable, "-m", "lowbit.cli", *args[1:]], scratch), part)


@pytest.mark.parametrize("block", _blocks("python"), ids=lambda b: b.splitlines()[-1][:40])
def test_readme_python_runs(block, scratch):
    _check(_run([sys.executable, "-c", block], scratch), block)
