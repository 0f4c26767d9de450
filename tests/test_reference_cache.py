"""The float reference cache (issue 16 part 2): simulate's float outputs are stored by content and
reused, a changed model or batch misses, the cache can be turned off and is kept under its bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import qtool.steps.simulate as simulate_step
from conftest import run_main
from qtool.ir.graph import load_model
from qtool.plan.build import PlanOptions, build_plan
from qtool.plan.config import load_config
from qtool.runtime import reference_cache
from qtool.steps.calibrate import CalibrateOptions, calibrate
from qtool.steps.simulate import simulate

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


@pytest.fixture(scope="module")
def pair():
    model = load_model(SAMPLES / "conv_bn_relu.onnx")
    x = np.random.default_rng(0).standard_normal((20, 3, 32, 32)).astype(np.float32)
    plan = build_plan(model, load_config("default"), PlanOptions())
    encodings = calibrate(model, plan, [{"input": x}], CalibrateOptions(scheme="minmax")).encodings
    return model, encodings, x


@pytest.fixture
def sessions(monkeypatch):
    """Counts the sessions simulate makes (the quantized one always; the float one on a miss)."""
    made = []
    real = simulate_step.make_session

    def counting(model, **kwargs):
        made.append(model)
        return real(model, **kwargs)

    monkeypatch.setattr(simulate_step, "make_session", counting)
    return made


def _entries(folder: Path) -> list[Path]:
    return sorted((folder / "reference").glob("*/*.npz"))


def _run(pair, x, **kwargs):
    model, encodings, _ = pair
    return simulate(model, encodings, [{"input": x[i:i + 8]} for i in range(0, len(x), 8)], **kwargs).report


def test_second_simulate_reads_the_float_outputs_from_the_cache(pair, sessions, tmp_path, monkeypatch):
    monkeypatch.setenv("QTOOL_CACHE_DIR", str(tmp_path))
    x = pair[2]
    first = _run(pair, x)
    assert len(sessions) == 2 and len(_entries(tmp_path)) == 3  # float + quantized; one entry per batch
    second = _run(pair, x)
    assert len(sessions) == 3  # the quantized session only: no float model ran
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    bypass = simulate(pair[0], pair[1], [{"input": x[:8]}], bypass=True).report  # from the cache: still exact
    assert all(row["sqnr_db"] == float("inf") for row in bypass.values())


def test_a_changed_batch_or_model_misses(pair, sessions, tmp_path, monkeypatch):
    monkeypatch.setenv("QTOOL_CACHE_DIR", str(tmp_path))
    model, encodings, x = pair
    _run(pair, x)
    changed = x.copy()
    changed[0, 0, 0, 0] += 1.0
    _run(pair, changed)  # the first batch differs: one miss, two hits
    assert len(sessions) == 4 and len(_entries(tmp_path)) == 4
    other = load_model(SAMPLES / "conv_bn_relu.onnx")
    weight = next(v for v in other.graph.initializers.values() if v.const_value.shape and len(v.const_value.shape) == 4)
    array = weight.const_value.numpy().copy()
    array.flat[0] += 0.5
    from qtool.ir.graph import set_initializer

    set_initializer(other, weight, array)
    simulate(other, encodings, [{"input": x[:8]}])
    assert len(sessions) == 6 and len(_entries(tmp_path)) == 5  # a new model: its own entries


def test_cache_off_runs_the_float_model_every_time(pair, sessions, tmp_path, monkeypatch):
    monkeypatch.setenv("QTOOL_CACHE_DIR", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _run(pair, pair[2])
    _run(pair, pair[2])
    assert len(sessions) == 4 and not list(tmp_path.rglob("*.npz"))


def test_cache_is_kept_under_its_bound(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("QTOOL_CACHE_DIR", str(tmp_path))
    _run(pair, pair[2])
    one = _entries(tmp_path)[0].stat().st_size
    monkeypatch.setenv("QTOOL_CACHE_MB", str(1.5 * one / (1 << 20)))
    _run(pair, pair[2][::-1].copy())
    assert len(_entries(tmp_path)) == 1


def test_an_unwritable_cache_warns_and_goes_on(pair, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QTOOL_CACHE_DIR", str(blocker))
    report = _run(pair, pair[2])
    assert report and "cannot be written" in caplog.text


def test_a_damaged_entry_is_a_miss(pair, sessions, tmp_path, monkeypatch):
    monkeypatch.setenv("QTOOL_CACHE_DIR", str(tmp_path))
    first = _run(pair, pair[2])
    for entry in _entries(tmp_path):
        entry.write_bytes(b"broken")
    assert _run(pair, pair[2]) == first and len(sessions) == 4


def test_cli_simulate_twice_same_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QTOOL_CACHE_DIR", str(tmp_path / "cache"))
    np.savez(tmp_path / "d.npz", input=np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32))
    code, _, err = run_main(["calibrate", SAMPLES / "conv_bn_relu.onnx", "--data", tmp_path / "d.npz",
                             "-o", tmp_path / "m"], capsys)
    assert code == 0, err
    outs = []
    for _ in range(2):
        code, out, err = run_main(["simulate", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "--json"], capsys)
        assert code == 0, err
        summary = json.loads(out)
        summary.pop("seconds")
        outs.append(summary)
    assert outs[0] == outs[1] and _entries(tmp_path / "cache")


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("QTOOL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert reference_cache.cache_folder() == tmp_path / "qtool" / "reference"
    monkeypatch.setenv("QTOOL_CACHE_DIR", "OFF")
    assert reference_cache.cache_folder() is None
