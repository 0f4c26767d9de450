"""The plan's types: what a placement (plan/build.py for "qtool", plan/aimet_plan.py for "aimet")
hands to calibration. Re-exported by plan/build.py, where the rest of qtool imports them from."""

from __future__ import annotations

from dataclasses import dataclass, field

from qtool.plan.config import MixedRangeRule
from qtool.plan.overrides import Override
from qtool.quant import QuantSpec


@dataclass(frozen=True)
class PlanOptions:
    """Command-line choices that override the config (None: keep what the config says)."""

    act_bw: int | None = None
    param_bw: int | None = None
    per_channel: bool | None = None
    param_symmetric: bool | None = None
    overrides: tuple[Override, ...] = ()  # from --overrides, applied after the config's own


@dataclass(frozen=True)
class TensorPlan:
    """One planned quantizer."""

    name: str
    kind: str  # "activation" or "param"
    role: str  # input / output / weight / bias
    spec: QuantSpec
    node: str  # the first node that produces or consumes it, for messages
    fixed_range: tuple[float, float] | None = None  # encoding_constraints: no calibration needed


@dataclass
class QuantPlan:
    activations: dict[str, TensorPlan] = field(default_factory=dict)
    params: dict[str, TensorPlan] = field(default_factory=dict)
    fused: list[str] = field(default_factory=list)  # outputs left unquantized inside supergroups
    mixed_ranges: MixedRangeRule = MixedRangeRule()  # applied by calibrate, once ranges are known
    masked: list[str] = field(default_factory=list)  # attention-mask path and masked scores: unquantized
    widened: list[str] = field(default_factory=list)  # LayerNorm inputs (residual sums) and outputs, at more bits
    ties: list[list[str]] = field(default_factory=list)  # placement "aimet": tensors sharing one encoding

    def all(self) -> dict[str, TensorPlan]:
        return {**self.activations, **self.params}
