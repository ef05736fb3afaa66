"""Strict JSON at the edges (dtf_app.jsonsafe) and escaped log values (dtf_app.logsafe)."""

from __future__ import annotations

import json
import logging
import math
import random
from typing import Any

import pytest

from dtf_app import jsonsafe
from dtf_app.jsonsafe import MAX_JSON_DEPTH, JsonInputError
from dtf_app.logsafe import EscapingFilter, escape


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _random_doc(rnd: random.Random, budget: list[int], level: int = 0) -> Any:
    # Strings full of brackets, quotes and backslashes: the scan must not count what is inside them.
    text = "".join(rnd.choice(['[', ']', '{', '}', '"', '\\', 'a', '\n', '\\"', 'é']) for _ in range(rnd.randint(0, 6)))
    budget[0] -= 1
    roll = rnd.random()
    if budget[0] <= 0 or roll < 0.25:
        return text
    if roll < 0.6:
        return [_random_doc(rnd, budget, level + 1) for _ in range(rnd.randint(0, 3))]
    return {f"{text}{i}": _random_doc(rnd, budget, level + 1) for i in range(rnd.randint(0, 3))}


def test_nesting_depth_matches_the_parsed_depth() -> None:
    rnd = random.Random(7)
    for _ in range(1500):
        doc = _random_doc(rnd, [rnd.randint(1, 120)])
        text = json.dumps(doc, ensure_ascii=rnd.random() < 0.5)
        expected = _depth(doc)
        limit = rnd.choice([3, 8, 30])
        got = jsonsafe.nesting_depth(text, limit=limit)
        if text.count("[") + text.count("{") > limit:
            assert got == min(expected, limit + 1), text[:300]
        else:  # the cheap shortcut only promises a bound at or under the limit
            assert expected <= got <= limit
        assert jsonsafe.nesting_depth(text.encode(), limit=limit) == got


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000, "[" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000, "[{" * 40 + "}]" * 40,
])
def test_deep_documents_are_refused_before_parsing(text: str) -> None:
    with pytest.raises(JsonInputError) as err:
        jsonsafe.loads(text)
    assert err.value.code == "too_deep" and f"the limit is {MAX_JSON_DEPTH}" in err.value.message


def test_the_depth_limit_is_exact() -> None:
    assert jsonsafe.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(JsonInputError):
        jsonsafe.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    # Brackets inside strings do not count.
    assert jsonsafe.loads(json.dumps(["[" * 1000, {"k": "{" * 1000}])) == ["[" * 1000, {"k": "{" * 1000}]


def test_unbalanced_quotes_do_not_make_the_scan_quadratic() -> None:
    # 2 MB of escaped quotes with no closing quote: a naive string regex retries at every quote.
    with pytest.raises(JsonInputError) as err:
        jsonsafe.loads('["' + '\\"' * 1_000_000 + "[" * 100)
    assert err.value.code == "invalid_json"


@pytest.mark.parametrize(("text", "path"), [
    ('{"a": NaN}', "a"), ('[1, Infinity]', "tasks[1]"), ('{"x": {"y": [-Infinity]}}', "x.y[0]"),
    ('{"big": 1e999}', "big"), ('{"tasks": [{}, {"name": "\\ud800"}]}', "tasks[1].name"),
    ('[{"config": {"command": ["a", "\\udfff"]}}]', "tasks[0].config.command[1]"),
    ('{"env": {"\\udc80": "v"}}', 'env["\\udc80"]'), ('"\\ud800"', "the document"),
])
def test_non_finite_numbers_and_lone_surrogates_are_refused_with_their_path(text: str, path: str) -> None:
    with pytest.raises(JsonInputError) as err:
        jsonsafe.loads(text, root="tasks")
    assert err.value.path == path or (path == "the document" and err.value.path == "the document")
    assert err.value.message.startswith(path + ":")
    err.value.message.encode("ascii")  # printable anywhere, even when the bad key is in the path


def test_valid_documents_pass_unchanged() -> None:
    doc = {"emoji": "😀", "n": [1, 2.5, -3e10, True, None], "nested": {"a": [{"b": "é"}]}}
    assert jsonsafe.loads('"\\ud83d\\ude00"') == "😀"  # an escaped surrogate pair is one valid character
    assert jsonsafe.loads(json.dumps(doc)) == doc
    assert jsonsafe.loads(json.dumps(doc, ensure_ascii=False).encode()) == doc
    with pytest.raises(JsonInputError, match="not valid UTF-8"):
        jsonsafe.loads(b'"\xff"')
    with pytest.raises(JsonInputError, match="line 1 column 2"):
        jsonsafe.loads("{oops")


def test_dumps_is_always_strict_json() -> None:
    value = {"nan": math.nan, "inf": [math.inf, -math.inf], "s": "a\ud800b", "\udc00k": 1, "ok": 1.5}
    text = jsonsafe.dumps(value)
    text.encode("utf-8")
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert parsed == {"nan": None, "inf": [None, None], "s": "a\ufffdb", "\ufffdk": 1, "ok": 1.5}
    assert jsonsafe.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'  # the normal path is plain json.dumps


def test_logged_arguments_cannot_start_a_line(caplog: pytest.LogCaptureFixture) -> None:
    assert escape("a\nb\r\x1b[31m\u2028") == "a\\nb\\r\\x1b[31m\\u2028"
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "task %s %r %d %.1f", (
        "x\nFAKE", {"k": "v\nw"}, 3, 2.5), None)
    EscapingFilter().filter(record)
    assert record.getMessage() == "task x\\nFAKE {'k': 'v\\nw'} 3 2.5"
    bare = logging.LogRecord("t", logging.INFO, __file__, 1, "pre\nformatted", None, None)
    EscapingFilter().filter(bare)
    assert bare.getMessage() == "pre\\nformatted"


def test_traceback_lines_are_indented_so_an_exception_message_cannot_start_a_line() -> None:
    from dtf_app.logsafe import EscapingFormatter

    try:
        raise ValueError("boom\n00:00:00 ERROR dtf.api: forged")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    lines = EscapingFormatter("%(levelname)s %(message)s").format(record).splitlines()
    assert lines[0] == "ERROR failed" and all(line.startswith("  ") for line in lines[1:])
    assert "  00:00:00 ERROR dtf.api: forged" in lines
