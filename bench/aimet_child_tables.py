"""The ``tables`` job of bench/aimet_child.py (runs INSIDE build/aimet-venv): aimet's quantizer tables.

For each model x each runtime config shipped inside the installed aimet-onnx wheel
(``aimet_onnx/common/quantsim_config/*.json``, read from the wheel, never copied; --configs keeps
some), build ``QuantizationSimModel`` (int8/int8, min-max) and write its quantizer table: every
quantizer's tensor, kind (input/output/param), enabled, bit-width, symmetric, per-channel axis,
fixed range, tied partners and *which step of AIMET's configuration set each of those values*
(defaults, op_type.X, supergroup[A+B], pass.MatmulAdd, exception_rules, ...). The steps are traced
by wrapping aimet's own methods and diffing quantizer states around each call, so the table says
why, not only what. Also dumps the config schema and the registered graph passes.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import onnx

from aimet_child_common import CONFIG_DIR, aimet_version, build_sim
from aimet_onnx import quantsim as aq
from aimet_onnx.common.quantsim_config import quantsim_config_schema
from aimet_onnx.graph_passes import pass_registry
from aimet_onnx.graph_passes.fusions.fusion_registry import FUSION_PASS_REGISTRY
from aimet_onnx.graph_passes.fusions.utils import is_fused_supergroup
from aimet_onnx.quantsim_config import quantsim_config as qc
from aimet_onnx.utils import get_product_name_from_quantized_name as product_name


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


def traced_sim(model_path: Path, config_path: Path):
    """build_sim with the tracer reset: its steps fill TRACE.set_by for this sim only."""
    TRACE.__init__()
    TRACE.op_config_types = set(json.loads(config_path.read_text()).get("op_type", {}))
    sim = build_sim(model_path, config_path)
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
    configs = sorted(c for c in CONFIG_DIR.glob("*.json") if not args.configs or c.name in args.configs)
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
                sim = traced_sim(path, config)
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
