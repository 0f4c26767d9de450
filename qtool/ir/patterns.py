"""Graph patterns that decide where quantizers go beyond the op-type rules of the runtime config.

Each detector reads the graph and returns tensor names; none changes anything. The principle
they share: a quantizer belongs where the target materialises a tensor between two ops, not
inside what the target runs as one op (AIMET quantizes a PyTorch module's output, and GELU,
SiLU, hard-swish and LayerNorm are one module there, while an ONNX export writes them out as
several ops), and not on tensors whose range no grid can hold (an attention mask of -1e4 or
-3.4e38 added to scores of a few units).

* ``decomposed_layer_norm_internals``, ``clipped_offsets``, ``bounded_relus``: see their docstrings.
* ``pointwise_internals``: inner tensors of a smooth pointwise function of one tensor (GELU in its
  Erf and tanh forms, SiLU x*sigmoid(x), Mish): only the function's result is quantized, as for
  the single ONNX op (Gelu) that a target runs. Piecewise-linear pieces are not fused (see
  POINTWISE for the measurement).
* ``attention_mask_tensors``: the additive mask path (computed from integer inputs and a constant
  of magnitude >= 1e3 or infinite) and the masked scores it produces for a Softmax. Quantizing
  the masked scores spans [-1e4, 10] (step 40) or [-3.4e38, 10] and rounds every score to 0:
  uniform attention. TensorRT's and ModelOpt's transformer placement quantizes only GEMM inputs
  and leaves the mask add and Softmax input in higher precision; we do the same for this tensor.
* ``layer_norm_inputs``: residual sums that feed a LayerNorm. Bondarenko et al. (2021,
  "Understanding and overcoming the challenges of efficient transformer quantization") trace
  the W8A8 failure of BERT to outliers of a few embedding dimensions in exactly these tensors
  and recover float accuracy by keeping them at 16 bits; the plan gives them
  ``layer_norm_input_bw`` bits.
* ``layer_norm_outputs``: what comes out of a LayerNorm still carries those dimensions; the plan
  gives them ``layer_norm_output_bw`` bits.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import constant_array, is_float

# Elementwise ops that can make up a pointwise function of one tensor. Piecewise-linear ones
# (Clip, Relu, Min, Max, HardSigmoid) are left out, measured: fusing the written-out hard-swish of
# PP-OCRv4 (x * Clip(x + 3, 0, 6) / 6, then Paddle's scale Mul) cost 99.0% -> 94.3% characters
# (per-channel W8A8, 200 lines), while the smooth functions alone changed nothing there (99.0%).
POINTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Tanh", "Sigmoid",
             "Neg", "Abs", "Softplus", "Softsign"}
# Ops that only move values: a mask carried through them is still the mask.
MOVERS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Expand", "Cast"}
MASK_MAGNITUDE = 1e3  # |constant| at or above this in an additive mask path is a "minus infinity"


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def _decomposed_layer_norms(model: ir.Model) -> list[tuple[list[ir.Node], ir.Node]]:
    """Each LayerNormalization written out as ops: (its inner nodes, its last node)."""
    found = []
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
        found.append((chain, tail))
    return found


def decomposed_layer_norm_internals(model: ir.Model) -> set[str]:
    """Inner tensors of LayerNormalization written out as ops (exporters before opset 17 do):
    ReduceMean -> Sub -> Pow -> ReduceMean -> Add(eps) -> Sqrt -> Div [-> Mul(gamma) -> Add(beta)].

    Targets run it as one op, as onnx does since opset 17, so only its output is quantized. The
    inner tensors are also the fragile ones: a variance quantized on a grid sized for its largest
    value rounds small variances to 0, and the division by sqrt(eps) then explodes (PP-OCRv4:
    5 points of character accuracy swing between two calibration sets).
    """
    return {node.outputs[0].name for chain, _ in _decomposed_layer_norms(model) for node in chain}


NORMS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization")


def layer_norm_outputs(model: ir.Model) -> set[str]:
    """Outputs of LayerNorms (fused or written out). LayerNorm normalises each token across its
    hidden dimensions, not each dimension across tokens, so the few outlier dimensions of the
    residual stream (layer_norm_inputs) come out of it still 10-50x wider than the rest, scaled by
    gamma (Wei et al. 2022, "Outlier suppression", trace them to gamma), and every consumer (Q/K/V,
    the FFN, the next residual sum) reads them. MiniLM-L3 per-channel W8A8, 200 sentences: LayerNorm
    outputs at 16 bits take the embeddings' nearest-neighbour agreement 0.915 -> 0.95, mean cosine
    0.9947 -> 0.9968."""
    found = {node.outputs[0].name for node in model.graph if node.op_type in NORMS and node.outputs}
    found |= {tail.outputs[0].name for _, tail in _decomposed_layer_norms(model) if tail.outputs}
    return found


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


def clipped_offsets(model: ir.Model) -> set[str]:
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


def bounded_relus(model: ir.Model) -> set[str]:
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


def pointwise_internals(model: ir.Model) -> set[str]:
    """Tensors inside a pointwise function of one tensor: produced by a POINTWISE op whose
    non-constant inputs all derive (pointwise) from one source tensor, and consumed only by such
    ops of the same source. The function's result, and its source, keep their quantizers."""
    source: dict[str, str] = {}  # tensor -> the one tensor it is a pointwise function of
    for node in model.graph:
        if node.op_type not in POINTWISE or len(node.outputs) != 1 or not is_float(node.outputs[0]):
            continue
        live = [v for v in node.inputs if v is not None and v.const_value is None]
        sources = {source.get(v.name, v.name) for v in live}
        if len(sources) == 1:
            source[node.outputs[0].name] = sources.pop()
    inner: set[str] = set()
    for node in model.graph:
        for out in node.outputs:
            mine = source.get(out.name)
            consumers = out.consumers()
            if mine is None or out.is_graph_output() or not consumers:
                continue
            if all(c.outputs and source.get(c.outputs[0].name) == mine for c in consumers):
                inner.add(out.name)
    return inner


