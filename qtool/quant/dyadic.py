"""A streaming histogram whose bins do not depend on the order of the data.

Single-pass calibration cannot lay its bins over the final range: the range grows as batches
come. This histogram's bins have a width of 2^e and sit at multiples of 2^e; e is the smallest
exponent whose grid covers the range seen so far with at most `bins` bins, and the first bin is
the one holding the minimum. So the grid is a function of the running range alone, and when
the range grows, bins merge in aligned pairs (2^d-tuples), exactly. A value's bin is
floor(x * 2^-e): the product is exact in float32 (a power of two), so every value lands in the
same bin whatever came before it, and two histograms of parts of the data merge into exactly
the histogram of all of it. The grid covers the final range with at least bins/2 bins.
"""

from __future__ import annotations

import math
import threading

import numpy as np

_E_MIN, _E_MAX = -126, 127  # 2^-e stays a normal float32
BUFFER = 1 << 16  # values of small arrays gathered before one bincount
CHUNK = 1 << 18  # values binned at a time (1 MiB float32 + 1 MiB int32 scratch per thread)


def _exponent(low: float, high: float, bins: int, floor: int) -> int:
    """The smallest e >= floor whose aligned grid of 2^e covers [low, high] in at most `bins` bins."""
    span = high - low
    e = max(floor, math.frexp(span / max(bins - 1, 1))[1] - 1 if span > 0 else floor)
    while e < _E_MAX and math.floor(high / 2.0**e) - math.floor(low / 2.0**e) > bins - 1:
        e += 1
    return e


_LOCAL = threading.local()


def _scratch(size: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's float32 and int32 work buffers (CHUNK values each), viewed at `size` <= CHUNK."""
    held = getattr(_LOCAL, "buffers", None)
    if held is None:
        held = _LOCAL.buffers = (np.empty(CHUNK, np.float32), np.empty(CHUNK, np.int32))
    return held[0][:size], held[1][:size]


class DyadicHistogram:
    """Counts (float64, weighted) on `bins` bins of width 2^e starting at k0 * 2^e."""

    def __init__(self, bins: int) -> None:
        self.bins = int(bins)
        self.e: int | None = None
        self.k0 = 0
        self.counts = np.zeros(self.bins, np.float64)
        self._pending: dict[float, list[np.ndarray]] = {}  # weight -> small arrays not yet counted

    @property
    def width(self) -> float:
        return 2.0 ** (self.e or 0)

    @property
    def lo(self) -> float:
        return self.k0 * self.width

    def fit(self, low: float, high: float) -> None:
        """Make the grid cover [low, high] (the whole running range, old data included)."""
        magnitude = max(abs(low), abs(high))
        floor = max(_E_MIN, math.frexp(magnitude)[1] - 30) if magnitude > 0 else _E_MIN  # below float32's step
        e = _exponent(low, high, self.bins, max(floor, self.e if self.e is not None else _E_MIN))
        k0 = math.floor(low / 2.0**e)
        if self.e is None:
            self.e, self.k0 = e, k0
            return
        if (e, k0) == (self.e, self.k0):
            return
        self.flush()
        absolute = self.k0 + np.arange(self.bins, dtype=np.int64)  # each old bin's index at the old e
        target = (absolute >> (e - self.e)) - k0
        self.counts = np.bincount(target, weights=self.counts, minlength=self.bins)[:self.bins]
        self.e, self.k0 = e, k0

    def add(self, x: np.ndarray, weight: float = 1.0) -> None:
        """Count the finite float32 values of flat `x`, which the grid already covers (see fit).
        Small arrays wait in a buffer until BUFFER values of one weight have come: a bin does not
        depend on when a value is counted, and one bincount over the bins costs as much as
        binning thousands of values (a transformer's tensors come a sentence at a time)."""
        if x.size < BUFFER:
            parts = self._pending.setdefault(float(weight), [])
            parts.append(x)
            if sum(p.size for p in parts) < BUFFER:
                return
            x = np.concatenate(self._pending.pop(float(weight)))
        self._count(x, weight)

    def flush(self) -> None:
        """Count what waits in the buffer (before the counts are read, and before the grid changes)."""
        for weight, parts in self._pending.items():
            self._count(np.concatenate(parts), weight)
        self._pending.clear()

    def _count(self, x: np.ndarray, weight: float) -> None:
        # floor(x * 2^-e) - k0 in float32, in place: the product is exact, and the difference of
        # two integers below 2^24 (or of a float32 that large and an integer) is exact too, so
        # the bins are those of the integer arithmetic at a third less time than casting first
        # (the floor comes before subtracting k0: x * 2^-e - k0 rounds when it is larger in
        # magnitude than x * 2^-e). The grid covers every value (fit), so the bins are already
        # 0..bins-1: no clip (np.clip cost as much as the rest together). The cast goes to int32
        # (the bins are below 2^24): numpy casts float32 to int32 with SIMD, to int64 without, and
        # that cast was 4x slower, 0.37 s of EfficientNet-Lite0's sqnr calibration under cProfile
        # The steps run in chunks of CHUNK values through this thread's scratch buffers (a few MB,
        # in cache): fresh temporaries of a large array are fresh pages each call, whose faults
        # cost as much as the arithmetic. The chunks' integer counts add up to the whole array's.
        counts = np.zeros(self.bins, np.int64)
        for start in range(0, x.size, CHUNK):
            part = x[start:start + CHUNK]
            scaled, index = _scratch(part.size)
            np.multiply(part, np.float32(2.0 ** -self.e), out=scaled)
            np.floor(scaled, out=scaled)
            scaled -= np.float32(self.k0)
            np.copyto(index, scaled, casting="unsafe")
            try:
                chunk = np.bincount(index, minlength=self.bins)
            except ValueError:  # a negative bin: x not covered by the grid (fit not called); keep it in range
                chunk = np.bincount(np.clip(index, 0, None), minlength=self.bins)
            counts += chunk[:self.bins]
            counts[self.bins - 1] += chunk[self.bins:].sum()
        self.counts += counts if weight == 1 else counts * float(weight)

    def merge(self, other: DyadicHistogram, low: float, high: float) -> None:
        """Add `other`'s counts; [low, high] is the range of both together (other's grid then
        has an exponent at most this one's, so its bins fall whole into this grid's)."""
        if other.e is None:
            return
        other.flush()
        self.fit(low, high)
        self.flush()
        absolute = other.k0 + np.arange(other.bins, dtype=np.int64)
        target = (absolute >> (self.e - other.e)) - self.k0
        self.counts = self.counts + np.bincount(target, weights=other.counts, minlength=self.bins)[:self.bins]
