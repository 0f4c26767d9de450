"""calibrate -> simulate -> export on the sample models, checked against numbers.

* the simulated QDQ model computes exactly eq. 2.7 (numpy reference on hand-built models);
* W8A8 per-channel keeps a good SQNR, and bit-widths rank as they must (w8a16 > w8a8 > w4a8);
* the exported NAME_qdq.onnx, run in plain onnxruntime with its integer kernels, agrees with
  the simulation;
* frozen encodings survive calibrate and export; runs are byte-for-byte reproducible.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import integer_kernels_saturate
from qtool.cli import cli
from qtool.commands.inputs import open_model_data
from qtool.ir.graph import load_model, save_model
from qtool.metrics.comparison import sqnr_db
from qtool.plan.build import PlanOptions, build_plan
from qtool.plan.config import load_config, parse_config
from qtool.quant import compute_encoding, quantize, quantize_dequantize
from qtool.runtime.sessions import input_infos, make_session, with_taps
from qtool.steps.calibrate import CalibrateOptions, calibrate
from qtool.steps.export import export
from qtool.steps.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
SYNTHETIC = ["conv_bn_relu", "mobilenet_block", "attention_block", "two_inputs"]
DEFAULT_DOC = json.loads((ROOT / "qtool" / "configs" / "default.json").read_text())


# ----------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def sample(name: str):
    return load_model(SAMPLES / f"{name}.onnx")


def random_feeds(model, n: int, seed: int) -> dict[str, np.ndarray]:
    """Deterministic Gaussian data of the model's input shapes (dynamic dims -> 1)."""
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal((n, *[d or 1 for d in i.shape[1:]])).astype(np.float32)
            for i in input_infos(model)}


def write_npz(path: Path, feeds: dict[str, np.ndarray]) -> Path:
    np.savez(path, **feeds)
    return path


@functools.lru_cache(maxsize=None)
def calibrated(name: str, config: str = "w8a8-per-channel", act_bw: int | None = None,
               param_bw: int | None = None, scheme: str = "minmax"):
    """(model, encodings) calibrated on the 32 samples of eval_feeds."""
    model = sample(name)
    plan = build_plan(model, load_config(config), PlanOptions(act_bw=act_bw, param_bw=param_bw))
    result = calibrate(model, plan, [eval_feeds(name)], CalibrateOptions(scheme=scheme))
    assert result.samples == 32
    return model, result.encodings


def eval_feeds(name: str) -> dict[str, np.ndarray]:
    """The calibration set doubles as evaluation set: the SQNR then measures quantization noise
    alone (with 32 samples, held-out data would also measure how often the ranges are exceeded)."""
    return random_feeds(sample(name), 32, seed=0)


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return session.run(None, feeds)[0]


def db(ref: np.ndarray, test: np.ndarray) -> float:
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    return sqnr_db(float(np.sum(ref * ref)), float(np.sum((ref - test) ** 2)))


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.reshape(len(a), -1).argmax(1) == b.reshape(len(b), -1).argmax(1)))


def invoke(args: list[str]):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


# ----------------------------------------------------------------------------- quality


@pytest.mark.parametrize("name", SYNTHETIC)
def test_w8a8_per_channel_sqnr(tmp_path, name):
    model = sample(name)
    calib = write_npz(tmp_path / "calib.npz", eval_feeds(name))
    source = open_model_data(model, str(calib), samples=None, preprocess=None)
    plan = build_plan(model, load_config("w8a8-per-channel"))
    result = calibrate(model, plan, source.batches(8), CalibrateOptions(scheme="sqnr"), total=source.count())
    assert result.samples == 32
    assert set(result.encodings.activations) == set(plan.activations)
    assert set(result.encodings.params) == set(plan.params)
    report = simulate(model, result.encodings, [eval_feeds(name)]).report
    (row,) = report.values()
    assert row["samples"] == 32
    assert 25.0 <= row["sqnr_db"] < 70.0, row  # good, and yet really quantized
    assert row["max_abs_error"] > 0
    if "top1_agreement" in row:
        assert row["top1_agreement"] >= 0.9


