"""The checkpoint's model as the service uses it: catalogue look-ups, batched adaptation and scoring, rankings.

Adaptation is the evaluation-time inner loop of :class:`~coldprompt.llm.recommender.SoftPromptScorer`: the
prompt starts at the meta-learned initialisation and takes the checkpoint's ``inner_steps`` gradient steps on
the support loss over the user's history (here: the most recent ``context_size`` interactions). A user with no
history is scored from the initialisation itself, after the profile tokens when a profile is given.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from coldprompt.checkpoint import MANIFEST, WEIGHTS
from coldprompt.llm.batching import make_sequence_batch
from coldprompt.meta.algorithms import adapt
from coldprompt.service.store import StoredPrompt

logger = logging.getLogger(__name__)

CONTEXT_INTERACTIONS = 200  # the model reads at most this many of a user's most recent interactions
BECAUSE_ITEMS = 3  # support items listed as the reason for each recommendation
PROMPT_DTYPE = "float32"


@dataclass
class ModelJob:
    """One user to score, and adapt first unless a stored prompt is given."""

    items: np.ndarray  # int64 [T], catalogue indices, oldest first, T <= context_size
    ratings: np.ndarray  # float32 [T], NaN when unrated
    profile_ids: list[int]  # profile token ids, empty without a profile
    prompt: torch.Tensor | None  # float32 [P, H], a stored adapted prompt; None adapts from the initialisation


@dataclass
class ModelResult:
    prompt: torch.Tensor  # float32 [P, H], the prompt the scores come from
    scores: np.ndarray  # float32 [N], one score per catalogue item
    adapted: bool  # whether this batch ran the inner loop for the job


@dataclass
class RankedItem:
    index: int
    score: float
    because: list[tuple[int, float]]  # (support item index, cosine similarity), most similar first


def checkpoint_id(folder: str | Path) -> str:
    """Return a content hash of the checkpoint's manifest and weights (32 hex digits).

    Prompts are stored under this id, so replacing a checkpoint, even in the same folder, invalidates them.
    """
    digest = hashlib.sha256()
    for name in (MANIFEST, WEIGHTS):
        with open(Path(folder) / name, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:32]


class ServiceModel:
    """A loaded checkpoint: adapts and scores batches of users, ranks items and explains rankings.

    :meth:`run_batch` may run on several threads at once: it only reads the model's weights.
    """

    def __init__(self, trained, checkpoint_id: str):
        """Wrap ``trained`` (a :class:`coldprompt.pipeline.TrainedModel`); this freezes all its weights."""
        self.model = trained.model
        self.model.eval()
        # Nothing but the per-user prompt is differentiated here, so the inner loop's backward pass stops there.
        self.model.requires_grad_(False)
        # The service never trains, so the catalogue's output embeddings are computed once, here. Worker threads
        # only read them.
        self.model.freeze_item_outputs()
        self.data = trained.data
        self.checkpoint_id = checkpoint_id
        self.algorithm = trained.manifest["algorithm"]
        config = trained.manifest["config"]
        self.inner_steps = int(config["inner_steps"])
        self.max_profile_tokens = int(config["max_profile_tokens"])
        self.item_index = {item_id: i for i, item_id in enumerate(self.data.item_ids)}
        self._profiles = trained.profiles
        self._tokenizer = trained.tokenizer
        self._tokenizer_lock = threading.Lock()  # Hugging Face fast tokenizers are not safe to share across threads
        with torch.no_grad():
            self._init = self.model.prompt_init.detach().float().clone()  # [P, H]
            self._inner_lr = self.model.inner_lr().detach()  # [P, H]
            # Unit-length output item embeddings [N, H]: the vectors that scores are dot products with.
            self._directions = F.normalize(self.model.item_outputs().float(), dim=1).numpy()
        self.context_size = self._context_size()

    @classmethod
    def load(cls, checkpoint: str | Path, backbone_source: str | None = None, data_dir: str | None = None) -> ServiceModel:
        from coldprompt.pipeline import load_trained

        trained = load_trained(checkpoint, backbone_source=backbone_source, data_dir=data_dir, catalogue_only=True)
        return cls(trained, checkpoint_id(checkpoint))

    def _context_size(self) -> int:
        """Return the number of recent interactions the model reads, capped so one row fits the backbone."""
        size = CONTEXT_INTERACTIONS
        max_positions = getattr(self.model.backbone.config, "max_position_embeddings", None)
        if max_positions:
            room = int(max_positions) - self.max_profile_tokens - self.model.num_virtual_tokens
            if room < size:
                logger.info("the backbone has %d positions, so the model reads the last %d interactions", max_positions, room)
            size = min(size, room)
        return max(size, 1)

    # ------------------------------------------------------------------------------------------ catalogue
    @property
    def num_items(self) -> int:
        return len(self.data.item_ids)

    def item_indices(self, item_ids: Iterable[str]) -> tuple[list[int], list[str]]:
        """Return the catalogue indices of the known ids and the unknown ids (first occurrence order, unique)."""
        indices, unknown = [], {}
        for item_id in item_ids:
            index = self.item_index.get(item_id)
            if index is None:
                unknown[item_id] = None
            else:
                indices.append(index)
        return indices, list(unknown)

    def item_id(self, index: int) -> str:
        return self.data.item_ids[index]

    def title(self, index: int) -> str:
        return self.data.item_titles[index] or ""

    # ------------------------------------------------------------------------------------------ jobs
    def make_job(
        self, items: Sequence[int], ratings: Sequence[float | None], profile: str | None, prompt: torch.Tensor | None
    ) -> ModelJob:
        """Build a job from a history (oldest first); only the last ``context_size`` interactions are kept."""
        items = list(items)[-self.context_size:]
        ratings = list(ratings)[-self.context_size:] if ratings else [None] * len(items)
        with self._tokenizer_lock:
            profile_ids = self._profiles.for_text(self._tokenizer, profile, self.max_profile_tokens)
        return ModelJob(
            items=np.asarray(items, dtype=np.int64),
            ratings=np.asarray([np.nan if r is None else r for r in ratings], dtype=np.float32),
            profile_ids=profile_ids,
            prompt=prompt,
        )

    def needs_adaptation(self, job: ModelJob) -> bool:
        return job.prompt is None and len(job.items) > 0 and self.inner_steps > 0

    def run_batch(self, jobs: Sequence[ModelJob]) -> list[ModelResult]:
        """Adapt the jobs without a stored prompt (one batched inner loop), then score all jobs in one pass."""
        inputs = make_sequence_batch([j.items for j in jobs], [j.ratings for j in jobs], [j.profile_ids for j in jobs])
        prompts = torch.stack([self._init if j.prompt is None else j.prompt for j in jobs])  # [B, P, H]
        rows = [i for i, job in enumerate(jobs) if self.needs_adaptation(job)]
        if rows:
            # When every job adapts, the inner loop runs on the scoring batch itself, so a lean backbone encodes
            # the profiles once for both.
            prompts[rows] = self._adapt([jobs[i] for i in rows], inputs if len(rows) == len(jobs) else None)
        with torch.no_grad():
            scores = self.model.user_scores(prompts, inputs).float().numpy()  # [B, N]
        adapted = set(rows)
        return [ModelResult(prompts[i], scores[i], i in adapted) for i in range(len(jobs))]

    def _adapt(self, jobs: Sequence[ModelJob], inputs=None) -> torch.Tensor:
        """Run the inner loop for ``jobs`` (batched as ``inputs`` when given) from the initialisation: [A, P, H]."""
        if inputs is None:
            inputs = make_sequence_batch([j.items for j in jobs], [j.ratings for j in jobs], [j.profile_ids for j in jobs])
        start = self._init.unsqueeze(0).expand(len(jobs), *self._init.shape)
        with torch.enable_grad():
            support_loss = lambda p: self.model.position_losses(p, inputs, 0, inputs.lengths)  # noqa: E731
            adapted = adapt(support_loss, start, self.inner_steps, self._inner_lr)
        return adapted.detach()

    # ------------------------------------------------------------------------------------------ rankings
    def rank(self, scores: np.ndarray, exclude: Iterable[int], support: Sequence[int], k: int) -> list[RankedItem]:
        """Return the top ``k`` items by score, leaving out ``exclude``; ties keep catalogue order."""
        masked = scores.astype(np.float64, copy=True)
        excluded = np.fromiter(set(exclude), dtype=np.int64)
        masked[excluded] = -np.inf
        top = np.argsort(-masked, kind="stable")[: max(0, min(k, self.num_items - len(excluded)))]
        reasons = self.explain(top, support)
        return [RankedItem(int(i), float(scores[i]), because) for i, because in zip(top, reasons)]

    def explain(self, recommended: np.ndarray, support: Sequence[int]) -> list[list[tuple[int, float]]]:
        """For each recommended item, the ``BECAUSE_ITEMS`` support items with the most similar output embedding.

        Similarity is the cosine of the output item embeddings (``text_out(e_i) + item_out[i]``), the vectors
        the model scores items with, so two items the model treats alike have a high cosine.
        """
        support = np.asarray(list(dict.fromkeys(support)), dtype=np.int64)  # unique, first occurrence order
        if len(support) == 0:
            return [[] for _ in recommended]
        similarity = self._directions[recommended] @ self._directions[support].T  # [k, S]
        order = np.argsort(-similarity, axis=1, kind="stable")[:, :BECAUSE_ITEMS]
        return [
            [(int(support[j]), float(similarity[row, j])) for j in order[row]]
            for row in range(len(recommended))
        ]

    # ------------------------------------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: torch.Tensor, history_version: int) -> StoredPrompt:
        array = np.ascontiguousarray(prompt.detach().float().numpy(), dtype="<f4")
        return StoredPrompt(self.checkpoint_id, history_version, PROMPT_DTYPE, tuple(array.shape), array.tobytes())

    def decode_prompt(self, stored: StoredPrompt | None, history_version: int) -> torch.Tensor | None:
        """Return the stored prompt when it was adapted by this checkpoint on this history version, else None."""
        if stored is None or stored.checkpoint_id != self.checkpoint_id or stored.history_version != history_version:
            return None
        shape = tuple(self._init.shape)
        if stored.dtype != PROMPT_DTYPE or stored.shape != shape or len(stored.data) != 4 * int(np.prod(shape)):
            logger.warning(
                "ignoring a stored prompt of dtype %s and shape %s; this checkpoint uses %s %s",
                stored.dtype, stored.shape, PROMPT_DTYPE, shape,
            )
            return None
        return torch.from_numpy(np.frombuffer(stored.data, dtype="<f4").reshape(shape).copy())
