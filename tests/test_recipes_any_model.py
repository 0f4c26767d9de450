"""The ready recipes serve any model (issue 14, part 3): without labels the gate falls back to the
output SQNR, `--set model=` names outputs after that model and leaves the demo's data and folder
alone, quickstart folds so its export runs every Conv on integer kernels (but those fused with a hard-swish), and a recipe's every
problem is reported in one run."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.recipe.gate import check_expectations

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
CBR = ROOT / "sample_models" / "conv_bn_relu.onnx"
CLS = ROOT / "sample_models" / "ppocr_cls.onnx"


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """The ready recipes copied under tmp_path/recipes (their `../build` is tmp_path/build), a
    label-free model named other.onnx and 8 calibration samples for it; the cwd is tmp_path."""
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    (tmp_path / "other.onnx").write_bytes(CBR.read_bytes())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_ready_recipe_accepts_a_model_without_labels(recipe, workspace, capsys):
    code, out, err = run_main(["run", f"recipes/{recipe.name}", "--set", "model=other.onnx",
                               "--set", "data.calibration=calib.npz", "--dry-run"], capsys)
    assert code == 0, err
    assert f"output build/recipes/other/{recipe.stem}" in out, "the folder is named after the model run"
    assert "data.evaluation and data.labels (made for ../sample_models/ppocr_cls.onnx) are not used" in err
    assert not (workspace / "build").exists()


def test_a_recipe_run_on_another_model_writes_its_own_names_and_gates_on_sqnr(workspace, capsys):
    code, out, err = run_main(["run", "recipes/w8a8-per-channel.yaml", "--set", "model=other.onnx",
                               "--set", "data.calibration=calib.npz"], capsys)
    assert code == 0, err
    folder = workspace / "build" / "recipes" / "other" / "w8a8-per-channel"
    assert sorted(p.name for p in (folder / "06-export").glob("*.onnx")) == ["other.onnx", "other_qdq.onnx"]
    summary = json.loads((folder / "run.json").read_text())
    gate = {check["name"]: check for check in summary["expect"]}
    assert gate["max_accuracy_drop"]["skipped"] and gate["max_accuracy_drop"]["passed"]
    assert gate["min_sqnr_db"]["actual"] > 10 and gate["min_sqnr_db"]["skipped"] is None
    assert "max_accuracy_drop: skipped, no labels: min_sqnr_db gates this run" in out
    assert sorted(p.name for p in (workspace / "build").iterdir()) == ["recipes"]
    assert [p.name for p in (workspace / "build" / "recipes").iterdir()] == ["other"], "no demo folder written"


def test_data_given_with_the_new_model_is_kept(workspace, capsys):
    code, out, err = run_main(["run", "recipes/quickstart.yaml", "--set", "model=other.onnx", "--set",
                               "data.calibration=calib.npz", "--set", "data.evaluation=calib.npz", "--dry-run"], capsys)
    assert code == 0, err
    assert "data.labels (made for ../sample_models/ppocr_cls.onnx) is not used" in err
    assert "data.evaluation" not in err


def test_without_output_the_folder_is_beside_the_model(workspace, capsys):
    (workspace / "r.yaml").write_text("model: other.onnx\ndata: calib.npz\nsteps:\n  - calibrate: {}\n")
    code, out, err = run_main(["run", "r.yaml", "--dry-run"], capsys)
    assert code == 0, err
    assert ", output other-r\n" in out


def test_an_accuracy_gate_without_labels_needs_a_label_free_check(workspace, capsys):
    text = ("model: other.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {}\n  - simulate: {}\n"
            "expect:\n  max_accuracy_drop: 1\n")
    (workspace / "r.yaml").write_text(text)
    code, _, err = run_main(["run", "r.yaml"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "r.yaml:8: expect.max_accuracy_drop needs labels" in err and "min_sqnr_db" in err
    (workspace / "r.yaml").write_text(text + "  min_channel_sqnr_db: 5\n")
    code, _, err = run_main(["run", "r.yaml", "--dry-run"], capsys)
    assert code == 0, err


def test_the_gate_skips_accuracy_only_when_a_label_free_check_was_measured():
    unlabelled = {"y": {"sqnr_db": 25.0, "worst_channel_sqnr_db": 12.0}}
    checks = {c.name: c for c in check_expectations({"max_accuracy_drop": 1, "min_channel_sqnr_db": 15}, unlabelled)}
    assert checks["max_accuracy_drop"].passed and "no labels" in checks["max_accuracy_drop"].describe()
    assert checks["min_channel_sqnr_db"].actual == 12.0 and not checks["min_channel_sqnr_db"].passed
    alone = check_expectations({"min_accuracy": 90}, unlabelled)[0]
    assert not alone.passed and alone.skipped is None, "a gate with nothing measured fails"
    labelled = {"y": {"sqnr_db": 25.0, "float_accuracy": 0.9, "quant_accuracy": 0.8}}
    drop = check_expectations({"max_accuracy_drop": 1, "min_sqnr_db": 20}, labelled)[0]
    assert drop.skipped is None and drop.actual == pytest.approx(10) and not drop.passed
    exact = check_expectations({"min_sqnr_db": 20}, {"y": {"sqnr_db": float("inf")}})[0]
    assert exact.passed and "exact" in exact.describe()


def test_every_problem_of_a_recipe_is_reported_at_once(workspace, capsys):
    text = ("model: gone.onnx\noutput: out\ncolour: blue\ndata:\n  calibration: calib.npz\n  samples: -3\n"
            "steps:\n  - calibrat: {}\n  - simulate: {bogus: 1}\n  - calibrate: [1, 2]\n")
    (workspace / "r.yaml").write_text(text)
    code, _, err = run_main(["run", "r.yaml"], capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert all(line.startswith("qtool: error: r.yaml:") for line in lines), lines
    for expected in ("r.yaml:3: unknown key 'colour'", "r.yaml:6: data.samples", "r.yaml:10: steps.2.calibrate",
                     "r.yaml:1: model 'gone.onnx' not found", "r.yaml:8: unknown step 'calibrat'",
                     "r.yaml:9: unknown option 'bogus' for step simulate"):
        assert sum(expected in line for line in lines) == 1, (expected, lines)
    assert len(lines) == 6
    assert not (workspace / "out").exists()


def _integer_convs(qdq_model: Path, tmp_path: Path) -> tuple[int, int]:
    """(QLinearConv nodes after onnxruntime's optimisation, Conv nodes of the float model)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(qdq_model), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(node.op_type for node in onnx.load(tmp_path / "optimized.onnx").graph.node)
    return ops["QLinearConv"], sum(node.op_type == "Conv" for node in onnx.load(CLS).graph.node)


def test_quickstart_folds_so_onnxruntime_runs_every_conv_as_an_integer_kernel(workspace, capsys):
    rng = np.random.default_rng(0)
    np.savez(workspace / "lines.npz", x=rng.uniform(-1, 1, (8, 3, 48, 192)).astype(np.float32))
    sets = [f"model={CLS}", "data.calibration=lines.npz", "data.evaluation=lines.npz", "data.labels=null", "output=qs"]
    arguments = [arg for item in sets for arg in ("--set", item)]
    code, _, err = run_main(["run", "recipes/quickstart.yaml", *arguments], capsys)
    assert code == 0, err
    stamp = json.loads((workspace / "qs" / "run.json").read_text())
    assert [step["step"] for step in stamp["steps"]][0] == "fold"
    integer, convs = _integer_convs(workspace / "qs" / "05-export" / "ppocr_cls_qdq.onnx", workspace)
    # a Conv fused with the hard-swish after it (Conv+HardSwish supergroup) has no output quantizer,
    # and onnxruntime has no integer hard-swish: those run in float, every other Conv on integer kernels
    from qtool.ir.graph import load_model
    from qtool.ir.hard_swish import hard_swish_fused
    from qtool.steps.fold import fold_batch_norms

    folded = fold_batch_norms(load_model(CLS)).model
    with_hard_swish = sum(n.op_type == "Conv" and n.outputs[0].name in hard_swish_fused(folded) for n in folded.graph)
    assert convs == 53 and 0 < with_hard_swish < convs and integer == convs - with_hard_swish
