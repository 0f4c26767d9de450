"""Progress of long work on stderr: a bar on a terminal, periodic log lines elsewhere.

Steps take a `progress(done, total)` callable and know nothing of terminals; the CLI decides
whether that callable is a `Bar` or `no_progress` (the library default). On a terminal the bar
is redrawn in place. Off a terminal (CI logs, `2> log.txt`) a redrawn bar would be noise and
nothing at all looks like a hang (analyze and mixed-precision run for minutes), so the bar
writes one line every `interval` seconds (`qtool: calibrate: 120/300 samples, 12 s elapsed,
about 18 s left`) and a last line when it finishes, if it wrote any: work shorter than the
interval prints nothing.

Two bars of one command never show the same label: a step that makes several passes over its
data with one callable (calibration with a histogram scheme: ranges first, then histograms)
starts again from zero, and the bar then names the pass (`calibrate (pass 2)`); commands that
make several bars give each its own label (`calibrate w8a8`, then `calibrate w8a8 with the
overrides` in mixed precision).

Hand-written rather than tqdm or rich: measured on the development machine, `import tqdm`
takes about 45 ms against about 2 ms for this module, and the command tree must import fast
(`qtool --help`, shell completion); what it draws is one line either way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[int, "int | None"], None]
LOG_INTERVAL = 10.0  # seconds between log lines off a terminal


def no_progress(done: int, total: int | None) -> None:
    """The default for library calls: report nothing."""


class Bar:
    """`Bar("calibrate")(done, total)`: a one-line bar with rate and ETA on a terminal, a log
    line every `interval` seconds elsewhere. `clock` is there for tests."""

    def __init__(self, label: str, unit: str = "samples", stream=None, *, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.interval, self.clock = interval, clock
        self.terminal = _isatty(self.stream)
        self.start = self.last_line = clock()
        self.done, self.total, self.note = 0, None, ""
        self.passes, self.lines = 1, 0

    @property
    def label(self) -> str:
        return self.base_label if self.passes == 1 else f"{self.base_label} (pass {self.passes})"

    def detail(self, note: str) -> None:
        """Show `note` after the bar: progress inside the current unit (a layer's iterations)."""
        self.note = note
        self(self.done, self.total)

    def __call__(self, done: int, total: int | None) -> None:
        if done < self.done:  # a new pass over the data: its own label, its own clock
            self.passes += 1
            self.start = self.last_line = self.clock()
            self.lines = 0
        self.done, self.total = done, total
        if self.terminal:
            self._draw()
        else:
            self._log()

    def _elapsed(self) -> float:
        return max(self.clock() - self.start, 1e-9)

    def _eta(self) -> float | None:
        rate = self.done / self._elapsed()
        return (self.total - self.done) / rate if self.total and rate > 0 else None

    def _finished(self) -> bool:
        return bool(self.total) and self.done >= self.total

    def _log(self) -> None:
        now = self.clock()
        if self._finished():
            if self.lines:
                self._write(f"qtool: {self.label}: done, {self.done} {self.unit} in {self._elapsed():.0f} s\n")
                self.lines = 0
            return
        if now - self.last_line < self.interval:
            return
        self.last_line = now
        self.lines += 1
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        eta = self._eta()
        left = f", about {eta:.0f} s left" if eta is not None else ""
        note = f" ({self.note})" if self.note else ""
        self._write(f"qtool: {self.label}: {count} {self.unit}{note}, {self._elapsed():.0f} s elapsed{left}\n")

    def _draw(self) -> None:
        rate = self.done / self._elapsed()
        if self.total:
            width = 24
            filled = int(width * min(self.done, self.total) / self.total)
            text = (f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {self.unit} "
                    f"{rate:.1f}/s ETA {self._eta() or 0.0:.0f}s ")
        else:
            text = f"\r{self.label} {self.done} {self.unit} {rate:.1f}/s "
        if self.note and not self._finished():
            text += f"| {self.note} "
        self._write(text + "\033[K" + ("\n" if self._finished() else ""))  # \033[K: clear a longer line's rest

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
