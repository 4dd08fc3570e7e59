"""Reader for Amazon review dumps in JSON lines: the 2014/2018 releases and the 2023 release (McAuley lab)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coldprompt.data._files import check_ids_known, clean_title, iter_lines, parse_json_object
from coldprompt.data.build import build_interaction_data
from coldprompt.data.dataset import InteractionData
from coldprompt.data.errors import DataFormatError
from coldprompt.data.recbole import read_item_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewLayout:
    """Field names of one release of the review files."""

    name: str
    user: str
    item: str
    rating: str
    timestamp: str
    seconds_per_unit: float  # multiply the timestamp field by this to get seconds since the epoch


LAYOUT_2018 = ReviewLayout("2014/2018", "reviewerID", "asin", "overall", "unixReviewTime", 1.0)
LAYOUT_2023 = ReviewLayout("2023", "user_id", "parent_asin", "rating", "timestamp", 0.001)  # milliseconds

#: Metadata fields with category lists (2014: list of lists, 2018 and 2023: list of strings), then single
#: top-level categories used only when no list is given.
_CATEGORY_LIST_FIELDS = ("categories", "category")
_MAIN_CATEGORY_FIELDS = ("main_category", "main_cat")


def read_amazon_reviews(
    reviews_path: str | Path,
    meta_path: str | Path | None = None,
    *,
    shuffle_seed: int = 0,
    name: str | None = None,
) -> InteractionData:
    """Read Amazon reviews from JSON lines (optionally .gz) and item titles from an optional metadata file.

    The layout is taken from the first record: 2014/2018 files have ``reviewerID``, ``asin``, ``overall`` and
    ``unixReviewTime`` (seconds); 2023 files have ``user_id``, ``parent_asin``, ``rating`` and ``timestamp``
    (milliseconds, converted to seconds). The metadata may be 2018/2023 JSON lines keyed by ``parent_asin`` or
    ``asin``, 2014 Python-literal lines, or a RecBole ``.item`` file. Titles are HTML-unescaped. Raises
    DataFormatError on invalid lines and on reviewed items that the metadata does not list.
    """
    path = Path(reviews_path)
    layout, users, items, ratings, timestamps = _read_reviews(path)

    titles = genres = None
    notes: list[str] = []
    if meta_path is not None:
        meta = Path(meta_path)
        titles, genres, duplicates = read_amazon_metadata(meta)
        if duplicates:
            notes.append(f"{duplicates} repeated items in {meta.name} were ignored; the first record of each is used")
        check_ids_known(path, items, titles, layout.item, lambda index: index + 1, meta)

    return build_interaction_data(
        name or path.name.split(".json")[0],
        users,
        items,
        timestamps=timestamps,
        ratings=ratings,
        item_titles=titles,
        item_genres=genres,
        shuffle_seed=shuffle_seed,
        notes=notes,
    )


def read_amazon_metadata(path: Path) -> tuple[dict[str, str], dict[str, str], int]:
    """Read item titles and comma-separated categories; return them with the number of repeated items skipped.

    Amazon's 2018 metadata repeats some products, so a repeated id keeps its first record instead of failing.
    """
    if path.name.endswith((".item", ".item.gz")):
        titles, genres = read_item_text(path)
        return titles, genres, 0

    titles: dict[str, str] = {}
    genres: dict[str, str] = {}
    duplicates = 0
    for line_number, line in iter_lines(path):
        record = parse_json_object(path, line, line_number)
        item = record.get("parent_asin") or record.get("asin")
        if not isinstance(item, str) or not item:
            message = "missing or empty item id; each record needs 'asin' (2014/2018) or 'parent_asin' (2023)"
            raise DataFormatError(path, message, line=line_number, field="asin")
        if item in titles:
            duplicates += 1
            continue
        title = record.get("title")
        titles[item] = clean_title(title) if isinstance(title, str) else ""
        genres[item] = ", ".join(_categories(record))
    if not titles:
        raise DataFormatError(path, "the file is empty; it must list the reviewed items", line=1)
    if duplicates:
        logger.info("%s: %d repeated items ignored", path, duplicates)
    return titles, genres, duplicates


def _read_reviews(path: Path) -> tuple[ReviewLayout, list[str], list[str], np.ndarray, np.ndarray]:
    """Return the layout, then user ids, item ids, ratings and timestamps in seconds, one per line."""
    layout = None
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    timestamps: list[float] = []
    for line_number, line in iter_lines(path):
        record = parse_json_object(path, line, line_number)
        if layout is None:
            layout = _detect_layout(path, record, line_number)
        users.append(_text_field(path, record, layout.user, line_number))
        items.append(_text_field(path, record, layout.item, line_number))
        ratings.append(_number_field(path, record, layout.rating, line_number, expected="a number"))
        timestamps.append(_number_field(path, record, layout.timestamp, line_number, expected="a Unix time"))
    if layout is None:
        raise DataFormatError(path, "the file is empty; it must contain at least one review", line=1)
    logger.info("%s: %d reviews in the %s layout", path, len(users), layout.name)
    seconds = np.asarray(timestamps, dtype=np.float64) * layout.seconds_per_unit
    return layout, users, items, np.asarray(ratings, dtype=np.float32), seconds


def _detect_layout(path: Path, record: dict, line_number: int) -> ReviewLayout:
    if LAYOUT_2018.user in record:
        return LAYOUT_2018
    if LAYOUT_2023.user in record:
        return LAYOUT_2023
    message = (
        f"unknown review layout with fields {', '.join(sorted(record))}; expected reviewerID, asin, overall and "
        "unixReviewTime (2014/2018) or user_id, parent_asin, rating and timestamp (2023)"
    )
    raise DataFormatError(path, message, line=line_number, field=LAYOUT_2018.user)


def _text_field(path: Path, record: dict, field: str, line_number: int) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value:
        problem = "missing" if value is None else f"{value!r} is not a non-empty string"
        raise DataFormatError(path, f"{problem}; every review needs this id", line=line_number, field=field)
    return value


def _number_field(path: Path, record: dict, field: str, line_number: int, *, expected: str) -> float:
    value = record.get(field)
    if value is None:
        raise DataFormatError(path, "missing; every review needs this field", line=line_number, field=field)
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not np.isfinite(number):
        raise DataFormatError(path, f"{value!r} is not {expected}; fix or remove the line", line=line_number, field=field)
    return number


def _categories(record: dict) -> list[str]:
    """Collect a record's categories in order without repeats, skipping HTML fragments."""
    found: list[str] = []
    for field in _CATEGORY_LIST_FIELDS:
        value = record.get(field)
        if isinstance(value, list):
            for entry in value:
                found.extend(entry if isinstance(entry, list) else [entry])
    if not found:
        found = [record[field] for field in _MAIN_CATEGORY_FIELDS if field in record]
    cleaned = [clean_title(entry) for entry in found if isinstance(entry, str) and "<" not in entry]
    return list(dict.fromkeys(entry for entry in cleaned if entry))
