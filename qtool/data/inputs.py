"""What a model expects on each input, as the data readers check it (`InputInfo`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InputInfo:
    """What the model expects on one input: dims are ints, or None where dynamic.

    `dim_names`: the symbolic name of each dim where the model gives one (for messages, and so
    that `--input-shape` fills a dim named 'seq' on every input that has it); `vocab`: the rows
    of the embedding table that this integer input indexes (a Gather on an initializer), for
    random token ids that the model can look up."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: np.dtype
    dim_names: tuple[str | None, ...] | None = None
    vocab: int | None = None
