"""The segmented runner gives each stop node's input exactly as a whole pass of the model does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from qtool.ir.graph import load_model, set_initializer
from qtool.runtime.segmented import SegmentedRunner
from qtool.runtime.sessions import make_session, with_taps

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _layers(model: ir.Model) -> list[ir.Node]:
    layers = [n for n in model.graph if n.op_type in ("Conv", "Gemm", "MatMul")]
    for i, node in enumerate(layers):
        node.name = node.name or f"layer{i}"
    return layers


def _whole_pass(model: ir.Model, names: list[str], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    graph_inputs = {v.name for v in model.graph.inputs}
    inner = [n for n in names if n not in graph_inputs]
    session = make_session(with_taps(model, inner), simulate=True)
    return {**batch, **dict(zip(inner, session.run(inner, batch)))}


@pytest.mark.parametrize("sample,ram", [("mobilenet_block", 2 << 30), ("mobilenet_block", 0),
                                        ("attention_block", 2 << 30), ("two_inputs", 0)])
def test_each_layer_input_matches_a_whole_pass_after_every_weight_change(sample, ram):
    model = load_model(SAMPLES / f"{sample}.onnx")
    rng = np.random.default_rng(0)
    shapes = {v.name: [d if isinstance(d, int) else 3 for d in v.shape] for v in model.graph.inputs}
    batches = [{n: rng.normal(size=[4, *s[1:]]).astype(np.float32) for n, s in shapes.items()} for _ in range(3)]
    runner = SegmentedRunner(batches, ram_bytes=ram)
    try:
        for layer in _layers(model):
            got = dict(runner.advance(model, layer.name, layer.inputs[0].name))
            for index, batch in enumerate(batches):
                want = _whole_pass(model, [layer.inputs[0].name], batch)[layer.inputs[0].name]
                np.testing.assert_allclose(got[index], want, rtol=1e-5, atol=1e-6)
            # change this layer's weights, as AdaRound does: every later input must see it
            weight = layer.inputs[1]
            if weight.const_value is not None:
                set_initializer(model, weight, weight.const_value.numpy() * 1.5)
        if ram == 0:
            assert runner.store._dir is not None  # the spilled path was taken
    finally:
        runner.close()


def test_a_stop_before_the_nodes_already_run_is_refused():
    model = load_model(SAMPLES / "mobilenet_block.onnx")
    layers = _layers(model)
    runner = SegmentedRunner([{"input": np.zeros((1, 3, 32, 32), np.float32)}])
    list(runner.advance(model, layers[2].name, layers[2].inputs[0].name))
    with pytest.raises(ValueError, match="not after"):
        list(runner.advance(model, layers[1].name, layers[1].inputs[0].name))
    runner.close()


@pytest.mark.parametrize("param_bw", [4, 12])
def test_requantized_param_equals_a_rebuilt_qdq_model(param_bw):
    """AdaRound updates one weight in the QDQ model instead of rebuilding it: same model bytes."""
    from qtool.ir.graph import model_bytes
    from qtool.ir.qdq import build_qdq_model, requantize_param
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plan.config import load_config
    from qtool.steps.calibrate import calibrate

    model = load_model(SAMPLES / "mobilenet_block.onnx")
    plan = build_plan(model, load_config("default"), PlanOptions(param_bw=param_bw, per_channel=True))
    data = [{"input": np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)}]
    encodings = calibrate(model, plan, data).encodings
    quant = build_qdq_model(model, encodings)
    layer = _layers(model)[3]
    new_weight = layer.inputs[1].const_value.numpy() * 0.9
    set_initializer(model, layer.inputs[1], new_weight)
    node = next(n for n in quant.graph if n.name == layer.name)
    before = model_bytes(quant)
    requantize_param(quant, node, 1, new_weight, encodings.params[layer.inputs[1].name])
    assert model_bytes(quant) != before
    assert model_bytes(quant) == model_bytes(build_qdq_model(model, encodings))
