"""Equalization scales: AIMET's rule, the noise model, and the noise-aware search."""

from __future__ import annotations

import numpy as np

from qtool.quant.cle_scales import PairNoise, cle_scales, noise_aware_scales

RNG = np.random.default_rng(5)


def pair(channels: int = 2, **changes) -> PairNoise:
    values = dict(first_ranges=np.array([1.0, 4.0]), second_ranges=np.array([2.0, 0.5]),
                  second_energy=np.array([3.0, 1.0]), second_fan=9, act_high=np.array([6.0, 1.0]),
                  act_low=np.array([0.0, 0.0]), act_power=np.array([2.0, 0.25]), input_energy=np.array([5.0, 5.0]))
    values.update(changes)
    return PairNoise(**values)


def test_cle_scales_make_both_channel_ranges_equal_and_leave_dead_channels():
    r1, r2 = np.array([1.0, 100.0, 0.0, 2.0]), np.array([4.0, 1.0, 3.0, 2.0])
    s = cle_scales(r1, r2)
    np.testing.assert_allclose(s, [0.5, 10.0, 1.0, 1.0])  # sqrt(r1 r2) / r2; channel 2 is dead: 1
    live = r1 > 0
    np.testing.assert_allclose((r1 / s)[live], (r2 * s)[live])


def test_noise_is_the_formula_by_hand():
    p = pair()
    s = np.array([1.0, 2.0])
    d1 = max(1 / 1, 4 / 2) / 127  # W1 step: widest scaled channel range
    da = (max(6 / 1, 1 / 2) - 0) / 255  # activation step: span of the scaled channels
    d2 = max(2 * 1, 0.5 * 2) / 127  # W2 step
    upstream = 1 * 3 * (d1 ** 2 * 5 + da ** 2) + 4 * 1 * (d1 ** 2 * 5 + da ** 2)
    downstream = d2 ** 2 * 9 * (2 / 1 + 0.25 / 4)
    assert p.noise(s) == np.float64(upstream + downstream) or abs(p.noise(s) - (upstream + downstream)) < 1e-15


def test_noise_does_not_depend_on_a_common_factor():
    p = pair()
    s = np.array([0.7, 3.0])
    assert abs(p.noise(s) - p.noise(5 * s)) < 1e-12 * p.noise(s)


def test_search_finds_the_brute_force_optimum_of_two_channels():
    # f is invariant to a common factor, so with two channels only s2 / s1 matters: a dense 1-D scan
    for seed in range(5):
        rng = np.random.default_rng(seed)
        p = pair(first_ranges=rng.uniform(0.01, 10, 2), second_ranges=rng.uniform(0.01, 10, 2),
                 second_energy=rng.uniform(0.1, 10, 2), act_high=rng.uniform(0.1, 10, 2),
                 act_power=rng.uniform(0.01, 1, 2), input_energy=np.full(2, rng.uniform(1, 50)))
        ratios = np.logspace(-5, 5, 200001)
        brute = min(p.noise(np.array([1.0, r])) for r in ratios[::50])
        fine = min(p.noise(np.array([1.0, r])) for r in ratios)
        found = p.noise(noise_aware_scales(p))
        assert found <= fine * 1.01, (seed, found, fine, brute)


def test_search_is_never_worse_than_aimet_or_no_scaling():
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        c = 16
        high = rng.lognormal(0, 1.5, c)
        p = PairNoise(first_ranges=rng.lognormal(0, 1.5, c), second_ranges=rng.lognormal(0, 1.5, c),
                      second_energy=rng.lognormal(0, 1, c), second_fan=rng.integers(1, 50),
                      act_high=high, act_low=-high * rng.uniform(0, 1, c), act_power=(high / 3) ** 2,
                      input_energy=rng.lognormal(2, 1, c))
        best = p.noise(noise_aware_scales(p))
        assert best <= p.noise(cle_scales(p.first_ranges, p.second_ranges)) * (1 + 1e-12)
        assert best <= p.noise(np.ones(c)) * (1 + 1e-12)


def test_aimet_rule_spreads_activations_that_the_search_keeps_together():
    # 16-bit weights, 8-bit activations, W2 columns four decades apart: AIMET's rule equalizes the
    # weights by spreading the activation channels over two decades, and the per-tensor 8-bit
    # activation grid then loses the narrow ones. Here the noise is the activation grid's, so the
    # best scales keep the (alike) activation channels together.
    c = 8
    p = PairNoise(first_ranges=np.ones(c), second_ranges=np.logspace(-2, 2, c), second_energy=np.ones(c),
                  second_fan=9, act_high=np.full(c, 6.0), act_low=np.zeros(c), act_power=np.full(c, 4.0),
                  input_energy=np.full(c, 20.0), param_levels=32767.0)
    aimet = cle_scales(p.first_ranges, p.second_ranges)
    aware = noise_aware_scales(p)
    spread = lambda s: np.max(p.act_high / s) / np.min(p.act_high / s)  # noqa: E731
    assert spread(aimet) > 90 and spread(aware) < 1.5
    assert p.noise(aware) < 0.01 * p.noise(aimet)


def test_dead_channels_keep_scale_one():
    p = pair(first_ranges=np.array([1.0, 0.0]), act_power=np.array([2.0, 0.0]))
    assert noise_aware_scales(p)[1] == 1.0
