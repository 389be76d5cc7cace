"""The ``apoptosis`` entry point: imports every command module (each registers its commands on the
one app) and turns user errors into one line on stderr and exit code 2."""

from __future__ import annotations

import sys
import warnings

from apoptosis.cli import compare, compress, lazarus, measure, plasticity, runs, search, train  # noqa: F401  (they register commands)
from apoptosis.cli.app import app
from apoptosis.core.errors import ApoptosisError


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """A warning as the user should see it: one line, without the Python source line under it."""
    print(f"warning: {message}", file=file or sys.stderr)


def main() -> None:
    warnings.showwarning = _one_line_warning
    try:
        app()
    except ApoptosisError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
