"""The float model's outputs, cached on disk by content, so that a command does not run the float
model again on data it has already seen.

`simulate` compares the quantized model with the float one; `analyze` and `mixed-precision`
score every candidate against the float outputs. Run after run (a recipe, a sweep of configs, a
second simulate) the float model and the data are the same, and the float pass is a third to a
half of simulate's time. Each batch's outputs are stored under a key hashed from everything that
determines them: the serialized model, the session settings, onnxruntime's and qtool's versions,
and the batch's arrays (names, dtypes, shapes, bytes). A changed model or batch is a different
key, so there is nothing to invalidate; a hit returns exactly the arrays the float session gave.

* where: `QTOOL_CACHE_DIR`, else `$XDG_CACHE_HOME/qtool`, else `~/.cache/qtool` (entries under
  `reference/`); `QTOOL_CACHE_DIR=off` (or `0`, `none`, empty) turns the cache off;
* how much: `QTOOL_CACHE_MB` (default 2048): after a run writes, the least recently used entries
  go until the folder is under the bound;
* a cache that cannot be written (read-only home, full disk) is skipped with one warning: the
  command runs as without it. An entry that cannot be read is a miss (and is removed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from qtool._version import __version__
from qtool.ir.tensor_files import update_digest

log = logging.getLogger(__name__)

OFF = {"", "0", "off", "none", "false", "no"}
DEFAULT_MB = 2048


def cache_folder() -> Path | None:
    """The reference cache's folder, or None when the cache is off."""
    value = os.environ.get("QTOOL_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value) / "reference"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qtool" / "reference"


def size_bound() -> int:
    """Bytes the cache may hold (QTOOL_CACHE_MB)."""
    try:
        return max(0, int(float(os.environ.get("QTOOL_CACHE_MB", DEFAULT_MB)) * (1 << 20)))
    except ValueError:
        return DEFAULT_MB << 20


class ReferenceCache:
    """Outputs of one model under one session setting, batch by batch (see the module doc)."""

    def __init__(self, folder: Path, model: ir.Model, settings: str) -> None:
        digest = hashlib.blake2b(digest_size=16)
        for part in (__version__, ort.__version__, settings, os.environ.get("QTOOL_THREADS", "")):
            digest.update(part.encode() + b"\0")
        update_digest(digest, model)  # weights hashed tensor by tensor (models over 2 GB too)
        self.folder, self.model_key = folder, digest.hexdigest()
        self.hits = self.misses = 0
        self.wrote = False

    @classmethod
    def open(cls, model: ir.Model, settings: str) -> ReferenceCache | None:
        folder = cache_folder()
        return None if folder is None else cls(folder, model, settings)

    def key(self, feeds: dict[str, np.ndarray]) -> str:
        digest = hashlib.blake2b(self.model_key.encode(), digest_size=20)
        for name in sorted(feeds):
            array = np.ascontiguousarray(feeds[name])
            digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
            digest.update(array.data if array.size else b"")
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str, names: list[str]) -> dict[str, np.ndarray] | None:
        if self.folder is None:  # turned off after a failed write
            return None
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as stored:
                stored_names = [str(n) for n in stored["names"]]
                if not set(names) <= set(stored_names):
                    raise ValueError("outputs missing")
                outputs = {n: stored[f"arr_{stored_names.index(n)}"] for n in names}
            os.utime(path)  # recently used: the last to go when the cache is trimmed
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        except Exception:  # noqa: BLE001 -- a damaged entry is a miss, never an error
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            self.misses += 1
            return None
        self.hits += 1
        return outputs

    def put(self, key: str, outputs: dict[str, np.ndarray]) -> None:
        if self.folder is None or not all(isinstance(v, np.ndarray) and v.dtype != object for v in outputs.values()):
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".part")
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, *outputs.values(), names=np.array(list(outputs)))
            os.replace(temp, path)
            self.wrote = True
        except OSError as exc:
            log.warning("qtool: the reference cache in %s cannot be written (%s); going on without it "
                        "(QTOOL_CACHE_DIR=off turns it off)", self.folder, exc)
            self.folder = None

    def trim(self) -> None:
        """Remove the least recently used entries until the folder is under QTOOL_CACHE_MB."""
        if self.folder is None or not self.wrote:
            return
        entries = []
        for sub in self.folder.glob("??"):
            for entry in os.scandir(sub):
                if entry.name.endswith(".npz"):
                    info = entry.stat()
                    entries.append((info.st_mtime, info.st_size, entry.path))
        total, bound = sum(e[1] for e in entries), size_bound()
        for _, size, path in sorted(entries):
            if total <= bound:
                break
            Path(path).unlink(missing_ok=True)
            total -= size


def reference_runs(model: ir.Model, batches: Iterable[dict[str, np.ndarray]], names: list[str], settings: str,
                   make, run) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(batch, outputs by name) for every batch: from the cache where it holds them, else from
    `run(session, batch)` with the session `make()` builds on the first miss (never, when every
    batch hits). `settings` names the session options, which are part of the key. The cache is
    opened (the model hashed) here, before the first batch: the runs may then go on in another
    thread (ReadAhead) while this one uses the model (hashing swaps a large model's tensors)."""
    return _runs(ReferenceCache.open(model, settings), batches, names, make, run)


def _runs(cache: ReferenceCache | None, batches, names, make, run):
    session = None
    try:
        for feeds in batches:
            key = cache.key(feeds) if cache is not None else None
            outputs = cache.get(key, names) if cache is not None else None
            if outputs is None:
                session = session or make()
                feeds, outputs = run(session, feeds)
                if cache is not None:
                    cache.put(key, {n: outputs[n] for n in names})
            yield feeds, outputs
    finally:
        if cache is not None:
            cache.trim()


class ReadAhead:
    """Iterate a generator (the float reference runs) in a thread, up to `depth` items ahead.

    simulate builds the QDQ model and its session (Python, then onnxruntime's graph setup) while
    the float model already runs on the first batches, and reads, hashes and stores batch i+1 while
    the quantized model runs on batch i. onnxruntime releases the GIL while it runs. The items
    come out in order, each exactly what the generator gave; an error in the thread is raised
    where the next item is taken. `close()` stops the thread (and closes the generator there)."""

    _END = object()

    def __init__(self, items: Iterator, depth: int = 2, enabled: bool = True) -> None:
        self._items, self._queue = items, queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="qtool-reference", daemon=True) if enabled else None
        if self._thread is not None:
            self._thread.start()

    def _fill(self) -> None:
        try:
            for item in self._items:
                if not self._put((True, item)):
                    break
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer, raised there
            self._put((False, exc))
            return
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
        self._put((True, self._END))

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        if self._thread is None:  # in this thread, as the items come
            yield from self._items
            return
        while True:
            ok, item = self._queue.get()
            if not ok:
                raise item
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        elif hasattr(self._items, "close"):
            self._items.close()
