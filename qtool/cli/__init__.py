"""The command line: click only. Options are parsed from the commands' own option dataclasses
(qtool.cli.build), each command calls its function in qtool.commands and prints the Report it
returns; `qtool run` calls qtool.recipe. No logic here."""

from qtool.cli.main import cli, main

__all__ = ["cli", "main"]
