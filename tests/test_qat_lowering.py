"""The torch lowering of qtool qat (qtool/train) computes what `qtool simulate` computes.

* Every committed sample model and the bundled PP-OCR classifier (566 nodes): the torch forward
  equals the QDQ model in onnxruntime within 1e-4 relative (they come out bit-identical).
* Deep real models (build/models, fetched; QTOOL_SLOW_TESTS=1): end to end, float32 sums in a
  different order flip a few roundings and the flips grow through 50+ quantized layers, so they
  are compared op by op: each node computed in torch from onnxruntime's values of its inputs,
  within 1e-4 relative (docs/qat.md has the numbers).
* The quantizer alone, bit for bit against QuantizeLinear/DequantizeLinear (ties included).
* Straight-through gradients reach the weights, and with range learning the scales and offsets.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch", reason="qtool[train] (torch) is not installed: QAT is an optional extra")

from qat_helpers import (ROOT, built_paths, calibrated, float_model, op_by_op, qdq_outputs,  # noqa: E402
                         random_feeds, relative_error, sample_paths)

from qtool.encodings.encoding_set import EncodingSet  # noqa: E402
from qtool.errors import QtoolError  # noqa: E402
from qtool.quant import Encoding  # noqa: E402
from qtool.train.fake_quant import FakeQuant  # noqa: E402
from qtool.train.lower import LoweredModel  # noqa: E402

SLOW = pytest.mark.skipif(os.environ.get("QTOOL_SLOW_TESTS") != "1",
                          reason="real models op by op (about 2 minutes): set QTOOL_SLOW_TESTS=1")
CLS = ROOT / "sample_models" / "ppocr_cls.onnx"


def _torch_outputs(lowered, feeds):
    with torch.no_grad():
        return {k: v.numpy() for k, v in lowered({k: torch.from_numpy(v) for k, v in feeds.items()}).items()}


@pytest.mark.parametrize("path", sample_paths(), ids=lambda p: p.stem)
def test_torch_forward_equals_simulate(path):
    """Per-tensor W8A8 (the default config): the outputs agree within 1e-4 (here: bit for bit)."""
    model = float_model(path)
    feeds = random_feeds(model, path)
    graph, encodings = calibrated(path, feeds)
    expected = qdq_outputs(graph, encodings, feeds)
    actual = _torch_outputs(LoweredModel(graph, encodings), feeds)
    for name, value in actual.items():
        assert relative_error(value, expected[name]) <= 1e-4, (path.name, name)
    floats = _torch_outputs(LoweredModel(graph, None), feeds)
    assert any(not np.array_equal(floats[n], actual[n]) for n in actual)  # the quantizers did something


@pytest.mark.parametrize("name", ["mobilenet_block", "attention_block"])
def test_per_channel_op_by_op(name):
    """Per-channel W8A8: a sum in another order can flip one rounding on the way (mobilenet_block:
    one logit one step off), so each node is compared from onnxruntime's values of its inputs."""
    path = ROOT / "sample_models" / f"{name}.onnx"
    feeds = random_feeds(float_model(path), path)
    graph, encodings = calibrated(path, feeds, "w8a8-per-channel")
    reference = qdq_outputs(graph, encodings, feeds, every=True)
    errors = op_by_op(LoweredModel(graph, encodings), feeds, reference)
    assert len(errors) > 0.5 * len(list(graph.graph))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, (worst, errors[worst])


@SLOW
@pytest.mark.parametrize("path", built_paths(), ids=lambda p: p.stem)
def test_real_models_op_by_op(path):
    model = float_model(path)
    feeds = random_feeds(model, path)
    graph, encodings = calibrated(path, feeds)
    reference = qdq_outputs(graph, encodings, feeds, every=True)
    errors = op_by_op(LoweredModel(graph, encodings), feeds, reference)
    floats = [n for n in graph.graph if n.outputs[0].dtype == ir.DataType.FLOAT and n.outputs[0].name in reference]
    assert len(errors) >= len(floats)  # every float tensor compared (shape arithmetic is int64)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, (worst, errors[worst])


