"""The error boundary around the corpus: what a bad input must not hide (a bug keeps its
traceback and asks for a report), models whose batch dim is fixed to 1, batches bounded in
bytes, and onnxruntime's own log lines kept off stderr in a real process."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.data.sources import InputInfo, open_data
from qtool.errors import QtoolError

sys.path.insert(0, str(Path(__file__).resolve().parent / "corpus"))
from build_corpus import embedding_model, good_data, tiny_model  # noqa: E402


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(tmp_path, monkeypatch):
    import qtool.steps.fold as fold

    tiny_model(tmp_path / "m.onnx")

    def broken(model):
        raise KeyError("a bug in qtool")

    monkeypatch.setattr(fold, "fold_batch_norms", broken)
    result = _invoke(["fold", tmp_path / "m.onnx", "-o", tmp_path / "f.onnx"])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'a bug in qtool'" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("qtool: internal error: please report at ")
    assert not (tmp_path / "f.onnx").exists()


def test_memory_error_is_one_line(tmp_path, monkeypatch):
    import qtool.steps.fold as fold

    tiny_model(tmp_path / "m.onnx")
    monkeypatch.setattr(fold, "fold_batch_norms", lambda model: (_ for _ in ()).throw(MemoryError()))
    result = _invoke(["fold", tmp_path / "m.onnx", "-o", tmp_path / "f.onnx"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("qtool: error: out of memory") and "--batch-size" in line


def test_qtool_error_crosses_process_boundaries_with_its_hint():
    error = pickle.loads(pickle.dumps(QtoolError("m.onnx: bad", "fix it")))
    assert str(error) == "m.onnx: bad (fix it)"


def test_batch_dim_fixed_to_one_works_in_bias_correct_and_adaround(tmp_path):
    """A model exported with batch 1 runs sample by sample; bias correction measures the same
    corrections as on the same model with a dynamic batch dim."""
    tiny_model(tmp_path / "one.onnx", batch=1)
    tiny_model(tmp_path / "any.onnx")
    np.savez(tmp_path / "d.npz", input=good_data(6))
    corrected = {}
    for name in ("one", "any"):
        assert _invoke(["calibrate", tmp_path / f"{name}.onnx", "--data", tmp_path / "d.npz", "--scheme", "minmax",
                        "-o", tmp_path / "cal" / name]).exit_code == 0
        result = _invoke(["bias-correct", tmp_path / "cal" / f"{name}.onnx", "--data", tmp_path / "d.npz",
                          "--batch-size", "4", "--json", "-o", tmp_path / "bc" / name])
        assert result.exit_code == 0, result.output
        corrected[name] = json.loads(result.stdout)["empirical"]
    assert corrected["one"].keys() == corrected["any"].keys() and len(corrected["one"]) == 3
    for layer, value in corrected["any"].items():
        assert corrected["one"][layer] == pytest.approx(value, rel=1e-4, abs=1e-7)
    result = _invoke(["adaround", tmp_path / "one.onnx", "--data", tmp_path / "d.npz", "--iterations", "20",
                      "--rows", "64", "-o", tmp_path / "ar" / "one"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ar" / "one.encodings.json").exists()


def test_batches_stay_within_the_byte_budget(tmp_path, monkeypatch):
    """QTOOL_BATCH_BYTES caps the samples per batch whatever --batch-size says; every sample
    comes once, in order, and min-max calibration gives the same encodings."""
    np.savez(tmp_path / "d.npz", input=good_data(10))
    info = [InputInfo("input", (None, 3, 8, 8), np.dtype(np.float32))]
    sample = 3 * 8 * 8 * 4
    monkeypatch.setenv("QTOOL_BATCH_BYTES", str(3 * sample + 10))
    batches = list(open_data(str(tmp_path / "d.npz"), info).batches(1000))
    assert [len(b.indices) for b in batches] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), good_data(10))
    tiny_model(tmp_path / "m.onnx")
    args = ["calibrate", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "--scheme", "minmax", "--batch-size", "1000"]
    assert _invoke([*args, "-o", tmp_path / "small" / "m"]).exit_code == 0
    monkeypatch.delenv("QTOOL_BATCH_BYTES")
    assert _invoke([*args, "-o", tmp_path / "whole" / "m"]).exit_code == 0
    assert (tmp_path / "small" / "m.encodings.json").read_bytes() == (tmp_path / "whole" / "m.encodings.json").read_bytes()
    monkeypatch.setenv("QTOOL_BATCH_BYTES", "lots")
    result = _invoke([*args, "-o", tmp_path / "bad" / "m"])
    assert result.exit_code == 2 and "QTOOL_BATCH_BYTES=lots" in result.stderr


def test_onnxruntime_failure_in_a_real_process_is_one_line(tmp_path):
    """onnxruntime logs a failing node on the process's stderr from C++; only qtool's line may be there."""
    embedding_model(tmp_path / "emb.onnx", indirect=True)
    np.savez(tmp_path / "ids.npz", ids=np.full((2, 6), 12, np.int64))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "qtool.cli", "simulate", "emb.onnx", "--bypass", "--data", "ids.npz"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "qtool: error: emb.onnx: onnxruntime failed in Gather node 'gather': indices element out of data bounds, "
        "idx=12 must be within the inclusive range [-10,9] (does the data fit the model (shapes, value ranges, "
        "the inputs it was exported for)?)"]
