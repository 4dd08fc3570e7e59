"""Reader for the LC-Rec layout: per-user item sequences in time order without timestamps, plus id maps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from coldprompt.data._files import (
    clean_title,
    find_column,
    find_file,
    read_columns,
    read_text,
    require_file,
    require_folder,
    split_fields,
    split_lines,
)
from coldprompt.data.build import build_interaction_data
from coldprompt.data.dataset import InteractionData
from coldprompt.data.errors import DataFormatError

logger = logging.getLogger(__name__)

_AMBIGUOUS = "ambiguous_pair"  # match value of titles.tsv rows whose title could belong to either of two items
_TITLE_COLUMNS = "lcrec_item_id, asin, title and match"


def read_lcrec_sequences(folder: str | Path, prefix: str = "Games", *, name: str | None = None) -> InteractionData:
    """Read ``PREFIX.inter.json``, ``PREFIX.item2id``, ``PREFIX.user2id`` and, if present, ``PREFIX.titles.tsv``.

    ``PREFIX.inter.json`` maps each user index to the item indices in time order, so the file order is kept.
    The id maps turn indices into the raw ids: ASINs for items and reviewerIDs for users. Titles are
    HTML-unescaped; a row with ``match == ambiguous_pair`` keeps both candidate titles joined by " || ".
    Any file may be gzipped. Raises DataFormatError on invalid lines and on indices missing from a map.
    """
    contents = f"{prefix}.inter.json, {prefix}.item2id and {prefix}.user2id ({prefix}.titles.tsv is optional)"
    root = require_folder(folder, contents)
    inter_path = require_file(root, f"{prefix}.inter.json", contents)
    item_map_path = require_file(root, f"{prefix}.item2id", contents)
    user_map_path = require_file(root, f"{prefix}.user2id", contents)
    titles_path = find_file(root, f"{prefix}.titles.tsv")

    asins = _read_id_map(item_map_path, "ASIN")
    reviewer_ids = _read_id_map(user_map_path, "reviewerID")
    user_indices, item_indices = _read_sequences(inter_path, reviewer_ids, asins, item_map_path, user_map_path)
    notes = [
        f"{inter_path.name} lists each user's items in time order but has no timestamps; Amazon review dates "
        "are per day, so the order of items reviewed on the same day is arbitrary"
    ]
    titles = None
    if titles_path is not None:
        titles, ambiguous = _read_titles(titles_path, asins)
        if ambiguous:
            notes.append(
                f"{ambiguous} items in {titles_path.name} have a title that could belong to another listing; "
                "their title contains both candidates joined by ' || '"
            )

    return build_interaction_data(
        name or prefix,
        reviewer_ids[user_indices],
        asins[item_indices],
        item_titles=titles,
        source_is_ordered=True,
        notes=notes,
    )


def _read_id_map(path: Path, raw_field: str) -> np.ndarray:
    """Read ``raw_id<TAB>index`` lines into an array of raw ids by index; an index without a line is None."""
    lines = split_lines(read_text(path))
    if not lines:
        raise DataFormatError(path, f"the file is empty; it must map every {raw_field} to an index", line=1)
    raw_ids, index_texts = split_fields(path, lines, "\t", (raw_field, "index"))
    for row, index_text in enumerate(index_texts):
        if not _is_digits(index_text):
            message = f"'{index_text}' is not a non-negative integer index"
            raise DataFormatError(path, message, line=row + 1, field="index")
    indices = np.array(index_texts, dtype=np.int64)

    lookup = np.full(int(indices.max()) + 1, None, dtype=object)
    for row, (raw_id, index) in enumerate(zip(raw_ids, indices)):
        if lookup[index] is not None:
            raise DataFormatError(path, f"index {index} is given twice; each index needs one id", line=row + 1, field="index")
        if not raw_id:
            raise DataFormatError(path, f"the {raw_field} is empty; every line needs one", line=row + 1, field=raw_field)
        lookup[index] = raw_id
    return lookup


def _read_sequences(
    path: Path, reviewer_ids: np.ndarray, asins: np.ndarray, item_map_path: Path, user_map_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Return the user and item index of every interaction, users in file order and each user's items in order."""
    text = read_text(path)
    try:
        # Keep the object as (key, value) pairs, because a dict would silently drop all but the last repeated key.
        sequences = json.loads(text, object_pairs_hook=list)
    except json.JSONDecodeError as error:
        message = f"malformed JSON ({error.msg} at column {error.colno}); expected {{\"user index\": [item index, ...]}}"
        raise DataFormatError(path, message, line=error.lineno) from None
    if not (isinstance(sequences, list) and text.lstrip().startswith("{")):
        raise DataFormatError(path, "expected a JSON object mapping user indices to lists of item indices", line=1)
    if not sequences:
        raise DataFormatError(path, "the object is empty; it must list at least one user's items", line=1)

    valid_items = {index for index, asin in enumerate(asins) if asin is not None}
    seen_users: set[str] = set()
    users: list[int] = []
    lengths: list[int] = []
    item_lists: list[list[int]] = []
    for key, items in sequences:
        if key in seen_users:
            message = f"user index '{key}' appears twice; merge its items into one list"
            raise DataFormatError(path, message, line=_line_of_key(text, key), field=key)
        seen_users.add(key)
        if not (_is_digits(key) and _is_index(int(key), reviewer_ids)):
            message = f"user index '{key}' is not in {user_map_path.name}; add it there or remove the user"
            raise DataFormatError(path, message, line=_line_of_key(text, key), field=key)
        if not isinstance(items, list):
            message = f"expected a list of item indices but found {type(items).__name__}"
            raise DataFormatError(path, message, line=_line_of_key(text, key), field=key)
        invalid = [item for item in items if type(item) is not int or item not in valid_items]
        if invalid:
            message = f"{invalid[0]!r} is not an item index in {item_map_path.name}; add it there or remove it"
            raise DataFormatError(path, message, line=_line_of_key(text, key), field=key)
        users.append(int(key))
        lengths.append(len(items))
        item_lists.append(items)

    user_indices = np.repeat(np.asarray(users, dtype=np.int64), lengths)
    item_indices = np.fromiter((item for items in item_lists for item in items), dtype=np.int64, count=sum(lengths))
    return user_indices, item_indices


