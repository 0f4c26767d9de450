"""AIMET runtime configs (qtool.plan.config) and the quantizer plan they give on real graphs (qtool.plan.build)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.errors import QtoolError
from qtool.ir.graph import load_model, model_bytes
from qtool.plan.build import PlanOptions, build_plan
from qtool.plan.config import BUILTIN_CONFIGS, QuantizerSettings, load_config, parse_config
from qtool.quant import QuantSpec, compute_encoding
from qtool.steps.calibrate import CalibrateOptions, calibrate

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
DEFAULT_DOC = json.loads((ROOT / "qtool" / "configs" / "default.json").read_text())


def sample(name: str):
    return load_model(SAMPLES / f"{name}.onnx")


def write_config(tmp_path: Path, doc: dict, name: str = "cfg.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def default_with(**changes) -> dict:
    """A deep copy of the built-in default config with top-level sections replaced/merged."""
    doc = json.loads(json.dumps(DEFAULT_DOC))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


def save_hand_model(tmp_path: Path, name: str, nodes, inputs, outputs, initializers, opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def fvi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# ----------------------------------------------------------------------------- built-in configs

EXPECTED_BUILTIN = {
    # name: (activation bw, param bw, per-channel)
    "default": (8, 8, False),
    "w8a8-per-channel": (8, 8, True),
    "w8a16": (16, 8, True),
    "w4a8": (8, 4, True),
}


def test_builtin_names():
    assert set(BUILTIN_CONFIGS) == set(EXPECTED_BUILTIN) | {"fp16", "w4a16", "w4-weight-only"}  # block-wise: test_blockwise_cli


def test_fp16_config_rounds_everything_to_float16():
    config = load_config("fp16")
    assert config.ops == QuantizerSettings(enabled=True, symmetric=False, bitwidth=16, dtype="float")
    assert config.param_types["bias"].enabled is True
    plan = build_plan(sample("conv_bn_relu"), config)
    specs = [t.spec for t in plan.all().values()]
    assert specs and all(s.dtype == "float" and s.bw == 16 for s in specs)
    assert any(t.role == "bias" for t in plan.params.values())


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTIN))
def test_builtin_configs_load(name):
    act_bw, param_bw, per_channel = EXPECTED_BUILTIN[name]
    config = load_config(name)
    assert name in config.source
    assert config.ops == QuantizerSettings(enabled=True, symmetric=False, bitwidth=act_bw, dtype="int")
    assert config.params == QuantizerSettings(enabled=True, symmetric=True, bitwidth=param_bw, dtype="int")
    assert config.per_channel is per_channel
    assert config.param_types["bias"].enabled is False
    assert config.strict_symmetric is False and config.unsigned_symmetric is True
    assert config.model_input_quantized is True and config.model_output_quantized is None
    assert ("Conv", "Relu") in config.supergroups
    # and the plan really uses those bit-widths
    plan = build_plan(sample("conv_bn_relu"), config)
    assert {t.spec.bw for t in plan.activations.values()} == {act_bw}
    assert {t.spec.bw for t in plan.params.values()} == {param_bw}
    assert plan.params["conv.weight_1"].spec.axis == (0 if per_channel else None)


def test_default_is_the_default():
    assert load_config(None) == load_config("default")


# ----------------------------------------------------------------------------- booleans


def test_aimet_string_booleans_and_json_booleans_are_the_same_config():
    def doc(true, false):
        return {
            "defaults": {"ops": {"is_output_quantized": true}, "params": {"is_quantized": true, "is_symmetric": true},
                         "strict_symmetric": false, "unsigned_symmetric": true, "per_channel_quantization": true},
            "params": {"bias": {"is_quantized": false}},
            "op_type": {"Softmax": {"is_output_quantized": false, "is_input_quantized": true}},
            "model_input": {"is_input_quantized": false},
            "model_output": {"is_output_quantized": true},
        }

    as_strings = parse_config(doc("True", "False"), "strings.json")
    as_json = parse_config(doc(True, False), "json.json")
    as_lower = parse_config(doc("true", "false"), "lower.json")
    strip = lambda c: dataclasses.replace(c, source="", raw={})  # noqa: E731
    assert strip(as_strings) == strip(as_json) == strip(as_lower)
    assert as_json.per_channel is True and as_json.strict_symmetric is False
    assert as_json.op_types["Softmax"].output.enabled is False
    assert as_json.op_types["Softmax"].input_quantized is True
    assert as_json.model_input_quantized is False and as_json.model_output_quantized is True


@pytest.mark.parametrize("value", ["yes", 1, None, "TRUE "])
def test_bad_boolean_names_file_and_key(tmp_path, value):
    path = write_config(tmp_path, default_with(defaults={"strict_symmetric": value}))
    with pytest.raises(QtoolError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "defaults.strict_symmetric" in str(info.value)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "doc,where,key",
    [
        ({"defaults": {}, "supergroup": []}, "top level", "supergroup"),
        ({"defaults": {"per_channel": "True"}}, "defaults", "per_channel"),
        ({"defaults": {"ops": {"is_quantized": "True"}}}, "defaults.ops", "is_quantized"),
        ({"defaults": {"params": {"is_output_quantized": "True"}}}, "defaults.params", "is_output_quantized"),
        ({"params": {"weight": {"bitwdth": 4}}}, "params.weight", "bitwdth"),
        ({"op_type": {"Conv": {"per_channel": "True"}}}, "op_type.Conv", "per_channel"),
        ({"op_type": {"Conv": {"params": {"weight": {"symmetric": "True"}}}}}, "op_type.Conv.params.weight",
         "symmetric"),
        ({"model_input": {"is_output_quantized": "True"}}, "model_input", "is_output_quantized"),
        ({"supergroups": [{"ops": ["Conv", "Relu"]}]}, "supergroups[0]", "ops"),
    ],
)
def test_unknown_key_names_file_and_key(tmp_path, doc, where, key):
    path = write_config(tmp_path, doc)
    with pytest.raises(QtoolError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {where}: unknown key '{key}'"), message
    assert info.value.hint and "valid keys" in info.value.hint


@pytest.mark.parametrize(
    "doc,fragment",
    [
        # op type and parameter names are free strings, as in aimet (tests/test_aimet_configs.py)
        ({"op_type": {"": {}}}, "op_type: expected an op type (a non-empty string), got ''"),
        ({"supergroups": [{"op_list": ["Conv", 5]}]}, "supergroups[0].op_list: expected an op type"),
        ({"supergroup_pass_list": ["MatMulAdd"]}, "supergroup_pass_list[0]: unknown graph pass 'MatMulAdd'"),
        ({"supergroups": [{"op_list": ["Conv"]}]}, "supergroups[0].op_list: expected a list of at least two"),
    ],
)
def test_unknown_op_type_names_file_and_op(tmp_path, doc, fragment):
    path = write_config(tmp_path, doc)
    with pytest.raises(QtoolError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {fragment}"), str(info.value)


@pytest.mark.parametrize("bitwidth", [1, 0, -8, "8", 8.5, True, 33])
def test_bad_bitwidth_names_file_and_key(tmp_path, bitwidth):
    path = write_config(tmp_path, {"defaults": {"ops": {"bitwidth": bitwidth}}})
    with pytest.raises(QtoolError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: defaults.ops.bitwidth: expected an integer"), str(info.value)
    path = write_config(tmp_path, {"op_type": {"Conv": {"params": {"weight": {"bitwidth": bitwidth}}}}})
    with pytest.raises(QtoolError, match=r"op_type\.Conv\.params\.weight\.bitwidth"):
        load_config(path)


def test_bad_dtype_names_file_and_key(tmp_path):
    path = write_config(tmp_path, {"defaults": {"params": {"dtype": "fp16"}}})
    with pytest.raises(QtoolError, match=r"defaults\.params\.dtype: expected 'int' or 'float'"):
        load_config(path)


def test_integer_bitwidth_above_16_is_a_config_error(tmp_path):
    path = write_config(tmp_path, default_with(defaults={"ops": {"is_output_quantized": "True", "bitwidth": 24}}))
    with pytest.raises(QtoolError, match=r"defaults\.ops\.bitwidth"):
        build_plan(sample("two_inputs"), load_config(path))


def test_float_bitwidth_other_than_16_32_is_a_config_error(tmp_path):
    path = write_config(tmp_path, default_with(defaults={"ops": {"is_output_quantized": "True", "dtype": "float",
                                                                   "bitwidth": 8}}))
    with pytest.raises(QtoolError, match=r"defaults\.ops"):
        build_plan(sample("two_inputs"), load_config(path))


def test_encoding_constraints_without_min_and_max_is_a_config_error(tmp_path):
    # one end alone is aimet's (tests/test_aimet_configs.py); neither is an error
    path = write_config(tmp_path, {"op_type": {"Softmax": {"encoding_constraints": {}}}})
    with pytest.raises(QtoolError, match=r"op_type\.Softmax\.encoding_constraints: empty"):
        load_config(path)


def test_op_type_section_must_be_an_object(tmp_path):
    path = write_config(tmp_path, {"op_type": ["Conv"]})
    with pytest.raises(QtoolError, match="op_type"):
        load_config(path)


def test_missing_and_unparsable_config_files(tmp_path):
    with pytest.raises(QtoolError, match="no such config file") as info:
        load_config(tmp_path / "nope.json")
    assert "nope.json" in str(info.value) and "w8a8-per-channel" in str(info.value)  # lists the built-ins
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(QtoolError, match="not valid JSON") as info:
        load_config(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(QtoolError, match="top level: expected an object"):
        parse_config(["Conv"], "list.json")


# ----------------------------------------------------------------------------- plan on sample models


def test_supergroups_leave_fused_outputs_unquantized():
    plan = build_plan(sample("conv_bn_relu"), load_config("default"))
    # default: Conv+Relu (Conv_6 -> Relu_6) and Add+Relu (Add_1 -> Relu_5) are fused
    assert plan.fused == ["add_1", "conv_6"]
    assert "conv_6" not in plan.activations and "add_1" not in plan.activations
    assert "relu_6" in plan.activations and "relu_5" in plan.activations
    # Conv -> BN -> Relu is no supergroup in 'default', so the conv output is quantized there ...
    assert "conv_1" in plan.activations
    # ... but w8a8-per-channel fuses Conv+BN and BN+Relu: only the Relu output is left
    plan = build_plan(sample("conv_bn_relu"), load_config("w8a8-per-channel"))
    assert {"conv_1", "batchnormalization_1", "conv_6", "add_1"} <= set(plan.fused)
    assert "conv_1" not in plan.activations and "batchnormalization_1" not in plan.activations
    assert plan.activations["relu_1"].role == "output" and plan.activations["relu_1"].node == "Relu_1"


def test_supergroup_chain_breaks_at_a_branch(tmp_path):
    """A Conv output used by Relu *and* by another op is materialised: it keeps its quantizer."""
    w = np.ones((2, 2, 1, 1), np.float32)
    path = save_hand_model(
        tmp_path, "branch",
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Add", ["c", "r"], ["y"])],
        [fvi("x", [1, 2, 4, 4])], [fvi("y", [1, 2, 4, 4])], [("w", w)])
    plan = build_plan(load_model(path), load_config("default"))
    assert "c" in plan.activations and plan.fused == []


def test_model_input_is_quantized_unless_disabled(tmp_path):
    plan = build_plan(sample("two_inputs"), load_config("default"))
    for name in ("image", "features"):
        assert plan.activations[name].role == "input"
        assert plan.activations[name].spec == QuantSpec(bw=8, symmetric=False)
    path = write_config(tmp_path, default_with(model_input={"is_input_quantized": "False"}))
    plan = build_plan(sample("two_inputs"), load_config(path))
    assert "image" not in plan.activations and "features" not in plan.activations
    assert "scores" in plan.activations


def test_model_output_setting(tmp_path):
    path = write_config(tmp_path, default_with(model_output={"is_output_quantized": "False"}))
    plan = build_plan(sample("two_inputs"), load_config(path))
    assert "scores" not in plan.activations and "concat_1" in plan.activations


def test_bias_is_not_quantized_by_default(tmp_path):
    plan = build_plan(sample("two_inputs"), load_config("w8a8-per-channel"))
    assert set(plan.params) == {"conv.weight_1", "bn.scale_1", "fc.weight_1", "fc.weight_2"}
    path = write_config(tmp_path, default_with(params={"bias": {"is_quantized": "True"}},
                                               defaults={"per_channel_quantization": "True"}))
    plan = build_plan(sample("two_inputs"), load_config(path))
    assert plan.params["fc.bias_1"].role == "bias"
    assert plan.params["fc.bias_1"].spec.axis is None  # never per channel
    assert plan.params["fc.weight_1"].spec.axis == 0


def test_constants_that_are_not_parameters_stay_float():
    plan = build_plan(sample("mobilenet_block"), load_config("w8a8-per-channel"))
    model = sample("mobilenet_block")
    clip_bounds = {v.name for n in model.graph if n.op_type == "Clip" for v in n.inputs[1:] if v is not None}
    bn_stats = {n.inputs[i].name for n in model.graph if n.op_type == "BatchNormalization" for i in (3, 4)}
    assert clip_bounds and bn_stats
    assert not (clip_bounds | bn_stats) & set(plan.all())


def test_per_channel_axes_on_sample_models():
    config = load_config("w8a8-per-channel")
    conv = build_plan(sample("conv_bn_relu"), config)
    assert conv.params["conv.weight_1"].spec.axis == 0  # Conv: output channels
    assert conv.params["bn.scale_1"].spec.axis is None  # 1-D: per tensor
    gemm = build_plan(sample("two_inputs"), config)
    assert gemm.params["fc.weight_1"].spec.axis == 0  # Gemm transB=1: W is N x K
    matmul = build_plan(sample("attention_block"), config)
    for name in ("q.weight_1", "k.weight_1", "v.weight_1", "o.weight_1"):
        assert matmul.params[name].spec.axis == 1  # MatMul: last axis of K x N
    assert matmul.params["scale_1"].spec.axis is None
    assert all(t.spec.symmetric for t in matmul.params.values())


def test_per_channel_axes_on_hand_built_models(tmp_path):
    rng = np.random.default_rng(0)
    path = save_hand_model(
        tmp_path, "axes",
        [helper.make_node("Gemm", ["x", "g"], ["a"]),  # transB = 0: W is K x N -> axis 1
         helper.make_node("MatMul", ["a", "m"], ["b"]),  # 3-D weight -> last axis (2)
         helper.make_node("Reshape", ["b", "shape"], ["c"]),
         helper.make_node("ConvTranspose", ["c", "t"], ["y"])],  # W is C_in x C_out/g x k x k -> axis 1
        [fvi("x", [2, 4])], [fvi("y", [2, 7, 6, 2])],
        [("g", rng.standard_normal((4, 6)).astype(np.float32)),
         ("m", rng.standard_normal((3, 6, 5)).astype(np.float32)),
         ("shape", np.array([2, 3, 5, 1], np.int64)),
         ("t", rng.standard_normal((3, 7, 2, 2)).astype(np.float32))])
    plan = build_plan(load_model(path), load_config("w8a8-per-channel"))
    assert plan.params["g"].spec.axis == 1
    assert plan.params["m"].spec.axis == 2
    assert plan.params["t"].spec.axis == 1
    assert "shape" not in plan.params  # int64 constant: not a float parameter


def test_op_type_override_disables_an_output(tmp_path):
    base = build_plan(sample("attention_block"), load_config("default"))
    path = write_config(tmp_path, default_with(op_type={"Softmax": {"is_output_quantized": "False"}}))
    plan = build_plan(sample("attention_block"), load_config(path))
    assert "softmax_1" in base.activations and "softmax_1" not in plan.activations
    assert set(base.activations) - set(plan.activations) == {"softmax_1"}
    assert plan.params.keys() == base.params.keys()


def test_op_type_overrides_per_channel_and_params(tmp_path):
    doc = {"defaults": {"per_channel_quantization": "True"},
           "op_type": {"Conv": {"per_channel_quantization": "False", "bitwidth": 16,
                                "params": {"weight": {"bitwidth": 4, "is_symmetric": "False"}}}}}
    plan = build_plan(sample("two_inputs"), load_config(write_config(tmp_path, doc)))
    conv_w = plan.params["conv.weight_1"].spec
    assert conv_w.axis is None and conv_w.bw == 4 and conv_w.symmetric is False
    assert plan.params["fc.weight_1"].spec.axis == 0 and plan.params["fc.weight_1"].spec.bw == 8
    # the Conv output itself sits inside no supergroup here (Conv -> BN), so its bit-width shows
    assert plan.activations["conv_1"].spec.bw == 16
    assert plan.activations["relu_1"].spec.bw == 8


def test_encoding_constraints_give_a_fixed_range(tmp_path):
    path = write_config(tmp_path, default_with(op_type={"Softmax": {"encoding_constraints": {"min": 0, "max": 1}}}))
    model = sample("attention_block")
    plan = build_plan(model, load_config(path))
    assert plan.activations["softmax_1"].fixed_range == (0.0, 1.0)
    assert plan.activations["mul_1"].fixed_range is None
    rng = np.random.default_rng(0)
    batches = [{"tokens": rng.standard_normal((4, 16, 32)).astype(np.float32)}]
    result = calibrate(model, plan, batches, CalibrateOptions(scheme="minmax"))
    enc = result.encodings.activations["softmax_1"]
    assert enc.same_as(compute_encoding(0.0, 1.0, QuantSpec(bw=8)))  # the data's own max is < 1
    assert enc.scale[0] == np.float32(1 / 255) and enc.offset[0] == 0
    unconstrained = calibrate(model, build_plan(model, load_config("default")), batches,
                              CalibrateOptions(scheme="minmax")).encodings.activations["softmax_1"]
    assert unconstrained.scale[0] < enc.scale[0]


def test_strict_and_unsigned_symmetric_reach_the_specs(tmp_path):
    path = write_config(tmp_path, default_with(defaults={**DEFAULT_DOC["defaults"], "strict_symmetric": "True",
                                                         "unsigned_symmetric": "False"}))
    plan = build_plan(sample("two_inputs"), load_config(path))
    spec = plan.params["fc.weight_1"].spec
    assert spec.strict_symmetric is True and spec.unsigned_symmetric is False and spec.symmetric is True


@pytest.mark.parametrize("config", ["default", "w8a8-per-channel", "w4a8"])
def test_param_and_act_bitwidth_overrides(config):
    model = sample("attention_block")
    plan = build_plan(model, load_config(config), PlanOptions(act_bw=16, param_bw=4, per_channel=False))
    assert plan.activations and plan.params
    assert {t.spec.bw for t in plan.activations.values()} == {16}
    assert {t.spec.bw for t in plan.params.values()} == {4}
    assert {t.spec.axis for t in plan.params.values()} == {None}
    plan = build_plan(model, load_config(config), PlanOptions(per_channel=True, act_bw=6))
    assert plan.params["q.weight_1"].spec.axis == 1
    assert plan.widened and {plan.activations[n].spec.bw for n in plan.widened} == {16}  # the LayerNorm rules
    assert {t.spec.bw for t in plan.activations.values() if t.name not in plan.widened} == {6}


def test_act_bw_override_on_a_float16_config(tmp_path):
    path = write_config(tmp_path, default_with(defaults={**DEFAULT_DOC["defaults"],
                                                         "ops": {"is_output_quantized": "True", "dtype": "float",
                                                                 "bitwidth": 16}}))
    try:
        plan = build_plan(sample("two_inputs"), load_config(path), PlanOptions(act_bw=8))
    except QtoolError:
        return  # a clear refusal is fine too
    assert {(t.spec.dtype, t.spec.bw) for t in plan.activations.values()} == {("int", 8)}


def test_plan_refuses_an_already_quantized_model(tmp_path):
    path = save_hand_model(
        tmp_path, "qdq",
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        [fvi("x", [1, 4])], [fvi("y", [1, 4])],
        [("s", np.array(0.1, np.float32)), ("z", np.array(128, np.uint8))])
    with pytest.raises(QtoolError, match="already contains QuantizeLinear"):
        build_plan(load_model(path), load_config("default"))


def test_plan_does_not_change_the_model():
    model = sample("mobilenet_block")
    before = model_bytes(model)
    build_plan(model, load_config("w8a8-per-channel"), PlanOptions(act_bw=16, param_bw=4))
    assert model_bytes(model) == before


def test_asymmetric_weights_override_gives_asymmetric_param_grids():
    from qtool.quant.observers import encode_param

    model = load_model(SAMPLES / "conv_bn_relu.onnx")
    plan = build_plan(model, load_config("default"), PlanOptions(param_symmetric=False))
    weights = [t for t in plan.params.values() if t.role == "weight"]
    assert weights and all(not t.spec.symmetric for t in weights)
    values = model.graph.initializers[weights[0].name].const_value.numpy()
    enc = encode_param(values, weights[0].spec)
    assert enc.offset[0] == round(min(values.min(), 0) / enc.scale[0])  # asymmetric: offset from the minimum


def _hard_swish_model(extra_use: bool):
    import onnx_ir as ir

    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["c"]),
             helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_use:  # x + 3 used elsewhere too: no longer only the Clip's input
        nodes.append(helper.make_node("Relu", ["a"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("three", 3), ("lo", 0), ("hi", 6), ("six", 6))]
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])], outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def test_hard_swish_offset_feeding_only_its_clip_is_not_quantized():
    plan = build_plan(_hard_swish_model(False), load_config("default"))
    assert "a" not in plan.activations and "a" in plan.fused
    # the whole hard-swish is one op (qtool.ir.hard_swish): quantized at its result only
    assert "y" in plan.activations and not {"c", "m"} & set(plan.activations)
    assert "a" in build_plan(_hard_swish_model(True), load_config("default")).activations


def test_gelu_and_silu_written_out_are_quantized_at_their_result_only():
    """x * 0.5 * (1 + erf(x / sqrt 2)) and x * sigmoid(x) are Gelu and SiLU, one op on a target:
    their inner tensors get no quantizer; with pointwise_functions off they all do."""
    import onnx_ir as ir

    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["gelu"]),
             helper.make_node("Sigmoid", ["gelu"], ["s"]), helper.make_node("Mul", ["gelu", "s"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("sqrt2", 2 ** 0.5), ("one", 1), ("half", 0.5))]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = ir.from_proto(onnx.shape_inference.infer_shapes(proto))
    plan = build_plan(model, load_config("default"))
    # SiLU(GELU(x)) is still one function of x: only x and the result are quantized
    assert set(plan.activations) == {"x", "y"} and {"d", "e", "a", "m", "gelu", "s"} <= set(plan.fused)
    unfused = parse_config({**load_config("default").raw, "patterns": {"pointwise_functions": False}}, "t")
    assert set(build_plan(model, unfused).activations) == {"x", "d", "e", "a", "m", "gelu", "s", "y"}


def _bounded_relu_model(constant_bound: bool):
    """x -> Relu -> Min(bound): what `equalize --relu6 bound` writes for a ReLU6."""
    import onnx_ir as ir

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Min", ["r", "b"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    inits = []
    if constant_bound:
        inits.append(numpy_helper.from_array(np.array([6.0, 3.0, 1.5], np.float32), "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]))
    graph = helper.make_graph(nodes, "br", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def test_relu_bounded_by_a_constant_min_is_one_activation():
    # a quantizer on the unbounded Relu output would round away the resolution the Min keeps
    plan = build_plan(_bounded_relu_model(True), load_config("default"))
    assert "r" not in plan.activations and "r" in plan.fused and "y" in plan.activations
    # a Min against a computed tensor is an ordinary op: its inputs keep their quantizers
    assert "r" in build_plan(_bounded_relu_model(False), load_config("default")).activations
