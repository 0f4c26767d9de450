"""Usage errors are user errors too: one line naming what is wrong and where the help is, exit 2;
a reader that leaves early (`qtool info m.onnx | head -1`) ends the command quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, says", [
    (["calibrate"], "Missing argument 'MODEL'"),
    (["calibrate", "FOLDER", "--data", "random"], "is a directory"),
    (["calibrate", "m.onnx", "--bogus"], "No such option '--bogus'"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_usage_errors_are_one_line_with_exit_2(args, says, tmp_path, capsys):
    args = [str(tmp_path) if a == "FOLDER" else a for a in args]
    code, out, err = run_main(args, capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtool: error: ") and says in lines[0]
    assert "--help" in lines[0] and "Traceback" not in err


def test_bare_qtool_shows_the_help(capsys):
    code, out, _ = run_main([], capsys)
    assert code == 2 and out.startswith("Usage: qtool") and "calibrate" in out


def test_a_closed_pipe_is_not_a_bug_report():
    reader = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    reader.wait(timeout=60)  # the read end is closed before qtool writes its first line
    proc = subprocess.run([sys.executable, "-m", "qtool", "info", str(ROOT / "sample_models" / "ppocr_cls.onnx")],
                          stdout=reader.stdin, stderr=subprocess.PIPE, text=True, timeout=120)
    reader.stdin.close()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
