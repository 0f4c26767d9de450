"""The runtime config applied to aimet's quantizers, section by section (placement "aimet").

Mirrors ``QuantSimConfigurator.configure_quantizers`` (aimet_onnx/quantsim_config/
quantsim_config.py and common/quantsim_config/quantsim_config.py ``_set_quantsim_configs``):
everything starts disabled; then ``defaults`` (op outputs, symmetry of every op's inputs and
outputs; model inputs and constants off again; parameters), ``params`` (per parameter type),
``op_type`` (outputs of grid-preserving ops off unless the config names the type), ``supergroups``
(aimet_supergroups.py), ``model_input`` (model inputs and non-parameter constants),
``model_output`` (ops whose outputs nobody reads); then the bit-widths (QuantSim's
``param_type``/``activation_type``: here the config's ``bitwidth``/``dtype`` extension or
``--act-bw``/``--param-bw``) and per-channel quantization (``_generate_and_apply_op_instance_specific_config``:
*every* parameter of an op whose type is per-channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qtool.plan.aimet_graph import Graph, Op
from qtool.plan.aimet_tensors import Quantizer, op_params
from qtool.plan.config import OpTypeSettings, QuantizerSettings, RuntimeConfig

# common/onnx/_utils.py _is_grid_preserving_op (default domain): q(f(x)) == f(q(x))
GRID_PRESERVING = {"Col2Im", "Compress", "DepthToSpace", "Dropout", "Expand", "Flatten", "Gather", "GatherElements",
                   "GatherND", "Identity", "MaxPool", "MaxRoiPool", "NonZero", "Pad", "ReduceMax", "ReduceMin",
                   "Reshape", "Slice", "SpaceToDepth", "Split", "SplitToSequence", "Squeeze", "Tile", "TopK",
                   "Transpose", "Unsqueeze"}


def is_grid_preserving(op: Op) -> bool:
    return op.domain == "" and op.type in GRID_PRESERVING


@dataclass
class OpQuantizers:
    """``OpToQuantizers``: an op's activation quantizers on its inputs and outputs, and its params."""

    inputs: list[Quantizer] = field(default_factory=list)
    outputs: list[Quantizer] = field(default_factory=list)
    params: list[tuple[Quantizer, str]] = field(default_factory=list)  # (quantizer, parameter type)


def map_quantizers(graph: Graph, quantizers: dict[str, Quantizer]) -> dict[Op, OpQuantizers]:
    """``_map_quantizers_to_ops``: an input quantizer belongs to every op that reads the tensor."""
    mapped = {}
    for op in graph.ops:
        params = op_params(graph, op)
        entry = OpQuantizers()
        entry.inputs = [quantizers[n] for n in op.inputs if n in quantizers and n not in params
                        and quantizers[n].kind != "param"]
        entry.outputs = [quantizers[n] for n in op.outputs if n in quantizers]
        entry.params = [(quantizers[n], t) for n, t in params.items() if n in quantizers]
        mapped[op] = entry
    return mapped


def set_param(quantizer: Quantizer, settings: QuantizerSettings) -> None:
    """``_set_config_for_param``, and qtool's bitwidth/dtype extension keys."""
    if settings.enabled is not None:
        quantizer.enabled = settings.enabled
    if settings.symmetric is not None:
        quantizer.symmetric = settings.symmetric
    _set_precision([quantizer], settings)


def _set_precision(targets: list[Quantizer], settings: QuantizerSettings) -> None:
    for quantizer in targets:
        if settings.dtype is not None:
            quantizer.dtype = settings.dtype
            quantizer.bw = settings.bitwidth or (16 if settings.dtype == "float" else quantizer.bw)
        elif settings.bitwidth is not None:
            quantizer.bw = settings.bitwidth


