"""Where outputs may go: file-name stems that stay a name, paths that stay inside a folder.

Used by `qtool export --prefix` (a prefix is a file name stem: `../../x` would write outside
the output folder the user named with -o) and by the recipe runner, which confines every path
a recipe sets to its `output:` folder unless `qtool run --allow-outside` is given.
"""

from __future__ import annotations

import os
from pathlib import Path

from qtool.errors import QtoolError

MAX_STEM = 200  # leaves room for suffixes such as "_qdq.onnx" within a 255-byte file name


def stem_problem(value: str) -> str | None:
    """Why `value` cannot be a file name stem (None when it can)."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if not value or not value.strip():
        return "is empty; give a file name such as 'model'"
    if any(sep in value for sep in separators) or ".." in value:
        return "is a file name stem, not a path: no '/' or '..' (the files go into the output folder)"
    if "\x00" in value or len(value) > MAX_STEM:
        return f"is not a usable file name (NUL or over {MAX_STEM} characters)"
    return None


def check_file_stem(value: str, option: str) -> str:
    """`value` itself, or a QtoolError naming `option` (e.g. '--prefix')."""
    problem = stem_problem(value)
    if problem:
        raise QtoolError(f"{option} {value!r}: {problem}")
    return value


def escapes(path: Path, folder: Path) -> bool:
    """Whether `path` lands outside `folder` once `..` and existing symlinks are resolved
    (the path itself need not exist yet; a symlink anywhere along it is followed)."""
    return not Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(folder)))
