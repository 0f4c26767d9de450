"""Image folders as data: the `--preprocess` spec and decoding (Pillow, the optional `images` extra).

Split from qtool.data.sources so that every way an image or a spec can be wrong has its one-line error
in one place: a spec is checked whole when it is parsed (a word where a size belongs, a zero
size or std, three means for a two-value spec, a layout that is neither NCHW nor NHWC), before
any image is decoded; an image Pillow cannot read is named by its path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_EXAMPLE = "e.g. --preprocess 'size=224x224,mean=127.5,std=127.5,layout=NCHW,order=RGB'"
_CHOICES = {"layout": ("NCHW", "NHWC"), "order": ("RGB", "BGR")}


def _bad(item: str, what: str) -> QtoolError:
    return QtoolError(f"--preprocess {item}: {what}", _EXAMPLE)


def _numbers(item: str, raw: str, key: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in raw.split("/"))
    except ValueError:
        raise _bad(item, f"{key} must be a number or three numbers R/G/B") from None
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise _bad(item, f"{key} must be one finite number or three (R/G/B), not {len(values)}")
    if key == "std" and any(v == 0 for v in values):
        raise _bad(item, "std must not be 0 (pixels are divided by it)")
    return values


def _size(item: str, raw: str) -> tuple[int, int]:
    try:
        dims = [int(v) for v in raw.lower().split("x")]
    except ValueError:
        raise _bad(item, "size must be HxW in pixels, e.g. size=224x224") from None
    if len(dims) not in (1, 2) or any(d < 1 for d in dims):
        raise _bad(item, "size must be HxW with both at least 1, e.g. size=224x224")
    return dims[0], dims[-1]


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
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep:
                raise _bad(repr(item), "expected key=value")
            if key == "size":
                fields["size"] = _size(item, raw)
            elif key in ("mean", "std"):
                fields[key] = _numbers(item, raw, key)
            elif key in _CHOICES:
                value = raw.strip().upper()
                if value not in _CHOICES[key]:
                    raise _bad(item, f"{key} must be {' or '.join(_CHOICES[key])}")
                fields[key] = value
            else:
                raise QtoolError(f"--preprocess: unknown key {key!r}", "valid keys: size, mean, std, layout, order")
        return cls(**fields)

    def sample_bytes(self) -> int:
        """Bytes of one decoded float32 image."""
        return 3 * self.size[0] * self.size[1] * 4


def read_images(paths: list[Path], spec: ImageSpec) -> np.ndarray:
    """Decode, resize and normalise images into one float32 batch (N, 3, H, W) or (N, H, W, 3)."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise QtoolError("image folders need Pillow", "pip install 'qtool[images]'") from exc
    height, width = spec.size
    batch = []
    for path in paths:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), np.float32)
        except Exception as exc:  # UnidentifiedImageError, truncated data (OSError), decompression bombs
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise QtoolError(f"{path}: cannot read as an image ({type(exc).__name__}: {first})",
                             "is the file damaged? remove it from the folder or re-save it") from exc
        if spec.order == "BGR":
            array = array[..., ::-1]
        array = (array - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        batch.append(array.transpose(2, 0, 1) if spec.layout == "NCHW" else array)
    return np.stack(batch)