def _is_mask_constant(value: ir.Value | None) -> bool:
    array = constant_array(value)
    return (array is not None and np.issubdtype(array.dtype, np.floating) and array.size > 0
            and bool(np.any(np.abs(array) >= MASK_MAGNITUDE)))


def _feeds_softmax(value: ir.Value, depth: int = 4) -> bool:
    """Whether `value` reaches a Softmax through at most `depth` MOVERS (or directly)."""
    for consumer in value.consumers():
        if consumer.op_type in ("Softmax", "LogSoftmax"):
            return True
        if depth and consumer.op_type in MOVERS and any(_feeds_softmax(v, depth - 1) for v in consumer.outputs):
            return True
    return False


def attention_mask_tensors(model: ir.Model) -> set[str]:
    """The additive attention mask and the masked scores (see the module docstring).

    Data-free tensors are computed from non-float graph inputs, shapes and constants only, never
    through a Gather (an embedding lookup turns ids into data). The mask path is the data-free
    float tensors computed with a mask constant (|c| >= MASK_MAGNITUDE or infinite). Masked
    scores: the output of an Add/Sub/Where that joins the mask path (or a mask constant) with
    data and goes to a Softmax."""
    data_free: set[str] = {v.name for v in model.graph.inputs if not is_float(v)}
    masky: set[str] = set()
    joins: list[ir.Node] = []
    for node in model.graph:
        inputs = [v for v in node.inputs if v is not None]
        if node.op_type in ("Shape", "Size") or (node.op_type != "Gather" and all(
                v.name in data_free or v.const_value is not None for v in inputs)):
            data_free.update(o.name for o in node.outputs)
            if any(v.name in masky or _is_mask_constant(v) for v in inputs):
                masky.update(o.name for o in node.outputs)
            continue
        if node.op_type in ("Add", "Sub", "Where") and node.outputs and _feeds_softmax(node.outputs[0]) and any(
                v.name in masky or _is_mask_constant(v) for v in inputs):
            joins.append(node)
    # the whole data-free path into each join: a quantizer anywhere on it (even on the 0/1 mask
    # before it is scaled by -3.4e38) turns "not masked" into "masked" by rounding
    found = {node.outputs[0].name for node in joins}
    stack = [v for node in joins for v in node.inputs if v is not None and v.name in data_free]
    while stack:
        value = stack.pop()
        if value.name in found or value.const_value is not None:
            continue
        if is_float(value):
            found.add(value.name)
        producer = value.producer()
        if producer is not None:
            stack.extend(v for v in producer.inputs if v is not None and v.name in data_free)
    return found


def _linear_output(value: ir.Value | None) -> bool:
    """Whether `value` comes out of a linear layer (MatMul / Gemm / Conv, or the bias Add after one)."""
    producer = value.producer() if value is not None else None
    if producer is None:
        return False
    if producer.op_type in ("MatMul", "Gemm", "Conv"):
        return True
    if producer.op_type == "Add" and any(v is not None and v.const_value is not None for v in producer.inputs):
        return any(_linear_output(v) for v in producer.inputs if v is not None and v.const_value is None)
    return False


def layer_norm_inputs(model: ir.Model) -> set[str]:
    """Residual sums read by a LayerNormalization (or by the ReduceMean and Sub that open a
    LayerNorm written out as ops), and the summand that is the residual branch, the output of a
    linear layer: Bondarenko et al. find the outliers arising in the FFN output that feeds the
    sum (BERT: [-6, 198] in the first layer of MiniLM-L3, where other tensors span +-10)."""
    found: set[str] = set()
    for node in model.graph:
        if node.op_type != "Add" or not node.outputs or not is_float(node.outputs[0]):
            continue
        if any(v is not None and v.const_value is not None for v in node.inputs):
            continue  # a bias add, not a sum of two activations
        kinds = {c.op_type for c in node.outputs[0].consumers()}
        if "LayerNormalization" in kinds or {"ReduceMean", "Sub"} <= kinds:
            found.add(node.outputs[0].name)
            found.update(v.name for v in node.inputs if _linear_output(v))
    return found
