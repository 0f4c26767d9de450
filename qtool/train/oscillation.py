"""Weight oscillations in low-bit QAT, and the two remedies of Nagel et al. 2022 ("Overcoming
Oscillations in Quantization-Aware Training", ICML; checked against the authors' code).

With the straight-through estimator, a latent weight near a rounding boundary is pushed back and
forth across it: its integer flips between two neighbours step after step. Nagel et al. find this
hurts most at <= 4 bits in depth-wise layers (MobileNets, EfficientNet-Lite). We track, for every
weight quantizer of at most MAX_BITS bits, each integer's flips: an *oscillation* is a change of
the integer in the direction opposite to its previous change, and its frequency is an exponential
moving average (momentum 0.01, as the authors) of oscillations per step.

* `freeze` (iterative weight freezing): an integer whose oscillation frequency exceeds a
  threshold is frozen at the rounded moving average of its recent integers, and stays there (no
  gradient reaches its latent weight). The threshold follows a cosine from FREEZE_START down to
  `--freeze-threshold` over the training steps (the authors: 0.1 to 0.01-0.015 at 4 bits). When
  the pair is written, a frozen weight's float value is set to its frozen grid point, so
  `simulate` computes what training left.
* `dampen` (oscillation dampening): a term added to the loss, lambda * sum over the quantized
  weight tensors of kernel_mean((q(w) - clip(w, s*o, s*(q_max + o)))^2), with q(w) held constant
  (no gradient) and kernel_mean summing over the output channels and averaging over the rest, in
  the weight's own units, as the authors' code does: it pulls each latent weight to the centre of
  its grid bin, away from the boundary it would oscillate across. lambda is 0 for the first
  quarter of the steps, then rises along a cosine to `--dampen-weight` (the authors: 0 to 0.1).
* `auto` (the default): `freeze` when some weight has <= 4 bits; nothing is tracked otherwise.

Trackers are submodules of the quantizers (their state is in checkpoints) and only a forward pass
with gradients (a training step) updates them; evaluation does not.
"""

from __future__ import annotations

import math

import torch

MOMENTUM = 0.01
MAX_BITS = 4
FREEZE_START = 0.1
DAMPEN_START = 0.25  # fraction of the steps before the dampening weight starts to rise
MODES = ("auto", "freeze", "dampen", "off")


class Tracker(torch.nn.Module):
    """The integers of one weight tensor: last value, direction of the last change, oscillation
    frequency, moving average, and (when freezing) which are frozen at which value."""

    def __init__(self, shape: tuple[int, ...], freeze: bool) -> None:
        super().__init__()
        self.freeze, self.threshold, self.oscillated = freeze, 0.0, 0
        for name in ("previous", "direction", "frequency", "average", "frozen_int"):
            self.register_buffer(name, torch.zeros(shape))
        self.register_buffer("frozen", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """The integers `grid` (0..q_max) with the frozen ones replaced; tracked in training steps."""
        if self.freeze:
            grid = torch.where(self.frozen, self.frozen_int, grid)
        if torch.is_grad_enabled():
            self.track(grid.detach())
        return grid

    @torch.no_grad()
    def track(self, grid: torch.Tensor) -> None:
        if not bool(self.started):
            self.previous.copy_(grid)
            self.average.copy_(grid)
            self.started.fill_(True)
            self.oscillated = 0
            return
        change = grid - self.previous
        direction = torch.sign(change)
        oscillated = (direction * self.direction) < 0  # moved back against its previous move
        self.frequency.mul_(1 - MOMENTUM).add_(MOMENTUM * oscillated.float())
        self.direction.copy_(torch.where(change != 0, direction, self.direction))
        self.previous.copy_(grid)
        self.average.mul_(1 - MOMENTUM).add_(MOMENTUM * grid)
        self.oscillated = int(oscillated.sum())
        if self.freeze and self.threshold > 0:
            new = (self.frequency > self.threshold) & ~self.frozen
            # new tensors, not in place: this step's forward saved `frozen` for its backward
            self.frozen_int = torch.where(new, torch.round(self.average), self.frozen_int)
            self.frozen = self.frozen | new


def cosine(start: float, end: float, progress: float) -> float:
    """From `start` at progress 0 to `end` at 1 along half a cosine."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


class Oscillations:
    """The trackers of a student's low-bit weight quantizers, their schedule and the dampening term."""

    def __init__(self, student, mode: str, freeze_threshold: float = 0.01, dampen_weight: float = 0.1) -> None:
        self.mode = "freeze" if mode == "auto" else mode
        self.final_threshold, self.final_weight, self.weight = freeze_threshold, dampen_weight, 0.0
        self.pairs = []  # (quantizer, latent weight)
        if self.mode == "off":
            return
        weights = student.named_initializers()
        for name, key in student._quantizer_of.items():
            quantizer = student.quantizers[key]
            if name in weights and quantizer.dtype == "int" and quantizer.bw <= MAX_BITS:
                quantizer.oscillation = Tracker(tuple(weights[name].shape), freeze=self.mode == "freeze")
                self.pairs.append((quantizer, weights[name]))

    @property
    def active(self) -> bool:
        return bool(self.pairs)

    def schedule(self, progress: float) -> None:
        """Set the freezing threshold and the dampening weight for a step at `progress` (0..1) of training."""
        threshold = cosine(FREEZE_START, self.final_threshold, progress)
        for quantizer, _ in self.pairs:
            quantizer.oscillation.threshold = threshold
        late = (progress - DAMPEN_START) / (1 - DAMPEN_START)
        self.weight = 0.0 if late <= 0 else cosine(0.0, self.final_weight, late)

    def penalty(self) -> torch.Tensor | None:
        """lambda * the dampening term (None unless dampening, or while lambda is 0)."""
        if self.mode != "dampen" or self.weight == 0.0:
            return None
        return self.weight * sum(dampening_term(quantizer, weight) for quantizer, weight in self.pairs)

    def oscillated(self) -> int:
        """Oscillations in the last training step, over every tracked weight."""
        return sum(quantizer.oscillation.oscillated for quantizer, _ in self.pairs)

    def frozen(self) -> int:
        return sum(int(quantizer.oscillation.frozen.sum()) for quantizer, _ in self.pairs)

    @torch.no_grad()
    def snap(self) -> None:
        """Set each frozen weight's float value to its frozen grid point (what the written pair stores)."""
        for quantizer, weight in self.pairs:
            tracker = quantizer.oscillation
            if tracker.freeze and bool(tracker.frozen.any()):
                scale, offset = quantizer.grid_of(weight)
                weight.copy_(torch.where(tracker.frozen, (tracker.frozen_int + offset) * scale, weight))


def dampening_term(quantizer, weight: torch.Tensor) -> torch.Tensor:
    """kernel_mean((q(w) - clip(w, s*o, s*(q_max + o)))^2): q(w) without gradient, the range fixed."""
    with torch.no_grad():
        target = quantizer(weight)
        scale, offset = quantizer.grid_of(weight)
    clipped = torch.minimum(torch.maximum(weight, scale * offset), scale * (quantizer.qmax + offset))
    error = (target - clipped) ** 2
    return error.sum(0).mean() if error.dim() > 0 else error
