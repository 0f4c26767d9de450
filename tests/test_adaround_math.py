"""AdaRound math (qtool.quant.adaround) and conv patches (qtool.quant.patches).

What is asserted: patches reproduce onnxruntime's Conv; every gradient matches finite
differences in float64; the fused float32 loop computes the reference gradient; AdaRound lowers
the reconstruction error on *held-out* inputs against round-to-nearest, and every weight it
returns lies on the encoding's grid; depthwise layers run batched over groups; a seed fixes the
result to the byte.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.quant import Encoding, QuantSpec, compute_encoding, encode_tensor, quantize, quantize_dequantize
from qtool.quant.adaround import (
    GAMMA,
    ZETA,
    AdaRoundParams,
    LayerMoments,
    LayerRows,
    RoundingGrid,
    _FusedGradient,
    adaround_loss,
    adaround_matrix,
    annealed_beta,
    inverse_rectified_sigmoid,
    reconstruction_loss,
    rectified_sigmoid,
    rectified_sigmoid_grad,
    rounding_regularizer,
)
from qtool.quant.adam import Adam
from qtool.quant.patches import conv_patches, output_shape, sample_rows

# ---------------------------------------------------------------------------------------------
# conv patches against onnxruntime


def run_conv(x, w, strides, pads, dilations, groups):
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=strides, pads=pads, dilations=dilations,
                            group=groups, kernel_shape=list(w.shape[2:]))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


CONV_CASES = {
    # name: (input shape, out channels, groups, kernel, strides, pads, dilations)
    "stride2-pads-dilation2": ((2, 6, 11, 9), 8, 1, (3, 3), (2, 2), (1, 0, 2, 1), (2, 2)),
    "groups2": ((2, 6, 10, 7), 8, 2, (3, 2), (1, 2), (0, 1, 1, 0), (1, 2)),
    "depthwise": ((2, 6, 9, 9), 6, 6, (3, 3), (2, 1), (1, 1, 1, 1), (2, 1)),
    "depthwise-multiplier2": ((1, 4, 8, 8), 8, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "conv1d": ((3, 4, 17), 5, 1, (3,), (2,), (2, 1), (3,)),
}


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_patches_match_onnxruntime(case):
    shape, out, groups, kernel, strides, pads, dilations = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((out, shape[1] // groups) + kernel).astype(np.float32)
    y = run_conv(x, w, list(strides), list(pads), list(dilations), groups)
    assert y.shape[2:] == output_shape(shape[2:], kernel, strides, pads, dilations)

    patches = conv_patches(x, kernel, strides, pads, dilations, groups)
    w2d = w.reshape(out, -1)
    out_g = out // groups
    mine = np.einsum("rgk,gok->rgo", patches, w2d.reshape(groups, out_g, -1)).reshape(len(patches), out)
    reference = np.moveaxis(y, 1, -1).reshape(-1, out)  # rows in (n, output position) order
    np.testing.assert_allclose(mine, reference, atol=1e-5, rtol=0)
    # the same through the layer AdaRound optimises
    layer = LayerRows(patches, groups, out)
    np.testing.assert_allclose(layer.outputs(layer.to_internal(w2d)), reference, atol=1e-5, rtol=0)

    rows = sample_rows(7, len(patches), np.random.default_rng(1))
    np.testing.assert_array_equal(conv_patches(x, kernel, strides, pads, dilations, groups, rows=rows), patches[rows])


def test_conv_patches_reject_bad_arguments():
    x = np.zeros((1, 6, 5, 5), np.float32)
    with pytest.raises(ValueError, match="groups"):
        conv_patches(x, (3, 3), groups=4)
    with pytest.raises(ValueError, match="entries"):
        conv_patches(x, (3,))
    with pytest.raises(ValueError, match="does not fit"):
        conv_patches(x, (7, 7))


def test_sample_rows():
    rng = np.random.default_rng(0)
    rows = sample_rows(100, 1000, rng)
    assert rows.shape == (100,) and rows.dtype == np.int64
    assert np.all(np.diff(rows) > 0) and rows[0] >= 0 and rows[-1] < 1000  # sorted, distinct, in range
    np.testing.assert_array_equal(sample_rows(50, 30, rng), np.arange(30))
    np.testing.assert_array_equal(sample_rows(100, 1000, np.random.default_rng(0)), rows)


# ---------------------------------------------------------------------------------------------
# the terms of the loss


def finite_difference(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):  # tiny arrays only: tests
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (f(up) - f(down)) / (2 * eps)
    return grad


def test_rectified_sigmoid_and_inverse():
    v = np.linspace(-12, 12, 2001)
    h = rectified_sigmoid(v)
    sigmoid = 1 / (1 + np.exp(-v))
    np.testing.assert_allclose(h, np.clip(sigmoid * (ZETA - GAMMA) + GAMMA, 0, 1), atol=1e-12)
    assert h.min() == 0 and h.max() == 1 and rectified_sigmoid(np.zeros(1))[0] == pytest.approx(0.5)
    frac = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(rectified_sigmoid(inverse_rectified_sigmoid(frac)), frac, atol=1e-12)
    frac32 = np.random.default_rng(0).random(10000, dtype=np.float32)
    back = rectified_sigmoid(inverse_rectified_sigmoid(frac32))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, frac32, atol=1e-6)
    # dh/dV, away from the clipping kinks
    v = np.random.default_rng(1).uniform(-6, 6, 200)
    v = v[np.abs(np.abs(np.tanh(v / 2)) - 5 / 6) > 1e-3]
    numeric = (rectified_sigmoid(v + 1e-6) - rectified_sigmoid(v - 1e-6)) / 2e-6
    np.testing.assert_allclose(rectified_sigmoid_grad(v), numeric, atol=1e-7)


@pytest.mark.parametrize("beta", [20.0, 7.3, 2.0, 1.5])
def test_regularizer_gradient(beta):
    rng = np.random.default_rng(2)
    h = rng.uniform(0.02, 0.98, (5, 7))
    h = h[np.abs(h - 0.5) > 1e-3].reshape(-1)  # |2h-1|^beta has a kink at h = 1/2 for beta <= 1
    loss, grad = rounding_regularizer(h, beta, 0.03)
    assert loss == pytest.approx(0.03 * np.sum(1 - np.abs(2 * h - 1) ** beta))
    numeric = finite_difference(lambda x: rounding_regularizer(x, beta, 0.03)[0], h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    # 0 and 1 (rounded) cost nothing, 1/2 (undecided) costs lambda per weight
    assert rounding_regularizer(np.array([0.0, 1.0]), beta, 0.03)[0] == 0
    assert rounding_regularizer(np.array([0.5]), beta, 0.03)[0] == pytest.approx(0.03)


def test_reconstruction_loss_is_aimets():
    rng = np.random.default_rng(3)
    pred, target = rng.standard_normal((10, 4)), rng.standard_normal((10, 4))
    loss, grad = reconstruction_loss(pred.copy(), target)
    assert loss == pytest.approx(np.mean(np.sum((pred - target) ** 2, axis=1)))  # sum over outputs, mean over rows
    np.testing.assert_allclose(grad, finite_difference(lambda p: reconstruction_loss(p, target)[0], pred), atol=1e-8)


LAYERS = {
    # name: (out, K_g, groups)
    "dense": (6, 10, 1),
    "grouped": (6, 4, 2),
    "depthwise": (5, 9, 5),
}


def small_problem(out, k, groups, dtype=np.float64, seed=4):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out, k))
    enc = encode_tensor(weight, QuantSpec(bw=3, symmetric=True, axis=0))
    x = rng.standard_normal((40, groups, k)) if groups > 1 else rng.standard_normal((40, k))
    layer = LayerRows(x, groups, out, dtype=dtype)
    grid = RoundingGrid.from_weight(weight, enc, dtype=dtype).relayout(layer.to_internal)
    target = layer.outputs(layer.to_internal(weight.astype(dtype)))
    return layer, grid, target, rng


@pytest.mark.parametrize("shape", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("beta", [None, 9.0])
def test_total_gradient_matches_finite_differences(shape, beta):
    layer, grid, target, rng = small_problem(*shape)
    v = rng.standard_normal(grid.step.shape) * 1.5
    xb = layer.gather(None)
    recon, reg, grad = adaround_loss(v, grid, layer, xb, target, beta, 0.05)
    assert grad.dtype == np.float64 and recon > 0 and (reg > 0) == (beta is not None)
    numeric = finite_difference(lambda u: sum(adaround_loss(u, grid, layer, xb, target, beta, 0.05)[:2]), v)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("shape", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("beta", [None, 20.0, 4.5, 2.0, 1.5])
def test_fused_loop_gradient_equals_reference(shape, beta):
    layer, grid, target, rng = small_problem(*shape, dtype=np.float32)
    v = (rng.standard_normal(grid.step.shape) * 3).astype(np.float32)
    rows = sample_rows(16, layer.rows, rng)
    xb, tb = layer.gather(rows), target[rows]
    expected = adaround_loss(v, grid, layer, xb, tb, beta, 0.05)[2]
    fused = _FusedGradient(grid, layer, 16)(v, xb, tb, beta, 0.05)
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, expected, rtol=2e-4, atol=2e-6 * np.abs(expected).max())


@pytest.mark.parametrize("shape", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("beta", [None, 4.5])
def test_gradient_from_moments_equals_the_all_rows_reference(shape, beta):
    """The moments path (G = mean x x^T, D = mean t x^T) is the exact gradient over all rows."""
    layer, grid, target, rng = small_problem(*shape, dtype=np.float32)
    v = (rng.standard_normal(grid.step.shape) * 3).astype(np.float32)
    expected = adaround_loss(v, grid, layer, layer.gather(None), target, beta, 0.05)[2]
    fused = _FusedGradient(grid, layer, 16, LayerMoments(layer, target, chunk=7))(v, None, None, beta, 0.05)
    np.testing.assert_allclose(fused, expected, rtol=2e-4, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("shape", LAYERS.values(), ids=LAYERS.keys())
def test_adam_in_the_gradient_s_scratch_buffer_changes_no_bit(shape):
    """The loop shares one weight-sized buffer between the gradient and Adam (its temporary):
    V after a schedule through the warm start, beta > 2, beta = 2 and beta < 2 is bitwise the V
    of a loop whose Adam has a buffer of its own (fails if either needed it across the other's call)."""
    layer, grid, target, rng = small_problem(*shape, dtype=np.float32)
    v0 = (rng.standard_normal(grid.step.shape) * 3).astype(np.float32)
    batches = [sample_rows(16, layer.rows, rng) for _ in range(8)]
    betas = [None, None, 20.0, 4.5, 2.0, 1.5, 9.0, 2.0]
    results = []
    for shared in (False, True):
        v, gradient = v0.copy(), _FusedGradient(grid, layer, 16)
        adam = Adam(v, 0.01, scratch=gradient.scratch if shared else None)
        for rows, beta in zip(batches, betas):
            adam.step(gradient(v, layer.gather(rows), target[rows], beta, 0.05))
        results.append(v)
    assert np.abs(results[0] - v0).max() > 0.01  # the steps moved V: a real comparison
    np.testing.assert_array_equal(results[1], results[0])


def test_adaround_holds_a_few_weight_sized_buffers():
    """AdaRound on a 512 x 512 layer allocates at most 9.5 x the weight's bytes at its peak
    (traced by tracemalloc: numpy's allocations), in the loop: low and step of the grid, V,
    Adam's two moments, the gradient's four buffers (one shared with Adam) and a bool mask; the
    grid's integers and the loop's buffers are released before the final weights are made. It
    was 19.4 x (the grid's floor and rest and a second copy of the grid held all along, Adam's
    own temporary, a fifth gradient buffer, the grid's temporaries on top)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((512, 512)) / 22).astype(np.float32)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    enc = encode_tensor(weight, QuantSpec(bw=4, symmetric=True, axis=0))
    target = x @ weight.T
    params = AdaRoundParams(iterations=20, batch_size=64)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        final, _ = adaround_matrix(weight, enc, x, target, params)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak <= 9.5 * weight.nbytes, f"peak {peak / weight.nbytes:.1f} x the weight"
    assert final.shape == weight.shape


def test_a_rounding_worse_than_nearest_is_not_kept():
    """Wild steps (learning rate 1, 3 iterations) leave a random rounding: nearest is returned."""
    layer, grid, target, rng = small_problem(16, 40, 1, dtype=np.float32)
    weight = rng.standard_normal((16, 40)).astype(np.float32)
    enc = encode_tensor(weight, QuantSpec(bw=3, symmetric=True, axis=0))
    target = layer.outputs(layer.to_internal(weight))
    params = AdaRoundParams(iterations=3, learning_rate=1.0, warm_start=0.0, reg_param=0.0)
    final, stats = adaround_matrix(weight, enc, layer.x, target, params)
    assert stats["kept_nearest"] and stats["flipped"] == 0.0
    np.testing.assert_array_equal(final, quantize_dequantize(weight, enc))
    assert stats["loss_adaround"] == stats["loss_nearest"]


def test_soft_weight_is_the_clamp_formula():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((8, 30)).astype(np.float32) * 2
    # a range narrower than the weights, so that the clamp is active at both ends
    enc = compute_encoding(-1.0, 1.5, QuantSpec(bw=4))
    grid = RoundingGrid.from_weight(weight, enc)
    assert np.any(grid.step == 0)
    s, o = enc.scale[0], float(enc.offset[0])
    for h in (rng.random(weight.shape, dtype=np.float32), np.zeros(weight.shape, np.float32),
              np.ones(weight.shape, np.float32)):
        clamp = s * (np.clip(np.floor(weight / s) + h - o, 0, enc.qmax) + o)
        np.testing.assert_allclose(grid.soft(h), clamp, atol=1e-6)
    np.testing.assert_array_equal(grid.quantized((grid.rest >= 0.5).astype(np.float32)), quantize(weight, enc))


def test_beta_schedule():
    params = AdaRoundParams(iterations=1000, warm_start=0.2, beta_range=(20.0, 2.0))
    assert annealed_beta(0, params) is None and annealed_beta(199, params) is None
    betas = np.array([annealed_beta(i, params) for i in range(200, 1000)])
    assert betas[0] == 20.0 and np.all(np.diff(betas) < 0) and 2.0 < betas[-1] < 2.001
    assert betas[400] == pytest.approx(11.0)  # cosine: half way down at half way
    linear = AdaRoundParams(iterations=1000, beta_decay="linear")
    assert annealed_beta(600, linear) == pytest.approx(11.0) and annealed_beta(800, linear) == pytest.approx(6.5)
    with pytest.raises(ValueError, match="beta_decay must be one of cosine, linear"):
        AdaRoundParams(beta_decay="exp")
    with pytest.raises(ValueError, match="warm_start"):
        AdaRoundParams(warm_start=1.0)


# ---------------------------------------------------------------------------------------------
# AdaRound on whole layers


def correlated_rows(rng, n, k, mix):
    z = rng.standard_normal((n, k)).astype(np.float32)
    return np.maximum(z @ mix + 0.5 * z[:, :1], 0)  # correlated features, ReLU-like


def assert_on_grid(w, enc, rows):
    scale = enc.scale.reshape(-1, 1) if enc.axis == 0 else enc.scale
    offset = enc.offset.reshape(-1, 1) if enc.axis == 0 else enc.offset
    q = w / scale - offset
    np.testing.assert_allclose(q, np.round(q), atol=1e-4, rtol=0)
    assert q.min() > -1e-4 and q.max() < enc.qmax + 1e-4
    lo = enc.min.reshape(-1, 1) if enc.axis == 0 else enc.min
    hi = enc.max.reshape(-1, 1) if enc.axis == 0 else enc.max
    assert np.all(w >= lo) and np.all(w <= hi)
    assert w.shape == (rows, w.shape[1]) and w.dtype == np.float32
    assert quantize_dequantize(w, enc).tobytes() == w.tobytes()  # the simulation keeps it bit for bit


@pytest.fixture(scope="module")
def dense_layer():
    rng = np.random.default_rng(1)
    k, out = 64, 32
    weight = (rng.standard_normal((out, k)) / np.sqrt(k)).astype(np.float32)
    mix = rng.standard_normal((k, k)).astype(np.float32) / np.sqrt(k)
    train, test = correlated_rows(rng, 4096, k, mix), correlated_rows(rng, 2048, k, mix)
    act = compute_encoding(0.0, float(train.max()), QuantSpec(bw=8))
    return weight, train, quantize_dequantize(train, act), test, quantize_dequantize(test, act)


@pytest.mark.parametrize("spec", [QuantSpec(bw=4, symmetric=True, axis=0), QuantSpec(bw=4, symmetric=False)],
                         ids=["per-channel-symmetric", "per-tensor-asymmetric"])
def test_adaround_beats_nearest_on_held_out_data(dense_layer, spec):
    weight, train, train_q, test, test_q = dense_layer
    enc = encode_tensor(weight, spec)
    calls = []
    final, stats = adaround_matrix(weight, enc, train_q, train @ weight.T, AdaRoundParams(iterations=1000),
                                   progress=lambda done, total: calls.append((done, total)))
    nearest = quantize_dequantize(weight, enc)

    def held_out(w):
        return np.mean(np.sum((test @ weight.T - test_q @ w.T) ** 2, axis=1))

    assert held_out(final) < 0.8 * held_out(nearest), (held_out(final), held_out(nearest))
    assert stats["loss_adaround"] < 0.8 * stats["loss_nearest"]
    assert stats["loss_nearest"] == pytest.approx(np.mean(np.sum((train @ weight.T - train_q @ nearest.T) ** 2, 1)),
                                                  rel=1e-4)
    assert 0 < stats["flipped"] < 0.5 and stats["iterations"] == 1000 and stats["seconds"] > 0
    assert calls[-1] == (1000, 1000) and len(calls) == 100
    assert_on_grid(final, enc, weight.shape[0])
    # every weight rounded down or up from its float value, nothing further
    scale = enc.scale.reshape(-1, 1) if enc.axis == 0 else enc.scale
    assert np.all(np.abs(final - weight) < scale * (1 + 1e-4))


def smooth_images(rng, n, channels, size=20):
    z = rng.standard_normal((n, channels, size, size)).astype(np.float32)
    blurred = sum(np.roll(np.roll(z, i, 2), j, 3) for i in range(3) for j in range(3)) / 3
    return np.maximum(blurred + 0.3, 0)  # neighbouring pixels correlated, as in feature maps


@pytest.mark.parametrize("spec", [QuantSpec(bw=4, symmetric=True, axis=0), QuantSpec(bw=4, symmetric=False)],
                         ids=["per-channel-symmetric", "per-tensor-asymmetric"])
def test_adaround_depthwise_improves(spec):
    rng = np.random.default_rng(3)
    channels = 32
    train_img, test_img = smooth_images(rng, 8, channels), smooth_images(rng, 4, channels)
    act = compute_encoding(0.0, float(train_img.max()), QuantSpec(bw=8))
    weight = (rng.standard_normal((channels, 9)) * 0.5).astype(np.float32)  # (C, 1, 3, 3) as a matrix

    def rows(img, quantized):
        img = quantize_dequantize(img, act) if quantized else img
        return conv_patches(img, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), channels)

    def outputs(patches, w):
        return np.einsum("ngk,gk->ng", patches, w)

    enc = encode_tensor(weight, spec)
    train = rows(train_img, False)
    final, stats = adaround_matrix(weight, enc, rows(train_img, True), outputs(train, weight),
                                   AdaRoundParams(iterations=1000), groups=channels)
    test, test_q = rows(test_img, False), rows(test_img, True)
    nearest = quantize_dequantize(weight, enc)

    def held_out(w):
        return np.mean(np.sum((outputs(test, weight) - outputs(test_q, w)) ** 2, axis=1))

    assert held_out(final) < 0.8 * held_out(nearest), (held_out(final), held_out(nearest))
    assert stats["loss_adaround"] < stats["loss_nearest"]
    assert_on_grid(final, enc, channels)


def test_adaround_grouped_conv_improves():
    rng = np.random.default_rng(6)
    groups, out_g, cin_g = 2, 8, 4
    img = smooth_images(rng, 6, groups * cin_g)
    weight = (rng.standard_normal((groups * out_g, cin_g * 9)) * 0.2).astype(np.float32)
    patches = conv_patches(img, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), groups)
    target = LayerRows(patches, groups, groups * out_g).outputs(weight)
    act = compute_encoding(0.0, float(img.max()), QuantSpec(bw=8))
    patches_q = conv_patches(quantize_dequantize(img, act), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), groups)
    enc = encode_tensor(weight, QuantSpec(bw=4, symmetric=True, axis=0))
    final, stats = adaround_matrix(weight, enc, patches_q, target, AdaRoundParams(iterations=500), groups=groups)
    assert stats["loss_adaround"] < 0.8 * stats["loss_nearest"]
    assert_on_grid(final, enc, groups * out_g)


def test_depthwise_runs_batched_over_groups():
    """480 channels (a MobileNet-size depthwise layer): no per-group Python work per iteration."""
    rng = np.random.default_rng(7)
    channels = 480
    patches = rng.standard_normal((2048, channels, 9)).astype(np.float32)
    weight = (rng.standard_normal((channels, 9)) * 0.3).astype(np.float32)
    target = np.einsum("ngk,gk->ng", patches, weight)
    enc = encode_tensor(weight, QuantSpec(bw=4, symmetric=True, axis=0))
    start = time.perf_counter()
    final, stats = adaround_matrix(weight, enc, patches, target, AdaRoundParams(iterations=300), groups=channels)
    elapsed = time.perf_counter() - start
    # batched: ~1-2 ms per iteration on one core; a loop over 480 groups costs far more
    assert elapsed < 15, elapsed
    assert final.shape == weight.shape and stats["loss_adaround"] <= stats["loss_nearest"] * 1.01


def test_same_seed_same_bytes(dense_layer):
    weight, train, train_q, _, _ = dense_layer
    enc = encode_tensor(weight, QuantSpec(bw=4, symmetric=True, axis=0))
    params = AdaRoundParams(iterations=300, batch_size=64, seed=11)
    first, stats1 = adaround_matrix(weight, enc, train_q[:1000], train[:1000] @ weight.T, params)
    second, stats2 = adaround_matrix(weight, enc, train_q[:1000], train[:1000] @ weight.T, params)
    assert first.tobytes() == second.tobytes()
    assert {k: v for k, v in stats1.items() if k != "seconds"} == {k: v for k, v in stats2.items() if k != "seconds"}


def test_full_batch_when_few_rows():
    rng = np.random.default_rng(8)
    weight = rng.standard_normal((4, 6)).astype(np.float32)
    x = rng.standard_normal((10, 6)).astype(np.float32)
    enc = encode_tensor(weight, QuantSpec(bw=4, symmetric=True))
    final, stats = adaround_matrix(weight, enc, x, x @ weight.T, AdaRoundParams(iterations=50, batch_size=256))
    assert_on_grid(final, enc, 4)


def test_invalid_inputs_are_named():
    weight = np.ones((4, 6), np.float32)
    x = np.ones((10, 6), np.float32)
    enc = encode_tensor(weight, QuantSpec(bw=4, symmetric=True, axis=0))
    params = AdaRoundParams(iterations=1)
    with pytest.raises(ValueError, match="axis 1"):
        adaround_matrix(weight, Encoding(4, enc.scale, enc.offset, True, axis=1), x, x @ weight.T, params)
    with pytest.raises(ValueError, match="integer encoding"):
        adaround_matrix(weight, Encoding(16, dtype="float"), x, x @ weight.T, params)
    with pytest.raises(ValueError, match="target must be"):
        adaround_matrix(weight, enc, x, np.ones((10, 3)), params)
    with pytest.raises(ValueError, match="inputs per output"):
        adaround_matrix(weight, enc, np.ones((10, 5)), x @ weight.T, params)
    with pytest.raises(ValueError, match="groups=2"):
        adaround_matrix(weight, enc, x, x @ weight.T, params, groups=2)