def _one_quantizer_model(tmp_path: Path, weight: np.ndarray):
    """y = x * W: with x = 1 the output is the quantized weight; `x` itself gets an activation quantizer."""
    from onnx import TensorProto, helper, numpy_helper

    from qtool.ir.graph import load_model

    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"], name="mul")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(weight.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(weight.shape))],
                              [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "one.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                     .SerializeToString())
    return load_model(path)


@pytest.mark.parametrize("enc", [
    Encoding(8, [0.05], [-100]), Encoding(8, [0.05], [-128], symmetric=True), Encoding(8, [0.05], [-127], symmetric=True),
    Encoding(16, [0.001], [-30000]), Encoding(4, [0.5], [-8], symmetric=True), Encoding(16, dtype="float"),
], ids=["uint8", "int8", "strict", "uint16", "int4-fake", "fp16"])
def test_quantizer_is_bit_identical_to_onnxruntime(tmp_path, enc):
    rng = np.random.default_rng(1)
    steps = 0.05 if enc.is_float else float(enc.scale[0])
    ties = (np.arange(-300, 300, dtype=np.float32) + 0.5) * np.float32(steps)  # half-way points: round to even
    x = np.concatenate([ties, rng.standard_normal(600).astype(np.float32) * 10]).reshape(4, 300)
    graph = _one_quantizer_model(tmp_path, np.ones_like(x))
    encodings = EncodingSet(activations={"x": enc})
    expected = qdq_outputs(graph, encodings, {"x": x})["y"]
    actual = _torch_outputs(LoweredModel(graph, encodings), {"x": x})["y"]
    assert np.array_equal(actual, expected)


@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_weight_is_bit_identical(tmp_path, axis):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((6, 5)).astype(np.float32)
    scale = np.abs(weight).max(axis=1 - axis) / 7
    graph = _one_quantizer_model(tmp_path, weight)
    encodings = EncodingSet(params={"w": Encoding(4, scale, np.full(scale.shape, -8), True, axis=axis)})
    ones = {"x": np.ones_like(weight)}
    expected = qdq_outputs(graph, encodings, ones)["y"]
    assert np.array_equal(_torch_outputs(LoweredModel(graph, encodings), ones)["y"], expected)
    assert len(np.unique(expected)) <= 16 * 6


def _mobilenet():
    path = ROOT / "sample_models" / "mobilenet_block.onnx"
    model = float_model(path)
    feeds = random_feeds(model, path)
    return calibrated(path, feeds), {k: torch.from_numpy(v) for k, v in feeds.items()}


@pytest.mark.parametrize("learn", [False, True], ids=["fixed-ranges", "range-learning"])
def test_straight_through_gradients(learn):
    (graph, encodings), feeds = _mobilenet()
    lowered = LoweredModel(graph, encodings, learn_ranges=learn)
    loss = sum((out ** 2).mean() for out in lowered(feeds).values())
    loss.backward()
    weights = lowered.named_initializers()
    assert set(encodings.params) <= set(weights)
    for name, weight in weights.items():
        assert weight.grad is not None and torch.isfinite(weight.grad).all(), name
        assert weight.grad.abs().sum() > 0, name
    learned = [q for q in lowered.quantizers.values() if q.learn]
    assert bool(learned) == learn
    for quantizer in learned:
        assert torch.isfinite(quantizer.log_scale.grad).all(), quantizer.tensor_name
        if isinstance(quantizer.offset, torch.nn.Parameter):
            assert torch.isfinite(quantizer.offset.grad).all(), quantizer.tensor_name
    # a tensor already on its grid (Flatten after a quantized pool, same encoding) has none
    moved = [q.tensor_name for q in learned if q.log_scale.grad.abs().sum() > 0]
    assert len(moved) >= len(learned) - 2
    offsets = [q.offset.grad for q in learned if isinstance(q.offset, torch.nn.Parameter)]
    # LSQ+: an offset moves only values at the grid's ends (inside, -o and +o cancel)
    assert (not learn) or any(bool(g.abs().sum() > 0) for g in offsets)


def test_encodings_round_trip_through_the_quantizers():
    (graph, encodings), _ = _mobilenet()
    lowered = LoweredModel(graph, encodings, learn_ranges=True)
    for quantizer in lowered.quantizers.values():
        assert quantizer.encoding().same_as(encodings.all()[quantizer.tensor_name])


def test_unsupported_ops_are_named_in_one_error(tmp_path):
    from onnx import TensorProto, helper

    from qtool.ir.graph import load_model

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="ok"),
             helper.make_node("Einsum", ["r", "r"], ["e"], equation="ij,ij->ij", name="einsum_1"),
             helper.make_node("Mish", ["e"], ["y"], name="mish_1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    path = tmp_path / "odd.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
                     .SerializeToString())
    with pytest.raises(QtoolError) as err:
        LoweredModel(load_model(path), None, source=str(path))
    message = str(err.value)
    assert "Einsum (node 'einsum_1')" in message and "Mish (node 'mish_1')" in message and "\n" not in message
    assert str(path) in message


def test_import_qtool_and_the_cli_load_no_torch():
    code = ("import sys, qtool; from qtool.cli import cli; from qtool.commands.registry import COMMANDS; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("shape,ceil", [((1, 2, 1, 5), 0), ((1, 2, 3, 7), 0), ((1, 2, 3, 7), 1)])
def test_max_pool_sizes_as_onnxruntime(tmp_path, shape, ceil):
    """onnxruntime sizes floor-mode pooling with C++'s truncating division: a row shorter than
    the kernel still gives one window (torch refuses it; the PP-OCR classifier on small inputs)."""
    from onnx import TensorProto, helper

    from qtool.ir.graph import load_model
    from qtool.runtime.sessions import make_session

    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=ceil)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "pool.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                     .SerializeToString())
    model = load_model(path)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = make_session(model, simulate=True).run(["y"], {"x": x})[0]
    assert np.array_equal(_torch_outputs(LoweredModel(model, None), {"x": x})["y"], expected)


def test_a_learned_scale_moves_by_a_relative_step_whatever_its_size():
    """Scales are learned as log(s / s0): one Adam step at rate r multiplies every scale by about
    exp(+-r), so a calibrated scale of 1e-5 changes by the same fraction as one of 1 (on s itself
    the step would be about r in absolute terms: 1e-5 - 1e-3 < 0)."""
    rate = 1e-3
    x = torch.linspace(-3, 3, 257)
    for initial in (1e-5, 1e-2, 1.0):
        quantizer = FakeQuant(Encoding(8, [initial], [-128], symmetric=True), "t", learn=True)
        assert quantizer(x * initial).equal(FakeQuant(Encoding(8, [initial], [-128], symmetric=True), "t")(x * initial))
        optimizer = torch.optim.Adam(quantizer.parameters(), lr=rate)
        (((quantizer(x * initial) - x * initial * 1.3) / initial) ** 2).sum().backward()  # a scale-free loss
        optimizer.step()
        ratio = quantizer.current_scale().item() / initial
        assert rate * 0.99 <= abs(math.log(ratio)) <= rate * 1.01, (initial, ratio)
        assert quantizer.encoding().scale[0] == np.float32(quantizer.current_scale().item())
