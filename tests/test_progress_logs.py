"""Progress off a terminal (issue 14): periodic log lines instead of silence, a closing line, and
no two bars with the same label; and that a real command logs when its stderr is not a terminal."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from conftest import run_main
from qtool.progress import Bar

ROOT = Path(__file__).resolve().parents[1]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_line_every_interval_and_one_when_done():
    stream, clock, label = io.StringIO(), _Clock(), "calibrate"
    bar = Bar(label, stream=stream, interval=10, clock=clock)
    bar(10, 300)
    assert stream.getvalue() == "", "work shorter than the interval prints nothing"
    clock.now += 12
    bar(120, 300)
    bar(130, 300)  # within the interval of the last line: nothing
    clock.now += 10
    bar.detail("Conv_3 500/2000 iterations")
    clock.now += 3
    bar(300, 300)
    lines = stream.getvalue().splitlines()
    assert lines == [f"qtool: {label}: 120/300 samples, 12 s elapsed, about 18 s left",
                     f"qtool: {label}: 130/300 samples (Conv_3 500/2000 iterations), 22 s elapsed, about 29 s left",
                     f"qtool: {label}: done, 300 samples in 25 s"]
    assert "\r" not in stream.getvalue() and "\033" not in stream.getvalue()


def test_short_work_off_a_terminal_prints_nothing_even_when_done():
    stream, clock = io.StringIO(), _Clock()
    bar = Bar("simulate", stream=stream, interval=10, clock=clock)
    clock.now += 4
    bar(64, 64)
    assert stream.getvalue() == ""


def test_a_second_pass_gets_its_own_label():
    stream = _Terminal()
    bar = Bar("calibrate", stream=stream)
    bar(300, 300)
    bar(16, 300)  # the histogram pass starts again from zero
    labels = [chunk.split(" [")[0] for chunk in stream.getvalue().replace("\n", "\r").split("\r") if chunk]
    assert labels == ["calibrate", "calibrate (pass 2)"]


def test_a_real_command_logs_progress_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    """calibrate's bars, with stderr captured (not a terminal) and a log interval of 0 s."""
    monkeypatch.setitem(Bar.__init__.__kwdefaults__, "interval", 0.0)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    code, _, err = run_main(["calibrate", ROOT / "sample_models" / "conv_bn_relu.onnx", "--data", tmp_path / "d.npy",
                             "--batch-size", "2", "-o", tmp_path / "m"], capsys)
    assert code == 0, err
    assert "qtool: calibrate: 2/8 samples" in err and "qtool: calibrate: done, 8 samples" in err
    assert "(pass 2)" not in err, "the default histogram scheme makes one pass (issue 16)"
    assert "\r" not in err
