"""The public Python API (docs/api.md): its examples run as written, it takes arrays as well as
files and gives what the commands give, it checks options like the CLI, prints nothing, and
`import qtool` stays light."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qtool
from conftest import run_main

ROOT = Path(__file__).resolve().parents[1]
CBR = ROOT / "sample_models" / "conv_bn_relu.onnx"
DOC = ROOT / "docs" / "api.md"


@pytest.fixture
def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_every_python_block_of_the_api_doc_runs_as_written(tmp_path, monkeypatch, capsys):
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models")
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    assert len(blocks) >= 4
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md python block {index + 1}", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    assert "Pair(<in memory>, 15 activation + 8 param encodings)" in out
    assert "data: no array for model input 'input' (found: image)" in out
    assert (tmp_path / "out" / "model.encodings.json").is_file() and (tmp_path / "report" / "report.html").is_file()
    assert sorted(p.name for p in (tmp_path / "deploy").iterdir()) == ["cbr.encodings", "cbr.onnx", "cbr_qdq.onnx"]


def test_the_doc_names_every_public_name():
    text = DOC.read_text()
    public = [name for name in qtool.__all__ if name != "__version__"]
    assert public and all(f"qtool.{name}" in text for name in public), public


def test_import_qtool_imports_no_onnx_and_its_names_resolve():
    code = ("import sys, qtool; before = sorted(m for m in ('onnx', 'onnx_ir', 'onnxruntime', 'numpy', 'click') "
            "if m in sys.modules); qtool.load, qtool.calibrate, qtool.Report; "
            "print(before, sorted(m for m in ('onnx', 'onnx_ir', 'onnxruntime') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] []"
    with pytest.raises(AttributeError):
        qtool.not_a_public_name  # noqa: B018


def test_arrays_give_the_encodings_a_file_gives(tmp_path, calib, capsys):
    np.savez(tmp_path / "calib.npz", input=calib)
    assert run_main(["calibrate", CBR, "--data", tmp_path / "calib.npz", "--config", "w8a8-per-channel",
                     "-o", tmp_path / "cli"], capsys)[0] == 0
    pair = qtool.calibrate(CBR, {"input": calib}, config="w8a8-per-channel")
    pair.save(tmp_path / "api")
    digest = [hashlib.sha256((tmp_path / f"{name}.encodings.json").read_bytes()).hexdigest() for name in ("cli", "api")]
    assert digest[0] == digest[1]
    parts = qtool.calibrate(CBR, [{"input": calib[:3]}, {"input": calib[3:]}], config="w8a8-per-channel")
    assert parts.report.summary["samples"] == 8
    assert capsys.readouterr().out == ""  # the API prints nothing


def test_defaults_are_the_commands_defaults():
    from qtool.cli import cli
    from qtool.commands.registry import COMMANDS

    for name, command in COMMANDS.items():
        options = {param.name: param.default for param in cli.commands[name].params
                   if param.name not in ("model", "output", "as_json")}
        assert options.keys() == command.fields.keys(), name
        assert {k: v for k, v in options.items() if not command.fields[k].required} == command.defaults(), name
    assert COMMANDS["equalize"].defaults()["relu6"] == "bound"


def test_transforms_return_pairs_and_reports(calib, tmp_path):
    folded = qtool.fold(CBR)
    assert folded.encodings is None and folded.path is None and len(folded.report.summary["folded"]) == 6
    pair = qtool.calibrate(folded, calib, scheme="minmax")
    corrected = qtool.bias_correct(pair, calib, iterations=1)
    assert corrected.encodings is not None and corrected.report.summary["empirical"]
    bypass = qtool.simulate(corrected, calib, bypass=True)
    assert bypass.summary["outputs"]["logits"]["max_abs_error"] == 0.0
    labels = np.arange(8) % 10
    scored = qtool.simulate(corrected, calib, labels, reference=folded)
    assert 0 <= scored.summary["outputs"]["logits"]["quant_accuracy"] <= 1 and "simulated 8 samples" in str(scored)


@pytest.mark.parametrize("call, named", [
    (lambda m, x: qtool.calibrate(m, {"input": x[:, :1]}), "data: input 'input' has shape"),
    (lambda m, x: qtool.calibrate(m, {"input": x, "other": x}), "'other' is not an input of the model"),
    (lambda m, x: qtool.calibrate(m, x, scheme="best"), "calibrate: scheme: 'best' is not one of"),
    (lambda m, x: qtool.calibrate(m, x, act_bw=40), "calibrate: act_bw: 40 is not in the range 2<=x<=16"),
    (lambda m, x: qtool.calibrate(m, x, percentile=float("inf")), "percentile: inf is not a finite number"),
    (lambda m, x: qtool.calibrate(m, x, sceme="minmax"), "unknown option 'sceme'"),
    (lambda m, x: qtool.simulate(m, x), "needs encodings, and this model has none"),
    (lambda m, x: qtool.simulate(qtool.calibrate(m, x), x, labels=np.zeros(3, np.int64)), "labels"),
    (lambda m, x: qtool.fold(42), "got int"),
])
def test_bad_inputs_raise_one_qtool_error(call, named, calib):
    with pytest.raises(qtool.QtoolError) as error:
        call(CBR, calib)
    assert named in str(error.value) and "\n" not in str(error.value)
