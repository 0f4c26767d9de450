"""The `qtool analyze` report as the lines printed on the terminal: the summary, how the groups
were ranked, the most sensitive groups and the suggestions.

No sentinels reach the text: an exact SQNR is null in the report and printed as `exact`; a loss
measured from it, as a dash. Standard library only (the command tree imports it).
"""

from __future__ import annotations

import json
import math

from qtool.analysis.role_label import describe


def number(value: float | None, unit: str = "") -> str:
    """A metric value as text: two decimals, `exact` for a null dB figure, a dash otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "exact" if unit == "dB" and value is None else "-"
    if math.isinf(value):
        return "exact" if value > 0 else "-inf"
    return f"{value:.2f}"


def summary_lines(report: dict) -> list[str]:
    """Everything `qtool analyze` prints between its first line and the files it wrote."""
    s, name, unit = report["summary"], report["metric"]["name"], report["metric"]["unit"]
    verdict = s["verdict"] + (f" (by the {s['verdict_from']})" if s.get("verdict_from") else "")
    lines = [f"  {name}: float {number(s['float'], unit)}, quantized {number(s['quantized'], unit)}, weights only "
             f"{number(s['weights_only'], unit)}, activations only {number(s['activations_only'], unit)} {unit} "
             f"-> drop from: {verdict}"]
    fine = s.get("fine")
    if fine:
        lines.append(f"  {fine['name']}: float {number(fine['float'])}, quantized {number(fine['quantized'])}, "
                     f"weights only {number(fine['weights_only'])}, activations only "
                     f"{number(fine['activations_only'])} %")
    note = (report.get("ranking") or {}).get("note")
    if note:
        lines.append(f"  {note}")
    lines.append("  most sensitive (alone quantized / alone float):")
    for row in report["sensitivity"][:5]:
        finer = f"; costs {row['fine_loss']:.2f} points of {fine['name']}" if fine and "fine_loss" in row else ""
        lines.append(f"    {row['group']} ({describe(row['op_type'], row.get('role'))}): "
                     f"{number(row['only_enabled'], unit)} / {number(row['only_disabled'], unit)}{finer}")
    suggestions = report["suggestions"]
    if suggestions:
        lines.append(f"  {len(suggestions)} suggested overrides, expected {number(suggestions[-1]['expected'], unit)}"
                     f" {unit}:")
        lines += [f"    {json.dumps(s['override'], sort_keys=True)}" for s in suggestions[:10]]
    return lines
