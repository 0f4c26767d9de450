"""`qat`: quantization-aware training of a pair from the ONNX file alone (qtool.train, torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qtool.commands.fields import DataArg, LabelsArg, option
from qtool.commands.options import CONFIG_HELP, ENCODINGS_HELP, DataOptions, encoding_version
from qtool.commands.report import ProgressFactory, Report, bar

LOSSES = ("kd", "ce", "mse")


@dataclass(frozen=True, kw_only=True)
class QatOptions(DataOptions):
    data: DataArg = option(help="Training data, in any form calibrate --data takes.")
    labels: LabelsArg = option(None, "Integer class labels of --data (.npy or .txt, one per sample, as simulate "
                                     "--labels reads them) for --loss ce, which they make the default.")
    encodings: str | None = option(None, ENCODINGS_HELP)
    batch_size: int = option(8, "Samples per training step.", bounds=(1, None))
    reference: str | None = option(None, "Float model to distil from and evaluate against (default: MODEL itself); "
                                         "e.g. the original model when bias-correct or equalize changed MODEL's float "
                                         "function.")
    eval_data: DataArg = option(None, "Evaluation data: SQNR against the float model after each epoch, which picks "
                                      "the best epoch (default: the first --eval-samples of --data).")
    eval_samples: int = option(32, "Evaluation samples.", bounds=(1, None))
    epochs: int = option(1, "Passes over --data.", bounds=(1, None))
    lr: float = option(1e-5, "Learning rate of the weights (Adam).", bounds=(0, None))
    range_learning: bool = option(False, "Also train the quantizers' scales and offsets (LSQ/LSQ+, Adam), from the "
                                         "calibrated encodings; fixed ranges and frozen encodings stay.")
    range_lr: float = option(1e-3, "Learning rate of the scales (of their logarithms: about the relative change per "
                                   "step) and offsets (grid steps) with --range-learning.", bounds=(0, None))
    lr_step: int = option(5, "Divide the learning rates by 10 every N epochs (white paper 5.2).", bounds=(1, None))
    loss: str | None = option(None, "kd (the default without --labels): distillation from the float model's own "
                                    "outputs (KL on Softmax outputs, relative MSE on others; no labels); ce (the "
                                    "default with --labels): cross-entropy against the labels on the classifier "
                                    "output; mse: relative MSE on every output; file.py:function: your function of "
                                    "(quantized outputs, float outputs or --labels), dicts of torch tensors by "
                                    "output name (labels: a tensor), returning a scalar tensor (docs/qat.md).")
    temperature: float = option(1.0, "kd: soften the Softmax outputs' distributions at this temperature (KL scaled by "
                                     "T^2, Hinton et al. 2015); other outputs keep the relative MSE.",
                                bounds=(1e-3, None))
    mode: str = option("full", "full: end-to-end QAT of the whole model; blocks: block-wise reconstruction, each block "
                               "of --block-layers layers trained in turn to match the float model's tensors at its end "
                               "(BRECQ / AdaScale style: less memory; --epochs per block).", choices=("full", "blocks"))
    block_layers: int = option(4, "--mode blocks: Conv/Gemm/MatMul layers per block.", bounds=(1, None))
    oscillation: str = option("auto", "Weights of <= 4 bits whose integers oscillate across a rounding boundary "
                                      "(Nagel et al. 2022): freeze (iterative weight freezing: an integer that "
                                      "oscillates more often than --freeze-threshold per step stays at its recent "
                                      "average), dampen (a loss term pulling weights to their bin centres, weighted "
                                      "up to --dampen-weight), off; auto: freeze when some weight has <= 4 bits.",
                              choices=("auto", "freeze", "dampen", "off"))
    freeze_threshold: float = option(0.01, "--oscillation freeze: the final oscillation frequency (per step, moving "
                                           "average) above which an integer is frozen; it falls from 0.1 along a "
                                           "cosine.", bounds=(1e-6, 1.0))
    dampen_weight: float = option(0.1, "--oscillation dampen: the final weight of the dampening term (0 for the "
                                       "first quarter of the steps, then a cosine up to it).", bounds=(0, None))
    bn_reestimate: int = option(0, "After training, re-estimate the folded BatchNorms' mean on N batches of --data: "
                                   "each folded layer's bias shifted so its quantized output averages the BN's "
                                   "beta (docs/qat.md); kept only if the evaluation SQNR rises. 0: off.",
                                bounds=(0, None))
    resume: bool = option(False, "Continue an interrupted run from PREFIX.qat-checkpoint.pt, which every epoch "
                                 "writes (and a finished run removes); --epochs may be raised to train on.")
    config: str = option("default", "Runtime config whose fixed ranges (encoding_constraints) stay fixed with "
                                    f"--range-learning. {CONFIG_HELP}")
    encoding_version: str = encoding_version()


def qat(model: str | os.PathLike, output: str | os.PathLike, options: QatOptions,
        progress: ProgressFactory = bar) -> Report:
    """Quantization-aware training: fine-tune the pair's weights (and with --range-learning its
    ranges) through its quantizers, distilling from the float model's own outputs (no labels).

    BatchNorms are folded first. Writes PREFIX.onnx (the float model with the trained weights)
    and PREFIX.encodings.json, a pair simulate and export take unchanged. Needs qtool[train].

    Example: qtool qat model.onnx --encodings model.encodings.json --data train.npz --epochs 5 -o out/model_qat
    """
    from qtool.commands.inputs import load_pair, open_model_data, output_prefix
    from qtool.encodings.write import save_encodings
    from qtool.errors import QtoolError
    from qtool.files.atomic import StagedOutputs
    from qtool.ir.graph import save_model
    from qtool.train import require_torch

    require_torch()
    from qtool.commands.blockwise import refuse_block_pair

    graph, encodings, source = refuse_block_pair(load_pair(model, options.encodings), "qat")
    prefix = output_prefix(output)
    checkpoint = Path(f"{prefix}.qat-checkpoint.pt")
    if options.resume and options.mode == "blocks":
        raise QtoolError("--resume: only --mode full writes checkpoints", "rerun --mode blocks from the start")
    if options.resume and not checkpoint.is_file():
        raise QtoolError(f"{checkpoint}: no checkpoint to resume from", "run without --resume to start")
    result = qat_model(graph, encodings, options, str(model), progress, checkpoint)
    with StagedOutputs() as out:
        save_model(result.model, out.path(f"{prefix}.onnx"))
        save_encodings(result.encodings, out.path(f"{prefix}.encodings.json"), options.encoding_version)
    if not result.diverged:
        checkpoint.unlink(missing_ok=True)
    report = qat_report(result)
    if result.diverged:
        best = result.training.best
        raise QtoolError(f"{model}: training diverged: {result.diverged}",
                         f"lower --lr / --range-lr; the best state (epoch {best.epoch}, eval SQNR "
                         f"{best.eval_sqnr_db:.2f} dB) was written to {prefix}.onnx")
    return Report({"model": f"{prefix}.onnx", "encodings": f"{prefix}.encodings.json", **report.summary},
                  [*report.lines, f"wrote {prefix}.onnx and {prefix}.encodings.json"])


def qat_model(graph, encodings, options: QatOptions, source: str = "model", progress: ProgressFactory = bar,
              checkpoint: Path | None = None):
    """QAT in memory: a `qtool.train.run.QatResult` (the trained pair and the training record);
    `checkpoint`: the file saved after every epoch (and resumed from with --resume)."""
    from qtool.commands.inputs import open_model_data
    from qtool.ir.graph import load_model
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plan.config import load_config
    from qtool.train.loop import TrainParams
    from qtool.train.run import train_pair

    user_loss = _user_loss(options)
    data = open_model_data(graph, options.data, **options.reading())
    loss, labels = _loss_and_labels(graph, data, options)
    if options.eval_data is not None:
        evaluation = open_model_data(graph, options.eval_data, **{**options.reading(), "samples": options.eval_samples})
    else:
        evaluation = open_model_data(graph, options.data, **{**options.reading(), "samples": options.eval_samples})
    eval_feeds = [dict(batch) for batch in evaluation.batches(options.batch_size)]
    plan = build_plan(graph, load_config(options.config), PlanOptions())
    fixed = frozenset(name for name, tensor in plan.all().items() if tensor.fixed_range is not None)
    params = TrainParams(options.epochs, options.lr, options.range_lr, options.lr_step, loss, options.temperature,
                         seed=options.seed, oscillation=options.oscillation, freeze_threshold=options.freeze_threshold,
                         dampen_weight=options.dampen_weight)
    bar_ = progress("qat", unit="epochs")
    bar_(0, options.epochs)
    result = train_pair(graph, encodings, lambda: (_labelled(b, labels) for b in data.batches(options.batch_size)),
                        eval_feeds,
                        params, learn_ranges=options.range_learning, fixed=fixed, source=source, progress=bar_.detail,
                        reference=load_model(options.reference) if options.reference else None,
                        checkpoint=checkpoint, resume=options.resume, mode=options.mode,
                        layers_per_block=options.block_layers, user_loss=user_loss,
                        steps_per_epoch=data.batch_count(options.batch_size) if options.oscillation != "off" else None,
                        bn_batches=options.bn_reestimate)
    if not result.diverged:
        bar_(options.epochs, options.epochs)
    return result


def _user_loss(options: QatOptions):
    """The function of `--loss file.py:function` (loaded, so a missing file or function fails
    before any work), None for a built-in loss; unknown names are refused."""
    from qtool.errors import QtoolError
    from qtool.train import user_loss

    if not user_loss.is_user_loss(options.loss):
        if options.loss is not None and options.loss.lower() not in LOSSES:
            raise QtoolError(f"--loss {options.loss}: expected one of {', '.join(LOSSES)} or file.py:function")
        return None
    if options.mode == "blocks":
        raise QtoolError(f"--loss {options.loss}: --mode blocks trains each block on the relative error of its "
                         "tensors, not on the model's outputs", "use --mode full with your loss")
    return user_loss.load(options.loss)


def _loss_and_labels(graph, data, options: QatOptions):
    """The loss (`ce` by default with --labels, else `kd`) and the labels of --data (None without
    them), checked as simulate checks them: one per sample, integers inside the classifier's classes."""
    from qtool.commands.inputs import load_labels
    from qtool.errors import QtoolError

    loss = options.loss if options.loss and ":" in options.loss else (options.loss or "").lower()
    loss = loss or ("ce" if options.labels is not None else "kd")
    if options.labels is None:
        if loss == "ce":
            raise QtoolError("--loss ce: needs --labels (one class id per --data sample)", "or use --loss kd")
        return loss, None
    where = "labels" if not isinstance(options.labels, (str, os.PathLike)) else os.fspath(options.labels)
    if loss != "ce" and loss in LOSSES:
        raise QtoolError(f"{where}: --labels are used by --loss ce only (or your file.py:function), not "
                         f"--loss {loss}", "drop --labels, or use --loss ce")
    if options.mode == "blocks":
        raise QtoolError(f"{where}: --labels (--loss ce) train the whole model; --mode blocks matches each block "
                         "to the float model's tensors", "use --mode full, or drop --labels")
    try:
        return loss, load_labels(options.labels, graph, data)
    except QtoolError as error:
        raise QtoolError(error.message, f"--labels: {error.hint or 'one class id per --data sample'}") from None


