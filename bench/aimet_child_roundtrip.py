"""The ``export``, ``load`` and ``diverge`` jobs of bench/aimet_child.py (runs INSIDE build/aimet-venv).

* ``export``: per model x config, compute_encodings on a few calibration samples, ``sim.export`` in
  every encodings version asked for (1.0.0, 2.0.0), and the outputs of the sim (evaluation and probe
  samples) and of its ``to_onnx_qdq`` export (evaluation): the fixtures for qtool's round-trip
  tests and the reverse SQNR.
* ``load``: per case, ``load_encodings_to_sim(sim, qtool_encodings, strict=True)`` on what ``qtool
  calibrate`` + ``qtool export`` wrote, and the exact error if refused (then the same load made to
  pass, names aimet has no tensor for dropped and strict=False, to list every setting that
  differs); SQNR of aimet's sim with qtool's encodings, and of aimet's own QDQ export of that sim
  (``to_onnx_qdq``), against qtool's own QDQ models.
* ``diverge``: aimet's sim with some encodings against a QDQ model with the same ones, quantizer by
  quantizer: where the two runs first part, and how many values each quantizer met that aimet's
  rounding (offset added in float32 before rounding, halves up) and onnxruntime's (halves to
  even, offset after) put on different integers.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from aimet_child_common import CONFIG_DIR, build_sim, load_samples, ort_all_outputs, ort_session, quiet, sqnr
from aimet_onnx import quantsim as aq


def _outputs(sim, samples: list[dict]) -> list[list[np.ndarray]]:
    """Every output of the sim, per sample."""
    return [list(sim.session.run(None, s)) for s in samples]


def _qdq_outputs(sim, samples: list[dict], keep: str | None = None) -> list[list[np.ndarray]]:
    """The outputs of aimet's own QDQ export of `sim` (``to_onnx_qdq``: QuantizeLinear/DequantizeLinear,
    onnxruntime's arithmetic) on `samples`, the model itself saved as `keep` when given. aimet makes
    a dummy input from the model's input shapes for its parameter encodings; a model with unknown
    dimensions (the classifier) gets a real sample."""
    original = aq.make_dummy_input
    aq.make_dummy_input = lambda *_args, **_kwargs: dict(samples[0])
    try:
        with quiet():
            model = sim.to_onnx_qdq()
    finally:
        aq.make_dummy_input = original
    with tempfile.TemporaryDirectory() as tmp:
        path = keep or os.path.join(tmp, "aimet_qdq.onnx")
        onnx.save(model, path)
        return ort_all_outputs(path, samples)


def job_export(args) -> None:
    """Per case (model x config): compute_encodings on the calibration samples, ``sim.export`` in
    each version, and the sim's outputs on the evaluation and probe samples (the reverse SQNR)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for case in json.loads(Path(args.cases).read_text()):
        sim = build_sim(Path(case["model"]), CONFIG_DIR / case["config"])
        with quiet():
            sim.compute_encodings(load_samples(case["calib"], args.samples))
        prefix = f"{case['name']}__{Path(case['config']).stem}"
        try:
            for version in args.versions:
                with quiet():
                    sim.export(str(out), f"{prefix}__{version}", export_model=False, encoding_version=version)
        except Exception as exc:  # aimet's own limits (a bias shared by many Gemms); recorded, the bench goes on
            results[prefix] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        evaluation, probes = (load_samples(case[split], 1 << 30) for split in ("eval", "probe"))
        for label, outputs in (("eval", _outputs(sim, evaluation)), ("probe", _outputs(sim, probes)),
                               ("eval_qdq", _qdq_outputs(sim, evaluation)), ("probe_qdq", _qdq_outputs(sim, probes))):
            np.savez(out / f"{prefix}__{label}_outputs.npz",
                     **{f"{i}_{j}": a for i, sample in enumerate(outputs) for j, a in enumerate(sample)})
        results[prefix] = sorted(p.name for p in out.glob(f"{prefix}__*"))
    (out / "export.json").write_text(json.dumps(results, sort_keys=True, indent=1))


