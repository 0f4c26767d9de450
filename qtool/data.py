"""Calibration and evaluation data: files -> batches keyed by model input name.

``--data`` accepts
* ``X.npz``: arrays keyed by input name, first axis = samples (a single-input model may use any key);
* ``X.npy``: one array, for single-input models (memory-mapped, so huge files stream);
* a directory of such files, read one file at a time in sorted order (bounded memory);
* a directory of images, with a preprocessing spec (Pillow, the optional `images` extra);
* ``random``: data of the model's input shapes, for smoke tests only (warns; see
  ``qtool.random_data``: dynamic dims must be given with ``--input-shape``, token ids respect
  the embedding table's size).

Samples may differ in shape from file to file (a folder of one ``.npz`` per sentence, each with
its own length): ``DataSource.batches`` only batches samples whose per-input shapes agree, one
pending bucket per shape, and never concatenates unequal arrays. Every batch is a ``Batch``: the
feeds, plus each sample's position in the source (``indices``), so that per-sample labels stay
with their samples when bucketing reorders them.

Names, shapes and dtypes are checked against the model before anything runs, and each
mismatch is a one-line error naming the file, the input and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
PENDING_BATCHES = 8  # samples waiting in shape buckets: at most this many batches' worth...
PENDING_BYTES = 256 << 20  # ...and this many bytes, then the fullest bucket goes out early


@dataclass(frozen=True)
class InputInfo:
    """What the model expects on one input: dims are ints, or None where dynamic.

    `dim_names`: the symbolic name of each dim where the model gives one (for messages, and so
    that `--input-shape` fills a dim named 'seq' on every input that has it); `vocab`: the rows
    of the embedding table that this integer input indexes (a Gather on an initializer), for
    random token ids that the model can look up."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: np.dtype
    dim_names: tuple[str | None, ...] | None = None
    vocab: int | None = None


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


@dataclass(frozen=True)
class ImageSpec:
    """Preprocessing for image folders: `--preprocess "size=224,mean=127.5,std=127.5,layout=NCHW"`."""

    size: tuple[int, int] = (224, 224)  # height, width after resize
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (255.0,)
    layout: str = "NCHW"
    order: str = "RGB"

    @classmethod
    def parse(cls, text: str | None) -> ImageSpec:
        if not text:
            return cls()
        fields: dict = {}
        for item in text.split(","):
            key, _, raw = item.partition("=")
            key = key.strip()
            if key == "size":
                dims = [int(v) for v in raw.split("x")]
                fields["size"] = (dims[0], dims[-1])
            elif key in ("mean", "std"):
                fields[key] = tuple(float(v) for v in raw.split("/"))
            elif key in ("layout", "order"):
                fields[key] = raw.strip().upper()
            else:
                raise QtoolError(f"--preprocess: unknown key {key!r}", "valid keys: size, mean, std, layout, order")
        return cls(**fields)


