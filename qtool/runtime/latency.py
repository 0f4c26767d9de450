"""Latency of a quantized model against its float model in onnxruntime, as fairly as a shared
machine allows.

Each setting (intra-op threads x batch) times the models in alternation, in a snake order
(A B, B A, A B, ...), so that a change of load hits both alike, and keeps the best of N runs,
the run least disturbed by other work; the median is kept too, to show the spread. Sessions use
onnxruntime's default optimisation level (all), what a deployment gets, with one inter-op
thread and sequential execution so that the intra-op count is the only parallelism.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from qtool.errors import QtoolError
from qtool.runtime.sessions import Session, as_feeds

WARMUP = 2


@dataclass(frozen=True)
class Timing:
    """One setting: best and median milliseconds per model label."""

    threads: int
    batch: int
    best_ms: dict[str, float]
    median_ms: dict[str, float]

    def speedup(self, base: str, other: str) -> float:
        """How many times faster `other` runs than `base` (best of N against best of N)."""
        return self.best_ms[base] / self.best_ms[other]


def thread_counts() -> list[int]:
    """1 and every core (one entry on a single-core machine)."""
    cores = os.cpu_count() or 1
    return sorted({1, cores})


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none), to print beside timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _session(path: str, threads: int) -> Session:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = Session(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise QtoolError(f"{path}: onnxruntime cannot load the model: {' '.join(str(exc).split())[:300]}") from exc
    session.source = path
    return session


def time_models(paths: dict[str, str], feeds: dict[int, dict[str, np.ndarray]], threads: Sequence[int],
                repeat: int) -> list[Timing]:
    """Time every model of `paths` (label -> file) on each batch of `feeds` (batch size -> inputs)
    with each intra-op thread count: WARMUP untimed runs, then `repeat` interleaved timed runs."""
    timings = []
    labels = list(paths)
    for count in threads:
        sessions = {label: _session(paths[label], count) for label in labels}
        for batch, feed in feeds.items():
            inputs = {label: as_feeds(session, feed) for label, session in sessions.items()}
            for label in labels:
                for _ in range(WARMUP):
                    sessions[label].run(None, inputs[label])
            runs: dict[str, list[float]] = {label: [] for label in labels}
            for index in range(repeat):
                for label in labels if index % 2 == 0 else labels[::-1]:
                    start = time.perf_counter()
                    sessions[label].run(None, inputs[label])
                    runs[label].append(time.perf_counter() - start)
            timings.append(Timing(count, batch, {k: round(min(v) * 1e3, 3) for k, v in runs.items()},
                                  {k: round(float(np.median(v)) * 1e3, 3) for k, v in runs.items()}))
        del sessions
    return timings
