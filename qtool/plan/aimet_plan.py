"""Placement "aimet": the quantizers aimet-onnx's ``QuantizationSimModel`` creates, as a QuantPlan.

The steps of ``QuantizationSimModel.__init__`` (aimet_onnx/quantsim.py), one module each:
fusions (aimet_fusions.py), which tensors get a quantizer (aimet_tensors.py), the runtime config
(aimet_configure.py, with aimet_supergroups.py), the bit-widths and per-channel flags, the graph
passes (aimet_passes.py), weight symmetry and exception rules (aimet_rules.py), ties
(aimet_ties.py). The plan holds the enabled quantizers; tied ones are listed in ``plan.ties`` and
calibrate gives each tie one encoding (plan/ties.py). Constants that are not layer parameters are
activations, as in aimet, with their own value as fixed range (aimet calibrates them on it).

qtool's own rules (``patterns``) are off under this placement unless the config turns them on;
then they apply on top: masked and pointwise-internal tensors lose their quantizer, LayerNorm
inputs and outputs are widened.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.ir.patterns import attention_mask_tensors, layer_norm_inputs, layer_norm_outputs, pointwise_internals
from qtool.plan.aimet_configure import configure, per_channel
from qtool.plan.aimet_fusions import apply_fusions
from qtool.plan.aimet_graph import Graph
from qtool.plan.aimet_passes import apply_passes, pass_matches
from qtool.plan.aimet_rules import exception_rules, param_symmetry_to_inputs
from qtool.plan.aimet_supergroups import match_supergroups
from qtool.plan.aimet_tensors import Quantizer, create_quantizers
from qtool.plan.aimet_ties import tie_groups, tie_quantizers
from qtool.plan.config import RuntimeConfig
from qtool.plan.plan_types import PlanOptions, QuantPlan, TensorPlan
from qtool.quant import QuantSpec


def aimet_quantizers(model: ir.Model, config: RuntimeConfig, options: PlanOptions = PlanOptions()
                     ) -> tuple[Graph, dict[str, Quantizer], list[str]]:
    """(the fused graph view, every quantizer aimet would create with its final settings, the
    tensors fused away or switched off by supergroups and passes)."""
    graph = Graph(model)
    gone = apply_fusions(graph, config.supergroup_passes)
    quantizers = create_quantizers(graph)
    params = {name for name, q in quantizers.items() if q.kind == "param"}
    matched = {op for match in pass_matches(graph, config.supergroup_passes) for op in match}
    groups = match_supergroups(graph, config.supergroups, matched)
    mapped = configure(graph, quantizers, config, groups)
    for quantizer in quantizers.values():  # QuantSim's param_type / activation_type arguments
        forced = options.param_bw if quantizer.kind == "param" else options.act_bw
        if forced is not None:
            quantizer.bw, quantizer.dtype = forced, "int"
        if options.param_symmetric is not None and quantizer.kind == "param":
            quantizer.symmetric = options.param_symmetric
    per_channel(graph, mapped, config, options.per_channel)
    gone += [n for match in groups for op in match[:-1] for n in op.outputs]
    gone += apply_passes(graph, quantizers, config.supergroup_passes)
    param_symmetry_to_inputs(graph, quantizers, params, config)
    exception_rules(graph, quantizers, mapped, params, config.hw_version)
    tie_quantizers(graph, quantizers)
    return graph, quantizers, gone


def _spec(quantizer: Quantizer, config: RuntimeConfig, name: str) -> QuantSpec:
    try:
        return QuantSpec(bw=quantizer.bw, dtype=quantizer.dtype, symmetric=quantizer.symmetric,
                         strict_symmetric=config.strict_symmetric, unsigned_symmetric=config.unsigned_symmetric,
                         axis=quantizer.axis)
    except ValueError as exc:
        raise QtoolError(f"{config.source}: {name}: {exc}") from exc


def _fixed(graph: Graph, name: str, quantizer: Quantizer) -> tuple[float | None, float | None] | None:
    """A constant's range is its value's; otherwise the config's encoding_constraints."""
    array = graph.constants.get(name)
    if array is not None and quantizer.kind != "param":
        return float(np.min(array)), float(np.max(array))
    return quantizer.fixed


def _owner(graph: Graph, name: str) -> str:
    producer = graph.producer.get(name)
    if producer is not None:
        return producer.name
    readers = graph.consumers.get(name, [])
    return readers[0].name if readers else "model input"


def build_aimet_plan(model: ir.Model, config: RuntimeConfig, options: PlanOptions = PlanOptions()) -> QuantPlan:
    """The enabled quantizers of aimet's sim as a QuantPlan (overrides are applied by the caller)."""
    graph, quantizers, gone = aimet_quantizers(model, config, options)
    plan = QuantPlan(mixed_ranges=config.mixed_ranges)
    rules = config.patterns
    dropped = attention_mask_tensors(model) if rules.attention_mask else set()
    plan.masked = sorted(dropped)
    if rules.pointwise_functions:
        dropped |= pointwise_internals(model)
    widened = dict.fromkeys(layer_norm_outputs(model), rules.layer_norm_output_bw) if rules.layer_norm_output_bw else {}
    if rules.layer_norm_input_bw:
        widened.update(dict.fromkeys(layer_norm_inputs(model), rules.layer_norm_input_bw))
    for name, quantizer in quantizers.items():
        if not quantizer.enabled or (quantizer.dtype == "float" and quantizer.bw >= 32) or name in dropped:
            continue
        if name in widened and quantizer.kind != "param" and quantizer.dtype == "int" and quantizer.bw < widened[name]:
            quantizer.bw = widened[name]
            plan.widened.append(name)
        role = quantizer.param_type if quantizer.kind == "param" else quantizer.kind
        tensor = TensorPlan(name, "param" if quantizer.kind == "param" else "activation", role or "weight",
                            _spec(quantizer, config, name), _owner(graph, name), _fixed(graph, name, quantizer))
        (plan.params if quantizer.kind == "param" else plan.activations)[name] = tensor
    plan.fused = sorted(set(gone) - set(plan.all()))
    plan.ties = [group for group in tie_groups(quantizers) if len(set(group) & set(plan.all())) > 1]
    return plan
