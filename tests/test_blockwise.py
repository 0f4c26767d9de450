"""Block-wise weight math (qtool.quant.blockwise, qtool.quant.gptq) against hand-computed values,
and onnxruntime's DequantizeLinear-with-block_size and MatMulNBits against the numpy reference."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.encodings.encoding_set import EncodingSet
from qtool.encodings.read import from_json_dict
from qtool.encodings.write import to_json_dict
from qtool.errors import QtoolError
from qtool.ir.graph import model_to_proto
from qtool.ir.matmulnbits import matmulnbits_model
from qtool.ir.qdq import build_qdq_model
from qtool.quant.blockwise import (block_ranges, encode_blocks, expand, lpbq_encoding, matmulnbits_arrays,
                                   pack_low_first, quantize_blocks, quantize_dequantize_blocks, stored_integers)
from qtool.quant.gptq import gptq_round
from qtool.runtime.sessions import make_session

W = np.array([[0.7, -1.4, 0.1], [0.35, 0.2, -0.3], [-0.7, 0.6, 0.05], [0.1, -0.1, 0.3], [2.1, 0.0, -0.6]], np.float32)


def test_block_scales_offsets_and_rounding_by_hand():
    enc = encode_blocks(W, axis=0, block_size=2, bw=4, symmetric=True)  # blocks rows {0,1}, {2,3}, {4}
    assert enc.scale.shape == (3, 3) and enc.n_blocks == 3
    absmax = np.array([[0.7, 1.4, 0.3], [0.7, 0.6, 0.3], [2.1, 1e-5, 0.6]])
    np.testing.assert_allclose(enc.scale, absmax / 7, rtol=1e-6)
    assert np.all(enc.offset == -8) and enc.signed
    ints = stored_integers(W, enc)
    # row 1, column 0: 0.35 / 0.1 = 3.5 -> 4 (half to even); column 2: -0.3 / (0.3 / 7) = -7
    assert ints[1, 0] == 4 and ints[1, 2] == -7 and ints[0, 1] == -7 and ints[4, 0] == 7
    np.testing.assert_allclose(quantize_dequantize_blocks(W, enc), ints * expand(enc.scale, 0, 2, 5), rtol=1e-6)
    asym = encode_blocks(W, axis=0, block_size=2, bw=4, symmetric=False)
    lo, hi = block_ranges(W, 0, 2)
    np.testing.assert_allclose(asym.scale, np.maximum(np.maximum(hi, 0) - np.minimum(lo, 0), 1e-5) / 15, rtol=1e-5)
    grid = quantize_blocks(W, asym)
    assert grid.min() >= 0 and grid.max() <= 15 and not asym.signed


def test_lpbq_scales_are_integers_under_a_channel_scale():
    enc = encode_blocks(W, axis=0, block_size=2, bw=4, symmetric=True, lpbq=True)
    assert enc.lpbq and enc.channel_scale.shape == (1, 3) and enc.int_scale.shape == (3, 3)
    np.testing.assert_allclose(enc.channel_scale[0], np.array([2.1, 1.4, 0.6]) / 7 / 16, rtol=1e-6)
    assert enc.int_scale.min() >= 1 and enc.int_scale.max() == 16
    np.testing.assert_array_equal(enc.scale, (enc.int_scale * enc.channel_scale).astype(np.float32))
    with pytest.raises(ValueError, match="symmetric"):
        encode_blocks(W, 0, 2, 4, symmetric=False, lpbq=True)


def test_packing_is_onnx_int4_order_and_matmulnbits_layout():
    codes = np.array([[1, 2, 3, 4, 5]], np.uint8)
    assert pack_low_first(codes, 4).tolist() == [[0x21, 0x43, 0x05]]
    proto = numpy_helper.from_array(np.array([1, 2, 3, 4, 5], dtype=__import__("ml_dtypes").uint4))
    assert proto.raw_data == pack_low_first(codes, 4).tobytes()
    enc = encode_blocks(W[:4], axis=0, block_size=2, bw=4)
    b, scales, zps = matmulnbits_arrays(W[:4], enc)
    assert b.shape == (3, 2, 1) and scales.shape == (6,) and zps is None
    grid = quantize_blocks(W[:4], enc).astype(np.uint8)  # column n, block j: codes of rows 2j, 2j+1
    assert b[1, 1, 0] == grid[2, 1] | (grid[3, 1] << 4)
    assert scales[1 * 2 + 1] == enc.scale[1, 1]


def _matmul_model(weights: np.ndarray, *, gemm: bool = False) -> ir.Model:
    k, n = weights.shape
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="layer") if gemm else \
        helper.make_node("MatMul", ["x", "w"], ["y"], name="layer")
    w = weights.T.copy() if gemm else weights
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [numpy_helper.from_array(w, "w")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return make_session(model, simulate=True).run(None, {"x": x})[0]


@pytest.mark.parametrize("bw, symmetric, k", [(4, True, 64), (4, False, 64), (8, True, 64), (3, True, 40), (4, True, 40)])
def test_onnxruntime_dequantize_with_block_size_equals_numpy(bw, symmetric, k):
    rng = np.random.default_rng(bw + k)
    weights = rng.standard_normal((k, 24)).astype(np.float32)
    x = rng.standard_normal((5, k)).astype(np.float32)
    enc = encode_blocks(weights, 0, 32, bw, symmetric)  # k = 40: a last block of 8 (the spec's padding)
    qdq = build_qdq_model(_matmul_model(weights), EncodingSet(params={"w": enc}))
    proto = model_to_proto(qdq)
    stored = next(t for t in proto.graph.initializer if t.name == "w_quantized")
    assert stored.data_type == (TensorProto.INT8 if bw > 4 else TensorProto.INT4 if symmetric else TensorProto.UINT4)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 21
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": 32}
    np.testing.assert_allclose(_run(qdq, x), x @ quantize_dequantize_blocks(weights, enc), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bw, symmetric, gemm, k", [(4, True, False, 96), (4, False, False, 96), (8, True, False, 96),
                                                    (4, True, True, 96), (4, False, False, 80), (4, True, True, 80)])
def test_matmulnbits_equals_the_dequantize_form(bw, symmetric, gemm, k):
    rng = np.random.default_rng(7)
    weights = rng.standard_normal((k, 40)).astype(np.float32)  # k = 80: a last block of 16 (padded)
    x = rng.standard_normal((6, k)).astype(np.float32)
    enc = encode_blocks(weights.T.copy() if gemm else weights, 1 if gemm else 0, 32, bw, symmetric)
    model = _matmul_model(weights, gemm=gemm)
    dq = build_qdq_model(model, EncodingSet(params={"w": enc}))
    nbits, skipped = matmulnbits_model(model, EncodingSet(params={"w": enc}))
    assert [n.op_type for n in nbits.graph] == ["MatMulNBits"] and not skipped
    out = make_session(nbits).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, _run(dq, x), rtol=1e-5, atol=1e-5)


def test_matmulnbits_refuses_block_sizes_it_cannot_run():
    weights = np.ones((48, 8), np.float32)
    enc = encode_blocks(weights, 0, 24, 4)
    with pytest.raises(QtoolError, match="power of two"):
        matmulnbits_model(_matmul_model(weights), EncodingSet(params={"w": enc}))


@pytest.mark.parametrize("lpbq, symmetric", [(False, True), (False, False), (True, True)])
def test_2_0_0_round_trip_and_aimet_layout(lpbq, symmetric):
    enc = encode_blocks(W, 0, 2, 4, symmetric, lpbq=lpbq).with_frozen(lpbq)
    doc = json.loads(json.dumps(to_json_dict(EncodingSet(params={"w": enc}), "2.0.0")))
    entry = doc["encodings"][0]
    assert entry["output_dtype"] == ("int4" if symmetric else "uint4") and entry["axis"] == 0
    assert entry["block_size"] == 2
    if lpbq:
        assert set(entry) >= {"per_block_int_scale", "per_channel_float_scale"} and "y_scale" not in entry
    else:
        assert np.shape(entry["y_scale"]) == (3, 3) and ("y_zero_point" in entry) == (not symmetric)
    back = from_json_dict(doc, param_names={"w"}).params["w"]
    assert back.same_as(enc)


def test_1_0_0_and_0_6_1_refuse_blocks_and_bad_entries_are_one_line():
    enc_set = EncodingSet(params={"w": encode_blocks(W, 0, 2, 4)})
    for version in ("1.0.0", "0.6.1"):
        with pytest.raises(QtoolError, match="2.0.0 format only") as info:
            to_json_dict(enc_set, version)
        assert "--encoding-version 2.0.0" in str(info.value) and "\n" not in str(info.value)
    doc = to_json_dict(enc_set, "2.0.0")
    doc["encodings"][0]["y_scale"][0] = [1.0]  # ragged
    with pytest.raises(QtoolError, match="rectangular"):
        from_json_dict(doc, source="e.json")
    doc["encodings"][0].pop("y_scale")
    doc["encodings"][0]["block_size"] = 0
    with pytest.raises(QtoolError, match="'block_size' must be a positive integer"):
        from_json_dict(doc, source="e.json")


def test_gptq_lowers_the_layer_output_error():
    rng = np.random.default_rng(3)
    k, n = 64, 24
    x = (rng.standard_normal((512, k)) @ (rng.standard_normal((k, k)) / 8 + np.eye(k))) * np.geomspace(0.2, 4, k)
    weights = (rng.standard_normal((k, n)) / 8).astype(np.float32)
    enc = encode_blocks(weights, 0, 16, 4)
    nearest = quantize_dequantize_blocks(weights, enc)
    scale, offset = expand(enc.scale, 0, 16, k), expand(enc.offset.astype(np.float64), 0, 16, k)
    rounded = gptq_round(weights.T, scale.T, offset.T, enc.qmax, x.T @ x).T.astype(np.float32)
    np.testing.assert_allclose(quantize_dequantize_blocks(rounded, enc), rounded, atol=1e-6)  # on the grid
    error = lambda q: np.linalg.norm(x @ (q - weights)) / np.linalg.norm(x @ weights)  # noqa: E731
    assert error(rounded) < 0.8 * error(nearest)


def test_lpbq_encoding_checks_its_shapes():
    with pytest.raises(ValueError, match="block axis"):
        lpbq_encoding(4, np.ones((2, 3)), np.ones((1, 3)), 2, 32)