class DataSource:
    """A sequence of samples read lazily from one or more files."""

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

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield dicts of arrays (first axis = samples), file by file, validated and cast."""
        if self.files is None:
            yield from self._random_chunks()
            return
        for path in self.files:
            yield self._check(_read_arrays(path, self.inputs), str(path))

    def batches(self, batch_size: int, *, max_pending: int | None = None,
                max_pending_bytes: int = PENDING_BYTES) -> Iterator[Batch]:
        """Batches of at most `batch_size` samples of one shape, stopping after `samples` in all.

        Samples wait in one bucket per shape signature (every input's shape after the sample
        axis); a bucket goes out when it holds `batch_size` samples, and the rest at the end in
        the order the buckets were opened. Data of one shape gives exactly the batches of a
        plain split in file order. So that a folder of thousands of lengths never holds them
        all, more than `max_pending` samples (default: PENDING_BATCHES batches) or
        `max_pending_bytes` waiting sends the fullest bucket out early (the first opened among
        equals): deterministic, and batches stay homogeneous."""
        limit = max_pending if max_pending is not None else PENDING_BATCHES * batch_size
        buckets: dict[tuple, _Bucket] = {}
        taken = 0  # samples taken from the source so far: the index of the next one
        for chunk in self.chunks():
            count = batch_size_of(chunk)
            if self.limit is not None:
                count = min(count, self.limit - taken)
            if count <= 0:
                break
            key = _signature(chunk)
            start = 0
            while start < count:
                bucket = buckets.setdefault(key, _Bucket())
                take = min(batch_size - bucket.count, count - start)
                bucket.add({k: v[start:start + take] for k, v in chunk.items()}, taken + start)
                start += take
                if bucket.count == batch_size:
                    yield buckets.pop(key).join()
            taken += count
            while buckets and (sum(b.count for b in buckets.values()) > limit
                               or sum(b.nbytes for b in buckets.values()) > max_pending_bytes):
                fullest = max(buckets, key=lambda k: buckets[k].count)
                yield buckets.pop(fullest).join()
        for bucket in buckets.values():
            yield bucket.join()

    def batch_count(self, batch_size: int) -> int:
        """How many batches `batches(batch_size)` yields: samples of unequal shapes make more than
        samples / batch_size. Reads the data once (no inference) when the files could differ."""
        if self.files is None or isinstance(self, _ImageSource):  # one shape throughout
            return -(-(self.count() or 0) // batch_size)
        return sum(1 for _ in self.batches(batch_size))

    def count(self) -> int | None:
        """Number of samples that `batches` will yield, when it is cheap to know."""
        if self.files is None:
            return self.limit
        total = 0
        for path in self.files:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                total += 1
            elif path.suffix == ".npy":
                total += np.load(path, mmap_mode="r").shape[0]
            else:
                with np.load(path) as npz:
                    first = npz.files[0]
                    total += npz[first].shape[0]
        return total if self.limit is None else min(total, self.limit)

    def _check(self, arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
        out = {}
        count = None
        for info in self.inputs:
            array = arrays[info.name]
            if array.ndim == 0:
                raise QtoolError(f"{where}: input '{info.name}' is a scalar", "the first axis must index samples")
            if info.shape is not None:
                if array.ndim != len(info.shape):
                    raise QtoolError(
                        f"{where}: input '{info.name}' has shape {array.shape[1:]} per sample, "
                        f"the model expects {_fmt_shape(info.shape[1:])}",
                        "the first axis of the data must index samples",
                    )
                for axis, (want, got) in enumerate(zip(info.shape[1:], array.shape[1:]), start=1):
                    if want is not None and want != got:
                        raise QtoolError(
                            f"{where}: input '{info.name}' has shape {array.shape[1:]} per sample, "
                            f"the model expects {_fmt_shape(info.shape[1:])} (axis {axis})")
            if not np.can_cast(array.dtype, info.dtype, casting="same_kind"):
                raise QtoolError(f"{where}: input '{info.name}' is {array.dtype}, the model expects {info.dtype}")
            if count is not None and len(array) != count:
                raise QtoolError(f"{where}: inputs have different numbers of samples ({count} and {len(array)})")
            count = len(array)
            out[info.name] = array
        return out

    def _random_chunks(self) -> Iterator[dict[str, np.ndarray]]:
        from qtool.random_data import random_chunks

        yield from random_chunks(self.inputs, self.limit or 16, self.seed, self.vocab_size)


def _fmt_shape(dims: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _read_arrays(path: Path, inputs: list[InputInfo]) -> dict[str, np.ndarray]:
    names = [info.name for info in inputs]
    try:
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r")
            if len(names) != 1:
                raise QtoolError(f"{path}: a .npy file holds one array but the model has inputs {names}",
                                 "use an .npz with one array per input name")
            arrays = {names[0]: array}
        else:
            with np.load(path) as npz:
                arrays = {key: npz[key] for key in npz.files}
    except QtoolError:
        raise
    except Exception as exc:
        raise QtoolError(f"{path}: cannot read as numpy data ({type(exc).__name__}: {exc})") from exc
    if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise QtoolError(f"{path}: no array for model input '{missing[0]}' (found: {', '.join(sorted(arrays))})",
                         f"key the arrays by the model's input names: {', '.join(names)}")
    return {n: arrays[n] for n in names}


def _read_images(paths: list[Path], spec: ImageSpec) -> dict[str, np.ndarray]:
    try:
        from PIL import Image
    except ImportError as exc:
        raise QtoolError("image folders need Pillow", "pip install 'qtool[images]'") from exc
    height, width = spec.size
    batch = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((width, height), Image.BILINEAR)
            array = np.asarray(image, np.float32)
        if spec.order == "BGR":
            array = array[..., ::-1]
        array = (array - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        batch.append(array.transpose(2, 0, 1) if spec.layout == "NCHW" else array)
    return {"__images__": np.stack(batch)}


def open_data(spec: str, inputs: list[InputInfo], *, samples: int | None = None,
              image_spec: ImageSpec | None = None, seed: int = 0,
              input_shapes: dict[str, tuple[int, ...]] | None = None, vocab_size: int | None = None) -> DataSource:
    """Resolve `--data` to a DataSource (nothing is read yet beyond directory listings).

    `input_shapes` (from `--input-shape`) fill the model's dynamic dims and must agree with its
    static ones; file data is then checked against them too. `vocab_size` bounds random ids."""
    from qtool.random_data import apply_input_shapes, check_random_inputs

    inputs = apply_input_shapes(inputs, input_shapes or {})
    if spec == "random":
        check_random_inputs(inputs, vocab_size)
        log.warning("--data random: calibrating on random data; encodings are for smoke tests only")
        return DataSource("random", None, inputs, samples=samples or 16, seed=seed, vocab_size=vocab_size)
    path = Path(spec)
    if not path.exists():
        raise QtoolError(f"{path}: no such data file or directory", "give an .npz, .npy, a directory, or 'random'")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in {".npz", ".npy"} | IMAGE_SUFFIXES)
        if not files:
            raise QtoolError(f"{path}: directory holds no .npz, .npy or image files")
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
            if len(inputs) != 1:
                raise QtoolError(f"{path}: image folders feed single-input models only")
            return _ImageSource(str(path), files, inputs, samples=samples, image_spec=image_spec)
    elif path.suffix not in (".npz", ".npy"):
        raise QtoolError(f"{path}: unsupported data file type '{path.suffix}'", "use .npz or .npy")
    else:
        files = [path]
    return DataSource(str(path), files, inputs, samples=samples, image_spec=image_spec, seed=seed)


class _ImageSource(DataSource):
    """Images are decoded in chunks of 32 so that a folder of any size streams."""

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        images = [f for f in self.files if f.suffix.lower() in IMAGE_SUFFIXES]
        if self.limit is not None:
            images = images[: self.limit]
        for start in range(0, len(images), 32):
            arrays = _read_images(images[start:start + 32], self.image_spec or ImageSpec())
            yield self._check({self.inputs[0].name: arrays["__images__"]}, self.label)
