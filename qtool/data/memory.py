"""Data given from Python rather than as files: `qtool.calibrate(model, data=...)`.

Accepted: a dict {input name: array} (first axis = samples), one array for a single-input model,
or an iterable of such dicts (a list, a generator: read once and kept, since calibration passes
over the data several times). Each part is checked against the model like a file is (names,
shapes, dtypes, then NaN/Inf and token ids as batches are built), and errors name the part:
`data[2]: input 'x' has shape ...`. Parts of different shapes are fine: batching keeps each
batch to one shape, as for a folder of files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from qtool.data.checks import check_shape
from qtool.data.inputs import InputInfo
from qtool.data.sources import DataSource
from qtool.errors import QtoolError

LABEL = "data"


class MemorySource(DataSource):
    """Arrays in memory, in parts (one per dict given), read like the files of a folder."""

    def __init__(self, parts: list[dict[str, np.ndarray]], inputs: list[InputInfo], *, samples: int | None = None,
                 label: str = LABEL) -> None:
        super().__init__(label, None, inputs, samples=samples)
        self.parts = parts

    def total(self) -> int:
        return sum(len(next(iter(part.values()))) for part in self.parts)

    def count(self) -> int:
        return self.total() if self.limit is None else min(self.total(), self.limit)

    def batch_count(self, batch_size: int) -> int:
        return sum(1 for _ in self.batches(batch_size))

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        for index, part in enumerate(self.parts):
            self.where = self._where(index)
            yield self._check(part, self.where)

    def _where(self, index: int) -> str:
        return self.label if len(self.parts) == 1 else f"{self.label}[{index}]"


def is_in_memory(data: object) -> bool:
    """Whether `data` is arrays rather than a path or 'random'."""
    return data is not None and not isinstance(data, (str, bytes)) and not hasattr(data, "__fspath__")


def memory_source(data: object, inputs: list[InputInfo], *, samples: int | None = None) -> MemorySource:
    """A checked MemorySource for `data` (see the module docstring); QtoolError naming the part
    that does not fit."""
    if isinstance(data, (np.ndarray, Mapping)):
        given = [data]
    else:
        try:
            given = list(data)  # type: ignore[call-overload]
        except TypeError:
            raise QtoolError(f"{LABEL}: expected arrays (a dict of them, one array, or a list of dicts), "
                             f"got {type(data).__name__}") from None
    if not given:
        raise QtoolError(f"{LABEL}: 0 samples", "give at least one sample")
    parts = [_part(item, inputs, f"{LABEL}[{index}]" if len(given) > 1 else LABEL)
             for index, item in enumerate(given)]
    return MemorySource(parts, inputs, samples=samples)


def _part(item: object, inputs: list[InputInfo], where: str) -> dict[str, np.ndarray]:
    names = [info.name for info in inputs]
    if isinstance(item, np.ndarray):
        if len(names) != 1:
            raise QtoolError(f"{where}: one array, but the model has inputs {names}",
                             "give a dict {input name: array}")
        item = {names[0]: item}
    if not isinstance(item, Mapping):
        raise QtoolError(f"{where}: expected a dict {{input name: array}}, got {type(item).__name__}")
    missing = [name for name in names if name not in item]
    if missing:
        raise QtoolError(f"{where}: no array for model input '{missing[0]}' (found: "
                         f"{', '.join(sorted(map(str, item))) or 'nothing'})",
                         f"key the arrays by the model's input names: {', '.join(names)}")
    extra = sorted(str(key) for key in item if key not in names)
    if extra:
        raise QtoolError(f"{where}: '{extra[0]}' is not an input of the model (inputs: {', '.join(names)})")
    arrays = {name: np.asarray(item[name]) for name in names}
    count = None
    for info in inputs:
        array = arrays[info.name]
        check_shape(info, array.shape, array.dtype, where, info.name)
        if count is not None and len(array) != count:
            raise QtoolError(f"{where}: inputs have different numbers of samples ({count} and {len(array)})",
                             "every array needs one entry per sample")
        count = len(array)
    if not count:
        raise QtoolError(f"{where}: 0 samples", "the first axis of each array counts samples: give at least one")
    return arrays

