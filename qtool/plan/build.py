"""Graph + runtime config -> QuantPlan: which tensors get a quantizer, with which settings.

The config's ``placement`` chooses the rules: "aimet" (plan/aimet_plan.py: exactly what aimet-onnx's
QuantizationSimModel creates) or "qtool", below, the rules of qtool's built-in configs, close to
AIMET's but tuned where measurements said so (docs/config.md, "Placement"):

* every float op output gets an activation quantizer when its op type's ``is_output_quantized``
  says so, except inside a supergroup (e.g. Conv+Relu: the Conv output is never materialised
  on target, so only the Relu output is quantized);
* float model inputs get one when ``model_input.is_input_quantized``; ops with
  ``is_input_quantized`` quantize their non-constant float inputs too;
* constant float inputs that are weights or biases (by op type and input position, table
  PARAM_ROLES) get parameter quantizers; per-channel along the output-channel axis of
  Conv (0), ConvTranspose (1), Gemm (0 if transB else 1) and MatMul (last axis).
  Other constants (Clip bounds, Resize scales, BN statistics, Pow exponents) stay float: they
  are not data and quantizing them would change what the op computes.

A tensor has one quantizer whatever the number of its consumers: encodings are keyed by name.
"""

from __future__ import annotations

import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.ir.graph import constant_array, graph_inputs, is_float, node_label, value_by_name
from qtool.ir.hard_swish import hard_swish_fused
from qtool.plan.aimet_plan import build_aimet_plan
from qtool.plan.config import OpTypeSettings, QuantizerSettings, RuntimeConfig
from qtool.plan.overrides import apply_overrides
from qtool.plan.plan_types import PlanOptions, QuantPlan, TensorPlan
from qtool.ir.patterns import (attention_mask_tensors, bounded_relus, clipped_offsets,
                                 decomposed_layer_norm_internals, layer_norm_inputs, layer_norm_outputs,
                                 pointwise_internals)
from qtool.quant import QuantSpec

# op type -> {input index: parameter type}; a constant at another index is not a parameter.
PARAM_ROLES: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {0: "weight", 1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
    "BatchNormalization": {1: "weight", 2: "bias"},
    "PRelu": {1: "weight"},
    "Gather": {0: "weight"},
    "Mul": {0: "weight", 1: "weight"},
    "Div": {0: "weight", 1: "weight"},
    "Add": {0: "bias", 1: "bias"},
    "Sub": {0: "bias", 1: "bias"},
    "Concat": {},
}
# Ops that already are quantization: a model that holds them was quantized by another tool.
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def _per_channel_axis(node: ir.Node, index: int, ndim: int) -> int | None:
    if node.op_type == "Gather" and index == 0 and ndim == 2:
        return 1  # an embedding table [vocab, hidden]: one scale per hidden dimension, as MatMul's last axis
    if ndim < 2 or index != 1:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = node.attributes.get("transB")
        return 0 if trans_b is not None and trans_b.as_int() else 1
    if node.op_type == "MatMul":
        return ndim - 1
    return None


def _spec(settings: QuantizerSettings, config: RuntimeConfig, axis: int | None) -> QuantSpec:
    dtype = settings.dtype or "int"
    bw = settings.bitwidth or (16 if dtype == "float" else 8)
    try:
        return QuantSpec(bw=bw, dtype=dtype, symmetric=bool(settings.symmetric),
                         strict_symmetric=config.strict_symmetric, unsigned_symmetric=config.unsigned_symmetric,
                         axis=axis)
    except ValueError as exc:  # a combination no single section shows, e.g. dtype in defaults, bits in op_type
        raise QtoolError(f"{config.source}: {exc}") from exc


def _is_quantizing(settings: QuantizerSettings) -> bool:
    """Disabled, or 32-bit float, means no quantizer at all."""
    return bool(settings.enabled) and not (settings.dtype == "float" and (settings.bitwidth or 32) >= 32)


def _fused_outputs(model: ir.Model, config: RuntimeConfig) -> set[str]:
    """Outputs of every op but the last in each supergroup match: single-consumer chains."""
    fused: set[str] = set()
    for group in config.supergroups:
        for node in model.graph:
            if node.op_type != group[0]:
                continue
            chain, current = [], node
            for op_type in group[1:]:
                out = current.outputs[0]
                consumers = out.consumers()
                if out.is_graph_output() or len(consumers) != 1 or consumers[0].op_type != op_type:
                    break
                chain.append(out.name)
                current = consumers[0]
            else:
                fused.update(chain)
    return fused


def build_plan(model: ir.Model, config: RuntimeConfig, options: PlanOptions = PlanOptions()) -> QuantPlan:
    """Decide every quantizer of the model. Pure: reads the graph, changes nothing. The config's
    ``placement`` chooses aimet-onnx's rules (plan/aimet_plan.py) or qtool's (below); the
    overrides apply to either."""
    for node in model.graph:
        if node.op_type in QDQ_OPS:
            raise QtoolError(
                f"{model.meta.get('qtool.source', 'model')}: already contains {node.op_type} nodes "
                f"({node.name or node.outputs[0].name})",
                "give qtool the float model, not a quantized one",
            )
    plan = build_aimet_plan(model, config, options) if config.placement == "aimet" else _qtool_plan(model, config, options)
    overrides = config.overrides + options.overrides
    if overrides:
        values = value_by_name(model)
        apply_overrides(plan, overrides, quantizer_nodes(model, plan),
                        lambda name: param_axis(values[name], default=None))
        members = set(plan.all())
        plan.ties = [kept for kept in ([n for n in group if n in members] for group in plan.ties) if len(kept) > 1]
    return plan


