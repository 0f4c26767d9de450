"""Graph + runtime config -> QuantPlan: which tensors get a quantizer, with which settings.

The rules follow AIMET's QuantSim for ONNX:

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

from dataclasses import dataclass, field

import onnx_ir as ir

from qtool.config import MixedRangeRule, OpTypeSettings, QuantizerSettings, RuntimeConfig
from qtool.errors import QtoolError
from qtool.graph import constant_array, graph_inputs, is_float, node_label, value_by_name
from qtool.overrides import Override, apply_overrides
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


@dataclass(frozen=True)
class PlanOptions:
    """Command-line choices that override the config (None: keep what the config says)."""

    act_bw: int | None = None
    param_bw: int | None = None
    per_channel: bool | None = None
    param_symmetric: bool | None = None
    overrides: tuple[Override, ...] = ()  # from --overrides, applied after the config's own


@dataclass(frozen=True)
class TensorPlan:
    """One planned quantizer."""

    name: str
    kind: str  # "activation" or "param"
    role: str  # input / output / weight / bias
    spec: QuantSpec
    node: str  # the first node that produces or consumes it, for messages
    fixed_range: tuple[float, float] | None = None  # encoding_constraints: no calibration needed


@dataclass
class QuantPlan:
    activations: dict[str, TensorPlan] = field(default_factory=dict)
    params: dict[str, TensorPlan] = field(default_factory=dict)
    fused: list[str] = field(default_factory=list)  # outputs left unquantized inside supergroups
    mixed_ranges: MixedRangeRule = MixedRangeRule()  # applied by calibrate, once ranges are known

    def all(self) -> dict[str, TensorPlan]:
        return {**self.activations, **self.params}


def _per_channel_axis(node: ir.Node, index: int, ndim: int) -> int | None:
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


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def _decomposed_layer_norm_internals(model: ir.Model) -> set[str]:
    """Inner tensors of LayerNormalization written out as ops (exporters before opset 17 do):
    ReduceMean -> Sub -> Pow -> ReduceMean -> Add(eps) -> Sqrt -> Div [-> Mul(gamma) -> Add(beta)].

    Targets run it as one op, as onnx does since opset 17, so only its output is quantized. The
    inner tensors are also the fragile ones: a variance quantized on a grid sized for its largest
    value rounds small variances to 0, and the division by sqrt(eps) then explodes (PP-OCRv4:
    5 points of character accuracy swing between two calibration sets).
    """
    inner: set[str] = set()
    for sqrt in model.graph:
        if sqrt.op_type != "Sqrt":
            continue
        add = _producer(sqrt.inputs[0], "Add")
        variance = _producer(add.inputs[0], "ReduceMean") if add else None
        power = _producer(variance.inputs[0], "Pow") if variance else None
        centred = _producer(power.inputs[0], "Sub") if power else None
        mean = _producer(centred.inputs[1], "ReduceMean") if centred else None
        divide = sqrt.outputs[0].consumers()
        if mean is None or len(divide) != 1 or divide[0].op_type != "Div" or divide[0].inputs[0] is not centred.outputs[0]:
            continue
        chain = [mean, centred, power, variance, add, sqrt]
        tail = divide[0]
        for op_type in ("Mul", "Add"):  # the affine part, when it follows alone
            consumers = tail.outputs[0].consumers()
            if len(consumers) != 1 or consumers[0].op_type != op_type or tail.outputs[0].is_graph_output():
                break
            chain.append(tail)
            tail = consumers[0]
        inner.update(node.outputs[0].name for node in chain)
    return inner


def _scalar(value: ir.Value | None) -> float | None:
    array = constant_array(value)
    return float(array.reshape(-1)[0]) if array is not None and array.size == 1 else None


def _only_consumer(node: ir.Node, op_types: tuple[str, ...]) -> ir.Node | None:
    out = node.outputs[0]
    consumers = out.consumers()
    if out.is_graph_output() or len(consumers) != 1 or consumers[0].op_type not in op_types:
        return None
    return consumers[0]


def _clip_range(node: ir.Node) -> tuple[float | None, float | None]:
    if len(node.inputs) > 1:  # opset 11+: bounds are inputs
        return (_scalar(node.inputs[1]), _scalar(node.inputs[2]) if len(node.inputs) > 2 else None)
    low, high = node.attributes.get("min"), node.attributes.get("max")
    return (low.as_float() if low is not None else None, high.as_float() if high is not None else None)


def _clipped_offsets(model: ir.Model) -> set[str]:
    """x + 3 in hard-swish / hard-sigmoid written out as ops (x * Clip(x + 3, 0, 6) / 6, as
    PaddlePaddle exports them), when its only use is that Clip. A quantizer there spans the whole
    range of x + 3 (-20..40 in PP-OCRv4) and rounds away the resolution of [0, 6], the only part
    the Clip passes, before the Clip's own quantizer can keep it: Add and Clip act as one op, like
    the Conv+Clip supergroup. onnxruntime's quantize_static leaves it unquantized too. PP-OCRv4,
    min-max ranges, per-channel: 85.3% -> 90.1% characters (quantize_static: 90.5%)."""
    offsets: set[str] = set()
    for add in model.graph:
        if add.op_type != "Add" or len(add.inputs) != 2 or 3.0 not in (_scalar(v) for v in add.inputs):
            continue
        clip = _only_consumer(add, ("Clip",))
        if clip is not None and _clip_range(clip) == (0.0, 6.0):
            offsets.add(add.outputs[0].name)
    return offsets


def _bounded_relus(model: ir.Model) -> set[str]:
    """Relu outputs whose only use is a Min against a constant: `equalize --relu6 bound` writes a
    ReLU6 whose bound became per channel (6 / s) that way, since Clip takes scalar bounds only.
    The pair is one clipped activation, as Clip(0, 6) was: a quantizer between them would span
    the unbounded ReLU range and round away the resolution the Min keeps (EfficientNet-Lite0,
    per-tensor W8A8 after CLE: activations-only SQNR 11.1 dB with it)."""
    bounded: set[str] = set()
    for relu in model.graph:
        minimum = _only_consumer(relu, ("Min",)) if relu.op_type == "Relu" else None
        if minimum is not None and len(minimum.inputs) == 2 and any(
                v is not None and constant_array(v) is not None for v in minimum.inputs):
            bounded.add(relu.outputs[0].name)
    return bounded


def build_plan(model: ir.Model, config: RuntimeConfig, options: PlanOptions = PlanOptions()) -> QuantPlan:
    """Decide every quantizer of the model. Pure: reads the graph, changes nothing."""
    plan = QuantPlan(mixed_ranges=config.mixed_ranges)
    fused = (_fused_outputs(model, config) | _decomposed_layer_norm_internals(model)
             | _clipped_offsets(model) | _bounded_relus(model))
    plan.fused = sorted(fused)
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
        if _is_quantizing(settings):
            plan.activations[value.name] = TensorPlan(value.name, "activation", role, _spec(settings, config, None), where, fixed)

    for value in graph_inputs(model):
        if config.model_input_quantized:
            add_activation(value, "input", config.ops, "model input")

    for node in model.graph:
        if node.op_type in QDQ_OPS:
            raise QtoolError(
                f"{model.meta.get('qtool.source', 'model')}: already contains {node.op_type} nodes "
                f"({node.name or node.outputs[0].name})",
                "give qtool the float model, not a quantized one",
            )
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
        _plan_params(node, op, config, param_override, options, plan)
    overrides = config.overrides + options.overrides
    if overrides:
        values = value_by_name(model)
        apply_overrides(plan, overrides, quantizer_nodes(model, plan),
                        lambda name: param_axis(values[name], default=None))
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
