"""Calibration and evaluation data: files -> batches keyed by model input name.

``--data`` accepts
* ``X.npz``: arrays keyed by input name, first axis = samples (a single-input model may use any key);
* ``X.npy``: one array, for single-input models (memory-mapped, so huge files stream);
* a directory of such files, read one file at a time in sorted order (bounded memory);
* a directory of images, with a preprocessing spec (Pillow, the optional `images` extra);
* ``random``: data of the model's input shapes, for smoke tests only (warns; see
  ``qtool.data.random_data``: dynamic dims must be given with ``--input-shape``, token ids respect
  the embedding table's size).

Samples may differ in shape from file to file (a folder of one ``.npz`` per sentence, each with
its own length): ``DataSource.batches`` only batches samples whose per-input shapes agree, one
pending bucket per shape, and never concatenates unequal arrays. Every batch is a ``Batch``: the
feeds, plus each sample's position in the source (``indices``), so that per-sample labels stay
with their samples when bucketing reorders them.

Names, shapes and dtypes are checked against the model before anything runs, from each file's
headers (``qtool.data.arrays``: nothing is unpickled, truncated files are caught there), and each
mismatch is a one-line error naming the file, the input and the fix; a file without samples is
one (``FILE: 0 samples``) for every command alike. Values are checked as batches are built
(``qtool.data.checks``: NaN/Inf, ids beyond an embedding table). A batch's inputs stay within
QTOOL_BATCH_BYTES (256 MiB by default): larger samples make batches smaller than --batch-size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qtool.data.arrays import ArrayHeader, load_array, read_headers
from qtool.data.checks import check_shape, check_values
from qtool.data.images import IMAGE_SUFFIXES, ImageSpec, read_images
from qtool.data.inputs import InputInfo
from qtool.errors import QtoolError

log = logging.getLogger(__name__)

__all__ = ["Batch", "DataSource", "ImageSpec", "InputInfo", "IMAGE_SUFFIXES", "open_data"]

PENDING_BATCHES = 8  # samples waiting in shape buckets: at most this many batches' worth...
PENDING_BYTES = 256 << 20  # ...and this many bytes, then the fullest bucket goes out early
BATCH_BYTES = 256 << 20  # one batch's inputs at most (QTOOL_BATCH_BYTES): caps --batch-size


class Batch(dict):
    """One batch: arrays keyed by input name (usable as onnxruntime feeds as it is), and
    `indices`, the position of each of its samples in the data source's order (int64, one per
    sample). Bucketing by shape reorders samples; labels are looked up by these indices."""

    def __init__(self, arrays: dict[str, np.ndarray], indices: np.ndarray) -> None:
        super().__init__(arrays)
        self.indices = np.asarray(indices, np.int64)

    def take(self, start: int, stop: int) -> Batch:
        """Samples start..stop of this batch, with their indices."""
        return Batch({k: v[start:stop] for k, v in self.items()}, self.indices[start:stop])


def batch_size_of(batch: dict[str, np.ndarray]) -> int:
    """Samples in a batch (the first axis of its arrays)."""
    return len(next(iter(batch.values())))


def sample_indices(batch: dict[str, np.ndarray], start: int) -> np.ndarray:
    """The batch's sample positions in the source: its own for a Batch, else start, start+1...
    (a plain dict of arrays is taken to follow the previous batches in order)."""
    indices = getattr(batch, "indices", None)
    return indices if indices is not None else np.arange(start, start + batch_size_of(batch), dtype=np.int64)


def slice_batch(batch: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Samples start..stop of a batch; a Batch keeps its indices."""
    if isinstance(batch, Batch):
        return batch.take(start, stop)
    return {k: v[start:stop] for k, v in batch.items()}


