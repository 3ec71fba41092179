"""key=value arguments of the scripts, apart from `scripts.common` so that a script that needs
nothing else (`scripts.make_figures`) starts without importing torch."""

from __future__ import annotations

import ast
import sys


def parse_kv(argv: list[str], defaults: dict) -> dict:
    """Parse `key=value` arguments (Python literals) over `defaults`; unknown keys are an error."""
    out = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in defaults:
            sys.exit(f"error: bad argument {arg!r}; allowed: {', '.join(f'{k}=...' for k in defaults)}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
