"""The ``apoptosis`` entry point: imports every command module (each registers its commands on the
one app) and turns user errors into one line on stderr and exit code 2."""

from __future__ import annotations

import sys

from apoptosis.cli import compare, lazarus, measure, runs, search, train  # noqa: F401  (they register commands)
from apoptosis.cli.app import app
from apoptosis.core.errors import ApoptosisError


def main() -> None:
    try:
        app()
    except ApoptosisError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
