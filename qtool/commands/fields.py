"""The options of a command, declared once: a dataclass whose fields carry their default, their help
and their checks, read by the CLI (click options), by recipes (step options) and by the Python API.

    percentile: float = option(99.99, "Percentile for --scheme percentile.", bounds=(50, 100))

A field's kind comes from its annotation as written (`int`, `float | None`, `tuple[str, ...]`,
...); `convert` turns a value from any of the three front doors into that kind or raises
ValueError with one sentence that says why. Every float must be finite (click and YAML both read
'nan' and 'inf' as floats; no option means either). The CLI wraps `convert` in its click types,
so a command line and a recipe accept and refuse exactly the same values. Click-free on purpose:
the recipe runner and `import qtool` must not depend on the CLI.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

MISSING = dataclasses.MISSING
KINDS = {"str": "str", "int": "int", "float": "float", "bool": "bool", "tuple[str, ...]": "strings",
         "tuple[float, float]": "float_pair", "DataArg": "data", "LabelsArg": "labels"}
DataArg = Any  # a path, 'random', or (from Python) arrays: a dict of them, one array, or an iterable of dicts
LabelsArg = Any  # a path to .npy/.txt labels, or (from Python) an array of integers


@dataclass(frozen=True)
class Spec:
    """How an option is offered. `flag`: the CLI spelling when it is not `--field-name`
    ('--per-channel/--per-tensor' for an on/off pair); `bounds`: inclusive (low, high), None for
    open; `choices`: accepted case-insensitively unless `case_sensitive`, returned as listed."""

    help: str
    flag: str | None = None
    bounds: tuple[float | None, float | None] | None = None
    choices: tuple[str, ...] | None = None
    case_sensitive: bool = False
    metavar: str | None = None


def option(default: Any = MISSING, help: str = "", **spec: Any) -> Any:
    """A dataclass field with its default and a Spec; no default makes the option required."""
    return dataclasses.field(default=default, metadata={"spec": Spec(help, **spec)})


@dataclass(frozen=True)
class Field:
    """One option of a command: its name, kind ('int', 'float', 'str', 'bool', 'strings',
    'float_pair', 'data', 'labels'), whether it may be None, its default and its Spec."""

    name: str
    kind: str
    optional: bool
    default: Any
    spec: Spec

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")


def fields_of(options: type) -> dict[str, Field]:
    """The options of a dataclass, in declaration order (a base class's first)."""
    out = {}
    for item in dataclasses.fields(options):
        annotation = str(item.type).replace("Optional[", "").replace(" ", "")
        optional = annotation.endswith("|None")
        annotation = annotation.removesuffix("|None").replace(",", ", ")
        if annotation not in KINDS:
            raise TypeError(f"{options.__name__}.{item.name}: no option kind for annotation {item.type!r}")
        out[item.name] = Field(item.name, KINDS[annotation], optional, item.default, item.metadata["spec"])
    return out


def convert(field: Field, value: Any) -> Any:
    """`value` as the option's kind, checked; ValueError (one sentence) when it cannot be."""
    if value is None and (field.optional or field.kind in ("data", "labels")):
        return None
    if field.kind == "strings":
        if isinstance(value, (str, bytes)) or not _iterable(value):
            raise ValueError(f"expected a list of values, got {value!r}")
        return tuple(str(item) for item in value)
    if field.kind == "float_pair":
        if isinstance(value, (str, bytes)) or not _iterable(value) or len(list(value)) != 2:
            raise ValueError(f"expected two numbers, got {value!r}")
        return tuple(convert_one(field, "float", item) for item in value)
    if field.kind in ("data", "labels"):
        return value if not isinstance(value, bytes) else value.decode()
    return convert_one(field, field.kind, value)


def convert_one(field: Field, kind: str, value: Any) -> Any:
    """One value of `kind` ('int', 'float', 'str', 'bool') with the field's bounds and choices."""
    if kind == "bool":
        return _bool(value)
    if kind == "int":
        result: Any = _int(value)
    elif kind == "float":
        result = _float(value)
    else:
        result = value if isinstance(value, str) else str(value)
        return _choice(field.spec, result) if field.spec.choices else result
    _check_bounds(field.spec.bounds, result)
    return result


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _bool(value: Any) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1", "y", "t"):
        return True
    if text in ("false", "no", "off", "0", "n", "f"):
        return False
    raise ValueError(f"{value!r} is not a valid boolean.")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a valid integer.")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(value if isinstance(value, int) else str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a valid integer.") from None


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a valid float.")
    try:
        result = float(value if isinstance(value, (int, float)) else str(value).strip())
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a valid float.") from None
    if not math.isfinite(result):
        raise ValueError(f"{str(value).strip()} is not a finite number; give one")
    return result


def _check_bounds(bounds: tuple[float | None, float | None] | None, value: float) -> None:
    if bounds is None:
        return
    low, high = bounds
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            described = f"{low}<=x<={high}"
        else:
            described = f"x>={low}" if low is not None else f"x<={high}"
        raise ValueError(f"{value} is not in the range {described}.")


def _choice(spec: Spec, value: str) -> str:
    for choice in spec.choices or ():
        if value == choice or (not spec.case_sensitive and value.lower() == choice.lower()):
            return choice
    raise ValueError(f"{value!r} is not one of {', '.join(map(repr, spec.choices or ()))}.")
