"""Bad configs, overrides files, recipes and user metrics: every one is `qtool: error: FILE: ...`,
exit code 2, one line, no traceback, nothing written, inputs unchanged (issue 13)."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.analysis.metric import load_metric
from qtool.errors import QtoolError
from qtool.plan.config import parse_config
from qtool.plan.overrides import parse_overrides

ROOT = Path(__file__).resolve().parents[1]
CBR = ROOT / "sample_models" / "conv_bn_relu.onnx"


@pytest.fixture
def work(tmp_path) -> Path:
    shutil.copy(CBR, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    return tmp_path


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(work: Path, capsys, args: list, names: str, fragment: str) -> str:
    """Run qtool; assert exit 2, exactly one `qtool: error: NAMES...` line holding `fragment`,
    no traceback, no file added or changed under `work`."""
    before = digests(work)
    code, out, err = run_main(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"qtool: error: {names}"), lines[0]
    assert fragment in lines[0], lines[0]
    assert digests(work) == before, "inputs unchanged, nothing written"
    return lines[0]


# --- --config and --overrides files -------------------------------------------------------------

BAD_JSON = {
    "empty": (b"", "not valid JSON: Expecting value"),
    "truncated": (b'{"overrides": [', "not valid JSON"),
    "binary": (bytes(range(256)) * 4, "not UTF-8 text"),
    "latin-1": ('{"comment": "café"}'.encode("latin-1"), "not UTF-8 text (byte 16)"),
    "NUL bytes": (b'{"comment": "a\x00b"}', "holds NUL bytes"),
    "NaN": (b'{"overrides": [{"tensors": "x", "encoding_constraints": {"min": 0, "max": NaN}}]}',
            "NaN is not a number JSON allows"),
    "Infinity": (b'{"overrides": [{"tensors": "x", "encoding_constraints": {"min": -Infinity, "max": 1}}]}',
                 "-Infinity is not a number JSON allows"),
    "overflow": (b'{"overrides": [{"tensors": "x", "encoding_constraints": {"min": 0, "max": 1e999}}]}',
                 "1e999 overflows to infinity"),
    "huge integer": (b'{"overrides": [{"tensors": "x", "bitwidth": ' + b"9" * 5000 + b"}]}",
                     "an integer of 5000 digits"),
    "duplicate keys": (b'{"overrides": [], "overrides": [{"tensors": "x"}]}', "duplicate key 'overrides'"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
}


@pytest.mark.parametrize("option", ["--config", "--overrides"])
@pytest.mark.parametrize("case", BAD_JSON, ids=list(BAD_JSON))
def test_bad_json_files_are_one_line_errors(work, capsys, option, case):
    content, fragment = BAD_JSON[case]
    bad = work / "bad.json"
    bad.write_bytes(content)
    one_line_error(work, capsys, ["calibrate", work / "model.onnx", "--data", work / "calib.npz", "-o",
                                  work / "out" / "m", option, bad], str(bad), fragment)


@pytest.mark.parametrize("option, what", [("--config", "config file"), ("--overrides", "overrides file")])
def test_a_folder_given_as_a_file_is_one_line(work, capsys, option, what):
    (work / "folder.json").mkdir()
    one_line_error(work, capsys, ["calibrate", work / "model.onnx", "--data", work / "calib.npz", "-o",
                                  work / "out" / "m", option, work / "folder.json"],
                   str(work / "folder.json"), f"is a folder; give the {what} itself")


@pytest.mark.parametrize("option, content, fragment", [
    ("--config", b"[1, 2]", "top level: expected an object, got list"),
    ("--config", b'{"op_type": {"Relu": {"encoding_constraints": {"min": 0, "max": "inf"}}}}', "expected a number"),
    ("--config", b'{"supergroups": [{"op_list": [{"a": 1}, "Relu"]}]}', "expected an op type (a non-empty string), got {'a': 1}"),
    ("--overrides", b"5", "overrides: expected a list of objects, got int"),
    ("--overrides", b'{"overrides": [{"tensors": "x", "encoding_constraints": {"min": 1, "max": 0}}]}',
     "with a < b"),
])
def test_wrong_shapes_are_one_line(work, capsys, option, content, fragment):
    bad = work / "bad.json"
    bad.write_bytes(content)
    one_line_error(work, capsys, ["calibrate", work / "model.onnx", "--data", work / "calib.npz", "-o",
                                  work / "out" / "m", option, bad], str(bad), fragment)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_encoding_constraints_are_refused_from_python_too(value):
    """The Python API (and YAML inline configs) can hand over floats JSON cannot spell."""
    with pytest.raises(QtoolError, match=r"op_type\.Relu\.encoding_constraints\.max: .* is not a finite number"):
        parse_config({"op_type": {"Relu": {"encoding_constraints": {"min": 0, "max": value}}}}, "c.json")
    with pytest.raises(QtoolError, match=r"ov\.json: overrides\[0\]\.encoding_constraints: .*finite"):
        parse_overrides([{"tensors": "x", "encoding_constraints": {"min": 0, "max": value}}], "ov.json")


def test_non_string_keys_from_an_inline_config_are_one_line():
    with pytest.raises(QtoolError, match="unknown key '1'"):
        parse_config({"defaults": {1: True, "ops": {}}}, "recipe.yaml: inline config")


# --- recipes ------------------------------------------------------------------------------------

HEAD = "model: model.onnx\noutput: out\ndata: calib.npz\nsteps:\n"

BAD_RECIPES = {
    "empty": (b"", ": a recipe is a YAML mapping"),
    "a list": (b"- fold\n- calibrate\n", ": a recipe is a YAML mapping"),
    "a number": (b"42\n", ": a recipe is a YAML mapping"),
    "binary": (bytes(range(256)) * 4, ": not UTF-8 text"),
    "latin-1": ("model: modèle.onnx\n".encode("latin-1"), ": not UTF-8 text (byte 10)"),
    "NUL": (b"model: a\x00b\n", ": holds NUL bytes"),
    "tabs": (b"model: model.onnx\n\toutput: out\n", ":2: not valid YAML: found character '\\t'"),
    "two documents": (HEAD.encode() + b"  - fold: {}\n---\nmodel: x\n", ":6: not valid YAML: expected a single document"),
    "huge integer": (HEAD.encode() + b"  - calibrate: {seed: " + b"9" * 5000 + b"}\n", ":5: '99999"),
    "beyond int64": (HEAD.encode() + b"  - calibrate: {samples: 18446744073709551616}\n", "beyond 64 bits"),
    ".nan": (HEAD.encode() + b"  - calibrate: {percentile: .nan}\n", ":5: '.nan': not a finite number"),
    "-.inf": (HEAD.encode() + b"  - calibrate: {}\n  - simulate: {}\nexpect: {min_sqnr_db: -.inf}\n",
              ":7: '-.inf': not a finite number"),
    "'nan' text for a float": (HEAD.encode() + b"  - calibrate: {percentile: nan}\n",
                               ":5: calibrate.percentile: nan is not a finite number"),
    "'inf' text in expect": (HEAD.encode() + b"  - calibrate: {}\n  - simulate: {}\nexpect: {min_sqnr_db: 'inf'}\n",
                             ":7: expect.min_sqnr_db: Input should be a finite number"),
    "python tag": (b"model: !!python/object/apply:os.system ['touch pwned']\noutput: out\nsteps: [fold: {}]\n",
                   ":1: model: Input should be a valid string"),
    "python name": (b"model: !!python/name:os.system\noutput: out\nsteps: [fold: {}]\n",
                    ":1: the tag tag:yaml.org,2002:python/name:os.system is not allowed"),
    "a list as a key": (HEAD.encode() + b"  - fold: {}\n? [a, b]\n: 1\n", ":6: a key must be a plain name"),
    "inline config .inf": (HEAD.encode() + b"  - calibrate: {}\nconfig:\n  op_type:\n    Relu:\n"
                           b"      encoding_constraints: {min: 0, max: .inf}\n", ":9: '.inf': not a finite number"),
}


@pytest.mark.parametrize("case", BAD_RECIPES, ids=list(BAD_RECIPES))
def test_bad_recipe_files_are_one_line_errors(work, capsys, case):
    content, fragment = BAD_RECIPES[case]
    recipe = work / "recipe.yaml"
    recipe.write_bytes(content)
    one_line_error(work, capsys, ["run", recipe], str(recipe), fragment)
    assert not (work / "pwned").exists()


def test_a_folder_as_the_recipe_is_one_line(work, capsys):
    (work / "recipe.yaml").mkdir()
    one_line_error(work, capsys, ["run", work / "recipe.yaml"], str(work / "recipe.yaml"),
                   "is a folder; give the recipe file itself")


@pytest.mark.parametrize("config, fragment", [
    ("{not json", "not valid JSON"),
    ('{"op_type": {"Relu": {"encoding_constraints": {"min": 0, "max": Infinity}}}}', "Infinity is not a number"),
    (None, "is a folder; give the config file itself"),
])
def test_a_recipes_bad_config_file_is_named_with_the_recipe_line(work, capsys, config, fragment):
    path = work / "cfg.json"
    path.mkdir() if config is None else path.write_text(config)
    recipe = work / "recipe.yaml"
    recipe.write_text(HEAD + "  - calibrate: {}\nconfig: cfg.json\n")
    line = one_line_error(work, capsys, ["run", recipe], f"{recipe}:6: ", fragment)
    assert str(path) in line


@pytest.mark.parametrize("assignment, fragment", [
    ("calibrate.percentile=.nan", "--set calibrate.percentile: '.nan': not a finite number"),
    ("calibrate.seed=99999999999999999999999999999999999", "--set calibrate.seed: "),
    ("calibrate.scheme=minmax", "holds a list where --set needs a mapping"),
    ("calibrate.percentile=" + "[" * 5000 + "]" * 5000, "--set calibrate.percentile: refused: nested deeper"),
], ids=["nan", "huge-int", "into-a-list", "deep"])
def test_bad_set_values_are_one_line(work, capsys, assignment, fragment):
    recipe = work / "recipe.yaml"
    recipe.write_text(HEAD + "  - calibrate: [1]\n" if "scheme" in assignment else HEAD + "  - calibrate: {}\n")
    one_line_error(work, capsys, ["run", recipe, "--set", assignment], "", fragment)


# --- user metrics -------------------------------------------------------------------------------

METRICS = {
    "syntax error": ("def score(:\n", "cannot load", None),
    "raises on import": ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import", None),
    "raises": ("def score(o, r, l):\n    raise KeyError('logits')\n", "the function raised KeyError: 'logits'", "score"),
    "returns NaN": ("def score(o, r, l):\n    return float('nan')\n", "the function returned nan", "score"),
    "returns text": ("def score(o, r, l):\n    return 'good'\n", "the function raised ValueError", "score"),
    "no such function": ("x = 1\n", "has no function 'score'", None),
}


@pytest.mark.parametrize("case", METRICS, ids=list(METRICS))
def test_a_failing_user_metric_is_a_one_line_error(tmp_path, case):
    source, fragment, call = METRICS[case]
    (tmp_path / "m.py").write_text(source)
    spec = f"{tmp_path / 'm.py'}:score"
    with pytest.raises(QtoolError) as error:
        metric = load_metric(spec)
        if call:
            metric.score({"y": np.ones(3)}, {"y": np.ones(3)}, None)
    assert str(error.value).startswith(f"--metric {spec}: ") and fragment in str(error.value), str(error.value)
    assert "\n" not in str(error.value)


def test_a_folder_as_the_metric_file_is_one_line(tmp_path):
    (tmp_path / "m.py").mkdir()
    with pytest.raises(QtoolError, match="no such file"):
        load_metric(f"{tmp_path / 'm.py'}:score")
