"""`qtool qat --oscillation` (Nagel et al. 2022): oscillations are counted as the paper defines
them, the dampening term is the authors' formula (checked by hand), and on a 4-bit model freezing
makes the integers oscillate less per step while the written pair still computes what was trained."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qtool[train] (torch) is not installed: QAT is an optional extra")

from conftest import run_main  # noqa: E402
from qat_helpers import qdq_outputs, relative_error  # noqa: E402

import qtool  # noqa: E402

from qtool.commands.inputs import load_pair  # noqa: E402
from qtool.quant.encoding import Encoding  # noqa: E402
from qtool.train import oscillation  # noqa: E402
from qtool.train.fake_quant import FakeQuant  # noqa: E402
from qtool.train.lower import LoweredModel  # noqa: E402


def test_an_oscillation_is_a_move_back_against_the_previous_move():
    tracker = oscillation.Tracker((1,), freeze=False)
    counts = []
    for value in (0, 1, 0, 1, 1, 2, 1):  # +1, -1 (back), +1 (back), none, +1 (same way), -1 (back)
        with torch.enable_grad():
            tracker(torch.tensor([float(value)]))
        counts.append(tracker.oscillated)
    assert counts == [0, 0, 1, 1, 0, 0, 1]
    frequency = 0.0
    for oscillated in counts[1:]:
        frequency = 0.99 * frequency + 0.01 * oscillated
    assert tracker.frequency.item() == pytest.approx(frequency)
    with torch.no_grad():  # evaluation passes are not tracked
        tracker(torch.tensor([5.0]))
    assert tracker.previous.item() == 1.0


def test_the_dampening_term_is_the_papers_formula_by_hand():
    quantizer = FakeQuant(Encoding(4, np.float32([0.1]), np.int64([-8]), symmetric=True), "w")  # grid -0.8..0.7
    weight = torch.tensor([[0.03, 0.26, 0.9], [-0.74, -0.12, 0.05]], requires_grad=True)
    # q(w): 0, 0.3, 0.7 (clamped), -0.7, -0.1, 0 (0.5 rounds to even); clip(w): 0.9 -> 0.7
    squared = np.array([[0.03 ** 2, 0.04 ** 2, 0.0], [0.04 ** 2, 0.02 ** 2, 0.05 ** 2]])
    by_hand = squared.sum(0).mean()  # kernel_mean: summed over output channels, averaged over the rest
    term = oscillation.dampening_term(quantizer, weight)
    assert term.item() == pytest.approx(by_hand, rel=1e-5)
    term.backward()
    expected = 2 * np.array([[0.03, -0.04, 0.0], [-0.04, -0.02, 0.05]]) / 3  # d/dw (w - q)^2 / 3; clipped: 0
    assert np.allclose(weight.grad.numpy(), expected, atol=1e-6)
    assert oscillation.cosine(0.0, 0.1, 0.5) == pytest.approx(0.05)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The paper's toy setting: one layer (Gemm 16 -> 8) whose float weights lie between the points
    of a 4-bit grid, trained by distillation towards its own float outputs; 8 steps an epoch."""
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("qat_oscillation")
    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")], "toy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array((rng.standard_normal((16, 8)) * 0.3).astype(np.float32), "w"),
                               numpy_helper.from_array(np.zeros(8, np.float32), "b")])
    (folder / "m.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                      ir_version=8).SerializeToString())
    np.savez(folder / "train.npz", x=rng.standard_normal((64, 16)).astype(np.float32))
    qtool.calibrate(folder / "m.onnx", folder / "train.npz", param_bw=4, per_channel=False).save(folder / "ptq")
    return folder


def _train(work, capsys, name, *extra):
    code, out, err = run_main(["-q", "qat", work / "ptq.onnx", "--data", work / "train.npz", "--batch-size", "8",
                               "--epochs", "5", "--lr", "1e-2", "--eval-samples", "16", *extra, "--json",
                               "-o", work / name], capsys)
    assert code == 0, err
    return json.loads(out)["epochs"]


def test_freezing_makes_4_bit_weights_oscillate_less(work, capsys):
    assert "oscillations_per_step" not in _train(work, capsys, "off", "--oscillation", "off")[-1]  # nothing tracked
    frozen = _train(work, capsys, "freeze")  # auto: freeze, the weights having 4 bits
    tracked = _train(work, capsys, "tracked", "--oscillation", "dampen", "--dampen-weight", "0")  # counted only
    same = ("loss", "eval_sqnr_db", "oscillations_per_step")
    assert [frozen[1][k] for k in same] == [tracked[1][k] for k in same]  # the same run until an integer freezes
    assert frozen[-1]["frozen"] > 0 and tracked[-1]["frozen"] == 0
    assert frozen[-1]["oscillations_per_step"] < 0.6 * tracked[-1]["oscillations_per_step"], (frozen, tracked)
    graph, encodings, _ = load_pair(work / "freeze.onnx", None)  # frozen integers are in the written weights
    feeds = {"x": np.load(work / "train.npz")["x"][:8]}
    with torch.no_grad():
        actual = LoweredModel(graph, encodings)({"x": torch.from_numpy(feeds["x"])})
    assert relative_error(actual["y"].numpy(), qdq_outputs(graph, encodings, feeds)["y"]) <= 1e-4
