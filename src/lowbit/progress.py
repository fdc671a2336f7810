"""Progress bars on stderr for long library calls (reading a GGUF, loading a model, calibration,
evaluation, quantization), shown only when stderr is a terminal: piped or redirected output, and
JSON on stdout, stay clean. `quiet()` silences every bar inside it (a caller that asked for none).

rich is imported when a bar is made, so modules that only may show one stay cheap to import.
"""

from __future__ import annotations

import functools
import sys
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from lowbit.printable import markup_safe


_ALLOWED: ContextVar[bool] = ContextVar("lowbit_progress", default=True)


@contextmanager
def quiet(when: bool = True):
    """No bars inside this block (when `when`)."""
    token = _ALLOWED.set(False) if when else None
    try:
        yield
    finally:
        if token is not None:
            _ALLOWED.reset(token)


def honours_progress(fn):
    """Decorator for a function with a `progress` parameter: progress=False silences every bar shown
    inside the call, those of the loaders it calls included."""
    sig = inspect.signature(fn)
    default = sig.parameters["progress"].default

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with quiet(not sig.bind_partial(*args, **kwargs).arguments.get("progress", default)):
            return fn(*args, **kwargs)

    return wrapper


def _console():
    from rich.console import Console

    return Console(stderr=True)


def progress_bar(enabled: bool, description: str, total: int | None, unit: str = "tokens"):
    """(rich Progress on stderr, task id); use as `with bar: ... bar.advance(task, n)`.

    Shown when `enabled`, not inside `quiet()`, and stderr is a terminal; otherwise it prints nothing.
    `total=None` is a step of unknown length: a pulsing bar with the time elapsed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = _console()
    shown = bool(enabled) and _ALLOWED.get() and console.is_terminal
    columns = [TextColumn("{task.description}"), BarColumn()]
    if total is not None:
        columns += [MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    else:
        columns += [TimeElapsedColumn()]
    progress = Progress(*columns, console=console, transient=True, disable=not shown)
    task = progress.add_task(markup_safe(description), total=total)  # descriptions name files: data, not markup
    return progress, task


@contextmanager
def step(enabled: bool, description: str):
    """A bar for a step of unknown length (building a model, a tokenizer, assembling a file)."""
    bar, _ = progress_bar(enabled, description, None)
    with bar:
        yield


def notice(text: str) -> None:
    """One line on stderr about something the library did on the user's behalf (a network read)."""
    print(f"lowbit: {text}", file=sys.stderr)
