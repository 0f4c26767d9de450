"""The sensitivity runs of analyze and mixed precision as executor tasks.

Each setting (quantizers switched on or off, a block at another precision) is one pass of the
switchable model over the cached evaluation batches, independent of every other: the settings
are cut into contiguous groups, one task per group. A task gets the switchable model's bytes,
the batches, the float reference outputs, the labels and the metric (all sent once: the
executor shares them) and returns its group's scores; they come back in the order of the
settings, so the report is the one the in-process run writes. A worker keeps the session of the
last model it ran (a Ray worker process runs many tasks), so a session is built once per worker,
not once per task.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from qtool.analysis.switchable import SwitchableModel
from qtool.parallel.executor import Executor
from qtool.parallel.models import from_bytes, to_bytes
from qtool.progress import Progress, no_progress
from qtool.runtime.sessions import make_session

GROUPS_PER_WORKER = 4  # tasks per worker: small enough to balance, large enough to amortise a task's cost
_SESSION: dict[str, tuple] = {}  # in a worker: the digest of the last payload -> (session, switchable)


def scores_on(executor: Executor, evaluator, settings: Sequence, run: Callable,
              progress: Progress = no_progress) -> list[float]:
    """The metric under each setting (an analysis.evaluate.Setting), computed by tasks on
    `executor`, in the order of `settings`; `run(session, batches, selector feeds, output names)`
    gives the outputs (analysis.evaluate's own, passed in: evaluate imports this module)."""
    switchable = evaluator.switchable
    data = to_bytes(switchable.model)
    payload = executor.share({
        "digest": hashlib.sha256(data).hexdigest(), "model": data, "selectors": switchable.selectors,
        "candidates": switchable.candidates, "batches": evaluator.batches, "reference": evaluator.reference,
        "labels": evaluator.labels, "metric": evaluator.metric, "names": evaluator.names,
        "run": run, "threads": None if executor.name == "ray" else evaluator.threads,  # Ray: a CPU per task
    })
    count = max(1, min(len(settings), executor.workers * GROUPS_PER_WORKER))
    bounds = [len(settings) * k // count for k in range(count + 1)]
    groups = [list(settings[bounds[k]:bounds[k + 1]]) for k in range(count)]
    results = executor.map(score_group, [(payload, group) for group in groups],
                           lambda done: progress(bounds[done], len(settings)))
    return [score for group in results for score in group]


def score_group(payload: dict, settings: list) -> list[float]:
    """A task: the metric under each of `settings` (see scores_on for the payload)."""
    digest = payload["digest"]
    if digest not in _SESSION:
        _SESSION.clear()  # one model at a time: the session of an earlier run is not needed again
        model = from_bytes(payload["model"])
        session = make_session(model, optimize=False, threads=payload["threads"])
        _SESSION[digest] = (session, SwitchableModel(model, payload["selectors"], payload["candidates"], {}))
    session, switchable = _SESSION[digest]
    names, metric = payload["names"], payload["metric"]
    scores = []
    for setting in settings:
        feeds = switchable.feeds(dict(setting.choice), setting.default)
        outputs = payload["run"](session, payload["batches"], feeds, names)
        scores.append(metric.score(outputs, payload["reference"], payload["labels"]))
    return scores
