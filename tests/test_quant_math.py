"""Quantization math (qtool.quant.encoding) against hand-computed values and onnxruntime.

Conventions under test (module docstring, AIMET): unsigned grid {0 .. 2^b - 1}, offset = -zero
point, x_int = clamp(round(x / s) - offset, 0, q_max), x_hat = s * (x_int + offset), min/max are
the dequantized grid ends, ranges widened to contain zero, round half to even in float32.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.quant import (
    Encoding,
    QuantSpec,
    compute_encoding,
    dequantize,
    encode_tensor,
    float_encoding,
    quantize,
    quantize_dequantize,
)
from qtool.quant.encoding import MIN_RANGE

f32 = np.float32


def grid_end(scale: float, k: int) -> np.float32:
    """s * k computed the way the docstring defines min/max (float64 product, float32 result)."""
    return f32(np.float64(f32(scale)) * k)


def half_step_bound(s: float, lo: float, hi: float) -> float:
    """s/2 plus the float32 rounding of x/s and of s*(q+offset) near the range ends."""
    return s / 2 + 2 * float(np.spacing(f32(max(abs(lo), abs(hi)))))


def assert_encoding(enc: Encoding, scale, offset, *, bw: int, qmax: int, symmetric: bool) -> None:
    scale = np.atleast_1d(np.asarray(scale, np.float64)).astype(np.float32)
    offset = np.atleast_1d(offset)
    assert enc.bw == bw
    assert enc.symmetric is symmetric
    assert enc.scale.dtype == np.float32 and enc.offset.dtype == np.int64
    np.testing.assert_array_equal(enc.scale, scale)  # bit for bit
    np.testing.assert_array_equal(enc.offset, offset)
    assert enc.qmax == qmax
    np.testing.assert_array_equal(enc.min, [grid_end(s, o) for s, o in zip(scale, offset)])
    np.testing.assert_array_equal(enc.max, [grid_end(s, qmax + o) for s, o in zip(scale, offset)])


# ----------------------------------------------------------------------------- compute_encoding


def test_asymmetric_8bit_minus1_to_2():
    enc = compute_encoding(-1.0, 2.0, QuantSpec(bw=8))
    assert_encoding(enc, 3 / 255, -85, bw=8, qmax=255, symmetric=False)
    assert enc.axis is None and not enc.per_channel and not enc.strict and not enc.is_float
    assert enc.min[0] == pytest.approx(-1.0, abs=1e-6)
    assert enc.max[0] == pytest.approx(2.0, abs=1e-6)


def test_asymmetric_min_max_are_grid_ends_not_the_input_range():
    # s = 3.5/255; -0.5/s = -36.43 -> offset -36, so the grid runs from -36 s to 219 s
    enc = compute_encoding(-0.5, 3.0, QuantSpec(bw=8))
    s = 3.5 / 255
    assert_encoding(enc, s, -36, bw=8, qmax=255, symmetric=False)
    assert enc.min[0] == pytest.approx(-36 * s, rel=1e-6) and enc.min[0] > -0.5
    assert enc.max[0] == pytest.approx(219 * s, rel=1e-6) and enc.max[0] > 3.0


@pytest.mark.parametrize(
    "lo,hi,scale,offset",
    [
        (1.0, 3.0, 3 / 255, 0),  # all positive: widened down to 0
        (-3.0, -1.0, 3 / 255, -255),  # all negative: widened up to 0
        (0.0, 0.0, MIN_RANGE / 255, 0),  # constant zero: smallest valid range
    ],
)
def test_range_is_widened_to_include_zero(lo, hi, scale, offset):
    enc = compute_encoding(lo, hi, QuantSpec(bw=8))
    assert_encoding(enc, scale, offset, bw=8, qmax=255, symmetric=False)
    assert enc.min[0] <= 0.0 <= enc.max[0]
    assert quantize_dequantize(np.zeros(3, f32), enc).tolist() == [0.0, 0.0, 0.0]


def test_range_widening_gives_min_zero_for_1_to_3():
    enc = compute_encoding(1.0, 3.0, QuantSpec(bw=8))
    assert enc.min[0] == 0.0
    assert enc.max[0] == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize("lo,hi", [(-2.0, 1.0), (-0.5, 2.0), (-2.0, 2.0)])
def test_signed_symmetric_int8(lo, hi):
    enc = compute_encoding(lo, hi, QuantSpec(bw=8, symmetric=True))
    s = 2 / 127
    assert_encoding(enc, s, -128, bw=8, qmax=255, symmetric=True)
    assert not enc.strict
    assert enc.min[0] == pytest.approx(-128 * s, rel=1e-6)
    assert enc.max[0] == pytest.approx(2.0, rel=1e-6)


def test_strict_symmetric_int8():
    spec = QuantSpec(bw=8, symmetric=True, strict_symmetric=True)
    enc = compute_encoding(-2.0, 1.0, spec)
    s = 2 / 127
    assert_encoding(enc, s, -127, bw=8, qmax=254, symmetric=True)
    assert enc.strict
    assert enc.min[0] == pytest.approx(-2.0, rel=1e-6) and enc.max[0] == pytest.approx(2.0, rel=1e-6)
    q = quantize(np.array([-5.0, -2.0, 0.0, 2.0, 5.0], f32), enc)
    assert q.tolist() == [0.0, 0.0, 127.0, 254.0, 254.0]  # never 255: the grid is symmetric
    assert dequantize(q, enc).tolist() == pytest.approx([-2, -2, 0, 2, 2], rel=1e-6)


def test_unsigned_symmetric_for_non_negative_data():
    enc = compute_encoding(0.0, 5.0, QuantSpec(bw=8, symmetric=True))
    assert_encoding(enc, 5 / 255, 0, bw=8, qmax=255, symmetric=True)
    assert enc.min[0] == 0.0 and enc.max[0] == pytest.approx(5.0, rel=1e-6)
    # ... only when allowed, and only when the data really is non-negative
    signed = compute_encoding(0.0, 5.0, QuantSpec(bw=8, symmetric=True, unsigned_symmetric=False))
    assert_encoding(signed, 5 / 127, -128, bw=8, qmax=255, symmetric=True)
    negative = compute_encoding(-0.001, 5.0, QuantSpec(bw=8, symmetric=True))
    assert_encoding(negative, 5 / 127, -128, bw=8, qmax=255, symmetric=True)


@pytest.mark.parametrize(
    "spec,lo,hi,scale,offset,qmax",
    [
        (QuantSpec(bw=4), -1.0, 2.0, 3 / 15, -5, 15),
        (QuantSpec(bw=4, symmetric=True), -2.0, 1.0, 2 / 7, -8, 15),
        (QuantSpec(bw=4, symmetric=True, strict_symmetric=True), -2.0, 1.0, 2 / 7, -7, 14),
        (QuantSpec(bw=4, symmetric=True), 0.0, 3.0, 3 / 15, 0, 15),
        (QuantSpec(bw=16), -1.0, 2.0, 3 / 65535, -21845, 65535),
        (QuantSpec(bw=16, symmetric=True), -2.0, 1.0, 2 / 32767, -32768, 65535),
        (QuantSpec(bw=16, symmetric=True, strict_symmetric=True), -2.0, 1.0, 2 / 32767, -32767, 65534),
        (QuantSpec(bw=2), -1.0, 2.0, 1.0, -1, 3),
    ],
)
def test_other_bitwidths(spec, lo, hi, scale, offset, qmax):
    enc = compute_encoding(lo, hi, spec)
    assert_encoding(enc, scale, offset, bw=spec.bw, qmax=qmax, symmetric=spec.symmetric)


def test_4bit_and_16bit_grids_quantize_by_hand():
    enc4 = compute_encoding(-1.0, 2.0, QuantSpec(bw=4))  # s = 0.2, offset -5
    x = np.array([-3.0, -1.0, -0.29, 0.0, 0.31, 2.0, 9.0], f32)
    assert quantize(x, enc4).tolist() == [0, 0, 4, 5, 7, 15, 15]
    np.testing.assert_allclose(quantize_dequantize(x, enc4), [-1.0, -1.0, -0.2, 0.0, 0.4, 2.0, 2.0], atol=1e-6)
    enc16 = compute_encoding(-1.0, 2.0, QuantSpec(bw=16))  # s = 3/65535, offset -21845
    assert quantize(np.array([-1.0, 0.0, 2.0], f32), enc16).tolist() == [0, 21845, 65535]
    x = np.linspace(-1, 2, 1001, dtype=f32)
    err = np.abs(quantize_dequantize(x, enc16).astype(np.float64) - x)
    assert err.max() <= half_step_bound(3 / 65535, -1.0, 2.0)
    assert err.max() >= 0.4 * 3 / 65535


def test_vectorised_per_channel_ranges():
    spec = QuantSpec(bw=8, axis=0)
    enc = compute_encoding([-1.0, 0.5, -3.0], [2.0, 5.0, -1.0], spec)
    assert_encoding(enc, [3 / 255, 5 / 255, 3 / 255], [-85, 0, -255], bw=8, qmax=255, symmetric=False)
    assert enc.axis == 0 and enc.per_channel


def test_float_spec_gives_a_cast_not_a_grid():
    enc = compute_encoding(-1.0, 2.0, QuantSpec(bw=16, dtype="float"))
    assert enc.is_float and enc.bw == 16 and enc.scale.size == 0
    x = np.array([0.1, 1 / 3, 1000.123, -7.77], f32)
    np.testing.assert_array_equal(quantize_dequantize(x, enc), x.astype(np.float16).astype(f32))
    assert not np.array_equal(quantize_dequantize(x, enc), x)  # float16 really loses bits
    np.testing.assert_array_equal(quantize_dequantize(x, float_encoding(32)), x)
    with pytest.raises(ValueError):
        quantize(x, enc)


@pytest.mark.parametrize("bad", [dict(bw=1), dict(bw=17), dict(dtype="float", bw=8), dict(dtype="fp")])
def test_quantspec_rejects_impossible_specs(bad):
    with pytest.raises(ValueError):
        QuantSpec(**bad)


# ----------------------------------------------------------------------------- encode_tensor


def _channels_along(axis: int, ndim: int, absmax: list[float], rng) -> np.ndarray:
    """A tensor whose channels along `axis` have exactly the given absolute maxima."""
    shape = [2] * ndim
    shape[axis] = len(absmax)
    values = rng.uniform(-0.5, 0.5, size=shape).astype(f32)
    moved = np.moveaxis(values, axis, 0)
    for c, m in enumerate(absmax):
        moved[c] *= 0.9 * m  # |v| <= 0.45 m
        moved[c].flat[c % moved[c].size] = -m if c % 2 else m  # the extreme itself, of either sign
    return values


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_encode_tensor_per_channel_symmetric_exact_scales(axis):
    rng = np.random.default_rng(axis + 10)
    absmax = [1.0, 2.0, 4.0, 0.5]
    w = _channels_along(axis, 3, absmax, rng)
    enc = encode_tensor(w, QuantSpec(bw=8, symmetric=True, axis=axis))
    assert enc.axis == axis % 3  # normalised
    assert_encoding(enc, [m / 127 for m in absmax], [-128] * 4, bw=8, qmax=255, symmetric=True)
    # every channel's extreme lands exactly on a grid end
    q = quantize(w, enc)
    moved = np.moveaxis(q, axis, 0)
    for c in range(4):
        assert moved[c].flat[c % moved[c].size] == (1 if c % 2 else 255)
    # per-channel quantize equals quantizing each channel with its own per-tensor encoding
    qd = quantize_dequantize(w, enc)
    for c in range(4):
        one = Encoding(8, enc.scale[c], enc.offset[c], True)
        np.testing.assert_array_equal(np.take(qd, c, axis=axis), quantize_dequantize(np.take(w, c, axis=axis), one))


def test_encode_tensor_per_channel_asymmetric_exact_scales():
    w = np.array([[-1.0, 2.0, 0.5], [1.0, 3.0, 2.0]], f32).T  # channels along axis 1
    enc = encode_tensor(w, QuantSpec(bw=8, axis=1))
    # channel 0: [-1, 2] -> 3/255, -85; channel 1: [1, 3] widened to [0, 3] -> 3/255, 0
    assert_encoding(enc, [3 / 255, 3 / 255], [-85, 0], bw=8, qmax=255, symmetric=False)
    assert enc.axis == 1


def test_encode_tensor_per_tensor():
    w = np.array([[0.5, -2.0], [1.0, 0.25]], f32)
    enc = encode_tensor(w, QuantSpec(bw=8, symmetric=True))
    assert_encoding(enc, 2 / 127, -128, bw=8, qmax=255, symmetric=True)
    assert enc.axis is None
    enc = encode_tensor(np.array([1.0, 3.0], f32), QuantSpec(bw=8))
    assert_encoding(enc, 3 / 255, 0, bw=8, qmax=255, symmetric=False)


# ----------------------------------------------------------------------------- quantize / dequantize


def test_quantize_dequantize_by_hand():
    enc = compute_encoding(-1.0, 2.0, QuantSpec(bw=8))  # s = 3/255, offset -85 (zero point 85)
    s = f32(3 / 255)
    x = np.array([-3.0, -1.0, 0.0, 1.0, 2.0, 5.0, 0.3 * s, 0.7 * s], f32)
    q = quantize(x, enc)
    assert q.dtype == np.float32
    assert q.tolist() == [0, 0, 85, 170, 255, 255, 85, 86]
    xh = dequantize(q, enc)
    assert xh.dtype == np.float32
    np.testing.assert_array_equal(xh, (q - 85) * s)
    assert xh[2] == 0.0 and xh[6] == 0.0 and xh[7] == s
    np.testing.assert_array_equal(quantize_dequantize(x, enc), xh)


def test_signed_symmetric_quantize_by_hand():
    enc = compute_encoding(-2.0, 2.0, QuantSpec(bw=8, symmetric=True))  # s = 2/127, offset -128
    x = np.array([-9.0, -2.0, -2.0 - 2 / 127, 0.0, 0.5, 2.0, 9.0], f32)
    assert quantize(x, enc).tolist() == [0, 1, 0, 128, 160, 255, 255]  # 0.5 / s = 31.75 -> 32
    np.testing.assert_allclose(dequantize(np.array([0, 128, 255], f32), enc), [-128 * 2 / 127, 0, 2.0], rtol=1e-6)


def test_round_half_to_even():
    enc = Encoding(8, [0.5], [-128], True)  # power-of-two scale: x / s is exact
    x = np.array([0.25, 0.75, 1.25, 1.75, -0.25, -0.75, -1.25], f32)  # x/s = .5, 1.5, 2.5, 3.5, -.5, ...
    assert (quantize(x, enc) - 128).tolist() == [0, 2, 2, 4, 0, -2, -2]


ENCODINGS = {
    "asym8": compute_encoding(-1.0, 2.0, QuantSpec(bw=8)),
    "sym8": compute_encoding(-1.5, 2.0, QuantSpec(bw=8, symmetric=True)),
    "strict8": compute_encoding(-1.5, 2.0, QuantSpec(bw=8, symmetric=True, strict_symmetric=True)),
    "unsigned8": compute_encoding(0.0, 2.0, QuantSpec(bw=8, symmetric=True)),
    "asym4": compute_encoding(-1.0, 2.0, QuantSpec(bw=4)),
    "sym4": compute_encoding(-1.0, 2.0, QuantSpec(bw=4, symmetric=True)),
    "asym16": compute_encoding(-1.0, 2.0, QuantSpec(bw=16)),
    "asym6": compute_encoding(-0.3, 2.0, QuantSpec(bw=6)),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_error_at_most_half_a_step_inside_and_clipping_outside(name):
    enc = ENCODINGS[name]
    s, lo, hi = float(enc.scale[0]), float(enc.min[0]), float(enc.max[0])
    rng = np.random.default_rng(1)
    inside = rng.uniform(lo, hi, 20000).astype(f32)
    err = np.abs(quantize_dequantize(inside, enc).astype(np.float64) - inside)
    assert err.max() <= half_step_bound(s, lo, hi)
    assert err.max() >= s / 2 * 0.95  # and the bound is tight: really rounding to a grid of step s
    assert err.mean() == pytest.approx(s / 4, rel=0.05)  # uniform rounding error: E|e| = s/4
    below = np.array([lo - s, lo - 10.0, -1e6], f32)
    above = np.array([hi + s, hi + 10.0, 1e6], f32)
    np.testing.assert_allclose(quantize_dequantize(below, enc), lo, rtol=1e-6)
    np.testing.assert_allclose(quantize_dequantize(above, enc), hi, rtol=1e-6)
    assert quantize(below, enc).tolist() == [0, 0, 0]
    assert quantize(above, enc).tolist() == [enc.qmax] * 3
    assert quantize_dequantize(np.zeros(1, f32), enc)[0] == 0.0  # zero is exact


def test_quantize_dequantize_is_idempotent():
    enc = ENCODINGS["asym8"]
    x = np.random.default_rng(2).uniform(-3, 3, 1000).astype(f32)
    once = quantize_dequantize(x, enc)
    np.testing.assert_array_equal(quantize_dequantize(once, enc), once)
    assert len(np.unique(once)) <= 256


# ----------------------------------------------------------------------------- stochastic rounding


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.9])
def test_stochastic_rounding_is_unbiased(fraction):
    enc = Encoding(8, [0.25], [-128], True)
    s = 0.25
    x = np.full(40000, (3 + fraction) * s, f32)
    out = quantize_dequantize(x, enc, rounding="stochastic", rng=np.random.default_rng(123))
    assert set(np.unique(out).tolist()) == {3 * s, 4 * s}  # only the two neighbours
    assert out.mean() - x[0] == pytest.approx(0.0, abs=0.01 * s)  # unbiased (nearest is off by up to s/2)
    assert (out == 4 * s).mean() == pytest.approx(fraction, abs=0.01)
    nearest = quantize_dequantize(x, enc)
    if fraction != 0.5:
        assert abs(nearest.mean() - x[0]) >= 0.09 * s


def test_stochastic_rounding_mean_error_is_zero_on_random_data():
    enc = ENCODINGS["asym8"]
    s = float(enc.scale[0])
    x = np.random.default_rng(3).uniform(float(enc.min[0]) + s, float(enc.max[0]) - s, 50000).astype(f32)
    err = quantize_dequantize(x, enc, rounding="stochastic", rng=np.random.default_rng(4)) - x
    assert abs(err.mean()) < 0.01 * s
    assert np.abs(err).max() < s * (1 + 1e-4)  # at most one step, never more


def test_stochastic_rounding_is_deterministic_with_a_seed():
    enc = ENCODINGS["sym8"]
    x = np.random.default_rng(5).standard_normal((8, 64)).astype(f32)
    a = quantize(x, enc, rounding="stochastic", rng=np.random.default_rng(7))
    b = quantize(x, enc, rounding="stochastic", rng=np.random.default_rng(7))
    c = quantize(x, enc, rounding="stochastic", rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(quantize(x, enc, rounding="stochastic"), quantize(x, enc, rounding="stochastic"))
    assert np.all(np.abs(a - quantize(x, enc)) <= 1)
    with pytest.raises(ValueError):
        quantize(x, enc, rounding="up")


# ----------------------------------------------------------------------------- onnxruntime agreement


def _ort_qdq(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None, opset: int = 13):
    """Run QuantizeLinear -> DequantizeLinear in onnxruntime; returns (q, x_hat)."""
    attrs = {} if axis is None else {"axis": axis}
    ztype = helper.np_dtype_to_tensor_dtype(zero_point.dtype)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("q", ztype, list(x.shape)),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(scale.astype(f32), "s"), numpy_helper.from_array(zero_point, "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _test_values(enc: Encoding, shape: tuple[int, ...], axis: int | None, rng) -> np.ndarray:
    """Random values across (and beyond) the range plus exact half-steps, where rounding ties."""
    scale = enc.scale.reshape([-1 if i == axis else 1 for i in range(len(shape))]) if axis is not None \
        else enc.scale.reshape(())
    k = rng.integers(-300, 300, size=shape)
    ties = ((k + 0.5) * scale).astype(f32)
    spread = (rng.uniform(-1.3, 1.3, size=shape) * 128 * scale).astype(f32)
    return np.concatenate([ties, spread], axis=1 if axis == 0 else 0)


def _container_zero_point(enc: Encoding, signed: bool, dtype) -> np.ndarray:
    zp = np.zeros_like(enc.offset) if signed else -enc.offset
    zp = zp.astype(dtype)
    return zp if enc.per_channel else zp.reshape(())


@pytest.mark.parametrize(
    "case",
    ["uint8-asym", "int8-sym", "uint8-asym-pow2", "int8-sym-pow2", "uint16-asym", "int16-sym"],
)
def test_per_tensor_matches_onnxruntime_bit_exactly(case):
    rng = np.random.default_rng(11)
    bw = 16 if "16" in case else 8
    if case.endswith("pow2"):
        enc = Encoding(8, [2.0**-5], [-100] if "asym" in case else [-128], "sym" in case)
    else:
        enc = compute_encoding(-0.73, 1.91, QuantSpec(bw=bw, symmetric="sym" in case))
    signed = "int" in case and not case.startswith("u")
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[bw, signed]
    x = _test_values(enc, (64, 5), None, rng)
    x = np.concatenate([x, np.array([[-1e4, -2.0, 0.0, 2.0, 1e4]], f32)])  # clipping at both ends
    q_ort, y_ort = _ort_qdq(x, enc.scale.reshape(()), _container_zero_point(enc, signed, dtype), None,
                            opset=21 if bw == 16 else 13)
    q = quantize(x, enc)
    shift = enc.offset[0] if signed else 0  # signed containers hold grid + offset
    np.testing.assert_array_equal(q_ort.astype(np.int64), q.astype(np.int64) + shift)
    np.testing.assert_array_equal(y_ort, quantize_dequantize(x, enc))  # bit for bit


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_matches_onnxruntime_bit_exactly(axis, symmetric):
    rng = np.random.default_rng(20 + axis)
    shape = [4, 5, 6]
    w = rng.standard_normal(shape).astype(f32) * rng.uniform(0.01, 10, size=shape[axis]).astype(f32).reshape(
        [-1 if i == axis else 1 for i in range(3)])
    enc = encode_tensor(w, QuantSpec(bw=8, symmetric=symmetric, axis=axis))
    assert enc.scale.shape == (shape[axis],)
    x = np.concatenate([w, _test_values(enc, tuple(shape), axis, rng)], axis=1 if axis == 0 else 0)
    dtype = np.int8 if symmetric else np.uint8
    q_ort, y_ort = _ort_qdq(x, enc.scale, _container_zero_point(enc, symmetric, dtype), axis)
    q = quantize(x, enc)
    shift = enc.offset.reshape([-1 if i == axis else 1 for i in range(3)]) if symmetric else 0
    np.testing.assert_array_equal(q_ort.astype(np.int64), q.astype(np.int64) + shift)
    np.testing.assert_array_equal(y_ort, quantize_dequantize(x, enc))


def test_negative_axis_matches_onnxruntime():
    rng = np.random.default_rng(30)
    w = rng.standard_normal((3, 4, 5)).astype(f32)
    enc = encode_tensor(w, QuantSpec(bw=8, symmetric=True, axis=-1))
    assert enc.axis == 2
    q_ort, y_ort = _ort_qdq(w, enc.scale, np.zeros(5, np.int8), -1)
    np.testing.assert_array_equal(y_ort, quantize_dequantize(w, enc))
    # an Encoding built with axis=-1 directly broadcasts the same way
    direct = Encoding(8, enc.scale, enc.offset, True, axis=-1)
    np.testing.assert_array_equal(quantize_dequantize(w, direct), y_ort)
