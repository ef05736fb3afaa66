"""Log lines that a value cannot forge: control characters in logged values are escaped.

Task names, error texts and frames from workers end up in log messages as ``%s``/``%r`` arguments. A
value with a newline would start a new line that looks like any other log line ("... ERROR dtf.api:
admin key deleted"). :class:`EscapingFilter`, installed on the node's handlers by
``dtf_app.node.setup_logging``, escapes every control character (C0, DEL, C1, and the Unicode line and
paragraph separators) in the arguments before the message is formatted: ``\\n`` is written as the two
characters ``\\n``. The message templates are the program's own and keep their layout. Tracebacks
keep theirs too, but :class:`EscapingFormatter` indents every line of them, so an exception message
that quotes a value with a newline still cannot begin a line the way a log record does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

_CONTROL = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _CONTROL}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
_TABLE = str.maketrans(_ESCAPES)


def escape(text: str) -> str:
    """``text`` with every control character written as an escape sequence (one line, always)."""
    return text.translate(_TABLE) if not text.isprintable() else text


class _Escaped:
    """Wraps a non-numeric argument so that ``%s`` and ``%r`` of it come out escaped."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape(str(self.value))

    def __repr__(self) -> str:
        return escape(repr(self.value))

    def __format__(self, spec: str) -> str:
        return escape(format(self.value, spec))


def _wrap(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value  # keeps %d / %.1f working; numbers cannot carry a newline
    if isinstance(value, str):
        return escape(value)
    return _Escaped(value)


class EscapingFilter(logging.Filter):
    """Escape control characters in a record's arguments (or in its message when it has none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            if isinstance(record.args, Mapping):
                record.args = {key: _wrap(value) for key, value in record.args.items()}
            else:
                record.args = tuple(_wrap(value) for value in record.args)
        elif isinstance(record.msg, str):
            # A message built before logging (an f-string, a library's preformatted text) may hold a value.
            record.msg = escape(record.msg)
        return True


class EscapingFormatter(logging.Formatter):
    """A Formatter whose tracebacks and stacks are indented (see the module docstring)."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


__all__ = ["EscapingFilter", "EscapingFormatter", "escape"]
