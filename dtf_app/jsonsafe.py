"""Strict JSON at every edge: one parser for what comes in, one serialiser for what goes out.

Python's ``json`` module is lenient where the outside world is strict, and each leniency has hurt:

- it accepts ``NaN``, ``Infinity`` and ``-Infinity`` (and turns ``1e999`` into ``inf``) and writes them
  back as bare ``NaN``, which no strict client can parse;
- it decodes ``"\\ud800"`` into a lone UTF-16 surrogate, a ``str`` that cannot be encoded as UTF-8, so
  DuckDB (or any UTF-8 writer) fails on it long after the request was acknowledged;
- its decoder recurses once per nesting level, so a deeply nested document ends in ``RecursionError``.

:func:`loads` refuses all three with a :class:`JsonInputError` that names the offending field by its
JSON path (``tasks[3].config.command[1]``); the nesting depth is measured by a linear scan *before*
parsing, so a 10,000-deep document never reaches recursive code. :func:`dumps` always produces strict
JSON: non-finite numbers become ``null`` and lone surrogates U+FFFD, should any reach it (they are
refused at the edge, but output must stay parseable whatever a bug lets through). Both are stdlib-only
and used by the API, both websockets, the protocol helpers, the client and the worker agent.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_JSON_DEPTH = 64
"""The deepest nesting (arrays and objects) accepted anywhere; ``[[1]]`` is 2 levels. Task documents
need about 6; the limit is generous for real data and far below the parser's recursion limit."""

# The depth scan works on bytes: keep only quotes and brackets (one C pass), after removing escaped
# backslashes and quotes; then the strings (now only quotes and brackets) go, and the brackets are counted.
_KEEP = frozenset(b'[]{}"')
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_REDUCED_STRING = re.compile(rb'"[^"]*+(?:"|\Z)')
_LEAF_PAIR = re.compile(rb"\[\]|\{\}")
# A \uD800-\uDFFF escape: only these can decode to a lone surrogate (a strict UTF-8 decode of the raw
# bytes never yields one), so documents without them skip the walk over every string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")


class JsonInputError(ValueError):
    """A document is not acceptable JSON; ``path`` is where (``""`` for the document itself)."""

    def __init__(self, message: str, path: str = "", code: str = "invalid_json") -> None:
        super().__init__(message)
        self.message, self.path, self.code = message, path, code


def render_path(parts: list[str | int], root: str = "") -> str:
    """``["tasks", 3, "config"]`` -> ``tasks[3].config``; a path that starts with an index gets ``root``
    in front (``[3].name`` -> ``tasks[3].name``). Keys that are not plain names are quoted (and escaped,
    so a path is always printable): ``env["A B"]``."""
    out = root if parts and isinstance(parts[0], int) else ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def nesting_depth(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of a JSON text, or ``limit + 1`` as soon as it is known to exceed ``limit``.

    Linear passes in C, no recursion and no per-character Python: escaped backslashes and quotes are
    removed, then everything but quotes and brackets, then the strings (adjacent ``""`` first: removing
    a closing and the next opening quote merges two strings, which keeps every bracket on its side),
    and finally each pass removes the innermost ``[]``/``{}`` pairs, i.e. exactly one level. Text that
    is not valid JSON may get a wrong answer; the parser then reports it, and the answer still bounds
    how deep that parser could recurse.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if data.count(b"[") + data.count(b"{") <= limit:
        return data.count(b"[") + data.count(b"{")
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP).replace(b'""', b"")
    brackets = _REDUCED_STRING.sub(b"", data)
    depth = 0
    while brackets:
        if depth >= limit:
            return limit + 1
        reduced = _LEAF_PAIR.sub(b"", brackets)
        if reduced == brackets:
            # Unbalanced (not JSON): the parser could go as deep as the opening brackets left.
            opening = brackets.count(b"[") + brackets.count(b"{")
            return depth + opening if depth + opening <= limit else limit + 1
        brackets = reduced
        depth += 1
    return depth


