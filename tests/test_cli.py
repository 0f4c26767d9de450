"""The `qtool` command line: one-line errors with exit code 2, help everywhere, JSON output,
inputs never modified, outputs never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli, main
from qtool.errors import QtoolError

from conftest import run_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
CBR = SAMPLES / "conv_bn_relu.onnx"
TWO = SAMPLES / "two_inputs.onnx"


@pytest.fixture
def work(tmp_path):
    """A folder with copies of two sample models and matching data (8 samples)."""
    rng = np.random.default_rng(0)
    shutil.copy(CBR, tmp_path / "cbr.onnx")
    shutil.copy(TWO, tmp_path / "two.onnx")
    np.savez(tmp_path / "cbr.npz", input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    np.savez(tmp_path / "two.npz", image=rng.standard_normal((8, 3, 16, 16)).astype(np.float32),
             features=rng.standard_normal((8, 8)).astype(np.float32))
    return tmp_path


def invoke(args, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def calibrate_args(model, data, out, *extra):
    return ["calibrate", model, "--data", data, "--scheme", "minmax", "-o", out, *extra]


# ----------------------------------------------------------------------------- user errors

def _missing_model(w):
    return calibrate_args(w / "missing.onnx", w / "cbr.npz", w / "out" / "m"), "missing.onnx", "no such file"


def _garbage_model(w):
    (w / "garbage.onnx").write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)))
    return calibrate_args(w / "garbage.onnx", w / "cbr.npz", w / "out" / "m"), "garbage.onnx", "not"


def _text_model(w):
    (w / "notes.onnx").write_text("this is not a model\n" * 20)
    return calibrate_args(w / "notes.onnx", w / "cbr.npz", w / "out" / "m"), "notes.onnx", "not"


def _truncated_model(w):
    data = CBR.read_bytes()
    (w / "half.onnx").write_bytes(data[: len(data) // 2])
    return calibrate_args(w / "half.onnx", w / "cbr.npz", w / "out" / "m"), "half.onnx", "truncated"


def _data_input_name(w):
    rng = np.random.default_rng(2)
    np.savez(w / "badname.npz", image=rng.standard_normal((4, 3, 16, 16)).astype(np.float32),
             feats=rng.standard_normal((4, 8)).astype(np.float32))
    return calibrate_args(w / "two.onnx", w / "badname.npz", w / "out" / "m"), "badname.npz", "'features'"


def _data_shape(w):
    np.savez(w / "badshape.npz", input=np.zeros((4, 3, 16, 16), np.float32))
    return calibrate_args(w / "cbr.onnx", w / "badshape.npz", w / "out" / "m"), "badshape.npz", "(3, 32, 32)"


def _data_missing(w):
    return calibrate_args(w / "cbr.onnx", w / "nodata.npz", w / "out" / "m"), "nodata.npz", "no such data"


def _bad_config_key(w):
    (w / "cfg.json").write_text(json.dumps({"defaults": {"per_chanel_quantization": "True"}}))
    args = calibrate_args(w / "cbr.onnx", w / "cbr.npz", w / "out" / "m", "--config", w / "cfg.json")
    return args, "cfg.json", "'per_chanel_quantization'"


def _bad_config_json(w):
    (w / "broken.json").write_text("{\"defaults\": ")
    args = calibrate_args(w / "cbr.onnx", w / "cbr.npz", w / "out" / "m", "--config", w / "broken.json")
    return args, "broken.json", "not valid JSON"


def _missing_config(w):
    args = calibrate_args(w / "cbr.onnx", w / "cbr.npz", w / "out" / "m", "--config", "w8a8-perchannel")
    return args, "w8a8-perchannel", "no such config"


def _simulate_without_encodings(w):
    return ["simulate", w / "cbr.onnx", "--data", w / "cbr.npz"], "cbr.encodings.json", "does not exist"


def _export_bad_encodings(w):
    (w / "bad.encodings.json").write_text("[1, 2")
    return ["export", w / "cbr.onnx", "--encodings", w / "bad.encodings.json", "-o", w / "out"], \
        "bad.encodings.json", "not valid JSON"


def _info_truncated(w):
    data = TWO.read_bytes()
    (w / "cut.onnx").write_bytes(data[: len(data) // 2])
    return ["info", w / "cut.onnx"], "cut.onnx", "truncated"


def _dangling_input(w):
    """A node reads a tensor nothing produces: onnx.checker and onnxruntime both refuse it."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    (w / "dangling.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    return ["info", w / "dangling.onnx"], "dangling.onnx", "invalid ONNX model"


