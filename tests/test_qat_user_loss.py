"""`qtool qat --loss file.py:function`: the user's function is what training minimises, it gets
the outputs (and with --labels the labels) as torch tensors, its mistakes are one line naming the
file (exit 2, nothing written), and a recipe may name it only with `qtool run --allow-code`."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qtool[train] (torch) is not installed: QAT is an optional extra")

from conftest import run_main  # noqa: E402
from qat_helpers import w4a8_block_pair  # noqa: E402

LOSSES = """\
import torch

def scaled(quantized, target):  # 1000 x the squared error: a loss no built-in gives
    assert isinstance(quantized, dict) and isinstance(target, dict), (type(quantized), type(target))
    return 1000 * sum(((quantized[n] - target[n]) ** 2).mean() for n in target)

def with_labels(quantized, labels):
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int64, labels
    return torch.nn.functional.cross_entropy(quantized["logits"].flatten(1), labels) + 100.0

def raises(quantized, target):
    raise ValueError("no good")

def vector(quantized, target):
    return (quantized["logits"] - target["logits"]).flatten(1).mean(1)

def constant(quantized, target):
    return torch.tensor(1.0)

CALLS = []

def nan_in_epoch_2(quantized, target):  # 2 steps an epoch: the third call is epoch 2, step 1
    CALLS.append(1)
    error = sum(((quantized[n] - target[n]) ** 2).mean() for n in target)
    return error * float("nan") if len(CALLS) == 3 else error
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qat_user_loss")
    rng = w4a8_block_pair(folder, samples=8, seed=2)
    np.save(folder / "labels.npy", rng.integers(0, 10, 8))
    (folder / "losses.py").write_text(LOSSES)
    return folder


def _qat(work, capsys, out, *extra):
    return run_main(["-q", "qat", work / "ptq.onnx", "--data", work / "train.npz", "--batch-size", "4", "--lr", "3e-3",
                     "--eval-samples", "4", "--json", *extra, "-o", out], capsys)


def test_the_users_function_is_the_loss(work, capsys, tmp_path):
    code, out, err = _qat(work, capsys, tmp_path / "q", "--loss", f"{work / 'losses.py'}:scaled")
    assert code == 0, err
    assert json.loads(out)["epochs"][1]["loss"] > 1.0  # 1000 x the squared error (kd's relative error is < 1)
    code, out, err = _qat(work, capsys, tmp_path / "l", "--loss", f"{work / 'losses.py'}:with_labels",
                          "--labels", work / "labels.npy")
    assert code == 0, err
    assert json.loads(out)["epochs"][1]["loss"] > 100.0  # the labels reached it as a tensor


@pytest.mark.parametrize("spec, fragment", [
    ("missing.py:scaled", "no such loss file"),
    ("losses.py:nothing", "has no function 'nothing'"),
    ("losses.py:raises", "raises() raised ValueError: no good"),
    ("losses.py:vector", "returned a tensor of shape (4,)"),
    ("losses.py:constant", "does not depend on the quantized outputs"),
], ids=["no-file", "no-function", "raises", "not-scalar", "no-gradient"])
def test_a_bad_loss_is_one_line_naming_the_file(work, capsys, tmp_path, spec, fragment):
    file, _, function = spec.partition(":")
    before = (work / "losses.py").read_text()
    code, out, err = _qat(work, capsys, tmp_path / "out" / "q", "--loss", f"{work / file}:{function}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"qtool: error: {work / file}") and fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and (work / "losses.py").read_text() == before


def test_a_recipe_names_a_loss_file_only_with_allow_code(work, capsys, tmp_path):
    (tmp_path / "l.py").write_text("from pathlib import Path\nPath(__file__).with_name('executed').write_text('x')\n"
                                   "def f(q, t):\n    return sum(v.sum() for v in q.values())\n")
    (tmp_path / "m.onnx").write_bytes((work / "m.onnx").read_bytes())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m.onnx\noutput: out\ndata: " + str(work / "train.npz") +
                      "\nsteps:\n  - calibrate: {}\n  - qat: {loss: l.py:f}\n")
    code, out, err = run_main(["run", recipe, "--dry-run"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "qat.loss 'l.py:f'" in lines[0] and "--allow-code" in lines[0], err
    assert "kd, ce, mse" in lines[0] and not (tmp_path / "executed").exists()
    code, out, err = run_main(["run", recipe, "--dry-run", "--allow-code"], capsys)
    assert code == 0 and f"{tmp_path / 'l.py'}:f" in out, err
    assert not (tmp_path / "executed").exists()  # a dry run imports nothing
    recipe.write_text(recipe.read_text().replace("l.py:f", "kd"))
    assert run_main(["run", recipe, "--dry-run"], capsys)[0] == 0  # built-in losses need no flag


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_good_state(work, capsys, tmp_path):
    code, out, err = _qat(work, capsys, tmp_path / "q", "--epochs", "2", "--loss",
                          f"{work / 'losses.py'}:nan_in_epoch_2")
    lines = [line for line in err.strip().splitlines() if line.startswith("qtool: error: ")]  # (and progress)
    assert code == 2 and len(lines) == 1 and err.strip().endswith(lines[0]) and "Traceback" not in err, err
    assert "training diverged: the loss became nan at epoch 2, step 1" in lines[0], lines[0]
    assert "was written to" in lines[0] and str(tmp_path / "q.onnx") in lines[0]
    assert (tmp_path / "q.onnx").is_file() and (tmp_path / "q.encodings.json").is_file()
    state = torch.load(tmp_path / "q.qat-checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1  # epoch 1's checkpoint is kept: the run can be resumed from there
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())


def test_loading_a_loss_file_writes_nothing_beside_it(tmp_path, monkeypatch):
    """The import system would leave __pycache__ in the user's folder (without PYTHONDONTWRITEBYTECODE)."""
    import sys

    from qtool.train.user_loss import load

    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    (tmp_path / "my_loss.py").write_text("def f(q, t):\n    return 0\n")
    load(f"{tmp_path / 'my_loss.py'}:f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_loss.py"]