def loads(raw: str | bytes | bytearray, *, root: str = "", what: str = "the document") -> Any:
    """Parse strict JSON; raise :class:`JsonInputError` naming the path of anything refused.

    ``root`` names the document in paths when they start with an index (``root="tasks"`` turns
    ``[3].name`` into ``tasks[3].name``); ``what`` names it in messages ("the request body").
    """
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8-sig")  # a leading BOM is tolerated, as json.loads(bytes) does
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"{what} is not valid UTF-8 (byte {exc.start}); send UTF-8 encoded JSON") from None
    else:
        text = raw
    if nesting_depth(raw) > MAX_JSON_DEPTH:
        raise JsonInputError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep (arrays and objects); "
                             f"the limit is {MAX_JSON_DEPTH}", code="too_deep")
    odd_numbers = False

    def constant(name: str) -> float:
        nonlocal odd_numbers
        odd_numbers = True
        return float(name.replace("Infinity", "inf"))

    def parse_float(token: str) -> float:
        nonlocal odd_numbers
        value = float(token)
        if not math.isfinite(value):  # 1e999: valid JSON syntax, but no finite number
            odd_numbers = True
        return value

    try:
        value = json.loads(text, parse_constant=constant, parse_float=parse_float)
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"{what} is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # cannot happen after the depth scan; kept so it can never become a 500
        raise JsonInputError(f"{what} is nested too deeply (limit {MAX_JSON_DEPTH})", code="too_deep") from None
    # Raw surrogates can only be in a str given by a caller (a strict UTF-8 decode never makes them).
    if odd_numbers or _SURROGATE_ESCAPE.search(text) or (
            not isinstance(raw, bytes | bytearray) and not text.isascii() and _SURROGATE.search(text)):
        _check(value, root, what)
    return value


def _check(value: Any, root: str, what: str) -> None:
    """Find the first non-finite number or lone surrogate and raise naming its path (iterative walk)."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            where = render_path(path, root) or what
            raise JsonInputError(f"{where}: {item!r} is not a finite number; JSON numbers must be finite "
                                 "(NaN and Infinity are not JSON)", where)
        if isinstance(item, str):
            _check_text(item, path, root, what, "string")
        elif isinstance(item, dict):
            for key in reversed(list(item)):
                _check_text(key, path + [key], root, what, "key")
                stack.append((item[key], path + [key]))
        elif isinstance(item, list):
            stack.extend((item[i], path + [i]) for i in range(len(item) - 1, -1, -1))


def _check_text(text: str, path: list[str | int], root: str, what: str, kind: str) -> None:
    found = _SURROGATE.search(text)
    if found is not None:
        where = render_path(path, root) or what
        raise JsonInputError(f"{where}: the {kind} has a lone UTF-16 surrogate (U+{ord(found.group()):04X}) "
                             f"at character {found.start()}; strings must be valid Unicode", where)


def check_text(text: str, where: str) -> None:
    """Raise :class:`JsonInputError` when ``text`` (a query parameter, a path segment) is not valid Unicode."""
    found = _SURROGATE.search(text)
    if found is not None:
        raise JsonInputError(f"{where} has a character that is not valid Unicode (U+{ord(found.group()):04X}) "
                             f"at position {found.start()}", where)


def sanitise(value: Any) -> Any:
    """A copy fit for strict JSON and UTF-8: non-finite numbers -> None, lone surrogates -> U+FFFD."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {sanitise(k) if isinstance(k, str) else k: sanitise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitise(v) for v in value]
    return value


def dumps(value: Any, *, compact: bool = True, indent: int | None = None) -> str:
    """Serialise as strict JSON (never ``NaN``, never an unencodable string); other types via ``str``."""
    separators = (",", ":") if compact and indent is None else None
    try:
        text = json.dumps(value, separators=separators, indent=indent, default=str, allow_nan=False,
                          ensure_ascii=False)
        if not text.isascii():  # O(1) for ASCII text; otherwise a lone surrogate fails the encode
            text.encode("utf-8")
        return text
    except (ValueError, RecursionError):
        # A value a bug let through (refused input never gets here): repair rather than fail a response.
        return json.dumps(sanitise(_plain(value)), separators=separators, indent=indent, default=str,
                          allow_nan=False, ensure_ascii=False)


def _plain(value: Any, depth: int = 0) -> Any:
    """Turn anything into JSON-native containers (``default=str`` objects become strings first)."""
    if depth > MAX_JSON_DEPTH * 4:
        return None
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


__all__ = ["MAX_JSON_DEPTH", "JsonInputError", "check_text", "dumps", "loads", "nesting_depth", "render_path",
           "sanitise"]
