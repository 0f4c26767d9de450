"""analyze and mixed-precision runs start from cached activations (analysis/suffix.py) and keep
their per-sample arrays within QTOOL_ANALYSIS_MB (runtime/spill.py): both change no number."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.analysis.evaluate import Evaluator, Setting
from qtool.analysis.metric import load_metric
from qtool.runtime.spill import Spill
from qtool.analysis.switchable import build_switchable
from qtool.commands.inputs import load_pair
from qtool.errors import QtoolError

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _pair(name: str, folder: Path, capsys):
    model = SAMPLES / f"{name}.onnx"
    from qtool.ir.graph import load_model
    from qtool.runtime.sessions import input_infos

    rng = np.random.default_rng(1)
    arrays = {i.name: rng.standard_normal([12, *[d or 3 for d in i.shape[1:]]]).astype(np.float32)
              for i in input_infos(load_model(model))}
    np.savez(folder / f"{name}.npz", **arrays)
    out = folder / name
    assert run_main(["calibrate", model, "--data", folder / f"{name}.npz", "-o", out], capsys)[0] == 0
    graph, enc, _ = load_pair(f"{out}.onnx", None)
    batches = [{k: v[i:i + 5] for k, v in arrays.items()} for i in range(0, 12, 5)]  # 5, 5, 2 samples
    return graph, enc, batches


def _settings(selectors: list[str], top: int) -> list[Setting]:
    """Each quantizer alone on and alone off, and random mixes (as the greedy searches make)."""
    rng = np.random.default_rng(0)
    some = selectors[::max(1, len(selectors) // 8)]
    settings = [Setting.of({q: 1}, default=0) for q in some] + [Setting.of({q: 0}, default=1) for q in some]
    for _ in range(4):
        settings.append(Setting.of({q: int(rng.integers(0, top + 1)) for q in selectors if rng.random() < 0.3},
                                   default=int(rng.integers(0, top + 1))))
    return settings


@pytest.mark.parametrize("name", ["mobilenet_block", "attention_block", "two_inputs"])
def test_suffix_runs_give_the_whole_passes_outputs_bit_for_bit(name, tmp_path, capsys):
    graph, enc, batches = _pair(name, tmp_path, capsys)
    encodings = {**enc.activations, **enc.params}
    # two candidates per quantizer (the fix evaluator's and mixed precision's nested Ifs)
    switchable = build_switchable(graph, {n: [e, e] for n, e in encodings.items()})
    whole = Evaluator(graph, switchable, batches, load_metric("sqnr"), cuts=0)
    cut = Evaluator(graph, switchable, batches, load_metric("sqnr"), spill=Spill(budget=0))
    try:
        assert cut.plan is not None and cut.plan.cuts
        settings = _settings(list(switchable.selectors), 2)
        for setting in settings:
            want, got = whole.outputs(setting), cut.outputs(setting)
            for output in whole.names:
                assert np.array_equal(np.asarray(want[output]), np.asarray(got[output])), (setting, output)
        assert cut.bases and cut.suffix_sessions  # runs did start from cached activations
        assert cut.spill.spilled > 0  # and with no RAM budget, everything went to disk
    finally:
        folder = cut.spill.folder
        cut.close()
        whole.close()
    assert not Path(folder).exists()


def _report(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    report.pop("overrides_file")
    return report


def test_analyze_with_a_tiny_budget_spills_and_reports_the_same(tmp_path, capsys, monkeypatch):
    graph, _, _ = _pair("mobilenet_block", tmp_path, capsys)
    pair, data = tmp_path / "mobilenet_block.onnx", tmp_path / "mobilenet_block.npz"
    args = ["analyze", pair, "--data", data, "--eval-samples", "10", "--batch-size", "4"]
    assert run_main([*args, "-o", tmp_path / "normal"], capsys)[0] == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    spilled = []
    real = Spill._path
    monkeypatch.setattr(Spill, "_path", lambda self: spilled.append(1) or real(self))
    monkeypatch.setenv("QTOOL_ANALYSIS_MB", "0.001")
    assert run_main([*args, "-o", tmp_path / "tiny"], capsys)[0] == 0
    assert spilled and not list(scratch.iterdir())  # files were written, and removed at the end
    assert _report(tmp_path / "tiny") == _report(tmp_path / "normal")


def test_mixed_precision_with_a_tiny_budget_gives_the_same_result(tmp_path, capsys, monkeypatch):
    _pair("mobilenet_block", tmp_path, capsys)
    args = ["mixed-precision", SAMPLES / "mobilenet_block.onnx", "--data", tmp_path / "mobilenet_block.npz",
            "--candidates", "w4a8,w8a8", "--budget", "0.5", "--metric", "sqnr", "--batch-size", "4",
            "--scheme", "minmax", "--samples", "4", "--eval-samples", "8"]
    assert run_main([*args, "-o", tmp_path / "normal"], capsys)[0] == 0
    monkeypatch.setenv("QTOOL_ANALYSIS_MB", "0")
    assert run_main([*args, "-o", tmp_path / "tiny"], capsys)[0] == 0
    for name in ("mixed_precision.json", "overrides.json", "model.encodings.json"):
        assert (tmp_path / "tiny" / name).read_bytes() == (tmp_path / "normal" / name).read_bytes()


def test_a_bad_budget_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QTOOL_ANALYSIS_MB", "lots")
    with pytest.raises(QtoolError, match="QTOOL_ANALYSIS_MB=lots"):
        Spill()
