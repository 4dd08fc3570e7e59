"""SASRec: a causal self-attention model of the next item, trained on meta-train users' sequences.

Source: W.-C. Kang and J. McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. As in the paper:
item embeddings scaled by ``sqrt(d)`` plus learned absolute position embeddings, pre-layer-norm blocks of
causal single-head self-attention and a two-layer point-wise feed-forward network of width ``d``, dropout,
and item scores ``r_i = h_t . M_i`` from the shared item embedding matrix ``M``. Differences from the paper:

* Loss: full softmax cross-entropy over the catalogue at every position,
  ``-log softmax(h_t M^T)[s_{t+1}]``, in place of binary cross-entropy with one sampled negative.
* Learned start token: every history is fed as ``[START, s_1, s_2, ...]`` and read from the left, with
  position 0 at START, so the output at START predicts a new user's first item. This matches cold-start
  scoring, where the input is ``[START, s_1 .. s_K]``. Histories are cut into windows of ``max_length``
  inputs, and only the first window of a history begins with START.
* Right padding: causal attention means padding after a position never changes that position's output.

K = 0 is scored from START, unless onboarding popularity has the higher validation NDCG@10 at K = 0, in
which case onboarding popularity is returned (``zero_history`` records which).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from coldprompt.baselines.common import (
    ZERO_HISTORY_ONBOARDING,
    break_ties,
    choose_zero_history,
    Deadline,
    onboarding_scores,
    validation_ndcg_by_k,
)
from coldprompt.baselines.simple import OnboardingPopularityRecommender
from coldprompt.data.dataset import InteractionData
from coldprompt.evaluation.protocol import DEFAULT_KS, EvaluationUsers, ScoringBatch, UserSplit, evaluation_users

logger = logging.getLogger(__name__)

#: Token 0 is padding, item i is token i + 1, and START is token num_items + 1.
PADDING = 0


class SASRec(nn.Module):
    """The SASRec network: ``[B, L]`` tokens to ``[B, L, d]`` hidden states and ``[B, L, num_items]`` logits."""

    def __init__(self, num_items: int, max_length: int, dim: int, blocks: int, heads: int, dropout: float):
        super().__init__()
        self.num_items = num_items
        self.max_length = max_length
        self.item_embedding = nn.Embedding(num_items + 2, dim, padding_idx=PADDING)
        self.position_embedding = nn.Embedding(max_length, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=dim, dropout=dropout, activation="relu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        # Standard deviation 1/sqrt(d) gives inputs of unit scale after the sqrt(d) factor and initial logits
        # h . M_i of about unit scale. PyTorch's default N(0, 1) makes those logits about sqrt(d) times larger.
        for embedding in (self.item_embedding, self.position_embedding):
            nn.init.normal_(embedding.weight, std=dim**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[PADDING].zero_()

    @property
    def start_token(self) -> int:
        return self.num_items + 1

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return hidden states ``[B, L, d]``, where position t attends to positions 0..t only."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        scale = math.sqrt(self.item_embedding.embedding_dim)
        x = self.item_embedding(tokens) * scale + self.position_embedding(positions)[None]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        h = self.encoder(self.dropout(x), mask=causal, is_causal=True)
        return self.final_norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return ``hidden @ M^T`` over the real items (not padding or START): ``[..., num_items]``."""
        return hidden @ self.item_embedding.weight[1 : self.num_items + 1].T

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return mean cross-entropy of the next item over non-padding targets (item tokens, 0 = padding)."""
        logits = self.logits(self.hidden(inputs))
        return nn.functional.cross_entropy(logits.reshape(-1, self.num_items), targets.reshape(-1) - 1, ignore_index=-1)


def training_windows(
    sequences: Sequence[np.ndarray], num_items: int, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each ``[START] + history`` into windows of ``max_length`` inputs with shifted targets.

    Returns ``inputs`` and ``targets``, both int64 ``[windows, max_length]``, right-padded with 0. Items
    are tokens ``item + 1``. Window j of a history covers tokens ``j*L .. j*L + L`` (inputs the first L,
    targets the last L), so every item of the history is a target exactly once.
    """
    inputs, targets = [], []
    for sequence in sequences:
        tokens = np.concatenate([[num_items + 1], np.asarray(sequence, dtype=np.int64) + 1])
        for start in range(0, len(tokens) - 1, max_length):
            window = tokens[start : start + max_length + 1]
            inputs.append(_pad(window[:-1], max_length))
            targets.append(_pad(window[1:], max_length))
    if not inputs:
        raise ValueError("SASRec needs at least one meta-train user with one interaction")
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def _pad(tokens: np.ndarray, length: int) -> np.ndarray:
    padded = np.full(length, PADDING, dtype=np.int64)
    padded[: len(tokens)] = tokens
    return padded


