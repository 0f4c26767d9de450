"""The rows of a tapped tensor that leave the statistics session whole (runtime/stats_graph.py):
per sample, the rows with the largest maxima and those with the smallest minima, as ONNX nodes.

Chosen per sample (the rows inside one index of the tensor's first dim), not per onnxruntime
run, they do not depend on which samples share a run, so the statistics are the same whatever
size the runs or the batches have.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import add_initializer, unique_name

TAIL_DIV = 256  # of each sample's rows, 1 in TAIL_DIV (+1) by largest max, and as many by smallest min, leave whole...
MIN_EXACT = 1024  # ...and at least this many values' worth of rows each (a small tensor's tail is a few rows)
FLOAT = int(ir.DataType.FLOAT)


def tail_rows(chain: Chain, const: dict, x: ir.Value, axis: int, shape: ir.Value, row_max: ir.Value,
               row_min: ir.Value) -> tuple[ir.Value, ir.Value]:
    """The indices (into the run's rows) of the rows that leave whole: in each group of rows
    (`_groups`: one sample's), the k with the largest maxima and the k with the smallest minima,
    k = min(R, max(R // TAIL_DIV, MIN_EXACT // L) + 1) for R rows of L values a group.

    Chosen per sample, the rows do not depend on which other samples share the run, so a batch
    cut into runs of any size (or into batches of any size) gives the same statistics; chosen
    per run, they changed with the run size. When R and L are known from the model, k and R are
    constants (fewer nodes: a transformer's runs are small, and each node costs microseconds)."""
    per_group, length = _static_rows(x, axis)
    if per_group:
        k = _const(chain.model, const, "k", [min(per_group, max(per_group // TAIL_DIV, MIN_EXACT // length) + 1)])
        by_group = _const(chain.model, const, "rows", [-1, per_group])
        step = _const(chain.model, const, "step", per_group, scalar=True)
        count = chain.add("Size", [row_max], out_type=ir.DataType.INT64)
        first = chain.add("Reshape", [chain.add("Range", [const["zero"], count, step], out_type=ir.DataType.INT64),
                                      const["column"]], out_type=ir.DataType.INT64)  # [G, 1]: group g's row 0
        return _top_rows(chain, const, row_max, row_min, by_group, k, first)
    groups = _groups(chain, const, x, axis)  # [G] int64
    groups_f = chain.add("Cast", [groups], {"to": FLOAT})
    rows = chain.add("Cast", [chain.add("Slice", [shape, const["axis0"], const["one"]], out_type=ir.DataType.INT64)],
                     {"to": FLOAT})
    length = chain.add("Cast", [chain.add("Slice", [shape, const["one"], const["end"]], out_type=ir.DataType.INT64)],
                       {"to": FLOAT})
    per_group_f = chain.add("Div", [rows, chain.add("Max", [groups_f, const["fone"]])])  # (no group: no row)
    per_group = chain.add("Cast", [per_group_f], {"to": int(ir.DataType.INT64)}, out_type=ir.DataType.INT64)
    # in float: Max and Min take integers only from opset 12 on (exact below 2^24 rows)
    share = chain.add("Max", [chain.add("Div", [per_group_f, const["div"]]),
                              chain.add("Div", [const["exact"], chain.add("Max", [length, const["fone"]])])])
    k = chain.add("Cast", [chain.add("Min", [chain.add("Add", [chain.add("Floor", [share]), const["fone"]]),
                                             per_group_f])], {"to": int(ir.DataType.INT64)}, out_type=ir.DataType.INT64)
    by_group = chain.add("Concat", [groups, per_group], {"axis": 0}, out_type=ir.DataType.INT64)
    first = chain.add("Reshape", [chain.add("Mul", [chain.add("Range", [const["zero"], chain.add(
        "Reshape", [groups, const["scalar"]], out_type=ir.DataType.INT64), const["unit"]], out_type=ir.DataType.INT64),
        per_group], out_type=ir.DataType.INT64), const["column"]], out_type=ir.DataType.INT64)  # [G, 1]: group g's row 0
    return _top_rows(chain, const, row_max, row_min, by_group, k, first)


def _top_rows(chain: Chain, const: dict, row_max: ir.Value, row_min: ir.Value, by_group: ir.Value, k: ir.Value,
              first: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Per group ([G, R] by `by_group`), the run-row indices of the k rows of largest max and of smallest min."""
    found = []
    for reduced, largest in ((row_max, 1), (row_min, 0)):
        index = chain.add("TopK", [chain.add("Reshape", [reduced, by_group]), k], {"axis": 1, "largest": largest},
                          outputs=2, out_type=ir.DataType.INT64)
        found.append(chain.add("Reshape", [chain.add("Add", [index, first], out_type=ir.DataType.INT64), const["flat"]],
                               out_type=ir.DataType.INT64))
    return found[0], found[1]


def _static_rows(x: ir.Value, axis: int) -> tuple[int, int]:
    """(rows a group, row length) when the model fixes both (every dim after the first known), else (0, 0)."""
    if axis <= 0 or x.shape is None:
        return 0, 0
    dims = list(x.shape)[1:]
    if not all(isinstance(d, int) for d in dims):
        return 0, 0
    per_group, length = math.prod(dims[:axis - 1]), math.prod(dims[axis - 1:])
    return (per_group, length) if per_group > 0 and length > 0 else (0, 0)


def _const(model: ir.Model, const: dict, kind: str, value, scalar: bool = False) -> ir.Value:
    """An int64 initializer shared by every tap that needs the same value."""
    array = np.asarray(value, np.int64)
    key = f"{kind}{'_'.join(map(str, array.ravel()))}{'s' if scalar else ''}"
    if key not in const:
        const[key] = add_initializer(model, f"qtool_stats_{key}", array)
    return const[key]


def _groups(chain: Chain, const: dict, x: ir.Value, axis: int) -> ir.Value:
    """How many groups of rows the run's rows fall into ([1] int64): the tensor's first dim (a
    sample each, or a sample's slices, e.g. attention heads folded into it), or 1 for a tensor
    of rank < 2 (known only at run time when axis is -1: rank unknown)."""
    dims = chain.add("Shape", [x], out_type=ir.DataType.INT64)
    if axis > 0:  # rank >= 2, the rows inside dim 0
        return chain.add("Slice", [dims, const["axis0"], const["one"]], out_type=ir.DataType.INT64)
    rank = chain.add("Cast", [chain.add("Shape", [dims], out_type=ir.DataType.INT64)], {"to": FLOAT})
    end = chain.add("Cast", [chain.add("Min", [chain.add("Max", [chain.add("Sub", [rank, const["fone"]]),
                                                                 const["fzero"]]), const["fone"]])],
                    {"to": int(ir.DataType.INT64)}, out_type=ir.DataType.INT64)  # 1 if rank >= 2 else 0
    leading = chain.add("Slice", [dims, const["axis0"], end], out_type=ir.DataType.INT64)
    return chain.add("ReduceProd", [chain.add("Concat", [leading, const["one"]], {"axis": 0}, out_type=ir.DataType.INT64)],
                     {"keepdims": 1}, out_type=ir.DataType.INT64)


class Chain:
    """Nodes inserted one after another right after a tensor's producer, so that onnxruntime
    runs them (and can free what they read) as soon as the tensor exists."""

    def __init__(self, model: ir.Model, after: ir.Node | None, base: str) -> None:
        self.model, self.after, self.base = model, after, base

    def add(self, op: str, inputs: list[ir.Value], attributes: dict | None = None, *, outputs: int = 1,
            out_type: ir.DataType = ir.DataType.FLOAT) -> ir.Value:
        outs = [ir.Value(name=unique_name(self.model, f"{self.base}_stats_{op}")) for _ in range(outputs)]
        for out in outs:
            out.dtype = ir.DataType.FLOAT
        outs[-1].dtype = out_type
        node = ir.node(op, inputs, attributes or {}, outputs=outs)
        if self.after is None:
            self.model.graph.insert_before(next(iter(self.model.graph)), node)
        else:
            self.model.graph.insert_after(self.after, node)
        self.after = node
        return outs[-1]
