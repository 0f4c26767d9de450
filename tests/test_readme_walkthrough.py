"""The README's walkthrough works as written (issue 14): its ```sh blocks, run verbatim and in
order in an empty folder holding a copy of sample_models/, all succeed.

The whole run takes a few minutes (calibrations, AdaRound, analyze, mixed precision), so it runs
when QTOOL_SLOW_TESTS=1 (`make test-readme`, and CI after `make test`). The default suite keeps
the fast part: the walkthrough runs every command, every `qtool` line parses against the real
command tree (options, choices, types), and the first block makes the data the rest reads.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Walkthrough"
COMMANDS = {"info", "fold", "equalize", "calibrate", "bias-correct", "adaround", "simulate", "export",
            "plot-ranges", "analyze", "mixed-precision", "run"}
BUDGET_S = 600  # the whole walkthrough; it takes about 3 minutes on 2 cores
SLOW = pytest.mark.skipif(os.environ.get("QTOOL_SLOW_TESTS") != "1",
                          reason="the whole README walkthrough (minutes): make test-readme sets QTOOL_SLOW_TESTS=1")


def walkthrough_blocks(readme: Path = ROOT / "README.md") -> list[str]:
    """The ```sh blocks of the walkthrough section, in order."""
    text = readme.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M)


def qtool_lines(blocks: list[str]) -> list[list[str]]:
    """Every `qtool ...` command of the blocks as arguments (heredoc bodies are not commands)."""
    commands, in_heredoc = [], None
    for block in blocks:
        for line in block.splitlines():
            if in_heredoc:
                in_heredoc = None if line.strip() == in_heredoc else in_heredoc
                continue
            heredoc = re.search(r"<<\s*'?(\w+)'?", line)
            if heredoc:
                in_heredoc = heredoc.group(1)
            words = shlex.split(line, comments=True)
            if words[:1] == ["qtool"]:
                commands.append(words[1:])
    return commands


def _environment(folder: Path) -> dict[str, str]:
    """`python3` and `qtool` in the blocks are this interpreter and this checkout's qtool."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "qtool").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m qtool "$@"\n')
    (bin_dir / "qtool").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("QTOOL_SLOW_TESTS", None)
    return env


def _run(block: str, folder: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=folder, env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def checkout_copy(tmp_path) -> Path:
    """An empty folder with what a fresh clone offers the walkthrough: sample_models/ and recipes/."""
    shutil.copytree(ROOT / "sample_models", tmp_path / "sample_models",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    return tmp_path


def test_the_walkthrough_runs_every_command():
    used = {words[0] for words in qtool_lines(walkthrough_blocks())}
    assert used >= COMMANDS, f"the walkthrough never runs: {sorted(COMMANDS - used)}"


def test_every_qtool_line_of_the_walkthrough_parses():
    """Option names, choices and types as the real command tree reads them (nothing runs)."""
    import click

    from qtool.cli import cli

    for words in qtool_lines(walkthrough_blocks()):
        command = cli.commands[words[0]]
        try:
            command.make_context(words[0], list(words[1:]))
        except click.ClickException as exc:
            pytest.fail(f"qtool {shlex.join(words)}: {exc.format_message()}")


def test_the_data_block_makes_what_the_commands_read(checkout_copy):
    first = walkthrough_blocks()[0]
    done = _run(first, checkout_copy, _environment(checkout_copy), timeout=120)
    assert done.returncode == 0, done.stderr
    with np.load(checkout_copy / "wt" / "calib.npz") as calib, np.load(checkout_copy / "wt" / "eval.npz") as held:
        assert list(calib) == ["x"] and calib["x"].shape == (300, 3, 48, 192)
        assert held["x"].shape[0] == len(np.load(checkout_copy / "wt" / "labels.npy"))
    assert sorted(p.name for p in checkout_copy.iterdir()) == [".bin", "recipes", "sample_models", "wt"]


@SLOW
def test_the_whole_walkthrough_runs_verbatim(checkout_copy):
    env, start = _environment(checkout_copy), time.perf_counter()
    outputs = []
    for index, block in enumerate(walkthrough_blocks(), 1):
        left = BUDGET_S - (time.perf_counter() - start)
        assert left > 0, f"the walkthrough took more than {BUDGET_S} s before block {index}"
        done = _run(block, checkout_copy, env, timeout=left)
        assert done.returncode == 0, f"block {index} failed:\n{block}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr
        outputs.append(done.stdout + done.stderr)
        print(f"block {index}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    wt = checkout_copy / "wt"
    for made in ("deploy/ppocr_cls_qdq.onnx", "cle_bc.encodings.json", "w4.encodings.json", "report/report.html",
                 "report/overrides.json", "amp/overrides.json", "ranges.png", "out/run.json"):
        assert (wt / made).is_file(), made
    assert "accuracy float 99.67% -> quantized" in outputs[2]
    assert "0 steps ran, 4 skipped" in outputs[-1], "the recipe's second run skips every step"