@pytest.mark.parametrize("name", SYNTHETIC)
def test_bypass_reproduces_float_exactly(name):
    result = simulate(sample(name), None, [eval_feeds(name)], bypass=True)
    for row in result.report.values():
        assert row["sqnr_db"] == float("inf") and row["max_abs_error"] == 0.0 and row["samples"] == 32


def test_bitwidths_rank_as_expected():
    name = "attention_block"
    feeds = eval_feeds(name)

    def quality(**kwargs):
        model, enc = calibrated(name, **kwargs)
        sim = simulate(model, enc, [feeds])
        return next(iter(sim.report.values()))["sqnr_db"], sim.qdq_model, enc

    w8a8, _, _ = quality()
    w8a16, qdq16, _ = quality(config="w8a16")
    w4a8, qdq4, enc4 = quality(config="w4a8")
    w8a6, qdq6, _ = quality(act_bw=6)
    w16a16, _, _ = quality(act_bw=16, param_bw=16)
    assert w16a16 >= 70.0
    assert w8a16 > w8a8 + 3.0
    assert w8a8 > w8a6 + 3.0  # about 6 dB per activation bit
    assert w8a8 > w4a8 + 6.0
    assert w8a6 > 15.0 and w4a8 > 15.0  # lower, but still a working model

    # the 16-bit activations use com.microsoft QuantizeLinear with 16-bit zero points
    q16 = [n for n in qdq16.graph if n.op_type == "QuantizeLinear"]
    assert q16 and {n.domain for n in q16} == {"com.microsoft"}
    assert {n.inputs[2].dtype.name for n in q16} <= {"UINT16", "INT16"}
    # 6-bit activations have no onnxruntime type: a fake-quant subgraph (Round) instead; the
    # LayerNorm rules (patterns.layer_norm_*_bw) keep the LayerNorm's input and output at 16 bits
    widths = [e.bw for e in calibrated(name, act_bw=6)[1].activations.values()]
    assert widths.count(6) and set(widths) == {6, 16}
    assert len([n for n in qdq6.graph if n.op_type == "QuantizeLinear"]) == widths.count(16)
    assert len([n for n in qdq6.graph if n.op_type == "Round"]) == widths.count(6)
    # 4-bit weights live in 8-bit containers: int8 within [-8, 7] (signed symmetric) or uint8 within
    # [0, 15] (unsigned symmetric: all-positive weights such as the LayerNorm scale); the largest
    # weight magnitude sits on the grid end
    kinds = set()
    for pname, penc in enc4.params.items():
        assert penc.bw == 4
        stored = qdq4.graph.initializers[f"{pname}_quantized"].const_value.numpy()
        if penc.offset[0] == -8:
            assert stored.dtype == np.int8
            assert stored.min() >= -8 and stored.max() <= 7 and (stored.max() == 7 or stored.min() == -7)
        else:
            assert penc.offset.tolist() == [0] and stored.dtype == np.uint8
            assert stored.min() >= 0 and stored.max() == 15
        kinds.add(stored.dtype)
    assert kinds == {np.dtype(np.int8), np.dtype(np.uint8)}


