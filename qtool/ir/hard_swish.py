"""Hard-swish as one op, and a linear layer followed by it as one supergroup.

Hard-swish, h(x) = x * relu6(x + 3) / 6 (MobileNetV3, LCNet, PP-OCRv4, PicoDet), is one op for
the targets qtool serves (ONNX HardSwish since opset 14, QNN's ElementWiseNeuron, PyTorch's
nn.Hardswish that AIMET quantizes as one module). Exporters write it out instead, e.g.
PaddlePaddle's Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6), or x * HardSigmoid(x). Two
placement facts follow, and this module finds the tensors they concern:

* the inner tensors (x + 3, its Clip, the product before the division) get no quantizer: a fused
  op has none there. The product x * relu6(x + 3) spans up to 6 x_max, and x + 3 spans all of x
  while only [0, 6] survives the Clip, so quantizers there waste most of their levels;
* the linear layer's output x that only this hard-swish reads gets none either: AIMET's HTP
  runtime configs (htp_quantsim_config_v73.json and later) list the supergroup
  [Conv, BatchNormalization, HardSwish], i.e. the accelerator runs Conv + hard-swish as one op and
  quantizes its result only. x is the widest tensor of the block: after BN folding its channels
  differ 16-30x in range.

Measured (per-channel W8A8, sqnr ranges, BN folded, both facts together): PicoDet layout detector
F1 against float 0.54 -> 0.76 (24 pages); PP-OCRv4 recogniser output SQNR 10.7 -> 11.5 dB and
line agreement with float 45% -> 56% (128 lines).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import constant_array
from qtool.ir.ranges import clip_bounds

LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class HardSwish:
    source: ir.Value  # x
    nodes: tuple[ir.Node, ...]  # the ops of h, in order; the last one's output is h(x)

    @property
    def inner(self) -> set[str]:
        return {node.outputs[0].name for node in self.nodes[:-1]}

    @property
    def result(self) -> ir.Value:
        return self.nodes[-1].outputs[0]


def _scalar(value: ir.Value | None) -> float | None:
    array = constant_array(value)
    return float(array.reshape(-1)[0]) if array is not None and array.size == 1 else None


def _other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    others = [v for v in node.inputs if v is not value]
    return others[0] if len(node.inputs) == 2 and len(others) == 1 else None


def _sole_consumer(value: ir.Value) -> ir.Node | None:
    consumers = value.consumers()
    return consumers[0] if len(consumers) == 1 and not value.is_graph_output() else None


def _sixth(node: ir.Node | None, value: ir.Value) -> bool:
    """node divides value by a positive constant: 6 (Div by 6, Mul by 1/6), or per channel, as
    depthwise-input equalization (steps.depthwise_inputs) leaves it (Div by 6 s_c)."""
    if node is None or node.op_type not in ("Div", "Mul") or len(node.inputs) != 2:
        return False
    if node.op_type == "Div" and node.inputs[0] is not value:
        return False
    c = constant_array(_other_input(node, value))
    return c is not None and c.size > 0 and bool(np.all(c > 0))


def _clip_0_6(node: ir.Node | None) -> bool:
    bounds = clip_bounds(node) if node is not None and node.op_type == "Clip" else None
    return bounds is not None and (float(bounds[0]), float(bounds[1])) == (0.0, 6.0)


def _hard_sigmoid_gate(gate: ir.Node, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing relu6(x + 3) / 6 from `gate` (an Add of 3 or a HardSigmoid of x), or None."""
    if gate.op_type == "HardSigmoid":
        alpha, beta = gate.attributes.get("alpha"), gate.attributes.get("beta")
        ok = (alpha is not None and abs(alpha.as_float() * 6 - 1) < 1e-6 and beta is not None
              and abs(beta.as_float() - 0.5) < 1e-6)
        return [gate] if ok else None
    if gate.op_type != "Add" or _scalar(_other_input(gate, x)) != 3.0:
        return None
    clip = _sole_consumer(gate.outputs[0])
    if not _clip_0_6(clip):
        return None
    after = _sole_consumer(clip.outputs[0])
    return [gate, clip, after] if _sixth(after, clip.outputs[0]) else [gate, clip]


def _match(gate: ir.Node, x: ir.Value) -> HardSwish | None:
    """x * gate(x), with the 1/6 applied before or after the product."""
    chain = _hard_sigmoid_gate(gate, x)
    if chain is None:
        return None
    scaled = len(chain) == 3 or chain[0].op_type == "HardSigmoid"  # the 1/6 is already applied
    product = _sole_consumer(chain[-1].outputs[0])
    if product is None or product.op_type != "Mul" or _other_input(product, chain[-1].outputs[0]) is not x:
        return None
    if scaled:
        return HardSwish(x, (*chain, product))
    after = _sole_consumer(product.outputs[0])
    return HardSwish(x, (*chain, product, after)) if _sixth(after, product.outputs[0]) else None


def hard_swishes(model: ir.Model) -> list[HardSwish]:
    """Every hard-swish in the graph: the HardSwish op, and the written-out forms above."""
    found = []
    for node in model.graph:
        if node.op_type == "HardSwish":
            found.append(HardSwish(node.inputs[0], (node,)))
            continue
        if node.op_type in ("Add", "HardSigmoid"):
            x = node.inputs[0] if node.op_type == "HardSigmoid" else next(
                (v for v in node.inputs if v is not None and v.const_value is None), None)
            match = _match(node, x) if x is not None else None
            if match is not None:
                found.append(match)
    return found


def hard_swish_fused(model: ir.Model) -> set[str]:
    """Tensors left unquantized: each hard-swish's inner tensors, and its input when a linear layer
    produced it and nothing but this hard-swish reads it (the Conv + HardSwish supergroup)."""
    fused: set[str] = set()
    for match in hard_swishes(model):
        fused |= match.inner
        producer = match.source.producer()
        readers = set(map(id, match.source.consumers()))
        if (producer is not None and producer.op_type in LINEAR and not match.source.is_graph_output()
                and readers <= set(map(id, match.nodes))):
            fused.add(match.source.name)
    return fused
