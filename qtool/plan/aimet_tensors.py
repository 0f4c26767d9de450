"""Which tensors aimet-onnx gives a quantizer, and of which kind (placement "aimet").

Mirrors ``QuantizationSimModel._get_param_names`` / ``_get_activations_to_quantize`` /
``_is_tensor_quantizable`` / ``_create_tensor_quantizer_params`` (quantsim.py) and
``find_all_node_info`` (meta/connectedgraph.py):

* parameters are what the connected graph calls parameters, by op type and input index
  (PARAM_INDEX; MatMul: its constant input 1, or the constant behind a Transpose there). Any
  other float constant an op reads (a Mul's scale, a Clip's bounds, an Add's +3) is an
  *activation* of kind "input", configured like a model input;
* every other float tensor read or written by an op gets an activation quantizer, except the
  outputs of OUTPUTS_IGNORED and the non-data inputs of Resize. Each quantizer starts disabled,
  with aimet's defaults (asymmetric, 8 bits, per tensor); aimet_configure.py sets the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtool.plan.aimet_graph import Graph, Op

# quantsim.py op_outputs_to_ignore: these outputs get no quantizer at all
OUTPUTS_IGNORED = {"branch", "Flatten", "Gather", "Reshape", "Shape", "Unsqueeze", "Squeeze", "Split", "Compress",
                   "Tile", "Transpose", "Identity"}
PARAMS_IGNORED = {"Resize"}  # quantsim.py op_params_to_ignore: only input 0 is data
_WEIGHT_BIAS = {"weight": 1, "bias": 2}
# find_all_node_info: op type -> {param type: input index}
PARAM_INDEX: dict[str, dict[str, int]] = {
    **{op: _WEIGHT_BIAS for op in ("Conv", "Gemm", "ConvTranspose", "InstanceNormalization",
                                   "LayerNormalization", "GroupNormalization")},
    "RMSNormalization": {"weight": 1},
    "BatchNormalization": {"weight": 1, "bias": 2, "running_mean": 3, "running_var": 4},
    **{op: {"weight": 1, "weight_r": 2, "bias": 3} for op in ("RNN", "LSTM", "GRU")},
}


@dataclass(eq=False)
class Quantizer:
    """aimet's QcQuantizeOp settings for one tensor. Tied tensors share one object (aimet_ties.py)."""

    kind: str  # "param", "input" (model input or non-parameter constant) or "output"
    param_type: str | None = None  # weight / bias / running_mean ... for params
    enabled: bool = False
    symmetric: bool = False
    bw: int = 8
    dtype: str = "int"
    channel_axis: int | None = None  # the axis per-channel quantization would use
    per_channel: bool = False
    fixed: tuple[float | None, float | None] | None = None  # encoding_constraints (min, max)

    @property
    def axis(self) -> int | None:
        return self.channel_axis if self.per_channel else None


def op_params(graph: Graph, op: Op) -> dict[str, str]:
    """One op's parameters, {tensor name: parameter type} (``find_all_node_info``)."""
    if op.type == "MatMul":
        weight, _ = graph.weight(op)
        return {weight: "weight"} if weight else {}
    found = {}
    for param_type, index in PARAM_INDEX.get(op.type, {}).items():
        name = graph.static(op.inputs[index]) if index < len(op.inputs) and op.inputs[index] else None
        if name:
            found[name] = param_type
    return found


def quantization_axis(graph: Graph, op: Op, name: str) -> int | None:
    """``_create_tensor_quantizer_params`` / ``_get_quantization_axes``: 0 for a 1-D parameter,
    else Conv 0, ConvTranspose 1, Gemm 0 with transB (1 without), MatMul -1 (-2 when transposed)."""
    if graph.constants[name].ndim == 1:
        return 0
    if op.type == "Conv":
        return 0
    if op.type == "ConvTranspose":
        return 1
    transposed = graph.weight(op)[1] if op.type in ("Gemm", "MatMul") else False
    if op.type == "Gemm":
        return 0 if transposed else 1
    if op.type == "MatMul":
        return -2 if transposed else -1
    return None


def param_owners(graph: Graph) -> dict[str, tuple[Op, str]]:
    """Every parameter with the first op that owns it and its type there (``_get_param_names``)."""
    owners: dict[str, tuple[Op, str]] = {}
    for op in graph.ops:
        for name, param_type in op_params(graph, op).items():
            owners.setdefault(name, (op, param_type))
    return owners


def _quantizable(graph: Graph, name: str) -> bool:
    """``_is_tensor_quantizable``: a float tensor, not a Resize parameter, not an ignored op's output."""
    if name not in graph.float_tensors:
        return False
    if any(op.type in PARAMS_IGNORED and op.inputs[0] != name for op in graph.consumers.get(name, [])):
        return False
    producer = graph.producer.get(name)
    return producer is None or producer.type not in OUTPUTS_IGNORED


def create_quantizers(graph: Graph) -> dict[str, Quantizer]:
    """Every quantizer aimet inserts, disabled: params first, then activations in graph order."""
    quantizers: dict[str, Quantizer] = {}
    for name, (op, param_type) in param_owners(graph).items():
        quantizers[name] = Quantizer("param", param_type, channel_axis=quantization_axis(graph, op, name))
    for name in graph.inputs:
        if name not in quantizers and _quantizable(graph, name):
            quantizers[name] = Quantizer("input")
    for op in graph.ops:
        for name in op.inputs:
            if name and name not in quantizers and _quantizable(graph, name):
                quantizers[name] = Quantizer("input")  # not produced before: a constant
        for name in op.outputs:
            if name not in quantizers and _quantizable(graph, name):
                quantizers[name] = Quantizer("output")
    return quantizers