# ----------------------------------------------------------------------------- numpy reference


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Stride-1 convolution in float64."""
    n, _, h, wd = x.shape
    k = w.shape[2]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j].astype(np.float64))
    return out + b.astype(np.float64)[None, :, None, None]


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((4, 3, 3, 3)) * np.array([0.02, 0.1, 0.3, 0.6])[:, None, None, None]).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("conv") / "conv.onnx"
    onnx.save(model, path)
    x = (rng.standard_normal((8, 3, 8, 8)) + 0.3).astype(np.float32)
    return path, x, w, b


def _output_unquantized_config():
    return parse_config({**DEFAULT_DOC, "defaults": {**DEFAULT_DOC["defaults"], "per_channel_quantization": "True"},
                         "model_output": {"is_output_quantized": "False"}}, "no-output.json")


def test_simulated_conv_equals_numpy_reference(conv_model):
    path, x, w, b = conv_model
    model = load_model(path)
    plan = build_plan(model, _output_unquantized_config())
    assert set(plan.activations) == {"x"} and set(plan.params) == {"w"}
    enc = calibrate(model, plan, [{"x": x}], CalibrateOptions(scheme="minmax")).encodings
    ex, ew = enc.activations["x"], enc.params["w"]
    assert ew.axis == 0 and ew.scale.shape == (4,) and not ex.symmetric
    np.testing.assert_array_equal(ew.scale, (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32))
    sim = simulate(model, enc, [{"x": x}])
    got = run(make_session(sim.qdq_model, simulate=True), {"x": x})
    want = _conv2d(quantize_dequantize(x, ex), quantize_dequantize(w, ew), b, pad=1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)  # 1e-5, or 1 float32 ulp of large outputs
    float_out = _conv2d(x, w, b, pad=1)
    assert np.abs(want - float_out).max() > 1e-3  # the reference really is quantized
    assert sim.report["y"]["sqnr_db"] == pytest.approx(db(float_out, got), abs=0.01)


@pytest.mark.parametrize("variant", ["6-bit", "strict-symmetric-8-bit", "4-bit-weights"])
def test_fake_quant_and_narrow_grids_equal_numpy_reference(conv_model, variant):
    """Grids onnxruntime has no type for run as a float subgraph: still exactly eq. 2.7."""
    path, x, w, b = conv_model
    model = load_model(path)
    doc = {**DEFAULT_DOC, "defaults": {**DEFAULT_DOC["defaults"], "per_channel_quantization": "True"},
           "model_output": {"is_output_quantized": "False"}}
    options = PlanOptions()
    if variant == "6-bit":
        options = PlanOptions(act_bw=6)
    elif variant == "strict-symmetric-8-bit":
        doc["defaults"] = {**doc["defaults"], "strict_symmetric": "True",
                           "ops": {"is_output_quantized": "True", "is_symmetric": "True"}}
    else:
        options = PlanOptions(param_bw=4)
    plan = build_plan(model, parse_config(doc, variant), options)
    enc = calibrate(model, plan, [{"x": x}], CalibrateOptions(scheme="minmax")).encodings
    ex, ew = enc.activations["x"], enc.params["w"]
    if variant == "strict-symmetric-8-bit":
        assert ex.strict and ex.qmax == 254 and ew.strict
    qdq = simulate(model, enc, [{"x": x}]).qdq_model
    fake = variant != "4-bit-weights"
    assert any(n.op_type == "Round" for n in qdq.graph) is fake
    got = run(make_session(qdq, simulate=True), {"x": x})
    xq = quantize_dequantize(x, ex)
    if fake:
        assert quantize(x, ex).max() == ex.qmax  # the grid end is used: clipping at q_max matters
    want = _conv2d(xq, quantize_dequantize(w, ew), b, pad=1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_simulated_conv_with_output_quantizer(conv_model):
    path, x, w, b = conv_model
    model = load_model(path)
    plan = build_plan(model, load_config("w8a8-per-channel"))
    enc = calibrate(model, plan, [{"x": x}], CalibrateOptions(scheme="minmax")).encodings
    ey = enc.activations["y"]
    sim = simulate(model, enc, [{"x": x}])
    got = run(make_session(sim.qdq_model, simulate=True), {"x": x})
    pre = _conv2d(quantize_dequantize(x, enc.activations["x"]), quantize_dequantize(w, enc.params["w"]), b, 1)
    want = quantize_dequantize(pre.astype(np.float32), ey)
    # identical except where float32 vs float64 accumulation lands on the other side of a rounding tie
    off = np.abs(got - want) > 1e-5
    assert off.mean() <= 0.01
    assert np.abs(got - want).max() <= ey.scale[0] * (1 + 1e-4)
    assert len(np.unique(got)) <= 256  # on the output grid


def test_simulated_gemm_per_channel_axis_1_equals_numpy(tmp_path):
    """Gemm with transB=0: weight K x N, per-channel along axis 1, plus a MatMul with a 2-D weight."""
    rng = np.random.default_rng(4)
    g = (rng.standard_normal((6, 5)) * np.linspace(0.1, 3, 5)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    m = (rng.standard_normal((5, 3)) * np.array([0.2, 1.0, 4.0])).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "g", "c"], ["h"]), helper.make_node("MatMul", ["h", "m"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(a, n) for n, a in (("g", g), ("c", c), ("m", m))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / "gemm.onnx")
    model = load_model(tmp_path / "gemm.onnx")
    x = rng.standard_normal((16, 6)).astype(np.float32)
    plan = build_plan(model, _output_unquantized_config())
    enc = calibrate(model, plan, [{"x": x}], CalibrateOptions(scheme="minmax")).encodings
    assert enc.params["g"].axis == 1 and enc.params["m"].axis == 1
    np.testing.assert_array_equal(enc.params["g"].scale, (np.abs(g).max(0) / 127).astype(np.float32))
    got = run(make_session(simulate(model, enc, [{"x": x}]).qdq_model, simulate=True), {"x": x})
    h = quantize_dequantize(x, enc.activations["x"]).astype(np.float64) @ quantize_dequantize(g, enc.params["g"]) + c
    h = quantize_dequantize(h.astype(np.float32), enc.activations["h"])
    want = h.astype(np.float64) @ quantize_dequantize(m, enc.params["m"])
    assert np.mean(np.abs(got - want) > 1e-5) <= 0.02  # (h re-quantized: rare ties may flip)
    np.testing.assert_allclose(got, want, rtol=0, atol=float(enc.activations["h"].scale[0]) * 4 * 1.001)


# ----------------------------------------------------------------------------- export


def _plain_session(path: Path) -> ort.InferenceSession:
    """What a user does with the deployable file: default options, QDQ fusion allowed."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", SYNTHETIC)
