"""Sessions take a small model's weights as the arrays in memory (qtool.ir.tensor_files.shared_weights).

The serialised model handed to onnxruntime then holds no weight bytes; the session must compute
exactly what a session made from the whole protobuf computes (float and QDQ models, simulation
and plain settings), and keep working after the caller drops the model.
"""

from __future__ import annotations

import gc

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.graph import model_from_proto
from qtool.ir.qdq import build_qdq_model
from qtool.ir.tensor_files import IN_MEMORY, inline_bytes, shared_weights
from qtool.quant.encoding import QuantSpec, compute_encoding
from qtool.runtime.sessions import make_session
from small_model import tiny_model


@pytest.fixture
def model(tmp_path) -> ir.Model:
    return model_from_proto(tiny_model(tmp_path / "m.onnx", external=False), "tiny")


def _feeds() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}


def _inline_session(model: ir.Model, simulate: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if simulate:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(inline_bytes(model), options, providers=["CPUExecutionProvider"])


def test_the_serialised_model_refers_to_the_arrays_it_does_not_hold(model):
    serialised, arrays = shared_weights(model)
    weights = {v.name: v.const_value for v in model.graph.initializers.values()}
    big = {name for name, t in weights.items() if t.nbytes >= 1024}
    assert set(arrays) == big and big  # w2 (16x8x3x3 floats), at least
    assert len(serialised) < len(inline_bytes(model)) - sum(weights[n].nbytes for n in big) + 1024
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, weights[name].numpy())
    stored = {t.name: t for t in onnx.load_from_string(serialised).graph.initializer}
    assert all(stored[n].external_data[0].value == IN_MEMORY for n in big)


@pytest.mark.parametrize("simulate", [False, True])
def test_a_session_on_shared_weights_computes_what_the_protobuf_session_does(model, simulate):
    enc = {"c1": compute_encoding(-2.0, 3.0, QuantSpec()), "r2": compute_encoding(0.0, 4.0, QuantSpec())}
    params = {"w2": compute_encoding(-1.0, 1.0, QuantSpec(symmetric=True))}
    qdq = build_qdq_model(model, EncodingSet(activations=enc, params=params))
    for m in (model, qdq):
        session = make_session(m, simulate=simulate)
        assert session.weights  # the large weights went in as arrays
        ours = session.run(None, _feeds())
        theirs = _inline_session(m, simulate).run(None, _feeds())
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)


def test_the_session_outlives_the_model_it_was_made_from(model):
    expected = _inline_session(model, False).run(None, _feeds())
    session = make_session(model)
    del model
    gc.collect()
    for _ in range(3):  # reused memory would show as changed outputs
        np.testing.assert_array_equal(session.run(None, _feeds())[0], expected[0])
        _ = [np.full(1 << 16, 7.0, np.float32) for _ in range(64)]


def test_simulate_makes_its_float_session_from_a_copy(model, monkeypatch):
    """simulate builds the QDQ model from `model` in one thread while the float session is made in
    another; serialising puts stand-ins in the model it is given, so that must be a copy."""
    import qtool.steps.simulate as step

    monkeypatch.setenv("QTOOL_CACHE_DIR", "off")
    given = []
    real = step.make_session
    monkeypatch.setattr(step, "make_session", lambda m, **kw: given.append(m) or real(m, **kw))
    before = {v.name: v.const_value for v in model.graph.initializers.values()}
    step.simulate(model, EncodingSet(activations={"c1": compute_encoding(-2.0, 3.0, QuantSpec())}),
                  [_feeds(), _feeds()])
    assert len(given) == 2 and all(m is not model for m in given)
    assert {v.name: v.const_value for v in model.graph.initializers.values()} == before


def test_load_model_checks_and_infers_shapes_on_the_file_s_bytes(tmp_path, monkeypatch):
    """The checker and shape inference get the bytes read from the file, not a proto each would
    serialise again; the model loaded is the one a proto route gives."""
    import onnx.checker
    import onnx.shape_inference

    from qtool.ir.graph import load_model

    path = tmp_path / "m.onnx"
    tiny_model(path, external=False)
    expected = inline_bytes(model_from_proto(onnx.load(path), str(path)))
    seen = []
    for module, name in ((onnx.checker, "check_model"), (onnx.shape_inference, "infer_shapes")):
        real = getattr(module, name)

        def watched(model, *args, _real=real, _name=name, **kwargs):
            seen.append((_name, type(model)))
            return _real(model, *args, **kwargs)

        monkeypatch.setattr(module, name, watched)
    assert inline_bytes(load_model(path)) == expected
    assert seen == [("check_model", bytes), ("infer_shapes", bytes)]


def test_simulate_s_two_sessions_sleep_rather_than_spin(model, monkeypatch):
    """The float reference and the quantized model run at the same time: neither session's idle
    threads may spin (they took the cores from the other's working threads); other sessions keep
    onnxruntime's default."""
    import qtool.steps.simulate as step

    monkeypatch.setenv("QTOOL_CACHE_DIR", "off")  # the float session is made, not read from an earlier test's cache
    made = []
    real = step.make_session
    monkeypatch.setattr(step, "make_session", lambda m, **kw: made.append(real(m, **kw)) or made[-1])
    step.simulate(model, EncodingSet(activations={"c1": compute_encoding(-2.0, 3.0, QuantSpec())}), [_feeds()])
    assert len(made) == 2
    for session in made:
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(Exception):  # not set: onnxruntime spins
        make_session(model).get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
