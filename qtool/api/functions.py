"""The Python API's functions: the commands, on models and arrays in memory, returning objects.

Each takes what its command takes, as keyword arguments named like the command's options
(`qtool calibrate --param-bw 4` is `qtool.calibrate(..., param_bw=4)`), with the same defaults
and the same checks (qtool.commands.registry: a bad value is a QtoolError naming the option).
A model is a path, a `Pair`, an onnx ModelProto or an onnx_ir Model; data and labels are paths
or arrays (qtool.data.memory). Nothing is printed: progress is off unless `progress=True`, and
every function returns a `Pair` (the model and its encodings, with `.report`) or a `Report`.
"""

from __future__ import annotations

import os
from typing import Any

from qtool.api.pair import IN_MEMORY, Pair, load
from qtool.commands.report import Report, bar, quiet


def _options(command: str, **values: Any) -> Any:
    from qtool.commands.registry import COMMANDS

    options = COMMANDS[command].make_options(values)
    if "device" in values:  # the in-memory halves run outside Command.__call__: the choice holds from here on
        from qtool.runtime.device import set_device

        set_device(options.device)
    return options


def _progress(show: bool) -> Any:
    return bar if show else quiet


def _pair(model: Any, encodings: str | os.PathLike | None = None, *, sibling: bool) -> Pair:
    """The pair a function starts from. `sibling`: a model file brings its MODEL.encodings.json
    when it has one (as simulate, export, bias-correct and analyze do); calibrate and adaround
    start from a file's model alone unless `encodings` is given, as their commands do."""
    if isinstance(model, Pair) or sibling or encodings is not None:
        return load(model, encodings)
    if isinstance(model, (str, os.PathLike)):
        from pathlib import Path

        from qtool.ir.graph import load_model

        return Pair(load_model(model), path=Path(model))
    return load(model)


def calibrate(model: Any, data: Any, *, progress: bool = False, **options: Any) -> Pair:
    """Encodings for `model` from calibration `data` (calibrate's options as keywords: config,
    scheme, param_bw, act_bw, per_channel, ...). Frozen encodings of a Pair given (e.g. from
    adaround) are kept. Returns the calibrated Pair."""
    from qtool.commands.calibrate import calibrate_model, calibration_report

    pair = _pair(model, options.pop("encodings", None), sibling=False)
    opts = _options("calibrate", data=data, **options)
    result = calibrate_model(pair.model, opts, pair.encodings, _progress(progress))
    return Pair(getattr(result, "model", pair.model), result.encodings, pair.path, f"{pair.label} (calibrated)",
                calibration_report(pair.model, result, opts))


def fold(model: Any) -> Pair:
    """BatchNormalization folded into the adjacent layers (exact); a new float model, no encodings."""
    from qtool.commands.fold import fold_model, fold_report

    result = fold_model(_pair(model, sibling=False).model)
    return Pair(result.model, report=fold_report(result))


def equalize(model: Any, data: Any = None, *, progress: bool = False, **options: Any) -> Pair:
    """Cross-layer equalization (relu6='bound' by default: exact); noise-aware with `data`.
    Returns the new float model (no encodings: calibrate it next)."""
    from qtool.commands.equalize import equalize_model, equalize_report

    opts = _options("equalize", data=data, **options)
    result = equalize_model(_pair(model, sibling=False).model, opts, _progress(progress))
    return Pair(result.model, report=equalize_report(result, opts))


def bias_correct(model: Any, data: Any = None, *, progress: bool = False, **options: Any) -> Pair:
    """Each layer's expected quantization error absorbed into its bias: empirically with `data`,
    from BN statistics with analytic=True. Needs encodings; returns the corrected Pair."""
    from qtool.commands.bias_correct import bias_correct_model, bias_report

    pair = _pair(model, options.pop("encodings", None), sibling=True)
    opts = _options("bias-correct", data=data, **options)
    result = bias_correct_model(pair.model, pair._encodings("bias_correct"), pair.source, opts, _progress(progress))
    return Pair(result.model, result.encodings, source=f"{pair.label} (bias-corrected)", report=bias_report(result))


def adaround(model: Any, data: Any, *, progress: bool = False, **options: Any) -> Pair:
    """Adaptive weight rounding (param_bw=4 by default); starts from the encodings of a Pair
    given, else calibrates first. Returns the Pair with adarounded weights, their encodings frozen."""
    from qtool.commands.adaround import adaround_model, adaround_report

    pair = _pair(model, options.pop("encodings", None), sibling=False)
    opts = _options("adaround", data=data, **options)
    start = (lambda: (pair.encodings, pair.source)) if pair.encodings is not None else None
    result, encodings = adaround_model(pair.model, opts, start, f"{pair.label} (calibrated)", _progress(progress))
    return Pair(result.model, encodings, source=f"{pair.label} (adarounded)", report=adaround_report(result, opts))


def simulate(model: Any, data: Any, labels: Any = None, *, progress: bool = False, **options: Any) -> Report:
    """The QDQ model run next to the float one: a Report whose summary["outputs"] has, per output,
    SQNR (pooled, worst channel), max error, top-1 agreement and, with labels, accuracy.
    `reference` (a path, Pair or model): the float model to compare with (default: the model)."""
    from qtool.commands.simulate import simulate_model, simulation_report

    reference = options.pop("reference", None)
    opts = _options("simulate", data=data, labels=labels, **options)
    pair = _pair(model, options.get("encodings"), sibling=not opts.bypass)
    encodings = None if opts.bypass else pair._encodings("simulate")
    result = simulate_model(pair.model, encodings, opts, "bypass" if opts.bypass else pair.source,
                            _reference(reference), _progress(progress))
    return simulation_report(result)


def _reference(reference: Any) -> Any:
    return None if reference is None else _pair(reference, sibling=False).model


def export(model: Any, output: str | os.PathLike, **options: Any) -> Report:
    """NAME.onnx, NAME.encodings and NAME_qdq.onnx written into folder `output` (prefix='model',
    encoding_version='1.0.0'); the Report lists the files."""
    from qtool.commands.export import write_export
    from qtool.ir.external_data import copy_model_file
    from qtool.ir.graph import save_model

    pair = _pair(model, options.pop("encodings", None), sibling=True)
    opts = _options("export", **options)

    def write_float(path: Any) -> None:
        if pair.path is not None:
            copy_model_file(pair.path, path)  # the file itself, as `qtool export` writes it
        else:
            save_model(pair.model, path)

    return write_export(pair.model, pair._encodings("export"), pair.source, output, opts, write_float)


def analyze(model: Any, data: Any, *, output: str | os.PathLike | None = None, progress: bool = False,
            **options: Any) -> Report:
    """The quantizers that cost the most, and overrides that fix them. Starts from the Pair's
    encodings (a model file's sibling encodings), else calibrates with `config` first. The
    Report's summary is the whole analysis; with `output`, report.html, report.json and
    overrides.json are written into that folder too."""
    from qtool.commands.analyze import analysis_lines, analyze_model, write_analysis

    pair = _pair(model, options.pop("encodings", None), sibling=True)
    opts = _options("analyze", data=data, **options)
    given = (lambda: (pair.model, pair.encodings, pair.source)) if pair.encodings is not None else (lambda: None)
    report = analyze_model(pair.model, opts, given, pair.label, _progress(progress))
    if output is not None:
        return write_analysis(report, output, pair.label, opts.write_overrides)
    return Report(report, analysis_lines(report))


__all__ = ["IN_MEMORY", "Pair", "adaround", "analyze", "bias_correct", "calibrate", "equalize", "export", "fold",
           "load", "simulate"]
