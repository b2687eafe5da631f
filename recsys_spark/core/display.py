"""Text written by strangers (catalog titles, descriptions, tags, reasons built from them) made
safe to show a person: in the run report, on a terminal (``recsys-spark recommend``) or in a log.

The tables keep what was received; only what is *shown* goes through ``inert_text`` (inside a
Spark job, ``inert_column``). It replaces control characters (C0, DEL, C1: a terminal escape
sequence starts with one), the bidirectional embedding, override and isolate controls (which
reorder the text around them, as in "Trojan Source") and lone surrogates with U+FFFD, and cuts
very long strings, saying by how much. HTML escaping stays with the HTML writer
(``html.escape``): this text is plain, not markup.
"""
from __future__ import annotations

import re
from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F

REPLACEMENT = "\ufffd"
# C0 controls (tab and newline included: one line per value), DEL, C1 controls, the bidi
# embeddings/overrides (U+202A-U+202E), isolates (U+2066-U+2069), the Arabic letter mark, and
# lone surrogates (which no UTF-8 file can hold).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u061c\ud800-\udfff]")
# The same set in Java's regex syntax (Spark strings never hold a lone surrogate).
JAVA_UNSAFE = "[\\x00-\\x1f\\x7f-\\x9f\\x{202A}-\\x{202E}\\x{2066}-\\x{2069}\\x{061C}]"
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


def inert_column(column: Column, limit: int = DEFAULT_LIMIT) -> Column:
    """``inert_text`` as a Spark expression, for text built inside a job from catalog text (the
    reasons of gold/recommendations): the same replacements and the same cut."""
    clean = F.regexp_replace(F.substring(column, 1, limit), JAVA_UNSAFE, REPLACEMENT)
    over = F.length(column) - F.lit(limit)
    return F.when(over > 0, F.concat(clean, F.lit("… (+"), F.format_number(over, 0), F.lit(" chars)"))).otherwise(clean)
