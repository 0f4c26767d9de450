"""A Python file the user names (`--metric file.py:fn`, `qat --loss file.py:fn`), run as a module.

Compiled and executed here rather than imported through the import system, which writes a
`__pycache__` folder beside the user's file: qtool writes nothing but its outputs, and the
user's folder is an input. It runs only because the user typed it (a recipe must be allowed to
name it: `qtool run --allow-code`, qtool/recipe/policy.py); the callers turn its errors into
one line naming the file.
"""

from __future__ import annotations

import types
from pathlib import Path


def run_python_file(path: Path, module_name: str) -> types.ModuleType:
    """The module that executing `path` defines; whatever the file raises propagates."""
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    exec(compile(path.read_bytes(), str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own code
    return module
