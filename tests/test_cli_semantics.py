"""What the command line means (issue 14, item 5): equalize is exact by default, calibrate without
-o writes beside the model, -o is a prefix / file / folder by kind of output, every float option
refuses NaN and infinity in one line, and a recipe's run.json records no wall-clock time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import run_main
from qtool.commands.registry import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


@pytest.fixture
def work(tmp_path) -> Path:
    shutil.copy(SAMPLES / "conv_bn_relu.onnx", tmp_path / "cbr.onnx")
    shutil.copy(SAMPLES / "mobilenet_block.onnx", tmp_path / "mb.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    return tmp_path


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_equalize_keeps_relu6_exact_by_default(work, capsys):
    code, out, err = run_main(["equalize", work / "mb.onnx", "-o", work / "cle.onnx", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["relu6_replaced"] > 0 and summary["pairs_scaled"] > 0  # ReLU6 made scalable, pairs scaled
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32) * 4  # past 6 after the convs
    before, after = _outputs(work / "mb.onnx", x), _outputs(work / "cle.onnx", x)
    assert np.max(np.abs(after - before)) < 1e-3 * max(1.0, float(np.max(np.abs(before))))
    code, _, _ = run_main(["equalize", work / "mb.onnx", "--relu6", "replace", "-o", work / "aimet.onnx"], capsys)
    assert code == 0 and not np.allclose(_outputs(work / "aimet.onnx", x), before, atol=1e-3)  # AIMET's way changes it


def test_calibrate_without_output_writes_beside_the_model_and_says_where(work, capsys):
    before = (work / "cbr.onnx").read_bytes()
    code, out, err = run_main(["calibrate", work / "cbr.onnx", "--data", work / "calib.npz"], capsys)
    assert code == 0, err
    assert (work / "cbr.encodings.json").is_file() and (work / "cbr.onnx").read_bytes() == before
    assert f"wrote {work / 'cbr.encodings.json'} beside {work / 'cbr.onnx'}" in out
    assert sorted(p.name for p in work.iterdir()) == ["calib.npz", "cbr.encodings.json", "cbr.onnx", "mb.onnx"]
    code, out, _ = run_main(["simulate", work / "cbr.onnx", "--data", work / "calib.npz"], capsys)  # finds the pair
    assert code == 0 and "SQNR" in out


def test_output_means_one_thing_per_kind_and_help_says_which(capsys):
    kinds = {name: command.output.kind if command.output else None for name, command in COMMANDS.items()}
    assert kinds == {"calibrate": "prefix", "bias-correct": "prefix", "adaround": "prefix", "qat": "prefix", "fold": "file",
                     "equalize": "file", "simulate": "file", "plot-ranges": "file", "export": "folder",
                     "analyze": "folder", "mixed-precision": "folder", "info": None, "bench": None}
    shown = {"prefix": "-o, --output PREFIX", "file": "-o, --output FILE", "folder": "-o, --output-dir FOLDER"}
    for name, kind in kinds.items():
        code, out, _ = run_main([name, "--help"], capsys)
        assert code == 0
        if kind:
            assert shown[kind] in out, name
    code, out, _ = run_main(["--help"], capsys)
    assert "-o means one thing per kind of output" in " ".join(out.split())


def _float_options() -> list[tuple[str, str, int]]:
    """(command, flag, number of values) for every float option of every command."""
    found = []
    for name, command in COMMANDS.items():
        for field in command.fields.values():
            if field.kind in ("float", "float_pair"):
                found.append((name, field.flag, 2 if field.kind == "float_pair" else 1))
    return found


FLOAT_OPTIONS = _float_options()


def test_every_float_option_is_checked():
    assert {(name, flag) for name, flag, _ in FLOAT_OPTIONS} >= {
        ("calibrate", "--percentile"), ("calibrate", "--sqnr-gamma"), ("adaround", "--reg-param"),
        ("adaround", "--beta-range"), ("adaround", "--warm-start"), ("analyze", "--budget"), ("analyze", "--target"),
        ("mixed-precision", "--budget"), ("mixed-precision", "--target")}


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
@pytest.mark.parametrize("name, flag, count", FLOAT_OPTIONS, ids=[f"{n}{f}" for n, f, _ in FLOAT_OPTIONS])
def test_nan_and_infinity_are_one_line_errors(work, capsys, name, flag, count, value):
    args = [name, work / "cbr.onnx", flag, *([value] + ["2"] * (count - 1))]
    if "data" in COMMANDS[name].fields:
        args += ["--data", work / "calib.npz"]
    if COMMANDS[name].output is not None:
        args += ["-o", work / "out"]
    code, out, err = run_main(args, capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qtool: error: {flag}: ") and "not a finite number" in lines[0]
    assert not (work / "out").exists() and not list(work.glob("out*"))


RECIPE = """\
model: cbr.onnx
output: out
data:
  calibration: calib.npz
steps:
  - fold: {}
  - calibrate: {scheme: minmax}
  - simulate: {}
"""


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in _keys(item)}
    return set()


def test_run_json_records_no_wall_clock_time(work, capsys):
    (work / "recipe.yaml").write_text(RECIPE)
    stamps = []
    for _ in range(2):
        shutil.rmtree(work / "out", ignore_errors=True)
        assert run_main(["run", work / "recipe.yaml"], capsys)[0] == 0
        stamps.append({p.relative_to(work).as_posix(): p.read_bytes() for p in sorted((work / "out").rglob("run.json"))})
    assert len(stamps[0]) == 4 and stamps[0] == stamps[1]  # out/run.json and one per step, same bytes twice
    for text in stamps[0].values():
        assert "seconds" not in _keys(json.loads(text))
    timings = json.loads((work / "out" / "timings.json").read_text())
    assert [step["step"] for step in timings["steps"]] == ["fold", "calibrate", "simulate"]
    assert all(step["seconds"] >= 0 for step in timings["steps"])
