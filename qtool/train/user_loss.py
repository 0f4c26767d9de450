"""`qtool qat --loss file.py:function`: a loss of the user's, in a Python file they name.

The function is called once per training step as `function(quantized, target)`:

* `quantized`: {output name: tensor} of the model's float outputs, computed through the
  quantizers (the tensors carry the gradient);
* `target`: the float model's outputs in the same form, or, with `--labels`, the batch's
  labels (an int64 tensor, one class id per sample);

and must return a scalar tensor (one element, floating point) that depends on `quantized`.

It runs only because the user typed it on the command line (a recipe must be allowed to name it
with `qtool run --allow-code`: qtool/recipe/policy.py). Whatever it does wrong (the file is
missing or fails to import, the function is missing, raises, or returns something that is not a
differentiable scalar) is a QtoolError naming the file, so the CLI prints one line and exits 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qtool.errors import QtoolError
from qtool.files.user_code import run_python_file

HINT = "it is called as function(quantized outputs, float outputs or labels) and returns a scalar tensor"


def is_user_loss(spec: str | None) -> bool:
    """Whether a --loss value names a file's function rather than a built-in loss."""
    return spec is not None and ":" in spec


def split(spec: str) -> tuple[Path, str]:
    """(file, function name) of `file.py:function`; a QtoolError for anything else."""
    module, _, function = spec.rpartition(":")
    if not module.endswith(".py") or not function:
        raise QtoolError(f"--loss {spec}: expected kd, ce, mse or file.py:function")
    return Path(module).expanduser(), function


def load(spec: str) -> Callable:
    """The user's function, wrapped so that its failures are one line naming the file."""
    path, name = split(spec)
    if not path.is_file():
        raise QtoolError(f"{path}: no such loss file (--loss {spec})", "give the path of a Python file")
    try:
        module = run_python_file(path, f"qtool_user_loss_{path.stem}")  # writes no __pycache__ beside it
    except Exception as exc:  # the user's file: any error in it is theirs to fix
        raise QtoolError(f"{path}: cannot load the loss file ({type(exc).__name__}: {exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise QtoolError(f"{path}: has no function {name!r} (--loss {spec})", HINT)
    return _guarded(path, name, function)


def _guarded(path: Path, name: str, function: Callable) -> Callable:
    import torch

    def loss(quantized: dict, target) -> torch.Tensor:
        try:
            value = function(quantized, target)
        except QtoolError:
            raise
        except Exception as exc:
            raise QtoolError(f"{path}: {name}() raised {type(exc).__name__}: {exc}", HINT) from None
        if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
            what = (f"a tensor of shape {tuple(value.shape)} ({value.dtype})" if isinstance(value, torch.Tensor)
                    else f"a {type(value).__name__}")
            raise QtoolError(f"{path}: {name}() returned {what}, not a scalar tensor", HINT)
        if not value.requires_grad:
            raise QtoolError(f"{path}: {name}() returned a value that does not depend on the quantized outputs "
                             "(no gradient)", HINT)
        return value.reshape(())
    return loss
