"""The command line: thin commands that parse options, call one function and print. Nothing
imports this package; ``apoptosis.cli.main:entry`` is the ``apoptosis`` command."""
