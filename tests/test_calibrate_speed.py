"""The fast paths of histogram calibration (issue 16) against the plain computations they replace:
the sample positions inside the exact rows found from row ranges (stats_graph._split), a batch
run in pieces (stats_graph.RUN_BYTES), the dyadic bins without a clip, and the re-binning of
every tensor's histogram in one call (range_search._rebin_many) against np.interp per histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import qtool.runtime.stats_graph as stats_graph
from qtool.ir.graph import load_model
from qtool.quant.dyadic import DyadicHistogram
from qtool.quant.range_search import _initial_range, _rebin_many

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _split_by_rows(outputs, tap, rows, length, start):
    """The old way: each sampled value's row, then a mask of the rows not taken whole."""
    selected = np.zeros(rows, bool)
    selected[outputs[tap.hi_index]] = True
    fresh = ~selected[outputs[tap.lo_index]]
    selected[outputs[tap.lo_index]] = True
    exact = np.concatenate([outputs[tap.hi_rows].ravel(), outputs[tap.lo_rows][fresh].ravel()])
    sample = outputs[tap.sample]
    row_of = (start + tap.stride * np.arange(sample.size, dtype=np.int64)) // length
    return exact, sample[~selected[row_of]]


@pytest.mark.parametrize("seed", range(6))
def test_split_matches_the_row_mask(seed):
    rng = np.random.default_rng(seed)
    rows, length = int(rng.integers(1, 300)), int(rng.integers(1, 200))
    stride = int(rng.integers(1, 40))
    start = int(rng.integers(0, stride))
    values = rng.standard_normal((rows, length)).astype(np.float32)
    k = int(rng.integers(1, rows + 1))
    hi, lo = np.argsort(-values.max(1))[:k], np.argsort(values.min(1))[:k]
    tap = stats_graph.SampledTap("t", stride, "shape", "hi", "hi_i", "lo", "lo_i", "sample", "offset")
    outputs = {"hi": values[hi], "hi_i": hi, "lo": values[lo], "lo_i": lo, "sample": values.ravel()[start::stride]}
    part = stats_graph._split(outputs, tap, rows, length, start)
    exact, sample = _split_by_rows(outputs, tap, rows, length, start)
    assert part.weight == stride
    assert np.array_equal(part.exact, exact) and np.array_equal(part.sample, sample)


