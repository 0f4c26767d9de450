"""--executor ray on a local Ray cluster of 2 workers started here (one for the module): calibrate
writes the encodings of the one-process run byte for byte, analyze and mixed-precision the same
reports (every per-layer number equal). Skipped where Ray is not installed (pip install 'qtool[ray]')."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from parallel_models import conv_pad_model, images

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'qtool[ray]'): --executor ray untested")


@pytest.fixture(scope="module")
def cluster():
    from qtool.parallel.executor import RUNTIME_ENV

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=RUNTIME_ENV)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    np.savez(folder / "calib.npz", input=images(40))
    np.savez(folder / "eval.npz", input=images(16, seed=4))
    return conv_pad_model(folder / "conv.onnx"), folder


def _both(capsys, args: list, out: Path) -> tuple[Path, Path]:
    """Run `args` with the local and with the ray executor; their output paths."""
    paths = []
    for executor in ("local", "ray"):
        target = out.with_name(f"{out.name}_{executor}")
        code, _, err = run_main([*args, "--executor", executor, "-o", target], capsys)
        assert code == 0, err
        paths.append(target)
    return paths[0], paths[1]


@pytest.mark.parametrize("scheme", ["sqnr", "minmax"])
def test_calibrate_on_ray_writes_the_one_process_encodings(cluster, inputs, capsys, scheme):
    model, folder = inputs
    local, remote = _both(capsys, ["calibrate", model, "--data", folder / "calib.npz", "--batch-size", "8",
                                   "--scheme", scheme], folder / f"cal_{scheme}")
    one = Path(f"{local}.encodings.json").read_bytes()
    assert Path(f"{remote}.encodings.json").read_bytes() == one and b'"p1"' in one  # the Pad output too


def test_analyze_on_ray_writes_the_one_process_report(cluster, inputs, capsys):
    model, folder = inputs
    local, remote = _both(capsys, ["analyze", model, "--data", folder / "calib.npz", "--eval-data",
                                   folder / "eval.npz", "--batch-size", "8"], folder / "report")
    reports = [json.loads((folder / "report.json").read_text()) for folder in (local, remote)]
    for report in reports:
        del report["overrides_file"]  # the only difference: the folder's name
    assert reports[0] == reports[1] and reports[0]["sensitivity"] and reports[0]["layer_sqnr"]
    assert (remote / "overrides.json").read_bytes() == (local / "overrides.json").read_bytes()


def test_mixed_precision_on_ray_writes_the_one_process_search(cluster, inputs, capsys):
    model, folder = inputs
    local, remote = _both(capsys, ["mixed-precision", model, "--data", folder / "calib.npz", "--eval-data",
                                   folder / "eval.npz", "--batch-size", "8", "--candidates", "w4a4,w8a8"],
                          folder / "amp")
    for name in ("mixed_precision.json", "overrides.json", "model.encodings.json"):
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
