"""aimet-onnx's rules after the config (placement "aimet"): weight symmetry of dynamic weights and
the per-op exception rules, and the "effective quantizer" walk both use.

* ``walk`` / ``effective``: ``QuantizationSimModel._get_path_to_effective_quantizer`` /
  ``_get_enabled_quantizer`` (quantsim.py): the nearest enabled quantizer above a tensor, through
  grid-preserving ops, disabled quantizers and float-to-float Casts only.
* ``param_symmetry_to_inputs``: ``_apply_param_symmetry_to_inputs``: the input 1 of a Conv,
  ConvTranspose, Gemm or MatMul that is not a parameter (K and V of attention) gets the weight
  symmetry of the config, on its effective quantizer.
* ``exception_rules``: ``_apply_exception_rules``: norm parameters at 8 bits or more;
  GroupNorm/InstanceNorm/RMSNorm parameters take the output's symmetry and bit-width, LayerNorm
  and BatchNorm ones are symmetric only at 16 bits (V66/V68/V69: 8 bits); a dynamic MatMul under
  any ``hw_version`` (V66-V69: second input 8-bit symmetric; else a 16-bit second input is
  symmetric and makes the first 16-bit); a grouped ConvTranspose's weight per tensor.
"""

from __future__ import annotations

from qtool.plan.aimet_configure import OpQuantizers, is_grid_preserving
from qtool.plan.aimet_graph import Graph, Op
from qtool.plan.aimet_tensors import Quantizer
from qtool.plan.config import RuntimeConfig

FLOAT_TYPES = {1, 10, 16}  # onnx FLOAT, FLOAT16, BFLOAT16: aimet's data_types_to_quantize
NORMS = {"BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization", "InstanceNormalization"}


def _float_cast(graph: Graph, op: Op) -> bool:
    return op.type == "Cast" and op.inputs[0] in graph.float_tensors and op.attr("to") in FLOAT_TYPES


def walk(graph: Graph, quantizers: dict[str, Quantizer], name: str) -> tuple[str | None, list[Op]]:
    """From `name`'s producer upwards: (the tensor whose enabled quantizer ends the path, the ops
    walked through), or (None, []) when the path meets any other op first."""
    walked: list[Op] = []
    producer = graph.producer.get(name)
    while producer is not None and producer.inputs and (is_grid_preserving(producer) or _float_cast(graph, producer)):
        walked.append(producer)
        name = producer.inputs[0]
        quantizer = quantizers.get(name)
        if quantizer is not None and quantizer.enabled:
            return name, walked
        producer = graph.producer.get(name)
    return None, []


def effective(graph: Graph, quantizers: dict[str, Quantizer], name: str) -> str | None:
    """The tensor whose quantizer is `name`'s effective one: its own when enabled, else ``walk``'s."""
    quantizer = quantizers.get(name)
    if quantizer is not None and quantizer.enabled:
        return name
    return walk(graph, quantizers, name)[0]


def param_symmetry_to_inputs(graph: Graph, quantizers: dict[str, Quantizer], params: set[str],
                             config: RuntimeConfig) -> None:
    for op in graph.ops:
        if op.type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(op.inputs) < 2 or op.inputs[1] in params:
            continue
        settings = config.op_types.get(op.type)
        weight = settings.params.get("weight") if settings is not None else None
        symmetric = weight.symmetric if weight is not None and weight.symmetric is not None else config.params.symmetric
        found = effective(graph, quantizers, op.inputs[1])
        if found is not None:
            quantizers[found].symmetric = bool(symmetric)


def _norm_params(op: Op, entry: OpQuantizers, hw_version: str | None) -> None:
    output = entry.outputs[0] if entry.outputs and entry.outputs[0].enabled else None
    for quantizer, _ in entry.params:
        if not quantizer.enabled or quantizer.dtype != "int":
            continue
        quantizer.bw = max(quantizer.bw, 8)
        if op.type in ("GroupNormalization", "InstanceNormalization", "RMSNormalization"):
            quantizer.symmetric = output.symmetric if output is not None else False
            if output is not None:
                quantizer.bw = output.bw
        elif op.type in ("LayerNormalization", "BatchNormalization"):
            if hw_version in ("V66", "V68", "V69"):
                quantizer.bw = 8
            quantizer.symmetric = quantizer.bw >= 16


def exception_rules(graph: Graph, quantizers: dict[str, Quantizer], mapped: dict[Op, OpQuantizers],
                    params: set[str], hw_version: str | None) -> None:
    for op in graph.ops:
        entry = mapped[op]
        if op.type in NORMS:
            _norm_params(op, entry, hw_version)
        elif op.type == "MatMul" and hw_version is not None and len(op.inputs) == 2 and op.inputs[1] not in params:
            first, second = (effective(graph, quantizers, name) for name in op.inputs)
            if first is None or second is None or "float" in (quantizers[first].dtype, quantizers[second].dtype):
                continue
            if hw_version in ("V66", "V68", "V69"):
                quantizers[second].symmetric, quantizers[second].bw = True, 8
            elif quantizers[second].bw == 16:
                quantizers[second].symmetric, quantizers[first].bw = True, 16
        elif op.type == "ConvTranspose" and (op.attr("group") or 1) != 1:
            for quantizer, param_type in entry.params:
                if param_type == "weight":
                    quantizer.per_channel = False
