"""Per-tensor and per-node overrides of the quantization plan (qtool extension of the runtime config).

AIMET's runtime config speaks in op types; a debugging flow ends in decisions about single
layers ("keep Conv_12's weights at 16 bits", "do not quantize this Softmax output"). Overrides
say those, in the config's ``overrides`` list or a separate file (`--overrides`), applied in
order after everything else (the command line's --param-bw/--act-bw included), so the most
specific decision wins:

    {"overrides": [
        {"nodes": "Conv_1*", "role": "weight", "bitwidth": 16},
        {"tensors": ["softmax_out", "sigmoid_*"], "encoding_constraints": {"min": 0, "max": 1}},
        {"tensors": "logits", "exclude": true, "comment": "analyze: costs 4 points alone"}
    ]}

Selectors: ``tensors`` (quantizer names) and/or ``nodes`` (node names; a node selects its output
quantizers and its parameters), each a name, a glob or a list; ``kind`` (activation/param) and
``role`` (input/output/weight/bias) narrow them. Settings: ``bitwidth``, ``dtype``,
``is_symmetric``, ``per_channel`` (weights), ``exclude`` and ``encoding_constraints``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtool.errors import QtoolError
from qtool.files.input_text import load_json

log = logging.getLogger("qtool")

_KEYS = {"tensors", "nodes", "kind", "role", "bitwidth", "dtype", "is_symmetric", "per_channel", "exclude",
         "encoding_constraints", "comment"}
_KINDS = ("activation", "param")
_ROLES = ("input", "output", "weight", "bias")


@dataclass(frozen=True)
class Override:
    where: str  # "file.json: overrides[2]", for messages
    tensors: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    kind: str | None = None
    role: str | None = None
    bitwidth: int | None = None
    dtype: str | None = None
    symmetric: bool | None = None
    per_channel: bool | None = None
    exclude: bool | None = None
    encoding_constraints: tuple[float, float] | None = None


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise QtoolError(f"{where}: expected a name, a glob or a list of them, got {value!r}")


def _typed(entry: dict, key: str, kind: type | tuple, where: str) -> Any:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, str) and kind is bool and value in ("True", "False", "true", "false"):
        return value.lower() == "true"  # AIMET configs write booleans as strings
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise QtoolError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _constraints(value: Any, where: str) -> tuple[float, float] | None:
    """{"min": a, "max": b}, finite numbers with a < b (an infinite end makes the grid's scale infinite)."""
    if value is None:
        return None
    if not (isinstance(value, dict) and set(value) == {"min", "max"}
            and all(isinstance(value[k], (int, float)) and not isinstance(value[k], bool) and math.isfinite(value[k])
                    for k in ("min", "max")) and value["min"] < value["max"]):
        raise QtoolError(f"{where}.encoding_constraints: expected {{\"min\": a, \"max\": b}} (finite numbers) with a < b, "
                         f"got {value!r}")
    return float(value["min"]), float(value["max"])


def parse_overrides(entries: Any, source: str) -> tuple[Override, ...]:
    """Validate the ``overrides`` list of a config or overrides file."""
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise QtoolError(f"{source}: overrides: expected a list of objects, got {type(entries).__name__}")
    parsed = []
    for index, entry in enumerate(entries):
        where = f"{source}: overrides[{index}]"
        if not isinstance(entry, dict):
            raise QtoolError(f"{where}: expected an object, got {entry!r}")
        unknown = sorted(map(str, set(entry) - _KEYS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(_KEYS), n=1)
            raise QtoolError(f"{where}: unknown key {unknown[0]!r}",
                             f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(_KEYS))}")
        tensors, nodes = _names(entry.get("tensors"), f"{where}.tensors"), _names(entry.get("nodes"), f"{where}.nodes")
        if not tensors and not nodes:
            raise QtoolError(f"{where}: says which quantizers it changes with 'tensors' or 'nodes'")
        kind, role, dtype = entry.get("kind"), entry.get("role"), entry.get("dtype")
        for key, value, allowed in (("kind", kind, _KINDS), ("role", role, _ROLES), ("dtype", dtype, ("int", "float"))):
            if value is not None and value not in allowed:
                raise QtoolError(f"{where}.{key}: expected one of {', '.join(allowed)}, got {value!r}")
        bitwidth = _typed(entry, "bitwidth", int, where)
        if bitwidth is not None and not (2 <= bitwidth <= 16 or bitwidth == 32):
            raise QtoolError(f"{where}.bitwidth: expected 2..16 (or 32: not quantized), got {bitwidth}")
        constraints = _constraints(entry.get("encoding_constraints"), where)
        parsed.append(Override(where, tensors, nodes, kind, role, bitwidth, dtype,
                               _typed(entry, "is_symmetric", bool, where), _typed(entry, "per_channel", bool, where),
                               _typed(entry, "exclude", bool, where), constraints))
    return tuple(parsed)


def load_overrides(path: str | os.PathLike) -> tuple[Override, ...]:
    """An overrides file: {"overrides": [...]} (what analyze and mixed-precision write) or a bare list,
    read strictly (qtool.files.input_text: no folder, NaN, duplicate keys or binary files)."""
    path = Path(path)
    doc = load_json(path, "overrides file")
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"overrides", "comment", "metric", "source"})
        if unknown:
            raise QtoolError(f"{path}: unknown key {unknown[0]!r}", "an overrides file holds an 'overrides' list")
        doc = doc.get("overrides", [])
    return parse_overrides(doc, str(path))


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def selected(override: Override, plan: Any, node_names: dict[str, set[str]]) -> list[str]:
    """Names of the plan's quantizers the override selects. `node_names` maps each quantizer to
    the names of the nodes that produce it (activations) or consume it (parameters)."""
    chosen = []
    for name, tensor in plan.all().items():
        if override.kind and tensor.kind != override.kind or override.role and tensor.role != override.role:
            continue
        by_tensor = bool(override.tensors) and _matches(name, override.tensors)
        by_node = bool(override.nodes) and any(_matches(node, override.nodes) for node in node_names.get(name, ()))
        if by_tensor or by_node:
            chosen.append(name)
    return chosen


