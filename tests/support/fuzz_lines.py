"""A seeded file of malformed event lines of every kind, mixed with good ones, and what a correct
ingest must make of each line.

Every line that still carries an ``event_id`` gets a unique one naming its kind, so a test can
check line by line where it landed. ``expect`` per kind: ``good`` (must reach silver/events),
``bad`` (must be quarantined), ``duplicate`` (a copy of a good line: counted, not stored twice),
``either`` (a judgement call: e.g. a numeric user id; only the accounting is checked).
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

GOOD_TYPES = ("view", "click", "cart", "purchase")


def good_record(k: int, rng: random.Random, prefix: str = "good") -> dict:
    return {
        "user_id": f"user-{rng.randrange(40)}",
        "item_id": f"item-{rng.randrange(60)}",
        "event_type": rng.choice(GOOD_TYPES),
        "timestamp": f"2023-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:"
        f"{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
        "session_id": f"s{rng.randrange(1000)}",
        "event_id": f"{prefix}-{k}",
    }


def dumps(record) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def with_field(name: str, value) -> Callable[[dict, random.Random], bytes]:
    def make(record: dict, rng: random.Random) -> bytes:
        return dumps({**record, name: value})

    return make


def without(*names: str) -> Callable[[dict, random.Random], bytes]:
    def make(record: dict, rng: random.Random) -> bytes:
        return dumps({k: v for k, v in record.items() if k not in names})

    return make


def truncated(record: dict, rng: random.Random) -> bytes:
    line = dumps(record)
    return line[: rng.randrange(1, len(line) - 1)]


def broken(record: dict, rng: random.Random) -> bytes:
    line = dumps(record).decode("utf-8")
    mutations = [
        lambda s: s.replace('":', '" ', 1),  # missing colon
        lambda s: s.replace(",", ",,", 1),  # double comma
        lambda s: s[:-1] + ",}",  # trailing comma
        lambda s: s.replace('"', "", 2),  # unquoted key
    ]
    return rng.choice(mutations)(line).encode("utf-8")


def delimited(sep: str) -> Callable[[dict, random.Random], bytes]:
    def make(record: dict, rng: random.Random) -> bytes:
        return sep.join(str(v) for v in record.values()).encode("utf-8")

    return make


def json_with_semicolons(record: dict, rng: random.Random) -> bytes:
    return dumps(record).replace(b",", b";")


def raw_control_chars(record: dict, rng: random.Random) -> bytes:
    # Unescaped control characters inside a JSON string are invalid JSON.
    return dumps({**record, "user_id": "x"}).replace(b'"x"', b'"u\x01\x02\x1b"')


def nul_byte(record: dict, rng: random.Random) -> bytes:
    return dumps(record).replace(b'{"', b'{\x00"', 1)


def invalid_utf8_outside_strings(record: dict, rng: random.Random) -> bytes:
    return b"\xff\xfe" + dumps(record)


def invalid_utf8_in_id(record: dict, rng: random.Random) -> bytes:
    return dumps({**record, "user_id": "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"u\xc3\x28\xa0\xa1")


def invalid_utf8_in_event_type(record: dict, rng: random.Random) -> bytes:
    return dumps({**record, "event_type": "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"vi\xffew")


def not_an_object(record: dict, rng: random.Random) -> bytes:
    return rng.choice([b"[1, 2, 3]", b"42", b'"just a string"', b"null", b"true", b"[]"])


def huge(name: str, size: int) -> Callable[[dict, random.Random], bytes]:
    def make(record: dict, rng: random.Random) -> bytes:
        return dumps({**record, name: "x" * size})

    return make


@dataclass(frozen=True)
class Kind:
    name: str
    expect: str  # good | bad | either
    make: Callable[[dict, random.Random], bytes]
    keeps_event_id: bool = True


KINDS: tuple[Kind, ...] = (
    # broken JSON, truncated lines, wrong delimiters
    Kind("broken_json", "bad", broken),
    Kind("truncated_line", "bad", truncated, keeps_event_id=False),
    Kind("csv_style_line", "bad", delimited(","), keeps_event_id=False),
    Kind("tab_separated_line", "bad", delimited("\t"), keeps_event_id=False),
    Kind("pipe_separated_line", "bad", delimited("|"), keeps_event_id=False),
    Kind("semicolons_in_json", "bad", json_with_semicolons, keeps_event_id=False),
    Kind("not_an_object", "bad", not_an_object, keeps_event_id=False),
    Kind("trailing_garbage", "either", lambda r, g: dumps(r) + b"} trailing"),
    Kind("empty_object", "bad", lambda r, g: b"{}", keeps_event_id=False),
    # missing columns
    Kind("missing_user_id", "bad", without("user_id")),
    Kind("missing_item_id", "bad", without("item_id")),
    Kind("missing_event_type", "bad", without("event_type")),
    Kind("missing_timestamp", "bad", without("timestamp")),
    Kind("null_user_id", "bad", with_field("user_id", None)),
    Kind("blank_item_id", "bad", with_field("item_id", "   ")),
    # wrong types
    Kind("event_type_number", "bad", with_field("event_type", 123)),
    Kind("event_type_list", "bad", with_field("event_type", ["view"])),
    Kind("timestamp_bool", "bad", with_field("timestamp", True)),
    Kind("timestamp_object", "bad", with_field("timestamp", {"seconds": 1680000000})),
    Kind("value_text", "bad", with_field("value", "five stars")),
    Kind("value_list", "bad", with_field("value", [1, 2])),
    Kind("value_nan", "bad", lambda r, g: dumps(r)[:-1] + b', "value": NaN}'),
    Kind("rating_without_value", "bad", with_field("event_type", "rating")),
    Kind("user_id_number", "either", with_field("user_id", 123456)),
    Kind("user_id_object", "either", with_field("user_id", {"id": "user-1"})),
    Kind("item_id_list", "either", with_field("item_id", ["item-1", "item-2"])),
    Kind("user_id_bool", "either", with_field("user_id", True)),
    # huge fields (ingest.max_field_chars defaults to 10,000)
    Kind("huge_user_id", "bad", huge("user_id", 20_000)),
    Kind("huge_session_id", "bad", huge("session_id", 50_000)),
    Kind("huge_unknown_field", "either", huge("payload", 60_000)),
    # control characters
    Kind("raw_control_chars", "bad", raw_control_chars),
    Kind("nul_byte", "bad", nul_byte),
    Kind("escaped_control_chars_in_id", "either", with_field("user_id", "u\u0001\u0007\u001b")),
    Kind("newline_escaped_in_id", "either", with_field("item_id", "item\nwith\nnewlines")),
    # invalid UTF-8
    Kind("invalid_utf8_outside_strings", "bad", invalid_utf8_outside_strings),
    Kind("invalid_utf8_in_id", "either", invalid_utf8_in_id),
    Kind("invalid_utf8_in_event_type", "bad", invalid_utf8_in_event_type),
    # unknown values
    Kind("unknown_event_type", "bad", with_field("event_type", "wishlist")),
    Kind("empty_event_type", "bad", with_field("event_type", "")),
    Kind("unparsable_timestamp", "bad", with_field("timestamp", "not a date")),
    Kind("impossible_date", "bad", with_field("timestamp", "2023-02-30T10:00:00Z")),
    Kind("month_13", "bad", with_field("timestamp", "2023-13-01 00:00:00")),
    # far past and far future
    Kind("epoch_zero", "bad", with_field("timestamp", 0)),
    Kind("epoch_negative", "bad", with_field("timestamp", -86400)),
    Kind("year_1970", "bad", with_field("timestamp", "1970-01-01T00:00:00Z")),
    Kind("year_0001", "bad", with_field("timestamp", "0001-01-01T00:00:00Z")),
    Kind("year_2999", "bad", with_field("timestamp", "2999-01-01T00:00:00Z")),
    Kind("year_9999", "bad", with_field("timestamp", "9999-12-31T23:59:59Z")),
    Kind("epoch_far_future_seconds", "bad", with_field("timestamp", 99_999_999_999)),
    Kind("epoch_far_future_millis", "bad", with_field("timestamp", 10_000_000_000_000)),
    Kind("epoch_huge", "bad", with_field("timestamp", 10**30)),
)


@dataclass
class FuzzManifest:
    """What was written: line counts by kind and outcome, and the event ids per outcome."""

    path: Path
    lines: int = 0  # non-blank lines, what ingest counts as rows_in
    blank_lines: int = 0
    by_kind: Counter = field(default_factory=Counter)
    good_ids: set = field(default_factory=set)
    bad_ids: set = field(default_factory=set)
    either_lines: int = 0
    duplicates: int = 0

    @property
    def malformed(self) -> int:
        return self.lines - len(self.good_ids) - self.duplicates


def write_fuzz_file(folder: Path, n_malformed: int = 10_000, n_good: int = 2_000, seed: int = 0) -> FuzzManifest:
    """``folder/fuzz.jsonl``: ``n_malformed`` lines cycling over KINDS (plus exact and
    re-serialised duplicates of good lines, counted among the malformed), ``n_good`` good lines,
    a few blank lines and CRLF endings, shuffled with ``seed``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = FuzzManifest(path=folder / "fuzz.jsonl")
    good_lines = []
    for k in range(n_good):
        record = good_record(k, rng)
        good_lines.append(dumps(record))
        manifest.good_ids.add(record["event_id"])
    entries: list[bytes] = list(good_lines)
    n_duplicates = n_malformed // 20
    for d in range(n_duplicates):
        source = rng.randrange(n_good)
        if d % 2:
            entries.append(good_lines[source])
        else:  # same event, other formatting: the key (event_id) makes it a duplicate
            entries.append(json.dumps(json.loads(good_lines[source]), indent=None, separators=(", ", " : ")).encode())
        manifest.by_kind["duplicate"] += 1
    manifest.duplicates = n_duplicates
    for k in range(n_malformed - n_duplicates):
        kind = KINDS[k % len(KINDS)]
        record = good_record(k, rng, prefix=f"{kind.name}")
        entries.append(kind.make(record, rng))
        manifest.by_kind[kind.name] += 1
        if kind.expect == "either":
            manifest.either_lines += 1
        elif kind.keeps_event_id:
            manifest.bad_ids.add(record["event_id"])
    rng.shuffle(entries)
    with manifest.path.open("wb") as out:
        for i, line in enumerate(entries):
            assert b"\n" not in line and b"\r" not in line, "a fuzz line must stay one line"
            out.write(line + (b"\r\n" if i % 7 == 0 else b"\n"))
            if i % 997 == 0:
                out.write(b"   \n")
                manifest.blank_lines += 1
    manifest.lines = len(entries)
    return manifest