def test_exported_qdq_model_agrees_with_simulation(tmp_path, name):
    model, enc = calibrated(name)
    feeds = eval_feeds(name)
    simulated = run(make_session(simulate(model, enc, [feeds]).qdq_model, simulate=True), feeds)
    result = export(model, enc)
    path = tmp_path / f"{name}_qdq.onnx"
    save_model(result.qdq_model, path)
    deployed = run(_plain_session(path), feeds)
    assert deployed.shape == simulated.shape
    assert db(simulated, deployed) >= 30.0 or top1(simulated, deployed) >= 0.99
    if not integer_kernels_saturate():  # x86 without VNNI computes u8 x s8 with int16 saturation
        assert db(run(make_session(model), feeds), deployed) >= 25.0  # and it is still the model
    # weights are stored as integers: no float copy of a quantized weight is left
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    for pname, penc in enc.params.items():
        assert pname not in inits
        assert inits[f"{pname}_quantized"].data_type in (TensorProto.INT8, TensorProto.UINT8)
    assert result.float_model is model and result.encodings is enc


def test_export_quantizes_conv_bias_to_int32(conv_model):
    path, x, w, b = conv_model
    model = load_model(path)
    enc = calibrate(model, build_plan(model, load_config("w8a8-per-channel")), [{"x": x}],
                    CalibrateOptions(scheme="minmax")).encodings
    qdq = export(model, enc).qdq_model
    conv = next(n for n in qdq.graph if n.op_type == "Conv")
    bias_dq = conv.inputs[2].producer()
    assert bias_dq is not None and bias_dq.op_type == "DequantizeLinear"
    q = bias_dq.inputs[0].const_value.numpy()
    assert q.dtype == np.int32
    s = bias_dq.inputs[1].const_value.numpy()
    np.testing.assert_array_equal(s, (enc.activations["x"].scale[0] * enc.params["w"].scale).astype(np.float32))
    np.testing.assert_array_equal(q, np.round(b.astype(np.float64) / s).astype(np.int32))


def test_ppocr_cls_quantized_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("qtool_test_ocr_data", SAMPLES / "ocr_data.py")
    ocr_data = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ocr_data
    spec.loader.exec_module(ocr_data)
    calib, _ = ocr_data.load_split("cls", "calib")
    evalx, labels = ocr_data.load_split("cls", "eval")
    calib, evalx, labels = calib[:32], evalx[:64], labels[:64]
    model = load_model(SAMPLES / "ppocr_cls.onnx")  # opset 11: converted to 13 for QDQ
    plan = build_plan(model, load_config("w8a8-per-channel"))
    enc = calibrate(model, plan, [{"x": calib}], CalibrateOptions(scheme="minmax", batch_size=32)).encodings
    sim = simulate(model, enc, [{"x": evalx}], labels=labels)
    (row,) = sim.report.values()
    assert row["samples"] == 64
    assert row["sqnr_db"] >= 20.0
    assert row["top1_agreement"] >= 0.95
    assert row["float_accuracy"] >= 0.95 and row["quant_accuracy"] >= row["float_accuracy"] - 0.05
    assert sim.qdq_model.opset_imports[""] >= 13
    path = tmp_path / "cls_qdq.onnx"
    save_model(export(model, enc).qdq_model, path)
    deployed = run(_plain_session(path), {"x": evalx})
    simulated = run(make_session(sim.qdq_model, simulate=True), {"x": evalx})
    assert top1(simulated, deployed) >= 0.98