class _Bucket:
    """Samples of one shape signature waiting to make a batch (slices of the files' arrays)."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []
        self.starts: list[tuple[int, int]] = []  # (index of the part's first sample, samples)
        self.count = 0
        self.nbytes = 0

    def add(self, arrays: dict[str, np.ndarray], first: int) -> None:
        take = batch_size_of(arrays)
        self.parts.append(arrays)
        self.starts.append((first, take))
        self.count += take
        self.nbytes += sum(a.nbytes for a in arrays.values())

    def join(self) -> Batch:
        indices = np.concatenate([np.arange(first, first + n, dtype=np.int64) for first, n in self.starts])
        if len(self.parts) == 1:
            return Batch({k: np.ascontiguousarray(v) for k, v in self.parts[0].items()}, indices)
        return Batch({k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}, indices)


def _signature(arrays: dict[str, np.ndarray]) -> tuple:
    """What must agree for samples to share a batch: every input's shape after the sample axis."""
    return tuple((name, array.shape[1:]) for name, array in arrays.items())


def batch_bytes_budget() -> int:
    """Bytes one batch's inputs may take (QTOOL_BATCH_BYTES, default 256 MiB)."""
    text = os.environ.get("QTOOL_BATCH_BYTES")
    if not text:
        return BATCH_BYTES
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise QtoolError(f"QTOOL_BATCH_BYTES={text}: expected a positive number of bytes, e.g. 268435456")
    return value


