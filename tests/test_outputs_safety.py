"""Outputs never replace inputs, killed runs' temporary files are cleaned up, JSON is strict
(issue 13 part 3)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_main
from qtool.files import strict_json
from qtool.files.atomic import remove_stale_temporaries, temporary_sibling
from small_model import invoke, tree, workspace

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- -o equal to an input

def _same_path(w):
    return ["fold", w / "m.onnx", "-o", w / "m.onnx"], "m.onnx"


def _dotted_path(w):
    return ["fold", w / "m.onnx", "-o", w / "sub" / ".." / "m.onnx"], "m.onnx"


def _symlink_to_input(w):
    (w / "link.onnx").symlink_to(w / "m.onnx")
    return ["fold", w / "m.onnx", "-o", w / "link.onnx"], "link.onnx"


def _hard_link_to_input(w):
    os.link(w / "m.onnx", w / "hard.onnx")
    return ["fold", w / "m.onnx", "-o", w / "hard.onnx"], "hard.onnx"


def _input_data_file(w):
    return ["fold", w / "m.onnx", "-o", w / "m.onnx.data"], "m.onnx.data"


def _output_data_is_input_data(w):
    """The output's own data file (f.onnx.data) is the file the input keeps its weights in."""
    import onnx

    proto = onnx.load(str(w / "m.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "f.onnx.data"
    (w / "m.onnx").write_bytes(proto.SerializeToString())
    (w / "m.onnx.data").rename(w / "f.onnx.data")
    return ["fold", w / "m.onnx", "-o", w / "f.onnx"], "f.onnx.data"


def _encodings_given_and_written(w):
    assert invoke(["calibrate", w / "m.onnx", "--data", w / "d.npz", "-o", w / "p"])[0] == 0
    return ["calibrate", w / "m.onnx", "--data", w / "d.npz", "--encodings", w / "p.encodings.json",
            "-o", w / "p"], "p.encodings.json"


def _data_as_qdq_output(w):
    assert invoke(["calibrate", w / "m.onnx", "--data", w / "d.npz", "-o", w / "p"])[0] == 0
    return ["simulate", w / "p.onnx", "--data", w / "d.npz", "-o", w / "d.npz"], "d.npz"


@pytest.mark.parametrize("case", [_same_path, _dotted_path, _symlink_to_input, _hard_link_to_input, _input_data_file,
                                  _output_data_is_input_data, _encodings_given_and_written, _data_as_qdq_output])
def test_an_output_that_is_an_input_is_refused(tmp_path, capsys, case):
    folder = workspace(tmp_path, external=True)
    args, named = case(folder)
    before = tree(folder)
    code, out, err = run_main(args, capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtool: error: ") and "is an input" in lines[0], err
    assert named in lines[0] and "Traceback" not in err
    assert tree(folder) == before  # the input is unchanged and nothing else was written
    assert not (folder / "sub").exists()


def test_calibrating_beside_the_input_keeps_the_model(tmp_path, capsys):
    """`calibrate m.onnx -o m`: the model 'copy' is the input itself, so it is left alone and
    only m.encodings.json is written (its external data too)."""
    folder = workspace(tmp_path, external=True)
    before = tree(folder)
    code, _, err = run_main(["calibrate", folder / "m.onnx", "--data", folder / "d.npz", "-o", folder / "m"], capsys)
    assert code == 0, err
    after = tree(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"m.encodings.json"}


# ----------------------------------------------------------------------------- stale temporary files

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_removes_the_temporary_files_of_killed_runs_only(tmp_path, capsys):
    folder = workspace(tmp_path, external=False)
    out = folder / "out"
    out.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        stale = [out / f".f.onnx.{dead}.abcd1234.tmp", out / f".other.json.{dead}.zz_9y8x7.tmp"]
        old = out / f".f.onnx.{alive.pid}.oldoldol.tmp"  # a live id, but 2 days old: the id was reused
        kept = [out / f".f.onnx.{alive.pid}.running1.tmp",  # a concurrent run's write in progress
                out / ".f.onnx.abcd1234.tmp",  # no process id: not ours to judge
                out / f".f.onnx.{dead}.toolong12.tmp",  # not mkstemp's 8 characters
                out / f"f.onnx.{dead}.abcd1234.tmp",  # not hidden
                out / "notes.tmp"]
        for path in stale + kept + [old]:
            path.write_bytes(b"half a file")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        code, _, err = run_main(["fold", folder / "m.onnx", "-o", out / "f.onnx"], capsys)
    finally:
        alive.kill()
        alive.wait()
    assert code == 0, err
    assert all(not p.exists() for p in stale + [old])
    assert all(p.exists() for p in kept)
    for path in stale + [old]:
        assert f"removed {path}" in err and "interrupted run" in err
    assert err.count("removed ") == len(stale) + 1


def test_our_own_temporary_files_are_not_stale(tmp_path):
    """This process's file in progress is kept; a file with our id that we did not make is a
    dead run's that had the same process id."""
    ours = Path(temporary_sibling(tmp_path / "x.onnx"))
    foreign = tmp_path / f".x.onnx.{os.getpid()}.qqqqqqqq.tmp"
    foreign.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == [foreign]
    assert ours.exists()


# ----------------------------------------------------------------------------- strict JSON

def test_strict_json_writes_null_for_nan_and_infinity():
    import numpy as np

    text = strict_json.dumps({"b": float("nan"), "a": [float("inf"), -np.inf, np.float32("nan"), np.float64(1.5)],
                              "c": np.array([1.0, np.nan]), "d": np.int64(3)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON")) == \
        {"a": [None, None, None, 1.5], "b": None, "c": [1.0, None], "d": 3}
    assert text.index('"a"') < text.index('"b"')


def _json_calls(node: ast.AST, function: str = ""):
    """(innermost enclosing function's name, call) for every json.dump/json.dumps call."""
    for child in ast.iter_child_nodes(node):
        inside = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
        if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and child.func.attr in ("dump", "dumps")
                and isinstance(child.func.value, ast.Name) and child.func.value.id == "json"):
            yield function, child
        yield from _json_calls(child, inside)


# not JSON files: an override pretty-printed inside the HTML report and in the console lines, and
# the text a recipe step's key hashes
NOT_WRITTEN = {("qtool/analysis/report_html.py", "_suggestions"), ("qtool/analysis/report_text.py", "summary_lines"),
               ("qtool/recipe/runner.py", "_key")}


def test_every_json_dump_in_qtool_is_strict():
    """Files and --json summaries go through strict_json (or pass allow_nan=False themselves)."""
    loose = []
    for path in sorted((ROOT / "qtool").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative == "qtool/files/strict_json.py":
            continue
        for function, call in _json_calls(ast.parse(path.read_text())):
            strict = any(k.arg == "allow_nan" and isinstance(k.value, ast.Constant) and k.value.value is False
                         for k in call.keywords)
            if not strict and (relative, function) not in NOT_WRITTEN:
                loose.append(f"{relative}:{call.lineno}")
    assert not loose, f"json.dump(s) that may write NaN/Infinity: {loose}"
