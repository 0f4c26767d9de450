"""`adaround`: adaptive weight rounding (white paper 4.6), layer by layer; the weights' encodings frozen."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from qtool.commands.fields import option
from qtool.commands.options import OVERRIDES_HELP, DataOptions, encoding_version
from qtool.commands.report import ProgressFactory, Report, bar


@dataclass(frozen=True, kw_only=True)
class AdaroundOptions(DataOptions):
    encodings: str | None = option(None, "Encodings to start from (default: calibrate MODEL first with "
                                         "--config/--param-bw/--act-bw).")
    config: str = option("default", "Runtime config when calibrating first.")
    overrides: str | None = option(None, OVERRIDES_HELP)
    param_bw: int = option(4, "Weight bit-width.", bounds=(2, 8))
    act_bw: int = option(8, "Activation bit-width.", bounds=(2, 16))
    per_channel: bool = option(True, "Weight granularity.", flag="--per-channel/--per-tensor")
    iterations: int | None = option(None, "Optimisation steps per layer [10000; --fast 2000].", bounds=(1, None))
    num_batches: int | None = option(None, "Batches of --batch-size samples to use (default: all of --samples).",
                                     bounds=(1, None))
    reg_param: float = option(0.01, "Rounding regulariser weight (lambda).")
    beta_range: tuple[float, float] = option((20.0, 2.0), "Regulariser temperature, annealed from the first to the "
                                                          "second value.")
    warm_start: float = option(0.2, "Fraction of iterations with reconstruction loss only.", bounds=(0, 1))
    rows: int | None = option(None, "Sampled output positions per layer [4096; --fast 2048].", bounds=(64, None))
    layers: str | None = option(None, "Comma-separated layers to adaround (default: all).")
    exclude: str | None = option(None, "Comma-separated layers to leave at round-to-nearest.")
    fast: bool = option(False, "Preset: 2000 iterations, 2048 rows per layer.")
    encoding_version: str = encoding_version()


def adaround(model: str | os.PathLike, output: str | os.PathLike, options: AdaroundOptions,
             progress: ProgressFactory = bar) -> Report:
    """Adaptive weight rounding (white paper 4.6): learn up/down rounding per weight, layer by layer.

    Writes the adarounded model and encodings whose weight encodings are frozen (calibrate keeps
    them and recomputes activation encodings only).

    Example: qtool adaround model.onnx --data calib.npz --param-bw 4 -o out/model_w4
    """
    from qtool.commands.inputs import load_pair, output_prefix
    from qtool.encodings.write import save_encodings
    from qtool.files.atomic import StagedOutputs
    from qtool.ir.graph import load_model, save_model

    graph = load_model(model)
    from qtool.commands.blockwise import refuse_block_pair

    start = (lambda: refuse_block_pair(load_pair(model, options.encodings), "adaround")[1:]) if options.encodings \
        else None
    result, encodings = adaround_model(graph, options, start, f"{model} (calibrated)", progress)
    prefix = output_prefix(output)
    with StagedOutputs() as out:
        save_model(result.model, out.path(f"{prefix}.onnx"))
        save_encodings(encodings, out.path(f"{prefix}.encodings.json"), options.encoding_version)
    report = adaround_report(result, options)
    return Report({"model": f"{prefix}.onnx", "encodings": f"{prefix}.encodings.json", **report.summary},
                  [*report.lines, f"wrote {prefix}.onnx and {prefix}.encodings.json", *_fold_note(graph)])


def adaround_model(graph, options: AdaroundOptions, start: Callable[[], tuple] | None = None, calibrated_source: str = "the model (calibrated)",
                   progress: ProgressFactory = bar):
    """AdaRound in memory: (`qtool.steps.adaround.AdaRoundResult`, the final encodings). `start`:
    a callable giving the (encodings, their source) to start from, called once the data is open;
    without it `graph` is calibrated first, and its activations again after rounding."""
    from qtool.commands.inputs import open_model_data, read_overrides
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plan.config import load_config
    from qtool.quant.adaround import AdaRoundParams
    from qtool.steps.adaround import AdaRoundOptions
    from qtool.steps.adaround import adaround as adaround_step
    from qtool.steps.calibrate import calibrate

    samples, batch_size = options.samples, options.batch_size
    if options.num_batches is not None:
        samples = min(samples or options.num_batches * batch_size, options.num_batches * batch_size)
    source = open_model_data(graph, options.data, **{**options.reading(), "samples": samples})
    plan = build_plan(graph, load_config(options.config),
                      PlanOptions(options.act_bw, options.param_bw, options.per_channel,
                                  overrides=read_overrides(options.overrides)))
    if start is not None:
        start_enc, enc_source = start()
    else:
        start_enc = calibrate(graph, plan, lambda: source.batches(batch_size), total=source.count(),
                              progress=progress("calibrate")).encodings
        enc_source = calibrated_source
    params = AdaRoundParams(iterations=options.iterations or (2000 if options.fast else 10000),
                            reg_param=options.reg_param, beta_range=tuple(options.beta_range),
                            warm_start=options.warm_start, seed=options.seed)
    step = AdaRoundOptions(params, options.rows or (2048 if options.fast else 4096), _names(options.layers),
                           _names(options.exclude) or ())
    bar_ = progress("adaround", unit="layers")
    batch_count = max(source.batch_count(batch_size), 1)  # more than samples / batch size when shapes vary
    result = adaround_step(graph, start_enc, lambda: source.batches(batch_size), batch_count, step, progress=bar_,
                           layer_progress=lambda name, it, n: bar_.detail(f"{name} {it}/{n} iterations"),
                           source=enc_source)
    final = result.encodings if start is not None else calibrate(
        result.model, plan, lambda: source.batches(batch_size), frozen=result.encodings, total=source.count()).encodings
    return result, final


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(name.strip() for name in text.split(",")) if text else None


def adaround_report(result, options: AdaroundOptions) -> Report:
    iterations = options.iterations or (2000 if options.fast else 10000)
    rows = options.rows or (2048 if options.fast else 4096)
    summary = {"seconds": round(result.seconds, 2), "layers": [vars(report) for report in result.layers],
               "skipped": [{"layer": n, "reason": r} for n, r in result.skipped]}
    lines = [f"adarounded {len(result.layers)} layers in {result.seconds:.1f}s "
             f"({iterations} iterations, {rows} rows per layer)"]
    lines += [f"  {r.layer}: reconstruction MSE {r.loss_nearest:.4g} (nearest) -> {r.loss_adaround:.4g}, "
              f"{100 * r.flipped:.1f}% flipped, {r.seconds:.1f}s"
              + (" (learnt rounding was worse: kept nearest)" if r.kept_nearest else "") for r in result.layers]
    lines += [f"  not adarounded: {n}: {r}" for n, r in result.skipped]
    return Report(summary, lines)


def _fold_note(graph) -> list[str]:
    from qtool.commands.calibrate import fold_note

    return fold_note(graph)
