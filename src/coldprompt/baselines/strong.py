"""The learned baselines of the side-by-side benchmark, built with one seed and one training budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coldprompt.baselines.als import ALSRecommender
from coldprompt.baselines.ease import EASE_LAMBDAS, EASERecommender
from coldprompt.baselines.melu import MeLURecommender
from coldprompt.baselines.sasrec import SASRecRecommender


def strong_recommenders(
    seed: int = 0, budget_s: float = 120.0, ease_lambdas: Sequence[float] | None = None, ease_float32: bool = False
) -> list:
    """Return EASE, ALS, SASRec and MeLU with their default grids; ``budget_s`` bounds each neural fit.

    EASE and ALS have no time budget, because their cost is set by the size of their grids. ``ease_lambdas``
    replaces EASE's default grid, for catalogues where each inverse takes minutes. ALS needs the ``implicit``
    package at fit time.
    """
    dtype = np.float32 if ease_float32 else np.float64
    return [
        EASERecommender(lambdas=ease_lambdas or EASE_LAMBDAS, dtype=dtype),
        ALSRecommender(seed=seed),
        SASRecRecommender(budget_s=budget_s, seed=seed),
        MeLURecommender(budget_s=budget_s, seed=seed),
    ]
