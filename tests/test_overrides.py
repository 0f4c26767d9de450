"""Per-tensor and per-node overrides: parsed strictly, applied last, used by calibrate end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.errors import QtoolError
from qtool.ir.graph import load_model
from qtool.plan.build import PlanOptions, build_plan
from qtool.plan.config import load_config, parse_config
from qtool.plan.overrides import load_overrides, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
CBR = ROOT / "sample_models" / "conv_bn_relu.onnx"


def plan_with(*entries, options=PlanOptions(), config="default"):
    overrides = parse_overrides(list(entries), "test")
    return build_plan(load_model(CBR), load_config(config),
                      PlanOptions(options.act_bw, options.param_bw, options.per_channel, options.param_symmetric, overrides))


def test_exact_tensor_gets_the_bitwidth_and_nothing_else_changes():
    base = build_plan(load_model(CBR), load_config("default"))
    plan = plan_with({"tensors": "conv.weight_2", "bitwidth": 16})
    assert plan.params["conv.weight_2"].spec.bw == 16
    changed = [n for n, t in plan.all().items() if t.spec != base.all()[n].spec]
    assert changed == ["conv.weight_2"]


def test_node_glob_selects_its_output_and_parameters_and_role_narrows():
    plan = plan_with({"nodes": "Conv_[12]", "bitwidth": 4})
    four = sorted(n for n, t in plan.all().items() if t.spec.bw == 4)
    assert four == ["conv.weight_1", "conv.weight_2", "conv_1", "conv_2"]
    plan = plan_with({"nodes": "Conv_*", "role": "weight", "bitwidth": 6})
    six = {n for n, t in plan.all().items() if t.spec.bw == 6}
    assert six and all(plan.all()[n].role == "weight" for n in six) and "conv_1" not in six


def test_exclude_fixed_range_symmetry_and_per_channel():
    plan = plan_with({"tensors": "relu_1", "exclude": True},
                     {"tensors": "conv_1", "encoding_constraints": {"min": 0, "max": 1}},
                     {"tensors": "conv_2", "is_symmetric": True},
                     {"tensors": "conv.weight_1", "per_channel": True})
    assert "relu_1" not in plan.activations
    assert plan.activations["conv_1"].fixed_range == (0.0, 1.0)
    assert plan.activations["conv_2"].spec.symmetric is True
    assert plan.params["conv.weight_1"].spec.axis == 0


def test_later_overrides_win_and_overrides_beat_the_command_line():
    plan = plan_with({"nodes": "Conv_1", "bitwidth": 16}, {"tensors": "conv.weight_1", "bitwidth": 8},
                     options=PlanOptions(param_bw=4))
    assert plan.params["conv.weight_1"].spec.bw == 8
    assert plan.params["conv.weight_2"].spec.bw == 4


def test_config_overrides_apply_before_file_overrides():
    doc = json.loads((ROOT / "qtool" / "configs" / "default.json").read_text())
    doc["overrides"] = [{"tensors": "conv_3", "bitwidth": 16}]
    config = parse_config(doc, "cfg.json")
    plan = build_plan(load_model(CBR), config, PlanOptions(overrides=parse_overrides(
        [{"tensors": "conv_3", "bitwidth": 12}], "file")))
    assert plan.activations["conv_3"].spec.bw == 12


@pytest.mark.parametrize("entry, message", [
    ({"tensors": "x", "bitwdth": 8}, "unknown key 'bitwdth'"),
    ({"bitwidth": 8}, "with 'tensors' or 'nodes'"),
    ({"tensors": "x", "bitwidth": 1}, "expected 2..16"),
    ({"tensors": "x", "kind": "weights"}, "expected one of activation, param"),
    ({"tensors": "x", "encoding_constraints": {"min": 1, "max": 0}}, "with a < b"),
    ({"tensors": 3}, "expected a name, a glob or a list"),
    ({"tensors": "x", "exclude": "yes"}, "expected bool"),
])
def test_bad_overrides_name_the_entry(entry, message):
    with pytest.raises(QtoolError) as error:
        parse_overrides([{"tensors": "ok"}, entry], "ov.json")
    assert "ov.json: overrides[1]" in str(error.value) and message in str(error.value)


def test_a_misspelt_exact_name_is_an_error_with_a_suggestion_but_a_glob_is_not():
    with pytest.raises(QtoolError, match=r"no quantizer named 'conv.weight_9'.*did you mean 'conv.weight_"):
        plan_with({"tensors": "conv.weight_9", "bitwidth": 16})
    with pytest.raises(QtoolError, match="no node named 'Conv_99'"):
        plan_with({"nodes": "Conv_99", "bitwidth": 16})
    plan_with({"tensors": "nothing_*", "bitwidth": 16})  # a glob may select nothing (a warning)


def test_per_channel_on_an_activation_is_an_error():
    with pytest.raises(QtoolError, match="per_channel applies to weights"):
        plan_with({"nodes": "Conv_1", "per_channel": True})


def test_calibrate_with_an_overrides_file_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    (tmp_path / "ov.json").write_text(json.dumps({"overrides": [
        {"nodes": "Conv_2", "bitwidth": 16, "comment": "sensitive"},
        {"tensors": "relu_1", "exclude": True}]}))
    assert len(load_overrides(tmp_path / "ov.json")) == 2
    code, _, err = run_main(["calibrate", CBR, "--data", tmp_path / "d.npz", "--overrides", tmp_path / "ov.json",
                             "-o", tmp_path / "m"], capsys)
    assert code == 0, err
    enc = json.loads((tmp_path / "m.encodings.json").read_text())
    bws = {e["name"]: e["bw"] for e in enc["activation_encodings"] + enc["param_encodings"]}
    assert bws["conv_2"] == 16 and bws["conv.weight_2"] == 16 and bws["conv_1"] == 8
    assert "relu_1" not in bws
    code, out, _ = run_main(["simulate", tmp_path / "m.onnx", "--data", tmp_path / "d.npz"], capsys)
    assert code == 0 and "SQNR" in out
    (tmp_path / "bad.json").write_text('{"overrides": [{"tensors": "conv_2", "bits": 4}]}')
    code, _, err = run_main(["calibrate", CBR, "--data", tmp_path / "d.npz", "--overrides", tmp_path / "bad.json",
                             "-o", tmp_path / "m2"], capsys)
    assert code == 2 and "bad.json: overrides[0]: unknown key 'bits'" in err