def _check_exact_names(override: Override, plan: Any, node_names: dict[str, set[str]]) -> None:
    """A plain name (no glob characters) that selects nothing is a typo, not a no-op."""
    all_nodes = sorted(set().union(*node_names.values())) if node_names else []
    for patterns, known, what in ((override.tensors, sorted(plan.all()), "quantizer"), (override.nodes, all_nodes, "node")):
        for pattern in patterns:
            if any(ch in pattern for ch in "*?[") or pattern in known:
                continue
            close = difflib.get_close_matches(pattern, known, n=1)
            raise QtoolError(f"{override.where}: no {what} named {pattern!r} in the plan",
                             f"did you mean {close[0]!r}?" if close else "qtool info MODEL lists the quantizers")


def apply_overrides(plan: Any, overrides: tuple[Override, ...], node_names: dict[str, set[str]],
                    channel_axis: Any) -> None:
    """Change `plan` (a QuantPlan) in place. `channel_axis(name)` gives a weight's per-channel axis
    (None where the op has none)."""
    for override in overrides:
        _check_exact_names(override, plan, node_names)
        names = selected(override, plan, node_names)
        if not names:
            log.warning("%s selects no quantizer", override.where)
        for name in names:
            _apply_one(override, plan, name, channel_axis)


def _apply_one(override: Override, plan: Any, name: str, channel_axis: Any) -> None:
    table = plan.activations if name in plan.activations else plan.params
    tensor = table[name]
    if override.exclude or override.bitwidth == 32:
        del table[name]
        return
    changes: dict[str, Any] = {}
    if override.bitwidth is not None:
        changes["bw"] = override.bitwidth
    if override.dtype is not None:
        changes["dtype"] = override.dtype
        changes.setdefault("bw", 16 if override.dtype == "float" else tensor.spec.bw)
    if override.symmetric is not None:
        changes["symmetric"] = override.symmetric
    if override.per_channel is not None:
        if tensor.kind != "param":
            raise QtoolError(f"{override.where}: per_channel applies to weights, not to activation {name!r}",
                             "add \"kind\": \"param\" or \"role\": \"weight\"")
        axis = channel_axis(name) if override.per_channel else None
        if override.per_channel and axis is None:
            log.warning("%s: %s has no output-channel axis; left per-tensor", override.where, name)
        changes["axis"] = axis
    try:
        spec = dataclasses.replace(tensor.spec, **changes)
    except ValueError as exc:
        raise QtoolError(f"{override.where}: {name}: {exc}") from None
    fixed = override.encoding_constraints if override.encoding_constraints is not None else tensor.fixed_range
    if override.encoding_constraints is not None and tensor.kind != "activation":
        raise QtoolError(f"{override.where}: encoding_constraints apply to activations, not to parameter {name!r}")
    table[name] = dataclasses.replace(tensor, spec=spec, fixed_range=fixed)
