"""`qtool qat --bn-reestimate N`: batch-norm re-estimation after QAT, in qtool's folded flow.

Nagel et al. 2022 (and AIMET's QAT with unfolded BNs) re-estimate the BatchNorm statistics after
training: the running means and variances were averaged over steps whose weights (and oscillating
integers) differ from the final quantized ones, so they no longer describe the layer they follow.
Re-estimation runs training data through the final quantized model with each BN normalising by its
batch's own statistics (momentum 1) and averages them; then the BNs are folded.

qtool folds BNs before training (white paper 5.2.1, static folding): the folded bias is a trained
parameter, no running statistic can go stale, and the variance part would rescale the weights per
channel, which a per-tensor weight grid cannot absorb. What remains is the mean: the BN, re-
estimated, makes each channel of its output average its beta on the data. In the folded model that
is a bias shift, and it is what this does: for every layer whose BN was folded (the fold keeps the
BN's gamma and beta in the model's metadata, updated by equalize), each of N training batches runs
through the quantized model and, layer after layer in the graph's order (so later layers see the
earlier shifts, as a BN in train mode does), the layer's pre-quantizer output is shifted per channel
by beta minus its batch mean; the mean shift over the batches is added to the layer's bias.

It is an empirical bias correction of the trained model against the BN's own mean rather than the
float model's, so it helps when the training data is the distribution the BNs were trained on and
not otherwise: `qat` keeps it only if it raises the evaluation SQNR (like `bias-correct --validate`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir
import torch

from qtool.steps.fold import BN_STATS_KEY

LAYERS = ("Conv", "ConvTranspose", "Gemm")


def folded_layers(model: ir.Model) -> dict[str, tuple[str, np.ndarray]]:
    """Layer output tensor -> (its bias initializer, the folded BN's beta) for every layer whose
    BN was folded and that has a constant bias."""
    stats = json.loads(model.metadata_props.get(BN_STATS_KEY, "{}"))
    layers = {}
    for node in model.graph:
        out = node.outputs[0].name
        if node.op_type in LAYERS and out in stats and len(node.inputs) > 2 and node.inputs[2] is not None \
                and node.inputs[2].const_value is not None:
            layers[out] = (node.inputs[2].name, np.asarray(stats[out]["beta"], np.float32))
    return layers


def reestimate(student, layers: dict[str, tuple[str, np.ndarray]], batches: Iterable[dict[str, torch.Tensor]],
               count: int) -> dict[str, np.ndarray]:
    """Shift the biases of `layers` in `student` (in place) by the mean over `count` batches of
    beta - the channel means of the layer's quantized output; returns the shifts by layer output."""
    weights = student.named_initializers()
    layers = {name: (bias, beta) for name, (bias, beta) in layers.items() if bias in weights}
    sums = {name: np.zeros_like(beta, np.float64) for name, (_, beta) in layers.items()}
    seen = 0

    def tap(name: str, value: torch.Tensor) -> torch.Tensor:
        if name not in layers:
            return value
        beta = torch.from_numpy(layers[name][1]).to(value.device, value.dtype)
        axes = [axis for axis in range(value.dim()) if axis != 1]
        shift = beta - value.mean(dim=axes)
        sums[name] += shift.double().cpu().numpy()
        return value + shift.reshape([1, -1] + [1] * (value.dim() - 2))

    with torch.no_grad():
        for batch in batches:
            if seen == count:
                break
            student(batch, tap=tap)
            seen += 1
        shifts = {name: (total / max(seen, 1)).astype(np.float32) for name, total in sums.items()}
        for name, (bias, _) in layers.items():
            weights[bias].add_(torch.from_numpy(shifts[name]).to(weights[bias].device).reshape(weights[bias].shape))
    return shifts
