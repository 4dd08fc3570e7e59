"""The backbone without a soft prompt or any training: text similarity between a user's items and the catalogue.

Every item is the backbone's mean-pooled hidden state of its text ("Title (Year), genres"), the same cached
encodings the soft-prompt model reads, standardised per dimension and scaled to unit length. A user with K >= 1
support items is the mean of their items' vectors; at K = 0 the user is the encoding of their profile sentence
where the data set has profiles. Scores are cosine similarities. Nothing is fit on interactions, so this
measures what the frozen backbone's encodings carry about items before any recommendation training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from coldprompt.data.dataset import InteractionData
from coldprompt.evaluation.protocol import DEFAULT_KS, ScoringBatch, UserSplit


class ZeroShotTextRecommender:
    """Cosine similarity of backbone text encodings; ``backbone`` is a :class:`coldprompt.llm.backbone.Backbone`.

    At K = 0 without a profile every item scores 0, so the evaluation's pessimistic ranks give the target the
    last place among the ties.
    """

    name = "LLM zero-shot (text similarity, no training)"

    def __init__(self, backbone, layer: int | None = 15):
        self.backbone = backbone
        self.layer = layer
        self.items: np.ndarray | None = None  # [N, H] unit vectors
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.profiles: list[str] | None = None

    def fit(self, data: InteractionData, split: UserSplit, ks: Sequence[int] = DEFAULT_KS) -> None:
        """Encode the catalogue (read from the encoding cache when present); no interaction is used."""
        from coldprompt.llm.backbone import encode_catalogue

        encodings = encode_catalogue(self.backbone, data, self.layer)
        if self.layer is not None and self.layer > self.backbone.num_layers:
            self.layer = None  # profiles are encoded like the items: at the last layer
        self.mean = encodings.mean(dim=0, keepdim=True)
        self.std = encodings.std(dim=0, keepdim=True).clamp_min(1e-6)
        self.items = self._unit(encodings)
        self.profiles = data.user_profiles

    def _unit(self, encodings: torch.Tensor) -> np.ndarray:
        standardised = ((encodings - self.mean) / self.std).double().numpy()
        return standardised / np.maximum(np.linalg.norm(standardised, axis=1, keepdims=True), 1e-12)

    def score(self, batch: ScoringBatch) -> np.ndarray:
        if self.items is None:
            raise RuntimeError("call fit() before score()")
        users = np.zeros((len(batch.users), self.items.shape[1]))
        if batch.k > 0:
            for row, support in enumerate(batch.supports):
                users[row] = self.items[np.asarray(support, dtype=np.int64)].mean(axis=0)
        elif self.profiles is not None:
            from coldprompt.llm.backbone import encode_texts

            sentences = [self.profiles[u] or "" for u in batch.users]
            known = [row for row, sentence in enumerate(sentences) if sentence]
            if known:
                encoded = encode_texts(self.backbone, [sentences[row] for row in known], layer=self.layer,
                                       bf16_autocast=self.backbone.dtype == torch.bfloat16)
                users[known] = self._unit(encoded)
        return users @ self.items.T
