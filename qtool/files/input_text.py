"""Reading the user's text inputs (recipes, configs, overrides) within limits, as one-line errors.

Every way such a file can be wrong becomes a QtoolError naming it: a folder where a file was
expected, a missing or unreadable file, a file over the size cap (a recipe or config is a few
KB; the cap keeps a hostile or mistaken input from costing minutes and gigabytes), bytes that
are not UTF-8 or hold NUL (a binary file given by mistake). `load_json` then refuses what
Python's json module would let through silently: NaN and Infinity (not JSON, and a range of
NaN quantizes everything to NaN), numbers that overflow to inf (1e999), integers too long to
convert, duplicate keys (the second one would win unseen) and nesting deep enough to exhaust
the interpreter's stack.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from qtool.errors import QtoolError

MAX_TEXT_BYTES = 16 << 20  # configs and overrides files: measured ones are under 100 KB
MAX_INT_DIGITS = 30  # larger than any count or bit-width; Python refuses > 4300 digits with a traceback


def read_text(path: str | os.PathLike, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The file's text (UTF-8, a BOM allowed). `what` names the input in errors ("config file")."""
    path = Path(path)
    if path.is_dir():
        raise QtoolError(f"{path}: is a folder; give the {what} itself")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise QtoolError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise QtoolError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise QtoolError(f"{path}: larger than {max_bytes >> 10} KiB, the limit for a {what}",
                         "check that this is the right file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QtoolError(f"{path}: not UTF-8 text (byte {exc.start})",
                         f"check that this is the right {what}, or save it as UTF-8") from None
    if "\x00" in text:
        raise QtoolError(f"{path}: holds NUL bytes (a binary file?)", f"check that this is the right {what}")
    return text


class _Refused(ValueError):
    """Raised from inside json's hooks; turned into a QtoolError naming the file."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a number JSON allows; write a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"{text} overflows to infinity; write a finite number")
    return value


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits is not a meaningful value here")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"duplicate key {key!r} (the second would silently win); keep one")
        result[key] = value
    return result


def parse_json(text: str, source: str, what: str = "JSON file") -> Any:
    """Strict JSON from text; every problem a QtoolError starting with `source`."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_short_int,
                          object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise QtoolError(f"{source}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    except _Refused as exc:
        raise QtoolError(f"{source}: {exc}") from None
    except RecursionError:
        raise QtoolError(f"{source}: nested too deeply", f"check that this is the right {what}") from None


def load_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file read with `read_text`'s limits and `parse_json`'s strictness."""
    return parse_json(read_text(path, what), str(path), what)
