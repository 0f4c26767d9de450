"""`qtool qat --bn-reestimate N`: the folded BN's bias shift re-estimated after training, checked
against a hand computation (beta minus the quantized layer output's channel means, from
onnxruntime's QDQ simulation), and reported (kept only when it raises the evaluation SQNR)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qtool[train] (torch) is not installed: QAT is an optional extra")

from conftest import run_main  # noqa: E402
from qat_helpers import qdq_outputs  # noqa: E402

import qtool  # noqa: E402
from qtool.commands.inputs import load_pair  # noqa: E402
from qtool.train.bn_reestimate import folded_layers, reestimate  # noqa: E402
from qtool.train.lower import LoweredModel  # noqa: E402
from qtool.train.pair import fold_for_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """conv_bn_relu (6 BatchNorms, unfolded) calibrated to per-tensor W8A8 on 8 Gaussian samples."""
    folder = tmp_path_factory.mktemp("qat_bn")
    rng = np.random.default_rng(4)
    np.savez(folder / "train.npz", input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    shutil.copy(ROOT / "sample_models" / "conv_bn_relu.onnx", folder / "m.onnx")
    qtool.calibrate(folder / "m.onnx", folder / "train.npz", per_channel=False).save(folder / "ptq")
    return folder


def test_the_bias_shift_is_beta_minus_the_quantized_channel_means(work):
    model, encodings, _ = load_pair(work / "ptq.onnx", None)
    folded, encodings, _ = fold_for_training(model, encodings)
    layers = folded_layers(folded)
    assert len(layers) == 6  # every BN was folded; conv_6 kept its own bias and had no BN
    x = np.load(work / "train.npz")["input"]
    student = LoweredModel(folded, encodings)
    bias, beta = layers["batchnormalization_1"]  # the first layer: its input is the quantized graph input
    old = student.named_initializers()[bias].detach().numpy().copy()
    shifts = reestimate(student, layers, ({"input": torch.from_numpy(x[i:i + 4])} for i in (0, 4)), 2)
    output = qdq_outputs(folded, encodings, {"input": x}, every=True)["batchnormalization_1"]  # before its quantizer
    by_hand = beta - output.astype(np.float64).mean(axis=(0, 2, 3))  # two equal batches: the mean of their means
    assert np.allclose(shifts["batchnormalization_1"], by_hand, atol=1e-5 * np.abs(beta).max())
    assert np.allclose(student.named_initializers()[bias].detach().numpy(), old + by_hand, atol=1e-5)
    assert np.abs(by_hand).max() > 1e-2  # Gaussian inputs are not the BN's data: the shift is not nothing


def test_the_command_reports_it_and_keeps_it_only_if_it_helps(work, capsys):
    code, out, err = run_main(["-q", "qat", work / "ptq.onnx", "--data", work / "train.npz", "--batch-size", "4",
                               "--eval-samples", "4", "--bn-reestimate", "2", "--json", "-o", work / "q"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    record = summary["bn_reestimation"]
    assert record["layers"] == 6 and record["batches"] == 2
    assert record["kept"] == (record["eval_sqnr_db_after"] > record["eval_sqnr_db_before"])
    best = summary["epochs"][summary["best_epoch"]]["eval_sqnr_db"]
    code, out, err = run_main(["simulate", work / "q.onnx", "--data", work / "train.npz", "--samples", "4",
                               "--reference", work / "m.onnx", "--json"], capsys)
    simulated = json.loads(out)["outputs"]["logits"]["sqnr_db"]
    expected = record["eval_sqnr_db_after"] if record["kept"] else best
    assert code == 0 and abs(simulated - expected) < 0.5, (simulated, record, best)
