"""AIMET's own runtime configs load (issue 15, part 1), and each key they added to qtool's loader works.

The shipped configs are data inside the aimet-onnx wheel on PyPI: they are read from the wheel at
test time (``pip download --no-deps`` into build/cache, never installed, never copied into the repo),
as sample_models/fetch_ppocr.py reads models. That test skips, saying why, only when the wheel
cannot be downloaded; the others use small configs written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aimet_wheel import FIXTURES, shipped_configs
from conftest import run_main
from qtool.errors import QtoolError
from qtool.ir.graph import load_model
from qtool.plan.build import build_plan
from qtool.plan.config import load_config, parse_config
from qtool.plan.not_applied import not_applied
from qtool.steps.calibrate import CalibrateOptions, calibrate

ROOT = Path(__file__).resolve().parent.parent
CBR = ROOT / "sample_models" / "conv_bn_relu.onnx"
BASE = {"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True"}},
        "params": {}, "op_type": {}, "supergroups": [], "model_input": {"is_input_quantized": "True"},
        "model_output": {}}


def config(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "aimet.json"
    path.write_text(json.dumps({**BASE, **sections}))
    return path


def test_every_config_aimet_ships_loads(tmp_path):
    configs = shipped_configs()
    assert sorted(configs) == sorted(p.name for p in (FIXTURES / "conv_bn_relu").iterdir())  # the 19 the bench saw
    assert len(configs) == 19
    for name, doc in configs.items():
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        loaded = load_config(path)  # raises QtoolError on any refused key
        assert loaded.supergroup_passes == tuple(doc.get("supergroup_pass_list", [])), name
        assert loaded.hw_version == doc["defaults"].get("hw_version"), name
        lines = not_applied(loaded)
        assert [line for line in lines if line.startswith("supergroup_pass_list ")] == [
            line for line in lines if line.split(" ")[1] in loaded.supergroup_passes]
    v73 = load_config(tmp_path / "htp_quantsim_config_v73.json")
    assert v73.op_types["Relu"].encoding_constraints == (0.0, None)
    assert "running_mean" in v73.op_types["BatchNormalization"].params
    assert any(line.startswith("op_type.ChannelShuffle (not an ONNX op type") for line in not_applied(v73))


def test_info_lists_each_key_it_does_not_apply(tmp_path, capsys):
    keys = dict(supergroup_pass_list=["MatmulAdd", "LayerNormalization"],
                defaults={**BASE["defaults"], "hw_version": "V73"}, op_type={"relu": {"is_output_quantized": "True"}})
    code, out, err = run_main(["info", CBR, "--config", config(tmp_path, **keys)], capsys)
    assert code == 0, err  # placement "aimet" (the default): passes and hw_version applied as aimet does
    assert [line.strip() for line in out.splitlines() if "not applied:" in line] == [
        "not applied: op_type.relu (not an ONNX op type: matches no node, did you mean Relu?)"]
    path = config(tmp_path, placement="qtool", **keys)
    code, out, err = run_main(["info", CBR, "--config", path], capsys)
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines() if "not applied:" in line]
    assert len(lines) == 4, out
    assert lines[0].startswith("not applied: supergroup_pass_list MatmulAdd (aimet fuses MatMul")
    assert lines[1].startswith("not applied: supergroup_pass_list LayerNormalization (")
    assert lines[2].startswith("not applied: defaults.hw_version V73 (")
    assert lines[3] == "not applied: op_type.relu (not an ONNX op type: matches no node, did you mean Relu?)"
    code, out, _ = run_main(["info", CBR], capsys)  # qtool's own config: nothing to list
    assert code == 0 and "not applied" not in out


def _calibrated(path: Path, tensor: str) -> tuple[float, float]:
    model = load_model(CBR)
    plan = build_plan(model, load_config(path))
    batches = [{"input": np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)}]
    enc = calibrate(model, plan, batches, CalibrateOptions(scheme="minmax")).encodings.activations[tensor]
    return float(enc.min[0]), float(enc.max[0])


def test_one_end_of_encoding_constraints_fixes_that_end_only(tmp_path):
    # conv_1 (the first Conv's output): a min-max range of about (-3, 3) on Gaussian input
    free_low, free_high = _calibrated(config(tmp_path), "conv_1")
    low, high = _calibrated(config(tmp_path, op_type={"Conv": {"encoding_constraints": {"min": -20.0}}}), "conv_1")
    step = (high - low) / 255
    assert abs(low - -20.0) <= step and abs(high - free_high) <= step, (low, high, free_high)
    low, high = _calibrated(config(tmp_path, op_type={"Conv": {"encoding_constraints": {"max": 20.0}}}), "conv_1")
    step = (high - low) / 255
    assert abs(high - 20.0) <= step and abs(low - free_low) <= step, (low, high, free_low)
    assert free_low < -0.5 and free_high < 10  # the fixed ends are far outside the observed range


def test_batchnorm_statistics_are_quantized_only_as_aimet_does(tmp_path):
    stats = {"is_quantized": "True", "is_symmetric": "True"}
    keys = dict(op_type={"BatchNormalization": {"params": {"running_mean": stats, "running_var": stats}}},
                params={"weight_r": {"is_quantized": "False"}})
    statistics = {f"bn.{kind}_{i}" for kind in ("mean", "var") for i in range(1, 7)}
    aimet = build_plan(load_model(CBR), load_config(config(tmp_path, **keys)))
    assert statistics <= set(aimet.params) and not not_applied(load_config(config(tmp_path, **keys)))
    assert {aimet.params[name].role for name in statistics} == {"running_mean", "running_var"}
    loaded = load_config(config(tmp_path, placement="qtool", **keys))
    plan = build_plan(load_model(CBR), loaded)
    assert plan.params and not statistics & set(plan.params)
    assert not_applied(loaded) == [
        f"op_type.BatchNormalization.params.{name} is_quantized (aimet quantizes that parameter; qtool quantizes "
        "only weight and bias inputs)" for name in ("running_mean", "running_var")]


def test_an_op_type_that_is_not_onnx_matches_nothing(tmp_path):
    plain = build_plan(load_model(CBR), load_config(config(tmp_path)))
    extra = {"ChannelShuffle": {"is_output_quantized": "False", "per_channel_quantization": "True"}}
    path = config(tmp_path, op_type=extra, supergroups=[{"op_list": ["Conv", "ChannelShuffle"]}])
    loaded = load_config(path)
    plan = build_plan(load_model(CBR), loaded)
    assert plan.all() == plain.all() and plan.fused == plain.fused
    assert not_applied(loaded) == [
        "op_type.ChannelShuffle (not an ONNX op type: matches no node)",
        "supergroups[0] ChannelShuffle (not an ONNX op type: the group matches no node)"]


def test_aimet_symmetry_keys_are_read(tmp_path):
    defaults = {**BASE["defaults"], "strict_symmetric": "True", "unsigned_symmetric": "False", "hw_version": "V66"}
    loaded = load_config(config(tmp_path, defaults=defaults))
    assert loaded.strict_symmetric and not loaded.unsigned_symmetric and loaded.hw_version == "V66"
    spec = next(iter(build_plan(load_model(CBR), loaded).params.values())).spec
    assert spec.strict_symmetric and not spec.unsigned_symmetric


@pytest.mark.parametrize("doc, fragment", [
    ({"supergroup_passes": ["MatmulAdd"]}, "top level: unknown key 'supergroup_passes'"),
    ({"op_type": {"Relu": {"encoding_constraint": {"min": 0}}}}, "op_type.Relu: unknown key 'encoding_constraint'"),
    ({"op_type": {"Relu": {"encoding_constraints": {"min": 0, "mx": 6}}}},
     "op_type.Relu.encoding_constraints: unknown key 'mx'"),
    ({"op_type": {"BatchNormalization": {"params": {"running_mean": {"quantized": "True"}}}}},
     "op_type.BatchNormalization.params.running_mean: unknown key 'quantized'"),
    ({"defaults": {"ops": {}, "params": {}, "hw_version": 73}}, "defaults.hw_version: expected a string"),
    ({"supergroup_pass_list": ["MatMulAdd"]}, "supergroup_pass_list[0]: unknown graph pass 'MatMulAdd'"),
    ({"supergroup_pass_list": "MatmulAdd"}, "supergroup_pass_list: expected a list"),
])
def test_what_aimet_does_not_allow_stays_a_one_line_error(tmp_path, capsys, doc, fragment):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(QtoolError):
        parse_config(doc, str(path))
    code, out, err = run_main(["info", CBR, "--config", path], capsys)
    assert code == 2 and out == "", (out, err)
    assert err.startswith(f"qtool: error: {path}: {fragment}") and err.count("\n") == 1, err
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]
