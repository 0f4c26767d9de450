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
from qtool.data.sources import Batch, batch_size_of, sample_indices
from qtool.errors import QtoolError
from qtool.progress import Progress, no_progress
from qtool.runtime.reference_cache import reference_runs
from qtool.runtime.sessions import make_session, max_batch


@dataclass(frozen=True)
class Setting:
    """Selector values: `choice[name]` for the named quantizers, `default` for every other one."""

    choice: tuple[tuple[str, int], ...] = ()
    default: int = 1

    @staticmethod
    def of(choice: dict[str, int] | None = None, default: int = 1) -> Setting:
        return Setting(tuple(sorted((choice or {}).items())), default)


def _split(batches: Iterable[dict[str, np.ndarray]], limit: int | None) -> tuple[list[Batch], np.ndarray]:
    """The batches cut to at most `limit` samples, each with its samples' positions in the data
    (bucketing by shape may have reordered them), and those positions in the order they run."""
    out: list[Batch] = []
    taken = 0
    for batch in batches:
        count = batch_size_of(batch)
        indices = sample_indices(batch, taken)
        taken += count
        step = limit or count
        out += [Batch({k: np.ascontiguousarray(v[i:i + step]) for k, v in batch.items()}, indices[i:i + step])
                for i in range(0, count, step)]
    return out, np.concatenate([b.indices for b in out]) if out else np.zeros(0, np.int64)


def _run(session, batches: list[dict[str, np.ndarray]], extra: dict[str, np.ndarray], names: list[str]) -> Outputs:
    """Each output over all batches: one array where every batch gives the same shape after the
    sample axis, else the list of per-batch arrays (never concatenated)."""
    parts = [session.run(names, {**batch, **extra}) for batch in batches]
    return {name: _join([p[i] for p in parts]) for i, name in enumerate(names)}


def _join(pieces: list[np.ndarray]):
    if all(p.ndim >= 1 and p.shape[1:] == pieces[0].shape[1:] for p in pieces):
        return np.concatenate(pieces)
    return pieces


def _labels_in_order(labels: np.ndarray | None, order: np.ndarray) -> np.ndarray | None:
    """The labels of the samples in the order they run (labels are given in the data's order)."""
    if labels is None or not len(order):
        return labels
    if int(order.max()) >= len(labels):
        raise QtoolError(f"{len(labels)} labels for {int(order.max()) + 1} evaluation samples",
                         "give one label per sample, in the data's order")
    return labels[order]


class Evaluator:
    def __init__(self, float_model: ir.Model, switchable: SwitchableModel, batches: Iterable[dict[str, np.ndarray]],
                 metric: Metric, labels: np.ndarray | None = None, jobs: int = 1) -> None:
        self.switchable, self.metric = switchable, metric
        self.batches, self.order = _split(batches, max_batch(float_model))
        self.labels = _labels_in_order(labels, self.order)
        self.samples = len(self.order)
        self.jobs = max(1, jobs)
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.names = [v.name for v in float_model.graph.outputs]  # float outputs: cached across runs
        runs = list(reference_runs(float_model, self.batches, self.names, "unoptimized",
                                   lambda: make_session(float_model, optimize=False),
                                   lambda session, batch: (batch, dict(zip(self.names, session.run(self.names, batch))))))
        self.reference = {name: _join([out[name] for _, out in runs]) for name in self.names}
        self.threads = threads
        self.session = None  # made on first use: no session may exist in the parent when it forks
        self.memo: dict[tuple[int, ...], float] = {}  # selections already scored (see score)
        self.runs = 0  # passes of the switchable model over the evaluation set

    def outputs(self, setting: Setting) -> Outputs:
        """The switchable model's outputs over the evaluation set under `setting`."""
        if self.session is None:
            self.session = make_session(self.switchable.model, optimize=False, threads=self.threads)
        feeds = self.switchable.feeds(dict(setting.choice), setting.default)
        return _run(self.session, self.batches, feeds, self.names)

    def key(self, setting: Setting) -> tuple[int, ...]:
        """What a setting selects, quantizer by quantizer: settings spelt differently (every
        quantizer named on, or default on) that select the same encodings have the same key."""
        choice = dict(setting.choice)
        return tuple(min(choice.get(name, setting.default), self.switchable.candidates[name])
                     for name in self.switchable.selectors)

    def score(self, setting: Setting) -> float:
        """The metric under `setting`; a setting already scored is not run again (the runs are
        deterministic: analyze's summary and its per-group settings, and mixed precision's greedy
        steps, ask for the same selections more than once)."""
        key = self.key(setting)
        if key not in self.memo:
            self.memo[key] = self.metric.score(self.outputs(setting), self.reference, self.labels)
            self.runs += 1
        return self.memo[key]

    def score_model(self, model: ir.Model) -> float:
        """The metric of another model (e.g. the final QDQ model) on the same cached data."""
        session = make_session(model, optimize=False, threads=self.threads)
        return self.metric.score(_run(session, self.batches, {}, self.names), self.reference, self.labels)

    def float_score(self) -> float:
        """The metric of the float model against itself (100% agreement, inf dB capped...)."""
        return self.metric.score(self.reference, self.reference, self.labels)

    def scores(self, settings: list[Setting], progress: Progress = no_progress) -> list[float]:
        """Scores of many settings, over `jobs` processes, in order; each selection runs once
        (those scored before, or twice in `settings`, are read from the memo)."""
        keys = [self.key(setting) for setting in settings]
        todo = list({key: setting for key, setting in zip(keys, settings) if key not in self.memo}.items())
        done = len(settings) - len(todo)
        if self.jobs == 1 or len(todo) < 2:
            for index, (_, setting) in enumerate(todo):
                self.score(setting)
                progress(done + index + 1, len(settings))
            return [self.memo[key] for key in keys]
        global _WORKER_EVALUATOR
        _WORKER_EVALUATOR = self
        self.session = None  # each child makes its own
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(self.jobs, mp_context=context) as pool:
            chunk = max(1, len(todo) // (self.jobs * 8))
            for index, value in enumerate(pool.map(_worker_score, [s for _, s in todo], chunksize=chunk)):
                self.memo[todo[index][0]] = value
                self.runs += 1
                progress(done + index + 1, len(settings))
        return [self.memo[key] for key in keys]


_WORKER_EVALUATOR: Evaluator | None = None  # set in the parent just before forking


def _worker_score(setting: Setting) -> float:
    return _WORKER_EVALUATOR.score(setting)  # a forked child: makes its own session on first use


def timed(function, *args, **kwargs):
    """(result, seconds): for the report's timings."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start
