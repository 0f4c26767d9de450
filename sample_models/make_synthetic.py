"""Write the small synthetic ONNX models that qtool's tests and examples quantize.

Why synthetic: they are tiny (< 200 KB), carry no licence, and each one exercises a graph
pattern that a quantizer must handle (Conv+BN folding, ReLU6 as Clip in both the input and
the attribute form, residual Add, Concat, attention MatMuls, two graph inputs).

Why "realistic" weights: quantization error depends on weight and activation statistics.
Weights use He-normal init (std = sqrt(2 / fan_in)) and BatchNormalization layers get
non-trivial running mean/var, gamma and beta, with a few channels deliberately wider than
the rest, so that BN folding changes the weights and per-channel quantization pays off.

Deterministic: fixed seeds, no timestamps, so running it twice gives byte-identical files.

    python sample_models/make_synthetic.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
HERE = Path(__file__).resolve().parent


class Builder:
    """Accumulates nodes/initializers with a per-model seeded RNG and unique names."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count: dict[str, int] = {}

    def name(self, prefix: str) -> str:
        self.count[prefix] = self.count.get(prefix, 0) + 1
        return f"{prefix}_{self.count[prefix]}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def he(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             bias: bool = False) -> str:
        w = self.he((cout, cin // group, k, k), (cin // group) * k * k)
        inputs = [x, self.const("conv.weight", w)]
        if bias:
            inputs.append(self.const("conv.bias",
                                     (self.rng.standard_normal(cout) * 0.05).astype(np.float32)))
        p = k // 2
        return self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[p, p, p, p], group=group)

    def bn(self, x: str, c: int) -> str:
        """BN with statistics a trained net might have: some channels far off zero/unit."""
        r = self.rng
        gamma = r.uniform(0.5, 1.5, c)
        beta = r.normal(0.0, 0.3, c)
        mean = r.normal(0.0, 0.5, c)
        var = r.uniform(0.3, 2.5, c)
        wide = r.choice(c, size=max(1, c // 8), replace=False)
        var[wide] *= 6.0   # a few high-variance channels: folded weights shrink there
        gamma[wide[:1]] *= 3.0  # and one channel with a large gamma: folded weights grow
        ins = [x] + [self.const(f"bn.{n}", v.astype(np.float32))
                     for n, v in (("scale", gamma), ("bias", beta), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", ins, epsilon=1e-5, momentum=0.9)

    def relu6(self, x: str) -> str:
        lo = self.const("clip.min", np.array(0.0, np.float32))
        hi = self.const("clip.max", np.array(6.0, np.float32))
        return self.node("Clip", [x, lo, hi])

    def gemm(self, x: str, fin: int, fout: int, out: str | None = None) -> str:
        w = self.he((fout, fin), fin)  # PyTorch Linear layout: transB=1
        b = (self.rng.standard_normal(fout) * 0.05).astype(np.float32)
        return self.node("Gemm", [x, self.const("fc.weight", w), self.const("fc.bias", b)],
                         out, transB=1)

    def model(self, graph_name: str, inputs, outputs, opset: int = OPSET,
              ir_version: int = IR_VERSION, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="qtool-sample-models", producer_version="1",
                              doc_string=doc)
        m.ir_version = ir_version
        return m


def vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_bn_relu() -> onnx.ModelProto:
    b = Builder(1)
    x = "input"
    for cin, cout in ((3, 16), (16, 16)):
        x = b.node("Relu", [b.bn(b.conv(x, cin, cout, 3), cout)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])          # 16x16x16
    x = b.node("Relu", [b.bn(b.conv(x, 16, 32, 3), 32)])                      # block 3
    y = b.bn(b.conv(b.node("Relu", [b.bn(b.conv(x, 32, 32, 3), 32)]), 32, 32, 3), 32)
    x = b.node("Relu", [b.node("Add", [x, y])])                               # residual
    left = b.node("Relu", [b.conv(x, 32, 16, 1, bias=True)])
    right = b.node("Relu", [b.bn(b.conv(x, 32, 16, 3), 16)])
    x = b.node("Concat", [left, right], axis=1)                               # 32x16x16
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])       # 32x8x8
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    b.gemm(x, 32, 10, "logits")
    return b.model("conv_bn_relu", [vi("input", ["N", 3, 32, 32])], [vi("logits", ["N", 10])],
                   doc="Conv+BN+ReLU stack, MaxPool, residual Add, Concat, pools, Gemm head.")


def mobilenet_block() -> onnx.ModelProto:
    b = Builder(2)
    x = b.relu6(b.bn(b.conv("input", 3, 16, 3, stride=2), 16))               # 16x16x16

    def inverted_residual(x: str, cin: int, cout: int, expand: int, stride: int) -> str:
        hid = cin * expand
        h = b.relu6(b.bn(b.conv(x, cin, hid, 1), hid))                        # pointwise
        h = b.relu6(b.bn(b.conv(h, hid, hid, 3, stride=stride, group=hid), hid))  # depthwise
        h = b.bn(b.conv(h, hid, cout, 1), cout)                               # linear pw
        return b.node("Add", [x, h]) if stride == 1 and cin == cout else h

    x = inverted_residual(x, 16, 16, 4, 1)
    x = inverted_residual(x, 16, 24, 4, 2)                                    # 24x8x8
    x = inverted_residual(x, 24, 24, 4, 1)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    b.gemm(x, 24, 10, "logits")
    return b.model("mobilenet_block", [vi("input", ["N", 3, 32, 32])], [vi("logits", ["N", 10])],
                   doc="MobileNetV2-style inverted residual blocks with ReLU6 as Clip(x, 0, 6).")


def relu6_attr_opset6() -> onnx.ModelProto:
    """Clip's min/max were attributes until opset 11; old exports still carry that form."""
    b = Builder(3)
    x = b.conv("input", 3, 8, 3, bias=True)
    x = b.node("Clip", [x], min=0.0, max=6.0)
    # Head is a 1x1 Conv, not Gemm: onnxruntime has no kernel for Gemm-6 (nor Add-6).
    x = b.conv(x, 8, 4, 1, bias=True)
    b.node("Flatten", [b.node("GlobalAveragePool", [x])], "logits", axis=1)
    # ir_version stays 8 (initializers need not be graph inputs); only the opset is old.
    return b.model("relu6_attr_opset6", [vi("input", ["N", 3, 8, 8])], [vi("logits", ["N", 4])],
                   opset=6, doc="ReLU6 as Clip with min/max attributes (opset 6).")


def attention_block() -> onnx.ModelProto:
    b = Builder(4)
    d, t = 32, 16
    ln = b.node("LayerNormalization",
                ["tokens", b.const("ln.scale", b.rng.uniform(0.7, 1.3, d).astype(np.float32)),
                 b.const("ln.bias", (b.rng.standard_normal(d) * 0.1).astype(np.float32))],
                axis=-1, epsilon=1e-5)

    def proj(x: str, tag: str, out: str | None = None) -> str:
        # Xavier-like init for attention projections, x @ W layout (W is d_in x d_out).
        w = (b.rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
        bias = (b.rng.standard_normal(d) * 0.02).astype(np.float32)
        y = b.node("MatMul", [x, b.const(f"{tag}.weight", w)])
        return b.node("Add", [y, b.const(f"{tag}.bias", bias)], out)

    q, k, v = proj(ln, "q"), proj(ln, "k"), proj(ln, "v")
    kt = b.node("Transpose", [k], perm=[0, 2, 1])
    scores = b.node("MatMul", [q, kt])
    scores = b.node("Mul", [scores, b.const("scale", np.array(1.0 / np.sqrt(d), np.float32))])
    attn = b.node("Softmax", [scores], axis=-1)
    ctx = b.node("MatMul", [attn, v])
    o = proj(ctx, "o")
    b.node("Add", ["tokens", o], "out")
    return b.model("attention_block", [vi("tokens", ["N", t, d])], [vi("out", ["N", t, d])],
                   doc="Pre-LN single-head self-attention block with residual.")


def two_inputs() -> onnx.ModelProto:
    b = Builder(5)
    x = b.node("Relu", [b.bn(b.conv("image", 3, 8, 3), 8)])
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)        # N x 8
    f = b.node("Relu", [b.gemm("features", 8, 8)])                            # N x 8
    x = b.node("Concat", [x, f], axis=1)                                      # N x 16
    b.gemm(x, 16, 4, "scores")
    return b.model("two_inputs", [vi("image", ["N", 3, 16, 16]), vi("features", ["N", 8])],
                   [vi("scores", ["N", 4])], doc="Image branch and feature branch joined by Concat.")


def broken_layer() -> onnx.ModelProto:
    """A float-equivalent rescaling that per-tensor quantization cannot survive: output channel 5
    of the second convolution (weights and bias) times 1e4, input channel 5 of the third times
    1e-4. ReLU commutes with the positive scale, so the float function is unchanged, but that
    layer's weights and output have one channel 1e4 wider than the rest: the debugging flow
    (qtool analyze) must find it."""
    b = Builder(7)
    x = b.node("Relu", [b.conv("input", 3, 16, 3, bias=True)])
    second = b.conv(x, 16, 16, 3, bias=True)
    x = b.node("Relu", [second])
    third = b.conv(x, 16, 32, 3, stride=2, bias=True)
    weights = {t.name: t for t in b.inits}
    conv2, conv3 = b.nodes[-3], b.nodes[-1]
    for name, axis, factor in ((conv2.input[1], 0, 1e4), (conv2.input[2], 0, 1e4), (conv3.input[1], 1, 1e-4)):
        array = numpy_helper.to_array(weights[name]).copy()
        index = [slice(None)] * array.ndim
        index[axis] = 5
        array[tuple(index)] *= np.float32(factor)
        weights[name].CopyFrom(numpy_helper.from_array(array, name))
    x = b.node("Relu", [third])
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    b.gemm(x, 32, 10, "logits")
    return b.model("broken_layer", [vi("input", ["N", 3, 32, 32])], [vi("logits", ["N", 10])],
                   doc="One layer with a channel scaled by 1e4 (float-equivalent): the debugging flow's target.")


def token_encoder(vocab: int = 50, d: int = 16, classes: int = 4) -> onnx.ModelProto:
    """A BERT-shaped toy for variable-length text data (not written by `write_all`; the tests
    build it in memory): int64 input_ids / token_type_ids / attention_mask of shape
    (batch, seq) with a dynamic seq dim -> word + token-type embeddings (Gather; the token types
    through a Cast, as some exporters write them) -> LayerNormalization -> MatMul, Relu, MatMul (a pair for equalize)
    with a residual Add -> `hidden` (batch, seq, d), times the mask, first token -> MatMul ->
    `logits` (batch, classes). One output changes shape with the sequence, one does not."""
    b = Builder(23)  # a seed whose classes are balanced on random ids
    ids = b.node("Gather", [b.const("word.embedding", b.rng.standard_normal((vocab, d)).astype(np.float32)),
                            "input_ids"])
    types32 = b.node("Cast", ["token_type_ids"], to=TensorProto.INT32)
    types = b.node("Gather", [b.const("type.embedding", (b.rng.standard_normal((2, d)) * 0.5).astype(np.float32)),
                              types32])
    x = b.node("Add", [ids, types])
    x = b.node("LayerNormalization",
               [x, b.const("ln.scale", b.rng.uniform(0.7, 1.3, d).astype(np.float32)),
                b.const("ln.bias", (b.rng.standard_normal(d) * 0.1).astype(np.float32))], axis=-1, epsilon=1e-5)

    def dense(x: str, fin: int, fout: int, tag: str, bias: bool = True) -> str:
        y = b.node("MatMul", [x, b.const(f"{tag}.weight", b.he((fin, fout), fin))])
        if not bias:
            return y
        return b.node("Add", [y, b.const(f"{tag}.bias", (b.rng.standard_normal(fout) * 0.05).astype(np.float32))])

    h = b.node("Relu", [dense(x, d, 2 * d, "ffn1", bias=False)])  # MatMul -> Relu -> MatMul: a CLE pair
    hidden = b.node("Add", [x, dense(h, 2 * d, d, "ffn2")], "hidden")
    mask = b.node("Unsqueeze", [b.node("Cast", ["attention_mask"], to=TensorProto.FLOAT),
                                b.const("axes", np.array([2], np.int64))])           # (batch, seq, 1)
    first = b.const("first", np.array(0, np.int64))
    cls = b.node("Flatten", [b.node("Gather", [b.node("Mul", [hidden, mask]), first], axis=1)], axis=1)  # first token
    b.node("MatMul", [cls, b.const("cls.weight", b.he((d, classes), d))], "logits")
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
            for n in ("input_ids", "token_type_ids", "attention_mask")]
    return b.model("token_encoder", ints, [vi("logits", ["batch", classes]), vi("hidden", ["batch", "seq", d])],
                   doc="Token ids of any length -> embeddings, LayerNorm, FFN; pooled logits and per-token states.")


MODELS = {
    "broken_layer.onnx": broken_layer,
    "conv_bn_relu.onnx": conv_bn_relu,
    "mobilenet_block.onnx": mobilenet_block,
    "relu6_attr_opset6.onnx": relu6_attr_opset6,
    "attention_block.onnx": attention_block,
    "two_inputs.onnx": two_inputs,
}


def write_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, fn in MODELS.items():
        m = fn()
        onnx.checker.check_model(m, full_check=True)
        path = out_dir / fname
        path.write_bytes(m.SerializeToString(deterministic=True))
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: here)")
    args = ap.parse_args()
    for p in write_all(args.out):
        print(f"{p}  {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
