"""Histogram statistics of intermediate tensors at nearly the cost of a float pass.

Histogram calibration needs the distribution of every quantized tensor. Taking every value
out of onnxruntime and binning it in numpy costs about 3 ns a value, and PP-OCRv4 has ~3e9 of
them over 128 lines: 5x the float pass itself, whatever kernel bins them (a compiled loop
still reads every value once, at ~1 ns). So a small subgraph placed after each large tensor's
producer reduces it inside onnxruntime, and numpy bins a stratified sample:

* the tensor is viewed as rows (`Flatten` over its trailing axes, rows of at least `MIN_ROW`
  values) and each row's max and min are reduced in onnxruntime (cheap: contiguous rows);
* of each sample's rows (the rows inside one index of the tensor's first dim), those holding
  the largest row maxima and the smallest row minima (`TopK`, 1 row in `TAIL_DIV` + 1 each)
  leave the session whole: every value of the sample beyond the smallest selected maximum (or
  the largest selected minimum) is in them, so the tails, outliers included, are counted
  exactly, and so are the tensor's min and max. Chosen per sample, not per run, they do not
  depend on which samples share an onnxruntime run: a batch run whole or in pieces, or cut
  into other batches, gives the same histograms bin for bin;
* of the other rows, every `stride`-th value of the flattened tensor leaves (`Slice` with
  steps), counted `stride` times. The values are picked by their index in the stream of all
  the tensor's values over every batch (the start offset is an input, kept here per tensor),
  so the sample does not depend on how the data is cut into batches. It estimates the bulk of
  the distribution without bias (stratified sampling: exact tails + a uniform sample of the rest).
  The stride is made coprime with the row length (`coprime_stride`): a stride that divides it
  picks the same positions of every row, so a transformer's outlier channels were never (or
  always) sampled (PP-OCRv4 rec, rows of 64-480 channels, stride 16: percentile ranges 5.8%
  narrower than with every value, simulated SQNR 13.2 -> 10.3 dB).

Tensors of fewer than `SMALL` values per sample, or of unknown rank, leave whole (exact).
A batch whose selected values hold a NaN or an infinity is taken whole for that tensor, so
non-finite values are skipped exactly as everywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.data.sources import batch_size_of, slice_batch
from qtool.ir.graph import EXTERNAL_DATA, add_initializer, opset, unique_name, value_by_name
from qtool.ir.ranges import DATA_MOVEMENT
from qtool.runtime.sessions import as_feeds, keep_source, make_session, with_taps
from qtool.runtime.stats_rows import MIN_EXACT, TAIL_DIV, Chain, tail_rows

SMALL = 1 << 16  # values per sample below which a tensor leaves whole
DYNAMIC_DIM = 64  # a dim of unknown size (a sequence length) counts as this many when sizing a tensor
MIN_ROW = 64  # values per row at least (trailing axes are joined until their product reaches it)
STRIDE = 16  # every STRIDE-th value of the other rows is sampled (64: PP-OCRv4 lost 3.7 dB against the reference)
RUN_BYTES = 128 << 20  # tapped values of one onnxruntime run, at most (a power of two of samples, at least 1)
_MIN_OPSET = 11  # TopK with `largest`, Slice with steps


@dataclass(frozen=True)
class SampledTap:
    """The outputs (and the offset input) of one tensor's statistics subgraph."""

    tensor: str
    stride: int
    shape: str  # [rows, row length] of the flattened view
    hi_rows: str  # the rows with the largest maxima, [k, L], and their indices
    hi_index: str
    lo_rows: str
    lo_index: str
    sample: str  # every stride-th value from `offset` on
    offset: str  # input: where this batch's sample starts


@dataclass
class TensorBatch:
    """One tensor in one batch: values counted once (`exact`) and a sample counted `weight` times."""

    exact: np.ndarray
    sample: np.ndarray
    weight: int


def same_values(model: ir.Model, names) -> dict[str, str]:
    """name -> an earlier name in `names` whose tensor holds exactly the same values (through
    Reshape, Transpose, Squeeze...: qtool.ir.ranges.DATA_MOVEMENT), so one histogram serves both."""
    wanted, found = set(names), {}
    origin: dict[str, str] = {}  # any tensor -> the named tensor its values come from
    for node in model.graph:
        data = node.inputs[0] if node.inputs else None
        if node.op_type not in DATA_MOVEMENT or data is None or len(node.outputs) != 1:
            continue
        root = origin.get(data.name, data.name if data.name in wanted else None)
        if root is not None:
            origin[node.outputs[0].name] = root
            if node.outputs[0].name in wanted:
                found[node.outputs[0].name] = root
    return found


