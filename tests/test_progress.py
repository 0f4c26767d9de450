"""The progress bar: drawn only on a terminal, with the current layer's progress beside it."""

from __future__ import annotations

import io

from qtool.progress import Bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_shows_overall_and_current_layer_progress():
    stream = _Terminal()
    bar = Bar("adaround", unit="layers", stream=stream)
    bar(1, 4)
    bar.detail("Conv_3 500/2000 iterations")
    last = stream.getvalue().split("\r")[-1]
    assert "1/4 layers" in last and "Conv_3 500/2000 iterations" in last
    bar(4, 4)
    assert stream.getvalue().endswith("\n") and "Conv_3" not in stream.getvalue().split("\r")[-1]


def test_bar_is_silent_off_a_terminal():
    stream = io.StringIO()
    bar = Bar("calibrate", stream=stream)
    bar(3, 10)
    bar.detail("x")
    assert stream.getvalue() == ""
