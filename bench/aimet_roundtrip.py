"""The qtool half of the compat bench's round trips (bench/bench_aimet.py; issue 15 part 3).

For each model x config of EXPORT_CONFIGS, with the config *file* aimet ships (placement "aimet"):

* forward: ``qtool calibrate --config FILE`` + ``qtool export --encoding-version V`` for V in 1.0.0
  and 2.0.0; aimet_child.py then loads each file with ``load_encodings_to_sim(strict=True)`` and
  compares its sim with qtool's QDQ models (``qtool simulate``'s, float biases as aimet's sim has
  them, and export's deployable one with int32 biases);
* reverse: ``qtool simulate MODEL --encodings <aimet's export>`` for both versions, run on the
  evaluation samples and compared here with the outputs aimet's own sim gave on them, and those of
  aimet's own QDQ export of that sim (``to_onnx_qdq``).

aimet's sim and onnxruntime's QuantizeLinear round a value exactly half-way between two grid
points differently: aimet's QcQuantizeOp rounds it up (62.5 -> 63, -2.5 -> -2), onnxruntime to
the even neighbour (62.5 -> 62), so a float32 x / scale that lands on .5 goes one step apart. qtool's
QDQ model follows onnxruntime (it is what deploys), so the sim figures carry that difference,
amplified by the layers after it; the to_onnx_qdq figures compare like with like.

Data: the classifier's real calibration/evaluation lines; seeded Gaussian inputs for the others;
the probe inputs of tests/aimet_models.py, on which the fixtures record aimet's outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "sample_models"))

import aimet_models  # noqa: E402  (tests/aimet_models.py: probe inputs, norms blocks)
import ocr_data  # noqa: E402  (sample_models/ocr_data.py, numpy-only)

VERSIONS = ("1.0.0", "2.0.0")
CALIB_SAMPLES, EVAL_SAMPLES = 16, 32


def _save(path: Path, samples: list[dict[str, np.ndarray]]) -> Path:
    """Samples (batch 1 each) as one .npz keyed by input name."""
    np.savez(path, **{k: np.concatenate([s[k] for s in samples]) for k in samples[0]})
    return path


def prepare_data(models: list[dict], work: Path, classifier: str) -> dict[str, dict[str, str]]:
    """{model: {calib, eval, probe: .npz path}}."""
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for model in models:
        name, path = model["name"], Path(model["path"])
        paths = {}
        for split, count, seed in (("calib", CALIB_SAMPLES, 1), ("eval", EVAL_SAMPLES, 2)):
            if name == classifier:
                x, _labels = ocr_data.load_split("cls", split, limit=count)
                samples = [{"x": x[i:i + 1].astype(np.float32)} for i in range(len(x))]
            else:
                samples = aimet_models.random_inputs(path, name, count, seed)
            paths[split] = str(_save(folder / f"{name}_{split}.npz", samples))
        probes = aimet_models.random_inputs(path, name, aimet_models.PROBES, aimet_models.PROBE_SEED)
        paths["probe"] = str(_save(folder / f"{name}_probe.npz", probes))
        data[model["name"]] = paths
    return data


def outputs(model_path: Path, npz: str) -> list[np.ndarray]:
    """Every output of every sample, QDQ nodes kept as float ops (no graph optimisation)."""
    session = _session(model_path)
    data = np.load(npz)
    count = min(len(data[k]) for k in data.files)
    return [a for i in range(count) for a in session.run(None, {k: data[k][i:i + 1] for k in data.files})]


def sqnr(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    ref = np.concatenate([a.ravel() for a in reference]).astype(np.float64)
    out = np.concatenate([a.ravel() for a in test]).astype(np.float64)
    noise = float(np.sum((ref - out) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref ** 2) / noise))


def qtool_forward(sh, model: dict, config: Path, data: dict, work: Path) -> dict:
    """qtool calibrate + export (both versions) + simulate with aimet's config file."""
    stem = f"{model['name']}__{config.stem}"
    folder = work / "qtool" / stem
    pair = folder / "pair"
    sh(["qtool", "calibrate", model["path"], "--data", data["calib"], "--samples", str(CALIB_SAMPLES),
        "--config", config, "-o", pair])
    sh(["qtool", "simulate", f"{pair}.onnx", "--data", data["eval"], "-o", folder / "sim_qdq.onnx"])
    files = {"qdq": str(folder / "sim_qdq.onnx"), "aimet_qdq": str(folder / "aimet_qdq_of_qtool_encodings.onnx")}
    for version in VERSIONS:
        prefix = f"{stem}__{version}"
        sh(["qtool", "export", f"{pair}.onnx", "-o", folder, "--prefix", prefix, "--encoding-version", version])
        files[version] = str(folder / f"{prefix}.encodings")
        files[f"export_qdq_{version}"] = str(folder / f"{prefix}_qdq.onnx")
    return files


def load_cases(models: list[dict], configs: tuple[str, ...], forward: dict, data: dict) -> list[dict]:
    """aimet_child.py's load job: one case per model x config x version."""
    return [{"name": m["name"], "model": m["path"], "config": c, "version": v, "encodings": forward[(m["name"], c)][v],
             "eval": data[m["name"]]["eval"], "qdq": forward[(m["name"], c)]["qdq"],
             "export_qdq": forward[(m["name"], c)][f"export_qdq_{v}"],
             **({"keep_aimet_qdq": forward[(m["name"], c)]["aimet_qdq"]} if v == VERSIONS[0] else {})}
            for m in models for c in configs for v in VERSIONS]