def set_for_op(entry: OpQuantizers, output: QuantizerSettings, input_quantized: bool | None = None,
               constraints: tuple[float | None, float | None] | None = None,
               params: dict[str, QuantizerSettings] | None = None) -> None:
    """``_set_config_for_op``: is_input_quantized -> inputs, is_output_quantized -> outputs,
    is_symmetric -> inputs and outputs, encoding_constraints -> outputs (symmetric when
    min == -max), params -> the op's parameters of each type."""
    if input_quantized is not None:
        for quantizer in entry.inputs:
            quantizer.enabled = input_quantized
    if output.enabled is not None:
        for quantizer in entry.outputs:
            quantizer.enabled = output.enabled
    if output.symmetric is not None:
        for quantizer in entry.inputs + entry.outputs:
            quantizer.symmetric = output.symmetric
    _set_precision(entry.outputs, output)
    if input_quantized:
        _set_precision(entry.inputs, output)
    if constraints is not None:
        low, high = constraints
        for quantizer in entry.outputs:
            if low is not None and high is not None and abs(low + high) <= 1e-8 + 1e-5 * abs(high):
                quantizer.symmetric = True
            quantizer.fixed = (low, high)
    for quantizer, param_type in entry.params:
        if params and param_type in params:
            set_param(quantizer, params[param_type])


def _op_type(op: Op, settings: OpTypeSettings, entry: OpQuantizers) -> None:
    set_for_op(entry, settings.output, settings.input_quantized, settings.encoding_constraints, settings.params)


def configure(graph: Graph, quantizers: dict[str, Quantizer], config: RuntimeConfig,
              supergroups: list[list[Op]]) -> dict[Op, OpQuantizers]:
    """Apply the config's sections in aimet's order; `supergroups` are the matches of
    aimet_supergroups.py (each disables the outputs of all its ops but the last)."""
    mapped = map_quantizers(graph, quantizers)
    for quantizer in quantizers.values():  # QuantSim's param_type / activation_type
        _set_precision([quantizer], config.params if quantizer.kind == "param" else config.ops)
    # defaults
    for op in graph.ops:
        set_for_op(mapped[op], QuantizerSettings(config.ops.enabled, config.ops.symmetric))
    constants = [q for n, q in quantizers.items() if q.kind == "input"]
    for quantizer in constants:  # model inputs and non-parameter constants: model_input decides
        quantizer.enabled = False
    for quantizer in (q for q in quantizers.values() if q.kind == "param"):
        set_param(quantizer, QuantizerSettings(config.params.enabled, config.params.symmetric))
    # params, per parameter type
    for op in graph.ops:
        for quantizer, param_type in mapped[op].params:
            if param_type in config.param_types:
                set_param(quantizer, config.param_types[param_type])
    # op_type: grid-preserving ops the config does not name keep their outputs unquantized
    for op in graph.ops:
        if op.type in config.op_types:
            _op_type(op, config.op_types[op.type], mapped[op])
        elif is_grid_preserving(op):
            set_for_op(mapped[op], QuantizerSettings(enabled=False))
    for match in supergroups:
        for op in match[:-1]:
            for quantizer in mapped[op].outputs:
                quantizer.enabled = False
    for quantizer in constants:
        quantizer.enabled = config.model_input_quantized
    if config.model_output_quantized is not None:
        for op in graph.ops:
            if not graph.output_ops(op):
                set_for_op(mapped[op], QuantizerSettings(enabled=config.model_output_quantized))
    return mapped


def per_channel(graph: Graph, mapped: dict[Op, OpQuantizers], config: RuntimeConfig, forced: bool | None) -> None:
    """``_generate_and_apply_op_instance_specific_config``: every parameter of a per-channel op type
    (the op type's ``per_channel_quantization``, else the default's; `forced` from --per-channel)."""
    for op in graph.ops:
        flag = forced
        if flag is None:
            settings = config.op_types.get(op.type)
            flag = settings.per_channel if settings is not None and settings.per_channel is not None \
                else config.per_channel
        if flag:
            for quantizer, _ in mapped[op].params:
                quantizer.per_channel = True
