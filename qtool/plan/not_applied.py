"""What a runtime config says that qtool reads but does not act on, one line per key.

AIMET's shipped configs (aimet-onnx 2.x) carry keys that change what ``QuantizationSimModel``
does: graph passes, per-target exception rules, kernel lists for mixed precision. Under
placement "aimet" (plan/aimet_plan.py) qtool applies them as aimet does, except the kernel lists
(aimet reads them only in its mixed-precision tools) and the MaskedSoftmax fusion; under
placement "qtool" it applies none of the passes and exception rules. Either way it says here, per
key, what aimet would do differently; ``qtool info --config`` prints these lines, so nothing is
silently dropped. The analysis behind each line: docs/aimet_compat.md.
"""

from __future__ import annotations

from qtool.plan.config import QuantizerSettings, RuntimeConfig

# what each of aimet's graph passes does that qtool does not (graph_passes/ in aimet-onnx 2.42.0)
PASS_EFFECTS = {
    "MatmulAdd": "aimet fuses MatMul(x, W) + Add(b) with constant W, b into one Gemm: no quantizer on the MatMul "
                 "output and b an unquantized bias; qtool quantizes the MatMul output and b as an Add bias",
    "LayerNormalization": "aimet fuses a written-out LayerNorm (ReduceMean, Sub, Pow, ..., Add) into one op with "
                          "weight/bias params; qtool leaves the same inner tensors unquantized by its own rule, "
                          "whatever the config says, and quantizes gamma/beta as Mul/Add constants",
    "RMSNormalization": "aimet fuses a written-out RMSNorm (Pow, ReduceMean, Add, Sqrt, Div/Mul) into one op; "
                        "qtool quantizes each inner tensor",
    "MaskedSoftmax": "aimet fuses Softmax(Where(mask, x, ReduceMin(x) + B)) into one op; qtool plans each op "
                     "(its patterns.attention_mask rule covers additive masks only)",
}
NOT_EMULATED = ("MaskedSoftmax",)  # passes placement "aimet" does not reproduce (no shipped config lists them)
# the parameter types placement "qtool" plans (plan/build.py PARAM_ROLES); aimet also has running_mean/var, weight_r ...
PLANNED_PARAMS = ("weight", "bias")


def not_applied(config: RuntimeConfig) -> list[str]:
    """One line per key of `config` that qtool keeps but does not act on: the key and what aimet does.
    Under placement "aimet" the passes, hw_version and every parameter type are applied as aimet does."""
    aimet = config.placement == "aimet"
    lines = [f"supergroup_pass_list {name} ({PASS_EFFECTS[name]})" for name in config.supergroup_passes
             if not aimet or name in NOT_EMULATED]
    if config.hw_version is not None and not aimet:
        lines.append(f"defaults.hw_version {config.hw_version} (aimet's exception rules: any version quantizes a "
                     "16-bit MatMul's second input symmetric and its first at 16 bits; V66/V68/V69 also force "
                     "8-bit LayerNorm/BatchNorm weights and an 8-bit symmetric second input of a dynamic MatMul; "
                     "qtool applies none of them)")
    defaults = config.raw.get("defaults", {})
    if "is_input_quantized" in defaults.get("ops", {}):
        lines.append("defaults.ops.is_input_quantized (aimet-onnx refuses this key, NotImplementedError; "
                     "qtool ignores it: set is_input_quantized per op type)")
    if "supported_kernels" in defaults:
        lines.append("defaults.supported_kernels (aimet reads it only in its mixed-precision tools; "
                     "placement and bit-widths are the same without it)")
    known = _onnx_op_types()
    for op, settings in config.op_types.items():
        where = f"op_type.{op}"
        if op not in known:
            lines.append(f"{where} (not an ONNX op type: matches no node{_near(op, known)})")
        if "supported_kernels" in config.raw["op_type"][op]:
            lines.append(f"{where}.supported_kernels (aimet reads it only in its mixed-precision tools)")
        lines += [] if aimet else _unplanned_params(f"{where}.params", settings.params)
    lines += [] if aimet else _unplanned_params("params", config.param_types)
    for index, group in enumerate(config.supergroups):
        lines += [f"supergroups[{index}] {op} (not an ONNX op type: the group matches no node{_near(op, known)})"
                  for op in group if op not in known]
    return lines


def _unplanned_params(where: str, params: dict[str, QuantizerSettings]) -> list[str]:
    """Parameter types the config turns on that qtool never plans (running_mean, weight_r ...)."""
    return [f"{where}.{name} is_quantized (aimet quantizes that parameter; qtool quantizes only "
            f"{' and '.join(PLANNED_PARAMS)} inputs)"
            for name, param in params.items() if name not in PLANNED_PARAMS and param.enabled]


def _onnx_op_types() -> set[str]:
    import onnx.defs  # here, not at the top: building the CLI stays free of onnx

    return {schema.name for schema in onnx.defs.get_all_schemas_with_history()}


def _near(name: str, known: set[str]) -> str:
    """', did you mean Relu?' for a near miss in case only (relu, ReLU); '' otherwise."""
    same = sorted(op for op in known if op.lower() == name.lower())
    return f", did you mean {same[0]}?" if same else ""