ERROR_CASES = {f.__name__.lstrip("_"): f for f in (
    _missing_model, _garbage_model, _text_model, _truncated_model, _data_input_name, _data_shape, _data_missing,
    _bad_config_key, _bad_config_json, _missing_config, _simulate_without_encodings, _export_bad_encodings,
    _info_truncated, _dangling_input)}


def test_a_model_the_checker_refuses_but_onnxruntime_runs_is_loaded_with_a_warning(tmp_path, caplog):
    """Graph outputs declared without a shape (several exporters write them so): onnx.checker
    refuses the model, onnxruntime runs it, so qtool quantizes it and says why it went on."""
    import logging

    import onnx
    from onnx import TensorProto, helper

    from qtool.ir.graph import load_model

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(proto)
    (tmp_path / "noshape.onnx").write_bytes(proto.SerializeToString())
    with caplog.at_level(logging.WARNING, logger="qtool"):
        model = load_model(tmp_path / "noshape.onnx")
    assert [n.op_type for n in model.graph] == ["Relu"]
    assert "noshape.onnx: onnx.checker:" in caplog.text and "onnxruntime accepts the model" in caplog.text


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_user_errors_exit_2_with_one_line_naming_the_file(work, capsys, case):
    args, named, fragment = ERROR_CASES[case](work)
    before = tree(work)
    code, out, err = run_main(args, capsys)
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qtool: error: ")
    assert named in lines[0] and fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (work / "out").exists()  # nothing (half-)written
    assert tree(work) == before  # inputs untouched, no stray temporary files


def test_qtool_error_reaches_clirunner_with_its_message(work):
    args, named, _ = _truncated_model(work)
    result = invoke(args, ok=False)
    if isinstance(result.exception, QtoolError):  # today: main() turns it into exit code 2
        assert named in str(result.exception) and "\n" not in str(result.exception)
    else:  # once the group handles it itself
        assert result.exit_code == 2 and named in result.output
    assert not (work / "out").exists()


def test_clirunner_on_the_group_gives_exit_code_2(work):
    args, named, _ = _missing_model(work)
    result = invoke(args, ok=False)
    assert result.exit_code == 2 and "qtool: error:" in result.output and named in result.output


