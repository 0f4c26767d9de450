"""`info`: what a model is (inputs, outputs, ops, parameters) and where the plan puts quantizers."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from qtool.commands.fields import DataArg, option
from qtool.commands.options import OVERRIDES_HELP
from qtool.commands.report import Report


@dataclass(frozen=True, kw_only=True)
class InfoOptions:
    config: str = option("default", "Runtime config for the quantizer plan.")
    per_channel: bool | None = option(None, "Weight granularity (overrides the config).",
                                      flag="--per-channel/--per-tensor")
    overrides: str | None = option(None, OVERRIDES_HELP)
    ranges: bool = option(False, "Per layer, the widest/narrowest output-channel weight range ratio (high: CLE helps).")
    compare: str | None = option(None, "With --ranges: a second model (e.g. after equalize) side by side.")
    data: DataArg = option(None, "Calibration data (as for calibrate): one min-max pass shows the decisions that "
                                 "need ranges (Concats whose parts get their own grids).")
    samples: int = option(32, "With --data: samples used.", bounds=(1, None))


def info(model: str | os.PathLike, output: None = None, options: InfoOptions = InfoOptions()) -> Report:
    """Inputs, outputs, op counts, parameter count and the tensors the plan would quantize.

    Example: qtool info model.onnx --config w8a8-per-channel
    """
    from qtool.analysis.weight_ranges import format_table, layer_ranges, ranges_table
    from qtool.commands.inputs import read_overrides
    from qtool.ir.graph import load_model
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plan.config import load_config
    from qtool.plan.not_applied import not_applied
    from qtool.runtime.sessions import input_infos

    graph = load_model(model)
    if options.ranges:
        after = layer_ranges(load_model(options.compare)) if options.compare else None
        rows = ranges_table(layer_ranges(graph), after)
        return Report({"layers": rows}, [format_table(rows)])
    config = load_config(options.config)
    plan = build_plan(graph, config, PlanOptions(per_channel=options.per_channel, overrides=read_overrides(options.overrides)))
    ops: dict[str, int] = {}
    for node in graph.graph:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    params = sum(int(v.const_value.size) for v in graph.graph.initializers.values() if v.const_value is not None)
    summary = {
        "inputs": {i.name: [d if d is not None else "?" for d in (i.shape or ())] for i in input_infos(graph)},
        "outputs": [o.name for o in graph.graph.outputs],
        "opset": graph.opset_imports.get("", None),
        "op_types": dict(sorted(ops.items())),
        "parameters": params,
        "quantizers": {name: {"kind": t.kind, "role": t.role, "bw": t.spec.bw, "symmetric": t.spec.symmetric,
                              "per_channel_axis": t.spec.axis, **({"fixed_range": list(t.fixed_range)}
                                                                  if t.fixed_range is not None else {})}
                       for name, t in plan.all().items()},
        "tied": plan.ties,
        "fused_in_supergroups": plan.fused,
        "attention_mask_unquantized": plan.masked,
        "layer_norm_inputs_widened": plan.widened,
        "not_applied": not_applied(config),
    }
    joins = _mixed_joins_of(graph, plan, options.data, options.samples) if options.data is not None else None
    if joins is not None:
        summary["mixed_joins"] = [dataclasses.asdict(join) for join in joins]
    lines = [f"{model}: opset {summary['opset']}, {sum(ops.values())} nodes, {params:,} parameters"]
    lines += [f"  input  {n}: {s}" for n, s in summary["inputs"].items()]
    lines += [f"  output {n}" for n in summary["outputs"]]
    lines.append("  ops: " + ", ".join(f"{k} x{v}" for k, v in summary["op_types"].items()))
    lines += _plan_lines(plan, options.config)
    lines += [f"  not applied: {line}" for line in summary["not_applied"]]
    if joins is not None:
        lines += [f"    {join.describe()}" for join in joins] or [f"    none on {options.data}"]
    return Report(summary, lines)


def _plan_lines(plan, config: str) -> list[str]:
    lines = [f"  plan ({config}): {len(plan.activations)} activation quantizers, {len(plan.params)} param "
             f"quantizers, {len(plan.fused)} tensors fused in supergroups or pointwise functions"]
    if plan.masked:
        lines.append(f"  attention mask: {len(plan.masked)} tensors left unquantized (the mask path and the masked "
                     f"scores into Softmax; config 'patterns.attention_mask')")
    if plan.widened:
        lines.append(f"  LayerNorm inputs (residual sums, their linear branches) and outputs: {len(plan.widened)} "
                     f"tensors at up to {config_rules_bw(plan)} bits (config 'patterns.layer_norm_input_bw', "
                     f"'layer_norm_output_bw')")
    if plan.ties:
        lines.append(f"  tied (one encoding each, as aimet ties Concat/Relu/AveragePool): "
                     + "; ".join(", ".join(group) for group in plan.ties))
    for name, t in plan.all().items():
        granularity = f"per-channel axis {t.spec.axis}" if t.spec.axis is not None else "per-tensor"
        lines.append(f"    {t.kind:10} {t.role:6} {t.spec.bw:2d}-bit {'sym ' if t.spec.symmetric else 'asym'} "
                     f"{granularity:20} {name}")
    rule = plan.mixed_ranges
    lines.append("  mixed ranges (config 'mixed_ranges'): " + (
        f"a Concat whose parts lose > {rule.max_lost_bits:g} bits on one grid -> {rule.at_output} at model "
        f"outputs, {rule.inside} inside; decided at calibration" if rule.enabled else "off"))
    return lines


def config_rules_bw(plan) -> int:
    """The bit-width the plan gave its widened (LayerNorm-input) tensors."""
    return max(plan.activations[name].spec.bw for name in plan.widened)


def _mixed_joins_of(graph, plan, data, samples: int) -> list:
    """The mixed-range decisions calibrate would make, from one min-max pass over `data`."""
    from qtool.commands.inputs import open_model_data
    from qtool.steps.calibrate import CalibrateOptions, calibrate

    source = open_model_data(graph, data, samples=samples, preprocess=None)
    return calibrate(graph, plan, lambda: source.batches(16), CalibrateOptions(scheme="minmax"),
                     total=source.count()).mixed_joins
