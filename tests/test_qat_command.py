"""`qtool qat`: a few steps of distillation lower a small model's quantization error, the pair it
writes is what the torch model computed (simulate and the lowering agree on it), and its errors
are one line with exit code 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qtool[train] (torch) is not installed: QAT is an optional extra")

from conftest import run_main  # noqa: E402
from qat_helpers import qdq_outputs, relative_error, w4a8_block_pair  # noqa: E402

from qtool.commands.inputs import load_pair  # noqa: E402
from qtool.train.lower import LoweredModel  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """mobilenet_block (BatchNorms unfolded) calibrated to per-tensor W4A8, and its data."""
    folder = tmp_path_factory.mktemp("qat")
    rng = w4a8_block_pair(folder, samples=24, seed=0)
    np.savez(folder / "eval.npz", input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _qat(work, capsys, out: str, *extra):
    return run_main(["qat", work / "ptq.onnx", "--data", work / "train.npz", "--eval-data", work / "eval.npz",
                     "--samples", "16", "--batch-size", "8", "--epochs", "2", "--lr", "3e-3", "--json", "-o", work / out,
                     *extra], capsys)


@pytest.mark.parametrize("extra", [(), ("--range-learning",)], ids=["fixed-ranges", "range-learning"])
def test_kd_lowers_the_quantization_error_and_the_pair_is_what_was_trained(work, capsys, extra):
    name = "qat_ranges" if extra else "qat"
    code, out, err = _qat(work, capsys, name, *extra)
    assert code == 0, err
    summary = json.loads(out)
    curve = [epoch["eval_sqnr_db"] for epoch in summary["epochs"]]
    assert len(curve) == 3 and "epoch 1/2: loss" in err  # epoch 0 is the PTQ start; a line per epoch
    assert max(curve[1:]) > curve[0] + 1.0, curve  # KD from the float model's own outputs, no labels
    assert summary["best_epoch"] == int(np.argmax(curve))
    graph, encodings, _ = load_pair(work / f"{name}.onnx", None)
    assert not any(node.op_type == "BatchNormalization" for node in graph.graph)  # folded first
    feeds = {"input": np.load(work / "eval.npz")["input"][:4]}
    expected = qdq_outputs(graph, encodings, feeds)
    with torch.no_grad():
        actual = LoweredModel(graph, encodings)({"input": torch.from_numpy(feeds["input"])})
    assert relative_error(actual["logits"].numpy(), expected["logits"]) <= 1e-4
    before = load_pair(work / "ptq.onnx", None)[1]
    changed = [n for n, e in encodings.activations.items() if not e.same_as(before.activations.get(n, e))]
    assert bool(changed) == bool(extra)  # fixed ranges stay fixed; range learning moves them
    code, out, err = run_main(["simulate", work / f"{name}.onnx", "--data", work / "eval.npz", "--json",
                               "--reference", work / "m.onnx"], capsys)
    assert code == 0, err
    simulated = json.loads(out)["outputs"]["logits"]["sqnr_db"]
    assert abs(simulated - curve[summary["best_epoch"]]) < 1.0, (simulated, curve)


def _one_line(work, capsys, args, fragment):
    before = _digests(work)
    code, out, err = run_main(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("qtool: error: ") and fragment in lines[0], lines[0]
    return before, lines[0]


def test_unsupported_op_is_one_line(work, capsys, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Einsum", ["c", "c"], ["y"], equation="nchw,nchw->nchw", name="einsum_1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")])
    model = tmp_path / "odd.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                      .SerializeToString())
    np.savez(tmp_path / "d.npz", x=np.ones((4, 3, 8, 8), np.float32))
    assert run_main(["-q", "calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "p"], capsys)[0] == 0
    before, line = _one_line(tmp_path, capsys, ["qat", tmp_path / "p.onnx", "--data", tmp_path / "d.npz",
                                                "-o", tmp_path / "out"], "Einsum (node 'einsum_1')")
    assert str(tmp_path / "p.onnx") in line and _digests(tmp_path) == before


def test_without_torch_the_error_says_how_to_install(work, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    before, line = _one_line(work, capsys, ["qat", work / "ptq.onnx", "--data", work / "train.npz", "-o", work / "x"],
                             "pip install 'qtool[train]'")
    assert _digests(work) == before


def test_exploding_scales_stop_with_the_best_state_kept(work, capsys):
    args = ["-q", "qat", work / "ptq.onnx", "--data", work / "train.npz", "--samples", "8", "--eval-samples", "8",
            "--range-learning", "--range-lr", "1000", "-o", work / "boom"]
    before, line = _one_line(work, capsys, args,
                             "training diverged")
    assert "the best state (epoch 0" in line and (work / "boom.onnx").exists()


def test_an_interrupted_run_resumes_to_the_same_state(work, capsys, monkeypatch):
    from qtool.train import losses

    args = ["-q", "qat", work / "ptq.onnx", "--data", work / "train.npz", "--eval-data", work / "eval.npz",
            "--samples", "8", "--batch-size", "4", "--epochs", "2", "--lr", "3e-3", "--range-learning"]
    assert run_main([*args, "-o", work / "whole"], capsys)[0] == 0
    assert not (work / "whole.qat-checkpoint.pt").exists()  # a finished run leaves no checkpoint
    real, calls = losses.loss, []

    def interrupted(*a, **k):  # Ctrl-C in the first step of epoch 2 (2 steps an epoch)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(losses, "loss", interrupted)
    code, _, _ = run_main([*args, "-o", work / "cut"], capsys)
    assert code != 0 and (work / "cut.qat-checkpoint.pt").is_file() and not (work / "cut.onnx").exists()
    monkeypatch.setattr(losses, "loss", real)
    code, _, err = run_main([*args, "--resume", "-o", work / "cut"], capsys)
    assert code == 0, err
    for suffix in (".onnx", ".encodings.json"):
        assert (work / f"cut{suffix}").read_bytes() == (work / f"whole{suffix}").read_bytes(), suffix
    before, line = _one_line(work, capsys, [*args, "--resume", "-o", work / "none"], "no checkpoint to resume from")
    assert "none.qat-checkpoint.pt" in line


def test_block_wise_reconstruction_lowers_the_error(work, capsys):
    code, out, err = run_main(["qat", work / "ptq.onnx", "--data", work / "train.npz", "--eval-data", work / "eval.npz",
                               "--samples", "16", "--batch-size", "8", "--lr", "3e-3", "--mode", "blocks",
                               "--block-layers", "4", "--json", "-o", work / "blocks"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    curve = [record["eval_sqnr_db"] for record in summary["epochs"]]
    assert summary["mode"] == "blocks" and len(curve) >= 3 and "block 1/" in err
    assert curve[-1] > curve[0] + 1.0 and summary["best_epoch"] == len(curve) - 1, curve
