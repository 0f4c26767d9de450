"""`bias-correct`: each layer's expected quantization error absorbed into its bias (white paper 4.5)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from qtool.commands.fields import DataArg, option
from qtool.commands.options import ENCODINGS_HELP, OptionalData, ShapeOptions, encoding_version
from qtool.commands.report import ProgressFactory, Report, bar
from qtool.errors import QtoolError


@dataclass(frozen=True, kw_only=True)
class _BiasCorrectOptions:
    encodings: str | None = option(None, ENCODINGS_HELP)
    analytic: bool = option(False, "Analytic correction where BN statistics precede the layer (kept by fold/equalize); "
                                   "empirical elsewhere. Without --data, analytic only.")
    iterations: int = option(2, "Empirical passes over the data.", bounds=(1, 10))
    validate: bool = option(True, "With --data: simulate the pair with and without the correction on the data and "
                                  "keep the correction only if it raises the output SQNR against the float model "
                                  "(--no-validate: always keep it).", flag="--validate/--no-validate")
    encoding_version: str = encoding_version()


@dataclass(frozen=True, kw_only=True)
class BiasCorrectOptions(ShapeOptions, OptionalData, _BiasCorrectOptions):
    """bias-correct's options, then the data's and --input-shape/--vocab-size (for --data random)."""

    data: DataArg = option(None, "Calibration data for empirical correction (see calibrate --data).")


def bias_correct(model: str | os.PathLike, output: str | os.PathLike, options: BiasCorrectOptions,
                 progress: ProgressFactory = bar) -> Report:
    """Absorb each layer's expected quantization error into its bias (white paper 4.5).

    Example: qtool bias-correct model_cle.onnx --encodings model_cle.encodings.json --data calib.npz -o out/model_bc
    """
    from qtool.commands.inputs import load_pair, output_prefix
    from qtool.encodings.write import save_encodings
    from qtool.files.atomic import StagedOutputs
    from qtool.ir.graph import save_model

    check_bias_options(options)
    from qtool.commands.blockwise import refuse_block_pair

    graph, enc_set, enc_source = refuse_block_pair(load_pair(model, options.encodings), "bias-correct")
    result = bias_correct_model(graph, enc_set, enc_source, options, progress)
    prefix = output_prefix(output)
    with StagedOutputs() as out:
        save_model(result.model, out.path(f"{prefix}.onnx"))
        save_encodings(result.encodings, out.path(f"{prefix}.encodings.json"), options.encoding_version)
    report = bias_report(result)
    return Report({"model": f"{prefix}.onnx", "encodings": f"{prefix}.encodings.json", **report.summary},
                  [f"{report.lines[0]}; wrote {prefix}.onnx and {prefix}.encodings.json", *report.lines[1:]])


def check_bias_options(options: BiasCorrectOptions) -> None:
    if options.data is None and not options.analytic:
        raise QtoolError("bias-correct needs --data (empirical) or --analytic (BN statistics)")


def bias_correct_model(graph, encodings, source: str, options: BiasCorrectOptions, progress: ProgressFactory = bar):
    """The correction in memory: a `qtool.steps.bias_correction.BiasCorrectionResult`."""
    from qtool.commands.inputs import open_model_data
    from qtool.steps.bias_correction import correct_bias

    check_bias_options(options)
    batches = None
    if options.data is not None:
        data = open_model_data(graph, options.data, samples=options.samples, preprocess=options.preprocess,
                               **options.shapes())
        batches = lambda: data.batches(options.batch_size)  # noqa: E731  (one fresh pass each time)
    return correct_bias(graph, encodings, batches, analytic=options.analytic, iterations=options.iterations,
                        progress=progress("bias-correct", unit="passes"), source=source, validate=options.validate)


def bias_report(result) -> Report:
    summary = {"empirical": result.empirical, "analytic": result.analytic,
               "skipped": [{"layer": layer, "reason": reason} for layer, reason in result.skipped],
               "kept": result.kept, "sqnr_before_db": result.sqnr_before, "sqnr_after_db": result.sqnr_after}
    lines = [f"corrected {len(result.empirical)} layers empirically ({result.passes} passes) and "
             f"{len(result.analytic)} analytically"]
    if result.sqnr_before is not None:
        verdict = "kept" if result.kept else "not kept: the pair is written unchanged"
        lines[0] += (f"; output SQNR on the data {result.sqnr_before:.2f} dB -> {result.sqnr_after:.2f} dB "
                     f"with the correction ({verdict})")
    lines += [f"  not corrected: {layer}: {reason}" for layer, reason in result.skipped]
    return Report(summary, lines)
