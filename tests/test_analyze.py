"""The debugging flow: the switchable model is exact, the evaluator is consistent, and analyze
finds a deliberately broken layer and writes overrides that recover the model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.analysis.evaluate import Evaluator, Setting
from qtool.analysis.groups import blocks, quantizer_groups
from qtool.analysis.metric import load_metric
from qtool.analysis.switchable import build_switchable
from qtool.encodings.encoding_set import EncodingSet
from qtool.errors import QtoolError
from qtool.commands.inputs import load_pair
from qtool.ir.qdq import build_qdq_model
from qtool.quant import QuantSpec
from qtool.quant.encoding import encode_tensor
from qtool.runtime.sessions import make_session

ROOT = Path(__file__).resolve().parents[1]
CBR = ROOT / "sample_models" / "conv_bn_relu.onnx"
BROKEN = ROOT / "sample_models" / "broken_layer.onnx"


def calibrated(model: Path, folder: Path, capsys, *extra) -> tuple:
    out = folder / f"{model.stem}_{len(extra)}"
    assert run_main(["calibrate", model, "--data", folder / "d.npz", "-o", out, *extra], capsys)[0] == 0
    return load_pair(f"{out}.onnx", None)


def batch(folder: Path) -> dict[str, np.ndarray]:
    return {"input": np.load(folder / "d.npz")["input"][:8]}


def test_switchable_model_is_float_at_0_and_the_qdq_model_at_1_bit_for_bit(data_dir, capsys):
    model, enc, _ = calibrated(CBR, data_dir, capsys)
    switchable = build_switchable(model, {n: [e] for n, e in {**enc.activations, **enc.params}.items()})
    session = make_session(switchable.model, optimize=False)
    feeds = batch(data_dir)
    float_out = make_session(model, optimize=False).run(None, feeds)[0]
    qdq_out = make_session(build_qdq_model(model, enc), optimize=False).run(None, feeds)[0]
    assert np.array_equal(session.run(None, {**feeds, **switchable.feeds(default=0)})[0], float_out)
    assert np.array_equal(session.run(None, {**feeds, **switchable.feeds(default=1)})[0], qdq_out)
    assert not np.array_equal(qdq_out, float_out)
    # one quantizer on = the QDQ model with that one encoding
    name = "conv.weight_3"
    only = make_session(build_qdq_model(model, EncodingSet({}, {name: enc.params[name]})), optimize=False)
    assert np.array_equal(session.run(None, {**feeds, **switchable.feeds({name: 1}, default=0)})[0],
                          only.run(None, feeds)[0])


def test_second_candidate_is_selected_by_2(data_dir, capsys):
    model, enc, _ = calibrated(CBR, data_dir, capsys)
    name = "conv.weight_2"
    weights = next(v for k, v in model.graph.initializers.items() if k == name).const_value.numpy()
    wide = encode_tensor(weights, QuantSpec(bw=4, symmetric=True))
    switchable = build_switchable(model, {name: [enc.params[name], wide]})
    session = make_session(switchable.model, optimize=False)
    expected = make_session(build_qdq_model(model, EncodingSet({}, {name: wide})), optimize=False)
    feeds = batch(data_dir)
    assert np.array_equal(session.run(None, {**feeds, **switchable.feeds({name: 2})})[0],
                          expected.run(None, feeds)[0])


def test_evaluator_scores_agree_across_processes_and_metrics_are_right(data_dir, capsys):
    model, enc, _ = calibrated(CBR, data_dir, capsys)
    switchable = build_switchable(model, {n: [e] for n, e in {**enc.activations, **enc.params}.items()})
    batches = [{"input": np.load(data_dir / "d.npz")["input"]}]
    one = Evaluator(model, switchable, batches, load_metric("sqnr"))
    settings = [Setting.of({q: 1}, default=0) for q in list(switchable.selectors)[:6]]
    assert one.scores(settings) == Evaluator(model, switchable, batches, load_metric("sqnr"), jobs=2).scores(settings)
    assert one.score(Setting.of(default=0)) == 300.0  # identical outputs: capped, finite
    quant = one.outputs(Setting.of(default=1))["logits"].astype(np.float64)
    ref = one.reference["logits"].astype(np.float64)
    assert one.score(Setting.of(default=1)) == pytest.approx(10 * np.log10((ref ** 2).sum() / ((ref - quant) ** 2).sum()))
    top1 = load_metric("top1").score({"y": quant}, {"y": ref}, None)
    assert top1 == pytest.approx(100 * np.mean(quant.argmax(1) == ref.argmax(1)))
    labels = ref.argmax(1)
    assert load_metric("accuracy").score({"y": ref}, {"y": ref}, labels) == 100.0
    with pytest.raises(QtoolError, match="needs --labels"):
        load_metric("accuracy").score({"y": ref}, {"y": ref}, None)


def test_custom_metric_from_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as for a user without PYTHONDONTWRITEBYTECODE
    (tmp_path / "m.py").write_text("def score(outputs, reference, labels):\n    return 42.0\n")
    assert load_metric(f"{tmp_path / 'm.py'}:score").score({}, {}, None) == 42.0
    with pytest.raises(QtoolError, match="has no function"):
        load_metric(f"{tmp_path / 'm.py'}:nothing")
    with pytest.raises(QtoolError, match="expected one of"):
        load_metric("bogus")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]  # no __pycache__ beside the user's file


def test_blocks_split_at_layers(data_dir, capsys):
    model, enc, _ = calibrated(CBR, data_dir, capsys)
    groups = quantizer_groups(model, enc)
    coarse = blocks(model, groups)
    layers = sum(node.op_type in ("Conv", "Gemm") for node in model.graph)
    assert len(coarse) == layers
    assert sorted(q for block, _ in coarse for q in block.quantizers) == sorted(q for g in groups for q in g.quantizers)


def test_analyze_finds_the_broken_layer_and_its_overrides_recover_the_model(data_dir, capsys):
    report_dir = data_dir / "report"
    calibrated(BROKEN, data_dir, capsys)
    code, out, err = run_main(["analyze", f"{data_dir / 'broken_layer_0'}.onnx", "--data", data_dir / "d.npz",
                               "--jobs", "2", "--write-overrides", data_dir / "ov.json", "-o", report_dir], capsys)
    assert code == 0, err
    report = json.loads((report_dir / "report.json").read_text())
    assert report["fp32_sanity"]["passed"] and report["fp32_sanity"]["max_abs_diff"] == 0.0
    assert report["summary"]["quantized"] < 3.0  # the broken model under per-tensor W8A8
    assert report["sensitivity"][0]["group"] in ("Conv_2", "Relu_2"), report["sensitivity"][:3]
    stats = {row["tensor"]: row for row in report["statistics"]}
    assert max(stats["conv.weight_2"]["channel_max"]) > 100 * sorted(stats["conv.weight_2"]["channel_max"])[-2]
    assert report["suggestions"] and (data_dir / "ov.json").read_bytes() == (report_dir / "overrides.json").read_bytes()
    html = (report_dir / "report.html").read_text()
    assert "<svg" in html and "http" not in html
    # the fix, written back: calibrate with the overrides and measure
    code, out, _ = run_main(["calibrate", BROKEN, "--data", data_dir / "d.npz", "--overrides", data_dir / "ov.json",
                             "-o", data_dir / "fixed"], capsys)
    assert code == 0
    code, out, _ = run_main(["simulate", data_dir / "fixed.onnx", "--data", data_dir / "d.npz", "--json"], capsys)
    logits = json.loads(out)["outputs"]["logits"]
    assert logits["sqnr_db"] > 30.0
    # without labels analyze works on the worst class's SQNR (channel_sqnr), and predicts it
    assert report["metric"]["name"] == "channel_sqnr"
    assert logits["worst_channel_sqnr_db"] == pytest.approx(report["suggestions"][-1]["expected"], abs=0.5)


def test_analyze_errors_are_one_line(data_dir, capsys):
    calibrated(BROKEN, data_dir, capsys)
    code, _, err = run_main(["analyze", f"{data_dir / 'broken_layer_0'}.onnx", "--data", data_dir / "d.npz",
                             "--metric", "accuracy", "-o", data_dir / "r2"], capsys)
    assert code == 2 and err.strip() == "qtool: error: --metric accuracy needs --labels"


def test_outliers_are_values_clipped_by_more_than_half_a_step():
    from qtool.analysis.tensors import clip_bounds, outlier_ratio
    from qtool.quant.encoding import compute_encoding

    enc = compute_encoding(-0.375, 10.0, QuantSpec(bw=8))
    encodings = EncodingSet({"t": enc}, {})
    low, high = clip_bounds(encodings, "t")
    assert float(enc.min[0]) - low == pytest.approx(float(enc.scale[0]) / 2)
    values = np.array([-0.375, 0.0, float(enc.max[0]) + 0.4 * float(enc.scale[0]), 11.0], np.float32)
    assert outlier_ratio(values, low, high) == 0.25  # only 11.0: the others are within rounding
