"""The QAT loop: the student (the lowered model with its quantizers) learns to reproduce the
teacher (the same model in float) on the training data, epoch by epoch.

Hyper-parameters follow the white paper's section 5.2: weights and quantizer parameters in
separate groups, Adam for the quantizer parameters (and, with no FP32 training recipe to follow,
for the weights too, at a small rate), the rate divided by 10 every `lr_step` epochs. Before the
first epoch and after each, the student is evaluated against the teacher (pooled SQNR per float
output, averaged in dB); the best state is kept and is what the loop leaves in the student (epoch
0, the PTQ starting point, counts: training never makes the result worse on the evaluation set).

Checkpoints: with a `checkpoint` path the whole state (weights, quantizers, optimizer, schedule,
the best state, the record) is written there after every epoch, atomically; `resume=True`
continues from it, so an interrupted run picks up at the next epoch and ends in the state an
uninterrupted run reaches (the data order is fixed and the rest is in the file). It is read
with `weights_only=True`: a checkpoint is data, never code.

The float teacher's outputs are computed once per distinct training batch and reused in later
epochs (`TeacherCache`): the teacher is fixed, so its outputs on the same inputs are the same
tensors, and recomputing them every epoch costs a float forward pass per step. Batches are
looked up by a digest of their inputs (not their position), so a data source that reorders or
changes batches only misses the cache; the cache stops growing at `TEACHER_CACHE_BYTES`.

Guards: a loss that is not finite, or a scale that is not finite, not positive, or has moved
more than `max_scale_change` times from where it started, stops training with `Diverged`; the
student then holds the best state so far.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from qtool.errors import QtoolError
from qtool.files.atomic import atomic_write_bytes
from qtool.train import losses
from qtool.train.oscillation import Oscillations

log = logging.getLogger(__name__)

LABELS = "qtool.labels"  # the key of a training batch's labels (for --loss ce), beside its inputs
TEACHER_CACHE_BYTES = 512 << 20  # teacher outputs kept for later epochs, at most (then recomputed)


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 1
    lr: float = 1e-5
    range_lr: float = 1e-3  # on log(scale): a relative step (qtool.train.fake_quant)
    lr_step: int = 5
    loss: str = "kd"
    temperature: float = 1.0
    max_scale_change: float = 1e3
    seed: int = 0
    oscillation: str = "auto"  # qtool.train.oscillation: auto, freeze, dampen, off
    freeze_threshold: float = 0.01
    dampen_weight: float = 0.1


@dataclass
class EpochRecord:
    epoch: int
    loss: float | None
    eval_sqnr_db: float
    seconds: float
    oscillations: float | None = None  # low-bit weight integers that oscillated, per step (mean over the epoch)
    frozen: int | None = None  # integers frozen at the end of the epoch (--oscillation freeze)


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    steps: int = 0
    seconds: float = 0.0
    bn_reestimation: dict | None = None  # qtool.train.run: what --bn-reestimate did

    @property
    def best(self) -> EpochRecord:
        return next(r for r in self.history if r.epoch == self.best_epoch)


class Diverged(Exception):
    """Training stopped on a non-finite loss or a collapsing/exploding scale; `result` holds what
    was done (the student holds its best state)."""

    def __init__(self, message: str, result: TrainResult) -> None:
        super().__init__(message)
        self.result = result


def to_torch(feeds: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(array)).to(device) for name, array in feeds.items()}


class TeacherCache:
    """The teacher's outputs by a digest of the batch's inputs (names, dtypes, shapes, bytes),
    up to `limit` bytes of outputs; `hits`/`misses` count lookups."""

    def __init__(self, teacher, limit: int = TEACHER_CACHE_BYTES) -> None:
        self.teacher, self.limit, self.bytes = teacher, limit, 0
        self.outputs: dict[bytes, dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0

    @staticmethod
    def digest(batch: dict[str, np.ndarray]) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(batch):
            array = np.ascontiguousarray(batch[name])
            h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            h.update(array.data)
        return h.digest()

    def __call__(self, batch: dict[str, np.ndarray], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = self.digest(batch) if self.limit > 0 else None
        if key is not None and key in self.outputs:
            self.hits += 1
            return self.outputs[key]
        self.misses += 1
        with torch.no_grad():
            target = self.teacher(inputs)
        size = sum(t.numel() * t.element_size() for t in target.values())
        if key is not None and self.bytes + size <= self.limit:
            self.outputs[key], self.bytes = target, self.bytes + size
        return target


class Trainer:
    """One training run; `run()` returns a TrainResult and leaves the best state in `student`.
    `user_loss`: the user's loss function (qtool.train.user_loss), replacing `params.loss`'s."""

    user_loss = None

    def __init__(self, student, teacher, kinds: dict[str, str], params: TrainParams, device="cpu") -> None:
        self.student, self.teacher, self.kinds, self.params, self.device = student, teacher, kinds, params, device
        torch.manual_seed(params.seed)
        weights = list(student.weights.parameters())
        ranges = [p for q in student.quantizers.values() for p in q.parameters()]
        groups = [{"params": weights, "lr": params.lr}] + ([{"params": ranges, "lr": params.range_lr}] if ranges else [])
        self.optimizer = torch.optim.Adam(groups)
        self.schedule = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=params.lr_step, gamma=0.1)
        self.initial_scales = {k: q.current_scale().detach().clone() for k, q in student.quantizers.items()
                               if q.learn}
        self.teacher.requires_grad_(False)
        self.oscillations = Oscillations(student, params.oscillation, params.freeze_threshold, params.dampen_weight)
        self.total_steps: int | None = None  # steps of the whole run, for the oscillation schedules
        self.teacher_cache = TeacherCache(teacher)

    def evaluate(self, feeds: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> float:
        """Mean over float outputs of the pooled SQNR (dB) of the student against the teacher."""
        with torch.no_grad():
            outputs = [self.student(f) for f in feeds]
        names = [n for n, t in targets[0].items() if t.is_floating_point()]
        return float(np.mean([losses.sqnr_db([o[n] for o in outputs], [t[n] for t in targets]) for n in names]))

    def objective(self, outputs: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                  labels: torch.Tensor | None) -> torch.Tensor:
        """The step's loss: the user's function (`--loss file.py:function`) or a built-in one."""
        if self.user_loss is not None:
            floats = {name: value for name, value in outputs.items() if value.is_floating_point()}
            return self.user_loss(floats, labels if labels is not None else  # copies: the cache keeps the originals
                                  {name: value.clone() for name, value in target.items() if value.is_floating_point()})
        return losses.loss(self.params.loss, outputs, target, self.kinds, self.params.temperature, labels)

    def step(self, loss: torch.Tensor, where: str, result: TrainResult) -> float:
        """One optimisation step on `loss`, then the guards; the loss's value."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._check(loss.item(), where, result)
        result.steps += 1
        return loss.item()

    def _check(self, value: float, where: str, result: TrainResult) -> None:
        if not np.isfinite(value):
            self._stop(f"the loss became {value} at {where}", result)
        for key, start in self.initial_scales.items():
            scale = self.student.quantizers[key].current_scale().detach()
            ratio = scale / start
            if (not torch.isfinite(scale).all() or (scale <= 0).any()
                    or (ratio > self.params.max_scale_change).any() or (ratio < 1 / self.params.max_scale_change).any()):
                name = self.student.quantizers[key].tensor_name
                self._stop(f"the scale of '{name}' went from {start.max().item():.3g} to {scale.max().item():.3g} "
                           f"at {where}", result)

    def _stop(self, message: str, result: TrainResult) -> None:
        self.student.load_state_dict(self.best_state)
        raise Diverged(message, result)

    def _signature(self) -> dict:
        """What a checkpoint must agree on to be resumed (not the number of epochs: a run may be extended)."""
        return {**dataclasses.asdict(self.params), "epochs": None,
                "tensors": sorted((k, tuple(v.shape)) for k, v in self.student.state_dict().items())}

    def save(self, path, epoch: int, result: TrainResult) -> None:
        state = {"epoch": epoch, "signature": self._signature(), "student": self.student.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                 "best_state": self.best_state, "result": dataclasses.asdict(result)}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load(self, path) -> tuple[int, TrainResult]:
        """(the last finished epoch, the record so far) from a checkpoint `save` wrote."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            if state["signature"] != self._signature():
                raise ValueError("written for another model, encodings or training options")
            self.student.load_state_dict(state["student"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
        except Exception as exc:
            raise QtoolError(f"{path}: cannot resume from this checkpoint ({exc})",
                             "delete it, or run without --resume to start again") from None
        self.best_state = state["best_state"]
        record = state["result"]
        result = TrainResult([EpochRecord(**r) for r in record["history"]], record["best_epoch"], record["steps"],
                             record["seconds"])
        return state["epoch"], result

    def run(self, batches: Callable[[], Iterable[dict[str, np.ndarray]]], eval_feeds: list[dict[str, np.ndarray]],
            progress: Callable[[str], None] = lambda note: None, checkpoint=None, resume: bool = False) -> TrainResult:
        start = time.perf_counter()
        feeds = [to_torch(f, self.device) for f in eval_feeds]
        with torch.no_grad():
            targets = [self.teacher(f) for f in feeds]
        if resume:
            done, result = self.load(checkpoint)
            log.info("qat: resuming after epoch %d from %s", done, checkpoint)
        else:
            done, result = 0, TrainResult()
            result.history.append(EpochRecord(0, None, self.evaluate(feeds, targets), 0.0))
            self.best_state = copy.deepcopy(self.student.state_dict())
            log.info("qat: epoch 0 (PTQ): eval SQNR %.2f dB", result.history[0].eval_sqnr_db)
        for epoch in range(done + 1, self.params.epochs + 1):
            epoch_start, total, count, oscillated = time.perf_counter(), 0.0, 0, 0
            for step, batch in enumerate(batches(), 1):
                labels = batch.pop(LABELS, None)
                inputs = to_torch(batch, self.device)
                target = self.teacher_cache(batch, inputs)
                labels = None if labels is None else torch.from_numpy(labels.astype(np.int64)).to(self.device)
                self.oscillations.schedule(result.steps / self.total_steps if self.total_steps
                                           else (epoch - 1) / self.params.epochs)
                loss = self.objective(self.student(inputs), target, labels)
                penalty = self.oscillations.penalty()
                value = self.step(loss if penalty is None else loss + penalty, f"epoch {epoch}, step {step}", result)
                total, count, oscillated = total + value, count + 1, oscillated + self.oscillations.oscillated()
                progress(f"epoch {epoch}/{self.params.epochs} step {step}, loss {total / count:.4g}")
            self.schedule.step()
            record = EpochRecord(epoch, total / max(count, 1), self.evaluate(feeds, targets),
                                 time.perf_counter() - epoch_start)
            if self.oscillations.active:
                record.oscillations, record.frozen = oscillated / max(count, 1), self.oscillations.frozen()
            result.history.append(record)
            if record.eval_sqnr_db > result.best.eval_sqnr_db:
                result.best_epoch, self.best_state = epoch, copy.deepcopy(self.student.state_dict())
            log.info("qat: epoch %d/%d: loss %.4g, eval SQNR %.2f dB (best %.2f dB, epoch %d), %.1f s", epoch,
                     self.params.epochs, record.loss, record.eval_sqnr_db, result.best.eval_sqnr_db,
                     result.best_epoch, record.seconds)
            if checkpoint is not None:
                self.save(checkpoint, epoch, result)
        self.student.load_state_dict(self.best_state)
        result.seconds += time.perf_counter() - start
        return result
