"""The pair in and out of training: BatchNorm folded first (white paper 5.2.1), and the trained
weights and quantizer ranges written back as a pair that `simulate` and `export` take unchanged.

Folding changes the weights the param encodings were computed on, so those are recomputed from
the folded weights (min-max, same bit-width, symmetry and axis: how calibrate makes weight
encodings); activation encodings of tensors the fold removed (a Conv output before its BN) go
with them, and the BN output, whose name the layer takes over, keeps its encoding.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.graph import clone, set_initializer, value_by_name
from qtool.quant.encoding import Encoding, QuantSpec, encode_tensor


def fold_for_training(model: ir.Model, encodings: EncodingSet) -> tuple[ir.Model, EncodingSet, list[str]]:
    """(the model with its BatchNorms folded, encodings that fit it, a note per change)."""
    from qtool.steps.fold import fold_batch_norms

    if not any(node.op_type == "BatchNormalization" for node in model.graph):
        return model, encodings, []
    result = fold_batch_norms(model)
    if not result.folded:
        return model, encodings, []
    folded = result.model
    values = value_by_name(folded)
    before = {name: v.const_value.numpy() for name, v in value_by_name(model).items() if v.const_value is not None}
    params, recomputed = {}, 0
    for name, enc in encodings.params.items():
        value = values.get(name)
        if value is None or value.const_value is None:
            continue
        array = value.const_value.numpy()
        if name in before and before[name].shape == array.shape and np.array_equal(before[name], array):
            params[name] = enc
        else:
            params[name], recomputed = _reencoded(array, enc), recomputed + 1
    activations = {name: enc for name, enc in encodings.activations.items() if name in values}
    dropped = len(encodings.activations) - len(activations)
    notes = [f"folded {len(result.folded)} BatchNorm(s) first; {recomputed} weight encoding(s) recomputed "
             f"from the folded weights, {dropped} activation encoding(s) of removed tensors dropped"]
    return folded, EncodingSet(activations, params, dict(encodings.quantizer_args), list(encodings.excluded)), notes


def _reencoded(weights: np.ndarray, enc: Encoding) -> Encoding:
    if enc.is_float or (enc.dtype == "int" and enc.bw >= 32):
        return enc
    unsigned = enc.symmetric and bool(np.all(enc.offset == 0))
    spec = QuantSpec(enc.bw, enc.dtype, enc.symmetric, enc.strict, unsigned_symmetric=unsigned, axis=enc.axis)
    return encode_tensor(weights, spec).with_frozen(enc.frozen)


def trained_pair(model: ir.Model, encodings: EncodingSet, student) -> tuple[ir.Model, EncodingSet]:
    """The float model with the student's weights and the encodings its quantizers hold now."""
    out = clone(model)
    values = value_by_name(out)
    for name, weight in student.named_initializers().items():
        set_initializer(out, values[name], weight.detach().cpu().numpy().astype(np.float32))
    learned = {q.tensor_name: q.encoding() for q in student.quantizers.values()}
    return out, EncodingSet({n: learned.get(n, e) for n, e in encodings.activations.items()},
                            {n: learned.get(n, e) for n, e in encodings.params.items()},
                            dict(encodings.quantizer_args), list(encodings.excluded))