def _qtool_plan(model: ir.Model, config: RuntimeConfig, options: PlanOptions) -> QuantPlan:
    """Placement "qtool": op-type rules plus qtool's pattern rules (module docstring)."""
    plan = QuantPlan(mixed_ranges=config.mixed_ranges)
    rules = config.patterns
    fused = (_fused_outputs(model, config) | decomposed_layer_norm_internals(model)
             | clipped_offsets(model) | bounded_relus(model))
    if rules.pointwise_functions:
        fused |= pointwise_internals(model) | hard_swish_fused(model)
    masked = attention_mask_tensors(model) if rules.attention_mask else set()
    widened = {name: rules.layer_norm_output_bw for name in layer_norm_outputs(model)} if rules.layer_norm_output_bw else {}
    if rules.layer_norm_input_bw:  # a residual sum can be a LayerNorm's output too: the inputs' rule then wins
        widened.update(dict.fromkeys(layer_norm_inputs(model), rules.layer_norm_input_bw))
    plan.fused, plan.masked = sorted(fused - masked), sorted(masked)
    fused |= masked
    # --act-bw/--param-bw ask for integer grids, whatever dtype the config had
    act_override = QuantizerSettings(bitwidth=options.act_bw, dtype="int" if options.act_bw else None)
    param_override = QuantizerSettings(symmetric=options.param_symmetric, bitwidth=options.param_bw,
                                       dtype="int" if options.param_bw else None)

    def op_settings(op_type: str) -> OpTypeSettings:
        return config.op_types.get(op_type, OpTypeSettings())

    def add_activation(value: ir.Value, role: str, settings: QuantizerSettings, where: str,
                       fixed: tuple[float, float] | None = None) -> None:
        if value.name in plan.activations or value.const_value is not None or not is_float(value):
            return
        settings = act_override.over(settings)
        if value.name in widened and settings.dtype == "int" and (settings.bitwidth or 8) < widened[value.name]:
            settings = QuantizerSettings(bitwidth=widened[value.name]).over(settings)
            plan.widened.append(value.name)
        if _is_quantizing(settings):
            plan.activations[value.name] = TensorPlan(value.name, "activation", role, _spec(settings, config, None), where, fixed)

    for value in graph_inputs(model):
        if config.model_input_quantized:
            add_activation(value, "input", config.ops, "model input")

    for node in model.graph:
        op = op_settings(node.op_type)
        op_out = op.output.over(config.ops)
        if op.input_quantized:
            for value in node.inputs:
                if value is not None and value.const_value is None:
                    add_activation(value, "input", op_out, node.name)
        for value in node.outputs:
            if value.name in fused:
                continue
            settings = op_out
            if value.is_graph_output() and config.model_output_quantized is not None:
                settings = QuantizerSettings(enabled=config.model_output_quantized).over(op_out)
            add_activation(value, "output", settings, node.name, op.encoding_constraints)
        if not (masked and all(v.name in masked for v in node.outputs)):  # a mask's -1e4 is no weight
            _plan_params(node, op, config, param_override, options, plan)
    return plan


def quantizer_nodes(model: ir.Model, plan: QuantPlan) -> dict[str, set[str]]:
    """Per quantizer, the nodes it belongs to: an activation's producer, a parameter's consumers;
    by name and by label (for unnamed nodes). Model inputs belong to no node."""
    owners: dict[str, set[str]] = {}
    for node in model.graph:
        labels = {node.name, node_label(node)} - {""}
        for value in node.outputs:
            if value.name in plan.activations:
                owners.setdefault(value.name, set()).update(labels)
        for value in node.inputs:
            if value is not None and value.name in plan.params:
                owners.setdefault(value.name, set()).update(labels)
    return owners


def _plan_params(node: ir.Node, op: OpTypeSettings, config: RuntimeConfig, override: QuantizerSettings,
                 options: PlanOptions, plan: QuantPlan) -> None:
    roles = PARAM_ROLES.get(node.op_type, {})
    for index, value in enumerate(node.inputs):
        if value is None or value.const_value is None or index not in roles or not is_float(value):
            continue
        if value.name in plan.params:
            continue
        role = roles[index]
        settings = override.over(
            op.params.get(role, QuantizerSettings()).over(config.param_types.get(role, QuantizerSettings()).over(config.params))
        )
        if not _is_quantizing(settings):
            continue
        ndim = len(value.const_value.shape)
        per_channel = options.per_channel if options.per_channel is not None else (
            op.per_channel if op.per_channel is not None else config.per_channel)
        axis = _per_channel_axis(node, index, ndim) if per_channel and role == "weight" else None
        plan.params[value.name] = TensorPlan(value.name, "param", role, _spec(settings, config, axis), node.name)



def param_axis(value: ir.Value, default: int | None = 0) -> int | None:
    """The per-channel axis of a parameter, from the op that consumes it (files do not store it)."""
    ndim = len(value.const_value.shape) if value.const_value is not None else 0
    for node in value.consumers():
        for index, inp in enumerate(node.inputs):
            if inp is value:
                axis = _per_channel_axis(node, index, ndim)
                if axis is not None:
                    return axis
    return default
