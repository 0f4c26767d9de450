"""`equalize`: cross-layer equalization (white paper 4.3), exact by default (`--relu6 bound`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from qtool.commands.fields import DataArg, option
from qtool.commands.options import OptionalData, ShapeOptions
from qtool.commands.report import ProgressFactory, Report, bar
from qtool.errors import QtoolError
from qtool.steps import RELU6_MODES


@dataclass(frozen=True, kw_only=True)
class _EqualizeOptions:
    relu6: str = option("bound", "ReLU6 (Clip 0..6): 'bound' turns it into ReLU plus a per-channel Min at 6/s, "
                                 "which keeps the float model exact and lets the pairs it joins be scaled; "
                                 "'replace' by ReLU (AIMET; float outputs change where activations exceed 6); "
                                 "'keep' (the pairs it joins are not scaled).", choices=RELU6_MODES)
    keep_relu6: bool = option(False, "Same as --relu6 keep.")
    no_absorb: bool = option(False, "Skip high-bias absorption (keeps the float outputs exact).")
    aimet_scales: bool = option(False, "AIMET's data-free rule even when --data is given (recipes pass their "
                                       "calibration data).")
    param_bw: int = option(8, "With --data: the weight bit-width the noise model assumes.", bounds=(2, 16))
    act_bw: int = option(8, "With --data: the activation bit-width the noise model assumes.", bounds=(2, 16))
    per_channel: bool = option(False, "For per-channel weights (needs --data): instead of balancing weight ranges, "
                                      "which per-channel grids do not need, rescale the channels of every tensor "
                                      "that only depthwise convolutions read to one range, which costs their "
                                      "per-channel weights nothing (docs/design.md).")
    max_widen_bits: float = option(4.0, "With --per-channel: widen a channel by at most 2^N (a channel seen far "
                                        "narrower than the widest is trusted only so far).", bounds=(0.0, 16.0))


@dataclass(frozen=True, kw_only=True)
class EqualizeOptions(ShapeOptions, OptionalData, _EqualizeOptions):
    """equalize's options, then the data's and --input-shape/--vocab-size (for --data random)."""

    data: DataArg = option(None, "Calibration data (see calibrate --data): scales then minimise a model of the "
                                 "weight AND activation quantization noise of each pair (one extra float pass), "
                                 "instead of AIMET's weights-only rule. For per-tensor activations; no data keeps "
                                 "the rule data-free.")

    def mode(self) -> str:
        """The ReLU6 mode in effect (--keep-relu6 is --relu6 keep; with an explicit other mode, a conflict)."""
        if self.keep_relu6 and self.relu6 == "replace":
            raise QtoolError(f"--keep-relu6 conflicts with --relu6 {self.relu6}")
        if self.per_channel and (self.data is None or self.aimet_scales):
            raise QtoolError("--per-channel measures channel ranges: give --data (and no --aimet-scales)")
        return "keep" if self.keep_relu6 else self.relu6


def equalize(model: str | os.PathLike, output: str | os.PathLike, options: EqualizeOptions,
             progress: ProgressFactory = bar) -> Report:
    """Cross-layer equalization (white paper 4.3): fold BN, make ReLU6 scalable, scale layer pairs, absorb high biases.

    The default `--relu6 bound` keeps the float model's function exact; `--relu6 replace` is
    AIMET's (ReLU6 becomes ReLU, which changes the float model and says so).

    Example: qtool equalize model.onnx -o model_cle.onnx
    (noise-aware: qtool equalize model.onnx --data calib.npz -o model_cle.onnx)
    """
    from qtool.ir.graph import load_model, save_model

    options.mode()
    result = equalize_model(load_model(model), options, progress)
    save_model(result.model, output)
    report = equalize_report(result, options)
    return Report({"output": str(output), **report.summary}, [f"{report.lines[0]}; wrote {output}", *report.lines[1:]])


def equalize_model(graph, options: EqualizeOptions, progress: ProgressFactory = bar):
    """The equalization in memory: a `qtool.steps.equalize.EqualizeResult`."""
    from qtool.commands.inputs import open_model_data
    from qtool.steps.equalize import NoiseAwareOptions
    from qtool.steps.equalize import equalize as equalize_step

    mode = options.mode()
    batches, total = None, None
    if options.data is not None and not options.aimet_scales:
        source = open_model_data(graph, options.data, samples=options.samples, preprocess=options.preprocess,
                                 **options.shapes())
        batches, total = (lambda: source.batches(options.batch_size)), source.count()  # noqa: E731
    if options.per_channel:
        from qtool.steps.depthwise_inputs import equalize_for_per_channel
        return equalize_for_per_channel(graph, batches, floor=2.0 ** -options.max_widen_bits, total=total,
                                        progress=progress("channel statistics", unit="samples"))
    return equalize_step(graph, relu6=mode, absorb_bias=not options.no_absorb, data=batches,
                         noise_options=NoiseAwareOptions(param_bw=options.param_bw, act_bw=options.act_bw),
                         total=total, progress=progress("channel statistics", unit="samples"))


def equalize_report(result, options: EqualizeOptions) -> Report:
    if options.per_channel:
        summary = {"folded_batch_norms": result.folded, "relu6_replaced": result.relu6_replaced,
                   "depthwise_inputs_equalized": result.depthwise, "widest_gain_bits": round(result.widened_bits, 2)}
        return Report(summary, [f"folded {result.folded} BN, equalized the channels of {len(result.depthwise)} "
                                f"depthwise-conv inputs (widest gain {result.widened_bits:.1f} bits)"])
    summary = {"folded_batch_norms": result.folded, "relu6_replaced": result.relu6_replaced,
               "pairs_scaled": len(result.pairs), "noise_aware_pairs": result.noise_aware,
               "iterations": result.iterations, "biases_absorbed": result.absorbed,
               "skipped": [{"layer": layer, "reason": reason} for layer, reason in result.skipped]}
    how = f" ({result.noise_aware} noise-aware)" if result.noise_aware else ""
    lines = [f"folded {result.folded} BN, replaced {result.relu6_replaced} ReLU6 ({options.mode()}), equalized "
             f"{len(result.pairs)} layer pairs{how} in {result.iterations} iterations, absorbed {result.absorbed} "
             f"high biases"]
    lines += [f"  not scaled: {layer}: {reason}" for layer, reason in result.skipped]
    return Report(summary, lines)