def _row_axis(value: ir.Value) -> int | None:
    """The Flatten axis whose rows hold at least MIN_ROW values (a dynamic dim counts as
    DYNAMIC_DIM when sizing the tensor, as large when sizing a row),
    -1 for a tensor of unknown rank (rows along its last axis, whatever it is), None when the
    tensor should leave whole (small, of rank < 2, or not float32)."""
    if value.dtype not in (ir.DataType.FLOAT, None):
        return None
    if value.shape is None:
        return -1
    if len(value.shape) < 2:
        return None
    dims = [d if isinstance(d, int) else None for d in value.shape]
    if int(np.prod([DYNAMIC_DIM if d is None else d for d in dims[1:]])) < SMALL:
        return None
    row, axis = 1, len(dims)
    while axis > 1 and row < MIN_ROW:
        axis -= 1
        if dims[axis] is None:
            return axis
        row *= dims[axis]
    return axis


def coprime_stride(stride: int, length: int | None) -> int:
    """The smallest stride >= `stride` that shares no factor with the row length (a prime >=
    `stride` when the length is not known until run time)."""
    if length is None:
        length = 2 * 3 * 5 * 7 * 11 * 13  # (a prime above 13 comes out)
    while math.gcd(stride, length) != 1:
        stride += 1
    return stride


def _row_length(value: ir.Value, axis: int) -> int | None:
    dims = [] if value.shape is None or axis < 0 else list(value.shape)[axis:]
    return math.prod(dims) if dims and all(isinstance(d, int) for d in dims) else None


def with_sampled_taps(model: ir.Model, names: list[str], stride: int = STRIDE
                      ) -> tuple[ir.Model, dict[str, SampledTap], list[str]]:
    """A copy of `model` with a statistics subgraph after each large tensor of `names`.

    Returns (model, tensor -> SampledTap, the tensors that leave whole as plain outputs)."""
    values = value_by_name(model)
    axes = {name: _row_axis(values[name]) for name in names} if opset(model) >= _MIN_OPSET else {}
    whole = [name for name in names if axes.get(name) is None]
    tapped = _copy(model)
    values = value_by_name(tapped)
    tapped.graph.outputs.extend(_new_outputs(tapped, [values[name] for name in whole]))
    const = {key: add_initializer(tapped, f"qtool_stats_{key}", np.asarray(array, np.int64)) for key, array in
             (("one", [1]), ("flat", [-1]), ("end", [np.iinfo(np.int64).max]), ("axis0", [0]), ("axis1", [1]),
              ("column", [-1, 1]), ("scalar", np.zeros(0, np.int64)), ("zero", 0), ("unit", 1))}
    const.update({key: add_initializer(tapped, f"qtool_stats_{key}", np.asarray(array, np.float32)) for key, array in
                  (("div", [TAIL_DIV]), ("exact", [MIN_EXACT]), ("fone", [1.0]), ("fzero", [0.0]))})
    axes_as_input = opset(tapped) >= 18
    taps = {}
    for name, axis in axes.items():
        if axis is None:
            continue
        x = values[name]
        step = coprime_stride(stride, _row_length(x, axis))
        if f"stride{step}" not in const:
            const[f"stride{step}"] = add_initializer(tapped, f"qtool_stats_stride{step}", np.asarray([step], np.int64))
        chain = Chain(tapped, x.producer(), name)
        if axis > 0:
            x2 = chain.add("Flatten", [x], {"axis": axis})
        else:  # unknown rank: [-1, last dim] (a scalar is unsqueezed first, so it has a last dim)
            dims = chain.add("Shape", [chain.add("Unsqueeze", [x, const["axis0"]] if axes_as_input or
                                                 opset(tapped) >= 13 else [x], {} if opset(tapped) >= 13
                                                 else {"axes": [0]})], out_type=ir.DataType.INT64)
            last = chain.add("Slice", [dims, const["flat"], const["end"]], out_type=ir.DataType.INT64)
            x2 = chain.add("Reshape", [x, chain.add("Concat", [const["flat"], last], {"axis": 0},
                                                    out_type=ir.DataType.INT64)])
        shape = chain.add("Shape", [x2], out_type=ir.DataType.INT64)
        reduce = ({"keepdims": 0}, [const["axis1"]]) if axes_as_input else ({"keepdims": 0, "axes": [1]}, [])
        row_max = chain.add("ReduceMax", [x2, *reduce[1]], reduce[0])
        row_min = chain.add("ReduceMin", [x2, *reduce[1]], reduce[0])
        hi_index, lo_index = tail_rows(chain, const, x, axis, shape, row_max, row_min)
        hi_rows = chain.add("Gather", [x2, hi_index], {"axis": 0})
        lo_rows = chain.add("Gather", [x2, lo_index], {"axis": 0})
        offset = ir.Value(name=unique_name(tapped, f"{name}_stats_offset"), type=ir.TensorType(ir.DataType.INT64),
                          shape=ir.Shape([1]))
        tapped.graph.inputs.append(offset)
        flat = chain.add("Reshape", [x2, const["flat"]])
        sample = chain.add("Slice", [flat, offset, const["end"], const["axis0"], const[f"stride{step}"]])
        outputs = (shape, hi_rows, hi_index, lo_rows, lo_index, sample)
        tapped.graph.outputs.extend(outputs)
        taps[name] = SampledTap(name, step, *(v.name for v in outputs), offset.name)
    return tapped, taps, whole


