"""Calibration over shards of the data, as tasks of an executor, merged exactly.

`sharded(executor)` gives calibrate the function that feeds its observers (the place of
calibrate's own `_observe`): the batches are cut into one shard per worker (whole batches, in
order), each shard is observed by a task that gets the model's bytes, its batches and a copy of
the empty observers, and the shards' observers are merged into calibrate's, in shard order.
The merge gives the encodings of the single-process run byte for byte, because every piece is
exact and does not depend on where the data was cut:

* min-max observers merge by min and max;
* the histograms are dyadic (quant/dyadic.py): bins of 2^e at multiples of 2^e, e a function of
  the final range alone, so shard histograms merge into exactly the one-pass histogram (counts
  are whole numbers times whole weights: float64 adds them exactly), as do the histograms laid
  over a preset range (scheme exact);
* the rows the statistics subgraph takes out whole (the largest row maxima and smallest minima)
  are chosen per sample, so they are the same rows wherever the data is cut;
* the sampled values are picked by their index in the stream of all the tensor's values
  (runtime/stats_graph.py); a shard starts its stream where the shards before it end. It learns
  that place from one sample (values per sample x samples before it); the tasks report the
  values they saw, and a shard whose data changed shape on the way (a guess that turns out
  wrong) runs again from the exact place, so the result is exact in every case. The size of
  the statistics runs (SampledStats.run_samples, measured on the stream's first sample) changes
  no statistic; a shard still takes shard 0's, so that its runs are the one-process run's;
* a Pad output's histogram is its input's plus the pad count per sample (steps/calibrate_pads.py):
  per shard, the counts of the shards add up to the one-pass count.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from qtool.data.sources import batch_size_of, slice_batch
from qtool.errors import QtoolError
from qtool.parallel.executor import Executor
from qtool.parallel.models import from_bytes, to_bytes
from qtool.progress import Progress
from qtool.runtime.sessions import model_source
from qtool.steps.calibrate import _observe

Observe = Callable[..., int]  # the signature of steps.calibrate._observe
RUN_SAMPLES = " run_samples"  # in a shard's place, beside the tensor names: the statistics runs' size


def sharded(executor: Executor) -> Observe:
    """calibrate's observe function on `executor` (its own in-process loop when the executor
    does not cut work into pieces)."""
    if not executor.parallel:
        return _observe

    def observe(model: ir.Model, observers: dict, batches: Iterable[dict[str, np.ndarray]], total: int | None,
                progress: Progress, taps: str, allow_empty: bool = False) -> int:
        return observe_shards(executor, model, observers, batches, total, progress, taps, allow_empty)

    return observe


def split_shards(batches: list[dict[str, np.ndarray]], count: int) -> list[list[dict[str, np.ndarray]]]:
    """Whole batches, in order, in `count` shards (fewer if there are fewer batches) of about
    equal numbers of samples: a batch goes to the shard its middle sample falls in."""
    sizes = [batch_size_of(batch) for batch in batches]
    total, done = max(sum(sizes), 1), 0
    shards: list[list[dict[str, np.ndarray]]] = [[] for _ in range(count)]
    for batch, size in zip(batches, sizes):
        shards[min(count - 1, (2 * done + size) * count // (2 * total))].append(batch)
        done += size
    return [shard for shard in shards if shard]


def observe_shards(executor: Executor, model: ir.Model, observers: dict, batches: Iterable[dict[str, np.ndarray]],
                   total: int | None, progress: Progress, taps: str, allow_empty: bool = False) -> int:
    """What `_observe` does, over shards of the batches on `executor`; the merged observers are
    calibrate's own (`observers`, updated in place). Returns the samples seen."""
    batches = list(batches)
    shards = split_shards(batches, executor.workers)
    if len(shards) < 2:
        return _observe(model, observers, batches, total, progress, taps, allow_empty)
    sizes = [sum(batch_size_of(batch) for batch in shard) for shard in shards]
    before = [sum(sizes[:k]) for k in range(len(shards))]
    shared = executor.share(to_bytes(model))
    source = model_source(model)

    def report(done: int) -> None:
        progress(sum(sizes[:done]), total)

    calls = [(shared, source, observers, shard, taps, before[k], None) for k, shard in enumerate(shards)]
    results = executor.map(observe_shard, calls, report)
    # each shard's true place in the streams: the values the shards before it saw, and the run
    # size the stream's first sample set (shard 0 measured it as the one-process run does)
    first = {RUN_SAMPLES: results[0][2][RUN_SAMPLES]} if results[0][2].get(RUN_SAMPLES) else {}
    places = [first]
    for _, _, _, counts in results[:-1]:
        places.append({name: places[-1].get(name, 0) + counts.get(name, 0) for name in {*places[-1], *counts}
                       if name != RUN_SAMPLES} | first)
    wrong = [k for k, (_, _, used, _) in enumerate(results)
             if any(used.get(name, 0) != places[k].get(name, 0) for name in {*used, *places[k]})]
    if wrong:  # the data changed shape on the way: those shards run again from their exact places
        for k, result in zip(wrong, executor.map(observe_shard, [(*calls[k][:-1], places[k]) for k in wrong])):
            results[k] = result
    for name, observer in {id(o): (n, o) for n, o in observers.items()}.values():
        for shard_observers, *_ in results:
            merge_observer(observer, shard_observers[name])
    seen = sum(result[1] for result in results)
    if seen == 0 and not allow_empty:
        raise QtoolError("calibration data holds no samples")
    return seen


def observe_shard(model: bytes, source: str, observers: dict, batches: list[dict[str, np.ndarray]], taps: str,
                  before: int, start: dict[str, int] | None) -> tuple[dict, int, dict[str, int], dict[str, int]]:
    """A task: (the observers after this shard's batches, samples seen, the stream places it
    started the sampled tensors at and the run size it used (key RUN_SAMPLES), the values of each
    it saw). `before`: samples of the data before this shard; `start`: the exact places and run
    size, when known (else found from one sample, which also sets the run size)."""
    graph = from_bytes(model, source)
    observers = copy.deepcopy(observers)  # in-process executors: the caller's stay empty
    used: dict[str, int] = {}
    sampled = []  # the statistics session of the sampled taps, if any

    def place(tapped) -> None:
        stats = getattr(tapped, "stats", None)
        if stats is None or not stats.seen:
            return
        if start is None and before:
            stats(slice_batch(batches[0], 0, 1))  # one sample: the values of each tensor per sample
            used.update({name: before * count for name, count in stats.seen.items()})
        else:
            used.update({name: (start or {}).get(name, 0) for name in stats.seen})
            if start is not None and start.get(RUN_SAMPLES) is not None:
                stats.run_samples = start[RUN_SAMPLES]
        stats.seen.update(used)
        sampled.append(stats)

    seen = _observe(graph, observers, batches, None, lambda *_: None, taps, allow_empty=True, begin=place)
    counts = {name: value - used[name] for name, value in sampled[0].seen.items()} if sampled else {}
    if sampled and getattr(sampled[0], "run_samples", None):
        used[RUN_SAMPLES] = sampled[0].run_samples
    for observer in observers.values():
        dyadic = getattr(observer, "_dyadic", None)
        if dyadic is not None:
            dyadic.flush()  # counts, not a buffer of values, travel back
    return observers, seen, used, counts


def merge_observer(into, other) -> None:
    """Add what `other` saw to `into` (same kind): histograms merge exactly (their own merge),
    min-max observers by their min and max."""
    if hasattr(into, "merge"):
        into.merge(other)
    elif other.seen:
        into.update(np.array([other._min, other._max], np.float32))
