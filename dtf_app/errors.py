"""Exceptions the CLI maps to exit codes, importable without the modules that raise them.

``dtf --version`` and ``dtf --help`` import only this and argparse: ``ConfigError`` lives here, not in
:mod:`dtf_app.config` (whose dataclasses pull in ``inspect``), so the frozen executable starts fast.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is wrong: the message names the key, the value and what is accepted (exit code 2)."""
