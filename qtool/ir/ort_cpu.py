"""The onnxruntime-CPU form of a pair: the float graph and encodings the QDQ model is built from
when `qtool export --target ort-cpu` asks for what onnxruntime's CPU provider fuses.

The plain QDQ export writes the model the encodings describe, placed for an accelerator (AIMET's
HTP configs): a Conv whose output only a hard-swish reads gets no quantizer (the supergroup), a
MaxPool's output gets a grid of its own, symmetric activations are int8. onnxruntime's CPU provider
runs such a Conv in float with its weights dequantized on every run, keeps a MaxPool whose grids
differ in float between Q/DQ, and on x86 fuses Conv/MatMul only for uint8 activations. Each
rewrite below gives the same model in a form the provider fuses; docs/deploy.md has the measured
effect of each.

Always (the plain export's numbers, or within one step of a grid):

* `pads`: a zero Pad read only by Convs (EfficientNet's "same" padding) becomes their own pads;
  its grid moves to its input (0 is on every grid), so the Conv before it gets an output quantizer.
* `hard_swish`: the written-out hard-swish (Add, Clip, Mul, Div) becomes one HardSwish op (opset
  14), times a per-channel constant where depthwise-input equalization left one (Div by 6 s_c).
* `same_grid`: ops that only move or select values (Reshape, Transpose, nearest Resize, ...) take
  their input's grid for their output: a value of the grid stays on it, so the requantization of
  the plain export goes, and onnxruntime runs them on the 8-bit tensor. Not MaxPool: onnxruntime
  runs a uint8 MaxPool with a plain loop, its float MaxPool with the vectorized NCHWc kernel
  (demo classifier, one thread, batch 1: 122 us against 14 us, and the whole model 0.76x -> 1.14x
  float), so a MaxPool keeps the encodings' grids and runs in float (named in the kernel report).
* `uint8`: a symmetric int8 activation grid is written as uint8 with zero point 128, the same grid
  (exact); onnxruntime x86 fuses only uint8 activations where a tensor has several readers.

With `fused="bounded"` (`--fused-activations bounded`, which the default `auto` starts from:
off by at most one step of a grid the encodings already hold):

* `clipped`: a Conv output read through Relu/Clip/Min/Max by a quantized tensor (the relu6 that
  depthwise-input equalization writes as Relu + per-channel Min) takes that tensor's grid.
* `gates`: a SiLU's sigmoid gate gets the grid [0, 1] (QLinearSigmoid + QLinearMul): at most 1/510.

With `fused="integer"` also (one rounding more on a new grid, measured per model):

* `derived`: the Conv output x that only a hard-swish reads gets the grid [-3, x_max], x_max =
  h^-1(max of the hard-swish's own grid): no value of x outside it changes h(x) (h(x) = 0 for
  x <= -3, and the result grid clips above x_max anyway), so the only cost is rounding x to 256
  levels, per tensor where the supergroup kept the Conv's per-channel precision. Both ends come
  from the calibrated result grid and h itself: the narrowest range that clips nothing the result
  grid keeps. Calibrating x's own histogram instead (the sqnr search of `qtool calibrate`, 64
  samples) was not reliably better: output SQNR against float on 32 samples, derived / x's whole
  range / within [-3, x_max]: recogniser 14.9 / 12.4 / 7.6 dB, demo classifier 40.6 / 35.2 / 51.5
  dB, PicoDet 4.5 / 4.9 / 6.0 dB (12.4 without the grids): the loss is the one grid for channels
  scaled apart, which qtool.ir.integer_choice measures per layer.

With `fused="auto"` (the default): `bounded`, and `derived` for the layers where it is faster and
adds at most two steps of the result grid (qtool.ir.integer_choice: the measured rule).

NAME.encodings is not changed: it stays the accelerator's description of the model.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.float_islands import drop_unused_initializers, remove_nodes
from qtool.ir.graph import add_initializer, clone, constant_array, ensure_opset, hand_over, unique_name, value_by_name
from qtool.ir.hard_swish import LINEAR, HardSwish, hard_swishes
from qtool.ir.integer_choice import FLOAT_MAXPOOL, LayerChoice, choose
from qtool.quant import Encoding, QuantSpec, compute_encoding, quantize_dequantize

HARD_SWISH_OPSET = 14
SAME_GRID = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Split",
             "Expand", "Tile", "ReduceMax", "ReduceMin", "Identity", "Resize")
HARD_SWISH_FLOOR = -3.0  # h(x) = 0 for every x <= -3


FUSED = ("float", "bounded", "auto", "integer")  # --fused-activations: what gets a derived grid (module docstring)


def ort_cpu_pair(model: ir.Model, encodings: EncodingSet, source: str = "model", *, fused: str = "auto",
                 choices: list[LayerChoice] | None = None) -> tuple[ir.Model, EncodingSet, dict[str, int]]:
    """The float model and encodings to build the onnxruntime-CPU QDQ model from (`model` and
    `encodings` are not changed), and how many tensors/ops each rewrite touched.
    `fused` (one of FUSED): which tensors left unquantized inside fused activations get derived
    grids, so that integer kernels run them (one rounding more). `choices` (with "auto") receives
    the decision for each hard-swish layer (qtool.ir.integer_choice)."""
    swishes = hard_swishes(model)
    graph = ensure_opset(clone(model), HARD_SWISH_OPSET if swishes else 13, source=source)
    encs = encodings.copy()
    decided: list[LayerChoice] = [] if choices is None else choices
    counts = {"pads": fold_pads(graph, encs),
              "derived": derive_hard_swish_inputs(graph, encs, decided if fused == "auto" else None)
              if fused in ("auto", "integer") else 0,
              "clipped": derive_clipped_inputs(graph, encs) if fused != "float" else 0,
              "gates": derive_sigmoid_gates(graph, encs) if fused != "float" else 0,
              "hard_swish": hard_swish_ops(graph, encs),
              "same_grid": same_grid(graph, encs), "uint8": uint8_grids(encs)}
    decided += [LayerChoice(node.name, False, None, 0.0, FLOAT_MAXPOOL) for node in graph.graph
                if node.op_type == "MaxPool"]
    return graph, encs, counts


def _zero_spatial_pads(node: ir.Node) -> list[int] | None:
    """[begin..., end...] of the spatial dims of a constant-zero Pad on N, C, spatial..., or None."""
    mode = node.attributes.get("mode")
    pads = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    value = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if ((mode is not None and mode.as_string() != "constant") or pads is None or len(node.inputs) > 3
            or (value is not None and np.any(value != 0)) or (len(node.inputs) > 2 and node.inputs[2] is not None
                                                               and value is None)):
        return None
    pads = [int(p) for p in pads.reshape(-1)]
    rank = len(pads) // 2
    if rank < 3 or any(p < 0 for p in pads) or any(pads[i] or pads[rank + i] for i in (0, 1)):
        return None
    return pads[2:rank] + pads[rank + 2:]


def _explicit_pads(conv: ir.Node) -> bool:
    auto = conv.attributes.get("auto_pad")
    return conv.op_type == "Conv" and (auto is None or auto.as_string() == "NOTSET")


def fold_pads(model: ir.Model, encs: EncodingSet) -> int:
    """A zero Pad read only by Convs (EfficientNet's "same" padding) becomes the Convs' own pads:
    onnxruntime has no integer Pad, and the tensor before it, left without a quantizer, kept the
    Conv that computes it float. The Pad's grid moves to its input (exact: 0 is on every grid),
    unless the input has a grid of its own or other readers the grid would change."""
    count = 0
    for pad in [node for node in model.graph if node.op_type == "Pad"]:
        spatial, source, out = _zero_spatial_pads(pad), pad.inputs[0], pad.outputs[0]
        convs = out.consumers()
        enc, before = encs.activations.get(out.name), encs.activations.get(source.name)
        if (spatial is None or not convs or out.is_graph_output() or any(
                not _explicit_pads(conv) or conv.inputs[0] is not out for conv in convs)
                or (before is not None and (enc is None or not before.same_as(enc)))
                or (before is None and enc is not None and (len(source.consumers()) > 1 or source.is_graph_output()))):
            continue
        for conv in convs:
            old = conv.attributes.get("pads")
            old = list(old.as_ints()) if old is not None else [0] * len(spatial)
            conv.attributes["pads"] = ir.AttrInt64s("pads", [a + b for a, b in zip(old, spatial, strict=True)])
            conv.replace_input_with(0, source)
        if enc is not None:
            encs.activations[source.name] = encs.activations.pop(out.name)
        model.graph.remove(pad, safe=True)
        count += 1
    return count


def _inverse(y: float) -> float:
    """The largest x with h(x) = y (h increasing on [-1.5, inf), h(x) = x from 3 on)."""
    if y >= 3.0:
        return y
    return max((-3.0 + math.sqrt(9.0 + 24.0 * max(y, 0.0))) / 2.0, 0.0)


def _gain(match: HardSwish, encs: EncodingSet) -> np.ndarray:
    """k with match(x) = HardSwish(x) * k: 1 for the plain forms, 6/c for a Div by c, 6c for a
    Mul by c (per channel after depthwise-input equalization); c as the QDQ model holds it (on
    its grid where the encodings quantize it)."""
    for node in match.nodes:  # the product x * gate reads no constant; the 1/6 (or 1/(6 s_c)) does
        value = next((v for v in node.inputs if constant_array(v) is not None), None)
        if node.op_type in ("Div", "Mul") and value is not None:
            c, enc = constant_array(value).astype(np.float32), encs.all().get(value.name)
            c = (quantize_dequantize(c, enc) if enc is not None and not enc.is_float else c).astype(np.float64)
            return 6.0 / c if node.op_type == "Div" else 6.0 * c
    return np.ones(1)


def _linear_output(x: ir.Value, match: HardSwish) -> bool:
    producer = x.producer()
    readers = {id(node) for node in x.consumers()}
    return (producer is not None and producer.op_type in LINEAR and not x.is_graph_output()
            and readers <= {id(node) for node in match.nodes})


def _quantized_affine(value: ir.Value, encs: EncodingSet) -> tuple[Encoding | None, float, float]:
    """The first quantized tensor y = a * value + b down a chain of Mul/Add by scalar constants
    (PP-LCNetV3's learnable affine block after each hard-swish), with a > 0: (its encoding, a, b)."""
    a, b = 1.0, 0.0
    while value.name not in encs.activations:
        node = value.consumers()[0] if len(value.consumers()) == 1 and not value.is_graph_output() else None
        const = next((constant_array(v) for v in node.inputs if constant_array(v) is not None), None) if node else None
        if node is None or node.op_type not in ("Mul", "Add") or const is None or const.size != 1:
            return None, a, b
        c = float(const.reshape(()))
        if node.op_type == "Mul" and c <= 0:
            return None, a, b
        a, b = (a * c, b * c) if node.op_type == "Mul" else (a, b + c)
        value = node.outputs[0]
    return encs.activations[value.name], a, b


def derive_hard_swish_inputs(model: ir.Model, encs: EncodingSet, choices: list[LayerChoice] | None = None) -> int:
    """Give each linear-layer output read only by a hard-swish (the supergroup, no quantizer) the
    grid [-3, h^-1(result max)] derived from the hard-swish's 8-bit result grid (or from the grid
    of a * h + b where a positive scalar affine follows it). With `choices` (a list to fill), only
    the layers qtool.ir.integer_choice.choose admits get it; every decision is appended."""
    count = 0
    for match in hard_swishes(model):
        x, (result, scale, shift) = match.source, _quantized_affine(match.result, encs)
        gain = _gain(match, encs) * scale
        if (x.name in encs.activations or not _linear_output(x, match) or result is None
                or result.is_float or result.bw != 8 or result.per_channel or np.any(gain <= 0)):
            continue
        top = max(_inverse((float(result.max[0]) - shift) / float(k)) for k in np.unique(gain))
        grid = compute_encoding(HARD_SWISH_FLOOR, top, QuantSpec(bw=8))
        if choices is not None:
            choices.append(choose(x.producer(), grid, result, np.asarray(gain, np.float64)))
            if not choices[-1].integer:
                continue
        encs.activations[x.name] = grid
        count += 1
    return count


CLIPPING = ("Relu", "Clip", "Min", "Max")


def _clipping(node: ir.Node, value: ir.Value) -> bool:
    """`node` is Relu, or Clip/Min/Max of `value` and constants: monotone, 1-Lipschitz."""
    others = [v for v in node.inputs if v is not None and v is not value]
    return node.op_type in CLIPPING and all(constant_array(v) is not None for v in others)


def derive_clipped_inputs(model: ir.Model, encs: EncodingSet) -> int:
    """A linear-layer output with no quantizer, read through a chain of clipping ops (Relu, and the
    per-channel Min that depthwise-input equalization leaves of a relu6) by a quantized tensor,
    takes that tensor's grid: those ops move a value by at most what they move its rounding, so
    the result is off by at most one step of that grid, and the linear layer fuses."""
    count = 0
    for node in model.graph:
        x = node.outputs[0] if node.op_type in LINEAR and node.outputs else None
        if x is None or x.name in encs.activations or x.is_graph_output():
            continue
        value, chain = x, []
        while value.name not in encs.activations:
            readers = value.consumers()
            if len(readers) != 1 or value.is_graph_output() or not _clipping(readers[0], value):
                break
            chain.append(readers[0])
            value = readers[0].outputs[0]
        enc = encs.activations.get(value.name)
        folded = len(chain) == 1 and chain[0].op_type in ("Relu", "Clip")  # onnxruntime folds it into the Q
        if chain and not folded and _native_8bit(enc):
            encs.activations[x.name] = enc
            _drop_identities(model, [node for node in chain[:-1] if _identity_on(node, enc)])
            count += 1
    return count


def _identity_on(node: ir.Node, enc: Encoding) -> bool:
    """`node` (a clipping op) changes no value of the grid `enc`: a Relu of a grid that starts at
    0, a Min/Max/Clip whose bounds lie outside the grid's range."""
    low, high = float(enc.min[0]), float(enc.max[0])
    bounds = [constant_array(v) for v in node.inputs[1:]]
    if node.op_type == "Relu":
        return low >= 0
    if node.op_type == "Clip":
        return ((bounds[0] is None or float(np.max(bounds[0])) <= low)
                and (len(bounds) < 2 or bounds[1] is None or float(np.min(bounds[1])) >= high))
    other = next(b for b in (constant_array(v) for v in node.inputs) if b is not None)
    return float(np.min(other)) >= high if node.op_type == "Min" else float(np.max(other)) <= low


def _drop_identities(model: ir.Model, nodes: list[ir.Node]) -> None:
    """Remove clipping ops that compute the identity (inside a chain: their outputs have no
    quantizer and no reader outside it)."""
    for node in nodes:
        node.outputs[0].replace_all_uses_with(node.inputs[0])
        remove_nodes(model, [node])


def derive_sigmoid_gates(model: ir.Model, encs: EncodingSet) -> int:
    """The gate of a SiLU, x * sigmoid(x) (and of any Mul of a quantized tensor by a Sigmoid), left
    unquantized as the inside of one activation, gets the grid [0, 1]: the gate then moves by at
    most 1/510, and onnxruntime runs QLinearSigmoid + QLinearMul instead of two float passes."""
    count = 0
    for node in model.graph:
        gate = node.outputs[0] if node.op_type == "Sigmoid" else None
        if gate is None or gate.name in encs.activations or gate.is_graph_output() or not gate.consumers():
            continue
        quantized = {**encs.activations, **encs.params}
        if all(mul.op_type == "Mul" and mul.outputs[0].name in encs.activations
               and all(v is gate or (v is not None and v.name in quantized) for v in mul.inputs)
               for mul in gate.consumers()):
            encs.activations[gate.name] = compute_encoding(0.0, 1.0, QuantSpec(bw=8))
            count += 1
    return count


def hard_swish_ops(model: ir.Model, encs: EncodingSet) -> int:
    """Replace written-out hard-swishes by the HardSwish op (and a Mul by k where the form scales
    it); the result tensor keeps its name, the encodings of removed tensors go. Needs opset 14."""
    if model.opset_imports.get("", 1) < HARD_SWISH_OPSET:
        return 0
    count = 0
    for match in hard_swishes(model):
        gain = _gain(match, encs)
        if len(match.nodes) == 1:
            continue
        result, last = match.result, match.nodes[-1]
        out = ir.Value(name=unique_name(model, f"{result.name}_hardswish"))
        nodes = [ir.node("HardSwish", [match.source], outputs=[out], name=unique_name(model, f"{last.name}_HardSwish"))]
        if not np.allclose(gain, 1.0, rtol=0, atol=1e-7):
            k = add_initializer(model, f"{result.name}_gain", gain.astype(np.float32))
            out = ir.Value(name=unique_name(model, f"{result.name}_scaled"))
            nodes.append(ir.node("Mul", [nodes[0].outputs[0], k], outputs=[out],
                                 name=unique_name(model, f"{last.name}_gain")))
        model.graph.insert_after(last, nodes)
        for node in nodes:
            node.outputs[0].dtype, node.outputs[0].shape = result.dtype, result.shape
        hand_over(result, out)
        remove_nodes(model, list(match.nodes))
        count += 1
    drop_unused_initializers(model)
    names = {value.name for value in value_by_name(model).values() if value.uses() or value.is_graph_output()}
    for table in (encs.activations, encs.params):
        for name in [name for name in table if name not in names]:
            del table[name]
    return count


def _native_8bit(enc: Encoding | None) -> bool:
    return enc is not None and not enc.is_float and enc.bw == 8 and not enc.per_channel and not enc.strict


def _keeps_grid(node: ir.Node) -> bool:
    if node.op_type not in SAME_GRID:
        return False
    mode = node.attributes.get("mode")
    return node.op_type != "Resize" or mode is None or mode.as_string() == "nearest"


def same_grid(model: ir.Model, encs: EncodingSet) -> int:
    """Outputs of value-keeping ops take the grid of their (quantized) data input."""
    count = 0
    for node in model.graph:
        source = encs.activations.get(node.inputs[0].name) if node.inputs and node.inputs[0] is not None else None
        if not _keeps_grid(node) or not _native_8bit(source):
            continue
        for out in node.outputs:
            enc = encs.activations.get(out.name)
            if _native_8bit(enc) and not enc.same_as(source):
                encs.activations[out.name] = source
                count += 1
    return count


def uint8_grids(encs: EncodingSet) -> int:
    """Symmetric int8 activation grids as the same grid in uint8 (zero point 128)."""
    count = 0
    for name, enc in list(encs.activations.items()):
        if _native_8bit(enc) and enc.symmetric and bool(np.all(enc.offset < 0)):
            encs.activations[name] = Encoding(enc.bw, enc.scale, enc.offset, False, enc.dtype, enc.axis, enc.frozen)
            count += 1
    return count
