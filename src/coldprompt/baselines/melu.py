"""MeLU: a meta-learned user preference estimator, adapted to implicit feedback and full-catalogue ranking.

Source: H. Lee, J. Im, S. Jang, H. Cho and S. Chung, "MeLU: Meta-Learned User Preference Estimator for
Cold-Start Recommendation", KDD 2019. As in the paper, embeddings of user fields and item fields are
concatenated and fed to fully connected "decision-making" layers; MAML meta-learns all weights, and per user
only the decision-making layers take local gradient steps on the support set:

    theta_u = theta - beta * grad_theta L_support(theta)      (``inner_steps`` times, step size ``beta``)
    meta-loss = mean over users of L_query(theta_u),  minimised over theta and the embeddings.

Differences from the paper, because the protocol here ranks the full catalogue from implicit interactions:

* Output and loss: a logit per (user, item) with binary cross-entropy, positives being the user's items and
  negatives items drawn uniformly (``negatives`` per positive), in place of rating regression with MSE.
* Item fields: a learned item id embedding plus the mean embedding of the item's genres (the data sets here
  have no director or actor fields). The id embedding is not in the paper.
* User fields: gender, age group and occupation, parsed from the profile sentence where the data set has
  profiles (ML-1M and ml-100k). Numeric ages are mapped to the ML-1M age groups. Without profiles there are
  no user fields.
* Episodes: a meta-train user's support set is their first K interactions, K drawn from the evaluated K >= 1,
  and the query set the next ``query_size`` interactions, mirroring the evaluation protocol.
* Budget: training stops at ``budget_s`` seconds, ``max_steps`` outer steps or when validation NDCG@10 stops
  improving; the paper trains a fixed number of epochs.

At K = 0 nothing is adapted: the meta-learned weights score items from the user fields alone, unless
onboarding popularity has the higher validation NDCG@10 at K = 0 (``zero_history`` records which).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from coldprompt.baselines.common import (
    ZERO_HISTORY_ONBOARDING,
    break_ties,
    choose_zero_history,
    Deadline,
    onboarding_scores,
    positive_ks,
    validation_ndcg_by_k,
)
from coldprompt.baselines.simple import OnboardingPopularityRecommender
from coldprompt.data.dataset import InteractionData
from coldprompt.data.profiles import ML1M_AGE_GROUPS
from coldprompt.evaluation.protocol import DEFAULT_KS, EvaluationUsers, ScoringBatch, UserSplit, evaluation_users

logger = logging.getLogger(__name__)

#: The profile sentence written by ``coldprompt.data.profiles.describe_user``, e.g.
#: "A female user aged 25-34 who works as a programmer." or "A male user aged 24 whose occupation is writer."
PROFILE_PATTERN = re.compile(
    r"^A (?:(?P<gender>\w+) )?user(?: aged (?P<age>under \d+|\d+ or older|\d+(?:-\d+)?))?(?: (?P<occupation>.+?))?\.$"
)
USER_FIELDS = ("gender", "age", "occupation")
#: Lower bounds of the ML-1M age groups, in order, used to map a numeric age to its group.
_AGE_GROUP_STARTS = (0, 18, 25, 35, 45, 50, 56)
_LOCAL_LAYERS = ("hidden1", "hidden2", "output")


# --------------------------------------------------------------------------------------------- features
def parse_profile(profile: str) -> dict[str, str]:
    """Return the gender, age group and occupation of a profile sentence ("" where absent or unparsed)."""
    match = PROFILE_PATTERN.match(profile.strip())
    if match is None:
        return {name: "" for name in USER_FIELDS}
    fields = {name: match.group(name) or "" for name in USER_FIELDS}
    if fields["age"].isdigit():
        fields["age"] = age_group(int(fields["age"]))
    return fields


def age_group(age: int) -> str:
    """Return the ML-1M age group of an age in years, e.g. 24 -> "18-24"."""
    groups = list(ML1M_AGE_GROUPS.values())
    index = int(np.searchsorted(_AGE_GROUP_STARTS, age, side="right")) - 1
    return groups[max(index, 0)]


def user_field_ids(data: InteractionData, train_users: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Return ``[num_users, fields]`` int64 category ids and each field's vocabulary size.

    Vocabularies come from meta-train users only; id 0 is "unknown" (a value no meta-train user has, or a
    missing field). Without profiles the array has zero columns.
    """
    if data.user_profiles is None:
        return np.zeros((data.num_users, 0), dtype=np.int64), []
    parsed = [parse_profile(profile) for profile in data.user_profiles]
    columns, sizes = [], []
    for name in USER_FIELDS:
        known = sorted({parsed[u][name] for u in train_users} - {""})
        index = {value: position + 1 for position, value in enumerate(known)}
        columns.append([index.get(fields[name], 0) for fields in parsed])
        sizes.append(len(known) + 1)
    return np.array(columns, dtype=np.int64).T, sizes