def test_a_batch_run_in_pieces_counts_every_value(monkeypatch):
    """16 samples at 5 a run go as 4 runs of 4; the sample stream continues across the runs. Each
    run's tails are exact (so the extremes are those of the batch) and every other value stands
    in the sample for `weight` values, as in one run."""
    from qtool.runtime.sessions import make_session, with_taps

    monkeypatch.setattr(stats_graph, "SMALL", 1024)
    model = load_model(SAMPLES / "mobilenet_block.onnx")
    x = np.random.default_rng(7).standard_normal((16, 3, 32, 32)).astype(np.float32)
    names = [v.name for node in model.graph for v in node.outputs][:4]
    stats = stats_graph.SampledStats(model, names)
    assert stats.taps and stats.run_samples is None
    stats({"input": x[:2]})  # the first sample alone: how many values a sample gives sets the run size
    assert stats.run_samples >= 16 and stats.run_samples & (stats.run_samples - 1) == 0
    monkeypatch.setattr(stats_graph, "RUN_BYTES", 1 << 10)
    small = stats_graph.SampledStats(model, names)
    small({"input": x[:3]})
    assert small.run_samples == 1  # (a run of one sample at least)
    stats.run_samples = 5
    parts = stats({"input": x})
    whole = dict(zip(names, make_session(with_taps(model, names)).run(names, {"input": x})))
    for name in stats.taps:
        part, values = parts[name], whole[name]
        assert part.exact.max() == values.max() and part.exact.min() == values.min()
        counted = part.exact.size + part.sample.size * part.weight
        assert abs(counted - values.size) <= part.weight * (4 * 2 + part.exact.size // 64), name


def test_dyadic_bins_without_clip_are_the_clipped_bins():
    rng = np.random.default_rng(2)
    for scale, shift in ((1.0, 0.0), (3.0, -2000.0), (1e-3, 5.0), (50.0, 1e4)):
        x = (rng.standard_normal(200_000) * scale + shift).astype(np.float32)
        h = DyadicHistogram(8192)
        h.fit(float(x.min()), float(x.max()))
        h.add(x)
        h.flush()
        index = np.clip(np.floor(x * np.float32(2.0 ** -h.e)) - np.float32(h.k0), 0, h.bins - 1).astype(np.int64)
        assert np.array_equal(h.counts, np.bincount(index, minlength=h.bins).astype(np.float64))


def test_dyadic_bins_in_chunks_are_the_bins_of_the_whole_array():
    """Arrays beyond one CHUNK are binned a chunk at a time (scratch buffers): the same counts as
    the int64 arithmetic over the whole array, weights included, and the chunk boundaries cut
    no value twice or never."""
    from qtool.quant.dyadic import CHUNK

    rng = np.random.default_rng(3)
    x = (rng.standard_t(3, 3 * CHUNK + 5) * 40.0 - 7.0).astype(np.float32)
    h = DyadicHistogram(8192)
    h.fit(float(x.min()), float(x.max()))
    h.add(x, 16)
    index = (np.floor(x * np.float32(2.0 ** -h.e)).astype(np.int64) - h.k0)
    assert index.min() >= 0 and index.max() < h.bins
    assert np.array_equal(h.counts, np.bincount(index, minlength=h.bins).astype(np.float64) * 16.0)
    assert h.counts.sum() == 16.0 * x.size


def _rebin_interp(counts, lo, width, mn, mx, bins):
    """The old re-binning: np.interp of the cumulative counts, one histogram at a time."""
    new_lo, new_hi = (float(v[0]) for v in _initial_range(np.array([mn]), np.array([mx])))
    new_width = (new_hi - new_lo) / bins
    edges = np.clip(lo + width * np.arange(counts.size + 1), mn, mx)
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    at = np.interp(new_lo + new_width * np.arange(bins + 1), edges, cum)
    at[-1] = cum[-1]
    return np.maximum(np.diff(at), 0.0), new_lo, new_width


def test_rebin_many_is_np_interp_per_histogram():
    rng = np.random.default_rng(4)
    hists = []
    for trial in range(40):
        x = (rng.standard_t(3, int(rng.integers(1, 50_000))) * rng.uniform(1e-3, 1e3) + rng.uniform(-5, 5))
        x = x.astype(np.float32)
        if trial % 5 == 0:
            x = np.maximum(x, 0)
        if trial % 9 == 0:
            x = np.full(x.size, np.float32(rng.uniform(-3, 3)))  # constant: _initial_range widens it
        h = DyadicHistogram(8192)
        h.fit(float(x.min()), float(x.max()))
        h.add(x)
        h.flush()
        hists.append((h.counts, h.lo, h.width, float(x.min()), float(x.max())))
    column = lambda i: np.array([h[i] for h in hists])  # noqa: E731
    counts, lo, width = _rebin_many(np.stack([h[0] for h in hists]), *(column(i) for i in range(1, 5)), 2048)
    for i, h in enumerate(hists):
        ref = _rebin_interp(*h, 2048)
        assert (lo[i], width[i]) == ref[1:]
        assert np.allclose(counts[i], ref[0], rtol=0, atol=1e-9 * h[0].sum()), i
        assert counts[i].sum() == pytest.approx(h[0].sum())


def _histograms(model, x, batch, run_bytes, monkeypatch):
    """Each tensor's streamed histogram state after a sampled pass over `x` in batches of `batch`."""
    from qtool.quant.observers import make_observer
    from qtool.steps.calibrate import OVERSAMPLE, _observe
    from qtool.progress import no_progress

    monkeypatch.setattr(stats_graph, "RUN_BYTES", run_bytes)
    names = [v.name for node in model.graph for v in node.outputs]
    observers = {name: make_observer("sqnr", oversample=OVERSAMPLE) for name in names}
    _observe(model, observers, [{"input": x[i:i + batch]} for i in range(0, len(x), batch)], None, no_progress,
             "sampled")
    state = {}
    for name, o in observers.items():
        o._dyadic.flush()
        state[name] = (o._min, o._max, o._dyadic.e, o._dyadic.k0, o._dyadic.counts.copy())
    return state


@pytest.mark.parametrize("shapes", ["known", "symbolic", "unknown"])
def test_statistics_do_not_depend_on_run_pieces_or_batch_size(monkeypatch, shapes):
    """The rows taken whole are chosen per sample and the sample is placed by stream index, so a
    batch run whole, in runs of one sample, or cut into other batches gives the same histograms
    bin for bin (with rows chosen per run, the pieces changed which rows were exact). Shapes
    `known`: k and the rows per sample are constants of the subgraph; `symbolic` (a dim named,
    not known) and `unknown` (shapes removed): the subgraph finds them, and the rank, at run time."""
    monkeypatch.setattr(stats_graph, "SMALL", 1024)
    model = load_model(SAMPLES / "mobilenet_block.onnx")
    known = load_model(SAMPLES / "mobilenet_block.onnx")
    for node in model.graph if shapes != "known" else []:
        for v in node.outputs:
            if shapes == "unknown":
                v.shape = None
            elif v.shape is not None and len(v.shape) == 4:
                v.shape = ir.Shape([*list(v.shape)[:2], ir.SymbolicDim("h"), v.shape[3]])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 3, 32, 32)).astype(np.float32)
    x[5, :, 7] *= 30  # outlier rows in a few samples: they decide which rows are exact
    x[17, 1] *= 10
    reference = _histograms(model, x, 24, 1 << 40, monkeypatch)  # one run of the whole batch
    assert len(reference) > 3
    if shapes == "symbolic":  # the same rows and k as the constants of the known shapes give
        same = _histograms(known, x, 24, 1 << 40, monkeypatch)
        assert all(np.array_equal(same[n][4], reference[n][4]) for n in reference)
    for batch, run_bytes in ((24, 1 << 10), (8, 1 << 40), (5, 3 << 18), (1, 1 << 40)):
        other = _histograms(model, x, batch, run_bytes, monkeypatch)
        for name, (mn, mx, e, k0, counts) in reference.items():
            assert other[name][:4] == (mn, mx, e, k0), (name, batch, run_bytes)
            assert np.array_equal(other[name][4], counts), (name, batch, run_bytes)


