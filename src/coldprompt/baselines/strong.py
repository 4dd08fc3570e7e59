"""The learned baselines of the side-by-side benchmark, built with one seed and one training budget."""

from __future__ import annotations

from coldprompt.baselines.als import ALSRecommender
from coldprompt.baselines.ease import EASERecommender
from coldprompt.baselines.melu import MeLURecommender
from coldprompt.baselines.sasrec import SASRecRecommender


def strong_recommenders(seed: int = 0, budget_s: float = 120.0) -> list:
    """Return EASE, ALS, SASRec and MeLU with their default grids; ``budget_s`` bounds each neural fit.

    EASE and ALS have no time budget, because their cost is set by the size of their grids. ALS needs the
    ``implicit`` package at fit time.
    """
    return [
        EASERecommender(),
        ALSRecommender(seed=seed),
        SASRecRecommender(budget_s=budget_s, seed=seed),
        MeLURecommender(budget_s=budget_s, seed=seed),
    ]
