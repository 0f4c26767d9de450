"""Strict JSON for every file and summary qtool writes.

Python's json writes NaN and Infinity by default, which is not JSON: strict parsers (JavaScript's
JSON.parse, jq, Go, serde) refuse the whole file. A measurement that is not a number (the SQNR of
a tensor that is all NaN, the score of a run that produced nothing) is written as null instead,
and json's own check (`allow_nan=False`) guards against anything this misses. Keys are sorted, so
the same data gives the same bytes. Standard library only (numpy values are converted when numpy
is loaded), so that the recipe runner can use it without paying for numpy.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float (Python or numpy, at any depth) replaced by None;
    numpy scalars and arrays become plain Python numbers and lists."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, (np.ndarray, np.generic)):
        return finite_or_none(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(obj: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """JSON text with sorted keys and no NaN/Infinity (those become null)."""
    return json.dumps(finite_or_none(obj), indent=indent, sort_keys=True, allow_nan=False, default=default)