def _copy(model: ir.Model) -> ir.Model:
    """A copy to add the statistics nodes to. onnx_ir's clone shares the weight tensors with the
    original (nothing here changes a weight; the nodes and values are new) and costs a fraction
    of qtool.ir.graph.clone's protobuf round trip (EfficientNet-Lite0: 0.03 s against 0.11 s)."""
    copy = keep_source(model.clone(), model)
    if model.meta.get(EXTERNAL_DATA):  # (add_initializer spills large arrays of such a model)
        copy.meta[EXTERNAL_DATA] = True
    return copy


def _new_outputs(model: ir.Model, values: list[ir.Value]) -> list[ir.Value]:
    """`values` not yet among the graph outputs, each once, typed (a graph output needs a type)."""
    present, new = {v.name for v in model.graph.outputs}, []
    for value in values:
        if value.name not in present:
            if value.type is None:
                value.dtype = ir.DataType.FLOAT
            present.add(value.name)
            new.append(value)
    return new


class SampledStats:
    """One onnxruntime session giving, per batch, each tensor's `TensorBatch` (see module doc).

    A batch runs in pieces of at most `run_samples` samples (RUN_BYTES of tapped values a run):
    onnxruntime's CPU layout pass (NCHWc) appends the reorders that take a tapped tensor back to
    NCHW after every other node, and the priority-based order then runs them last, so every
    tapped tensor of a run stays alive until its end (EfficientNet-Lite0 at 16 samples a run:
    1.4 GB against 0.4 GB for the float pass; at 4 a run: about 0.55 GB, in the same time)."""

    def __init__(self, model: ir.Model, names: list[str], stride: int = STRIDE) -> None:
        self.model, self.names = model, list(names)
        tapped, self.taps, self.whole = with_sampled_taps(model, self.names, stride)
        self.session = make_session(tapped)
        self.fetch = self.whole + [out for tap in self.taps.values() for out in
                                   (tap.shape, tap.hi_rows, tap.hi_index, tap.lo_rows, tap.lo_index, tap.sample)]
        self.seen = {name: 0 for name in self.taps}  # values of each sampled tensor in earlier batches
        self.full_session = None
        self.run_samples: int | None = None  # set by the first run, of one sample, from the values it gave

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, TensorBatch]:
        """The batch's TensorBatches (its pieces joined; `pieces` gives them without the copy)."""
        parts = list(self.pieces(feeds))
        if len(parts) == 1:
            return parts[0]
        return {name: TensorBatch(np.concatenate([p[name].exact.ravel() for p in parts]),
                                  np.concatenate([p[name].sample.ravel() for p in parts]),
                                  max(p[name].weight for p in parts))  # (a piece taken whole has no sample)
                for name in parts[0]}

    def pieces(self, feeds: dict[str, np.ndarray]) -> Iterator[dict[str, TensorBatch]]:
        """The TensorBatches of each run of the batch (even pieces: 16 samples at 5 a run go as 4 x 4)."""
        count = batch_size_of(feeds)
        if self.run_samples is None:  # (shapes are often known only at run time)
            first = self._run(slice_batch(feeds, 0, 1))
            values = sum(part.exact.size + part.sample.size * part.weight for part in first.values())
            self.run_samples = _power_of_two(RUN_BYTES // max(4 * values, 1))
            yield first
            if count == 1:
                return
            feeds, count = slice_batch(feeds, 1, count), count - 1
        runs = -(-count // self.run_samples)
        if runs <= 1:
            yield self._run(feeds)
            return
        size = -(-count // runs)
        for start in range(0, count, size):
            yield self._run(slice_batch(feeds, start, start + size))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, TensorBatch]:
        offsets = {tap.offset: np.array([-self.seen[name] % tap.stride], np.int64) for name, tap in self.taps.items()}
        feeds = as_feeds(self.session, feeds)
        outputs = dict(zip(self.fetch, self.session.run(self.fetch, {**feeds, **offsets})))
        # a 0-d tensor (a scalar computed in the graph, e.g. ViT attention scale) is one value
        result = {name: TensorBatch(np.atleast_1d(outputs[name]), np.atleast_1d(outputs[name])[:0], 1)
                  for name in self.whole}
        redo = []
        for name, tap in self.taps.items():
            rows, length = (int(v) for v in outputs[tap.shape])
            start = int(offsets[tap.offset][0])
            self.seen[name] += rows * length
            part = _split(outputs, tap, rows, length, start)
            if part is None:
                redo.append(name)
            else:
                result[name] = part
        if redo:  # NaN/inf among the selected values: this tensor is taken whole for this batch
            if self.full_session is None:
                self.full_session = make_session(with_taps(self.model, [n for n in self.taps]))
            whole = dict(zip(redo, self.full_session.run(redo, feeds)))
            result.update({name: TensorBatch(whole[name], whole[name][:0], 1) for name in redo})
        return result


def samples_per_run(model: ir.Model, names: list[str]) -> int:
    """How many samples one run may hold so that the tensors `names` add up to at most RUN_BYTES
    (a power of two, at least 1), sized from the model's shapes: a dim not known counts as
    DYNAMIC_DIM, a tensor of unknown rank as nothing (it cannot be sized before it runs). For a
    session whose taps reduce their tensors (min-max ranges): onnxruntime keeps each tapped
    tensor's NCHWc reorder alive to the end of the run, so the run's peak grows with its samples
    (EfficientNet-Lite0 min-max in runs of 16: 1.4 GB, of 2: 0.4 GB, the float pass 0.4 GB)."""
    values = value_by_name(model)
    total = 0
    for name in names:
        value = values.get(name)
        if value is None or value.shape is None or len(value.shape) == 0:
            continue
        total += math.prod(d if isinstance(d, int) else DYNAMIC_DIM for d in list(value.shape)[1:])
    return _power_of_two(RUN_BYTES // max(4 * total, 1))


def _power_of_two(n: int) -> int:
    """The largest power of two <= n (1 for n < 1): batches of 2^k samples then split evenly."""
    return 1 << max(0, int(n).bit_length() - 1)


def _split(outputs: dict[str, np.ndarray], tap: SampledTap, rows: int, length: int, start: int
           ) -> TensorBatch | None:
    """The exact rows (each once) and the sampled values outside them; None if non-finite.

    Sample j is value start + stride * j of the flat tensor, so the samples inside row r are
    j in [ceil((r L - start) / stride), ceil(((r + 1) L - start) / stride)): only those of the
    few exact rows are looked at (a mask over the whole sample from each value's row cost more
    than binning it)."""
    hi_index, lo_index = outputs[tap.hi_index], outputs[tap.lo_index]
    hi_rows, lo_rows, sample = outputs[tap.hi_rows], outputs[tap.lo_rows], outputs[tap.sample]
    if not (np.isfinite(hi_rows).all() and np.isfinite(lo_rows).all() and np.isfinite(sample).all()):
        return None
    in_hi = np.zeros(rows, bool)
    in_hi[hi_index] = True
    fresh = ~in_hi[lo_index]  # a row among both the largest maxima and the smallest minima counts once
    exact = np.concatenate([hi_rows.ravel(), lo_rows[fresh].ravel()])
    selected = np.concatenate([hi_index.ravel(), lo_index[fresh].ravel()]).astype(np.int64)
    first = -((start - selected * length) // tap.stride)  # ceil((r L - start) / stride)
    last = -((start - (selected + 1) * length) // tap.stride)
    first, last = np.clip(first, 0, sample.size), np.clip(last, 0, sample.size)
    counts = last - first
    if not counts.any():
        return TensorBatch(exact, sample, tap.stride)
    # the sample positions inside the selected rows: each row's [first, last) run, concatenated
    ends = np.cumsum(counts)
    inside = np.arange(ends[-1], dtype=np.int64) + np.repeat(first - (ends - counts), counts)
    keep = np.ones(sample.size, bool)
    keep[inside] = False
    return TensorBatch(exact, sample[keep], tap.stride)
