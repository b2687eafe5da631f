"""Text written by strangers (catalog titles, descriptions, tags, reasons built from them) made
safe to show a person: in the run report, on a terminal (``recsys-spark recommend``) or in a log.

The tables keep what was received; only what is *shown* goes through ``inert_text``. It
replaces control characters (C0, DEL, C1: a terminal escape sequence starts with one) and the
bidirectional embedding, override and isolate controls (which reorder the text around them,
as in "Trojan Source") with U+FFFD, replaces lone surrogates (invalid UTF-8 decoded with
``surrogateescape``) the same way, and cuts very long strings, saying by how much. HTML
escaping stays with the HTML writer (``html.escape``): this text is plain, not markup.
"""
from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
# C0 controls (tab and newline included: one line per value), DEL, C1 controls, the bidi
# embeddings/overrides (U+202A-U+202E), isolates (U+2066-U+2069), the Arabic letter mark, and
# lone surrogates (which no UTF-8 file can hold).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u061c\ud800-\udfff]")
DEFAULT_LIMIT = 200


def inert_text(value: Any, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as one line of plain text that cannot act on the screen showing it, at most
    ``limit`` characters of the original followed by "… (+N chars)" when it was longer."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit if limit and len(text) > limit else 0
    if cut:
        text = text[:limit]
    text = UNSAFE.sub(REPLACEMENT, text)
    return f"{text}… (+{cut:,} chars)" if cut else text
