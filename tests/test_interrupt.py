"""Interrupted writes (issue 13 part 5): qtool killed while it writes its outputs.

A real `qtool` process writes a model + encodings pair (its model with external data, so three
files) with QTOOL_TEST_SLOW_WRITE set, which makes every write stop half-way and say so on stderr;
the test kills it there. SIGINT and SIGTERM must leave nothing (no output, no temporary file);
SIGKILL cannot be caught and leaves temporary files, which the next run into that folder removes
(and reports). Then the rerun's outputs are byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qtool.files.atomic import SLOW_WRITE_ENV, TEMP_NAME
from small_model import invoke, tree, workspace

CALIBRATE = ["calibrate", "m.onnx", "--data", "d.npz", "--scheme", "minmax", "-o", "out/cal"]
FOLD = ["fold", "m.onnx", "-o", "out/fold.onnx"]


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if p.is_file())


def _kill_while_writing(folder: Path, args: list[str], sig: int) -> tuple[int, str]:
    """Start qtool, wait for its first write to pause half-way, send `sig`; (exit code, stderr)."""
    env = {**os.environ, SLOW_WRITE_ENV: "60"}
    # a shell without job control starts background jobs with SIGINT ignored, and Python then
    # never installs its KeyboardInterrupt handler: give the child the default disposition back
    proc = subprocess.Popen([sys.executable, "-m", "qtool", "-q", *args], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in proc.stderr:  # ends at EOF if qtool fails before writing
            seen.append(line)
            if line.startswith("qtool-test: writing"):
                assert _temporaries(folder / "out"), "paused in a write without a temporary file"
                proc.send_signal(sig)
                break
        rest = proc.stderr.read()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any(line.startswith("qtool-test: writing") for line in seen), "".join(seen)
    return code, "".join(seen) + rest


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict[str, dict[str, str]]:
    """The outputs of uninterrupted runs, by command."""
    folder = workspace(tmp_path_factory.mktemp("reference"), external=True)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for args in (CALIBRATE, FOLD):
            assert invoke(args)[0] == 0
    finally:
        os.chdir(cwd)
    everything = tree(folder / "out")
    return {"calibrate": {k: v for k, v in everything.items() if k.startswith("cal.")},
            "fold": {k: v for k, v in everything.items() if k.startswith("fold.")}}


def _rerun(folder: Path, args: list[str]) -> str:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code, output = invoke(args)
    finally:
        os.chdir(cwd)
    assert code == 0, output
    return output


@pytest.mark.parametrize("sig, name", [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")])
def test_a_caught_signal_leaves_nothing(tmp_path, expected, sig, name):
    folder = workspace(tmp_path, external=True)
    inputs = tree(folder)
    code, err = _kill_while_writing(folder, CALIBRATE, sig)
    assert code != 0, err
    assert "Traceback" not in err, err
    assert not _temporaries(folder), f"{name} left {_temporaries(folder)}"
    assert tree(folder) == inputs  # no output at all, inputs unchanged
    output = _rerun(folder, CALIBRATE)
    assert "removed" not in output
    assert tree(folder / "out") == expected["calibrate"]


@pytest.mark.parametrize("args, command", [(CALIBRATE, "calibrate"), (FOLD, "fold")])
def test_after_sigkill_the_next_run_removes_the_temporary_files(tmp_path, expected, args, command):
    folder = workspace(tmp_path, external=True)
    inputs = tree(folder)
    code, err = _kill_while_writing(folder, args, signal.SIGKILL)
    assert code == -signal.SIGKILL
    left = _temporaries(folder)
    assert left and all(TEMP_NAME.match(p.name) for p in left), left
    assert {k: v for k, v in tree(folder).items() if not k.startswith("out/")} == inputs
    assert not [p for p in (folder / "out").iterdir() if not p.name.startswith(".")]  # no half output
    output = _rerun(folder, args)
    assert not _temporaries(folder)
    for path in left:
        assert f"removed {path.relative_to(folder)}" in output, output
    assert tree(folder / "out") == expected[command]
