"""Same inputs, same bytes (issue 13 part 5): every command that writes files, run twice in two
fresh processes with different string-hash seeds (so that an output depending on set or dict
order of strings would differ), must write byte-identical files: models, external data,
encodings, reports (report.json, report.html, mixed_precision.json: no wall-clock seconds),
overrides, plots, a recipe's outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from small_model import commands, tree, workspace, write_recipe

OUT = "o"
# a recipe's timings.json records how long each step took: a log of the run, not one of its
# results; its run.json files (what ran, options, inputs, outputs, metrics) are compared like the rest
LOGS = {"timings.json"}

DRIVER = """\
import json, sys
from qtool.cli import cli
for name, args in json.loads(sys.argv[1]):
    try:
        cli.main(args=["-q", *args], prog_name="qtool", standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise
"""


def _run_all(folder: Path, seed: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands(OUT))], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def _results(folder: Path) -> dict[str, str]:
    return {name: sha for name, sha in tree(folder / OUT).items() if Path(name).name not in LOGS}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    folder = workspace(tmp_path_factory.mktemp("determinism"), external=True)
    write_recipe(folder, OUT)
    runs = []
    for seed in ("1", "2"):
        shutil.rmtree(folder / OUT, ignore_errors=True)
        proc = _run_all(folder, seed)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(_results(folder))
    return runs


@pytest.mark.parametrize("name", [name for name, _ in commands(OUT)])
def test_each_command_writes_the_same_bytes_twice(two_runs, name):
    first, second = two_runs
    prefix = {"fold": "fold.onnx", "equalize": "cle.onnx", "calibrate": "cal.", "bias-correct": "bc.",
              "adaround": "ada.", "simulate": "sim.onnx", "export": "exp/", "analyze": "an/",
              "mixed-precision": "mp/", "plot-ranges": "ranges.svg", "run": "recipe/"}[name]
    files = sorted(f for f in first if f.startswith(prefix))
    assert files, f"{name} wrote nothing under {prefix}"
    different = [f for f in files if first[f] != second.get(f)]
    assert not different, f"{name}: {different} differ between two runs"


def test_both_runs_wrote_the_same_files(two_runs):
    first, second = two_runs
    assert sorted(first) == sorted(second)
    for expected in ("an/report.json", "an/report.html", "mp/mixed_precision.json"):
        assert expected in first
