"""A minimal progress bar on stderr, shown only on a terminal (CI logs stay clean).

Steps take a `progress(done, total)` callable and know nothing of terminals; the CLI decides
whether that callable draws a bar or does nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[int, "int | None"], None]


def no_progress(done: int, total: int | None) -> None:
    """The default for library calls: report nothing."""


class Bar:
    """`Bar("calibrate")(done, total)` redraws a one-line bar with rate and ETA."""

    def __init__(self, label: str, unit: str = "samples", stream=None) -> None:
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.enabled = self.stream.isatty()
        self.done, self.total, self.note = 0, None, ""

    def detail(self, note: str) -> None:
        """Redraw with `note` after the bar: progress inside the current unit (a layer's iterations)."""
        self.note = note
        self(self.done, self.total)

    def __call__(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = done / elapsed
        if total:
            width = 24
            filled = int(width * min(done, total) / total)
            eta = (total - done) / rate if rate > 0 else 0.0
            text = f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {self.unit} " \
                   f"{rate:.1f}/s ETA {eta:.0f}s "
        else:
            text = f"\r{self.label} {done} {self.unit} {rate:.1f}/s "
        if self.note and not (total and done >= total):
            text += f"| {self.note} "
        self.stream.write(text + "\033[K")  # clear what a longer previous line left
        if total and done >= total:
            self.stream.write("\n")
        self.stream.flush()