def scoring_tokens(supports: Sequence[np.ndarray], num_items: int, max_length: int) -> torch.Tensor:
    """Return ``[B, L]`` inputs ``[START, s_1 .. s_K]``, all rows of one K so no padding is needed.

    Supports longer than ``max_length - 1`` keep their last ``max_length`` items and lose START.
    """
    rows = []
    for support in supports:
        tokens = np.concatenate([[num_items + 1], np.asarray(support, dtype=np.int64) + 1])
        rows.append(tokens[-max_length:])
    return torch.from_numpy(np.stack(rows))


class SASRecRecommender:
    """SASRec trained on meta-train users for at most ``budget_s`` seconds, selected on validation users.

    After each epoch the model is scored on validation users at every K, and training keeps the weights with
    the best mean NDCG@10 over K. Training stops after ``patience`` epochs without improvement, after
    ``max_epochs``, or when ``budget_s`` runs out. With a binding time budget the result depends on machine
    speed.
    """

    name = "SASRec"

    def __init__(
        self,
        dim: int = 64,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        max_length: int = 50,
        learning_rate: float = 1e-3,
        batch_size: int = 128,
        budget_s: float = 120.0,
        max_epochs: int = 200,
        patience: int = 5,
        seed: int = 0,
    ):
        self.settings = dict(dim=dim, blocks=blocks, heads=heads, dropout=dropout)
        self.max_length = max_length
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.budget_s = budget_s
        self.max_epochs = max_epochs
        self.patience = patience
        self.seed = seed
        self.model: SASRec | None = None
        self.onboarding = OnboardingPopularityRecommender()
        self.zero_history = "start token"
        self.history: list[dict] = []  # one record per epoch: epoch, loss, validation NDCG@10 per K

    def fit(self, data: InteractionData, split: UserSplit, ks: Sequence[int] = DEFAULT_KS) -> None:
        """Train on meta-train users' windows, keep the best epoch on validation, then choose the K = 0 scorer."""
        self.onboarding.fit(data, split, ks)
        validation = evaluation_users(data, split.validation, ks)
        sequences = data.sequences()
        inputs, targets = training_windows([sequences[u] for u in split.train], data.num_items, self.max_length)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = SASRec(data.num_items, self.max_length, **self.settings)
            self._train(inputs, targets, data, validation, ks)
        choose_zero_history(self, "start token", data, validation, ks)

    def _train(
        self, inputs: torch.Tensor, targets: torch.Tensor, data: InteractionData, validation: EvaluationUsers,
        ks: Sequence[int],
    ) -> None:
        deadline = Deadline(self.budget_s)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate, betas=(0.9, 0.98))
        best_score, best_state, stale = -1.0, copy.deepcopy(self.model.state_dict()), 0
        self.history = []
        for epoch in range(1, self.max_epochs + 1):
            loss = self._train_epoch(inputs, targets, optimizer, deadline)
            scores = validation_ndcg_by_k(self, data, validation, ks)
            mean_score = float(np.mean(list(scores.values())))
            self.history.append({"epoch": epoch, "loss": loss, "validation_ndcg@10": scores})
            logger.info("SASRec epoch %d: loss %.4f, validation NDCG@10 %.4f (%.0f s)", epoch, loss, mean_score,
                        deadline.elapsed())
            if mean_score > best_score:
                best_score, best_state, stale = mean_score, copy.deepcopy(self.model.state_dict()), 0
            else:
                stale += 1
            if stale >= self.patience or deadline.expired():
                break
        self.model.load_state_dict(best_state)
        self.model.eval()

    def _train_epoch(
        self, inputs: torch.Tensor, targets: torch.Tensor, optimizer: torch.optim.Optimizer, deadline: Deadline
    ) -> float:
        """Run one shuffled pass, stopping early at the deadline, and return the mean loss of the batches run."""
        self.model.train()
        order = torch.randperm(len(inputs))
        losses = []
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            loss = self.model.loss(inputs[rows], targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if deadline.expired():
                break
        self.model.eval()
        return float(np.mean(losses))

    def score(self, batch: ScoringBatch) -> np.ndarray:
        """Return next-item logits after ``[START, s_1 .. s_K]`` (onboarding popularity at K = 0 if chosen)."""
        if batch.k == 0 and self.zero_history == ZERO_HISTORY_ONBOARDING:
            return onboarding_scores(self.onboarding, batch)
        if not len(batch.users):
            return np.zeros((0, self.model.num_items))
        tokens = scoring_tokens(batch.supports, self.model.num_items, self.max_length)
        with torch.no_grad():
            logits = self.model.logits(self.model.hidden(tokens)[:, -1])
        return break_ties(logits.numpy(), self.onboarding, batch.k)