def _mismatch_summary(infos) -> dict:
    fields = ("enabled_mismatch", "dtype_mismatch", "bitwidth_mismatch", "is_symmetric_mismatch",
              "is_strict_symmetric_mismatch", "is_unsigned_symmetric_mismatch", "enc_type_mismatch")
    by_field = defaultdict(list)
    for info in infos:
        for f in fields:
            value = getattr(info, f)
            if value is not None:
                by_field[f"{f.removesuffix('_mismatch')}: aimet {value[0]}, file {value[1]}"].append(info.quantizer_name)
    return {k: sorted(v) for k, v in sorted(by_field.items())}


def _load_one(case: dict, samples: list[dict]) -> dict:
    """Strict load of qtool's encodings into aimet's sim; the relaxed load's mismatches when it is
    refused; SQNR of the sim with them against qtool's own QDQ models."""
    result: dict = {"config": case["config"], "encodings": os.path.basename(case["encodings"])}
    encodings = json.loads(Path(case["encodings"]).read_text())
    sim = build_sim(Path(case["model"]), CONFIG_DIR / case["config"])
    try:
        with quiet():
            aq.load_encodings_to_sim(sim, copy.deepcopy(encodings), strict=True)
        result["strict"] = {"ok": True}
    except Exception as exc:
        result["strict"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        # The relaxed load: names aimet has no tensor for are dropped (else it refuses whatever strict says).
        sim = build_sim(Path(case["model"]), CONFIG_DIR / case["config"])
        tensors = sim.connected_graph.get_all_products()
        dropped = []
        for section in ("activation_encodings", "param_encodings", "encodings"):
            entries = encodings.get(section)
            if isinstance(entries, list):
                keep = [e for e in entries if e["name"] in sim.qc_quantize_op_dict or e["name"] in tensors]
                dropped += [e["name"] for e in entries if e not in keep]
                encodings[section] = keep
        with quiet():
            infos = aq.load_encodings_to_sim(sim, encodings, strict=False)
        result["relaxed"] = {"dropped_names": sorted(dropped), "mismatches": len(infos),
                             "by_setting": _mismatch_summary(infos)}
    flat = [a for sample in _outputs(sim, samples) for a in sample]
    try:
        aimet_qdq = [a for sample in _qdq_outputs(sim, samples, case.get("keep_aimet_qdq")) for a in sample]
        result["sqnr_db_aimet_qdq_vs_sim"] = sqnr(aimet_qdq, flat)
    except Exception as exc:  # to_onnx_qdq shares export's limits
        aimet_qdq, result["aimet_qdq_error"] = None, f"{type(exc).__name__}: {exc}"[:500]
    for key in ("qdq", "export_qdq"):
        if case.get(key):
            theirs = [a for sample in ort_all_outputs(case[key], samples) for a in sample]
            result[f"sqnr_db_vs_{key}"] = sqnr(theirs, flat)
            if aimet_qdq is not None:
                result[f"sqnr_db_aimet_qdq_vs_{key}"] = sqnr(theirs, aimet_qdq)
    return result


def job_load(args) -> None:
    """Every case of --cases in one process (aimet and torch take long to import)."""
    results = []
    for case in json.loads(Path(args.cases).read_text()):
        results.append({**case, **_load_one(case, load_samples(case["eval"], args.samples))})
    Path(args.out).write_text(json.dumps(results, sort_keys=True, indent=1))


# --------------------------------------------------------------------------- where two runs part

def _scale(q) -> tuple[float, float, int, int] | None:
    """(scale, offset, lowest, highest integer) of aimet's per-tensor activation quantizer `q`."""
    encodings = q.get_encodings() if q.enabled else None
    if not encodings or len(encodings) != 1:
        return None
    e = encodings[0]
    return float(e.delta), float(e.offset), 0, (1 << int(e.bw)) - 1


def _rounded_apart(x: np.ndarray, scale: float, offset: float, low: int, high: int) -> int:
    """How many values of `x` aimet's QcQuantizeOp and onnxruntime's QuantizeLinear put on different
    integers with the same encoding. aimet (measured, libpymo): q = floor(float32(x / scale - offset)
    + 0.5), the offset added *before* rounding, in float32, a half rounded up; onnxruntime: q =
    rint(x / scale) - offset, a half to even. x / scale = 37.499996 with offset -111 is 148.5 in
    float32: aimet 149, onnxruntime 37 + 111 = 148."""
    ratio = x.astype(np.float32) / np.float32(scale)
    ours = np.clip(np.floor((ratio - np.float32(offset)).astype(np.float32) + np.float32(0.5)), low, high)
    theirs = np.clip(np.rint(ratio) - offset, low, high)
    return int(np.sum(ours != theirs))


def _diverge_one(case: dict, samples: list[dict]) -> dict:
    """aimet's sim holding `case["encodings"]` against the QDQ model `case["qdq"]`, tensor by tensor.

    For every enabled activation quantizer of the sim (in graph order): how many quantized values
    differ; whether the values it quantized were equal in both runs (then the difference is born
    there); and how many of those values the two roundings put apart (`_rounded_apart`): where that
    count equals the differences born there, the rounding explains them all. Sample by sample, so a
    large model's intermediate tensors are never all held. Also the weights (parameter quantizers)
    whose integers differ: aimet's sim rounds them its own way, the QDQ model stores qtool's."""
    sim = build_sim(Path(case["model"]), CONFIG_DIR / case["config"])
    with quiet():
        aq.load_encodings_to_sim(sim, json.loads(Path(case["encodings"]).read_text()), strict=False)
    graph = sim.model.model.graph
    params = {i.name for i in graph.initializer}
    enabled = [(n.input[0], n.output[0]) for n in graph.node if n.op_type == "QcQuantizeOp"
               and sim.qc_quantize_op_dict[n.input[0]].enabled]
    quantizers = [(t, out) for t, out in enabled if t not in params]
    qdq = onnx.load(case["qdq"])
    produced = {o for n in qdq.graph.node for o in n.output}
    weights = {out: f"{t}_dequantized" for t, out in enabled if t in params and f"{t}_dequantized" in produced}
    present = {o.name for o in graph.output}
    for name in ({t for pair in quantizers for t in pair} | set(weights)) - present:
        graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sim._rebuild_session()
    names = [o.name for o in sim.session.get_outputs()]
    wanted = [t for t, _ in quantizers if f"{t}_DequantizeLinear" in produced]
    have = {o.name for o in qdq.graph.output}
    for name in ({x for t in wanted for x in (t, f"{t}_DequantizeLinear")} | set(weights.values())) - have:
        qdq.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort_session(qdq)
    qnames = [o.name for o in session.get_outputs()]
    scales = {t: _scale(sim.qc_quantize_op_dict[t]) for t in wanted}
    stats = {t: {"values": 0, "differ": 0, "inputs_differ": 0, "rounded_apart": 0} for t in wanted}
    weights_differ: dict[str, int] = {}
    for sample in samples:
        ours = dict(zip(names, sim.session.run(None, sample)))
        theirs = dict(zip(qnames, session.run(None, sample)))
        for out, dequantized in weights.items():
            weights_differ[dequantized[:-len("_dequantized")]] = int(np.sum(ours[out] != theirs[dequantized]))
        for t, out in quantizers:
            if t not in stats:
                continue
            s = stats[t]
            s["values"] += ours[out].size
            s["differ"] += int(np.sum(ours[out] != theirs[f"{t}_DequantizeLinear"]))
            s["inputs_differ"] += int(np.sum(ours[t] != theirs[t]))
            if scales[t]:
                s["rounded_apart"] += _rounded_apart(ours[t], *scales[t])
    born = [{"tensor": t, **s} for t, s in stats.items() if s["differ"] and not s["inputs_differ"]]
    return {"quantizers_compared": len(stats), "quantizers_differ": sum(1 for s in stats.values() if s["differ"]),
            "values": sum(s["values"] for s in stats.values()),
            "rounded_apart": sum(s["rounded_apart"] for s in stats.values()),
            "born": born, "born_explained": sum(1 for b in born if b["rounded_apart"] == b["differ"]),
            "not_compared": sorted({t for t, _ in quantizers} - set(stats))[:20],
            "weights_compared": len(weights_differ),
            "weights_differ": {k: v for k, v in sorted(weights_differ.items()) if v}}


def job_diverge(args) -> None:
    """Every case of --cases ({model, config, encodings, qdq, eval, label}) in one process."""
    results = [{**case, **_diverge_one(case, load_samples(case["eval"], args.samples))}
               for case in json.loads(Path(args.cases).read_text())]
    Path(args.out).write_text(json.dumps(results, sort_keys=True, indent=1))
