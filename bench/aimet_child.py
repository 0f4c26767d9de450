"""Runs INSIDE build/aimet-venv (aimet-onnx==2.42.0, torch==2.13.0 CPU): records what AIMET does.

Started by bench/bench_aimet.py, never imported by qtool or its tests (aimet is not one of
qtool's dependencies). Three jobs, chosen by --job:

* ``tables``: for each model x each runtime config shipped inside the installed aimet-onnx wheel
  (``aimet_onnx/common/quantsim_config/*.json``, read from the wheel, never copied), build
  ``QuantizationSimModel`` (int8/int8, min-max) and write its quantizer table: every quantizer's
  tensor, kind (input/output/param), enabled, bit-width, symmetric, per-channel axis, fixed range,
  tied partners and *which step of AIMET's configuration set each of those values* (defaults,
  op_type.X, supergroup[A+B], pass.MatmulAdd, exception_rules, ...). The steps are traced by
  wrapping aimet's own methods and diffing quantizer states around each call, so the table says
  why, not only what. Also dumps the config schema and the registered graph passes.
* ``export``: per model x config, compute_encodings on a few calibration samples, ``sim.export`` in
  every encodings version asked for (1.0.0, 2.0.0), and the outputs of the sim (evaluation and probe
  samples) and of its ``to_onnx_qdq`` export (evaluation): the fixtures for qtool's round-trip
  tests and the reverse SQNR.
* ``load``: per case, ``load_encodings_to_sim(sim, qtool_encodings, strict=True)`` on what ``qtool
  calibrate`` + ``qtool export`` wrote, and the exact error if refused (then the same load made to
  pass, names aimet has no tensor for dropped and strict=False, to list every setting that
  differs); SQNR of aimet's sim with qtool's encodings, and of aimet's own QDQ export of that sim
  (``to_onnx_qdq``), against qtool's own QDQ models.

Everything it writes is JSON with sorted keys; the parent turns it into fixtures and the doc.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx

import aimet_onnx
from aimet_onnx import quantsim as aq
from aimet_onnx.common.quantsim_config import quantsim_config_schema
from aimet_onnx.graph_passes import pass_registry
from aimet_onnx.graph_passes.fusions.fusion_registry import FUSION_PASS_REGISTRY
from aimet_onnx.graph_passes.fusions.utils import is_fused_supergroup
from aimet_onnx.quantsim_config import quantsim_config as qc
from aimet_onnx.utils import get_product_name_from_quantized_name as product_name

CONFIG_DIR = Path(aimet_onnx.__file__).parent / "common" / "quantsim_config"
SESSION = {"intra_op_num_threads": 1, "inter_op_num_threads": 1}  # the machine is shared


def aimet_version() -> str:
    from importlib.metadata import version
    return version("aimet-onnx")


# --------------------------------------------------------------------------- tracing

def _state(q) -> dict:
    """The settings of one QcQuantizeOp that the table records."""
    fixed = getattr(q, "_encoding_min_max_fixed_vals", None)
    per_channel = bool(q.quant_info.usePerChannelMode)
    return {
        "enabled": bool(q.enabled),
        "bitwidth": int(q.bitwidth),
        "dtype": q.data_type.name,
        "symmetric": bool(q.use_symmetric_encodings),
        "per_channel_axis": int(q.quant_info.channelAxis) if per_channel else None,
        "fixed_range": None if fixed is None else [None if v is None else float(v) for v in fixed],
        "strict_symmetric": bool(q.use_strict_symmetric),
        "unsigned_symmetric": bool(q.use_unsigned_symmetric),
    }


class Tracer:
    """Remembers, per quantizer and field, the last configuration step that changed it.

    Steps nest (op_type -> op_type.Relu): an outer step only claims the changes no inner step
    made during it."""

    def __init__(self) -> None:
        self.qdict: dict | None = None
        self.set_by: dict[str, dict[str, str]] = defaultdict(dict)
        self._seq = 0
        self._last: dict[tuple[str, str], int] = {}
        self.supergroups: list[dict] = []
        self.op_config_types: set[str] = set()  # op types named in the config file

    def run(self, label: str, fn, *args, **kwargs):
        if self.qdict is None:
            return fn(*args, **kwargs)
        before = {name: _state(q) for name, q in self.qdict.items()}
        self._seq += 1
        start = self._seq
        result = fn(*args, **kwargs)
        self._seq += 1
        for name, q in self.qdict.items():
            after = _state(q)
            old = before.get(name)
            for key, value in after.items():
                if old is not None and old[key] == value:
                    continue
                if self._last.get((name, key), -1) > start:
                    continue  # an inner step already claimed it
                self.set_by[name][key] = label
                self._last[(name, key)] = self._seq
        return result


TRACE = Tracer()


def _wrap(cls, method: str, label) -> None:
    original = getattr(cls, method)

    def wrapper(self, *args, **kwargs):
        if method == "__init__" or TRACE.qdict is None:
            qdict = getattr(self, "_quant_ops_dict", None) or getattr(self, "qc_quantize_op_dict", None)
            if qdict:
                TRACE.qdict = qdict
        name = label(self, *args) if callable(label) else label
        return TRACE.run(name, original, self, *args, **kwargs)

    setattr(cls, method, wrapper)


def _op_config_label(self, op_name, *_args) -> str:
    op = self._conn_graph.get_all_ops().get(op_name)
    op_type = op.type if op is not None else "?"
    origin = "op_type" if op_type in TRACE.op_config_types else "grid_preserving_default"
    return f"{origin}.{op_type}"


def install_tracing() -> None:
    """Wrap the steps of QuantSimConfigurator.configure_quantizers and of QuantizationSimModel.__init__."""
    cfg = qc.QuantSimConfigurator
    for method, label in [
        ("_disable_all_quantizers", "disable_all"),
        ("_set_default_configs_for_ops", "defaults.ops"),
        ("_set_default_configs_for_params", "defaults.params"),
        ("_set_strict_symmetric", "defaults.strict_symmetric"),
        ("_set_unsigned_symmetric", "defaults.unsigned_symmetric"),
        ("_set_param_configs", "params"),
        ("_set_op_type_configs", "op_type"),
        ("_set_supergroup_configs", "supergroups"),
        ("_set_model_input_configs", "model_input"),
        ("_set_model_output_configs", "model_output"),
        ("_override_precision", "precision"),
        ("_generate_and_apply_op_instance_specific_config", "per_channel_quantization"),
    ]:
        _wrap(cfg, method, label)

    original_set_op_type = cfg._set_op_type_configs
    original_config_for_op = cfg._set_config_for_op

    def set_op_type(self, op_configs):
        def per_op(inner_self, op_name, *rest):
            return TRACE.run(_op_config_label(inner_self, op_name), original_config_for_op, inner_self, op_name, *rest)
        cfg._set_config_for_op = per_op
        try:
            return original_set_op_type(self, op_configs)
        finally:
            cfg._set_config_for_op = original_config_for_op

    cfg._set_op_type_configs = set_op_type

    original_callback = qc.SupergroupConfigCallback.__call__

    def supergroup_callback(self, graph, op_list):
        label = "supergroup[" + "+".join(op.type for op in op_list) + "]"
        TRACE.supergroups.append({"ops": [op.name for op in op_list], "types": [op.type for op in op_list]})
        return TRACE.run(label, original_callback, self, graph, op_list)

    qc.SupergroupConfigCallback.__call__ = supergroup_callback

    original_apply = qc.apply_graph_passes

    def apply_graph_passes(model, conn_graph, quantizers, passes):
        for name in passes:
            TRACE.run(f"pass.{name}", original_apply, model, conn_graph, quantizers, [name])

    qc.apply_graph_passes = apply_graph_passes

    sim = aq.QuantizationSimModel
    for method, label in [
        ("_apply_param_symmetry_to_inputs", "param_symmetry_to_inputs"),
        ("_apply_exception_rules", "exception_rules"),
        ("_tie_quantizers_for_op_types", "tie_quantizers"),
        ("_tie_rnn_hidden_state_quantizers", "tie_rnn"),
        ("_tie_scan_quantizers", "tie_scan"),
    ]:
        _wrap(sim, method, label)


# --------------------------------------------------------------------------- the table

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _quiet():
    """aimet logs every step at INFO and warns through Python warnings: keep stdout for JSON."""
    logging.disable(logging.INFO)
    return contextlib.redirect_stdout(io.StringIO())


def build_sim(model_path: Path, config_path: Path, trace: bool = True):
    TRACE.__init__()
    raw = json.loads(config_path.read_text())
    TRACE.op_config_types = set(raw.get("op_type", {}))
    model = onnx.load(str(model_path))
    with _quiet():
        sim = aq.QuantizationSimModel(model, config_file=str(config_path), session_options_kwargs=SESSION)
    TRACE.qdict = None
    return sim


def _kinds(sim, original: onnx.ModelProto) -> tuple[dict, dict, dict]:
    """kind, parameter type and the producer/consumer op types of every tensor, from the sim's graph."""
    param_type = {}
    for op in sim.connected_graph.get_all_ops().values():
        for pname, (_product, ptype) in op.parameters.items():
            param_type[pname] = ptype
    graph = sim.model.model.graph
    producers, consumers = {}, defaultdict(set)
    for node in graph.node:
        if node.op_type == "QcQuantizeOp":
            continue
        label = node.op_type if not is_fused_supergroup(node) else f"{node.op_type}(fused)"
        for out in node.output:
            producers[out] = label
        for inp in node.input:
            consumers[product_name(inp) or inp].add(label)
    inputs = {i.name for i in original.graph.input}
    inits = {i.name for i in original.graph.initializer}
    for name in inputs:
        producers[name] = "model_input"
    for name in inits:
        producers.setdefault(name, "initializer")
    return param_type, producers, consumers