def test_opset6_relu6_model_calibrates_and_simulates(tmp_path):
    name = "relu6_attr_opset6"
    model, enc = calibrated(name)
    assert model.opset_imports[""] == 6
    assert "clip_1" in enc.activations and "conv_1" not in enc.activations  # Conv+Clip supergroup
    feeds = eval_feeds(name)
    sim = simulate(model, enc, [feeds])
    (row,) = sim.report.values()
    assert row["sqnr_db"] >= 30.0
    assert sim.qdq_model.opset_imports[""] >= 13
    clip = next(n for n in sim.qdq_model.graph if n.op_type == "Clip")
    assert len(clip.inputs) == 3 and not clip.attributes  # attributes became inputs (Clip-11+)
    assert clip.outputs[0].name == "clip_1"  # names survive the conversion: encodings still apply
    assert any(n.op_type == "QuantizeLinear" and n.inputs[0] is clip.outputs[0] for n in sim.qdq_model.graph)
    path = tmp_path / "relu6_qdq.onnx"
    save_model(export(model, enc).qdq_model, path)
    # x86 without VNNI: onnxruntime's u8 x s8 kernels saturate at int16 (measured 28.5 dB there)
    floor = 20.0 if integer_kernels_saturate() else 30.0
    assert db(run(make_session(sim.qdq_model, simulate=True), feeds), run(_plain_session(path), feeds)) >= floor


# ----------------------------------------------------------------------------- CLI pipeline


