"""QAT of a pair in memory: fold, lower the student (quantized) and the teacher (float), train,
and give back the trained pair. Reads and writes no files: `qtool.commands.qat` does the IO."""

from __future__ import annotations

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
               user_loss=None) -> QatResult:
    """Train `model`'s weights (and with `learn_ranges` its quantizers' ranges, except `fixed` and
    frozen ones) to match the float outputs of `reference` (default: its own), or to minimise
    `user_loss` (qtool.train.user_loss); BatchNorms are folded first. `checkpoint`: a file the
    state is saved to after every epoch (`resume`: continue from it; qtool.train.loop)."""
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
    if mode == "blocks":
        trainer = BlockTrainer(student, teacher, output_kinds(folded), params, device)
        trainer.block_teacher = teacher if reference is None else LoweredModel(folded, None, source=source).to(device)
        extra = {"layers_per_block": layers_per_block}
    else:
        trainer = Trainer(student, teacher, output_kinds(folded), params, device)
        trainer.user_loss = user_loss
    diverged = None
    try:
        result = trainer.run(batches, eval_feeds, progress, checkpoint, resume, **extra)
    except Diverged as stop:
        result, diverged = stop.result, str(stop)
    out_model, out_encodings = trained_pair(folded, encodings, student)
    return QatResult(out_model, out_encodings, result, notes, device, mode, diverged)


def _check_interface(reference: ir.Model, model: ir.Model, source: str) -> None:
    """The teacher must take the same inputs and give the same outputs, by name."""
    for kind, ours, theirs in (("inputs", model.graph.inputs, reference.graph.inputs),
                               ("outputs", model.graph.outputs, reference.graph.outputs)):
        mine, other = [v.name for v in ours], [v.name for v in theirs]
        if mine != other:
            raise QtoolError(f"{reference.meta.get('qtool.source', 'reference')}: {kind} {other} differ from "
                             f"{source}'s {mine}", "give the float model the pair was made from")
