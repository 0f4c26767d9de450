"""Range-setting observers: streaming equals all-at-once, the noise search finds the true optimum."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quant import SCHEMES, encode_param, make_observer
from qtool.quant.encoding import QuantSpec, compute_encoding, encode_tensor, quantize_dequantize
from qtool.quant.observers import SQNR_GAMMA, HistogramObserver, _bin

ASYM8 = QuantSpec(bw=8)
SYM8 = QuantSpec(bw=8, symmetric=True)
SPECS = [
    ASYM8,
    SYM8,
    QuantSpec(bw=8, symmetric=True, strict_symmetric=True),
    QuantSpec(bw=4),
    QuantSpec(bw=16, symmetric=True),
]
HIST_SCHEMES = ("sqnr", "percentile", "mse")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def observe(scheme: str, batches, **kwargs):
    obs = make_observer(scheme, **kwargs)
    for batch in batches:
        obs.update(batch)
    return obs


def data_mse(x: np.ndarray, enc) -> float:
    return float(np.mean((quantize_dequantize(x, enc).astype(np.float64) - x) ** 2))


def weighted_noise(x: np.ndarray, enc, gamma: float) -> float:
    """The search objective measured on the raw data: rounding noise + gamma * clipping noise."""
    err = (quantize_dequantize(x, enc).astype(np.float64) - x) ** 2
    clipped = (x < enc.min[0]) | (x > enc.max[0])
    return float(np.sum(np.where(clipped, gamma * err, err)))


def growing_batches(seed: int = 0, outliers: bool = False) -> list[np.ndarray]:
    """Ten batches whose spread grows, so the streaming histogram must widen several times."""
    r = rng(seed)
    batches = [(r.standard_normal(20_000) * (1 + 0.2 * i) + 0.3).astype(np.float32) for i in range(10)]
    if outliers:
        batches[3][:2] = [40.0, -30.0]
    return batches


# ---------------------------------------------------------------- minmax


@pytest.mark.parametrize("spec", SPECS)
def test_minmax_streaming_equals_concatenation_and_encode_tensor(spec):
    batches = [rng(i).normal(i - 3, 1 + i, size=(4, 50)).astype(np.float32) for i in range(7)]
    enc = observe("minmax", batches).compute(spec)
    whole = observe("minmax", [np.concatenate([b.ravel() for b in batches])]).compute(spec)
    assert enc.same_as(whole)
    assert enc.same_as(encode_tensor(np.stack(batches), spec))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_encode_param_minmax_equals_encode_tensor(spec, axis):
    w = rng(1).normal(0.2, 1.0, size=(6, 5, 3)).astype(np.float32)
    s = QuantSpec(spec.bw, spec.dtype, spec.symmetric, spec.strict_symmetric, spec.unsigned_symmetric, axis)
    assert encode_param(w, s, "minmax").same_as(encode_tensor(w, s))


# ---------------------------------------------------------------- streaming histogram


@pytest.mark.parametrize("first", ["tiny", "constant"])
def test_histogram_growth_merges_old_bins_exactly(first):
    """After any number of widenings the counts equal a fresh binning of all data at the final range."""
    batches = growing_batches(2, outliers=True)
    batches.insert(0, np.array([0.25, 0.2501], np.float32) if first == "tiny" else np.full(5, 0.5, np.float32))
    obs = observe("sqnr", batches)
    assert isinstance(obs, HistogramObserver)
    x = np.concatenate(batches).astype(np.float64)
    fresh = _bin(x[None], np.array([obs._lo]), np.array([obs.bin_width]), obs.num_bins)[0]
    # batches are binned in float32 (the hot path): an element lying within float32 rounding of
    # a bin edge may land in the neighbouring bin, nothing more
    moved = np.abs(obs._counts - fresh).sum() / 2
    assert moved <= max(2, 1e-3 * x.size), moved
    assert obs._counts.sum() == x.size
    assert obs._lo <= x.min() and obs._lo + obs.num_bins * obs.bin_width >= x.max()


@pytest.mark.parametrize("scheme", HIST_SCHEMES)
@pytest.mark.parametrize("spec", [ASYM8, SYM8])
def test_streaming_without_growth_is_exact(scheme, spec):
    """When the first batch holds the extremes no widening happens: batches == concatenation, bit for bit."""
    batches = growing_batches(3)
    x = np.concatenate(batches)
    batches[0] = np.concatenate([batches[0], [x.min(), x.max()]])
    x = np.concatenate(batches)
    assert observe(scheme, batches).compute(spec).same_as(observe(scheme, [x]).compute(spec))


@pytest.mark.parametrize("outliers", [False, True])
@pytest.mark.parametrize("spec", [ASYM8, SYM8])
def test_streaming_with_growth_close_to_concatenation(outliers, spec):
    batches = growing_batches(4, outliers)
    x = np.concatenate(batches)
    for scheme in HIST_SCHEMES:
        kw = {"percentile": 99.9} if scheme == "percentile" else {}
        streamed, whole = observe(scheme, batches, **kw), observe(scheme, [x], **kw)
        assert streamed.bin_width > whole.bin_width  # growth did happen (coarser bins)
        a, b = streamed.compute(spec), whole.compute(spec)
        # Percentiles are within one bin. The noise objective is flat around its optimum, so a
        # coarser histogram may move the argmin by a few bins, at no cost in noise.
        bins = 1.0 if scheme == "percentile" else 4.0
        tol = bins * streamed.bin_width + float(b.scale[0])
        assert abs(a.min[0] - b.min[0]) <= tol and abs(a.max[0] - b.max[0]) <= tol, scheme
        if scheme != "percentile":
            gamma = SQNR_GAMMA if scheme == "sqnr" else 1.0
            assert weighted_noise(x, a, gamma) <= 1.005 * weighted_noise(x, b, gamma)


def test_memory_does_not_grow_with_batches():
    def state_bytes(obs) -> int:
        return sum(v.nbytes for v in vars(obs).values() if isinstance(v, (np.ndarray, np.generic)))

    r = rng(5)
    for scheme in SCHEMES:
        one = observe(scheme, [r.standard_normal(1000).astype(np.float32)])
        many = observe(scheme, [r.standard_normal(1000).astype(np.float32) * (1 + i) for i in range(100)])
        assert state_bytes(one) == state_bytes(many), scheme
        if scheme != "minmax":
            assert state_bytes(many) == 2048 * 8


# ---------------------------------------------------------------- range-setting quality


def gaussian_with_outliers() -> np.ndarray:
    x = rng(6).standard_normal(2_000_000).astype(np.float32)
    x[[10, 500_000]] = [80.0, -80.0]
    return x


@pytest.mark.parametrize("spec", [ASYM8, SYM8])
def test_sqnr_and_mse_clip_huge_outliers(spec):
    x = gaussian_with_outliers()
    batches = np.array_split(x, 10)
    ref = observe("minmax", batches).compute(spec)
    ref_mse = data_mse(x, ref)
    for scheme in ("sqnr", "mse"):  # sqnr with AIMET's clipping weight 3
        enc = observe(scheme, batches, **({"sqnr_gamma": 3.0} if scheme == "sqnr" else {})).compute(spec)
        assert enc.max[0] < 0.5 * ref.max[0] and enc.min[0] > 0.5 * ref.min[0], scheme
        assert data_mse(x, enc) < 0.5 * ref_mse, scheme
    # sqnr punishes clipping more than mse does, so it keeps a wider range
    assert observe("sqnr", batches, sqnr_gamma=3.0).compute(spec).max[0] > observe("mse", batches).compute(spec).max[0]


@pytest.mark.parametrize("spec", [ASYM8, SYM8, QuantSpec(bw=16)])
def test_sqnr_on_uniform_data_keeps_minmax_range(spec):
    x = rng(7).uniform(-1.0, 1.0, 500_000).astype(np.float32)
    ref = encode_tensor(x, spec)
    enc = observe("sqnr", np.array_split(x, 10)).compute(spec)
    assert abs(enc.max[0] - ref.max[0]) <= 0.02 * ref.max[0]
    assert abs(enc.min[0] - ref.min[0]) <= 0.02 * -ref.min[0]


@pytest.mark.parametrize("scheme", ["sqnr", "mse"])
@pytest.mark.parametrize("spec", [QuantSpec(bw=4, symmetric=True), SYM8, QuantSpec(bw=4), ASYM8])
def test_search_finds_bruteforce_optimum_on_raw_data(scheme, spec):
    """The histogram noise model is exact enough that the search matches a brute force on the data."""
    x = rng(8).standard_normal(20_000).astype(np.float32)
    x[:4] = [30.0, -25.0, 20.0, -30.0]
    gamma = SQNR_GAMMA if scheme == "sqnr" else 1.0
    found = weighted_noise(x, observe(scheme, [x]).compute(spec), gamma)
    ends = np.geomspace(0.3, 30.0, 300 if spec.symmetric else 40)
    if spec.symmetric:
        best = min(weighted_noise(x, compute_encoding(-a, a, spec), gamma) for a in ends)
    else:
        best = min(weighted_noise(x, compute_encoding(-a, b, spec), gamma) for a in ends for b in ends)
    assert found <= 1.002 * best


def test_percentile_on_uniform_data():
    x = rng(9).uniform(0.0, 100.0, 1_000_000).astype(np.float32)
    obs = observe("percentile", np.array_split(x, 10), percentile=99.0)
    enc = obs.compute(ASYM8)
    assert enc.min[0] == 0.0  # the 1st percentile (~1) is widened to include zero
    assert abs(enc.max[0] - 99.0) <= obs.bin_width + 1e-4
    sym = observe("percentile", [x - 50.0], percentile=99.0).compute(SYM8)
    assert abs(sym.max[0] - 49.0) <= 0.05  # abs-max of the 1st (-49) and 99th (+49) percentiles
    for batches in ([x], growing_batches(15, outliers=True)):  # p = 100 is min-max, also after growth
        full = observe("percentile", batches, percentile=100.0).compute(ASYM8)
        assert full.same_as(encode_tensor(np.concatenate(batches), ASYM8))


# ---------------------------------------------------------------- parameters, per channel


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_encode_param_per_channel_scales_with_channel(scheme, axis, symmetric):
    base = rng(10).standard_normal((1, 64, 3, 3)).astype(np.float32)  # same pattern, scaled
    w = base * (10.0 ** np.arange(4, dtype=np.float32)).reshape(4, 1, 1, 1)
    if axis == 1:
        w = np.ascontiguousarray(np.swapaxes(w, 0, 1))
    spec = QuantSpec(bw=8, symmetric=symmetric, axis=axis)
    enc = encode_param(w, spec, scheme)
    assert enc.axis == axis and enc.scale.shape == (4,)
    np.testing.assert_allclose(enc.scale / enc.scale[0], 10.0 ** np.arange(4), rtol=1e-5)
    # vectorised over channels == one channel at a time
    for c in range(4):
        single = encode_param(np.take(w, c, axis=axis), QuantSpec(bw=8, symmetric=symmetric), scheme)
        np.testing.assert_allclose(enc.scale[c], single.scale[0], rtol=1e-6)
        assert enc.offset[c] == single.offset[0]


def test_encode_param_sqnr_clips_a_channel_outlier(monkeypatch):
    monkeypatch.setattr("qtool.quant.observers.SQNR_GAMMA", 3.0)  # AIMET's clipping weight
    w = rng(11).standard_normal((2, 20_000)).astype(np.float32)
    w[1, 0] = 20.0  # at 4 bits, a 20-sigma outlier costs the other values more rounding than clipping it costs
    spec = QuantSpec(bw=4, symmetric=True, axis=0)
    enc = encode_param(w, spec, "sqnr")
    ref = encode_param(w, spec, "minmax")
    assert enc.max[1] < 0.4 * ref.max[1]  # outlier channel clipped
    assert enc.max[0] > 0.5 * ref.max[0]  # clean channel keeps most of its range
    per_tensor = QuantSpec(bw=4, symmetric=True)
    assert data_mse(w[1], encode_param(w[1], per_tensor, "sqnr")) < data_mse(w[1], encode_tensor(w[1], per_tensor))


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("scheme", SCHEMES)
def test_non_finite_values_are_ignored(scheme):
    x = rng(12).standard_normal(5000).astype(np.float32)
    dirty = x.copy()
    dirty[[3, 70, 900]] = [np.nan, np.inf, -np.inf]
    clean = np.delete(x, [3, 70, 900])
    assert observe(scheme, [dirty]).compute(ASYM8).same_as(observe(scheme, [clean]).compute(ASYM8))
    assert encode_param(dirty, SYM8, scheme).same_as(encode_param(clean, SYM8, scheme))
    obs = observe(scheme, [np.full(10, np.nan, np.float32), np.zeros(0, np.float32)])
    assert not obs.seen
    with pytest.raises(ValueError):
        obs.compute(ASYM8)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("spec", [ASYM8, SYM8, QuantSpec(bw=8, symmetric=True, unsigned_symmetric=False)])
def test_ranges_always_contain_zero(scheme, spec):
    for lo, hi in [(5.0, 10.0), (-10.0, -5.0), (3.0, 3.0)]:
        x = rng(13).uniform(lo, hi, 3000).astype(np.float32)
        for enc in (observe(scheme, [x]).compute(spec), encode_param(x, spec, scheme)):
            assert enc.min[0] <= 0.0 <= enc.max[0]
            far = x.max() if hi > 0 else x.min()  # the data's far end is (nearly) kept
            assert (enc.max[0] >= 0.9 * far) if hi > 0 else (enc.min[0] <= 0.9 * far)
    relu = np.maximum(rng(14).standard_normal(3000), 0).astype(np.float32)
    if spec.symmetric and spec.unsigned_symmetric:
        assert observe(scheme, [relu]).compute(spec).offset[0] == 0  # unsigned grid


def test_api_errors_and_float_specs():
    with pytest.raises(ValueError):
        make_observer("kl")
    with pytest.raises(ValueError):
        encode_param(np.ones(3), ASYM8, "kl")
    with pytest.raises(ValueError):
        make_observer("percentile", percentile=30.0)
    obs = observe("sqnr", [np.ones(4, np.float32)])
    with pytest.raises(ValueError):
        obs.compute(QuantSpec(axis=0))  # observers are per tensor
    assert obs.compute(QuantSpec(bw=16, dtype="float")).is_float
    assert encode_param(np.ones((2, 2)), QuantSpec(bw=16, dtype="float", axis=0), "mse").is_float


def test_sqnr_clipping_weight_trades_clipping_for_rounding():
    """A larger clipping weight keeps more of the tail: the range grows with gamma."""
    data = np.random.default_rng(3).standard_t(3, 200_000).astype(np.float32)
    spec = QuantSpec(bw=8, symmetric=True)
    widths = []
    for gamma in (1.0, 3.0, 10.0, 30.0):
        obs = make_observer("sqnr", sqnr_gamma=gamma)
        obs.update(data)
        widths.append(float(obs.compute(spec).max[0]))
    assert widths == sorted(widths) and widths[-1] > 1.2 * widths[0]
    assert widths[-1] <= float(np.abs(data).max()) * 1.01
