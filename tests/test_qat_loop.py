"""The QAT loop's teacher cache: the float teacher runs once per distinct training batch, later
epochs reuse its outputs, and training ends in exactly the state it reaches recomputing them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qtool[train] (torch) is not installed: QAT is an optional extra")

from qat_helpers import w4a8_block_pair  # noqa: E402

from qtool.commands.inputs import load_pair  # noqa: E402
from qtool.train.losses import output_kinds  # noqa: E402
from qtool.train.loop import TeacherCache, Trainer, TrainParams  # noqa: E402
from qtool.train.lower import LoweredModel  # noqa: E402
from qtool.train.pair import fold_for_training  # noqa: E402


class CountingTeacher(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, feeds):
        self.calls += 1
        return self.model(feeds)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qat_loop")
    w4a8_block_pair(folder, samples=16, seed=3)
    model, encodings, _ = load_pair(folder / "ptq.onnx", None)
    folded, encodings, _ = fold_for_training(model, encodings)
    data = np.load(folder / "train.npz")["input"]
    return folded, encodings, [{"input": data[i:i + 8]} for i in (0, 8)]


def _train(pair, limit: int):
    folded, encodings, batches = pair
    student = LoweredModel(folded, encodings)
    teacher = CountingTeacher(LoweredModel(folded, None))
    trainer = Trainer(student, teacher, output_kinds(folded), TrainParams(epochs=3, lr=3e-3, oscillation="off"))
    trainer.teacher_cache = TeacherCache(teacher, limit)
    result = trainer.run(lambda: (dict(b) for b in batches), batches[:1])
    return student.state_dict(), teacher.calls, trainer.teacher_cache, result


def test_the_teacher_runs_once_per_batch_and_training_is_unchanged(pair):
    cached, calls, cache, result = _train(pair, 1 << 20)
    recomputed, calls_without, _, result_without = _train(pair, 0)
    # evaluation: one teacher pass over the evaluation batch; training: 2 batches x 3 epochs
    assert calls_without == 1 + 2 * 3
    assert calls == 1 + 2 and (cache.misses, cache.hits) == (2, 4)
    assert [r.eval_sqnr_db for r in result.history] == [r.eval_sqnr_db for r in result_without.history]
    assert all(torch.equal(cached[k], recomputed[k]) for k in recomputed)


def test_batches_are_found_by_content_and_the_cache_is_bounded(pair):
    folded, _, batches = pair
    teacher = CountingTeacher(LoweredModel(folded, None))
    one_output = 8 * 10 * 4  # mobilenet_block: 10 float32 logits a sample
    cache = TeacherCache(teacher, limit=one_output)
    for batch in (batches[1], batches[0], batches[1], {"input": batches[1]["input"].copy()}, batches[0]):
        cache(batch, {"input": torch.from_numpy(batch["input"])})
    assert (cache.misses, cache.hits, cache.bytes) == (3, 2, one_output)  # the second batch did not fit
    changed = {"input": batches[1]["input"] + np.float32(1e-3)}
    assert TeacherCache.digest(changed) != TeacherCache.digest(batches[1])