def genre_bags(data: InteractionData) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Return flat genre ids, per-item offsets (EmbeddingBag format) and the number of distinct genres."""
    item_genres = [[g.strip() for g in text.split(",") if g.strip()] for text in data.item_genres]
    vocabulary = {genre: i for i, genre in enumerate(sorted({g for genres in item_genres for g in genres}))}
    flat = [vocabulary[g] for genres in item_genres for g in genres]
    offsets = np.cumsum([0] + [len(genres) for genres in item_genres[:-1]])
    return torch.tensor(flat, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64), len(vocabulary)


# --------------------------------------------------------------------------------------------- network
class MeLUNetwork(nn.Module):
    """User and item embeddings (global) feeding decision-making layers (adapted per user).

    ``logit(u, i) = w_3 . relu(W_2 relu(W_1 [e_user(u); e_id(i); e_genres(i)] + b_1) + b_2) + b_3``.
    """

    def __init__(self, num_items: int, field_sizes: Sequence[int], num_genres: int, dim: int, hidden: int):
        super().__init__()
        self.item_embedding = nn.Embedding(num_items, dim)
        self.genre_embedding = nn.EmbeddingBag(max(num_genres, 1), dim, mode="mean")
        self.field_embeddings = nn.ModuleList(nn.Embedding(size, dim) for size in field_sizes)
        width = dim * (2 + len(field_sizes))
        self.hidden1 = nn.Linear(width, hidden)
        self.hidden2 = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, 1)
        for embedding in [self.item_embedding, self.genre_embedding, *self.field_embeddings]:
            nn.init.normal_(embedding.weight, std=dim**-0.5)

    def local_parameters(self) -> dict[str, torch.Tensor]:
        """Return the decision-making layers' parameters, the ones adapted per user."""
        return {f"{layer}.{kind}": getattr(self, layer).get_parameter(kind) for layer in _LOCAL_LAYERS
                for kind in ("weight", "bias")}

    def item_features(self, genre_ids: torch.Tensor, genre_offsets: torch.Tensor) -> torch.Tensor:
        """Return ``[num_items, 2 * dim]``: the id embedding and the mean genre embedding of every item."""
        genres = self.genre_embedding(genre_ids, genre_offsets)  # items without genres get zeros
        return torch.cat([self.item_embedding.weight, genres], dim=1)

    def user_features(self, field_ids: torch.Tensor) -> torch.Tensor:
        """Return ``[B, fields * dim]`` user embeddings from ``[B, fields]`` category ids (``[B, 0]`` allowed)."""
        parts = [embedding(field_ids[:, f]) for f, embedding in enumerate(self.field_embeddings)]
        return torch.cat(parts, dim=1) if parts else field_ids.new_zeros((len(field_ids), 0), dtype=torch.float32)

    @staticmethod
    def decide(user: torch.Tensor, items: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return ``[n]`` logits of one user (``[fields * dim]``) for ``[n, 2 * dim]`` item features."""
        x = torch.cat([user.expand(len(items), -1), items], dim=1)
        x = F.relu(F.linear(x, weights["hidden1.weight"], weights["hidden1.bias"]))
        x = F.relu(F.linear(x, weights["hidden2.weight"], weights["hidden2.bias"]))
        return F.linear(x, weights["output.weight"], weights["output.bias"]).squeeze(-1)


def adapt(
    user: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, weights: dict[str, torch.Tensor],
    steps: int, step_size: float, create_graph: bool,
) -> dict[str, torch.Tensor]:
    """Return the local weights after ``steps`` gradient steps on the support set's binary cross-entropy.

    ``create_graph=True`` keeps the graph of each step, so a loss of the result differentiates back to
    ``weights`` through the steps (second-order MAML).
    """
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(MeLUNetwork.decide(user, items, weights), labels)
        grads = torch.autograd.grad(loss, list(weights.values()), create_graph=create_graph)
        weights = {name: w - step_size * g for (name, w), g in zip(weights.items(), grads)}
    return weights


# --------------------------------------------------------------------------------------------- episodes
def sample_negatives(rng: np.random.Generator, num_items: int, excluded: np.ndarray, count: int) -> np.ndarray:
    """Draw ``count`` distinct items uniformly from the catalogue minus ``excluded`` (fewer if too few remain)."""
    allowed = np.ones(num_items, dtype=bool)
    allowed[excluded] = False
    pool = np.flatnonzero(allowed)
    return rng.choice(pool, size=min(count, len(pool)), replace=False)


def labelled_items(positives: np.ndarray, negatives: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Return item ids and 1/0 labels for positives followed by negatives."""
    items = np.concatenate([np.unique(positives), negatives]).astype(np.int64)
    labels = np.concatenate([np.ones(len(np.unique(positives))), np.zeros(len(negatives))])
    return torch.from_numpy(items), torch.tensor(labels, dtype=torch.float32)


# --------------------------------------------------------------------------------------------- recommender
class MeLURecommender:
    """MeLU meta-trained on meta-train users for at most ``budget_s`` seconds, selected on validation users.

    Every ``eval_every`` outer steps the model is scored on validation users at every K, and training keeps the
    weights with the best mean NDCG@10 over K. Training stops after ``patience`` checks without improvement,
    after ``max_steps``, or when ``budget_s`` runs out. With a binding time budget the result depends on
    machine speed. A test user's support negatives are drawn with a generator seeded by (seed, user, K), so scores do
    not depend on batching.
    """

    name = "MeLU"

    def __init__(
        self,
        dim: int = 32,
        hidden: int = 64,
        inner_steps: int = 1,
        inner_lr: float = 0.5,
        first_order: bool = False,
        meta_batch: int = 32,
        query_size: int = 10,
        negatives: int = 4,
        learning_rate: float = 1e-3,
        budget_s: float = 120.0,
        max_steps: int = 20_000,
        eval_every: int = 100,
        patience: int = 5,
        seed: int = 0,
    ):
        self.dim, self.hidden = dim, hidden
        self.inner_steps, self.inner_lr, self.first_order = inner_steps, inner_lr, first_order
        self.meta_batch, self.query_size, self.negatives = meta_batch, query_size, negatives
        self.learning_rate, self.budget_s = learning_rate, budget_s
        self.max_steps, self.eval_every, self.patience = max_steps, eval_every, patience
        self.seed = seed
        self.network: MeLUNetwork | None = None
        self.onboarding = OnboardingPopularityRecommender()
        self.zero_history = "user fields"
        self.history: list[dict] = []  # one record per validation check: step, loss, validation NDCG@10 per K

    def fit(self, data: InteractionData, split: UserSplit, ks: Sequence[int] = DEFAULT_KS) -> None:
        """Meta-train on meta-train users' episodes, keep the best check on validation, choose the K = 0 scorer."""
        self.onboarding.fit(data, split, ks)
        validation = evaluation_users(data, split.validation, ks)
        field_ids, field_sizes = user_field_ids(data, split.train)
        self.field_ids = torch.from_numpy(field_ids)
        self.genre_ids, self.genre_offsets, num_genres = genre_bags(data)
        self.num_items = data.num_items
        sequences = data.sequences()
        train_users = np.array([u for u in split.train if len(sequences[u]) >= 2], dtype=np.int64)
        if not len(train_users):
            raise ValueError("MeLU needs meta-train users with at least 2 interactions (one support, one query)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.network = MeLUNetwork(data.num_items, field_sizes, num_genres, self.dim, self.hidden)
            self._train(data, train_users, validation, ks)
        choose_zero_history(self, "user fields", data, validation, ks)

    def _train(
        self, data: InteractionData, train_users: np.ndarray, validation: EvaluationUsers, ks: Sequence[int]
    ) -> None:
        deadline = Deadline(self.budget_s)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.learning_rate)
        rng = np.random.default_rng(self.seed)
        support_ks = positive_ks(ks) or [1]
        best_score, best_state, stale, losses = -1.0, copy.deepcopy(self.network.state_dict()), 0, []
        self.history = []
        for step in range(1, self.max_steps + 1):
            users = rng.choice(train_users, size=min(self.meta_batch, len(train_users)), replace=False)
            loss = self.meta_loss(data, users, rng, support_ks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step % self.eval_every and not deadline.expired() and step < self.max_steps:
                continue
            score = self._record(step, float(np.mean(losses)), data, validation, ks, deadline)
            losses = []
            if score > best_score:
                best_score, best_state, stale = score, copy.deepcopy(self.network.state_dict()), 0
            else:
                stale += 1
            if stale >= self.patience or deadline.expired():
                break
        self.network.load_state_dict(best_state)

    def _record(
        self, step: int, loss: float, data: InteractionData, validation: EvaluationUsers, ks: Sequence[int],
        deadline: Deadline,
    ) -> float:
        scores = validation_ndcg_by_k(self, data, validation, ks)
        mean_score = float(np.mean(list(scores.values())))
        self.history.append({"step": step, "loss": loss, "validation_ndcg@10": scores})
        logger.info("MeLU step %d: meta-loss %.4f, validation NDCG@10 %.4f (%.0f s)", step, loss, mean_score,
                    deadline.elapsed())
        return mean_score

    def meta_loss(
        self, data: InteractionData, users: np.ndarray, rng: np.random.Generator, support_ks: Sequence[int]
    ) -> torch.Tensor:
        """Return the mean query loss of ``users`` after each one's local update on their support set."""
        item_features = self.network.item_features(self.genre_ids, self.genre_offsets)
        user_features = self.network.user_features(self.field_ids[torch.from_numpy(users)])
        sequences = data.sequences()
        losses = []
        for row, user in enumerate(users):
            sequence = sequences[user]
            k = int(rng.choice([k for k in support_ks if k < len(sequence)] or [len(sequence) - 1]))
            support, query = sequence[:k], sequence[k : k + self.query_size]
            negatives = sample_negatives(
                rng, data.num_items, sequence, self.negatives * (len(np.unique(support)) + len(np.unique(query)))
            )
            cut = self.negatives * len(np.unique(support))
            support_items, support_labels = labelled_items(support, negatives[:cut])
            query_items, query_labels = labelled_items(query, negatives[cut:])
            weights = adapt(user_features[row], item_features[support_items], support_labels,
                            self.network.local_parameters(), self.inner_steps, self.inner_lr, not self.first_order)
            logits = MeLUNetwork.decide(user_features[row], item_features[query_items], weights)
            losses.append(F.binary_cross_entropy_with_logits(logits, query_labels))
        return torch.stack(losses).mean()

    def score(self, batch: ScoringBatch) -> np.ndarray:
        """Return each user's logits for every item after the local update on their support set."""
        if batch.k == 0 and self.zero_history == ZERO_HISTORY_ONBOARDING:
            return onboarding_scores(self.onboarding, batch)
        with torch.no_grad():
            item_features = self.network.item_features(self.genre_ids, self.genre_offsets)
            user_features = self.network.user_features(self.field_ids[torch.from_numpy(batch.users)])
        rows = [self._score_user(int(user), support, batch.k, user_features[row], item_features)
                for row, (user, support) in enumerate(zip(batch.users, batch.supports))]
        scores = np.stack(rows) if rows else np.zeros((0, self.num_items))
        return break_ties(scores, self.onboarding, batch.k)

    def _score_user(
        self, user: int, support: np.ndarray, k: int, user_features: torch.Tensor, item_features: torch.Tensor
    ) -> np.ndarray:
        weights = {name: p.detach().requires_grad_(True) for name, p in self.network.local_parameters().items()}
        if len(support):
            rng = np.random.default_rng([self.seed, user, k])
            negatives = sample_negatives(rng, self.num_items, support, self.negatives * len(np.unique(support)))
            items, labels = labelled_items(support, negatives)
            with torch.enable_grad():
                weights = adapt(user_features, item_features[items], labels, weights, self.inner_steps,
                                self.inner_lr, create_graph=False)
        with torch.no_grad():
            return MeLUNetwork.decide(user_features, item_features, weights).numpy().astype(np.float64)
