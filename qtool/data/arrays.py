"""Reading `.npy` and `.npz` data files safely: headers first, pickles never.

`DataSource` needs each file's sample count and each array's shape and dtype before anything
runs (to check them against the model and to size progress bars), and a folder may hold
thousands of files. So the headers are read on their own: the magic string, the header
dictionary and, from the file (or zip member) size, whether the data the header promises is
really there. A truncated file, a text file named `.npz`, an `.npy` header that claims 10^9
samples, an object array (which only a pickle can hold: qtool never unpickles, a pickle can run
code) are each one QtoolError naming the file and the key, raised before any inference.

Arrays are then loaded with `allow_pickle=False`; `.npy` files memory-mapped (they stream),
`.npz` members read whole, one at a time. Any failure while reading (a damaged deflate stream,
a CRC error) is a QtoolError naming the file and the key as well.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError

_HEADER_LIMIT = 1 << 16  # bytes of .npy header we accept (numpy's own default is 10,000)
_FIX = "write it with numpy.save / numpy.savez"


@dataclass(frozen=True)
class ArrayHeader:
    """What an array's header says: its shape and dtype (nothing of the data is read)."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _read_header(stream, size: int, where: str, key: str) -> ArrayHeader:
    """Parse one .npy header from `stream` (`size`: bytes in the file or member) and check that
    the data it promises fits in `size`."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream, max_header_size=_HEADER_LIMIT)
        else:
            shape, fortran, dtype = fmt.read_array_header_2_0(stream, max_header_size=_HEADER_LIMIT)
        offset = stream.tell()
    except Exception as exc:  # ValueError for a bad magic or header, EOFError-like for short files
        raise QtoolError(f"{where}: not numpy data ({_first_line(exc)})", f"is the file truncated? {_FIX}") from exc
    dtype = np.dtype(dtype)
    if any(int(d) < 0 for d in shape):
        raise QtoolError(f"{where}: {_what(key)} has a negative dimension in its header {tuple(shape)}", _FIX)
    if dtype.hasobject:
        raise QtoolError(f"{where}: {_what(key)} holds Python objects (a pickle), which qtool never loads",
                         "save plain numeric arrays (numpy.save with allow_pickle=False)")
    header = ArrayHeader(key, tuple(int(d) for d in shape), dtype)
    if size - offset < header.nbytes:
        raise QtoolError(f"{where}: {_what(key)} is truncated: its header promises shape {header.shape} "
                         f"({header.nbytes:,} bytes) but {max(size - offset, 0):,} bytes follow", _FIX)
    return header


def _what(key: str) -> str:
    return f"array '{key}'" if key else "the array"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _check_file(path: Path) -> int:
    if path.is_dir():
        raise QtoolError(f"{path}: is a directory, not a data file", "a data folder holds .npz/.npy files directly")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise QtoolError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if size == 0:
        raise QtoolError(f"{path}: empty file (0 bytes)", f"is the file truncated? {_FIX}")
    return size


def read_headers(path: Path) -> dict[str, ArrayHeader]:
    """The arrays a .npy (one array, key '') or .npz file holds, by key, from their headers."""
    size = _check_file(path)
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as stream:
                return {"": _read_header(stream, size, str(path), "")}
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy") or info.is_dir():
                    continue
                key = info.filename[: -len(".npy")]
                with archive.open(info) as stream:
                    headers[key] = _read_header(stream, info.file_size, str(path), key)
                _check_memory(path, headers[key])
    except QtoolError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise QtoolError(f"{path}: not a readable .npz archive ({_first_line(exc)})",
                         f"is the file truncated? {_FIX}") from exc
    if not headers:
        raise QtoolError(f"{path}: the archive holds no numpy arrays", _FIX)
    return headers


def _check_memory(path: Path, header: ArrayHeader) -> None:
    """An .npz member is read whole: refuse one larger than half of this machine's memory (the
    alternative is the kernel's OOM killer, which leaves no message at all)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if header.nbytes > memory // 2:
        raise QtoolError(f"{path}: {_what(header.key)} needs {header.nbytes / 2**30:.1f} GiB in memory, more than "
                         f"half of this machine's {memory / 2**30:.1f} GiB",
                         "save it as .npy (memory-mapped, read batch by batch) or split it into a folder of files")


def load_array(path: Path, key: str) -> np.ndarray:
    """One array of a file whose headers `read_headers` accepted: memory-mapped for .npy."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    except Exception as exc:  # zlib.error, BadZipFile (CRC), ValueError, OSError...
        raise QtoolError(f"{path}: cannot read {_what(key)} ({_first_line(exc)})", f"is the file damaged? {_FIX}") from exc
