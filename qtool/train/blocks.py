"""Block-wise reconstruction (`qtool qat --mode blocks`): the graph cut into blocks of a few
layers, each trained in turn to reproduce the float model's tensors at its end from the
quantized model's tensors at its start, as BRECQ (Li et al. 2021) and AIMET's AdaScale do.

A block's boundary is a step of the graph's order; the tensors alive there (every tensor a later
node reads: one feature map in a chain, more across a residual or an attention block, and the
int64 shape tensors, which are the same in both models) are the block's inputs and targets. The
inputs come from the student with the blocks before it already trained (errors do not pile up
unseen), the targets from the float teacher. Only the weights (and with range learning the
quantizers) that the block reads receive gradients: Adam skips the others. Memory is that of one
block's graph, not the model's.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from qtool.train import losses
from qtool.train.loop import EpochRecord, Trainer, TrainResult, to_torch

log = logging.getLogger(__name__)
LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def block_bounds(lowered, layers_per_block: int) -> list[tuple[int, int]]:
    """(first, stop) step ranges holding `layers_per_block` layers each (the last takes the rest)."""
    bounds, first, count = [], 0, 0
    for step, (_, attrs, _, _) in enumerate(lowered.program):
        count += attrs.op_type in LAYERS
        if count == layers_per_block:
            bounds.append((first, step + 1))
            first, count = step + 1, 0
    if first < len(lowered.program):
        if bounds and count == 0:
            bounds[-1] = (bounds[-1][0], len(lowered.program))
        else:
            bounds.append((first, len(lowered.program)))
    return bounds


def _block_loss(student_env: dict, teacher_env: dict) -> torch.Tensor:
    terms = [losses.relative_mse(student_env[n], t) for n, t in teacher_env.items()
             if t.is_floating_point() and n in student_env and student_env[n].requires_grad]
    return torch.stack(terms).mean() if terms else None


class BlockTrainer(Trainer):
    """The Trainer's optimizer, guards and evaluation, run block by block; a record per block.
    `block_teacher`: the float model with the student's graph (the blocks' targets); `teacher`
    (perhaps another float model, --reference) is what the evaluation compares with."""

    block_teacher = None

    def run(self, batches: Callable[[], Iterable[dict[str, np.ndarray]]], eval_feeds: list[dict[str, np.ndarray]],
            progress: Callable[[str], None] = lambda note: None, checkpoint=None, resume: bool = False,
            layers_per_block: int = 4) -> TrainResult:
        start = time.perf_counter()
        feeds = [to_torch(f, self.device) for f in eval_feeds]
        with torch.no_grad():
            targets = [self.teacher(f) for f in feeds]
        result = TrainResult()
        result.history.append(EpochRecord(0, None, self.evaluate(feeds, targets), 0.0))
        self.best_state = copy.deepcopy(self.student.state_dict())
        log.info("qat: blocks: before (PTQ): eval SQNR %.2f dB", result.history[0].eval_sqnr_db)
        bounds = block_bounds(self.student, layers_per_block)
        for index, (first, stop) in enumerate(bounds, 1):
            block_start, total, count = time.perf_counter(), 0.0, 0
            for epoch in range(1, self.params.epochs + 1):
                for step, batch in enumerate(batches(), 1):
                    inputs = to_torch(batch, self.device)
                    with torch.no_grad():
                        teacher_env = self.block_teacher.run_steps(self.block_teacher.start(inputs), 0, stop)
                        student_in = self.student.run_steps(self.student.start(inputs), 0, first)
                    value = _block_loss(self.student.run_steps(dict(student_in), first, stop), teacher_env)
                    if value is None:  # a block of shape arithmetic only
                        break
                    total += self.step(value, f"block {index}, epoch {epoch}, step {step}", result)
                    count += 1
                    progress(f"block {index}/{len(bounds)} epoch {epoch} step {step}, loss {total / count:.4g}")
            record = EpochRecord(index, total / max(count, 1), self.evaluate(feeds, targets),
                                 time.perf_counter() - block_start)
            result.history.append(record)
            log.info("qat: block %d/%d (nodes %d-%d): loss %.4g, eval SQNR %.2f dB, %.1f s", index, len(bounds),
                     first, stop - 1, record.loss, record.eval_sqnr_db, record.seconds)
        if result.history[-1].eval_sqnr_db > result.history[0].eval_sqnr_db:
            result.best_epoch, self.best_state = result.history[-1].epoch, copy.deepcopy(self.student.state_dict())
        self.student.load_state_dict(self.best_state)
        result.seconds = time.perf_counter() - start
        return result
