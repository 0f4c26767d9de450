"""What QAT minimises, per output of the model, against the float model's own outputs.

* `kd` (the default; needs no labels): distillation from the float model. An output made by a
  Softmax is a distribution: KL(float || quantized), the soft-target loss of Hinton et al. 2015
  at temperature 1 (the model's own softmax: its logits are not an output). Any other float
  output: the mean squared error over the float output's mean square, so outputs of different
  scales weigh alike and the loss reads as a relative error (1e-2 is about 20 dB).
* `mse`: that relative squared error on every output, distributions included.

Integer outputs (argmax, lengths) carry no gradient and are left out.
"""

from __future__ import annotations

import torch

LOSSES = ("kd", "mse")
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


def loss(kind: str, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
         kinds: dict[str, str]) -> torch.Tensor:
    """The mean over the float outputs of each output's loss."""
    terms = []
    for name, target in teacher.items():
        if not target.is_floating_point():
            continue
        if kind == "kd" and kinds.get(name) == "distribution":
            terms.append(kl_divergence(student[name], target))
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