def _read_titles(path: Path, asins: np.ndarray) -> tuple[dict[str, str], int]:
    """Read titles by ASIN, checking each row's ASIN against the item map; return them and the ambiguous count."""
    header, columns, line_of = read_columns(path, read_text(path), "\t")
    item_indices = columns[find_column(path, header, "lcrec_item_id", _TITLE_COLUMNS)]
    row_asins = columns[find_column(path, header, "asin", _TITLE_COLUMNS)]
    raw_titles = columns[find_column(path, header, "title", _TITLE_COLUMNS)]
    matches = columns[find_column(path, header, "match", _TITLE_COLUMNS)]

    titles: dict[str, str] = {}
    ambiguous = 0
    for row, (index_text, asin, title, match) in enumerate(zip(item_indices, row_asins, raw_titles, matches)):
        index = int(index_text) if _is_digits(index_text) else -1
        expected = asins[index] if _is_index(index, asins) else None
        if expected != asin:
            problem = f"belongs to '{expected}'" if expected else "is missing"
            message = (
                f"item index '{index_text}' {problem} in the item map, not '{asin}'; "
                "rebuild the titles file from the same item map"
            )
            raise DataFormatError(path, message, line=line_of(row), field="lcrec_item_id")
        # An ambiguous row keeps both candidate titles joined by " || " rather than guessing one.
        ambiguous += match == _AMBIGUOUS
        titles[asin] = clean_title(title)
    missing = sum(1 for asin in asins if asin is not None and asin not in titles)
    if missing:
        logger.warning("%s has no title for %d items; they are shown by ASIN", path, missing)
    return titles, ambiguous


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _is_index(index: int, lookup: np.ndarray) -> bool:
    return 0 <= index < len(lookup) and lookup[index] is not None


def _line_of_key(text: str, key: str) -> int:
    """Return the 1-based line on which ``"key":`` first appears, so errors point into pretty-printed files too."""
    position = text.find(f'"{key}"')
    return text.count("\n", 0, max(position, 0)) + 1
