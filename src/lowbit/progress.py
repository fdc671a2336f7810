"""A progress bar on stderr for long library calls (evaluation, calibration, writing a quantized file).

rich is imported when a bar is made, so modules that only may show one stay cheap to import.
"""

from __future__ import annotations

from lowbit.printable import markup_safe


def progress_bar(enabled: bool, description: str, total: int, unit: str = "tokens"):
    """(rich Progress on stderr, task id); use as `with bar: ... bar.advance(task, n)`. Disabled: prints nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not enabled or not console.is_terminal,  # a pipe or a log gets no bar, not even its blank line
    )
    task = progress.add_task(markup_safe(description), total=total)  # descriptions name files: data, not markup
    return progress, task
