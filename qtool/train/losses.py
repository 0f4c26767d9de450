"""What QAT minimises, per output of the model, against the float model's own outputs.

* `kd` (the default without labels): distillation from the float model. An output made by a
  Softmax is a distribution: KL(float || quantized), the soft-target loss of Hinton et al. 2015.
  At a temperature T != 1 both distributions are softened first (softmax(log p / T), the
  model's own logits not being an output) and the KL is scaled by T^2, as Hinton et al. do, so
  the gradients keep their size as T changes. Any other float output: the mean squared error
  over the float output's mean square, so outputs of different scales weigh alike and the loss
  reads as a relative error (1e-2 is about 20 dB); on logits that is the high-temperature limit
  of the soft-target loss (Hinton et al., section 2.1).
* `ce` (the default with labels): cross-entropy of the labels against the first classifier-shaped
  (N x C) float output, which is taken as probabilities when a Softmax made it, else as logits.
* `mse`: that relative squared error on every output, distributions included.

Integer outputs (argmax, lengths) carry no gradient and are left out.
"""

from __future__ import annotations

import torch

from qtool.errors import QtoolError
from qtool.metrics.comparison import is_classifier_output

LOSSES = ("kd", "ce", "mse")
_EPS = 1e-8


def output_kinds(model) -> dict[str, str]:
    """Output name -> 'distribution' (made by a Softmax) or 'values'."""
    kinds = {}
    for value in model.graph.outputs:
        producer = value.producer()
        kinds[value.name] = "distribution" if producer is not None and producer.op_type == "Softmax" else "values"
    return kinds


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return ((student - teacher) ** 2).mean() / ((teacher ** 2).mean() + _EPS)


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """KL(teacher || student) over `axis`, averaged over the other positions. A quantized
    probability of exactly 0 is clamped (its log would be -inf)."""
    p = teacher.clamp_min(_EPS)
    return (teacher * (p.log() - student.clamp_min(_EPS).log())).sum(axis).mean()


def softened_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, axis: int = -1) -> torch.Tensor:
    """T^2 KL(teacher_T || student_T) of two distributions softened at temperature T
    (p_T = softmax(log p / T)), averaged over the other positions; at T = 1, `kl_divergence`."""
    if temperature == 1.0:
        return kl_divergence(student, teacher, axis)
    t = torch.log_softmax(teacher.clamp_min(_EPS).log() / temperature, axis)
    s = torch.log_softmax(student.clamp_min(_EPS).log() / temperature, axis)
    return temperature ** 2 * (t.exp() * (t - s)).sum(axis).mean()


def cross_entropy(student: dict[str, torch.Tensor], labels: torch.Tensor, kinds: dict[str, str]) -> torch.Tensor:
    """Cross-entropy of integer `labels` (one per sample) against the first classifier-shaped output."""
    for name, scores in student.items():
        if scores.is_floating_point() and is_classifier_output(tuple(scores.shape)):
            flat = scores.reshape(scores.shape[0], -1)
            if kinds.get(name) == "distribution":
                return torch.nn.functional.nll_loss(flat.clamp_min(_EPS).log(), labels)
            return torch.nn.functional.cross_entropy(flat, labels)
    shapes = ", ".join(f"'{n}' {tuple(t.shape)}" for n, t in student.items())
    raise QtoolError(f"--labels: --loss ce needs a classifier output (N x C scores), the model gives {shapes}",
                     "use --loss kd, which needs no labels")


def loss(kind: str, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
         kinds: dict[str, str], temperature: float = 1.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over the float outputs of each output's loss; `ce`: the labels' cross-entropy."""
    if kind == "ce":
        return cross_entropy(student, labels, kinds)
    terms = []
    for name, target in teacher.items():
        if not target.is_floating_point():
            continue
        if kind == "kd" and kinds.get(name) == "distribution":
            terms.append(softened_kl(student[name], target, temperature))
        else:
            terms.append(relative_mse(student[name], target))
    return torch.stack(terms).mean()


def sqnr_db(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> float:
    """Pooled SQNR of one output over the evaluation set (200 dB where they are equal)."""
    signal = sum(float((t.double() ** 2).sum()) for t in teacher)
    noise = sum(float(((s.double() - t.double()) ** 2).sum()) for s, t in zip(student, teacher))
    if noise <= 0:
        return 200.0
    return min(200.0, 10.0 * torch.log10(torch.tensor(max(signal, 1e-30) / noise)).item())
