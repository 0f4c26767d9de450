"""`qtool run recipe.yaml`: every ready recipe runs, broken recipes fail with lines, skipping works,
the expect gate fails runs, and a recipe step is the command (same bytes out)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.recipe.gate import check_expectations

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
CLS = SAMPLES / "ppocr_cls.onnx"
CBR = SAMPLES / "conv_bn_relu.onnx"
sys.path.insert(0, str(SAMPLES))
import ocr_data  # noqa: E402


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory) -> dict[str, Path]:
    """Rendered text lines for the bundled classifier: calibration, evaluation and labels."""
    folder = tmp_path_factory.mktemp("cls")
    files = {"calibration": folder / "calib.npz", "evaluation": folder / "eval.npz", "labels": folder / "labels.npy"}
    ocr_data.main(["--task", "cls", "--split", "calib", "--out", str(files["calibration"]), "--model", str(CLS)])
    ocr_data.main(["--task", "cls", "--split", "eval", "--out", str(files["evaluation"]),
                   "--labels-out", str(files["labels"]), "--model", str(CLS)])
    return files


@pytest.fixture
def cbr(tmp_path) -> Path:
    """A small synthetic model with 8 calibration samples and a recipe file beside it."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    (tmp_path / "model.onnx").write_bytes(CBR.read_bytes())
    return tmp_path


CHAIN = """\
model: model.onnx
output: out
data:
  calibration: calib.npz
steps:
  - fold: {}
  - calibrate: {scheme: minmax}
  - simulate: {}
  - export: {prefix: net}
"""


