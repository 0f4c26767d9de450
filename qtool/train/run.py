"""QAT of a pair in memory: fold, lower the student (quantized) and the teacher (float), train,
and give back the trained pair. Reads and writes no files: `qtool.commands.qat` does the IO."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.errors import QtoolError
from qtool.train import require_torch
from qtool.train.loop import Diverged, TrainParams, TrainResult


@dataclass
class QatResult:
    model: ir.Model
    encodings: EncodingSet
    training: TrainResult
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"
    mode: str = "full"
    diverged: str | None = None  # why training stopped early (the pair holds the best state before it)


def device_name() -> str:
    """CUDA where the installed torch has it, else the CPU (the report says which)."""
    torch = require_torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_pair(model: ir.Model, encodings: EncodingSet, batches: Callable[[], Iterable[dict[str, np.ndarray]]],
               eval_feeds: list[dict[str, np.ndarray]], params: TrainParams, *, learn_ranges: bool = False,
               fixed: frozenset[str] = frozenset(), source: str = "model",
               progress: Callable[[str], None] = lambda note: None, reference: ir.Model | None = None,
               checkpoint=None, resume: bool = False, mode: str = "full", layers_per_block: int = 4,
               user_loss=None, steps_per_epoch: int | None = None, bn_batches: int = 0) -> QatResult:
    """Train `model`'s weights (and with `learn_ranges` its quantizers' ranges, except `fixed` and
    frozen ones) to match the float outputs of `reference` (default: its own), or to minimise
    `user_loss` (qtool.train.user_loss); BatchNorms are folded first. `checkpoint`: a file the
    state is saved to after every epoch (`resume`: continue from it; qtool.train.loop).
    `bn_batches`: re-estimate the folded BNs' bias shift on that many batches after training
    (qtool.train.bn_reestimate), kept if it raises the evaluation SQNR."""
    torch = require_torch()
    from qtool.train.losses import output_kinds
    from qtool.train.lower import LoweredModel
    from qtool.train.pair import fold_for_training, trained_pair

    folded, encodings, notes = fold_for_training(model, encodings)
    device = device_name()
    student = LoweredModel(folded, encodings, learn_ranges=learn_ranges, fixed=fixed, source=source).to(device)
    if reference is not None:
        _check_interface(reference, folded, source)
    teacher = LoweredModel(reference or folded, None, source=source).to(device)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    from qtool.train.blocks import BlockTrainer
    from qtool.train.loop import Trainer

    extra = {}
    if mode == "blocks":  # each block's few steps: no oscillation schedule
        params = dataclasses.replace(params, oscillation="off")
        trainer = BlockTrainer(student, teacher, output_kinds(folded), params, device)
        trainer.block_teacher = teacher if reference is None else LoweredModel(folded, None, source=source).to(device)
        extra = {"layers_per_block": layers_per_block}
    else:
        trainer = Trainer(student, teacher, output_kinds(folded), params, device)
        trainer.user_loss = user_loss
        trainer.total_steps = steps_per_epoch * params.epochs if steps_per_epoch else None
    diverged = None
    try:
        result = trainer.run(batches, eval_feeds, progress, checkpoint, resume, **extra)
    except Diverged as stop:
        result, diverged = stop.result, str(stop)
    trainer.oscillations.snap()  # frozen integers into the float weights the pair stores
    notes += [f"oscillation {trainer.oscillations.mode}: {len(trainer.oscillations.pairs)} weight tensor(s) of <= 4 "
              f"bits tracked, {trainer.oscillations.frozen()} integer(s) frozen"] if trainer.oscillations.active else []
    if bn_batches and mode == "full" and diverged is None:
        notes.append(_reestimate_bns(trainer, folded, batches, eval_feeds, bn_batches, result))
    out_model, out_encodings = trained_pair(folded, encodings, student)
    return QatResult(out_model, out_encodings, result, notes, device, mode, diverged)


def _reestimate_bns(trainer, folded: ir.Model, batches, eval_feeds, count: int, result: TrainResult) -> str:
    """BN re-estimation (the folded bias shift) on `count` training batches, kept if the
    evaluation SQNR rises; a note saying what happened."""
    import torch

    from qtool.train.bn_reestimate import folded_layers, reestimate
    from qtool.train.loop import LABELS, to_torch

    layers = folded_layers(folded)
    if not layers:
        return "BN re-estimation: no folded BatchNorm statistics in the model (nothing to re-estimate)"
    before = {name: value.detach().clone() for name, value in trainer.student.named_initializers().items()}
    feeds = [to_torch(f, trainer.device) for f in eval_feeds]
    with torch.no_grad():
        targets = [trainer.teacher(f) for f in feeds]
    train = (to_torch({k: a for k, a in b.items() if k != LABELS}, trainer.device) for b in batches())
    reestimate(trainer.student, layers, train, count)
    after, best = trainer.evaluate(feeds, targets), result.best.eval_sqnr_db
    result.bn_reestimation = {"layers": len(layers), "batches": count, "eval_sqnr_db_before": round(best, 3),
                              "eval_sqnr_db_after": round(after, 3), "kept": after > best}
    if after <= best:
        with torch.no_grad():
            for name, value in trainer.student.named_initializers().items():
                value.copy_(before[name])
    return (f"BN re-estimation of {len(layers)} folded layer(s) on {count} batch(es): eval SQNR {best:.2f} -> "
            f"{after:.2f} dB ({'kept' if after > best else 'not kept'})")


def _check_interface(reference: ir.Model, model: ir.Model, source: str) -> None:
    """The teacher must take the same inputs and give the same outputs, by name."""
    for kind, ours, theirs in (("inputs", model.graph.inputs, reference.graph.inputs),
                               ("outputs", model.graph.outputs, reference.graph.outputs)):
        mine, other = [v.name for v in ours], [v.name for v in theirs]
        if mine != other:
            raise QtoolError(f"{reference.meta.get('qtool.source', 'reference')}: {kind} {other} differ from "
                             f"{source}'s {mine}", "give the float model the pair was made from")
