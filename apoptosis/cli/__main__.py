"""``python -m apoptosis.cli``: the same as the ``apoptosis`` command."""

from apoptosis.cli.main import entry

entry()
