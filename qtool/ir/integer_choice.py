"""Which hard-swish layers `--target ort-cpu` runs on integer kernels: where it is faster on
onnxruntime's CPU provider and the rounding it adds stays bounded (`--fused-activations auto`).

A linear layer followed by a hard-swish leaves its output x without a quantizer (the supergroup,
qtool.ir.hard_swish). To run it on an integer kernel the export gives x a grid of its own
(qtool.ir.ort_cpu.derive_hard_swish_inputs). That pays only under two conditions, checked per layer:

* **Time.** Kept float, the Conv and its hard-swish run as one NCHWc kernel (onnxruntime fuses
  the activation into the float Conv). Made integer, the QLinearConv cannot take the activation:
  x is dequantized, the hard-swish runs as HardSigmoid + Mul (two float passes) and the result is
  quantized: a cost per output value. The integer kernel saves a cost per multiply-accumulate.
  So a layer gains only with enough MACs per output value, m = C_in / group * prod(kernel).
  Measured with onnxruntime's profiler (1.32, one thread, AVX-512 VNNI, batch 1 and 8; PP-OCRv4
  recogniser and the demo classifier): pointwise Convs save 14-18 ps per MAC of each output value,
  the unfused activation costs 0.34-0.68 ns per output value, break-even at m = 24-48; depthwise
  Convs (m = 9 or 25) are 1.2-4.8x slower as QLinearConv than as float NCHWc Convs, before the
  activation's cost; the stem Conv (3 input channels, m = 27) 0.9-2.5x. MIN_MACS_PER_OUTPUT takes
  the upper end of the break-even, so that no layer made integer is slower.
* **Accuracy.** x's grid is per tensor: [-3, h^-1(y_max / g_min)] (derive_hard_swish_inputs),
  and rounding x moves y = g_c h(x) (g_c: the per-channel factor depthwise-input equalization or an
  affine block leaves after h) by up to g_c |h'| s_x / 2, with |h'| <= 1 outside (-3, 3) (1.5 at
  3). Against y's own rounding, s_y / 2, that is r = max_c g_c * s_x / s_y steps of the result
  grid. Without a gain (g = 1) r = (top + 3) / (y range) <= 2 (top >= 3): the extra rounding is at
  most twice the one the encodings already hold. With channel gains 16-30x apart (the reason for
  the supergroup: PicoDet, the demo classifier after equalization) r reaches 10-50 and the layer's
  small channels lose most of their bits. MAX_STEP_RATIO = 2 keeps exactly the first case.

Layers left float keep the encodings' numbers; each decision, with its numbers, is written into
the QDQ model (KEPT_FLOAT_KEY) and shown by the kernel report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.files import strict_json
from qtool.ir.graph import constant_array
from qtool.quant import Encoding

MIN_MACS_PER_OUTPUT = 48
MAX_STEP_RATIO = 2.0
KEPT_FLOAT_KEY = "qtool.ort_cpu.kept_float"  # metadata_props of the QDQ model: {node name: reason}
SLOWER = "left float by the export, integer slower on onnxruntime"
LESS_ACCURATE = "left float by the export, integer rounding too coarse"
FLOAT_MAXPOOL = (f"{SLOWER} (its uint8 MaxPool is a plain loop, the float one a vectorized NCHWc kernel: "
                 "qtool.ir.ort_cpu, same_grid)")


@dataclass(frozen=True)
class LayerChoice:
    """One linear layer before a hard-swish: integer kernel or float, and why."""

    node: str
    integer: bool
    macs_per_output: int | None
    step_ratio: float
    reason: str = ""


def macs_per_output(node: ir.Node) -> int | None:
    """Multiply-accumulates per output value of a Conv (C_in / group * kernel size) or of a Gemm /
    MatMul with a constant weight (its inner dimension); None when the graph does not tell."""
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.ndim < 2:
        return None
    if node.op_type == "Conv":
        return int(np.prod(weight.shape[1:]))
    if node.op_type == "Gemm":
        trans = node.attributes.get("transB")
        return int(weight.shape[1] if trans is not None and trans.as_int() else weight.shape[0])
    if node.op_type == "MatMul":
        return int(weight.shape[-2])
    return None  # ConvTranspose: onnxruntime's CPU provider has no integer kernel for it


def step_ratio(x: Encoding, result: Encoding, gain: np.ndarray) -> float:
    """r = max_c g_c * s_x / s_y: x's rounding seen on the result grid, in result steps."""
    return float(np.max(gain) * float(x.scale[0]) / float(result.scale[0]))


def choose(node: ir.Node, x: Encoding, result: Encoding, gain: np.ndarray) -> LayerChoice:
    """Integer when m >= MIN_MACS_PER_OUTPUT and r <= MAX_STEP_RATIO (module docstring)."""
    macs, ratio = macs_per_output(node), step_ratio(x, result, gain)
    if macs is None or macs < MIN_MACS_PER_OUTPUT:
        told = f"{macs} MACs per output value" if macs is not None else "no constant weight"
        return LayerChoice(node.name, False, macs, ratio,
                           f"{SLOWER} ({told} < {MIN_MACS_PER_OUTPUT}: the unfused hard-swish costs more than "
                           "the integer kernel saves)")
    if ratio > MAX_STEP_RATIO:
        return LayerChoice(node.name, False, macs, ratio,
                           f"{LESS_ACCURATE} (a per-tensor grid for its output would add {ratio:.1f} steps of the "
                           f"hard-swish's grid > {MAX_STEP_RATIO:g}: channels scaled apart)")
    return LayerChoice(node.name, True, macs, ratio)


def kept_float_entry(choices: list[LayerChoice]) -> str:
    """The metadata value: the reason of each layer left float, by node name (sorted: deterministic)."""
    return strict_json.dumps({c.node: c.reason for c in choices if not c.integer}, indent=None)


def kept_float(model: ir.Model) -> dict[str, str]:
    """What `kept_float_entry` wrote into a QDQ model ({} for any other model)."""
    text = model.metadata_props.get(KEPT_FLOAT_KEY)
    try:
        table = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in table.items()} if isinstance(table, dict) else {}
