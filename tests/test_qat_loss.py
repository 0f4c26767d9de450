"""`qtool qat --labels/--loss ce/--temperature`: the losses compute what their formulas say (by
hand), labels train the model and are checked as simulate checks them, and their errors are one
line with exit code 2 that names --labels, writing nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qtool[train] (torch) is not installed: QAT is an optional extra")

from conftest import run_main  # noqa: E402
from qat_helpers import w4a8_block_pair  # noqa: E402

from qtool.train import losses  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """mobilenet_block (10 logits) calibrated to per-tensor W4A8 (Python API), 16 samples and labels."""
    folder = tmp_path_factory.mktemp("qat_loss")
    rng = w4a8_block_pair(folder, samples=16, seed=1)
    np.save(folder / "labels.npy", rng.integers(0, 10, 16))
    return folder


def test_temperature_softens_and_scales_by_t_squared_as_hinton_et_al():
    teacher = torch.softmax(torch.tensor([[0.0, 2.0]]), -1)  # the float model's Softmax output
    student = torch.tensor([[0.5, 0.5]])
    kinds = {"p": "distribution"}

    def by_hand(temperature: float) -> float:  # softmax(log p / T) of softmax([0, 2]) is softmax([0, 2 / T])
        soft = [1 / (1 + math.exp(2 / temperature)), math.exp(2 / temperature) / (1 + math.exp(2 / temperature))]
        return temperature ** 2 * sum(p * math.log(p / 0.5) for p in soft)

    for temperature in (1.0, 2.0, 4.0):
        got = losses.loss("kd", {"p": student}, {"p": teacher}, kinds, temperature).item()
        assert got == pytest.approx(by_hand(temperature), rel=1e-5), temperature
    assert by_hand(1.0) != pytest.approx(by_hand(4.0), rel=1e-2)  # T changes the loss
    values = {"y": torch.tensor([[1.0, 2.0]])}  # not a distribution: relative MSE whatever T is
    target = {"y": torch.tensor([[1.0, 3.0]])}
    for temperature in (1.0, 3.0):
        assert losses.loss("kd", values, target, {"y": "values"}, temperature).item() == pytest.approx(0.5 / 5)


def test_ce_is_the_labels_cross_entropy_on_the_classifier_output():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    by_hand = np.mean([-math.log(math.exp(2) / (math.exp(2) + 2)), -math.log(1 / (math.e + 2))])
    out = {"feature": torch.ones(2, 4, 5), "logits": logits}  # the first classifier-shaped output is scored
    assert losses.loss("ce", out, out, {}, labels=labels).item() == pytest.approx(by_hand, rel=1e-6)
    probs = {"p": torch.softmax(logits, -1)}  # a Softmax output is taken as probabilities
    assert losses.loss("ce", probs, probs, {"p": "distribution"}, labels=labels).item() == pytest.approx(by_hand)


def test_labels_train_with_ce_by_default(work, capsys):
    code, out, err = run_main(["qat", work / "ptq.onnx", "--data", work / "train.npz", "--labels",
                               work / "labels.npy", "--batch-size", "8", "--epochs", "2", "--lr", "3e-3",
                               "--eval-samples", "8", "--json", "-o", work / "ce"], capsys)
    assert code == 0, err
    curve = [epoch["loss"] for epoch in json.loads(out)["epochs"][1:]]
    assert curve[0] > 0.5 and curve[1] < curve[0], curve  # cross-entropy of 10 classes (KD's is ~1e-2), falling
    code, out, err = run_main(["qat", work / "ptq.onnx", "--data", work / "train.npz", "--batch-size", "8",
                               "--lr", "3e-3", "--eval-samples", "8", "--json", "-o", work / "kd"], capsys)
    assert code == 0 and json.loads(out)["epochs"][1]["loss"] < 0.5  # no labels: distillation


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("labels, extra, fragment", [
    (np.zeros(5, np.int64), (), "5 labels for 16 samples"),
    (np.full(16, 10), (), "label 10 is outside 0..9"),
    (np.zeros(16, np.float32), (), "1-D array of integers"),
    (None, ("--loss", "ce"), "--loss ce: needs --labels"),
    (np.zeros(16, np.int64), ("--loss", "kd"), "used by --loss ce only"),
    (np.zeros(16, np.int64), ("--mode", "blocks"), "--mode full"),
], ids=["length", "range", "floats", "ce-without-labels", "labels-with-kd", "labels-with-blocks"])
def test_bad_labels_are_one_line_naming_labels(work, capsys, tmp_path, labels, extra, fragment):
    args = ["qat", work / "ptq.onnx", "--data", work / "train.npz", *extra, "-o", tmp_path / "out" / "q"]
    if labels is not None:
        np.save(tmp_path / "l.npy", labels)
        args += ["--labels", tmp_path / "l.npy"]
    before = _files(tmp_path)
    code, out, err = run_main(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("qtool: error: ") and fragment in lines[0] and "--labels" in lines[0], lines[0]
    if labels is not None:
        assert str(tmp_path / "l.npy") in lines[0]
        assert np.array_equal(np.load(tmp_path / "l.npy"), labels)
    assert _files(tmp_path) == before
