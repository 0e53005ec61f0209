"""Hypothesis strategies for what a tenant's worker may print on stdout or into its termination message.

Shared by the unit test (the parsers never raise; the planner's status validates) and the cluster
test (the real API server accepts that status). Arbitrary text finds little on its own, so the
strategies aim on purpose at what broke before: deep nesting (RecursionError), 4,000-digit integers
(OverflowError in float()), integers beyond int64 (refused by the API server), NaN/Infinity tokens,
control characters and ANSI escapes (a terminal running `kubectl describe`), lone surrogates (not
UTF-8), huge strings, and well-formed progress/result records carrying extreme values.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

INT64_MAX = 2**63 - 1

ESCAPES = [
    "\x1b[31m", "\x1b[0m", "\x1b[2J", "\x1b[1;1H", "\x1b]0;owned\x07", "\x1b]8;;http://x\x1b\\", "\x1b(B",
    "\x9b31m", "\x1b", "\x07", "\x00", "\x7f", "\x85", "\r", "\t", "\v", "\f", "\u2028", "\u202e", "\u2066",
]  # fmt: skip
SURROGATES = ["\ud800", "\udfff", "\udc80"]  # lone: not encodable as UTF-8

controls = st.characters(max_codepoint=0x9F)
pieces = st.one_of(
    st.text(max_size=12),
    st.text(controls, max_size=6),
    st.sampled_from(ESCAPES),
    st.sampled_from(SURROGATES),
)
nasty_text = st.lists(pieces, max_size=12).map("".join)
huge_text = st.builds(lambda piece, n: (piece or "x") * n, nasty_text, st.integers(1_000, 40_000))
any_text = st.one_of(nasty_text, nasty_text, huge_text)

# Number tokens as they may stand in a JSON line, written out (json.dumps could not write most).
number_tokens = st.one_of(
    st.integers().map(str),
    st.integers(INT64_MAX - 2, 2**80).map(str),
    st.integers(-(2**80), -INT64_MAX).map(str),
    st.floats().map(lambda f: json.dumps(f)),  # NaN, Infinity, -Infinity included
    st.sampled_from(["1e308", "-1e308", "1e309", "5e-324", "1e-400", "3.0", "3.7", "-0.0", "0", "-1"]),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "true", "false", "null", '"12"', "[]", "{}"]),
    st.integers(20, 4_000).map(lambda n: "9" * n),  # json parses it; float() overflows past 309 digits
    st.integers(4_301, 6_000).map(lambda n: "1" * n),  # beyond Python's int-str limit: ValueError
)


def _nested(depth: int, opener: str) -> str:
    closer = "]" if opener == "[" else "}"
    inner = '{"a":' if opener == "{" else "["
    return (inner * depth) + "1" + (closer * depth)


nesting = st.builds(_nested, st.integers(100, 20_000), st.sampled_from(["[", "{"]))
values = st.one_of(number_tokens, nesting, any_text.map(json.dumps), st.sampled_from(["", "{", '"'])).map(str)


def record(kind: str, keys: list[str]) -> st.SearchStrategy[str]:
    """A JSON line of ``kind`` whose fields are arbitrary tokens (valid JSON or not)."""
    fields = st.dictionaries(st.sampled_from([*keys, "event", "x"]), values, max_size=len(keys) + 1)
    return fields.map(
        lambda f: "{" + ", ".join([f'"event": "{kind}"'] + [f'"{k}": {v}' for k, v in f.items()]) + "}"
    )


def _extreme(kind: str, keys: list[str]):
    extreme = st.one_of(
        st.integers(-(2**100), 2**100), st.floats(), st.booleans(), st.none(), any_text, st.just(2**64)
    )
    return st.dictionaries(st.sampled_from(keys), extreme).map(
        lambda f: json.dumps({"event": kind, **f}, allow_nan=True)
    )


PROGRESS_KEYS = ["epoch", "epochs", "step", "steps", "loss", "lr", "images_per_second", "eta_seconds"]
RESULT_KEYS = ["checkpoint", "loss", "miou", "epochs", "steps"]

progress_lines = st.one_of(record("progress", PROGRESS_KEYS), _extreme("progress", PROGRESS_KEYS))
result_lines = st.one_of(record("result", RESULT_KEYS), _extreme("result", RESULT_KEYS))
lines = st.one_of(
    progress_lines,
    result_lines,
    any_text,
    nesting,
    nesting.map(lambda n: '{"event": "progress", "loss": ' + n + "}"),
    st.sampled_from(['{"event": "progress"', "{", "[]", '"event"', "{}"]),
)
log_tails = st.lists(lines, max_size=8)
termination_messages = st.lists(lines, max_size=6).map("\n".join)
