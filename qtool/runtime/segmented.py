"""Run a model piece by piece over cached activations: every node runs once per sample.

Layer-by-layer algorithms (AdaRound) need each layer's input in the model *as changed so far*:
after layer j's weights change, only the nodes after layer j see a difference. Rerunning the
whole model for every layer costs L passes (6 minutes for the 51 layers of PP-OCRv4 on 256
samples); running segment j = the nodes between layer j-1 and layer j, from the activations cached
at their boundary, costs about one pass in all.

The caller advances through stop nodes in graph order (``advance``), passing the model as it is
now (same structure, new weights); the segment is cut from that model with
``onnx_ir.convenience.extract`` (which brings along the constant-only nodes a segment needs, such
as a weight's DequantizeLinear). Activations are kept per batch, so tensors without a batch axis
(shapes) are fine; they live in RAM up to ``ram_bytes`` and in ``.npy`` files (memory-mapped)
beyond, so memory stays bounded whatever the number of samples. Values are dropped as soon as no
later node reads them.

Only explicit node inputs count as data flow (values a subgraph captures from the outer scope are
found by ``extract`` but not tracked for eviction: such models are rare among those we quantize).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import onnx_ir as ir

from qtool.runtime.sessions import make_session


class ActivationStore:
    """Per-batch arrays by name, in RAM up to a budget, spilled to memory-mapped files beyond."""

    def __init__(self, ram_bytes: int) -> None:
        self.ram_bytes, self.resident = ram_bytes, 0
        self.batches: list[dict[str, np.ndarray]] = []
        self._dir: str | None = None
        self._files = 0

    def put(self, batch: int, name: str, array: np.ndarray) -> None:
        while len(self.batches) <= batch:
            self.batches.append({})
        if self.resident + array.nbytes <= self.ram_bytes or array.ndim == 0:
            self.batches[batch][name] = array
            self.resident += array.nbytes
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="qtool-activations-")
        self._files += 1
        path = os.path.join(self._dir, f"{self._files}.npy")
        np.save(path, array)
        self.batches[batch][name] = np.load(path, mmap_mode="r")

    def get(self, batch: int, name: str) -> np.ndarray:
        return self.batches[batch][name]

    def names(self) -> set[str]:
        return set(self.batches[0]) if self.batches else set()

    def drop(self, name: str) -> None:
        for arrays in self.batches:
            array = arrays.pop(name, None)
            if isinstance(array, np.memmap):
                path = array.filename
                del array
                os.unlink(path)
            elif array is not None:
                self.resident -= array.nbytes

    def close(self) -> None:
        self.batches = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class SegmentedRunner:
    """Runs a model in segments ending at stop nodes, feeding each from the cached boundary."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]], ram_bytes: int = 2 << 30) -> None:
        self.store = ActivationStore(ram_bytes)
        self.count = 0
        for index, batch in enumerate(batches):
            for name, array in batch.items():
                self.store.put(index, name, np.ascontiguousarray(array))
            self.count = index + 1
        self.done = 0  # nodes before this position (in graph order) have run

    def advance(self, model: ir.Model, stop: str, want: str) -> Iterator[tuple[int, np.ndarray]]:
        """Run the nodes from where the last call stopped up to (not including) node ``stop`` and
        yield (batch index, value of ``want``) per batch; ``want`` must be read by a node at or
        after ``stop``. ``model`` is the current model: same graph as before, updated weights."""
        order = list(model.graph)
        position = {id(node): i for i, node in enumerate(order)}
        stop_at = next((i for i, node in enumerate(order) if node.name == stop), None)
        if stop_at is None or stop_at < self.done:
            raise ValueError(f"stop node {stop!r} is not after the nodes already run")
        dynamic = _dynamic_values(model)

        def read_later(value: ir.Value) -> bool:
            return any(position[id(user)] >= stop_at for user in value.consumers())

        outputs = [v for node in order[self.done:stop_at] for v in node.outputs
                   if v in dynamic and read_later(v)]
        if outputs:
            self._run_segment(model, outputs, dynamic)
        for name in self.store.names():
            value = dynamic.get_by_name(name)
            if value is None or not read_later(value):
                self.store.drop(name)
        self.done = stop_at
        for batch in range(self.count):
            yield batch, self.store.get(batch, want)

    def _run_segment(self, model: ir.Model, outputs: list[ir.Value], dynamic: _Values) -> None:
        cached = sorted(name for name in self.store.names() if dynamic.get_by_name(name) is not None)
        graph = ir.convenience.extract(model.graph, inputs=cached, outputs=outputs)
        for value in list(graph.inputs):
            if not value.uses():
                graph.inputs.remove(value)
            elif value.dtype is None:
                value.dtype = ir.DataType.from_numpy(self.store.get(0, value.name).dtype)
        for value in graph.outputs:
            if value.dtype is None:
                value.dtype = ir.DataType.FLOAT
        session = make_session(ir.Model(graph, ir_version=model.ir_version, functions=model.functions.values()),
                               simulate=True)
        inputs = [i.name for i in session.get_inputs()]
        names = [o.name for o in session.get_outputs()]
        for batch in range(self.count):
            results = session.run(names, {n: np.asarray(self.store.get(batch, n)) for n in inputs})
            for name, array in zip(names, results):
                self.store.put(batch, name, array)

    def close(self) -> None:
        self.store.close()


class _Values(set):
    """A set of values that can also be looked up by name."""

    def __init__(self, values: Iterable[ir.Value]) -> None:
        super().__init__(values)
        self._by_name = {v.name: v for v in self}

    def get_by_name(self, name: str) -> ir.Value | None:
        return self._by_name.get(name)


def _dynamic_values(model: ir.Model) -> _Values:
    """Values that depend on a graph input (the rest is constant: recomputed, never cached)."""
    initializers = set(model.graph.initializers)
    dynamic = {v for v in model.graph.inputs if v.name not in initializers}
    for node in model.graph:
        if any(v in dynamic for v in node.inputs if v is not None):
            dynamic.update(node.outputs)
    return _Values(dynamic)
