"""The steps a recipe can chain, and how each is wired to the model+encodings pair.

A step *is* the command of the same name (qtool.commands.registry): its options, types, defaults
and choices are the command's options, and running it calls the command's function, as the CLI
does. This module only says what the recipe fills in for each step (model, data, encodings,
output paths) and what the step hands on to the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qtool.commands.registry import COMMANDS, Command


@dataclass(frozen=True)
class StepKind:
    """How a step joins the chain.

    `data`: which of the recipe's data sets it reads by default ("calibration"/"evaluation"/None);
    `needs_encodings`: it cannot run without encodings for the current model; `takes_encodings`:
    it uses them when there are some (calibrate keeps frozen ones, adaround starts from them);
    `encodings_out`: what happens to the pair's encodings: "new" (written by the step), "dropped"
    (the model changed, old encodings no longer fit) or "kept"; `output`: how its output option
    is named and shaped.
    """

    command_name: str
    data: str | None
    needs_encodings: bool
    takes_encodings: bool
    encodings_out: str
    output: str  # "prefix" | "model" | "qdq" | "folder" | "report" | "pair-folder"
    uses_config: bool = False
    takes_overrides: bool = False  # reads an overrides file: the last analyze/mixed_precision step's

    @property
    def command(self) -> Command:
        return COMMANDS[self.command_name]

    def wired_options(self) -> set[str]:
        """Options the recipe sets itself; a step that sets them is an error (output_dir: the
        name folder outputs had before every command's output became `output`)."""
        return {"model", "output", "output_dir"}


STEP_KINDS: dict[str, StepKind] = {
    "fold": StepKind("fold", None, False, False, "dropped", "model"),
    "equalize": StepKind("equalize", "calibration", False, False, "dropped", "model"),
    "calibrate": StepKind("calibrate", "calibration", False, True, "new", "prefix", uses_config=True,
                          takes_overrides=True),
    "bias_correct": StepKind("bias-correct", "calibration", True, True, "new", "prefix"),
    "adaround": StepKind("adaround", "calibration", False, True, "new", "prefix", uses_config=True,
                         takes_overrides=True),
    "qat": StepKind("qat", "calibration", True, True, "new", "prefix", uses_config=True),
    "simulate": StepKind("simulate", "evaluation", True, True, "kept", "qdq"),
    "export": StepKind("export", None, True, True, "kept", "folder"),
    "analyze": StepKind("analyze", "calibration", True, True, "kept", "report", uses_config=True),
    "mixed_precision": StepKind("mixed-precision", "calibration", False, False, "new", "pair-folder",
                                uses_config=True),
}

PATH_OPTIONS = {"data", "eval_data", "labels", "encodings", "reference", "config", "overrides"}  # resolved against the recipe's folder


def step_name(key: object) -> str:
    """Recipe keys may use the command's spelling (bias-correct) or Python's (bias_correct)."""
    return str(key).replace("-", "_")


def output_paths(kind: StepKind, folder: Path, stem: str) -> dict[str, Path]:
    """The files a step writes into its folder, by role (model, encodings, qdq, export)."""
    if kind.output == "prefix":
        return {"model": folder / f"{stem}.onnx", "encodings": folder / f"{stem}.encodings.json"}
    if kind.output == "model":
        return {"model": folder / f"{stem}.onnx"}
    if kind.output == "qdq":
        return {"qdq": folder / f"{stem}_qdq.onnx"}
    if kind.output == "report":
        return {"overrides": folder / "overrides.json", "report": folder / "report.json"}
    if kind.output == "pair-folder":
        return {"model": folder / "model.onnx", "encodings": folder / "model.encodings.json",
                "overrides": folder / "overrides.json"}
    return {"folder": folder}


def output_option(kind: StepKind, folder: Path, stem: str) -> dict[str, str]:
    """The step's output option value for `output_paths`."""
    if kind.output == "prefix":
        return {"output": str(folder / stem)}
    if kind.output == "model":
        return {"output": str(folder / f"{stem}.onnx")}
    if kind.output == "qdq":
        return {"output": str(folder / f"{stem}_qdq.onnx")}
    return {"output": str(folder)}
