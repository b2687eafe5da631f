"""Catalog text shown to a person: control and bidi characters replaced, long strings cut, the
same in Python (the report, the CLI) and in a Spark expression (the reasons)."""
from __future__ import annotations

from pyspark.sql import functions as F

from recsys_spark.core.display import inert_column, inert_text

HOSTILE = [
    "Toy Story (1995)",
    "<script>alert(1)</script> stays text",  # markup is the HTML writer's to escape
    "red \x1b[31malert\x07 and\ttab\nnewline\r",
    "\u202eevil\u202c \u2066isolated\u2069 \u061c mark",
    "C1 \x85\x9b control",
    "\u05e9\u05dc\u05d5\u05dd right-to-left text stays",  # Hebrew letters are not controls
    "y" * 1_000_000,
    "",
]


def test_inert_text_replaces_what_acts_on_a_screen_and_cuts_long_strings():
    shown = [inert_text(text, 50) for text in HOSTILE]
    assert shown[0] == "Toy Story (1995)" and shown[1] == HOSTILE[1]
    assert shown[2] == "red \ufffd[31malert\ufffd and\ufffdtab\ufffdnewline\ufffd"
    assert shown[3] == "\ufffdevil\ufffd \ufffdisolated\ufffd \ufffd mark"
    assert shown[4] == "C1 \ufffd\ufffd control"
    assert shown[5] == HOSTILE[5]
    assert shown[6] == "y" * 50 + "… (+999,950 chars)"
    assert inert_text(None) == "" and inert_text(42) == "42"
    assert inert_text("bad \udcff byte") == "bad \ufffd byte"  # a lone surrogate (surrogateescape)


def test_inert_column_is_inert_text_inside_a_job(spark):
    frame = spark.createDataFrame([(t,) for t in HOSTILE], "text string")
    got = [r[0] for r in frame.select(inert_column(F.col("text"), 50)).collect()]
    assert got == [inert_text(text, 50) for text in HOSTILE]
