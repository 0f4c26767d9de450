"""Shared test helpers: running qtool's real entry point in-process with the logging restored."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A folder with d.npz: 16 Gaussian samples for the 3x32x32 synthetic models."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", input=rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    return folder
