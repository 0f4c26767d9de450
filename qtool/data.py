"""Calibration and evaluation data: files -> batches keyed by model input name.

``--data`` accepts
* ``X.npz``: arrays keyed by input name, first axis = samples (a single-input model may use any key);
* ``X.npy``: one array, for single-input models (memory-mapped, so huge files stream);
* a directory of such files, read one file at a time in sorted order (bounded memory);
* a directory of images, with a preprocessing spec (Pillow, the optional `images` extra);
* ``random``: Gaussian data of the model's input shapes, for smoke tests only (warns).

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


@dataclass(frozen=True)
class InputInfo:
    """What the model expects on one input: dims are ints, or None where dynamic."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: np.dtype


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
                 samples: int | None = None, image_spec: ImageSpec | None = None, seed: int = 0) -> None:
        self.label = label
        self.files = files
        self.inputs = inputs
        self.limit = samples
        self.image_spec = image_spec
        self.seed = seed

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield dicts of arrays (first axis = samples), file by file, validated and cast."""
        if self.files is None:
            yield from self._random_chunks()
            return
        for path in self.files:
            yield self._check(_read_arrays(path, self.inputs), str(path))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of at most `batch_size` samples, stopping after `samples` in all."""
        remaining = self.limit
        pending: list[dict[str, np.ndarray]] = []
        pending_count = 0
        for chunk in self.chunks():
            count = len(next(iter(chunk.values())))
            start = 0
            while start < count:
                if remaining is not None and remaining <= 0:
                    break
                take = min(batch_size - pending_count, count - start)
                if remaining is not None:
                    take = min(take, remaining)
                pending.append({k: v[start:start + take] for k, v in chunk.items()})
                pending_count += take
                start += take
                if remaining is not None:
                    remaining -= take
                if pending_count == batch_size:
                    yield _concat(pending)
                    pending, pending_count = [], 0
        if pending_count:
            yield _concat(pending)

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
        rng = np.random.default_rng(self.seed)
        total = self.limit or 16
        chunk = 16
        for start in range(0, total, chunk):
            n = min(chunk, total - start)
            arrays = {}
            for info in self.inputs:
                dims = [d if d is not None else 1 for d in (info.shape or (1,))[1:]]
                if np.issubdtype(info.dtype, np.floating):
                    arrays[info.name] = rng.standard_normal((n, *dims)).astype(info.dtype)
                else:
                    arrays[info.name] = rng.integers(0, 2, (n, *dims)).astype(info.dtype)
            yield arrays


def _fmt_shape(dims: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return {k: np.ascontiguousarray(v) for k, v in parts[0].items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


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
              image_spec: ImageSpec | None = None, seed: int = 0) -> DataSource:
    """Resolve `--data` to a DataSource (nothing is read yet beyond directory listings)."""
    if spec == "random":
        log.warning("--data random: calibrating on Gaussian noise; encodings are for smoke tests only")
        return DataSource("random", None, inputs, samples=samples or 16, seed=seed)
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
