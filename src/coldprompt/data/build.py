"""Turn raw id columns from any reader into an :class:`InteractionData` with one ordering and duplicate policy."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from coldprompt.data.dataset import (
    ORDER_SEEDED_SHUFFLE,
    ORDER_SOURCE,
    ORDER_TIMESTAMP,
    InteractionData,
)

logger = logging.getLogger(__name__)


class MissingTimestampsWarning(UserWarning):
    """The source has no timestamps, so each user's order is a seeded shuffle."""


def build_interaction_data(
    name: str,
    raw_users: Sequence[str],
    raw_items: Sequence[str],
    *,
    timestamps: Sequence[float] | np.ndarray | None = None,
    ratings: Sequence[float] | np.ndarray | None = None,
    item_titles: Mapping[str, str] | None = None,
    item_genres: Mapping[str, str] | None = None,
    user_profiles: Mapping[str, str] | None = None,
    source_is_ordered: bool = False,
    shuffle_seed: int = 0,
    notes: Sequence[str] = (),
) -> InteractionData:
    """Build the interaction table.

    Policies, applied in this order:

    * Order: with timestamps, each user's interactions are sorted by time, ties kept in file order (stable).
      Without timestamps and with ``source_is_ordered`` the file order is kept (the source lists items in time
      order). Otherwise each user's interactions are shuffled with ``shuffle_seed``, a
      :class:`MissingTimestampsWarning` is issued and ``order`` records it, so every result carries the flag.
    * Duplicates: a repeated (user, item) pair keeps its first interaction in that order and drops the
      rest; the number dropped goes into ``notes``.
    * Catalogue: the items with at least one interaction, numbered by first appearance in sorted raw-id order.
    """
    n = len(raw_users)
    users_raw = np.asarray(raw_users, dtype=object).astype(str)
    items_raw = np.asarray(raw_items, dtype=object).astype(str)
    ts = np.full(n, np.nan) if timestamps is None else np.asarray(timestamps, dtype=np.float64)
    rt = np.full(n, np.nan, dtype=np.float32) if ratings is None else np.asarray(ratings, dtype=np.float32)
    notes = list(notes)

    user_ids, users = _index(users_raw)
    item_ids, items = _index(items_raw)

    order, order_name = _interaction_order(users, ts, timestamps is not None, source_is_ordered, shuffle_seed)
    if order_name == ORDER_SEEDED_SHUFFLE:
        message = (
            f"{name}: the interactions have no timestamps, so each user's order is a shuffle seeded with "
            f"{shuffle_seed}; 'first K interactions' are a random K of the user's items"
        )
        warnings.warn(message, MissingTimestampsWarning, stacklevel=2)
        notes.append(message)
    users, items, ts, rt = users[order], items[order], ts[order], rt[order]

    keep = _first_occurrences(users, items, len(item_ids))
    dropped = int((~keep).sum())
    if dropped:
        notes.append(f"{dropped} duplicate (user, item) interactions dropped; the first of each pair is kept")
        logger.info("%s: dropped %d duplicate interactions", name, dropped)
    users, items, ts, rt = users[keep], items[keep], ts[keep], rt[keep]

    titles = item_titles or {}
    genres = item_genres or {}
    profiles = None
    if user_profiles is not None:
        profiles = [user_profiles.get(u, "") for u in user_ids]
    return InteractionData(
        name=name,
        users=users,
        items=items,
        timestamps=ts,
        ratings=rt,
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=[titles.get(i, "") for i in item_ids],
        item_genres=[genres.get(i, "") for i in item_ids],
        user_profiles=profiles,
        order=order_name,
        notes=notes,
    )


def _index(raw: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Map raw string ids to dense indices, numbering ids in natural order (numeric ids by value)."""
    unique, inverse = np.unique(raw, return_inverse=True)
    if len(unique) and all(u.isdigit() for u in unique):
        # Renumber so that "2" comes before "10".
        by_value = np.argsort(np.array([int(u) for u in unique], dtype=np.int64), kind="stable")
        rank = np.empty_like(by_value)
        rank[by_value] = np.arange(len(by_value))
        return [str(unique[i]) for i in by_value], rank[inverse].astype(np.int64)
    return [str(u) for u in unique], inverse.astype(np.int64)


def _interaction_order(
    users: np.ndarray, ts: np.ndarray, has_ts: bool, source_is_ordered: bool, seed: int
) -> tuple[np.ndarray, str]:
    """Return the row permutation that groups users and orders each user's interactions."""
    position = np.arange(len(users))
    if has_ts and not np.isnan(ts).all():
        # lexsort sorts by the last key first: user, then time, then file position (stable ties).
        filled = np.where(np.isnan(ts), np.inf, ts)
        return np.lexsort((position, filled, users)), ORDER_TIMESTAMP
    if source_is_ordered:
        return np.lexsort((position, users)), ORDER_SOURCE
    noise = np.random.default_rng(seed).random(len(users))
    return np.lexsort((noise, users)), ORDER_SEEDED_SHUFFLE


def _first_occurrences(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    key = users * num_items + items
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(key), dtype=bool)
    keep[first] = True
    return keep
