"""Executors without Ray (qtool.parallel): the sharded calibration and the sensitivity tasks, run
in this process with LocalExecutor(shards=N), give exactly what the one-process run gives (the
merges are what a Ray run relies on); --executor / --ray-address errors are one line, exit 2."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from parallel_models import conv_pad_model, images
from qtool.analysis.evaluate import Evaluator, Setting
from qtool.analysis.metric import load_metric
from qtool.analysis.switchable import build_switchable
from qtool.encodings.write import save_encodings
from qtool.ir.graph import load_model
from qtool.parallel.executor import LocalExecutor
from qtool.plan.build import PlanOptions, build_plan
from qtool.plan.config import load_config
from qtool.progress import no_progress
from qtool.quant.observers import make_observer
from qtool.runtime import stats_graph
from qtool.steps.calibrate import OVERSAMPLE, CalibrateOptions, _observe, calibrate
from qtool.steps.calibrate_shards import observe_shards, sharded, split_shards


class Counting(LocalExecutor):
    """In-process shards that count the rounds of tasks."""

    def __init__(self, shards: int) -> None:
        super().__init__(shards)
        self.rounds: list[int] = []

    def map(self, function, calls, done=None):
        self.rounds.append(len(calls))
        return super().map(function, calls, done)


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parallel")
    model = load_model(conv_pad_model(folder / "conv.onnx"))
    return model, build_plan(model, load_config("default"), PlanOptions()), folder


def _encodings_bytes(result, path: Path) -> bytes:
    save_encodings(result.encodings, path)
    return path.read_bytes()


def _batches(x: np.ndarray, size: int = 8):
    return lambda: [{"input": x[i:i + size]} for i in range(0, len(x), size)]


@pytest.mark.parametrize("scheme,exact", [("sqnr", False), ("minmax", False), ("percentile", False),
                                          ("sqnr", True), ("auto", False)])
def test_shards_give_the_one_process_encodings_byte_for_byte(conv, scheme, exact):
    model, plan, folder = conv
    batches = _batches(images(40))
    options = CalibrateOptions(scheme=scheme, exact=exact, auto_samples=8)
    one = _encodings_bytes(calibrate(model, plan, batches, options), folder / "one.json")
    executor = Counting(3)
    shards = _encodings_bytes(calibrate(model, plan, batches, options, observe=sharded(executor)), folder / "3.json")
    assert shards == one
    # 3 shards a pass (exact: a min-max pass first; auto: its 8 held-out samples are one batch, in process)
    assert executor.rounds == [3] * (2 if exact else 1)  # and no shard ran twice


def test_a_shard_whose_place_was_guessed_wrong_runs_again(tmp_path):
    """Data whose shape changes between batches: a shard's place in the sampled streams, guessed
    from its own first sample, is wrong; the counts the tasks report catch it and it runs again."""
    model = load_model(conv_pad_model(tmp_path / "dynamic.onnx", dynamic=True))
    plan = build_plan(model, load_config("default"), PlanOptions())
    big, small = images(16, 64), images(16, 80, seed=1)
    batches = lambda: [{"input": x[i:i + 8]} for x in (big, small) for i in (0, 8)]  # noqa: E731
    one = _encodings_bytes(calibrate(model, plan, batches, CalibrateOptions()), tmp_path / "one.json")
    executor = Counting(4)
    shards = _encodings_bytes(calibrate(model, plan, batches, CalibrateOptions(), observe=sharded(executor)),
                              tmp_path / "4.json")
    assert shards == one
    assert executor.rounds == [4, 2]  # the two shards after the change of shape, once more


@pytest.mark.parametrize("dynamic", [False, True])
def test_shards_merge_into_the_one_process_histograms(tmp_path, monkeypatch, dynamic):
    """The state itself, not only the encodings (a range search forgives small differences):
    every histogram bin, the grid and the exact range equal the one-process run's, with batches
    run in pieces (runs of 2 samples after the stream's first sample alone) and, with `dynamic`,
    a change of shape that makes later shards measure other run sizes and places."""
    monkeypatch.setattr(stats_graph, "RUN_BYTES", 3 << 20)  # 3 MB: 2 samples of 64x64 a run, 1 of 80x80
    model = load_model(conv_pad_model(tmp_path / "m.onnx", dynamic=dynamic))
    x = images(32)
    sizes = [64, 80] if dynamic else [64, 64]
    batches = [{"input": images(8, size, seed=i)} for i, size in enumerate(sizes * 2)] if dynamic else \
        [{"input": x[i:i + 8]} for i in range(0, 32, 8)]

    def observers():
        return {name: make_observer("sqnr", oversample=OVERSAMPLE) for name in ("input", "c1", "r1", "p1", "c2", "r2")}

    one, many, executor = observers(), observers(), Counting(4)
    assert _observe(model, one, batches, None, no_progress, "sampled") == 32
    assert observe_shards(executor, model, many, batches, None, no_progress, "sampled") == 32
    for name in one:
        a, b = one[name], many[name]
        a._dyadic.flush()
        assert (a._min, a._max, a._dyadic.e, a._dyadic.k0) == (b._min, b._max, b._dyadic.e, b._dyadic.k0), name
        assert np.array_equal(a._dyadic.counts, b._dyadic.counts), name
    assert executor.rounds == ([4, 3] if dynamic else [4])


def test_shards_hold_whole_batches_in_order():
    batches = [{"x": np.zeros((n, 1))} for n in (8, 8, 8, 8, 3)]
    shards = split_shards(batches, 2)
    assert [len(s) for s in shards] == [2, 3] and [b for s in shards for b in s] == batches
    assert len(split_shards(batches, 9)) == 5 and split_shards(batches[:1], 2) == [batches[:1]]


def test_sensitivity_scores_in_tasks_equal_the_one_process_scores(conv):
    model, plan, _ = conv
    encodings = calibrate(model, plan, _batches(images(16))).encodings
    candidates = {name: [enc] for name, enc in {**encodings.activations, **encodings.params}.items()}
    settings = [Setting.of({name: 0}, default=1) for name in sorted(candidates)] + [Setting.of(default=0)]
    metric = load_metric("sqnr")

    def scores(executor):
        switchable = build_switchable(model, candidates)
        return Evaluator(model, switchable, _batches(images(12, seed=5), 4)(), metric, executor=executor).scores(settings)

    executor = Counting(3)
    assert scores(executor) == scores(None)
    assert executor.rounds == [len(settings)]  # one round, a task per setting (fewer than 4 per worker)


def _no_output(tmp_path: Path) -> bool:
    return not list(tmp_path.glob("out*"))


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    model = conv_pad_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", input=images(4))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    code, _, err = run_main(["calibrate", model, "--data", tmp_path / "d.npz", "--executor", "ray",
                             "-o", tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1 and "pip install 'qtool[ray]'" in err
    assert "Traceback" not in err and _no_output(tmp_path)


@pytest.mark.parametrize("args,says", [
    (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: nothing answers"),
    (["--executor", "ray", "--ray-address", "no-port"], "expected auto, host:port"),
    (["--ray-address", "auto"], "only used with --executor ray"),
])
def test_a_bad_ray_address_is_one_line(tmp_path, capsys, monkeypatch, args, says):
    model = conv_pad_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", input=images(4))
    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: False
    fake.init = lambda **_: pytest.fail("ray.init must not be reached")
    monkeypatch.setitem(sys.modules, "ray", fake)  # whether or not Ray is installed
    code, _, err = run_main(["calibrate", model, "--data", tmp_path / "d.npz", *args, "-o", tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1 and says in err and "Traceback" not in err
    assert _no_output(tmp_path)
