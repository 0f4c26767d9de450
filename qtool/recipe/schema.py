"""The recipe's top-level shape (pydantic), checked before anything runs.

Step options are not described here: they are the CLI commands' own parameters (steps.py).
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, StrictBool, StrictFloat, StrictInt, StrictStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no option means NaN or infinity


class DataSpec(_Strict):
    """Calibration and evaluation sets (paths relative to the recipe's folder, or 'random')."""

    calibration: str | None = None
    evaluation: str | None = None
    labels: str | None = None
    samples: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    preprocess: str | None = None
    seed: int | None = None
    input_shapes: dict[str, StrictStr | list[PositiveInt]] | None = Field(
        None, description="input name -> shape, e.g. {x: 1x3x320x320}: the commands' --input-shape")
    vocab_size: PositiveInt | None = Field(None, description="--data random: integer ids below this")


class Expect(_Strict):
    """The quality gate, checked against the last simulate step (every float output)."""

    min_sqnr_db: float | None = Field(None, description="dB, pooled over each output")
    min_channel_sqnr_db: float | None = Field(None, description="dB, the worst channel of each output")
    max_accuracy_drop: float | None = Field(None, description="percentage points, float minus quantized")
    min_accuracy: float | None = Field(None, description="percent")
    min_top1_agreement: float | None = Field(None, description="percent")


Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]


class RecipeSchema(_Strict):
    description: str | None = None
    model: str
    output: str | None = None  # default: <model's folder>/<model stem>-<recipe stem> (validate.py)
    config: str | dict[str, Any] | None = None
    data: DataSpec | None = None
    vars: dict[str, Scalar] = {}
    steps: list[dict[str, dict[str, Any] | None]] = Field(min_length=1)
    expect: Expect | None = None


TOP_LEVEL_KEYS = tuple(RecipeSchema.model_fields)
