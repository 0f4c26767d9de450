"""The recipe's `expect:` block: a quality gate on the last simulate step's metrics.

A check on a metric the run did not measure fails (a gate that cannot fail is no gate).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    required: float
    actual: float | None  # the worst value over the model's outputs; None when not measured
    passed: bool

    def describe(self) -> str:
        shown = "not measured" if self.actual is None else f"{self.actual:.2f}"
        relation = "<=" if self.name.startswith("max_") else ">="
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.name}: {shown} (required {relation} {self.required:g}) {verdict}"


def _worst(values: list[float], larger_is_better: bool) -> float | None:
    if not values:
        return None
    return min(values) if larger_is_better else max(values)


def check_expectations(expect: dict[str, float], outputs: dict[str, dict]) -> list[Check]:
    """`outputs` is simulate's report: per output name, sqnr_db, worst_channel_sqnr_db,
    top1_agreement, accuracies (0..1)."""
    rows = list(outputs.values())
    measured = {
        "min_sqnr_db": _worst([r["sqnr_db"] for r in rows if "sqnr_db" in r], True),
        # outputs without a channel figure (rank < 2, or pooled only) count by their pooled SQNR
        "min_channel_sqnr_db": _worst([r["worst_channel_sqnr_db"] if r.get("worst_channel_sqnr_db") is not None
                                       else r["sqnr_db"] for r in rows if "sqnr_db" in r], True),
        "min_top1_agreement": _worst([100 * r["top1_agreement"] for r in rows if "top1_agreement" in r], True),
        "min_accuracy": _worst([100 * r["quant_accuracy"] for r in rows if "quant_accuracy" in r], True),
        "max_accuracy_drop": _worst([100 * (r["float_accuracy"] - r["quant_accuracy"])
                                     for r in rows if "quant_accuracy" in r], False),
    }
    checks = []
    for name, required in expect.items():
        actual = measured[name]
        if actual is None:
            passed = False
        elif name.startswith("max_"):
            passed = actual <= required
        else:
            passed = actual >= required
        checks.append(Check(name, required, actual, passed))
    return checks