def quantizer_table(sim, model_path: Path) -> dict:
    original = onnx.load(str(model_path))
    param_type, producers, consumers = _kinds(sim, original)
    inputs = {i.name for i in original.graph.input}
    outputs = {o.name for o in original.graph.output}
    by_id = defaultdict(list)
    for name, q in sim.qc_quantize_op_dict.items():
        by_id[id(q)].append(name)
    rows = {}
    for name, q in sim.qc_quantize_op_dict.items():
        if name in sim.param_names:
            kind = "param"
        elif name in inputs or name in sim.input_quantizers_name:
            kind = "input"
        else:
            kind = "output"
        row = _state(q)
        row.pop("strict_symmetric")
        row.pop("unsigned_symmetric")
        row.update({
            "kind": kind,
            "param_type": param_type.get(name),
            "producer": producers.get(name),
            "consumers": sorted(consumers.get(name, ())),
            "model_output": name in outputs,
            "tied_with": sorted(n for n in by_id[id(q)] if n != name),
            "set_by": dict(sorted((k, v) for k, v in TRACE.set_by.get(name, {}).items()
                                  if k not in ("strict_symmetric", "unsigned_symmetric"))),
        })
        rows[name] = row
    fused = []
    for node in sim.model.model.graph.node:
        if is_fused_supergroup(node):
            fused.append({"name": node.name, "op_type": node.op_type, "domain": node.domain,
                          "inputs": [product_name(i) or i for i in node.input],
                          "outputs": list(node.output)})
    sim_tensors = {t for n in sim.model.model.graph.node for t in list(n.input) + list(n.output)}
    orig_tensors = {t for n in original.graph.node for t in n.output}
    flags = Counter((s["strict_symmetric"], s["unsigned_symmetric"]) for s in
                    (_state(q) for q in sim.qc_quantize_op_dict.values()))
    enabled = [r for r in rows.values() if r["enabled"]]
    return {
        "quantizers": rows,
        "fused_supergroups": fused,
        "tensors_fused_away": sorted(orig_tensors - sim_tensors - {o for o in outputs}),
        "supergroups_matched": sorted(TRACE.supergroups, key=lambda g: g["ops"]),
        "hw_version": sim._hw_version,
        "quantizer_flags": {f"strict_symmetric={s},unsigned_symmetric={u}": n for (s, u), n in sorted(flags.items())},
        "counts": {
            "quantizers": len(rows),
            "enabled": len(enabled),
            "enabled_by_kind": dict(sorted(Counter(r["kind"] for r in enabled).items())),
            "per_channel": sum(1 for r in enabled if r["per_channel_axis"] is not None),
            "symmetric": sum(1 for r in enabled if r["symmetric"]),
            "tied_groups": len({id(q) for name, q in sim.qc_quantize_op_dict.items() if len(by_id[id(q)]) > 1}),
        },
    }


