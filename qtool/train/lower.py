"""The ONNX graph as a torch module: every node run by its op function (qtool.train.ops_*), in
the graph's order, with a FakeQuant wherever the encodings name a tensor, placed as
`qtool.ir.qdq.build_qdq_model` places it for `simulate`:

* an activation encoding quantizes the tensor right after its producer (a graph input on entry),
  and every consumer and the graph output read the quantized value;
* a param encoding (or an activation encoding on a constant) quantizes the initializer itself,
  per channel along the encoding's axis; int32 bias encodings and non-float32 constants are not
  simulated, as in the QDQ model.

The weights the QAT loop trains are the float32 initializers of layers (Conv/ConvTranspose/Gemm/
MatMul/LayerNormalization/BatchNormalization inputs after the first, the constant of an Add after
a layer: its bias) and any constant with a param encoding; other constants (shape tensors, the 3
and 6 of a hard-swish) are buffers.

Unsupported ops are collected over the whole graph first and refused in one line naming them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch

from qtool.encodings.encoding_set import EncodingSet
from qtool.errors import QtoolError
from qtool.ir.graph import opset
from qtool.train import ops_math, ops_nn, ops_shape
from qtool.train.attrs import Attrs
from qtool.train.fake_quant import FakeQuant

OPS = {**ops_math.OPS, **ops_shape.OPS, **ops_nn.OPS}
LAYERS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LayerNormalization", "BatchNormalization"}


def check_supported(model: ir.Model, source: str) -> None:
    """QtoolError naming every op type (and a node of it) the lowering has no function for."""
    missing: dict[str, str] = {}
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
            missing.setdefault(f"{node.domain + '.' if node.domain else ''}{node.op_type}", node.name or "?")
    if missing:
        listed = ", ".join(f"{op} (node '{node}')" for op, node in sorted(missing.items()))
        raise QtoolError(f"{source}: no torch lowering for op {listed}",
                         f"qat supports {len(OPS)} ops, listed in docs/qat.md")


def trainable_names(model: ir.Model, encodings: EncodingSet | None) -> set[str]:
    """The initializers QAT trains: layer weights and biases, and every parameter with an encoding."""
    names = set(encodings.params) if encodings is not None else set()
    for node in model.graph:
        if node.op_type in LAYERS:
            names |= {v.name for v in node.inputs[1:] if v is not None and v.const_value is not None}
        elif node.op_type == "Add":
            producers = [v.producer() for v in node.inputs if v is not None]
            if any(p is not None and p.op_type in LAYERS for p in producers):
                names |= {v.name for v in node.inputs if v is not None and v.const_value is not None}
    if "BatchNormalization" in {node.op_type for node in model.graph}:  # running statistics stay fixed
        for node in model.graph:
            if node.op_type == "BatchNormalization":
                names -= {v.name for v in node.inputs[3:5] if v is not None}
    return {name for name in names if model.graph.initializers.get(name) is not None
            and model.graph.initializers[name].const_value.numpy().dtype == np.float32}


class LoweredModel(torch.nn.Module):
    """`forward({input name: tensor})` -> {output name: tensor}, the simulated (or, with
    `quantized=False`, the float) model."""

    def __init__(self, model: ir.Model, encodings: EncodingSet | None, *, learn_ranges: bool = False,
                 fixed: frozenset[str] = frozenset(), source: str = "model") -> None:
        super().__init__()
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for node in model.graph for attr in node.attributes.values()):
            raise QtoolError(f"{source}: control flow (If/Loop/Scan subgraphs) has no torch lowering")
        check_supported(model, source)
        self.quantized = encodings is not None
        version = opset(model)
        trainable = trainable_names(model, encodings)
        self.weights = torch.nn.ParameterDict()
        self._keys: dict[str, str] = {}  # tensor name -> key in weights / buffers
        for index, (name, value) in enumerate(model.graph.initializers.items()):
            array = np.array(value.const_value.numpy())
            key = f"c{index}"
            self._keys[name] = key
            if name in trainable:
                self.weights[key] = torch.nn.Parameter(torch.from_numpy(array))
            else:
                self.register_buffer(key, torch.from_numpy(array), persistent=False)
        self.quantizers = torch.nn.ModuleDict()
        self._quantizer_of: dict[str, str] = {}
        for index, (name, enc) in enumerate(self._simulated(model, encodings)):
            key = f"q{index}"
            self.quantizers[key] = FakeQuant(enc, name, learn=learn_ranges and name not in fixed and not enc.frozen)
            self._quantizer_of[name] = key
        self.inputs = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
        self.outputs = [v.name for v in model.graph.outputs]
        self.program = [(OPS[node.op_type], Attrs.of(node, version), [v.name if v is not None else "" for v in node.inputs],
                         [v.name for v in node.outputs]) for node in model.graph]
        self._last_use = self._last_uses()

    @staticmethod
    def _simulated(model: ir.Model, encodings: EncodingSet | None):
        """(tensor, encoding) of every quantizer the QDQ model has, in the encodings' order."""
        if encodings is None:
            return
        inits = model.graph.initializers
        for name, enc in encodings.params.items():
            if enc.dtype == "int" and enc.bw >= 32:
                continue  # aimet's int32 bias encodings: lossless, not simulated (qdq.build_qdq_model)
            if name in inits and inits[name].const_value.numpy().dtype == np.float32:
                yield name, enc
        for name, enc in encodings.activations.items():
            if name not in inits or inits[name].const_value.numpy().dtype == np.float32:
                yield name, enc

    def _last_uses(self) -> dict[str, int]:
        """Step after which each computed tensor is no longer read (freed from the environment)."""
        last = {}
        for step, (_, _, inputs, _) in enumerate(self.program):
            for name in inputs:
                last[name] = step
        for name in self.outputs:
            last[name] = len(self.program)
        return last

    def constant(self, name: str) -> torch.Tensor:
        """An initializer as the model reads it (fake-quantized when it has an encoding)."""
        key = self._keys[name]
        value = self.weights[key] if key in self.weights else getattr(self, key)
        return self._quantize(name, value)

    def _quantize(self, name: str, value: torch.Tensor) -> torch.Tensor:
        key = self._quantizer_of.get(name)
        return self.quantizers[key](value) if key is not None and value.is_floating_point() else value

    def named_initializers(self) -> dict[str, torch.Tensor]:
        """Trained weights by tensor name (float, not fake-quantized): what the written model stores."""
        return {name: self.weights[key] for name, key in self._keys.items() if key in self.weights}

    def forward(self, feeds: dict[str, torch.Tensor], tap=None) -> dict[str, torch.Tensor]:
        """The graph's outputs for `feeds`. `tap(name, value) -> value`, when given, sees every
        computed tensor before its quantizer and may replace it (tests feed onnxruntime's values
        in, to compare op by op)."""
        env = self.run_steps(self.start(feeds), 0, len(self.program), tap)
        return {name: env[name] if name in env else self.constant(name) for name in self.outputs}

    def start(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The environment before the first node: the (quantized) graph inputs."""
        env: dict[str, torch.Tensor] = {}
        for name in self.inputs:
            if name not in feeds:
                raise QtoolError(f"input '{name}' is missing from the data", f"the model takes {self.inputs}")
            env[name] = self._quantize(name, feeds[name])
        return env

    def run_steps(self, env: dict[str, torch.Tensor], first: int, stop: int, tap=None) -> dict[str, torch.Tensor]:
        """Nodes first..stop-1 of the graph on `env` (the tensors alive before node `first`), in
        place; tensors no later node reads are dropped, so what is left is alive after `stop`."""
        for step in range(first, stop):
            function, attrs, inputs, outputs = self.program[step]
            args = []
            for name in inputs:
                if not name:
                    args.append(None)
                elif name in env:
                    args.append(env[name])
                else:
                    args.append(self.constant(name))
            result = function(attrs, *args)
            results = result if isinstance(result, tuple) else (result,)
            for name, value in zip(outputs, results):
                if name in self._last_use:  # an output nothing reads is not kept
                    env[name] = self._quantize(name, tap(name, value) if tap is not None else value)
            for name in inputs:
                if name in env and self._last_use.get(name) == step:
                    del env[name]
        return env
