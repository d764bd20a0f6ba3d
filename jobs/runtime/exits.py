"""How a command ends on an error: one line on stderr, and the exit status :data:`models.core.errors.EXIT_CODES`
gives the error's class. Every entry point (``jobs/enrich.py``, ``catalog-enrich`` and its subcommands, the
quality gate, publication) ends through :func:`fail`."""

from __future__ import annotations

import sys

from models.core.errors import exit_code

__all__ = ["fail"]


def fail(error: BaseException, prefix: str = "error") -> int:
    """Write ``prefix: error`` on stderr and return the exit status for ``error``."""
    print(f"{prefix}: {error}", file=sys.stderr)
    return exit_code(error)
