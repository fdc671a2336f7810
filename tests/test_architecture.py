"""The house rules, checked: layers (import-linter's contract in pyproject.toml), no imports of commands/, and
lowbit's own modules imported at the top of a module, never hidden in a function."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lowbit"
# Heavy optional dependencies stay lazy so that `lowbit simulate` answers without them.
LAZY = {"torch", "transformers", "triton", "matplotlib", "safetensors", "scipy"}


def test_layers_contract_is_kept():
    importlinter = pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def _py_files(*dirs):
    for d in dirs:
        yield from sorted((ROOT / d).rglob("*.py"))


def test_nothing_imports_the_commands_but_the_cli():
    offenders = []
    for path in _py_files("src", "tests", "benchmarks"):
        if path.name == "cli.py" or path.parent.name == "commands":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.startswith("lowbit.commands")]
    assert offenders == []


def _module_file(module: str) -> pathlib.Path | None:
    base = ROOT / "src" / pathlib.Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _top_level_imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _needs_lazy_dependency(module: str, seen: set[str]) -> bool:
    """True when importing `module` imports torch, transformers, triton or matplotlib (directly or through lowbit)."""
    if module in seen:
        return False
    seen.add(module)
    path = _module_file(module)
    if path is None:
        return False
    for name in _top_level_imports(path):
        if name.split(".")[0] in LAZY:
            return True
        if name.split(".")[0] == "lowbit" and _needs_lazy_dependency(name, seen):
            return True
    return False


def test_lowbit_modules_are_imported_at_the_top():
    """An import inside a function hides an arrow; it is allowed only to keep a heavy dependency lazy."""
    hidden = []
    for path in _py_files("src"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lowbit" \
                        and not _needs_lazy_dependency(node.module, set()):
                    hidden.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
    assert hidden == []