def job_tables(args) -> None:
    install_tracing()
    models = json.loads(Path(args.models).read_text())
    configs = sorted(CONFIG_DIR.glob("*.json"))
    out = Path(args.out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    meta = {"aimet_onnx": aimet_version(), "config_dir": str(CONFIG_DIR), "configs": [c.name for c in configs],
            "schema": quantsim_config_schema.QUANTSIM_CONFIG_SCHEMA,
            "graph_passes": sorted(pass_registry.PASS_REGISTRY.passes),
            "fusion_passes": sorted(FUSION_PASS_REGISTRY.passes),
            "config_aliases": dict(sorted(__import__("aimet_onnx.common.quantsim_config.quantsim_config",
                                                     fromlist=["_config_file_aliases"])._config_file_aliases.items())),
            "op_outputs_to_ignore": list(aq.op_outputs_to_ignore), "op_types_to_tie_qtzrs": list(aq.op_types_to_tie_qtzrs),
            "errors": {}}
    for model in models:
        path = Path(model["path"])
        for config in configs:
            key = f"{model['name']}/{config.stem}"
            try:
                sim = build_sim(path, config)
                table = quantizer_table(sim, path)
            except Exception as exc:  # recorded, the bench goes on with the other pairs
                meta["errors"][key] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                traceback.print_exc()
                continue
            table.update({"aimet_onnx": meta["aimet_onnx"], "model": model["name"], "model_made_by": model["made_by"],
                          "model_sha256": _sha256(path), "config": config.name,
                          "supergroup_pass_list": json.loads(config.read_text()).get("supergroup_pass_list", []),
                          "sim_args": {"param_type": "int8", "activation_type": "int8", "quant_scheme": "min_max"}})
            target = out / "tables" / model["name"]
            target.mkdir(exist_ok=True)
            (target / f"{config.stem}.json").write_text(json.dumps(table, sort_keys=True))
            print(f"{key}: {table['counts']['enabled']}/{table['counts']['quantizers']} enabled", file=sys.stderr)
    (out / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=1))


