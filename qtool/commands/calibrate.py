"""`calibrate`: encodings for a model from calibration data; the pair written beside the model or at -o."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from qtool.commands.blockwise import BlockOptions, apply_block_options, check_block_options
from qtool.commands.fields import option
from qtool.commands.options import CONFIG_HELP, OVERRIDES_HELP, DataOptions, ExecutorOptions, encoding_version
from qtool.commands.report import ProgressFactory, Report, bar
from qtool.quant.observers import ACTIVATION_SCHEMES, SCHEMES, SQNR_GAMMA


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions(ExecutorOptions, BlockOptions, DataOptions):
    config: str = option("default", CONFIG_HELP)
    scheme: str = option("sqnr", "Activation range setting: minmax (AIMET tf), sqnr (tf_enhanced), percentile, mse, "
                                 "or auto: all four from one pass, keep the one whose simulated outputs are closest "
                                 "to float.", choices=ACTIVATION_SCHEMES)
    param_scheme: str = option("minmax", "Weight range setting.", choices=SCHEMES)
    percentile: float = option(99.99, "Percentile for --scheme percentile.", bounds=(50, 100))
    auto_samples: int = option(32, "--scheme auto: calibration samples each candidate scheme is simulated on.",
                               bounds=(1, None))
    sqnr_gamma: float = option(SQNR_GAMMA, "--scheme sqnr: weight of clipping noise against rounding noise "
                                           "(AIMET's tf_enhanced: 3).", bounds=(1, None))
    param_bw: int | None = option(None, "Weight bit-width (overrides the config).", bounds=(2, 16))
    act_bw: int | None = option(None, "Activation bit-width (overrides the config).", bounds=(2, 16))
    per_channel: bool | None = option(None, "Weight granularity (overrides the config).",
                                      flag="--per-channel/--per-tensor")
    symmetric_weights: bool | None = option(None, "Weight grid symmetry (overrides the config; AIMET's default is "
                                                  "symmetric).", flag="--symmetric-weights/--asymmetric-weights")
    encodings: str | None = option(None, "Existing encodings: the frozen ones (e.g. from adaround) are kept unchanged.")
    overrides: str | None = option(None, OVERRIDES_HELP)
    encoding_version: str = encoding_version()


def calibrate(model: str | os.PathLike, output: str | os.PathLike | None, options: CalibrateOptions,
              progress: ProgressFactory = bar) -> Report:
    """Compute quantization encodings (scale/offset per tensor or channel) from calibration data.

    Without -o the encodings are written beside MODEL (MODEL's stem + .encodings.json), which
    makes MODEL and them a pair.

    Example: qtool calibrate model.onnx --data calib.npz --config w8a8-per-channel -o out/model
    """
    from qtool.commands.inputs import load_pair, pair_prefix
    from qtool.encodings.write import save_encodings
    from qtool.files.atomic import StagedOutputs
    from qtool.ir.external_data import copy_model_file
    from qtool.ir.graph import load_model, save_model

    check_block_options(options, output, options.encoding_version)
    prefix = pair_prefix(model, output)
    graph, frozen = (load_pair(model, options.encodings)[:2] if options.encodings else (load_model(model), None))
    result = calibrate_model(graph, options, frozen, progress)
    with StagedOutputs() as out:
        if getattr(result, "model", graph) is graph:
            copy_model_file(model, out.path(f"{prefix}.onnx"))
        else:  # --weight-rounding gptq changed the weights
            save_model(result.model, out.path(f"{prefix}.onnx"))
        save_encodings(result.encodings, out.path(f"{prefix}.encodings.json"), options.encoding_version)
    report = calibration_report(graph, result, options)
    wrote = f"wrote {prefix}.onnx and {prefix}.encodings.json" if output is not None else \
        f"wrote {prefix}.encodings.json beside {model} (no -o: the pair is {model} + {prefix}.encodings.json)"
    summary = {"model": f"{prefix}.onnx", "encodings": f"{prefix}.encodings.json", **report.summary}
    return Report(summary, [*report.lines, wrote, *fold_note(graph)])


def calibrate_model(graph, options: CalibrateOptions, frozen=None, progress: ProgressFactory = bar):
    """The calibration itself, in memory: a `qtool.steps.calibrate.CalibrationResult` for `graph`
    (`frozen`: encodings whose frozen entries are kept)."""
    from qtool.commands.inputs import open_model_data, read_overrides
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plan.config import load_config
    from qtool.steps.calibrate import CalibrateOptions as StepOptions
    from qtool.steps.calibrate import calibrate as calibrate_step
    from qtool.steps.calibrate_shards import sharded

    plan = build_plan(graph, load_config(options.config),
                      PlanOptions(options.act_bw, options.param_bw, options.per_channel, options.symmetric_weights,
                                  read_overrides(options.overrides)))
    source = open_model_data(graph, options.data, **options.reading())
    observe = sharded(options.make_executor())
    step = StepOptions(options.scheme.lower(), options.param_scheme.lower(), options.percentile, options.batch_size,
                       options.sqnr_gamma, options.auto_samples)
    result = calibrate_step(graph, plan, lambda: source.batches(options.batch_size), step, frozen=frozen,
                            total=source.count(), progress=progress("calibrate"), observe=observe)
    if options.weight_block_size is not None or options.weight_rounding != "nearest":  # commands/blockwise.py
        result.model, result.encodings, result.blocks = apply_block_options(
            graph, result.encodings, options, lambda: source.batches(options.batch_size), progress)
    return result


def calibration_report(graph, result, options: CalibrateOptions) -> Report:
    """What a calibration did, without the files (the Python API's report; the command adds them)."""
    summary = {
        "samples": result.samples, "seconds": round(result.seconds, 3),
        "activation_quantizers": len(result.encodings.activations), "param_quantizers": len(result.encodings.params),
        "kept_frozen": result.kept_frozen, "scheme": result.scheme,
        **({"scheme_scores": result.scheme_scores} if result.scheme_scores else {}),
        "mixed_joins": [dataclasses.asdict(join) for join in result.mixed_joins],
        **getattr(result, "blocks", Report({}, [])).summary,
    }
    chosen = [f"scheme auto: {result.scheme} (on {options.auto_samples} samples: "
              + ", ".join(f"{k} {_scores_text(v)}" for k, v in result.scheme_scores.items()) + ")"] \
        if result.scheme_scores else []
    return Report(summary, [
        f"calibrated {result.samples} samples in {result.seconds:.1f}s: "
        f"{summary['activation_quantizers']} activation + {summary['param_quantizers']} param encodings",
        *chosen, *(f"mixed ranges: {join.describe()}" for join in result.mixed_joins),
        *getattr(result, "blocks", Report({}, [])).lines])


def _scores_text(scores: dict[str, float]) -> str:
    agreement = scores.get("decision_agreement")
    return (f"{100 * agreement:.2f}% argmax agreement, " if agreement is not None else "") + f"{scores['sqnr_db']:.2f} dB"


def fold_note(graph) -> list[str]:
    """A report line when batch norms that `qtool fold` would remove are still in the model (a
    note, not a warning: folding usually helps, PP-OCRv4 min-max 90.1% -> 97.9%, but not always,
    the bundled classifier loses 2 dB)."""
    from qtool.steps.fold import foldable_batch_norms

    count = foldable_batch_norms(graph)
    if not count:
        return []
    return [f"note: {count} BatchNormalization node(s) follow a layer and were quantized apart from it; "
            f"'qtool fold' folds them (exact), as the white paper advises"]

