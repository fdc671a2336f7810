"""A progress bar on stderr for long library calls (evaluation, calibration, writing a quantized file).

rich is imported when a bar is made, so modules that only may show one stay cheap to import.
"""

from __future__ import annotations


def progress_bar(enabled: bool, description: str, total: int, unit: str = "tokens"):
    """(rich Progress on stderr, task id); use as `with bar: ... bar.advance(task, n)`. Disabled: prints nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )
    task = progress.add_task(description, total=total)
    return progress, task


def notice(text: str) -> None:
    """One line on stderr about something the library did on the user's behalf (a network read)."""
    import sys

    print(f"lowbit: {text}", file=sys.stderr)
