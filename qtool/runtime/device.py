"""Where onnxruntime runs qtool's sessions: `--device cpu` (default) or `--device cuda`.

`cuda` needs onnxruntime-gpu (`pip install 'qtool[gpu]'`, which replaces the CPU wheel) and an
NVIDIA GPU with its driver; sessions then get the CUDA execution provider first and the CPU one
for the ops it lacks. A session that asked for CUDA and did not get it (the provider is missing,
or failed to load) is an error, never a silent fallback to the CPU: qtool checks the providers
each session really got. The choice travels in the environment variable QTOOL_DEVICE, set for
the length of a command, so the worker processes of `--jobs` inherit it (and a user may set it
for every command). onnxruntime is imported only when a session is made.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from qtool.errors import QtoolError

DEVICES = ("cpu", "cuda")
ENV = "QTOOL_DEVICE"
_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
_FIX = ("install onnxruntime-gpu (pip install 'qtool[gpu]') on a machine with an NVIDIA GPU and its CUDA driver, "
        "or use --device cpu")


def current_device() -> str:
    """The device of this process: QTOOL_DEVICE (set by use_device), else cpu."""
    device = (os.environ.get(ENV) or "cpu").strip().lower()
    if device not in DEVICES:
        raise QtoolError(f"{ENV}={os.environ.get(ENV)!r}: unknown device", f"use one of {', '.join(DEVICES)}")
    return device


def cuda_error(detail: str) -> QtoolError:
    return QtoolError(f"--device cuda: {detail}", _FIX)


def check_available(device: str) -> None:
    """Fail with one line when `device` cannot be had (before any work starts)."""
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise cuda_error(f"this onnxruntime ({ort.__version__}) has no CUDA execution provider")


def providers(device: str | None = None) -> list[str]:
    """The execution providers to ask for, most preferred first."""
    device = device or current_device()
    check_available(device)
    return list(_PROVIDERS[device])


def check_session(session, device: str | None = None) -> None:
    """A CUDA session that onnxruntime quietly made on the CPU alone (the provider failed to
    load: no GPU, no driver, a CUDA/cuDNN mismatch) is an error."""
    if (device or current_device()) == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise cuda_error("onnxruntime could not start its CUDA execution provider (no usable GPU, driver or CUDA "
                         "libraries)")


def set_device(device: str) -> None:
    """Sessions made from now on, in this process and the workers it starts, run on `device`
    (the Python API: `qtool.calibrate(..., device="cuda")`)."""
    device = device.strip().lower()
    if device not in DEVICES:
        raise QtoolError(f"--device {device}: unknown device", f"use one of {', '.join(DEVICES)}")
    check_available(device)
    os.environ[ENV] = device


@contextmanager
def use_device(device: str | None) -> Iterator[None]:
    """Run sessions made inside on `device` (None: leave the current choice)."""
    if device is None:
        yield
        return
    old = os.environ.get(ENV)
    set_device(device)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
