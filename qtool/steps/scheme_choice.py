"""`calibrate --scheme auto`: keep the activation range-setting scheme that serves this model best.

No scheme wins everywhere (measured on our real models: sqnr on the PP-OCR classifier and the
PP-OCRv4 recogniser, mse on EfficientNet-Lite0 after CLE, minmax on the PP-OCRv4 detector), and
which one wins depends on how a tensor's clipping and rounding noise travel to the outputs,
which a per-tensor criterion cannot see. One histogram pass gives every scheme's encodings
(`HistogramObserver.compute_as`); each candidate is then simulated on the first calibration
samples, which are held out of the histograms the candidates come from (judged on their own
data, schemes that clip tightly look best and then clip unseen data: on the PP-OCR classifier,
mse scored 53 dB in-sample and 31 dB held out, against sqnr's 49 and 36), and compared with the
float model:

* outputs made by Softmax / LogSoftmax are distributions over classes, and what matters is the
  class they pick: the score is the share of positions whose argmax agrees with float's (per
  time step for a CTC recogniser). Output SQNR of probabilities misleads there (PP-OCRv4
  per-channel: minmax has the best SQNR, 12.4 dB against 10.1, and 1.5 points fewer characters);
* other outputs score their mean SQNR, which also breaks ties between equal agreements.

The choice is per model, not per tensor: four candidates cannot overfit a few dozen samples,
and per-tensor choices are what `qtool analyze` is for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.quant.encoding import Encoding
from qtool.quant.observers import SCHEMES
from qtool.steps.simulate import simulate

Batches = Callable[[], Iterable[dict[str, np.ndarray]]]


def first_samples(batches: Iterable[dict[str, np.ndarray]], samples: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches cut to their first `samples` samples in all (streamed, nothing kept)."""
    left = samples
    for batch in batches:
        if left <= 0:
            return
        count = len(next(iter(batch.values())))
        yield batch if count <= left else {name: array[:left] for name, array in batch.items()}
        left -= count


def skip_samples(batches: Iterable[dict[str, np.ndarray]], samples: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches without their first `samples` samples in all (the rest of first_samples)."""
    left = samples
    for batch in batches:
        count = len(next(iter(batch.values())))
        if left >= count:
            left -= count
            continue
        yield batch if left <= 0 else {name: array[left:] for name, array in batch.items()}
        left = 0


def choose_scheme(model: ir.Model, base: EncodingSet, candidates: dict[str, dict[str, Encoding]],
                  batches: Batches, samples: int) -> tuple[str, dict[str, dict[str, float]]]:
    """(the chosen scheme, each candidate's scores: mean decision agreement where the model has
    Softmax outputs, and mean output SQNR in dB). `base` holds the encodings all candidates share
    (parameters, fixed and frozen activations); `candidates` maps a scheme to its observed
    activations' encodings. Ties keep the earlier scheme of SCHEMES."""
    decisions = decision_outputs(model)
    scores: dict[str, tuple[float, float]] = {}
    for scheme, activations in candidates.items():
        encodings = EncodingSet({**base.activations, **activations}, dict(base.params))
        report = simulate(model, encodings, first_samples(batches(), samples), decisions=decisions).report
        agreement = [row["decision_agreement"] for row in report.values() if "decision_agreement" in row]
        sqnr = [row["sqnr_db"] for row in report.values()]
        scores[scheme] = (float(np.mean(agreement)) if agreement else 0.0, float(np.mean(sqnr)) if sqnr else 0.0)
    order = {scheme: i for i, scheme in enumerate(SCHEMES)}
    chosen = max(scores, key=lambda s: (*scores[s], -order[s]))
    return chosen, {scheme: _describe(score, bool(decisions)) for scheme, score in scores.items()}


def _describe(score: tuple[float, float], by_decisions: bool) -> dict[str, float]:
    return {"decision_agreement": round(score[0], 6), "sqnr_db": round(score[1], 3)} if by_decisions \
        else {"sqnr_db": round(score[1], 3)}


def decision_outputs(model: ir.Model) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Graph outputs made by Softmax / LogSoftmax, each with the argmax decisions it makes: along
    its axis (opset >= 13), or over the dims from its axis on, flattened (older opsets)."""
    opset = model.opset_imports.get("", 1)
    found = {}
    for output in model.graph.outputs:
        node = output.producer()
        while node is not None and node.op_type == "Identity":  # Paddle exports end in a 'scale' Identity
            node = node.inputs[0].producer()
        if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
            continue
        attr = node.attributes.get("axis")
        axis = attr.as_int() if attr is not None else (-1 if opset >= 13 else 1)
        found[output.name] = functools.partial(_argmax_along if opset >= 13 else _argmax_from, axis=axis)
    return found


def _argmax_along(x: np.ndarray, axis: int) -> np.ndarray:
    return np.argmax(x, axis=axis)


def _argmax_from(x: np.ndarray, axis: int) -> np.ndarray:
    axis = axis % x.ndim
    return np.argmax(x.reshape(*x.shape[:axis], -1), axis=-1)