# --------------------------------------------------------------------------- export / load

def _load_samples(path: str, count: int) -> list[dict]:
    data = np.load(path)
    n = min(len(data[k]) for k in data.files)
    return [{k: data[k][i:i + 1] for k in data.files} for i in range(min(n, count))]


def _outputs(sim, samples: list[dict]) -> list[list[np.ndarray]]:
    """Every output of the sim, per sample."""
    return [list(sim.session.run(None, s)) for s in samples]


def _qdq_outputs(sim, samples: list[dict]) -> list[list[np.ndarray]]:
    """The outputs of aimet's own QDQ export of `sim` (``to_onnx_qdq``: QuantizeLinear/DequantizeLinear,
    onnxruntime's arithmetic) on `samples`. aimet makes a dummy input from the model's input shapes
    for its parameter encodings; a model with unknown dimensions (the classifier) gets a real sample."""
    original = aq.make_dummy_input
    aq.make_dummy_input = lambda *_args, **_kwargs: dict(samples[0])
    try:
        with _quiet():
            model = sim.to_onnx_qdq()
    finally:
        aq.make_dummy_input = original
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "aimet_qdq.onnx")
        onnx.save(model, path)
        return _ort_all_outputs(path, samples)


def job_export(args) -> None:
    """Per case (model x config): compute_encodings on the calibration samples, ``sim.export`` in
    each version, and the sim's outputs on the evaluation and probe samples (the reverse SQNR)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for case in json.loads(Path(args.cases).read_text()):
        sim = build_sim(Path(case["model"]), CONFIG_DIR / case["config"])
        with _quiet():
            sim.compute_encodings(_load_samples(case["calib"], args.samples))
        prefix = f"{case['name']}__{Path(case['config']).stem}"
        for version in args.versions:
            with _quiet():
                sim.export(str(out), f"{prefix}__{version}", export_model=False, encoding_version=version)
        evaluation, probes = (_load_samples(case[split], 1 << 30) for split in ("eval", "probe"))
        for label, outputs in (("eval", _outputs(sim, evaluation)), ("probe", _outputs(sim, probes)),
                               ("eval_qdq", _qdq_outputs(sim, evaluation)), ("probe_qdq", _qdq_outputs(sim, probes))):
            np.savez(out / f"{prefix}__{label}_outputs.npz",
                     **{f"{i}_{j}": a for i, sample in enumerate(outputs) for j, a in enumerate(sample)})
        results[prefix] = sorted(p.name for p in out.glob(f"{prefix}__*"))
    (out / "export.json").write_text(json.dumps(results, sort_keys=True, indent=1))


def _sqnr(ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    r = np.concatenate([a.ravel() for a in ref]).astype(np.float64)
    t = np.concatenate([a.ravel() for a in test]).astype(np.float64)
    noise = np.sum((r - t) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(r ** 2) / noise))


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
        with _quiet():
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
        with _quiet():
            infos = aq.load_encodings_to_sim(sim, encodings, strict=False)
        result["relaxed"] = {"dropped_names": sorted(dropped), "mismatches": len(infos),
                             "by_setting": _mismatch_summary(infos)}
    flat = [a for sample in _outputs(sim, samples) for a in sample]
    aimet_qdq = [a for sample in _qdq_outputs(sim, samples) for a in sample]
    result["sqnr_db_aimet_qdq_vs_sim"] = _sqnr(aimet_qdq, flat)
    for key in ("qdq", "export_qdq"):
        if case.get(key):
            theirs = [a for sample in _ort_all_outputs(case[key], samples) for a in sample]
            result[f"sqnr_db_vs_{key}"] = _sqnr(theirs, flat)
            result[f"sqnr_db_aimet_qdq_vs_{key}"] = _sqnr(theirs, aimet_qdq)
    return result


def _ort_all_outputs(model_path: str, samples: list[dict]) -> list[list[np.ndarray]]:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    return [list(session.run(None, s)) for s in samples]


def job_load(args) -> None:
    """Every case of --cases in one process (aimet and torch take long to import)."""
    results = []
    for case in json.loads(Path(args.cases).read_text()):
        results.append({**case, **_load_one(case, _load_samples(case["eval"], args.samples))})
    Path(args.out).write_text(json.dumps(results, sort_keys=True, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", choices=("tables", "export", "load"), required=True)
    ap.add_argument("--models", help="tables: JSON list of {name, path, made_by}")
    ap.add_argument("--cases", help="export: JSON list of {model, name, config, calib, eval, probe}; "
                                    "load: JSON list of {model, config, encodings, eval, qdq, export_qdq}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--versions", nargs="*", default=["1.0.0", "2.0.0"])
    args = ap.parse_args()
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TMPDIR", tmp)
        {"tables": job_tables, "export": job_export, "load": job_load}[args.job](args)


if __name__ == "__main__":
    main()
