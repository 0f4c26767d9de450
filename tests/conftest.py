"""Shared test helpers: running qtool's real entry point in-process with the logging restored."""

from __future__ import annotations

import logging

import pytest

from qtool.cli import main


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI reconfigures the root logger onto the current (captured) stderr; undo that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_main(args, capsys) -> tuple[int, str, str]:
    """qtool's real entry point in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