def write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def statuses(out: Path) -> list[str]:
    return [step["status"] for step in json.loads((out / "run.json").read_text())["steps"]]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_ready_recipe_runs_green_on_the_bundled_classifier(recipe, cls_data, tmp_path, capsys):
    sets = [f"data.{key}={path}" for key, path in cls_data.items()]
    sets += ["data.samples=64", f"output={tmp_path / 'out'}", f"model={CLS}"]
    if recipe.stem in ("w4a8-adaround", "w4a8-qat"):
        # 200 iterations instead of 2000 keep the suite fast and still meet the recipe's own gate
        # (3 points; 100% -> 100%, 20 dB on these 64 lines; 30 iterations, about nearest: -16 points)
        sets += ["adaround.iterations=200", "adaround.rows=256"]
    if recipe.stem.endswith("-qat"):  # one short epoch: the suite checks the wiring; docs/qat.md measures QAT
        pytest.importorskip("torch", reason="qtool[train] (torch) is not installed")
        sets += ["qat.epochs=1", "qat.samples=16", "qat.eval_samples=8"]
    code, out, err = run_main(["run", recipe, *[arg for s in sets for arg in ("--set", s)]], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["passed"] and all(s["status"] == "ran" for s in summary["steps"])
    assert summary["metrics"], "every ready recipe measures the model"
    exported = [s for s in summary["steps"] if s["step"] == "export"][0]["summary"]["files"]
    assert all(Path(f).is_file() for f in exported)
    assert "expect:" in recipe.read_text(), "every ready recipe gates its result"


def test_ready_recipes_point_at_the_bundled_model_and_say_when_to_use_them():
    for recipe in RECIPES:
        text = recipe.read_text()
        assert text.startswith("# "), f"{recipe.name}: starts with a comment header"
        assert "model: ../sample_models/ppocr_cls.onnx" in text
    assert {r.stem for r in RECIPES} >= {"quickstart", "w8a8-per-tensor", "w8a8-per-channel", "w8a16",
                                         "w4a8-adaround", "fp16"}


def test_second_run_skips_every_step_in_seconds(cbr):
    recipe = write(cbr, CHAIN)
    command = [sys.executable, "-m", "qtool", "run", str(recipe)]
    first = subprocess.run(command, capture_output=True, text=True, cwd=cbr)
    assert first.returncode == 0, first.stderr
    before = {p: sha(p) for p in (cbr / "out").rglob("*.onnx")}
    start = time.perf_counter()
    second = subprocess.run(command, capture_output=True, text=True, cwd=cbr)
    elapsed = time.perf_counter() - start
    assert second.returncode == 0, second.stderr
    assert statuses(cbr / "out") == ["skipped"] * 4
    assert "0 steps ran, 4 skipped" in second.stdout
    assert elapsed < 4.0  # the first run takes ~15 s; 2 s idle, up to 2.7 s on a loaded 2-core machine
    assert {p: sha(p) for p in (cbr / "out").rglob("*.onnx")} == before


def test_changing_one_option_reruns_that_step_and_those_after_it(cbr, capsys):
    recipe = write(cbr, CHAIN)
    assert run_main(["run", recipe], capsys)[0] == 0
    assert run_main(["run", recipe, "--set", "calibrate.scheme=sqnr"], capsys)[0] == 0
    assert statuses(cbr / "out") == ["skipped", "ran", "ran", "ran"]
    assert run_main(["run", recipe, "--set", "calibrate.scheme=sqnr"], capsys)[0] == 0
    assert statuses(cbr / "out") == ["skipped"] * 4
    assert run_main(["run", recipe, "--set", "export.prefix=other"], capsys)[0] == 0
    assert statuses(cbr / "out") == ["skipped", "ran", "ran", "ran"]  # back to minmax: calibrate reruns
    assert run_main(["run", recipe, "--force"], capsys)[0] == 0
    assert statuses(cbr / "out") == ["ran"] * 4


def test_changed_data_reruns_the_steps_that_read_it(cbr, capsys):
    recipe = write(cbr, CHAIN)
    assert run_main(["run", recipe], capsys)[0] == 0
    rng = np.random.default_rng(1)
    np.savez(cbr / "calib.npz", input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    assert run_main(["run", recipe], capsys)[0] == 0
    assert statuses(cbr / "out") == ["skipped", "ran", "ran", "ran"]


def test_a_deleted_output_reruns_its_step(cbr, capsys):
    recipe = write(cbr, CHAIN)
    assert run_main(["run", recipe], capsys)[0] == 0
    (cbr / "out" / "02-calibrate" / "model.encodings.json").unlink()
    assert run_main(["run", recipe], capsys)[0] == 0
    assert statuses(cbr / "out")[:2] == ["skipped", "ran"]


def test_a_recipe_step_is_the_command_byte_for_byte(cbr, capsys):
    recipe = write(cbr, CHAIN)
    assert run_main(["run", recipe], capsys)[0] == 0
    assert run_main(["fold", cbr / "model.onnx", "-o", cbr / "f.onnx"], capsys)[0] == 0
    assert run_main(["calibrate", cbr / "f.onnx", "--data", cbr / "calib.npz", "--scheme", "minmax",
                     "-o", cbr / "direct"], capsys)[0] == 0
    assert sha(cbr / "out" / "01-fold" / "model.onnx") == sha(cbr / "f.onnx")
    assert sha(cbr / "out" / "02-calibrate" / "model.encodings.json") == sha(cbr / "direct.encodings.json")
    assert run_main(["export", cbr / "direct.onnx", "-o", cbr / "exp", "--prefix", "net"], capsys)[0] == 0
    for name in ("net.encodings", "net_qdq.onnx"):
        assert sha(cbr / "out" / "04-export" / name) == sha(cbr / "exp" / name)


def test_run_json_records_inputs_options_metrics_and_versions(cbr, capsys):
    recipe = write(cbr, CHAIN)
    code, out, _ = run_main(["run", recipe, "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["passed"] and summary["metrics"]["logits"]["sqnr_db"] > 10
    stamp = json.loads((cbr / "out" / "02-calibrate" / "run.json").read_text())
    assert stamp["inputs"]["data"]["sha256"] == sha(cbr / "calib.npz")
    assert stamp["options"]["scheme"] == "minmax" and stamp["versions"]["onnxruntime"]
    assert stamp["outputs"]["encodings"]["sha256"] == sha(cbr / "out" / "02-calibrate" / "model.encodings.json")


def test_expect_gate_fails_the_run_with_exit_code_3(cbr, capsys):
    recipe = write(cbr, CHAIN + "expect:\n  min_sqnr_db: 200\n")
    code, out, err = run_main(["run", recipe], capsys)
    assert code == 3
    assert "min_sqnr_db" in err and "FAILED" in out
    assert json.loads((cbr / "out" / "run.json").read_text())["passed"] is False
    code, out, err = run_main(["run", recipe, "--set", "expect.min_sqnr_db=10"], capsys)
    assert code == 0 and statuses(cbr / "out") == ["skipped"] * 4


def test_expect_on_an_unmeasured_metric_fails():
    outputs = {"a": {"sqnr_db": 31.0}, "b": {"sqnr_db": 24.5, "top1_agreement": 0.9}}
    sqnr = check_expectations({"min_sqnr_db": 25}, outputs)[0]
    assert sqnr.actual == 24.5 and not sqnr.passed  # the worst output counts
    checks = {c.name: c for c in check_expectations({"min_top1_agreement": 85, "max_accuracy_drop": 1.0}, outputs)}
    assert checks["min_top1_agreement"].actual == pytest.approx(90) and checks["min_top1_agreement"].passed
    assert checks["max_accuracy_drop"].actual is None and not checks["max_accuracy_drop"].passed
    assert "not measured" in checks["max_accuracy_drop"].describe()
    drop = check_expectations({"max_accuracy_drop": 1.0}, {"y": {"float_accuracy": 0.95, "quant_accuracy": 0.93}})
    assert drop[0].actual == pytest.approx(2.0) and not drop[0].passed


def test_dry_run_prints_the_plan_and_writes_nothing(cbr, capsys):
    recipe = write(cbr, CHAIN + "config: {defaults: {ops: {is_output_quantized: 'True'}, params: {is_quantized: 'True'}}}\n")
    code, out, err = run_main(["run", recipe, "--dry-run"], capsys)
    assert code == 0, err
    assert "[2/4] calibrate (scheme=minmax)" in out and "would run" in out
    assert not (cbr / "out").exists()


def test_variables_and_set_overrides(cbr, capsys, monkeypatch):
    recipe = write(cbr, CHAIN.replace("{scheme: minmax}", "{scheme: '${scheme}', act_bw: '${bits}'}")
                   + "vars:\n  scheme: minmax\n  bits: 8\n")
    other = cbr / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    (other / "data.npz").write_bytes((cbr / "calib.npz").read_bytes())
    code, _, err = run_main(["run", recipe, "--set", "vars.bits=6", "--set", "data.calibration=data.npz"], capsys)
    assert code == 0, err
    stamp = json.loads((cbr / "out" / "02-calibrate" / "run.json").read_text())
    assert stamp["options"]["act_bw"] == 6 and stamp["options"]["scheme"] == "minmax"
    assert stamp["options"]["data"] == str(other / "data.npz")  # --set paths: relative to the cwd


def test_inline_config_change_reruns_calibrate(cbr, capsys):
    base = CHAIN + "config:\n  defaults:\n    ops: {is_output_quantized: 'True'}\n    params: {is_quantized: 'True'}\n"
    recipe = write(cbr, base)
    assert run_main(["run", recipe], capsys)[0] == 0
    write(cbr, base.replace("params: {is_quantized: 'True'}", "params: {is_quantized: 'True', bitwidth: 4}"))
    assert run_main(["run", recipe], capsys)[0] == 0
    assert statuses(cbr / "out") == ["skipped", "ran", "ran", "ran"]
    enc = json.loads((cbr / "out" / "02-calibrate" / "model.encodings.json").read_text())
    assert {e["bw"] for e in enc["param_encodings"]} == {4}


BROKEN = {
    "unknown step": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - fold: {}\n  - calibrat: {}\n",
                     [(6, "unknown step 'calibrat'; did you mean 'calibrate'?")]),
    "typo'd option": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate:\n      shceme: minmax\n",
                      [(6, "unknown option 'shceme' for step calibrate; did you mean 'scheme'?")]),
    "wrong type": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {param_bw: eight}\n",
                   [(5, "calibrate.param_bw: 'eight' is not a valid integer")]),
    "bad choice": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {scheme: best}\n",
                   [(5, "calibrate.scheme: 'best' is not one of")]),
    "missing model": ("model: nope.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {}\n",
                      [(1, "model 'nope.onnx' not found")]),
    "bad order": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {}\n  - fold: {}\n"
                  "  - export: {}\n", [(7, "step 3 (export) needs encodings, but no calibrate or adaround step "
                                          "comes between step 2 (fold")]),
    "export first": ("model: model.onnx\noutput: out\nsteps:\n  - export: {}\n",
                     [(4, "step 1 (export) needs encodings")]),
    "adaround without data": ("model: model.onnx\noutput: out\nsteps:\n  - adaround: {}\n",
                              [(4, "step 1 (adaround) needs calibration data")]),
    "bad yaml": ("model: model.onnx\noutput: out\nsteps:\n  - fold: {\n  - calibrate: {}\n",
                 [(5, "not valid YAML")]),
    "duplicate key": ("model: model.onnx\noutput: out\nmodel: other.onnx\nsteps:\n  - fold: {}\n",
                      [(3, "duplicate key 'model' (first at line 1)")]),
    "unknown top-level key": ("model: model.onnx\noutput: out\nstep:\n  - fold: {}\n",
                              [(1, "missing required key 'steps'"), (3, "unknown key 'step'; did you mean 'steps'?")]),
    "undefined variable": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {act_bw: '${bits}'}\n",
                           [(5, "undefined variable ${bits}")]),
    "wired option": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {output: x}\n",
                     [(5, "'output' is set by the recipe")]),
    "expect without simulate": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {}\n"
                                "expect:\n  min_sqnr_db: 30\n", [(6, "expect: needs a simulate step")]),
    "bad expect key": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {}\n  - simulate: {}\n"
                       "expect:\n  min_sqnr: 30\n", [(8, "unknown key 'expect.min_sqnr'; did you mean 'min_sqnr_db'?")]),
    "accuracy without labels": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {}\n"
                                "  - simulate: {}\nexpect:\n  max_accuracy_drop: 1\n",
                                [(8, "expect.max_accuracy_drop needs labels")]),
    "bad inline config": ("model: model.onnx\noutput: out\ndata: calib.npz\nconfig:\n  defaults: {opz: {}}\n"
                          "steps:\n  - calibrate: {}\n", [(4, "opz")]),
    "missing step file": ("model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n  - calibrate: {}\n"
                          "  - simulate: {labels: gone.npy}\n", [(6, "simulate.labels 'gone.npy' not found")]),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_broken_recipes_fail_with_their_lines_and_exit_code_2(case, cbr, capsys):
    text, expected = BROKEN[case]
    recipe = write(cbr, text)
    code, out, err = run_main(["run", recipe], capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == len(expected), err
    for (line, message), printed in zip(expected, lines):
        assert printed.startswith(f"qtool: error: {recipe}:{line}: "), printed
        assert message in printed, printed
    assert not (cbr / "out").exists(), "nothing runs before the whole recipe is valid"


def test_every_problem_is_reported_at_once(cbr, capsys):
    recipe = write(cbr, "model: gone.onnx\noutput: out\nsteps:\n  - calibrat: {}\n  - simulate: {bogus: 1}\n")
    code, _, err = run_main(["run", recipe], capsys)
    assert code == 2
    assert [line.split(": ")[2] for line in err.strip().splitlines()] == [
        f"{recipe}:1", f"{recipe}:4", f"{recipe}:5", f"{recipe}:5", f"{recipe}:5"]


def test_bad_set_and_missing_recipe_are_one_line_errors(cbr, capsys):
    recipe = write(cbr, CHAIN)
    code, _, err = run_main(["run", recipe, "--set", "nosuchstep.x=1"], capsys)
    assert code == 2 and "the recipe has no step or key named 'nosuchstep'" in err
    code, _, err = run_main(["run", recipe, "--set", "calibrate.scheme=best"], capsys)
    assert code == 2 and "--set steps.1.calibrate.scheme" in err and "'best' is not one of" in err
    code, _, err = run_main(["run", cbr / "none.yaml"], capsys)
    assert code == 2 and err.strip() == f"qtool: error: {cbr / 'none.yaml'}: no such recipe file"


def test_a_failing_step_names_itself_and_leaves_no_stamp(cbr, capsys):
    np.savez(cbr / "calib.npz", input=np.zeros((2, 5), np.float32))
    recipe = write(cbr, CHAIN)
    code, _, err = run_main(["run", recipe], capsys)
    assert code == 2 and "step 2 (calibrate" in err
    assert not (cbr / "out" / "02-calibrate" / "run.json").exists()
