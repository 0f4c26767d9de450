"""Score the switchable model under many quantizer settings, cheaply.

The float model runs once and its outputs are cached; the evaluation batches are cached too
(the debugging flow uses a few dozen samples). Each setting is then one pass of the switchable
model with different selector inputs. `jobs > 1` forks worker processes, each with its own
onnxruntime session and a share of the cores; settings are independent, so they spread freely.

Both models run with onnxruntime's graph optimisations off: fusions (Conv+BatchNormalization,
MatMul+Add) happen in the float model but not across a quantizer's Where, and would make the
"all quantizers off" run differ from the float one in the last bits. Off, it is bit-exact.

A run changes the model only from the first quantizer its setting toggles: it runs from the
activations a base setting left at the cut before it (suffix.py), bit-identical to a whole
pass. Outputs, float outputs and cached activations stay within QTOOL_ANALYSIS_MB of RAM and go
to memory-mapped files beyond (spill.py); `close()` removes them.
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
from qtool.analysis.score_tasks import scores_on
from qtool.runtime.spill import Spill
from qtool.analysis.suffix import CUTS, BaseCache, SuffixPlan
from qtool.analysis.switchable import SwitchableModel
from qtool.data.sources import Batch, batch_size_of, sample_indices
from qtool.errors import QtoolError
from qtool.parallel.executor import Executor
from qtool.progress import Progress, no_progress
from qtool.runtime.reference_cache import reference_runs
from qtool.runtime.sessions import make_session, max_batch, with_taps


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


def _run(session, batches: list[dict[str, np.ndarray]], extra: dict[str, np.ndarray], names: list[str],
         spill: Spill | None = None) -> Outputs:
    """Each output over all batches: one array where every batch gives the same shape after the
    sample axis, else the list of per-batch arrays (never concatenated); within the spill's budget
    (none: all in RAM)."""
    spill = spill or Spill(budget=1 << 62)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in batches:
        for name, array in zip(names, session.run(names, {**batch, **extra})):
            parts[name].append(spill.keep(array))
    return {name: spill.join(parts[name]) for name in names}


def _only(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds a session takes (onnxruntime refuses names that are not its inputs)."""
    wanted = {i.name for i in session.get_inputs()}
    return {name: value for name, value in feeds.items() if name in wanted}


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
                 metric: Metric, labels: np.ndarray | None = None, jobs: int = 1, executor: Executor | None = None,
                 *, reference: Outputs | None = None, cuts: int = CUTS, spill: Spill | None = None) -> None:
        """`reference`: float outputs already computed on the same batches (another evaluator's);
        `cuts`: how many cuts the suffix runs may start from (0: every run is a whole pass)."""
        self.switchable, self.metric = switchable, metric
        self.spill = spill or Spill()
        self.batches, self.order = _split(batches, max_batch(float_model))
        self.labels = _labels_in_order(labels, self.order)
        self.samples = len(self.order)
        self.jobs = max(1, jobs)
        self.executor = executor
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.names = [v.name for v in float_model.graph.outputs]  # float outputs: cached across runs
        self.reference = reference if reference is not None else self._reference(float_model)
        self.threads = threads
        self.plan = SuffixPlan(switchable, cuts) if cuts else None
        if self.plan is not None and not self.plan.cuts:
            self.plan = None
        self.bases: dict[tuple[int, ...], BaseCache] = {}
        self.kept: tuple[int, ...] | None = None  # the base keep_base made last
        self.session = None  # made on first use: no session may exist in the parent when it forks
        self.suffix_sessions: dict[int, object] = {}
        self.memo: dict[tuple[int, ...], float] = {}  # selections already scored (see score)
        self.runs = 0  # passes of the switchable model over the evaluation set

    def _reference(self, float_model: ir.Model) -> Outputs:
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        for _, out in reference_runs(float_model, self.batches, self.names, "unoptimized",
                                     lambda: make_session(float_model, optimize=False),
                                     lambda session, batch: (batch, dict(zip(self.names,
                                                                              session.run(self.names, batch))))):
            for name in self.names:
                parts[name].append(self.spill.keep(out[name]))
        return {name: self.spill.join(parts[name]) for name in self.names}

    def drop(self) -> None:
        """Drop the sessions and the cached activations (the spill stays: it may be shared)."""
        self.session, self.suffix_sessions = None, {}
        for base in self.bases.values():
            base.release(self.spill)
        self.bases = {}

    def close(self) -> None:
        """Drop the sessions and remove the files spilled to disk."""
        self.drop()
        self.spill.close()

    def _whole_session(self):
        if self.session is None:
            model = self.switchable.model
            if self.plan is not None:
                model = with_taps(model, self.plan.taps)
            self.session = make_session(model, optimize=False, threads=self.threads)
        return self.session

    def _suffix_session(self, cut: int):
        if cut not in self.suffix_sessions:
            self.suffix_sessions[cut] = make_session(self.plan.suffix_model(self.switchable.model, cut),
                                                     optimize=False, threads=self.threads)
        return self.suffix_sessions[cut]

    def _first_change(self, key: tuple[int, ...], base: tuple[int, ...]) -> int:
        start = self.plan.start
        return min((start.get(name, 0) for name, a, b in zip(self.switchable.selectors, key, base) if a != b),
                   default=1 << 62)

    def _uniform(self, key: tuple[int, ...]) -> tuple[int, ...]:
        """The base a setting is nearest to: every quantizer at the value most of them have."""
        values, counts = np.unique(np.asarray(key), return_counts=True)
        value = int(values[np.argmax(counts)])
        return tuple(min(value, self.switchable.candidates[name]) for name in self.switchable.selectors)

    def _route(self, key: tuple[int, ...], make_base: bool) -> tuple[tuple[int, ...] | None, int]:
        """(base, cut) to run `key` from; (None, 0) for a whole pass. The uniform base nearest to
        the setting is run first when it is missing and `make_base`."""
        if self.plan is None:
            return None, 0
        options = list(self.bases)
        uniform = self._uniform(key)
        if make_base and uniform not in self.bases and uniform != key:
            options.append(uniform)
        best, best_cut = None, 0
        for base in options:
            cut = self.plan.cut_for(self._first_change(key, base))
            if cut > best_cut:
                best, best_cut = base, cut
        if best is not None and best not in self.bases:
            self._base_scored(best)
        return best, best_cut

    def _base_scored(self, key: tuple[int, ...]) -> None:
        outputs = self._make_base(key)
        if key not in self.memo:
            self.memo[key] = self.metric.score(outputs, self.reference, self.labels)
            self.runs += 1
        self.spill.release(list(outputs.values()))

    def keep_base(self, setting: Setting) -> None:
        """Make `setting` a base: the runs that follow change a few quantizers from it (a greedy
        search's current state), so they start after the first of those instead of at the top.
        One whole pass (scoring `setting` on the way, if it was not)."""
        key = self.key(setting)
        if self.plan is None or key in self.bases:
            return
        if self.kept is not None and self.kept in self.bases:  # the previous state: no longer near
            self.bases.pop(self.kept).release(self.spill)
        self._base_scored(key)
        self.kept = key

    def _make_base(self, key: tuple[int, ...]) -> Outputs:
        """A whole pass under `key` that keeps its boundary values; its outputs."""
        session = self._whole_session()
        feeds = self.switchable.feeds(dict(zip(self.switchable.selectors, key)), 0)
        cache = BaseCache(key)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        taps = [t for t in self.plan.taps if t not in self.names]
        for batch in self.batches:
            results = dict(zip(self.names + taps, session.run(self.names + taps, {**batch, **feeds})))
            cache.add(self.spill, {name: results[name] for name in self.plan.taps})
            for name in self.names:
                parts[name].append(self.spill.keep(results[name]))
        self.bases[key] = cache
        return {name: self.spill.join(parts[name]) for name in self.names}

    def outputs(self, setting: Setting, *, make_base: bool = True) -> Outputs:
        """The switchable model's outputs over the evaluation set under `setting` (release them
        with `self.spill.release` when done)."""
        key = self.key(setting)
        if self.plan is not None and make_base and key not in self.bases and key == self._uniform(key):
            return self._make_base(key)  # a base itself: the same whole pass, keeping its boundary
        base, cut = self._route(key, make_base)
        feeds = self.switchable.feeds(dict(setting.choice), setting.default)
        if base is None:
            return _run(self._whole_session(), self.batches, feeds, self.names, self.spill)
        session, cache = self._suffix_session(cut), self.bases[base]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        for index, batch in enumerate(self.batches):
            values = _only(session, {**batch, **feeds, **cache.feeds(self.plan, cut, index)})
            for name, array in zip(self.names, session.run(self.names, values)):
                parts[name].append(self.spill.keep(array))
        return {name: self.spill.join(parts[name]) for name in self.names}

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
            outputs = self.outputs(setting)
            if key not in self.memo:  # (the run of a base scores it on the way)
                self.memo[key] = self.metric.score(outputs, self.reference, self.labels)
                self.runs += 1
            self.spill.release(list(outputs.values()))
        return self.memo[key]

    def score_model(self, model: ir.Model) -> float:
        """The metric of another model (e.g. the final QDQ model) on the same cached data."""
        session = make_session(model, optimize=False, threads=self.threads)
        outputs = _run(session, self.batches, {}, self.names, self.spill)
        score = self.metric.score(outputs, self.reference, self.labels)
        self.spill.release(list(outputs.values()))
        return score

    def float_score(self) -> float:
        """The metric of the float model against itself (100% agreement, inf dB capped...)."""
        return self.metric.score(self.reference, self.reference, self.labels)

    def scores(self, settings: list[Setting], progress: Progress = no_progress) -> list[float]:
        """Scores of many settings, over `jobs` processes, in order; each selection runs once
        (those scored before, or twice in `settings`, are read from the memo)."""
        keys = [self.key(setting) for setting in settings]
        todo = list({key: setting for key, setting in zip(keys, settings) if key not in self.memo}.items())
        done = len(settings) - len(todo)
        if self.executor is not None and self.executor.parallel and len(todo) >= 2:
            values = scores_on(self.executor, self, [s for _, s in todo], _run,
                               lambda n, _: progress(done + n, len(settings)))
            self.memo.update({key: value for (key, _), value in zip(todo, values)})
            self.runs += len(todo)
            return [self.memo[key] for key in keys]
        if self.jobs == 1 or len(todo) < 2:
            for index, (_, setting) in enumerate(todo):
                self.score(setting)
                progress(done + index + 1, len(settings))
            return [self.memo[key] for key in keys]
        for key, _ in todo:  # the bases the runs start from, made here once (not in every worker)
            self._route(key, make_base=True)
        todo = [(key, setting) for key, setting in todo if key not in self.memo]
        done = len(settings) - len(todo)
        self.spill.ensure_folder()
        global _WORKER_EVALUATOR
        _WORKER_EVALUATOR = self
        self.session, self.suffix_sessions = None, {}  # each child makes its own
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
