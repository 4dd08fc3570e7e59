"""Outer training loops: the shared-prompt model and the meta-learners, with validation-based selection."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from coldprompt.config import RunConfig
from coldprompt.data.dataset import InteractionData
from coldprompt.evaluation.protocol import EvaluationUsers, UserSplit, evaluate, evaluation_users
from coldprompt.llm.batching import ProfileTokens, users_batch
from coldprompt.llm.model import SoftPromptRecommender
from coldprompt.llm.recommender import SoftPromptScorer
from coldprompt.meta.algorithms import maml_step, reptile_step

logger = logging.getLogger(__name__)

SHARED = "shared"  # one prompt for every user, no inner loop: the ablation and the meta-learners' start


@dataclass
class TrainingLog:
    """Step counts, timings and validation history of one training stage."""

    algorithm: str
    outer_steps: int = 0
    users_seen: int = 0
    seconds: float = 0.0
    best_validation_ndcg: float = float("-inf")
    best_step: int = 0
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "algorithm": self.algorithm,
            "outer_steps": self.outer_steps,
            "users_seen": self.users_seen,
            "seconds": round(self.seconds, 2),
            "users_per_second": round(self.users_seen / max(self.seconds, 1e-9), 2),
            "best_validation_ndcg@10": self.best_validation_ndcg,
            "best_step": self.best_step,
            "history": self.history,
        }


class Trainer:
    """Train ``model`` with one algorithm on meta-train users; keep the state best on meta-validation users."""

    def __init__(
        self,
        model: SoftPromptRecommender,
        data: InteractionData,
        split: UserSplit,
        profiles: ProfileTokens,
        config: RunConfig,
        algorithm: str,
    ):
        self.model, self.data, self.split, self.profiles = model, data, split, profiles
        self.config, self.algorithm = config, algorithm
        self.rng = np.random.default_rng([config.seed, _stable_code(algorithm)])
        self.lengths = np.array([len(s) for s in data.sequences()])
        self.validation = _validation_users(data, split, config)
        self.inner_steps = 0 if algorithm == SHARED else config.inner_steps
        self._build_optimisers()

    # ------------------------------------------------------------------------------------------- setup
    def _build_optimisers(self) -> None:
        model = self.model
        model.log_inner_lr.requires_grad_(self.algorithm in ("fomaml", "maml"))
        adam_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        self.reptile_init = None
        if self.algorithm == "reptile":
            adam_params = [p for p in adam_params if p is not model.prompt_init]
            self.reptile_init = torch.optim.SGD([model.prompt_init], lr=self.config.reptile_epsilon)
        self.adam = torch.optim.Adam(adam_params, lr=self.config.outer_lr)
        self.clipped = adam_params

    # ------------------------------------------------------------------------------------------- episodes
    def sample_episode(self) -> tuple[np.ndarray, int, np.ndarray]:
        """Sample a support size K' from the evaluation range and a meta-batch of users with a query."""
        k = int(self.rng.choice(self.config.ks))
        eligible = self.split.train[self.lengths[self.split.train] >= k + 1]
        size = self.config.maml_meta_batch_size if self.algorithm == "maml" else self.config.meta_batch_size
        users = self.rng.choice(eligible, size=min(size, len(eligible)), replace=False)
        stops = np.minimum(self.lengths[users], k + self.config.query_size)
        return users, k, stops

    def outer_step(self) -> float:
        users, k, stops = self.sample_episode()
        batch = users_batch(self.data, users, 0, stops, self.profiles)
        model, steps = self.model, self.inner_steps if k > 0 else 0
        support_end = torch.full((len(users),), k, dtype=torch.long)
        support = lambda p: model.position_losses(p, batch, 0, support_end)  # noqa: E731
        query = lambda p: model.position_losses(p, batch, k, batch.lengths)  # noqa: E731

        self.adam.zero_grad(set_to_none=True)
        if self.algorithm == SHARED:
            prompts = model.prompt_init.unsqueeze(0).expand(len(users), *model.prompt_init.shape)
            loss = model.position_losses(prompts, batch, 0, batch.lengths).mean()
            loss.backward()
            value = loss.item()
        elif self.algorithm == "reptile":
            self.reptile_init.zero_grad(set_to_none=True)
            value = reptile_step(support, query, model.prompt_init, len(users), steps, model.inner_lr()).query_loss
        else:
            second_order = self.algorithm == "maml"
            value = maml_step(
                support, query, model.prompt_init, len(users), steps, model.inner_lr(), second_order=second_order
            ).query_loss
        torch.nn.utils.clip_grad_norm_(self.clipped, self.config.grad_clip)
        self.adam.step()
        if self.reptile_init is not None and k > 0:
            self.reptile_init.step()
        return value

    # ------------------------------------------------------------------------------------------- loop
    def train(self, budget_s: float, *, show_progress: bool = True) -> TrainingLog:
        """Train until ``budget_s`` wall seconds or ``max_outer_steps``; restore the best validation state.

        Validation runs ``config.validations`` times, evenly spaced over the budget, and once more at the end
        when steps ran after the last check. Its time counts against the budget.
        """
        log = TrainingLog(self.algorithm)
        best_state = self.trainable_state()
        log.best_validation_ndcg = self.validate()
        log.history.append({"step": 0, "validation_ndcg@10": log.best_validation_ndcg})
        start = time.perf_counter()
        next_check, checked_at = budget_s / self.config.validations, 0
        progress = tqdm(total=int(budget_s), desc=f"train {self.algorithm}", unit="s", disable=not show_progress)
        losses: list[float] = []
        while time.perf_counter() - start < budget_s and log.outer_steps < self.config.max_outer_steps:
            losses.append(self.outer_step())
            log.outer_steps += 1
            log.users_seen += self.config.maml_meta_batch_size if self.algorithm == "maml" else self.config.meta_batch_size
            elapsed = time.perf_counter() - start
            progress.n = min(int(elapsed), int(budget_s))
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", step=log.outer_steps)
            if elapsed >= next_check:
                best_state = self._checkpoint(log, losses[checked_at:], best_state)
                checked_at, next_check = len(losses), next_check + budget_s / self.config.validations
        if checked_at < len(losses):
            best_state = self._checkpoint(log, losses[checked_at:], best_state)
        progress.close()
        log.seconds = time.perf_counter() - start
        self.load_trainable_state(best_state)
        logger.info(
            "%s: %d outer steps in %.0f s, best validation NDCG@10 %.4f at step %d",
            self.algorithm, log.outer_steps, log.seconds, log.best_validation_ndcg, log.best_step,
        )
        return log

    def _checkpoint(self, log: TrainingLog, losses: list[float], best_state: dict) -> dict:
        """Validate; return the trainable state to keep (the new one if it beats the best so far)."""
        score = self.validate()
        log.history.append({"step": log.outer_steps, "train_loss": float(np.mean(losses)), "validation_ndcg@10": score})
        if score > log.best_validation_ndcg:
            log.best_validation_ndcg, log.best_step = score, log.outer_steps
            return self.trainable_state()
        return best_state

    def validate(self) -> float:
        """Mean NDCG@10 over K on the meta-validation users, with the same inner loop as at test time."""
        scorer = SoftPromptScorer(self.model, self.profiles, self.algorithm, inner_steps=self.inner_steps)
        result = evaluate(scorer, self.data, self.validation, self.config.ks, batch_size=self.config.batch_size, sampled=False)
        return float(np.mean([result.per_user[k]["ndcg@10"].mean() for k in self.config.ks]))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if not n.startswith("backbone.")}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                if name in state:
                    parameter.copy_(state[name])


def _validation_users(data: InteractionData, split: UserSplit, config: RunConfig) -> EvaluationUsers:
    return evaluation_users(data, split.validation, config.ks, max_users=config.validation_users, seed=config.seed)


def _stable_code(text: str) -> int:
    """Return an integer for ``text`` that is the same in every process (``hash`` depends on PYTHONHASHSEED)."""
    return int.from_bytes(text.encode("utf-8")[:8].ljust(8, b"\0"), "little") % (2**31)