def _labelled(batch, labels) -> dict:
    """A training batch's feeds, with its samples' labels under qtool.train.loop.LABELS."""
    from qtool.train.loop import LABELS

    return dict(batch) if labels is None else {**batch, LABELS: labels[batch.indices]}


def qat_report(result) -> Report:
    """The curve (eval SQNR per epoch, or per block with --mode blocks; 0 = the PTQ start), the
    best one, time and device."""
    training = result.training
    summary = {"seconds": round(training.seconds, 2), "device": result.device, "mode": result.mode,
               "steps": training.steps,
               "best_epoch": training.best_epoch,
               **({"bn_reestimation": training.bn_reestimation} if training.bn_reestimation else {}),
               "epochs": [{"epoch": r.epoch, "loss": r.loss, "eval_sqnr_db": round(r.eval_sqnr_db, 3),
                           "seconds": round(r.seconds, 2),
                           **({"oscillations_per_step": round(r.oscillations, 2), "frozen": r.frozen}
                              if r.oscillations is not None else {})} for r in training.history]}
    first, best = training.history[0], training.best
    unit = "block" if result.mode == "blocks" else "epoch"
    lines = [f"qat: {len(training.history) - 1} {unit}(s), {training.steps} steps in {training.seconds:.1f}s on "
             f"{result.device}: eval SQNR {first.eval_sqnr_db:.2f} dB (PTQ) -> {best.eval_sqnr_db:.2f} dB "
             f"({unit} {best.epoch}, kept)", *[f"  {note}" for note in result.notes]]
    lines += [f"  {unit} {r.epoch}: loss {r.loss:.4g}, eval SQNR {r.eval_sqnr_db:.2f} dB" +
              (f", {r.oscillations:.1f} oscillations/step, {r.frozen} frozen" if r.oscillations is not None else "")
              for r in training.history[1:]]
    return Report(summary, lines)
