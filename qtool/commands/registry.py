"""COMMANDS: every subcommand, the one table the CLI (qtool.cli) and recipes (qtool.recipe) read.

An entry names the command (as typed: `bias-correct`), its function `(model, output, options)
-> Report`, its options dataclass, and what its `-o` is. `-o` means one thing per kind of
output:

* `prefix`: a pair, PREFIX.onnx + PREFIX.encodings.json (calibrate, bias-correct, adaround);
* `file`: one file, named as given (fold, equalize, simulate's QDQ model, plot-ranges' image);
* `folder`: several files with fixed names inside it (export, analyze, mixed-precision).

Importing this module imports the command modules, which import only light modules at their
top (the steps, onnx and onnxruntime are imported inside the functions), so building the CLI or
checking a recipe does not pay for them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from qtool.commands.adaround import AdaroundOptions, adaround
from qtool.commands.analyze import AnalyzeOptions, analyze
from qtool.commands.bench import BenchOptions, bench
from qtool.commands.bias_correct import BiasCorrectOptions, bias_correct
from qtool.commands.calibrate import CalibrateOptions, calibrate
from qtool.commands.equalize import EqualizeOptions, equalize
from qtool.commands.export import ExportOptions, export
from qtool.commands.fields import Field, convert, fields_of
from qtool.commands.fold import FoldOptions, fold
from qtool.commands.info import InfoOptions, info
from qtool.commands.mixed_precision import MixedPrecisionOptions, mixed_precision
from qtool.commands.plot_ranges import PlotRangesOptions, plot_ranges
from qtool.commands.qat import QatOptions, qat
from qtool.commands.report import Report
from qtool.commands.simulate import SimulateOptions, simulate
from qtool.errors import QtoolError

OUTPUT_KINDS = ("prefix", "file", "folder")


@dataclass(frozen=True)
class Output:
    """What a command's `-o` names (kind: prefix / file / folder) and whether it must be given."""

    kind: str
    help: str
    required: bool = True


@dataclass(frozen=True)
class Command:
    """One subcommand: `command(model, output, **options)` checks the options and runs it."""

    name: str
    function: Callable[..., Report]
    options: type
    output: Output | None

    @property
    def help(self) -> str:
        """The user-facing description (the function's docstring, with its Example: line)."""
        return inspect.getdoc(self.function) or ""

    @cached_property
    def fields(self) -> dict[str, Field]:
        return fields_of(self.options)

    def defaults(self) -> dict[str, Any]:
        """Every option that has a default, with it (what the CLI shows, a recipe starts from)."""
        return {name: field.default for name, field in self.fields.items() if not field.required}

    def convert(self, name: str, value: Any) -> Any:
        """One option's value checked and converted; ValueError (one sentence) if it is not valid."""
        if name not in self.fields:
            raise ValueError(f"unknown option {name!r} (known: {', '.join(self.fields)})")
        return convert(self.fields[name], value)

    def make_options(self, values: dict[str, Any]) -> Any:
        """The options dataclass for `values` (given ones checked, the rest defaults); a QtoolError
        names the first bad or missing option."""
        converted = {}
        for name, value in values.items():
            try:
                converted[name] = self.convert(name, value)
            except ValueError as exc:
                raise QtoolError(f"{self.name}: {name}: {exc}") from None
        missing = [name for name, field in self.fields.items() if field.required and name not in converted]
        if missing:
            raise QtoolError(f"{self.name}: missing option {missing[0]!r}")
        return self.options(**converted)

    def __call__(self, model: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 progress: Callable[..., Any] | None = None, **values: Any) -> Report:
        if self.output is not None and self.output.required and output is None:
            raise QtoolError(f"{self.name}: an output is required (-o: a {self.output.kind})")
        extra = {"progress": progress} if progress is not None else {}
        options = self.make_options(values)
        from qtool.runtime.device import use_device  # (--device: the sessions' execution provider)

        with use_device(getattr(options, "device", None)):
            return self.function(model, output, options, **extra)


COMMANDS: dict[str, Command] = {command.name: command for command in (
    Command("calibrate", calibrate, CalibrateOptions, Output(
        "prefix", "Output prefix: writes PREFIX.onnx (the float model) and PREFIX.encodings.json [default: beside "
                  "the model under its own name: m.onnx -> m.encodings.json].", required=False)),
    Command("simulate", simulate, SimulateOptions, Output(
        "file", "Also write the QDQ model to this .onnx file.", required=False)),
    Command("export", export, ExportOptions, Output(
        "folder", "Folder for the exported files (NAME.onnx, NAME.encodings, NAME_qdq.onnx).")),
    Command("fold", fold, FoldOptions, Output("file", "Output .onnx file (the input is never modified).")),
    Command("equalize", equalize, EqualizeOptions, Output("file", "Output .onnx file (the input is never modified).")),
    Command("bias-correct", bias_correct, BiasCorrectOptions, Output(
        "prefix", "Output prefix: writes PREFIX.onnx and PREFIX.encodings.json.")),
    Command("adaround", adaround, AdaroundOptions, Output(
        "prefix", "Output prefix: PREFIX.onnx (adarounded weights) + PREFIX.encodings.json.")),
    Command("qat", qat, QatOptions, Output(
        "prefix", "Output prefix: PREFIX.onnx (the float model with the trained weights) + PREFIX.encodings.json.")),
    Command("analyze", analyze, AnalyzeOptions, Output(
        "folder", "Report folder: report.html, report.json, overrides.json.")),
    Command("mixed-precision", mixed_precision, MixedPrecisionOptions, Output(
        "folder", "Writes overrides.json, mixed_precision.json, pareto.png (with matplotlib) and the final pair "
                  "model.onnx + model.encodings.json.")),
    Command("info", info, InfoOptions, None),
    Command("bench", bench, BenchOptions, None),
    Command("plot-ranges", plot_ranges, PlotRangesOptions, Output("file", "Image file: .png, .svg or .pdf.")),
)}
