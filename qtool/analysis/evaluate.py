"""Score the switchable model under many quantizer settings, cheaply.

The float model runs once and its outputs are cached; the evaluation batches are cached too
(the debugging flow uses a few dozen samples). Each setting is then one pass of the switchable
model with different selector inputs. `jobs > 1` forks worker processes, each with its own
onnxruntime session and a share of the cores; settings are independent, so they spread freely.

Both models run with onnxruntime's graph optimisations off: fusions (Conv+BatchNormalization,
MatMul+Add) happen in the float model but not across a quantizer's Where, and would make the
"all quantizers off" run differ from the float one in the last bits. Off, it is bit-exact.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.analysis.metric import Metric, Outputs
from qtool.analysis.switchable import SwitchableModel
from qtool.progress import Progress, no_progress
from qtool.runtime import make_session, max_batch


@dataclass(frozen=True)
class Setting:
    """Selector values: `choice[name]` for the named quantizers, `default` for every other one."""

    choice: tuple[tuple[str, int], ...] = ()
    default: int = 1

    @staticmethod
    def of(choice: dict[str, int] | None = None, default: int = 1) -> Setting:
        return Setting(tuple(sorted((choice or {}).items())), default)


def _split(batches: Iterable[dict[str, np.ndarray]], limit: int | None) -> list[dict[str, np.ndarray]]:
    out = []
    for batch in batches:
        count = len(next(iter(batch.values())))
        step = limit or count
        out += [{k: np.ascontiguousarray(v[i:i + step]) for k, v in batch.items()} for i in range(0, count, step)]
    return out


def _run(session, batches: list[dict[str, np.ndarray]], extra: dict[str, np.ndarray], names: list[str]) -> Outputs:
    parts = [session.run(names, {**batch, **extra}) for batch in batches]
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}


class Evaluator:
    def __init__(self, float_model: ir.Model, switchable: SwitchableModel, batches: Iterable[dict[str, np.ndarray]],
                 metric: Metric, labels: np.ndarray | None = None, jobs: int = 1) -> None:
        self.switchable, self.metric, self.labels = switchable, metric, labels
        self.batches = _split(batches, max_batch(float_model))
        self.samples = sum(len(next(iter(b.values()))) for b in self.batches)
        self.jobs = max(1, jobs)
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        float_session = make_session(float_model, optimize=False)
        self.names = [o.name for o in float_session.get_outputs()]
        self.reference = _run(float_session, self.batches, {}, self.names)
        del float_session
        self.threads = threads
        self.session = None  # made on first use: no session may exist in the parent when it forks

    def outputs(self, setting: Setting) -> Outputs:
        """The switchable model's outputs over the evaluation set under `setting`."""
        if self.session is None:
            self.session = make_session(self.switchable.model, optimize=False, threads=self.threads)
        feeds = self.switchable.feeds(dict(setting.choice), setting.default)
        return _run(self.session, self.batches, feeds, self.names)

    def score(self, setting: Setting) -> float:
        return self.metric.score(self.outputs(setting), self.reference, self.labels)

    def score_model(self, model: ir.Model) -> float:
        """The metric of another model (e.g. the final QDQ model) on the same cached data."""
        session = make_session(model, optimize=False, threads=self.threads)
        return self.metric.score(_run(session, self.batches, {}, self.names), self.reference, self.labels)

    def float_score(self) -> float:
        """The metric of the float model against itself (100% agreement, inf dB capped...)."""
        return self.metric.score(self.reference, self.reference, self.labels)

    def scores(self, settings: list[Setting], progress: Progress = no_progress) -> list[float]:
        """Scores of many settings, over `jobs` processes, in order."""
        if self.jobs == 1 or len(settings) < 2:
            results = []
            for index, setting in enumerate(settings):
                results.append(self.score(setting))
                progress(index + 1, len(settings))
            return results
        global _WORKER_EVALUATOR
        _WORKER_EVALUATOR = self
        self.session = None  # each child makes its own
        context = multiprocessing.get_context("fork")
        results: list[float] = [0.0] * len(settings)
        with ProcessPoolExecutor(self.jobs, mp_context=context) as pool:
            chunk = max(1, len(settings) // (self.jobs * 8))
            for index, value in enumerate(pool.map(_worker_score, settings, chunksize=chunk)):
                results[index] = value
                progress(index + 1, len(settings))
        return results


_WORKER_EVALUATOR: Evaluator | None = None  # set in the parent just before forking


def _worker_score(setting: Setting) -> float:
    return _WORKER_EVALUATOR.score(setting)  # a forked child: makes its own session on first use


def timed(function, *args, **kwargs):
    """(result, seconds): for the report's timings."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start
