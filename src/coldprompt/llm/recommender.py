"""Evaluation-time wrapper: adapt each user's prompt on their support set, then score the catalogue."""

from __future__ import annotations

import numpy as np
import torch

from coldprompt.evaluation.protocol import ScoringBatch
from coldprompt.llm.batching import ProfileTokens, make_sequence_batch
from coldprompt.llm.model import SoftPromptRecommender
from coldprompt.meta.algorithms import adapt

PROMPT_META = "meta-learned initialisation"
PROMPT_RANDOM = "random initialisation"


class SoftPromptScorer:
    """A :class:`~coldprompt.evaluation.protocol.Recommender` over a :class:`SoftPromptRecommender`.

    With ``inner_steps > 0`` and K > 0 each user's prompt takes that many gradient steps on the support loss
    (the same inner loop as in meta-training) before scoring; K = 0 always scores from the starting prompt.
    """

    def __init__(
        self,
        model: SoftPromptRecommender,
        profiles: ProfileTokens,
        name: str,
        *,
        inner_steps: int,
        start: str = PROMPT_META,
        lr_scale: float = 1.0,
        seed: int = 0,
    ):
        self.model = model
        self.profiles = profiles
        self.name = name
        self.inner_steps = inner_steps
        self.start = start
        self.lr_scale = lr_scale
        self.seed = seed

    def starting_prompts(self, users: np.ndarray) -> torch.Tensor:
        init = self.model.prompt_init.detach()
        if self.start == PROMPT_META:
            return init.unsqueeze(0).expand(len(users), *init.shape)
        # Random start at the scale of the backbone's token embeddings, seeded per user.
        scale = float(self.model.backbone.get_input_embeddings().weight.float().std())
        rows = []
        for user in users:
            generator = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(user))
            rows.append(torch.randn(init.shape, generator=generator) * scale)
        return torch.stack(rows).to(init.device)

    def adapted_prompts(self, batch: ScoringBatch, inputs) -> torch.Tensor:
        prompts = self.starting_prompts(batch.users)
        if batch.k == 0 or self.inner_steps == 0:
            return prompts
        lr = self.model.inner_lr().detach() * self.lr_scale
        with torch.enable_grad():
            support_loss = lambda p: self.model.position_losses(p, inputs, 0, inputs.lengths)  # noqa: E731
            adapted = adapt(support_loss, prompts, self.inner_steps, lr)
        return adapted.detach()

    def score(self, batch: ScoringBatch) -> np.ndarray:
        device = self.model.prompt_init.device
        inputs = make_sequence_batch(
            batch.supports, batch.support_ratings, [self.profiles.ids[u] for u in batch.users]
        ).to(device)
        with self.model.fixed_item_outputs():
            prompts = self.adapted_prompts(batch, inputs)
            with torch.no_grad():
                return self.model.user_scores(prompts, inputs).double().cpu().numpy()