def test_the_statistics_graph_leaves_the_callers_model_as_it_was(monkeypatch):
    """with_sampled_taps adds its nodes to onnx_ir's clone (weights shared, not copied): the
    model the caller holds keeps its nodes, outputs, inputs and initializers."""
    monkeypatch.setattr(stats_graph, "SMALL", 1024)
    model = load_model(SAMPLES / "mobilenet_block.onnx")
    before = ([n.op_type for n in model.graph], [v.name for v in model.graph.outputs],
              [v.name for v in model.graph.inputs], sorted(model.graph.initializers))
    names = [v.name for node in model.graph for v in node.outputs]
    tapped, taps, whole = stats_graph.with_sampled_taps(model, names)
    assert taps and len(list(tapped.graph)) > len(before[0])
    assert len(tapped.graph.outputs) == len(before[1]) + len(whole) + 6 * len(taps) - len(set(whole) & set(before[1]))
    assert ([n.op_type for n in model.graph], [v.name for v in model.graph.outputs],
            [v.name for v in model.graph.inputs], sorted(model.graph.initializers)) == before


def test_min_max_ranges_run_in_pieces_of_bounded_size(monkeypatch):
    """The min-max session runs a batch in runs of at most RUN_BYTES of tapped tensors (sized from
    the model's shapes: onnxruntime keeps the NCHWc reorder of each tapped tensor to the end of a
    run), and the ranges are those of one run of the whole batch."""
    from qtool.quant.observers import make_observer
    from qtool.steps.calibrate import _RangeTaps

    model = load_model(SAMPLES / "mobilenet_block.onnx")
    names = [v.name for node in model.graph for v in node.outputs]
    x = np.random.default_rng(5).standard_normal((8, 3, 32, 32)).astype(np.float32)
    whole = {name: make_observer("minmax") for name in names}
    taps = _RangeTaps(model, whole)
    assert taps.run_limit >= 8
    taps({"input": x})
    shapes = {v.name: v.shape for node in model.graph for v in node.outputs}
    per_sample = sum(int(np.prod(shapes[name][1:])) for name in taps.measured)  # (the others are derived)
    monkeypatch.setattr(stats_graph, "RUN_BYTES", 4 * per_sample * 3)  # 3 samples' worth: runs of 2
    assert stats_graph.samples_per_run(model, taps.measured) == 2
    pieces = {name: make_observer("minmax") for name in names}
    taps = _RangeTaps(model, pieces)
    runs = []
    run = taps.session.run
    monkeypatch.setattr(taps.session, "run", lambda names, feeds, *a: runs.append(len(feeds["input"])) or run(names, feeds))
    taps({"input": x})
    assert runs == [2, 2, 2, 2]
    assert all((whole[n]._min, whole[n]._max) == (pieces[n]._min, pieces[n]._max) for n in names)


def test_min_max_ranges_in_pieces_join_whole_tensor_reductions(monkeypatch, tmp_path):
    """A tensor of rank < 2 is reduced whole, to a 0-d range, which cannot be concatenated
    across runs: each run updates the observers itself, and the ranges equal one run's
    (the bundled classifier's calibrate failed on this when the runs were joined)."""
    import onnx
    from onnx import TensorProto, helper

    from qtool.quant.observers import make_observer
    from qtool.steps.calibrate import _RangeTaps

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
         helper.make_node("Neg", ["s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    path = tmp_path / "rank1.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    model = load_model(path)
    x = np.random.default_rng(7).standard_normal((6, 4)).astype(np.float32)
    whole = {name: make_observer("minmax") for name in ("s", "y")}
    _RangeTaps(model, whole)({"x": x})
    monkeypatch.setattr(stats_graph, "RUN_BYTES", 4)  # one sample a run
    pieces = {name: make_observer("minmax") for name in ("s", "y")}
    taps = _RangeTaps(model, pieces)
    assert taps.run_limit == 1
    taps({"x": x})
    sums = x.sum(axis=1)
    assert (pieces["s"]._min, pieces["s"]._max) == (whole["s"]._min, whole["s"]._max)
    assert np.isclose(pieces["s"]._min, sums.min()) and np.isclose(pieces["y"]._max, -sums.min())
