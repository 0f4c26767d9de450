"""What a command returns, and the progress it may show while it works.

A command prints nothing: it returns a `Report`, whose `summary` is for scripts (`--json`, a
recipe's run.json, Python callers) and whose `lines` are for people; the CLI prints one or the
other. Progress goes through a factory `progress(label, unit)` -> callable(done, total): the CLI
and recipes pass `qtool.progress.Bar`, the Python API passes `quiet`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qtool.progress import Bar

ProgressFactory = Callable[..., Any]  # (label, unit="samples") -> callable(done, total) with .detail(note)


@dataclass(frozen=True)
class Report:
    """What a command did: `summary` for scripts (--json, recipes' run.json), `lines` for people."""

    summary: dict
    lines: list[str]

    def __str__(self) -> str:
        return "\n".join(self.lines)


class quiet:  # noqa: N801  (used like the Bar class it stands in for)
    """A progress factory that shows nothing: `quiet("calibrate", unit="samples")(done, total)`."""

    def __init__(self, label: str = "", unit: str = "samples") -> None:
        self.label, self.unit = label, unit

    def __call__(self, done: int, total: int | None) -> None:
        pass

    def detail(self, note: str) -> None:
        pass


def bar(label: str, unit: str = "samples") -> Any:
    """The default progress factory: a bar on a terminal (qtool.progress)."""
    return Bar(label, unit=unit)


def without_seconds(value: Any) -> Any:
    """`value` with every "seconds" key removed at any depth: what a recipe's run.json records, so
    that two runs on the same inputs write the same bytes (the times go to timings.json)."""
    if isinstance(value, dict):
        return {key: without_seconds(item) for key, item in value.items() if key != "seconds"}
    if isinstance(value, (list, tuple)):
        return [without_seconds(item) for item in value]
    return value
