"""Inputs are never outputs: a command refuses to write over a file it reads.

`qtool fold m.onnx -o m.onnx` used to replace its input, although every command promises to leave
its inputs alone. The loaders register each file they read (`register_input`: the model and its
external-data files), the command's own options name the rest (every existing file among its
parameters except the output ones), and the atomic writer asks `check_output` before it renames
its temporary files onto their names (all of a pair, before the first), so a refused run leaves
nothing. The check waits until then because an unchanged copy onto itself is allowed
(`qtool calibrate m.onnx -o m` writes m.encodings.json beside the model it leaves alone). Paths
are compared resolved (symlinks, `./m.onnx`) and by inode (hard links).

The registry lives in the click context of the running command (`ctx.meta`, shared by nested
contexts and new for each invocation): a recipe run's steps share one, two CliRunner invocations in
one test process do not, and library callers outside a command (tests that load a model and save it
back in place) are not restricted. Standard library only: click is consulted only if it is loaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qtool.errors import QtoolError

_KEY = "qtool.inputs"
# click parameter names that name outputs (or are not paths at all); every other parameter whose
# value is an existing file counts as an input
OUTPUT_PARAMS = frozenset({"output", "output_dir", "write_overrides", "prefix"})

Key = tuple


def _contexts() -> list:
    """The running click command's context chain, innermost first (empty outside a command)."""
    click = sys.modules.get("click")
    ctx = click.get_current_context(silent=True) if click is not None else None
    chain = []
    while ctx is not None:
        chain.append(ctx)
        ctx = ctx.parent
    return chain


def file_keys(path: str | os.PathLike) -> set[Key]:
    """What identifies a file: its resolved path, and its device and inode when it exists."""
    path = Path(path)
    keys: set[Key] = {("path", str(path.resolve()))}
    try:
        stat = os.stat(path)
    except OSError:
        return keys
    keys.add(("inode", stat.st_dev, stat.st_ino))
    return keys


def register_input(path: str | os.PathLike) -> None:
    """Record that the running command read `path` (a no-op outside a click command)."""
    chain = _contexts()
    if chain:
        chain[-1].meta.setdefault(_KEY, set()).update(file_keys(path))


def _parameter_files(chain: list) -> list[str]:
    files = []
    for ctx in chain:
        for name, value in ctx.params.items():
            if name in OUTPUT_PARAMS:
                continue
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, (str, os.PathLike)) and str(item) and os.path.isfile(item):
                    files.append(str(item))
    return files


def input_keys() -> set[Key]:
    """Every input of the running command: registered reads and file-valued options."""
    chain = _contexts()
    if not chain:
        return set()
    keys = set(chain[-1].meta.get(_KEY, ()))
    for path in _parameter_files(chain):
        keys |= file_keys(path)
    return keys


def is_input(path: str | os.PathLike) -> bool:
    """Whether `path` is (or resolves to) an input of the running command."""
    inputs = input_keys()
    return bool(inputs and file_keys(path) & inputs)


def check_output(path: str | os.PathLike) -> None:
    """Refuse to write `path` when it is (or resolves to) an input of the running command."""
    if is_input(path):
        raise QtoolError(f"{path}: is an input of this command, writing it would replace the input",
                         "choose another output name: qtool never modifies its inputs")