def capped_batch_size(batch_size: int, sample_bytes: int, budget: int | None = None) -> int:
    """`batch_size`, lowered so that a batch of samples of `sample_bytes` stays within the budget
    (never below 1: a single sample bigger than the budget runs alone)."""
    budget = batch_bytes_budget() if budget is None else budget
    return max(1, min(batch_size, budget // max(sample_bytes, 1)))


class DataSource:
    """A sequence of samples read lazily from one or more files.

    Opening one (`open_data`) reads every file's headers (`scan`), so that a file that is not
    numpy data, holds a pickle, is truncated, or does not fit the model fails before anything
    runs, and the sample count is known without reading the data."""

    def __init__(self, label: str, files: list[Path] | None, inputs: list[InputInfo], *,
                 samples: int | None = None, image_spec: ImageSpec | None = None, seed: int = 0,
                 vocab_size: int | None = None) -> None:
        self.label = label
        self.files = files
        self.inputs = inputs
        self.limit = samples
        self.image_spec = image_spec
        self.seed = seed
        self.vocab_size = vocab_size
        self._keys: dict[Path, dict[str, str]] = {}  # file -> input name -> its key in the file
        self._counts: dict[Path, int] = {}
        self.where = label  # the file the chunk being read comes from

    def scan(self) -> DataSource:
        """Read and check every file's headers against the model; refuse files without samples."""
        for path in self.files or ():
            self._keys[path], self._counts[path] = _match_inputs(path, read_headers(path), self.inputs)
        return self

    def total(self) -> int | None:
        """Samples in the files, before `--samples` limits them (None for random data)."""
        return None if self.files is None else sum(self._counts.values())

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield dicts of arrays (first axis = samples), file by file, validated; `self.where`
        names the file the current chunk comes from (for errors about its values)."""
        if self.files is None:
            yield from self._random_chunks()
            return
        for path in self.files:
            keys = self._keys.get(path) or _match_inputs(path, read_headers(path), self.inputs)[0]
            arrays = {name: load_array(path, key) for name, key in keys.items()}
            self.where = str(path)
            yield self._check(arrays, str(path))

    def _key(self, where: str, name: str) -> str:
        return self._keys.get(Path(where), {}).get(name, name)

    def batches(self, batch_size: int, *, max_pending: int | None = None,
                max_pending_bytes: int = PENDING_BYTES) -> Iterator[Batch]:
        """Batches of at most `batch_size` samples of one shape, stopping after `samples` in all.

        Samples wait in one bucket per shape signature (every input's shape after the sample
        axis); a bucket goes out when it holds `batch_size` samples, and the rest at the end in
        the order the buckets were opened. Data of one shape gives exactly the batches of a
        plain split in file order. So that a folder of thousands of lengths never holds them
        all, more than `max_pending` samples (default: PENDING_BATCHES batches) or
        `max_pending_bytes` waiting sends the fullest bucket out early (the first opened among
        equals): deterministic, and batches stay homogeneous. A batch's inputs stay within
        QTOOL_BATCH_BYTES (256 MiB): larger samples make smaller batches than `batch_size`.
        Every slice is checked for NaN/Inf and out-of-table ids as it is taken."""
        limit = max_pending if max_pending is not None else PENDING_BATCHES * batch_size
        budget = batch_bytes_budget()
        buckets: dict[tuple, _Bucket] = {}
        taken = 0  # samples taken from the source so far: the index of the next one
        self.where = self.label
        for chunk in self.chunks():
            where, count = self.where, batch_size_of(chunk)
            if self.limit is not None:
                count = min(count, self.limit - taken)
                if count <= 0:
                    break
            key = _signature(chunk)
            size = capped_batch_size(batch_size, self._sample_bytes(chunk), budget)
            if size < batch_size:
                log.debug("%s: batches of %d samples (QTOOL_BATCH_BYTES=%d)", where, size, budget)
            start = 0
            while start < count:
                bucket = buckets.setdefault(key, _Bucket())
                take = min(size - bucket.count, count - start)
                part = {k: v[start:start + take] for k, v in chunk.items()}
                for info in self.inputs:
                    check_values(info, part[info.name], where, self._key(where, info.name), taken + start)
                bucket.add(part, taken + start)
                start += take
                if bucket.count >= size:
                    yield buckets.pop(key).join()
            taken += count
            while buckets and (sum(b.count for b in buckets.values()) > limit
                               or sum(b.nbytes for b in buckets.values()) > max_pending_bytes):
                fullest = max(buckets, key=lambda k: buckets[k].count)
                yield buckets.pop(fullest).join()
        for bucket in buckets.values():
            yield bucket.join()

    def _sample_bytes(self, chunk: dict[str, np.ndarray]) -> int:
        """Bytes of one sample as onnxruntime gets it (cast to the model's dtypes)."""
        dtypes = {info.name: info.dtype for info in self.inputs}
        return sum(int(np.prod(v.shape[1:], dtype=np.int64)) * max(v.dtype.itemsize, dtypes[k].itemsize)
                   for k, v in chunk.items())

    def batch_count(self, batch_size: int) -> int:
        """How many batches `batches(batch_size)` yields: samples of unequal shapes make more than
        samples / batch_size. Reads the data once (no inference) when the files could differ."""
        if self.files is None:  # one shape throughout
            return -(-(self.count() or 0) // batch_size)
        return sum(1 for _ in self.batches(batch_size))

    def count(self) -> int | None:
        """Number of samples that `batches` will yield (from the headers: nothing is read)."""
        if self.files is None:
            return self.limit
        total = self.total()
        return total if self.limit is None else min(total, self.limit)

    def _check(self, arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
        count = None
        for info in self.inputs:
            array = arrays[info.name]
            check_shape(info, array.shape, array.dtype, where, self._key(where, info.name))
            if count is not None and len(array) != count:
                raise QtoolError(f"{where}: inputs have different numbers of samples ({count} and {len(array)})")
            count = len(array)
        return {info.name: arrays[info.name] for info in self.inputs}

    def _random_chunks(self) -> Iterator[dict[str, np.ndarray]]:
        from qtool.data.random_data import random_chunks

        yield from random_chunks(self.inputs, self.limit or 16, self.seed, self.vocab_size)


def _match_inputs(path: Path, headers: dict[str, ArrayHeader], inputs: list[InputInfo]
                  ) -> tuple[dict[str, str], int]:
    """Which key of the file feeds each model input, checked from the headers; and the samples."""
    names = [info.name for info in inputs]
    if path.suffix.lower() == ".npy":
        if len(names) != 1:
            raise QtoolError(f"{path}: a .npy file holds one array but the model has inputs {names}",
                             "use an .npz with one array per input name")
        keys = {names[0]: ""}
    elif len(names) == 1 and names[0] not in headers and len(headers) == 1:
        keys = {names[0]: next(iter(headers))}
    else:
        missing = [n for n in names if n not in headers]
        if missing:
            raise QtoolError(f"{path}: no array for model input '{missing[0]}' (found: {', '.join(sorted(headers))})",
                             f"key the arrays by the model's input names: {', '.join(names)}")
        keys = {n: n for n in names}
    count = None
    for info in inputs:
        header = headers[keys[info.name]]
        check_shape(info, header.shape, header.dtype, str(path), keys[info.name])
        if count is not None and header.shape[0] != count:
            raise QtoolError(f"{path}: inputs have different numbers of samples ({count} and {header.shape[0]})",
                             "every array needs one entry per sample")
        count = header.shape[0]
    if not count:
        raise QtoolError(f"{path}: 0 samples", "the first axis of each array counts samples: give at least one")
    return keys, count


def open_data(spec: str, inputs: list[InputInfo], *, samples: int | None = None,
              image_spec: ImageSpec | None = None, seed: int = 0,
              input_shapes: dict[str, tuple[int, ...]] | None = None, vocab_size: int | None = None) -> DataSource:
    """Resolve `--data` to a DataSource and check every file's headers (no data is read yet).

    `input_shapes` (from `--input-shape`) fill the model's dynamic dims and must agree with its
    static ones; file data is then checked against them too. `vocab_size` bounds random ids."""
    from qtool.data.random_data import apply_input_shapes, check_random_inputs

    inputs = apply_input_shapes(inputs, input_shapes or {})
    if spec == "random":
        check_random_inputs(inputs, vocab_size)
        log.warning("--data random: calibrating on random data; encodings are for smoke tests only")
        return DataSource("random", None, inputs, samples=samples or 16, seed=seed, vocab_size=vocab_size)
    path = Path(spec)
    if not path.exists():
        raise QtoolError(f"{path}: no such data file or directory", "give an .npz, .npy, a directory, or 'random'")
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir()
                           if p.suffix.lower() in {".npz", ".npy"} | IMAGE_SUFFIXES and not p.name.startswith("."))
        except OSError as exc:
            raise QtoolError(f"{path}: cannot list the folder ({exc.strerror or exc})") from exc
        if not files:
            raise QtoolError(f"{path}: 0 samples: the folder holds no .npz, .npy or image files")
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
            if len(inputs) != 1:
                raise QtoolError(f"{path}: image folders feed single-input models only")
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            return _ImageSource(str(path), images, inputs, samples=samples, image_spec=image_spec)
    elif path.suffix.lower() not in (".npz", ".npy"):
        raise QtoolError(f"{path}: unsupported data file type '{path.suffix}'", "use .npz or .npy")
    else:
        files = [path]
    return DataSource(str(path), files, inputs, samples=samples, image_spec=image_spec, seed=seed).scan()


class _ImageSource(DataSource):
    """Images are decoded in chunks of 32 so that a folder of any size streams."""

    def scan(self) -> DataSource:
        for path in self.files:
            if path.is_dir():
                raise QtoolError(f"{path}: is a directory, not an image", "a data folder holds files directly")
        return self

    def total(self) -> int:
        return len(self.files)

    def batch_count(self, batch_size: int) -> int:
        size = capped_batch_size(batch_size, (self.image_spec or ImageSpec()).sample_bytes())
        return -(-(self.count() or 0) // size)

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        images = self.files if self.limit is None else self.files[: self.limit]
        for start in range(0, len(images), 32):
            arrays = read_images(images[start:start + 32], self.image_spec or ImageSpec())
            yield self._check({self.inputs[0].name: arrays}, self.label)
