"""--device cpu|cuda (runtime/device.py): the option on every command that runs sessions, the
choice carried to the sessions (and to --jobs workers through QTOOL_DEVICE), and one error line
when CUDA cannot be had. The CUDA run itself needs onnxruntime-gpu and a GPU: skipped elsewhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from qtool.commands.registry import COMMANDS
from qtool.errors import QtoolError
from qtool.runtime import device as dev
from tests.conftest import run_main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_every_session_command_has_the_option():
    for name in ("calibrate", "simulate", "bias-correct", "adaround", "analyze", "mixed-precision"):
        field = COMMANDS[name].fields["device"]
        assert field.default == "cpu" and field.spec.choices == ("cpu", "cuda"), name


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has a CUDA provider")
@pytest.mark.parametrize("command", ["calibrate", "simulate"])
def test_cuda_without_a_provider_is_one_line(command, data_dir, tmp_path, capsys):
    before = sorted(tmp_path.iterdir())
    model = SAMPLES / "conv_bn_relu.onnx"
    code, out, err = run_main([command, model, "--data", data_dir / "d.npz", "--device", "cuda",
                               *(["-o", tmp_path / "p"] if command == "calibrate" else [])], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtool: error: --device cuda: "), err
    assert "qtool[gpu]" in lines[0] and "--device cpu" in lines[0] and "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_cpu_is_the_default_and_runs(data_dir, tmp_path, capsys):
    model = SAMPLES / "conv_bn_relu.onnx"
    code, out, err = run_main(["calibrate", model, "--data", data_dir / "d.npz", "--device", "CPU", "--json",
                               "-o", tmp_path / "p"], capsys)
    assert code == 0, err
    assert json.loads(out)["samples"] == 16
    assert dev.ENV not in os.environ  # the command's choice ends with the command


def test_the_choice_travels_in_the_environment(monkeypatch):
    monkeypatch.delenv(dev.ENV, raising=False)
    assert dev.current_device() == "cpu" and dev.providers() == ["CPUExecutionProvider"]
    with dev.use_device("cpu"):
        assert os.environ[dev.ENV] == "cpu"  # what a --jobs worker process inherits
    assert dev.ENV not in os.environ
    monkeypatch.setenv(dev.ENV, "tpu")
    with pytest.raises(QtoolError, match="QTOOL_DEVICE='tpu'"):
        dev.current_device()
    with pytest.raises(QtoolError, match="--device tpu"):
        with dev.use_device("tpu"):
            pass


def test_a_session_that_fell_back_to_the_cpu_is_an_error():
    class FellBack:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    dev.check_session(FellBack(), "cpu")
    with pytest.raises(QtoolError, match="could not start its CUDA"):
        dev.check_session(FellBack(), "cuda")


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA GPU")
def test_cuda_gives_the_cpu_encodings(data_dir, tmp_path, capsys):
    model = SAMPLES / "conv_bn_relu.onnx"
    found = {}
    for device in ("cpu", "cuda"):
        code, _, err = run_main(["calibrate", model, "--data", data_dir / "d.npz", "--device", device,
                                 "-o", tmp_path / device], capsys)
        assert code == 0, err
        found[device] = json.loads((tmp_path / f"{device}.encodings.json").read_text())
    for cpu, cuda in zip(found["cpu"]["activation_encodings"], found["cuda"]["activation_encodings"]):
        assert cpu["name"] == cuda["name"]
        np.testing.assert_allclose(cpu["scale"], cuda["scale"], rtol=1e-3)
    reports = {}
    for device in ("cpu", "cuda"):
        code, out, err = run_main(["simulate", tmp_path / "cuda.onnx", "--data", data_dir / "d.npz", "--device",
                                   device, "--json"], capsys)
        assert code == 0, err
        reports[device] = json.loads(out)["outputs"]
    for name, row in reports["cpu"].items():
        assert abs(row["sqnr_db"] - reports["cuda"][name]["sqnr_db"]) < 0.5, name


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has a CUDA provider")
def test_the_python_api_does_not_ignore_the_device(monkeypatch):
    import qtool

    monkeypatch.delenv(dev.ENV, raising=False)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with pytest.raises(QtoolError, match="--device cuda"):
        qtool.calibrate(str(SAMPLES / "conv_bn_relu.onnx"), {"input": x}, device="cuda")
    assert qtool.calibrate(str(SAMPLES / "conv_bn_relu.onnx"), {"input": x}, device="cpu").encodings.activations
    assert os.environ[dev.ENV] == "cpu"
