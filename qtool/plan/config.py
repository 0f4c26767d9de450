"""AIMET runtime config -> RuntimeConfig -> (with the graph) a QuantPlan.

The runtime config file (white paper 3.4) has six sections, from general to specific:
``defaults`` (ops / params / strict_symmetric / unsigned_symmetric / per_channel_quantization),
``params`` (per parameter type: weight, bias), ``op_type`` (per ONNX op type), ``supergroups``
(op sequences fused on target: no quantizer between them), ``model_input``, ``model_output``.
Booleans may be AIMET's strings "True"/"False" or JSON booleans. Every key and value of
aimet-onnx 2.x's schema (``quantsim_config_schema.py``) is accepted, so each config AIMET ships
loads; a key the schema does not allow is an error, never silently ignored (the counter-example is
onnxruntime's extra_options). As in AIMET, op type and parameter names are free strings: one the
model does not have (``ChannelShuffle``, BatchNormalization's ``running_mean``) matches nothing.
``supergroup_pass_list`` and ``hw_version`` are applied as aimet applies them under placement
"aimet"; what qtool reads but does not act on is listed by not_applied.py (``qtool info --config``).

qtool extensions, documented in docs/config.md: ``bitwidth`` and ``dtype`` ("int"/"float") inside
``defaults.ops``, ``defaults.params``, ``params.*`` and ``op_type.*`` (AIMET passes bit-widths
as QuantSim arguments instead), so a target (W8A16, W4A8) is one file; and ``overrides``, a
list of per-tensor/per-node decisions (overrides.py); and ``placement``: "aimet" (the default, for
any config that does not say: quantizers where aimet-onnx puts them, plan/aimet_plan.py; keys left
out take aimet's defaults, qtool's own ``patterns`` and ``mixed_ranges`` rules are off) or "qtool"
(qtool's rules, plan/build.py; every built-in config says so).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from qtool.errors import QtoolError
from qtool.files.input_text import load_json
from qtool.plan.overrides import Override, parse_overrides

BUILTIN_CONFIGS = ("default", "w8a8-per-channel", "w8a16", "w4a8", "fp16", "w4a16", "w4-weight-only")

_SECTIONS = {"defaults", "params", "op_type", "supergroups", "supergroup_pass_list", "model_input", "model_output",
             "overrides", "mixed_ranges", "patterns", "placement"}
# "aimet": quantizers where aimet-onnx's QuantizationSimModel puts them (plan/aimet_plan.py), qtool's own
# rules off unless the config turns them on; "qtool": qtool's placement (plan/build.py) and rules
PLACEMENTS = ("aimet", "qtool")
_DEFAULT_KEYS = {"ops", "params", "strict_symmetric", "unsigned_symmetric", "per_channel_quantization",
                 "hw_version", "supported_kernels"}
_OP_KEYS = {"is_output_quantized", "is_input_quantized", "is_symmetric", "bitwidth", "dtype", "supported_kernels"}
_PARAM_KEYS = {"is_quantized", "is_symmetric", "bitwidth", "dtype"}
_OP_TYPE_KEYS = _OP_KEYS | {"per_channel_quantization", "params", "encoding_constraints"}
# aimet-onnx 2.42.0's graph passes (graph_passes/pass_registry.py); aimet refuses any other name
SUPERGROUP_PASSES = ("LayerNormalization", "RMSNormalization", "MatmulAdd", "MaskedSoftmax")


@dataclass(frozen=True)
class QuantizerSettings:
    """Settings of one kind of quantizer; None means 'inherit from the less specific section'."""

    enabled: bool | None = None
    symmetric: bool | None = None
    bitwidth: int | None = None
    dtype: str | None = None

    def over(self, base: QuantizerSettings) -> QuantizerSettings:
        """These settings with the gaps filled from `base`."""
        pick = lambda mine, theirs: theirs if mine is None else mine  # noqa: E731
        return QuantizerSettings(
            pick(self.enabled, base.enabled),
            pick(self.symmetric, base.symmetric),
            pick(self.bitwidth, base.bitwidth),
            pick(self.dtype, base.dtype),
        )


MIXED_RANGE_ACTIONS = ("float", "16", "keep")


@dataclass(frozen=True)
class MixedRangeRule:
    """When a joined tensor counts as mixed, and what its quantizer becomes.

    ``max_lost_bits``: 4 keeps every part at 4 or more of 8 bits. Measured (min-max ranges, 16
    samples each): the Concats of PicoDet's neck and head lose 0.1-0.8 bits, the CRNN captcha
    reader's 0.4-0.5, PP-OCRv4's FPN 1.9 and recogniser 2.2, ViT-S's CLS token against the patch
    embeddings 3.6, and a YOLO box/score output 8.3: 4 separates the one failure from the rest."""

    enabled: bool = True
    max_lost_bits: float = 4.0
    at_output: str = "float"
    inside: str = "16"

    def __post_init__(self) -> None:
        for key in ("at_output", "inside"):
            if getattr(self, key) not in MIXED_RANGE_ACTIONS:
                raise ValueError(f"{key} must be one of {', '.join(MIXED_RANGE_ACTIONS)}, not {getattr(self, key)!r}")
        if not self.max_lost_bits > 0:
            raise ValueError(f"max_lost_bits must be positive, not {self.max_lost_bits!r}")


@dataclass(frozen=True)
class PatternRules:
    """Graph-pattern placement rules (plan_patterns.py), the ``patterns`` section of a config."""

    pointwise_functions: bool = True  # quantize a written-out GELU/SiLU/hard-swish only at its result
    attention_mask: bool = True  # leave the additive mask and the masked scores unquantized
    layer_norm_input_bw: int | None = 16  # residual sums into a LayerNorm (None: as other activations)
    layer_norm_output_bw: int | None = 16  # what comes out of a LayerNorm (None: as other activations)


@dataclass(frozen=True)
class OpTypeSettings:
    output: QuantizerSettings = QuantizerSettings()
    input_quantized: bool | None = None
    per_channel: bool | None = None
    params: dict[str, QuantizerSettings] = field(default_factory=dict)
    encoding_constraints: tuple[float | None, float | None] | None = None  # (min, max); None: from calibration


@dataclass(frozen=True)
class RuntimeConfig:
    """A validated runtime config; `source` names the file for error messages."""

    source: str
    ops: QuantizerSettings
    params: QuantizerSettings
    param_types: dict[str, QuantizerSettings]
    strict_symmetric: bool
    unsigned_symmetric: bool
    per_channel: bool
    op_types: dict[str, OpTypeSettings]
    supergroups: tuple[tuple[str, ...], ...]
    model_input_quantized: bool
    model_output_quantized: bool | None
    overrides: tuple[Override, ...] = ()  # qtool extension: per-tensor/per-node decisions (overrides.py)
    mixed_ranges: MixedRangeRule = MixedRangeRule()  # qtool extension: steps/mixed_ranges.py
    patterns: PatternRules = PatternRules()  # qtool extension: plan_patterns.py
    supergroup_passes: tuple[str, ...] = ()  # aimet's graph passes (applied under placement "aimet")
    hw_version: str | None = None  # aimet's exception rules per target (applied under placement "aimet")
    placement: str = "aimet"  # qtool extension: "aimet" (as aimet-onnx) or "qtool" (qtool's own rules)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def _fail(source: str, where: str, problem: str, hint: str | None = None) -> QtoolError:
    return QtoolError(f"{source}: {where}: {problem}", hint)


def _bool(value: Any, source: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("True", "False", "true", "false"):
        return value.lower() == "true"
    raise _fail(source, where, f"expected True/False, got {value!r}")


def _check_keys(section: dict, allowed: set[str], source: str, where: str) -> None:
    if not isinstance(section, dict):
        raise _fail(source, where, f"expected an object, got {type(section).__name__}")
    unknown = sorted(map(str, set(section) - allowed))
    if unknown:
        raise _fail(source, where, f"unknown key {unknown[0]!r}", f"valid keys: {', '.join(sorted(allowed))}")


def _quantizer(section: dict, source: str, where: str, enabled_key: str) -> QuantizerSettings:
    bitwidth = section.get("bitwidth")
    if bitwidth is not None and (not isinstance(bitwidth, int) or isinstance(bitwidth, bool)
                                 or not (2 <= bitwidth <= 16 or bitwidth == 32)):
        raise _fail(source, f"{where}.bitwidth", f"expected an integer 2..16 (or 32: not quantized), got {bitwidth!r}")
    dtype = section.get("dtype")
    if dtype is not None and dtype not in ("int", "float"):
        raise _fail(source, f"{where}.dtype", f"expected 'int' or 'float', got {dtype!r}")
    if dtype == "float" and bitwidth is not None and bitwidth not in (16, 32):
        raise _fail(source, f"{where}.bitwidth", f"float quantizers are 16 or 32 bits, got {bitwidth}")
    return QuantizerSettings(
        enabled=_bool(section[enabled_key], source, f"{where}.{enabled_key}") if enabled_key in section else None,
        symmetric=_bool(section["is_symmetric"], source, f"{where}.is_symmetric") if "is_symmetric" in section else None,
        bitwidth=bitwidth,
        dtype=dtype,
    )


def _constraints(section: Any, source: str, where: str) -> tuple[float | None, float | None]:
    """A fixed {min, max} range, min < max; one end alone (AIMET's HTP configs: Relu {"min": 0})
    fixes that end and leaves the other to calibration, as aimet's set_fixed_encoding_range does."""
    _check_keys(section, {"min", "max"}, source, where)
    if not section:
        raise _fail(source, where, "empty", "give min, max or both")
    for key in ("min", "max"):
        if key not in section:
            continue
        if not isinstance(section[key], (int, float)) or isinstance(section[key], bool):
            raise _fail(source, f"{where}.{key}", f"expected a number, got {section[key]!r}")
        if not math.isfinite(section[key]):
            raise _fail(source, f"{where}.{key}", f"{section[key]!r} is not a finite number",
                        "a fixed range has finite ends; leave the tensor unconstrained instead")
    low, high = (float(section[key]) if key in section else None for key in ("min", "max"))
    if low is not None and high is not None and not low < high:
        raise _fail(source, where, f"min {section['min']} is not below max {section['max']}")
    return low, high


def _section(doc: dict, key: str, kind: type, source: str) -> Any:
    """A top-level section, checked to be an object (or a list for supergroups)."""
    value = doc.get(key, kind())
    if not isinstance(value, kind):
        expected = "a list" if kind is list else "an object"
        raise _fail(source, key, f"expected {expected}, got {type(value).__name__}")
    return value


def _name(value: Any, source: str, where: str, what: str) -> str:
    """An op type or parameter name: any non-empty string, as in AIMET's schema."""
    if not isinstance(value, str) or not value:
        raise _fail(source, where, f"expected {what} (a non-empty string), got {value!r}")
    return value


def _pass_list(value: Any, source: str) -> tuple[str, ...]:
    """``supergroup_pass_list``: names of aimet's graph passes; aimet itself refuses others."""
    if not isinstance(value, list):
        raise _fail(source, "supergroup_pass_list", f"expected a list, got {type(value).__name__}")
    for index, name in enumerate(value):
        if name not in SUPERGROUP_PASSES:
            raise _fail(source, f"supergroup_pass_list[{index}]", f"unknown graph pass {name!r}",
                        f"valid: {', '.join(SUPERGROUP_PASSES)}")
    return tuple(value)


def _mixed_ranges(section: Any, source: str, enabled: bool) -> MixedRangeRule:
    """The ``mixed_ranges`` section: {"enabled", "max_lost_bits", "at_output", "inside"};
    `enabled` is the default (off under placement "aimet": aimet gives a Concat one grid)."""
    if not isinstance(section, dict):
        raise _fail(source, "mixed_ranges", "expected an object")
    _check_keys(section, {"enabled", "max_lost_bits", "at_output", "inside"}, source, "mixed_ranges")
    fields: dict[str, Any] = {"enabled": enabled}
    if "enabled" in section:
        fields["enabled"] = _bool(section["enabled"], source, "mixed_ranges.enabled")
    if "max_lost_bits" in section:
        bits = section["max_lost_bits"]
        if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not 0 < bits < 32:
            raise _fail(source, "mixed_ranges.max_lost_bits", f"expected a number of bits in (0, 32), got {bits!r}")
        fields["max_lost_bits"] = float(bits)
    for key in ("at_output", "inside"):
        if key in section:
            value = str(section[key])
            if value not in MIXED_RANGE_ACTIONS:
                raise _fail(source, f"mixed_ranges.{key}", f"unknown action {section[key]!r}",
                            f"valid: {', '.join(MIXED_RANGE_ACTIONS)}")
            fields[key] = value
    return MixedRangeRule(**fields)


PATTERNS_OFF = PatternRules(pointwise_functions=False, attention_mask=False, layer_norm_input_bw=None,
                            layer_norm_output_bw=None)


def _patterns(section: Any, source: str, base: PatternRules) -> PatternRules:
    """The ``patterns`` section: two switches and two bit-widths (PatternRules); what it does not
    say comes from `base` (qtool's rules under placement "qtool", all off under "aimet")."""
    if not isinstance(section, dict):
        raise _fail(source, "patterns", "expected an object")
    widths = ("layer_norm_input_bw", "layer_norm_output_bw")
    _check_keys(section, {"pointwise_functions", "attention_mask", *widths}, source, "patterns")
    fields: dict[str, Any] = {key: _bool(section[key], source, f"patterns.{key}") if key in section
                              else getattr(base, key) for key in ("pointwise_functions", "attention_mask")}
    for key in widths:
        bw = section.get(key, getattr(base, key))
        if bw is not None and (isinstance(bw, bool) or not isinstance(bw, int) or not 2 <= bw <= 16):
            raise _fail(source, f"patterns.{key}", f"expected a bit-width 2..16 or null, got {bw!r}")
        fields[key] = bw
    return PatternRules(**fields)


def _placement(value: Any, source: str) -> str:
    if value not in PLACEMENTS:
        raise _fail(source, "placement", f"expected one of {', '.join(map(repr, PLACEMENTS))}, got {value!r}",
                    "\"aimet\": where aimet-onnx places quantizers; \"qtool\": qtool's own rules (docs/config.md)")
    return value


def _hw_version(value: Any, source: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail(source, "defaults.hw_version", f"expected a string such as \"V73\", got {value!r}")
    return value


def parse_config(doc: Any, source: str = "<config>") -> RuntimeConfig:
    """Validate an AIMET runtime config dict and resolve it into a RuntimeConfig."""
    _check_keys(doc, _SECTIONS, source, "top level")
    defaults = _section(doc, "defaults", dict, source)
    _check_keys(defaults, _DEFAULT_KEYS, source, "defaults")
    ops_section = defaults.get("ops", {})
    _check_keys(ops_section, _OP_KEYS, source, "defaults.ops")
    params_section = defaults.get("params", {})
    _check_keys(params_section, _PARAM_KEYS, source, "defaults.params")
    ops = _quantizer(ops_section, source, "defaults.ops", "is_output_quantized").over(
        QuantizerSettings(enabled=True, symmetric=False, bitwidth=8, dtype="int"))
    placement = _placement(doc.get("placement", "aimet"), source)
    # weights are symmetric unless the config says otherwise; aimet's quantizers start asymmetric
    params = _quantizer(params_section, source, "defaults.params", "is_quantized").over(
        QuantizerSettings(enabled=True, symmetric=placement == "qtool", bitwidth=8, dtype="int"))

    param_types = {}
    for name, section in _section(doc, "params", dict, source).items():
        _name(name, source, "params", "a parameter type")
        _check_keys(section, _PARAM_KEYS, source, f"params.{name}")
        param_types[name] = _quantizer(section, source, f"params.{name}", "is_quantized")

    op_types = {}
    for op, section in _section(doc, "op_type", dict, source).items():
        _name(op, source, "op_type", "an op type")
        _check_keys(section, _OP_TYPE_KEYS, source, f"op_type.{op}")
        op_params = {}
        for pname, psection in _section(section, "params", dict, f"{source}: op_type.{op}").items():
            _name(pname, source, f"op_type.{op}.params", "a parameter type")
            _check_keys(psection, _PARAM_KEYS, source, f"op_type.{op}.params.{pname}")
            op_params[pname] = _quantizer(psection, source, f"op_type.{op}.params.{pname}", "is_quantized")
        constraints = section.get("encoding_constraints")
        if constraints is not None:
            constraints = _constraints(constraints, source, f"op_type.{op}.encoding_constraints")
        where = f"op_type.{op}"
        op_types[op] = OpTypeSettings(
            output=_quantizer(section, source, where, "is_output_quantized"),
            input_quantized=_bool(section["is_input_quantized"], source, f"{where}.is_input_quantized")
            if "is_input_quantized" in section else None,
            per_channel=_bool(section["per_channel_quantization"], source, f"{where}.per_channel_quantization")
            if "per_channel_quantization" in section else None,
            params=op_params,
            encoding_constraints=constraints,
        )

    supergroups = []
    for index, group in enumerate(_section(doc, "supergroups", list, source)):
        _check_keys(group, {"op_list"}, source, f"supergroups[{index}]")
        op_list = group.get("op_list")
        if not isinstance(op_list, list) or len(op_list) < 2:
            raise _fail(source, f"supergroups[{index}].op_list", "expected a list of at least two op types")
        for op in op_list:
            _name(op, source, f"supergroups[{index}].op_list", "an op type")
        supergroups.append(tuple(op_list))

    model_input = _section(doc, "model_input", dict, source)
    _check_keys(model_input, {"is_input_quantized"}, source, "model_input")
    model_output = _section(doc, "model_output", dict, source)
    _check_keys(model_output, {"is_output_quantized"}, source, "model_output")
    return RuntimeConfig(
        source=source,
        ops=ops,
        params=params,
        param_types=param_types,
        strict_symmetric=_bool(defaults.get("strict_symmetric", False), source, "defaults.strict_symmetric"),
        unsigned_symmetric=_bool(defaults.get("unsigned_symmetric", False), source, "defaults.unsigned_symmetric"),
        per_channel=_bool(defaults.get("per_channel_quantization", False), source, "defaults.per_channel_quantization"),
        op_types=op_types,
        supergroups=tuple(supergroups),
        model_input_quantized=_bool(model_input.get("is_input_quantized", True), source, "model_input.is_input_quantized"),
        model_output_quantized=_bool(model_output["is_output_quantized"], source, "model_output.is_output_quantized")
        if "is_output_quantized" in model_output else None,
        overrides=parse_overrides(doc.get("overrides"), source),
        mixed_ranges=_mixed_ranges(doc.get("mixed_ranges", {}), source, placement == "qtool"),
        patterns=_patterns(doc.get("patterns", {}), source, PatternRules() if placement == "qtool" else PATTERNS_OFF),
        supergroup_passes=_pass_list(doc.get("supergroup_pass_list", []), source),
        hw_version=_hw_version(defaults.get("hw_version"), source),
        placement=placement,
        raw=doc,
    )


def load_config(name_or_path: str | os.PathLike | None) -> RuntimeConfig:
    """A built-in target by name (see BUILTIN_CONFIGS) or an AIMET runtime config JSON file,
    read strictly (qtool.files.input_text: no folder, NaN, duplicate keys or binary files)."""
    name = str(name_or_path or "default")
    if name in BUILTIN_CONFIGS:
        text = resources.files("qtool.configs").joinpath(f"{name}.json").read_text()
        return parse_config(json.loads(text), f"config '{name}'")
    path = Path(name)
    if not path.exists():
        raise QtoolError(f"{path}: no such config file", f"give a JSON file or one of: {', '.join(BUILTIN_CONFIGS)}")
    return parse_config(load_json(path, "config file"), str(path))
