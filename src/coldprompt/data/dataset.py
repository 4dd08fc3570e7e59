"""The in-memory interaction table every reader produces and every method consumes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

#: Values of ``InteractionData.order``: the rule that ordered each user's interactions.
ORDER_TIMESTAMP = "timestamp"  # sorted by timestamp, ties kept in file order
ORDER_SOURCE = "source order"  # the source lists each user's items in time order already
ORDER_SEEDED_SHUFFLE = "seeded shuffle"  # no time information: shuffled within each user with a seed


@dataclass
class InteractionData:
    """Interactions as parallel arrays plus item text and optional user profiles.

    Users and items are dense indices ``0..n-1``; ``user_ids`` and ``item_ids`` map them back to the raw ids
    of the source files. The catalogue is the set of items with at least one interaction.
    """

    name: str
    users: np.ndarray  # int64 [N] user index
    items: np.ndarray  # int64 [N] item index
    timestamps: np.ndarray  # float64 [N] seconds since the epoch, NaN where the source has none
    ratings: np.ndarray  # float32 [N] explicit rating, NaN where the source has none
    user_ids: list[str]
    item_ids: list[str]
    item_titles: list[str]  # display title per item, "" when unknown
    item_genres: list[str] = field(default_factory=list)  # comma-separated genres/categories per item
    user_profiles: list[str] | None = None  # one English sentence per user, or None for the whole dataset
    order: str = ORDER_TIMESTAMP
    notes: list[str] = field(default_factory=list)  # data caveats to carry into every result file

    def __post_init__(self) -> None:
        if not self.item_genres:
            self.item_genres = [""] * len(self.item_ids)
        self._sequences: list[np.ndarray] | None = None
        self._rating_sequences: list[np.ndarray] | None = None

    @classmethod
    def catalogue(cls, name: str, item_ids: list[str], item_titles: list[str], item_genres: list[str]) -> "InteractionData":
        """Build a data set with items and no users or interactions, for serving from a checkpoint's catalogue."""
        empty = np.zeros(0, dtype=np.int64)
        return cls(name, empty, empty.copy(), np.zeros(0), np.zeros(0, dtype=np.float32), [], list(item_ids),
                   list(item_titles), list(item_genres))

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return len(self.users)

    def sequences(self) -> list[np.ndarray]:
        """Return each user's item indices in interaction order (the row order of the table within a user)."""
        if self._sequences is None:
            order = np.argsort(self.users, kind="stable")
            bounds = np.searchsorted(self.users[order], np.arange(self.num_users + 1))
            self._sequences = [self.items[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
        return self._sequences

    def rating_sequences(self) -> list[np.ndarray]:
        """Return each user's ratings aligned with :meth:`sequences`."""
        if self._rating_sequences is None:
            order = np.argsort(self.users, kind="stable")
            bounds = np.searchsorted(self.users[order], np.arange(self.num_users + 1))
            self._rating_sequences = [self.ratings[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
        return self._rating_sequences

    def item_text(self, item: int) -> str:
        """Render one item as the text the backbone reads: "Title, genres"."""
        title = self.item_titles[item] or f"item {self.item_ids[item]}"
        genres = self.item_genres[item]
        return f"{title}, {genres}" if genres else title

    def summary(self) -> dict:
        return {
            "dataset": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "order": self.order,
            "has_profiles": self.user_profiles is not None,
            "notes": list(self.notes),
        }
