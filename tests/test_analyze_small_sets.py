"""analyze on small evaluation sets (issue 14): when accuracy moves in whole samples the groups are
ranked by the mean probability of the correct class, and the report and the terminal say so;
an exact SQNR is null in report.json and 'exact' in text, never a 300 dB stand-in."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.analysis.metric import MAX_DB, fine_of, load_metric
from qtool.analysis.report_text import number

ROOT = Path(__file__).resolve().parents[1]
CBR = ROOT / "sample_models" / "conv_bn_relu.onnx"


def test_accuracy_and_top1_carry_the_mean_probability_of_the_class_they_count():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((32, 4))
    quantized = reference + 0.3 * rng.standard_normal((32, 4))
    labels = reference.argmax(1)
    accuracy = load_metric("accuracy").score({"y": quantized}, {"y": reference}, labels)
    expected = np.exp(quantized) / np.exp(quantized).sum(1, keepdims=True)
    assert fine_of(accuracy) == pytest.approx(100 * expected[np.arange(32), labels].mean())
    assert accuracy == pytest.approx(100 * np.mean(quantized.argmax(1) == labels)), "the count is unchanged"
    probabilities = {"y": expected}  # an output that already holds probabilities is not softmaxed again
    again = load_metric("accuracy").score(probabilities, {"y": reference}, labels)
    assert fine_of(again) == pytest.approx(fine_of(accuracy))
    top1 = load_metric("top1").score({"y": quantized}, {"y": reference}, None)
    assert fine_of(top1) == pytest.approx(fine_of(accuracy))  # here the labels are the float model's top class
    assert fine_of(pickle.loads(pickle.dumps(accuracy))) == fine_of(accuracy), "scores cross process boundaries"
    assert fine_of(load_metric("sqnr").score({"y": quantized}, {"y": reference}, None)) is None


def test_text_has_no_sentinel():
    assert number(None, "dB") == "exact" and number(float("inf"), "dB") == "exact"
    assert number(None, "%") == "-" and number(12.345, "dB") == "12.35"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """16 samples labelled with the float model's own classes: one sample is 6.25 points."""
    import onnxruntime as ort

    folder = tmp_path_factory.mktemp("labelled")
    data = np.load(data_dir / "d.npz")["input"]
    logits = ort.InferenceSession(str(CBR), providers=["CPUExecutionProvider"]).run(None, {"input": data})[0]
    np.save(folder / "labels.npy", logits.argmax(1).astype(np.int64))
    return data_dir / "d.npz", folder / "labels.npy"


def test_groups_that_accuracy_cannot_tell_apart_are_ranked_by_the_correct_class_probability(labelled, tmp_path, capsys):
    data, labels = labelled
    code, out, err = run_main(["analyze", CBR, "--data", data, "--labels", labels, "-o", tmp_path / "r"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = report["sensitivity"]
    assert {row["loss"] for row in rows} == {0.0}, "accuracy alone ranks nothing here"
    assert report["ranking"]["by"] == "mean probability of the correct class"
    fine_losses = [row["fine_loss"] for row in rows if row["level"] == "node"]
    assert fine_losses == sorted(fine_losses, reverse=True) and fine_losses[0] > 0
    assert report["summary"]["fine"]["float"] > report["summary"]["fine"]["quantized"]
    assert "accuracy cannot tell the groups apart on 16 samples (one sample is 6.25 points" in out
    assert "costs" in out.split("most sensitive")[1].splitlines()[1]
    html = (tmp_path / "r" / "report.html").read_text()
    assert "mean probability of the correct class lost per group (points)" in html


def test_an_exact_sqnr_is_null_in_json_and_exact_in_text(labelled, tmp_path, capsys):
    data, _ = labelled
    code, out, err = run_main(["analyze", CBR, "--data", data, "--metric", "sqnr", "-o", tmp_path / "r"], capsys)
    assert code == 0, err
    text = (tmp_path / "r" / "report.json").read_text()
    report = json.loads(text)
    assert report["summary"]["float"] is None and report["summary"]["quantized"] < MAX_DB
    assert f"{MAX_DB}" not in text and "300.0" not in text
    assert all(row["loss"] is None for row in report["sensitivity"]), "a loss from an exact float means nothing"
    assert "sqnr: float exact, quantized" in out
    html = (tmp_path / "r" / "report.html").read_text()
    assert "300.00" not in html and ">exact<" in html
