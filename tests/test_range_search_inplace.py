"""The noise search's in-place antiderivative and its cache-sized blocks give the same numbers as
the plain expression and one big block (issue 16: the encodings must not change)."""

import numpy as np

import qtool.quant.range_search as rs
from qtool.quant.encoding import QuantSpec


def _args(rng: np.random.Generator, channels: int = 3, k: int = 5, edges: int = 257):
    x = np.sort(rng.normal(0, 2, (channels, 1, edges)), axis=-1)
    scale = rng.uniform(0.01, 0.2, (channels, k, 1))
    gmin = rng.uniform(-3, 0, (channels, k, 1))  # grids that clip both tails of x
    return x, scale, gmin, scale * 255


def test_in_place_antiderivative_is_bitwise_the_expression() -> None:
    rng = np.random.default_rng(0)
    x, scale, gmin, span = _args(rng)
    expected = rs._noise_antiderivative_reference(x, scale, gmin, span, 3.0)
    assert np.array_equal(rs._noise_antiderivative(x, scale, gmin, span, 3.0), expected)
    work = [np.full(expected.size + 7, np.nan) for _ in range(4)]  # reused buffers, larger than one block
    for gamma in (3.0, 1.0):
        got = rs._noise_antiderivative(x, scale, gmin, span, gamma, work)
        assert got.shape == expected.shape
        assert np.array_equal(got, rs._noise_antiderivative_reference(x, scale, gmin, span, gamma))


def test_noise_blocks_do_not_change_the_search(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1, (4, 3000)), rng.normal(0, 30, (4, 10))], axis=1)
    mn, mx = values.min(axis=1), values.max(axis=1)
    lo, hi = rs._initial_range(mn, mx)
    width = (hi - lo) / 2048
    hist = rs._make_hist(rs._bin(values, lo, width, 2048), lo, width, mn, mx)
    spec = QuantSpec(bw=16, symmetric=False)
    monkeypatch.setattr(rs, "_CHUNK", 1 << 24)  # one block: the per-call computation
    whole = rs._search_range(hist, spec, 3.0)
    for chunk in (1 << 17, 1 << 11):  # a few candidates a block; one channel and candidate a block
        monkeypatch.setattr(rs, "_CHUNK", chunk)
        blocked = rs._search_range(hist, spec, 3.0)
        assert all(np.array_equal(a, b) for a, b in zip(whole, blocked))
