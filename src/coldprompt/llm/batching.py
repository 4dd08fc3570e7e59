"""Turn users' item sequences and profiles into padded :class:`SequenceBatch` tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from coldprompt.data.dataset import InteractionData
from coldprompt.llm.model import SequenceBatch, rating_classes


class ProfileTokens:
    """Token ids of each user's profile sentence, tokenised once; empty when the data set has no profiles.

    The sentence is used bare (no "User profile:" wrapper): every profile token is paid for at every forward
    pass of that user, training included, and the soft prompt that follows can learn the framing.
    """

    def __init__(self, data: InteractionData, tokenizer, max_tokens: int):
        self.max_tokens = max_tokens
        self.ids: list[list[int]] = [[] for _ in range(data.num_users)]
        if data.user_profiles is None or tokenizer is None:
            return
        for user, sentence in enumerate(data.user_profiles):
            self.ids[user] = self.for_text(tokenizer, sentence, max_tokens)

    @staticmethod
    def for_text(tokenizer, sentence: str | None, max_tokens: int) -> list[int]:
        if not sentence or tokenizer is None:
            return []
        return tokenizer(sentence, add_special_tokens=False)["input_ids"][:max_tokens]


def make_sequence_batch(
    item_lists: Sequence[np.ndarray],
    rating_lists: Sequence[np.ndarray],
    profile_lists: Sequence[list[int]],
) -> SequenceBatch:
    """Pad B item sequences (with their ratings) and B profile token lists into one batch."""
    B = len(item_lists)
    T = max((len(items) for items in item_lists), default=0)
    Lp = max((len(ids) for ids in profile_lists), default=0)
    items = torch.zeros(B, T, dtype=torch.long)
    ratings = torch.zeros(B, T, dtype=torch.long)
    profile = torch.zeros(B, Lp, dtype=torch.long)
    for b in range(B):
        n = len(item_lists[b])
        items[b, :n] = torch.as_tensor(np.asarray(item_lists[b], dtype=np.int64))
        ratings[b, :n] = torch.as_tensor(rating_classes(np.asarray(rating_lists[b], dtype=np.float32)))
        profile[b, : len(profile_lists[b])] = torch.as_tensor(profile_lists[b], dtype=torch.long)
    return SequenceBatch(
        items=items,
        ratings=ratings,
        lengths=torch.tensor([len(i) for i in item_lists], dtype=torch.long),
        profile_ids=profile,
        profile_lengths=torch.tensor([len(p) for p in profile_lists], dtype=torch.long),
    )


def users_batch(
    data: InteractionData, users: Sequence[int], start: int, stop: Sequence[int] | int, profiles: ProfileTokens
) -> SequenceBatch:
    """Batch of users' interactions ``start:stop`` (stop per user or shared)."""
    sequences, ratings = data.sequences(), data.rating_sequences()
    stops = [stop] * len(users) if isinstance(stop, (int, np.integer)) else list(stop)
    return make_sequence_batch(
        [sequences[u][start:s] for u, s in zip(users, stops)],
        [ratings[u][start:s] for u, s in zip(users, stops)],
        [profiles.ids[u] for u in users],
    )
