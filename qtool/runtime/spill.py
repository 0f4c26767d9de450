"""Per-sample arrays of analyze and mixed-precision in RAM up to a budget, on disk beyond it.

The evaluator keeps the float outputs over the whole evaluation set, each run's outputs until
they are scored, and the activations cached at the cuts of the suffix runs (suffix.py). On a
long evaluation set (thousands of samples, a detector's or recogniser's large outputs) that is
more than RAM, so, as AdaRound's segmented runner does (runtime/segmented.py), every array goes
to RAM while the budget lasts and beyond it to an ``.npy`` file in a temporary folder, read back
memory-mapped: the metric and the suffix sessions read it like any array, and the operating
system pages it in and out. The folder goes when the evaluator is closed (or, at the latest,
when the process exits).

``QTOOL_ANALYSIS_MB`` (default 1024) is the budget, per process (``--jobs N`` workers each keep
their own run's outputs within it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import numpy as np

from qtool.errors import QtoolError

ENV = "QTOOL_ANALYSIS_MB"
DEFAULT_MB = 1024


def budget_bytes() -> int:
    """The RAM budget in bytes (QTOOL_ANALYSIS_MB)."""
    text = os.environ.get(ENV)
    if not text:
        return DEFAULT_MB << 20
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise QtoolError(f"{ENV}={text}: expected a number of MiB >= 0, e.g. 1024")
    return int(value * (1 << 20))


def _remove(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked worker never removes its parent's files
        shutil.rmtree(folder, ignore_errors=True)


class Spill:
    """Arrays kept within a byte budget: `keep` and `empty` give RAM arrays while it lasts, else
    memory-mapped files; `release` gives the bytes (or the file) back."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget_bytes() if budget is None else budget
        self.resident = 0
        self.folder: str | None = None
        self.spilled = 0  # files written so far (what the tests check)
        self._finalizer = None

    def ensure_folder(self) -> str:
        """The folder of spilled files, made now: before forking workers, so that theirs go
        where this process removes them (a worker exits without running finalizers)."""
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="qtool-analysis-")
            self._finalizer = weakref.finalize(self, _remove, self.folder, os.getpid())
        return self.folder

    def _path(self) -> str:
        self.ensure_folder()
        self.spilled += 1
        return os.path.join(self.folder, f"{os.getpid()}-{self.spilled}.npy")

    def _fits(self, nbytes: int) -> bool:
        if nbytes <= self.budget - self.resident:
            self.resident += nbytes
            return True
        return False

    def keep(self, array: np.ndarray) -> np.ndarray:
        """`array` itself within the budget, else a read-only memory-mapped copy on disk."""
        array = np.asarray(array)
        if array.ndim == 0 or self._fits(array.nbytes):
            return array
        path = self._path()
        np.save(path, array)
        return np.load(path, mmap_mode="r")

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An array to fill: in RAM within the budget, else a memory-mapped file."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if self._fits(nbytes):
            return np.empty(shape, dtype)
        return np.lib.format.open_memmap(self._path(), mode="w+", dtype=dtype, shape=shape)

    def release(self, value) -> None:
        """Give back what `keep`, `empty` or `join` returned (an array or a list of them)."""
        if isinstance(value, (list, tuple)):
            for item in value:
                self.release(item)
        elif isinstance(value, np.memmap):
            path = value.filename
            if path and self.folder and os.path.dirname(path) == self.folder and os.path.exists(path):
                os.unlink(path)  # the mapping stays readable until the array is dropped (POSIX)
        elif isinstance(value, np.ndarray) and value.ndim:
            self.resident = max(0, self.resident - value.nbytes)

    def join(self, pieces: list[np.ndarray]):
        """One array over the pieces' samples (first axis) when they agree after it, else the
        list of pieces (a sequence model's batches of different lengths). The pieces are
        released once copied."""
        if not pieces or not all(p.ndim >= 1 and p.shape[1:] == pieces[0].shape[1:] and p.dtype == pieces[0].dtype
                                 for p in pieces):
            return pieces
        if len(pieces) == 1:
            return pieces[0]
        out = self.empty((sum(len(p) for p in pieces), *pieces[0].shape[1:]), pieces[0].dtype)
        position = 0
        for piece in pieces:
            out[position:position + len(piece)] = piece
            position += len(piece)
            self.release(piece)
        if isinstance(out, np.memmap):
            out.flush()
        return out

    def close(self) -> None:
        """Remove the folder of spilled files (arrays still mapped from it stay readable on
        POSIX until they are dropped)."""
        if self._finalizer is not None:
            self._finalizer()
        self.folder, self.resident = None, 0
