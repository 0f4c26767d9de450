"""Atomic file writing: outputs appear whole or not at all.

Every command writes through these helpers, so an interrupted or failed step never leaves half a
file (or half a model/encodings pair) behind. Deliberately light (standard library only): the
recipe runner writes its stamps with them without importing onnx.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from qtool.errors import QtoolError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_sibling(path: Path) -> str:
    """A new empty file beside `path` with the permissions a plain open() would give it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return tmp


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside `path`, renamed onto it only when the block
    succeeds: readers never see half a file, and a failure leaves nothing behind."""
    path = Path(path)
    try:
        tmp = temporary_sibling(path)
    except OSError as exc:
        raise QtoolError(f"{path}: cannot write ({exc.strerror or exc})", "check the output path") from exc
    try:
        with open(tmp, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise QtoolError(f"{path}: cannot write ({exc.strerror or exc})", "check the output path") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see atomic_output)."""
    with atomic_output(path) as handle:
        handle.write(data)



class StagedOutputs:
    """Write several output files as one: each goes to a temporary name, and all are renamed
    only when every write succeeded (a failed step leaves no half pair behind).

        with StagedOutputs() as out:
            save_model(model, out.path("out/model.onnx"))
            save_encodings(enc, out.path("out/model.encodings.json"))
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def path(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        if final.is_dir():
            raise QtoolError(f"{final}: is a directory", "choose another output name")
        try:
            tmp = Path(temporary_sibling(final))
        except OSError as exc:
            raise QtoolError(f"{final}: cannot write ({exc.strerror or exc})", "check the output path") from exc
        self._staged.append((tmp, final))
        return tmp

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                for tmp, final in self._staged:
                    os.replace(tmp, final)
            except OSError as error:
                self._discard()
                raise QtoolError(f"{final}: cannot write ({error.strerror or error})") from error
        else:
            self._discard()

    def _discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)


def copy_file_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """An unchanged copy of an input file, written under a temporary name first."""
    dst = Path(dst)
    if dst.exists() and Path(src).resolve() == dst.resolve():
        return
    tmp = temporary_sibling(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
