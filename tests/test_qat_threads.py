"""qtool.train makes torch's OpenMP threads wait passively (unless the user chose a policy): the
runtime reads OMP_WAIT_POLICY once, when torch loads, so the package sets it before any of its
modules imports torch. Each case runs in a fresh interpreter (torch is loaded once per process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="qtool[train] (torch) is not installed: QAT is an optional extra")

_PROBE = ("import os, sys; import qtool.train.loop; assert 'torch' in sys.modules; "
          "print(os.environ.get('OMP_WAIT_POLICY'))")


def _policy_seen_by_torch(env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_passive_wait_is_set_before_torch_loads():
    assert _policy_seen_by_torch(None) == "PASSIVE"


def test_a_users_policy_is_kept():
    assert _policy_seen_by_torch("ACTIVE") == "ACTIVE"
