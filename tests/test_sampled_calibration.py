"""Histogram calibration in one pass (issue 16): exact tails + a uniform sample from onnxruntime
(runtime/stats_graph.py), an order-free dyadic histogram (quant/dyadic.py), the per-cell noise
(quant/range_search._noise_cells) and the batched search (observers.compute_all) give the
encodings of the reference path (every value binned after a min-max pass) within a stated
tolerance, and the same bytes twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import qtool.runtime.stats_graph as stats_graph
from qtool.ir.graph import load_model
from qtool.plan.build import PlanOptions, build_plan
from qtool.plan.config import load_config
from qtool.quant import QuantSpec
from qtool.quant.dyadic import DyadicHistogram
from qtool.quant.observers import NoiseObserver, PercentileObserver, compute_all, make_observer
from qtool.quant.range_search import _bin, _initial_range, _make_hist, _noise, _noise_cells
from qtool.steps.calibrate import CalibrateOptions, calibrate

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
# The tolerance: each end of a range within 2% of the range of the reference (every value binned
# after a min-max pass), and the reference histogram's noise at the new range within 2% of its
# noise at its own range (the quantity the search minimises; a flat optimum moves more than it costs).
RANGE_TOL, NOISE_TOL = 0.02, 0.02


@pytest.fixture(scope="module")
def block():
    model = load_model(SAMPLES / "mobilenet_block.onnx")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 3, 32, 32)).astype(np.float32)
    x[::7, :, 3:5] *= 25  # rare rows of outliers: the tails decide the sqnr range
    plan = build_plan(model, load_config("w8a8-per-channel"), PlanOptions())
    return model, plan, x


def _batches(x: np.ndarray, size: int = 16, name: str = "input"):
    return lambda: [{name: x[i:i + size]} for i in range(0, len(x), size)]


@pytest.mark.parametrize("scheme", ["sqnr", "percentile", "mse"])
def test_sampled_pass_gives_the_reference_encodings(block, scheme, monkeypatch):
    model, plan, x = block
    monkeypatch.setattr(stats_graph, "SMALL", 1024)  # the block's tensors are small: sample them anyway
    ref = calibrate(model, plan, _batches(x), CalibrateOptions(scheme=scheme, exact=True)).encodings.activations
    new = calibrate(model, plan, _batches(x), CalibrateOptions(scheme=scheme)).encodings.activations
    assert ref.keys() == new.keys() and len(ref) > 3
    for name, enc in ref.items():
        low, high = float(enc.min.min()), float(enc.max.max())
        span = high - low
        assert abs(float(new[name].min.min()) - low) <= RANGE_TOL * span, name
        assert abs(float(new[name].max.max()) - high) <= RANGE_TOL * span, name


def test_sampled_pass_takes_tails_exactly_and_samples_the_rest(block, monkeypatch):
    model, plan, x = block
    monkeypatch.setattr(stats_graph, "SMALL", 1024)
    names = [n for n in plan.activations if n != "input"]
    stats = stats_graph.SampledStats(model, names)
    assert stats.taps, "the block's activations must be sampled with SMALL lowered"
    from qtool.runtime.sessions import make_session, with_taps

    whole = dict(zip(names, make_session(with_taps(model, names)).run(names, {"input": x[:16]})))
    parts = stats({"input": x[:16]})
    for name, tap in stats.taps.items():
        part, values = parts[name], whole[name]
        assert part.weight == tap.stride >= stats_graph.STRIDE
        assert part.exact.max() == values.max() and part.exact.min() == values.min()  # tails exact
        counted = part.exact.size + part.sample.size * part.weight
        # unbiased size: a stride coprime with the row length samples floor or ceil(L / stride) values of
        # each row, so leaving the exact rows out of the sample moves the count by up to one stride a row
        assert abs(counted - values.size) <= part.weight * (2 + part.exact.size // 64), name


def test_calibration_is_deterministic(block, tmp_path, monkeypatch):
    model, plan, x = block
    monkeypatch.setattr(stats_graph, "SMALL", 1024)
    from qtool.encodings.write import save_encodings

    paths = []
    for k in range(2):
        result = calibrate(model, plan, _batches(x), CalibrateOptions(scheme="sqnr"))
        paths.append(tmp_path / f"{k}.json")
        save_encodings(result.encodings, paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_dyadic_histogram_does_not_depend_on_order_or_cuts():
    rng = np.random.default_rng(0)
    parts = [(rng.standard_normal(n) * s + m).astype(np.float32) for n, s, m in
             ((500, 1, 0), (70000, 3, 2), (9, 50, -20), (3000, 0.1, 100))]

    def histogram(order):
        h, low, high = DyadicHistogram(4096), np.inf, -np.inf
        for i in order:
            low, high = min(low, float(parts[i].min())), max(high, float(parts[i].max()))
            h.fit(low, high)
            h.add(parts[i])
        h.flush()
        return h

    a, b = histogram([0, 1, 2, 3]), histogram([3, 2, 1, 0])
    assert (a.e, a.k0) == (b.e, b.k0) and np.array_equal(a.counts, b.counts)
    assert a.counts.sum() == sum(p.size for p in parts)
    first, rest = histogram([0, 1]), histogram([2, 3])
    low = min(float(p.min()) for p in parts)
    high = max(float(p.max()) for p in parts)
    first.merge(rest, low, high)
    assert (first.e, first.k0) == (a.e, a.k0) and np.array_equal(first.counts, a.counts)


def test_weighted_sample_counts_as_many_values():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(40000).astype(np.float32)
    full, sampled = make_observer("sqnr", oversample=4), make_observer("sqnr", oversample=4)
    full.update(x)
    sampled.update(np.sort(x)[[0, -1]])  # the extremes exactly
    sampled.update(x[1::8], weight=8)
    sampled._dyadic.flush()
    assert sampled._dyadic.counts.sum() == 2 + 8 * x[1::8].size
    spec = QuantSpec(bw=8, symmetric=False)
    a, b = full.compute(spec), sampled.compute(spec)
    assert abs(float(a.max[0]) - float(b.max[0])) < 0.05 * float(a.max[0] - a.min[0])


@pytest.mark.parametrize("bw,symmetric", [(8, False), (8, True), (4, False), (10, False)])
def test_noise_per_cell_equals_noise_per_edge(bw, symmetric):
    rng = np.random.default_rng(bw)
    x = np.concatenate([rng.standard_normal((2, 30000)) * [[1.0], [4.0]] + [[0.5], [-1.0]],
                        rng.standard_normal((2, 20)) * 40], axis=1)
    mn, mx = x.min(axis=1), x.max(axis=1)
    lo, hi = _initial_range(mn, mx)
    width = (hi - lo) / 2048
    hist = _make_hist(_bin(x, lo, width, 2048), lo, width, mn, mx)
    spec = QuantSpec(bw=bw, symmetric=symmetric)
    tmin = np.minimum(mn, 0)[:, None] * rng.uniform(0.05, 1.1, (2, 40))
    tmax = np.maximum(mx, 0)[:, None] * rng.uniform(0.05, 1.1, (2, 40))
    for gamma in (1.0, 30.0):
        np.testing.assert_allclose(_noise_cells(hist, tmin, tmax, spec, gamma), _noise(hist, tmin, tmax, spec, gamma),
                                   rtol=1e-7)


def test_batched_search_equals_one_search_per_observer():
    rng = np.random.default_rng(2)
    observers = {}
    for k in range(5):
        observer = NoiseObserver(30.0, oversample=4) if k % 2 else PercentileObserver(99.9, oversample=4)
        x = rng.standard_normal(20000).astype(np.float32) * (k + 1)
        observer.update(np.maximum(x, 0) if k == 3 else x)
        observers[f"t{k}"] = observer
    observers["alias"] = observers["t1"]  # a tensor sharing another's histogram
    specs = {name: QuantSpec(bw=8, symmetric=False) for name in observers}
    together = compute_all(observers, specs)
    for name, observer in observers.items():
        assert together[name].same_as(observer.compute(specs[name])), name
    for scheme in ("sqnr", "mse", "percentile", "minmax"):
        batched = compute_all(observers, specs, scheme, percentile=99.9)
        for name, observer in observers.items():
            assert batched[name].same_as(observer.compute_as(scheme, specs[name], percentile=99.9)), (scheme, name)


def test_non_finite_values_are_skipped_in_the_sampled_pass(monkeypatch):
    """A batch whose selected values hold inf is taken whole for that tensor and the inf skipped."""
    import onnx
    from onnx import TensorProto, helper

    from qtool.ir.graph import model_from_proto

    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 64])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8, 64])],
                              [onnx.numpy_helper.from_array(np.float32(2.0), "k")])
    model = model_from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "inf.onnx")
    monkeypatch.setattr(stats_graph, "SMALL", 64)
    monkeypatch.setattr(stats_graph, "DYNAMIC_DIM", 1)
    x = np.random.default_rng(3).standard_normal((4, 8, 64)).astype(np.float32)
    x[1, 2, 5] = np.inf
    stats = stats_graph.SampledStats(model, ["y"])
    assert "y" in stats.taps
    observer = make_observer("sqnr", oversample=4)
    part = stats({"x": x})["y"]
    observer.update(part.exact)
    observer.update(part.sample, part.weight)
    finite = 2 * x[np.isfinite(x)]
    assert observer._max == finite.max() and observer._min == finite.min()


def test_a_scalar_tensor_in_the_graph_is_calibrated(tmp_path):
    """A 0-d tensor computed in the graph (ViT-S computes its attention scale as one) leaves the
    statistics session whole as a 0-d array: it is one value per batch, not an indexable row."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),  # 0-d: the batch's largest value
             helper.make_node("Mul", ["m", "half"], ["s"]),
             helper.make_node("Mul", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
                              [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    path = tmp_path / "scalar.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = load_model(path)
    plan = build_plan(model, load_config("default"), PlanOptions())
    x = np.random.default_rng(3).uniform(0, 4, (32, 8)).astype(np.float32)
    encodings = calibrate(model, plan, _batches(x, name="x"), CalibrateOptions(scheme="sqnr")).encodings.activations
    assert "s" in encodings
    largest = max(float(x[i:i + 16].max()) * 0.5 for i in range(0, 32, 16))
    assert float(encodings["s"].max[0]) == pytest.approx(largest, rel=0.02)

