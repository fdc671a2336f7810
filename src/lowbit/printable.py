"""Text read from files is data: before it reaches a terminal, control characters become visible escapes.

A GGUF's metadata, a tensor name, a file name or a config value can hold ESC sequences (which recolour,
retitle or clear a terminal), carriage returns that overwrite a line, bidirectional overrides that reorder
what is shown, or newlines that would turn one error line into several. `printable` shows each as its
Python escape (`\\x1b`, `\\u202e`), so what is printed is what the file holds, and nothing else happens.
(rich markup is a separate matter: render.py and the commands escape it where rich renders text.)
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; the bidirectional embeddings, overrides and isolates; line and paragraph separators;
# lone surrogates (undecodable bytes of a file name: printing them would raise UnicodeEncodeError)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff"
                     "\ud800-\udfff]")


def _escape(m: re.Match) -> str:
    c = m.group()
    return repr(c)[1:-1] if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: object, keep_newlines: bool = False, keep_tabs: bool = True) -> str:
    """`text` with every control character shown as an escape (newlines kept if asked, tabs as spaces)."""
    s = text if isinstance(text, str) else str(text)
    if keep_tabs:
        s = s.replace("\t", " ")
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in s.split("\n"))
    return _UNSAFE.sub(_escape, s)


def markup_safe(text: object) -> str:
    """`printable(text)` with rich markup escaped, for text that rich renders ("[/x]" prints as written)."""
    from rich.markup import escape  # rich: only where rich prints

    return escape(printable(text))

