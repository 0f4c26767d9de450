"""The in-place Adam equals the textbook update (Kingma & Ba; torch.optim.Adam's defaults)."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quant.adam import ADAM_BETAS, ADAM_EPS, Adam


def test_in_place_adam_equals_the_textbook_update():
    rng = np.random.default_rng(0)
    param = rng.standard_normal(50).astype(np.float32)
    reference = param.astype(np.float64)
    start = param.copy()
    m = v = np.zeros(50)
    adam = Adam(param, lr=0.01)
    b1, b2 = ADAM_BETAS
    for t in range(1, 8):
        grad = rng.standard_normal(50).astype(np.float32)
        adam.step(grad)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad.astype(np.float64) ** 2
        reference -= 0.01 * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + ADAM_EPS)
    np.testing.assert_allclose(param, reference, rtol=1e-5, atol=1e-6)
    assert np.abs(param - start).max() > 0.02  # the steps moved it: a real comparison


def test_a_scratch_buffer_gives_the_same_steps_bit_for_bit():
    """Adam's temporary may be a caller's buffer (AdaRound's gradient scratch): same bits."""
    rng = np.random.default_rng(1)
    start = rng.standard_normal(64).astype(np.float32)
    own, shared = start.copy(), start.copy()
    scratch = np.full(64, np.nan, np.float32)
    adams = Adam(own, lr=0.01), Adam(shared, lr=0.01, scratch=scratch)
    for _ in range(6):
        grad = rng.standard_normal(64).astype(np.float32)
        for adam in adams:
            adam.step(grad)
    np.testing.assert_array_equal(shared, own)
    assert np.abs(own - start).max() > 0.02
    with pytest.raises(ValueError, match="scratch must be float32 \\(64,\\)"):
        Adam(own, lr=0.01, scratch=np.empty(63, np.float32))