def test_quantized_model_is_refused(work, capsys):
    assert run_main(calibrate_args(work / "cbr.onnx", work / "cbr.npz", work / "p"), capsys)[0] == 0
    code, _, _ = run_main(["simulate", work / "p.onnx", "--data", work / "cbr.npz", "-o", work / "qdq.onnx"], capsys)
    assert code == 0
    code, _, err = run_main(calibrate_args(work / "qdq.onnx", work / "cbr.npz", work / "out" / "m"), capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "already contains QuantizeLinear" in err
    assert not (work / "out").exists()


def test_encodings_of_another_model_are_refused(work, capsys):
    assert run_main(calibrate_args(work / "two.onnx", work / "two.npz", work / "t"), capsys)[0] == 0
    code, _, err = run_main(["simulate", work / "cbr.onnx", "--encodings", work / "t.encodings.json",
                             "--data", work / "cbr.npz"], capsys)
    assert code == 2
    assert "t.encodings.json" in err and "is not in" in err and len(err.strip().splitlines()) == 1


def test_click_usage_errors_exit_2(work):
    result = invoke(["calibrate", work / "cbr.onnx", "-o", work / "o"], ok=False)
    assert result.exit_code == 2 and "--data" in result.output
    result = invoke(calibrate_args(work / "cbr.onnx", work / "cbr.npz", work / "o", "--scheme", "best"), ok=False)
    assert result.exit_code == 2 and "best" in result.output
    result = invoke(calibrate_args(work / "cbr.onnx", work / "cbr.npz", work / "o", "--act-bw", "40"), ok=False)
    assert result.exit_code == 2 and "--act-bw" in result.output
    assert not list(work.glob("o*"))


def test_debug_raises_the_error_itself(work, capsys):
    args, _, _ = _garbage_model(work)
    with pytest.raises(QtoolError, match="garbage.onnx"):
        main(["--debug", *[str(a) for a in args]])


def test_failure_does_not_touch_existing_outputs(work, capsys):
    prefix = work / "out" / "m"
    assert run_main(calibrate_args(work / "cbr.onnx", work / "cbr.npz", prefix), capsys)[0] == 0
    before = tree(work / "out")
    assert set(before) == {"m.onnx", "m.encodings.json"}
    np.savez(work / "bad.npz", input=np.zeros((2, 3, 8, 8), np.float32))
    code, _, _ = run_main(calibrate_args(work / "two.onnx", work / "two.npz", prefix, "--config", "nope"), capsys)
    assert code == 2
    code, _, _ = run_main(calibrate_args(work / "cbr.onnx", work / "bad.npz", prefix, "--config", "w4a8"), capsys)
    assert code == 2
    assert tree(work / "out") == before


# ----------------------------------------------------------------------------- real processes


def _subprocess(args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_python_m_qtool_cli_exit_code_and_single_line(work):
    proc = _subprocess([sys.executable, "-m", "qtool.cli", *calibrate_args("missing.onnx", "cbr.npz", "out/m")], work)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "qtool: error: missing.onnx: no such file (check the path to the ONNX model)"]
    assert not (work / "out").exists()


def test_qtool_script_on_a_truncated_model(work):
    script = shutil.which("qtool") or str(Path(sys.executable).with_name("qtool"))
    if not Path(script).exists():
        pytest.skip("the qtool console script is not installed")
    data = CBR.read_bytes()
    (work / "cut.onnx").write_bytes(data[: len(data) // 2])
    proc = _subprocess([script, *calibrate_args("cut.onnx", "cbr.npz", "out/m")], work)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("qtool: error: cut.onnx: ") and "Traceback" not in proc.stderr


def test_debug_shows_a_traceback(work):
    proc = _subprocess([sys.executable, "-m", "qtool.cli", "--debug",
                        *calibrate_args("missing.onnx", "cbr.npz", "out/m")], work)
    assert proc.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in proc.stderr
    assert "QtoolError: missing.onnx: no such file" in proc.stderr


def test_building_the_command_tree_imports_no_onnx(work):
    """`qtool --help` and a recipe run whose steps are up to date pay only for what they use: onnx,
    onnx_ir (which pulls in sympy) and onnxruntime cost about a second to import on our CI machine."""
    code = ("import sys; from qtool.cli import cli; from qtool.recipe.runner import versions; versions(); "
            "print(sorted(m for m in ('onnx', 'onnx_ir', 'onnxruntime', 'sympy') if m in sys.modules))")
    proc = _subprocess([sys.executable, "-c", code], work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert {"calibrate", "equalize", "adaround", "analyze", "run"} <= set(cli.commands)


def test_building_the_command_tree_imports_no_recipe_machinery(work):
    """Every command starts by building the tree: the recipe runner (pydantic, the metrics) is
    imported by `qtool run` alone (about half of `import qtool.cli.main` on our CI machine)."""
    code = ("import sys; from qtool.cli import cli; "
            "print(sorted(m for m in ('pydantic', 'qtool.recipe.run', 'qtool.recipe.runner') if m in sys.modules))")
    proc = _subprocess([sys.executable, "-c", code], work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- successful runs


def test_inputs_are_never_modified(work, capsys):
    rng = np.random.default_rng(3)
    np.save(work / "cbr.npy", rng.standard_normal((6, 3, 32, 32)).astype(np.float32))
    assert run_main(calibrate_args(work / "cbr.onnx", work / "cbr.npz", work / "a"), capsys)[0] == 0
    shutil.copy(work / "a.encodings.json", work / "given.encodings.json")
    inputs = [work / n for n in ("cbr.onnx", "cbr.npz", "cbr.npy", "two.onnx", "two.npz", "given.encodings.json")]
    before = {p.name: digest(p) for p in inputs}
    sample_before = digest(CBR)
    commands = [
        calibrate_args(work / "cbr.onnx", work / "cbr.npy", work / "b", "--encodings", work / "given.encodings.json",
                       "--config", "w8a8-per-channel"),
        ["simulate", work / "cbr.onnx", "--encodings", work / "given.encodings.json", "--data", work / "cbr.npz",
         "-o", work / "sim.onnx"],
        ["export", work / "cbr.onnx", "--encodings", work / "given.encodings.json", "-o", work / "deploy"],
        ["info", work / "cbr.onnx", "--config", "w4a8"],
        calibrate_args(work / "two.onnx", work / "two.npz", work / "two"),  # -o beside the input itself
        ["calibrate", CBR, "--data", work / "cbr.npz", "--samples", "2", "-o", work / "c"],
    ]
    for args in commands:
        code, _, err = run_main(args, capsys)
        assert code == 0, (args, err)
    assert {p.name: digest(p) for p in inputs} == before
    assert digest(CBR) == sample_before
    assert digest(work / "b.onnx") == before["cbr.onnx"]
    assert not [p for p in work.rglob(".*") if p.is_file()]  # no temporary files left behind


def test_every_command_is_documented():
    assert cli.help and "Example:" in cli.help
    assert set(cli.commands) >= {"calibrate", "simulate", "export", "info"}
    top = invoke(["--help"]).output
    for name, command in cli.commands.items():
        assert name in top
        assert command.help and "Example:" in command.help, name
        assert command.short_help or command.help.splitlines()[0].strip(), name
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{name} {param.opts} has no help text"
        out = invoke([name, "--help"]).output
        assert "Example:" in out and f"qtool {name}" in out, name
    assert invoke(["--version"]).output.strip().endswith("0.1.0")


def test_json_outputs_parse(work):
    cal = json.loads(invoke(calibrate_args(work / "cbr.onnx", work / "cbr.npz", work / "p", "--config",
                                           "w8a8-per-channel", "--json")).stdout)
    encodings = json.loads((work / "p.encodings.json").read_text())
    assert cal["samples"] == 8 and cal["kept_frozen"] == []
    assert cal["activation_quantizers"] == len(encodings["activation_encodings"]) == 15
    assert cal["param_quantizers"] == len(encodings["param_encodings"]) == 14
    assert cal["model"] == f"{work / 'p'}.onnx" and cal["encodings"] == f"{work / 'p'}.encodings.json"

    sim = json.loads(invoke(["simulate", work / "p.onnx", "--data", work / "cbr.npz", "--json"]).stdout)
    assert sim["samples"] == 8
    row = sim["outputs"]["logits"]
    assert 25 < row["sqnr_db"] < 80 and 0 < row["max_abs_error"] < 1 and row["top1_agreement"] >= 0.75
    bypass = json.loads(invoke(["simulate", work / "p.onnx", "--data", work / "cbr.npz", "--bypass",
                                "--json"]).stdout)
    assert bypass["outputs"]["logits"]["max_abs_error"] == 0.0

    exp = json.loads(invoke(["export", work / "p.onnx", "-o", work / "dep", "--prefix", "net", "--json"]).stdout)
    assert exp["files"] == [str(work / "dep" / n) for n in ("net.onnx", "net.encodings", "net_qdq.onnx")]
    assert all(Path(f).exists() for f in exp["files"])

    info = json.loads(invoke(["info", work / "two.onnx", "--json"]).stdout)
    assert info["inputs"] == {"image": ["?", 3, 16, 16], "features": ["?", 8]}
    assert info["outputs"] == ["scores"] and info["opset"] == 17
    assert info["op_types"]["Gemm"] == 2 and info["parameters"] == 388


def test_info_lists_quantizers(work):
    text = invoke(["info", work / "two.onnx", "--config", "w8a8-per-channel"]).output
    assert "8 activation quantizers, 4 param quantizers, 3 tensors fused in supergroups" in text
    weight = next(line for line in text.splitlines() if line.rstrip().endswith(" fc.weight_1"))
    assert weight.split()[:4] == ["param", "weight", "8-bit", "sym"] and "per-channel axis 0" in weight
    image = next(line for line in text.splitlines() if line.rstrip().endswith(" image"))
    assert image.split()[:4] == ["activation", "input", "8-bit", "asym"] and "per-tensor" in image
    info = json.loads(invoke(["info", work / "two.onnx", "--per-tensor", "--config", "w4a8", "--json"]).stdout)
    q = info["quantizers"]
    assert q["fc.weight_1"] == {"kind": "param", "role": "weight", "bw": 4, "symmetric": True,
                                "per_channel_axis": None}
    assert q["relu_1"]["kind"] == "activation" and q["relu_1"]["bw"] == 8
    assert "fc.bias_1" not in q and "conv_1" not in q
    assert sorted(info["fused_in_supergroups"]) == ["batchnormalization_1", "conv_1", "gemm_1"]


def test_bitwidth_and_granularity_options_reach_the_encodings(work):
    invoke(calibrate_args(work / "two.onnx", work / "two.npz", work / "w", "--param-bw", "4", "--act-bw", "16",
                          "--per-channel"))
    doc = json.loads((work / "w.encodings.json").read_text())
    assert {e["bw"] for e in doc["activation_encodings"]} == {16}
    assert {e["bw"] for e in doc["param_encodings"]} == {4}
    params = {e["name"]: e for e in doc["param_encodings"]}
    assert params["fc.weight_1"]["enc_type"] == "PER_CHANNEL" and len(params["fc.weight_1"]["scale"]) == 8
    assert doc["quantizer_args"]["activation_bitwidth"] == 16 and doc["quantizer_args"]["param_bitwidth"] == 4
    invoke(calibrate_args(work / "two.onnx", work / "two.npz", work / "v", "--encoding-version", "2.0.0"))
    assert json.loads((work / "v.encodings.json").read_text())["version"] == "2.0.0"
    invoke(["simulate", work / "v.onnx", "--data", work / "two.npz"])  # and reads back


# ----------------------------------------------------------------------------- known bugs


def test_all_nan_data_is_a_user_error(work, capsys):
    np.savez(work / "nan.npz", input=np.full((4, 3, 32, 32), np.nan, np.float32))
    code, _, err = run_main(calibrate_args(work / "cbr.onnx", work / "nan.npz", work / "out" / "m"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and ("nan.npz" in err or "'input'" in err)
    assert not (work / "out").exists()


def test_unwritable_qdq_output_is_a_one_line_error(work, capsys):
    assert run_main(calibrate_args(work / "cbr.onnx", work / "cbr.npz", work / "p"), capsys)[0] == 0
    (work / "deploy" / "model_qdq.onnx").mkdir(parents=True)  # something in the way
    try:
        code, _, err = run_main(["export", work / "p.onnx", "-o", work / "deploy"], capsys)
    except OSError:
        pytest.fail("OSError escaped main()")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model_qdq.onnx" in err


def test_failed_encodings_write_leaves_no_half_pair(work, capsys):
    (work / "out" / "m.encodings.json").mkdir(parents=True)  # the encodings cannot be written there
    code, _, err = run_main(calibrate_args(work / "cbr.onnx", work / "cbr.npz", work / "out" / "m"), capsys)
    assert code == 2 and "m.encodings.json" in err and len(err.strip().splitlines()) == 1
    assert not (work / "out" / "m.onnx").exists()


def test_calibrate_hints_at_fold_when_batch_norms_follow_layers(tmp_path, capsys):
    """Unfolded BN after a conv gets its own quantizer: the user is told to fold first, once
    the model is folded the hint is gone."""
    model = SAMPLES / "conv_bn_relu.onnx"
    code, out, _ = run_main(["calibrate", model, "--data", "random", "--samples", "2", "-o", tmp_path / "a"], capsys)
    assert code == 0 and "BatchNormalization" in out and "qtool fold" in out
    assert run_main(["fold", model, "-o", tmp_path / "f.onnx"], capsys)[0] == 0
    code, out, _ = run_main(["calibrate", tmp_path / "f.onnx", "--data", "random", "--samples", "2",
                             "-o", tmp_path / "b"], capsys)
    assert code == 0 and "qtool fold" not in out