def test_frozen_encodings_survive_calibrate_and_export(tmp_path):
    model_path = SAMPLES / "conv_bn_relu.onnx"
    model = sample("conv_bn_relu")
    data0 = write_npz(tmp_path / "d0.npz", random_feeds(model, 8, seed=0))
    data1 = write_npz(tmp_path / "d1.npz", random_feeds(model, 8, seed=5))  # other data: others change
    common = ["--config", "w8a8-per-channel", "--scheme", "minmax"]
    invoke(["calibrate", model_path, "--data", data0, *common, "-o", tmp_path / "a"])
    doc = json.loads((tmp_path / "a.encodings.json").read_text())
    acts = {e["name"]: e for e in doc["activation_encodings"]}
    params = {e["name"]: e for e in doc["param_encodings"]}
    as_f32 = lambda v: float(np.float32(v))  # noqa: E731  (files hold float32 values)
    frozen_act = {**acts["relu_1"], "scale": [as_f32(acts["relu_1"]["scale"][0] * 2)], "frozen": True}
    frozen_param = {**params["conv.weight_1"], "scale": [as_f32(s * 1.5) for s in params["conv.weight_1"]["scale"]],
                    "frozen": True}
    assert frozen_param["enc_type"] == "PER_CHANNEL"
    acts["relu_1"], params["conv.weight_1"] = frozen_act, frozen_param
    doc["activation_encodings"], doc["param_encodings"] = list(acts.values()), list(params.values())
    edited = tmp_path / "edited.encodings.json"
    edited.write_text(json.dumps(doc))

    out = invoke(["calibrate", model_path, "--data", data1, *common, "--encodings", edited, "-o", tmp_path / "b",
                  "--json"])
    assert json.loads(out.stdout)["kept_frozen"] == ["conv.weight_1", "relu_1"]
    b_doc = json.loads((tmp_path / "b.encodings.json").read_text())
    b_acts = {e["name"]: e for e in b_doc["activation_encodings"]}
    b_params = {e["name"]: e for e in b_doc["param_encodings"]}
    assert b_acts["relu_1"] == frozen_act and b_params["conv.weight_1"] == frozen_param
    assert b_acts["input"] != acts["input"]  # recalibrated on the other data
    assert sum(1 for e in b_doc["activation_encodings"] + b_doc["param_encodings"] if e.get("frozen")) == 2

    invoke(["export", tmp_path / "b.onnx", "-o", tmp_path / "deploy", "--prefix", "net"])
    e_doc = json.loads((tmp_path / "deploy" / "net.encodings").read_text())
    assert {e["name"]: e for e in e_doc["activation_encodings"]}["relu_1"] == frozen_act
    assert {e["name"]: e for e in e_doc["param_encodings"]}["conv.weight_1"] == frozen_param
    assert e_doc["activation_encodings"] == b_doc["activation_encodings"]
    assert e_doc["param_encodings"] == b_doc["param_encodings"]
    qdq = onnx.load(str(tmp_path / "deploy" / "net_qdq.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    np.testing.assert_array_equal(inits["relu_1_scale"], np.float32(frozen_act["scale"][0]))
    np.testing.assert_array_equal(inits["conv.weight_1_scale"], np.float32(frozen_param["scale"]))
    assert (tmp_path / "deploy" / "net.onnx").read_bytes() == model_path.read_bytes()
    feeds = random_feeds(model, 4, seed=9)
    assert run(_plain_session(tmp_path / "deploy" / "net_qdq.onnx"), feeds).shape == (4, 10)


def test_runs_are_byte_for_byte_reproducible(tmp_path):
    model_path = SAMPLES / "two_inputs.onnx"
    data = write_npz(tmp_path / "d.npz", random_feeds(sample("two_inputs"), 16, seed=0))
    for run_id in ("1", "2"):
        invoke(["calibrate", model_path, "--data", data, "--config", "w8a8-per-channel", "--scheme", "sqnr",
                "--batch-size", "5", "-o", tmp_path / f"c{run_id}"])
        invoke(["simulate", tmp_path / f"c{run_id}.onnx", "--data", data, "-o", tmp_path / f"s{run_id}.onnx"])
        invoke(["export", tmp_path / f"c{run_id}.onnx", "-o", tmp_path / f"e{run_id}"])
    for first, second in [("c1.onnx", "c2.onnx"), ("c1.encodings.json", "c2.encodings.json"),
                          ("s1.onnx", "s2.onnx"), ("e1/model.onnx", "e2/model.onnx"),
                          ("e1/model.encodings", "e2/model.encodings"), ("e1/model_qdq.onnx", "e2/model_qdq.onnx")]:
        assert (tmp_path / first).read_bytes() == (tmp_path / second).read_bytes(), first
    assert (tmp_path / "c1.onnx").read_bytes() == model_path.read_bytes()


def test_minmax_encodings_do_not_depend_on_batching(tmp_path):
    model = sample("mobilenet_block")
    feeds = random_feeds(model, 12, seed=2)
    plan = build_plan(model, load_config("w8a8-per-channel"))
    whole = calibrate(model, plan, [feeds], CalibrateOptions(scheme="minmax")).encodings
    split = [{k: v[i:i + 5] for k, v in feeds.items()} for i in range(0, 12, 5)]
    batched = calibrate(model, plan, split, CalibrateOptions(scheme="minmax")).encodings
    for name, enc in whole.all().items():
        assert batched.all()[name].same_as(enc), name


def test_minmax_calibration_ignores_single_non_finite_values():
    model = sample("conv_bn_relu")
    feeds = random_feeds(model, 4, seed=6)
    feeds["input"][0, 0, 0, 0] = np.inf
    plan = build_plan(model, load_config("w8a8-per-channel"))
    enc = calibrate(model, plan, [feeds], CalibrateOptions(scheme="minmax")).encodings
    taps = ["relu_1", "relu_3"]
    outs = make_session(with_taps(model, taps)).run(taps, feeds)
    for name, values in zip(taps, outs):
        finite = values[np.isfinite(values)]
        assert enc.activations[name].same_as(compute_encoding(finite.min(), finite.max(), plan.activations[name].spec))