def reverse(sh, model: dict, config: str, data: dict, exports: Path, work: Path) -> dict:
    """qtool's QDQ model from aimet's exported encodings (each version) against aimet's own sim."""
    stem = f"{model['name']}__{Path(config).stem}"
    refused = json.loads((exports / "export.json").read_text()).get(stem, {})
    if "error" in refused:
        return {v: {"error": f"aimet's own sim.export refused: {refused['error']}"} for v in VERSIONS}
    reference, aimet_qdq = (_recorded(exports / f"{stem}__{label}_outputs.npz") for label in ("eval", "eval_qdq"))
    result = {}
    for version in VERSIONS:
        qdq = work / "qtool" / stem / f"from_aimet_{version}.onnx"
        done = sh(["qtool", "simulate", model["path"], "--encodings", exports / f"{stem}__{version}.encodings",
                   "--data", data["eval"], "-o", qdq], check=False)
        if done.returncode != 0:
            result[version] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1].replace(f"{ROOT}/", "")}
            continue
        ours = outputs(qdq, data["eval"])
        result[version] = {"sqnr_db": sqnr(reference, ours), "sqnr_db_vs_aimet_qdq": sqnr(aimet_qdq, ours)}
    return result


def _recorded(path: Path) -> list[np.ndarray]:
    """Outputs saved by aimet_child.py, keyed sample_output, in order."""
    saved = np.load(path)
    return [saved[k] for k in sorted(saved.files, key=lambda k: tuple(map(int, k.split("_"))))]


def probe_fixture(exports: Path, stem: str) -> str:
    """aimet's outputs on the probe inputs, of its sim and of its own QDQ export (to_onnx_qdq), as
    committed (tests/test_aimet_roundtrip.py reads them)."""
    def entries(label: str) -> list[dict]:
        return [{"shape": list(a.shape), "values": [float(v) for v in a.astype(np.float32).ravel()]}
                for a in _recorded(exports / f"{stem}__{label}_outputs.npz")]

    head = {"probe_seed": aimet_models.PROBE_SEED, "probes": aimet_models.PROBES}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
    for key, label in (("sim_outputs", "probe"), ("qdq_outputs", "probe_qdq")):
        lines.append(f" {json.dumps(key)}: [\n  " + ",\n  ".join(json.dumps(e) for e in entries(label)) + "\n ]")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def diverge_cases(models: list[dict], configs: tuple[str, ...], forward: dict, data: dict, exports: Path,
                  work: Path) -> list[dict]:
    """aimet_child.py's diverge job, per model x config: forward (qtool's 1.0.0 encodings in aimet's
    sim against qtool simulate's QDQ model) and reverse (aimet's own 1.0.0 export against qtool's QDQ
    model made from it)."""
    cases = []
    for m in models:
        for c in configs:
            stem = f"{m['name']}__{Path(c).stem}"
            common = {"name": m["name"], "model": m["path"], "config": c, "eval": data[m["name"]]["eval"]}
            cases.append({**common, "direction": "forward", "encodings": forward[(m["name"], c)]["1.0.0"],
                          "qdq": forward[(m["name"], c)]["qdq"]})
            reverse_qdq = work / "qtool" / stem / "from_aimet_1.0.0.onnx"
            if reverse_qdq.exists():
                cases.append({**common, "direction": "reverse", "encodings": str(exports / f"{stem}__1.0.0.encodings"),
                              "qdq": str(reverse_qdq)})
    return cases


def same_weights(aimet_qdq: str, qdq: str, npz: str) -> dict | None:
    """aimet's QDQ export of its sim holding qtool's encodings against qtool's QDQ model with its
    stored weight integers replaced by the ones aimet's export computes at run time (its
    QuantizeLinear of the float weight): what is left once the weights' near-halves, which numpy
    and onnxruntime's QuantizeLinear may round apart, are taken out. None when the load job did not
    keep aimet's model."""
    import onnx
    from onnx import numpy_helper

    if not Path(aimet_qdq).exists():
        return None
    theirs = onnx.load(aimet_qdq)
    names = [o for n in theirs.graph.node if n.op_type == "QuantizeLinear" for o in n.output]
    probe = onnx.load(aimet_qdq)
    probe.graph.ClearField("output")
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in names)
    data = np.load(npz)
    integers = dict(zip(names, _session(probe).run(None, {k: data[k][:1] for k in data.files})))
    ours = onnx.load(qdq)
    initializers = {i.name: i for i in ours.graph.initializer}
    changed = 0
    for node in ours.graph.node:
        stored = node.input[0] if node.op_type == "DequantizeLinear" else ""
        found = integers.get(stored.removesuffix("_quantized") + "_q") if stored.endswith("_quantized") else None
        if found is not None and stored in initializers:
            old = numpy_helper.to_array(initializers[stored])
            new = found.astype(old.dtype).reshape(old.shape)
            changed += int(np.sum(old != new))
            initializers[stored].CopyFrom(numpy_helper.from_array(new, stored))
    patched = Path(qdq).with_name("qdq_with_aimet_weight_integers.onnx")
    onnx.save(ours, patched)
    return {"weight_values_changed": changed,
            "sqnr_db": sqnr(outputs(Path(aimet_qdq), npz), outputs(patched, npz))}


def _session(model):
    """onnxruntime on a path or a ModelProto, no graph optimisation, one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
