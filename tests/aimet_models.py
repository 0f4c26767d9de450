"""Models the aimet compat bench records besides the sample models, built here (not committed):
written-out LayerNorms and RMSNorms around a MatMul+Add, the patterns of aimet-onnx's
``LayerNormalization``, ``RMSNormalization`` and ``MatmulAdd`` fusions and passes.

``norms_block(17)``: every ReduceMean has its axes as an attribute, so aimet fuses the LayerNorms
(graph_passes/fusions/layernorm.py); ``norms_block(18)``: the axes are inputs, the fusion does not
match and aimet's LayerNorm pass (graph_passes/passes/layernorm.py) switches the inner quantizers off
instead. bench/bench_aimet.py writes both and records aimet's tables on them;
tests/test_aimet_placement.py rebuilds them to compare qtool's plan with those tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WIDTH = 16


def norms_block(opset: int):
    """LayerNorm (Pow, Sqrt, Div, gamma, beta) -> MatMul + Add -> Relu -> RMSNorm (x * x, Pow -0.5,
    gamma) -> LayerNorm (x * x, eps first, Reciprocal, gamma first, no beta), input [1, 8, 16]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def mean(x, out):
        if opset >= 18:
            inits.append(numpy_helper.from_array(np.array([-1], np.int64), f"{out}_axes"))
            return node("ReduceMean", [x, f"{out}_axes"], out)
        return node("ReduceMean", [x], out, axes=[-1])

    centered = node("Sub", ["x", mean("x", "ln1_mean")], "ln1_centered")
    variance = mean(node("Pow", [centered, const("two", 2.0)], "ln1_sq"), "ln1_var")
    std = node("Sqrt", [node("Add", [variance, const("eps", 1e-5)], "ln1_var_eps")], "ln1_std")
    scaled = node("Mul", [node("Div", [centered, std], "ln1_norm"), const("ln1.gamma", rng.uniform(0.5, 1.5, WIDTH))],
                  "ln1_scaled")
    ln1 = node("Add", [scaled, const("ln1.beta", rng.normal(0, 0.1, WIDTH))], "ln1_out")
    matmul = node("MatMul", [ln1, const("fc.weight", rng.normal(0, 0.2, (WIDTH, WIDTH)))], "fc_matmul")
    relu = node("Relu", [node("Add", [matmul, const("fc.bias", rng.normal(0, 0.1, WIDTH))], "fc_out")], "relu_out")
    mean_sq = mean(node("Mul", [relu, relu], "rms_sq"), "rms_mean")
    inverse = node("Pow", [node("Add", [mean_sq, const("eps2", 1e-6)], "rms_mean_eps"), const("minus_half", -0.5)],
                   "rms_inv")
    rms = node("Mul", [node("Mul", [relu, inverse], "rms_norm"), const("rms.gamma", rng.uniform(0.5, 1.5, WIDTH))],
               "rms_out")
    centered = node("Sub", [rms, mean(rms, "ln2_mean")], "ln2_centered")
    variance = mean(node("Mul", [centered, centered], "ln2_sq"), "ln2_var")
    std = node("Sqrt", [node("Add", [const("eps3", 1e-5), variance], "ln2_var_eps")], "ln2_std")
    normed = node("Mul", [centered, node("Reciprocal", [std], "ln2_inv")], "ln2_norm")
    node("Mul", [const("ln2.gamma", rng.uniform(0.5, 1.5, WIDTH)), normed], "y")
    graph = helper.make_graph(nodes, f"norms_block_opset{opset}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qtool-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


BUILT = {"norms_block": lambda: norms_block(17), "norms_block_opset18": lambda: norms_block(18)}


def write(name: str, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(BUILT[name](), str(path))
    return path


PROBES, PROBE_SEED = 4, 0  # the inputs aimet's sim outputs are recorded on (tests/fixtures/aimet/encodings)
FIXED_SHAPES = {"ppocr_cls_folded": {"x": (1, 3, 48, 192)}}  # its height and width are not in the graph


def random_inputs(model_path: Path, name: str, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`count` samples (batch 1) of standard normal float32 inputs of the model's input shapes."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    shapes = FIXED_SHAPES.get(name) or {
        i.name: tuple(d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim)
        for i in graph.input if i.name not in initializers}
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()} for _ in range(count)]
