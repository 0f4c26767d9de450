"""One encoding per tie: tensors that share one quantizer in aimet-onnx (plan.ties, aimet_ties.py).

aimet ties a Concat's inputs to its output and a Relu's or AveragePool's output to its input by
placing *one* QcQuantizeOp object at several tensors: during calibration every tensor updates the
same statistics, so the shared encoding covers the union of their ranges, and ``sim.export``
writes the same encoding under each name. Calibrate observes each member on its own; this makes
their encodings one: the union of the members' ranges (exact for min-max; for histogram schemes,
the union of what each member's scheme kept), with a one-sided ``encoding_constraints`` end
(HTP's Relu ``{"min": 0}``) kept. Loading such a file into aimet's sim (which loads every name into
the one shared quantizer) therefore gives the sim exactly the encodings of qtool's QDQ model.
"""

from __future__ import annotations

import numpy as np

from qtool.encodings.encoding_set import EncodingSet
from qtool.plan.plan_types import QuantPlan
from qtool.quant import compute_encoding


def tie_encodings(plan: QuantPlan, encodings: EncodingSet) -> None:
    """Give every tie of `plan` one encoding, in place; frozen or float members leave it alone."""
    for group in plan.ties:
        members = [n for n in group if n in encodings.activations and n in plan.activations]
        found = [encodings.activations[n] for n in members]
        if len(found) < 2 or any(e.frozen or e.is_float or e.per_channel for e in found):
            continue
        low = min(float(np.min(e.min)) for e in found)
        high = max(float(np.max(e.max)) for e in found)
        for name in members:
            fixed = plan.activations[name].fixed_range
            if fixed is not None and (fixed[0] is None) != (fixed[1] is None):  # one end fixed, the other calibrated
                low, high = (fixed[0], high) if fixed[0] is not None else (low, fixed[1])
        shared = compute_encoding(low, max(low, high), plan.activations[members[0]].spec)
        for name in members:
            encodings.activations[name] = shared
