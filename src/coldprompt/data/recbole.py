"""Reader for RecBole atomic files: ``NAME.inter``, ``NAME.item`` and ``NAME.user``.

Each file is tab-separated with a typed header such as ``user_id:token  item_id:token  rating:float``; the types
are ``token``, ``token_seq`` (space-separated tokens), ``float`` and ``float_seq``. Fields are found by name,
so any RecBole data set works as long as it uses RecBole's default names ``user_id`` and ``item_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coldprompt.data._files import (
    check_ids_known,
    check_ids_present,
    clean_title,
    find_file,
    parse_numbers,
    read_columns,
    read_text,
    require_file,
    require_folder,
)
from coldprompt.data.build import build_interaction_data
from coldprompt.data.dataset import InteractionData
from coldprompt.data.errors import DataFormatError
from coldprompt.data.profiles import ML1M_AGE_GROUPS, ML1M_OCCUPATIONS, describe_user, occupation_clause

logger = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")

#: Item fields that hold the display title, the release year and the genres or categories, in order of preference.
TITLE_FIELDS = ("movie_title", "title", "name", "item_name", "product_name")
YEAR_FIELDS = ("release_year", "year")
GENRE_FIELDS = ("class", "genre", "genres", "categories", "category")

_CONTENTS = "NAME.inter (tab-separated, typed header) and optionally NAME.item and NAME.user"


@dataclass
class AtomicTable:
    """The columns of one atomic file, by field name, with the types its header declares."""

    path: Path
    names: list[str]
    types: list[str]
    columns: list[tuple[str, ...]]
    line_of: Callable[[int], int]  # row index to 1-based line number

    @property
    def num_rows(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def column(self, name: str) -> tuple[str, ...] | None:
        return self.columns[self.names.index(name)] if name in self.names else None

    def require(self, name: str) -> tuple[str, ...]:
        column = self.column(name)
        if column is None:
            fields = ", ".join(f"{n}:{t}" for n, t in zip(self.names, self.types))
            raise DataFormatError(self.path, f"missing header field; the header has only {fields}", line=1, field=name)
        return column

    def type_of(self, name: str) -> str:
        return self.types[self.names.index(name)]

    def first_present(self, candidates: tuple[str, ...]) -> str | None:
        return next((name for name in candidates if name in self.names), None)


def read_recbole_atomic(
    folder: str | Path,
    dataset_name: str | None = None,
    *,
    shuffle_seed: int = 0,
    name: str | None = None,
) -> InteractionData:
    """Read a RecBole data set from ``folder/NAME.inter`` plus ``NAME.item`` and ``NAME.user`` when present.

    With ``dataset_name=None`` the folder must contain exactly one ``*.inter`` file. The .inter file needs
    ``user_id`` and ``item_id`` and may have ``rating`` and ``timestamp``. Without a timestamp each user's
    order is a shuffle seeded with ``shuffle_seed``. Item text comes from title-like fields with a
    year-like field appended ("Toy Story (1995)") and genre-like fields; titles are HTML-unescaped and
    their whitespace collapsed.
    The profile sentence uses the age, gender and occupation fields of the .user file. Any file may be
    gzipped. Raises DataFormatError on invalid lines, including ids missing from the .item or .user file.
    """
    root = require_folder(folder, _CONTENTS)
    inter_path = _find_inter_file(root, dataset_name)
    dataset_name = dataset_name or inter_path.name.split(".inter")[0]
    item_path = find_file(root, f"{dataset_name}.item")
    user_path = find_file(root, f"{dataset_name}.user")

    inter = read_atomic_file(inter_path)
    users, items = inter.require("user_id"), inter.require("item_id")
    if not inter.num_rows:
        raise DataFormatError(inter_path, "no interactions after the header; the file must list at least one", line=2)
    check_ids_present(inter_path, users, "user_id", inter.line_of)
    check_ids_present(inter_path, items, "item_id", inter.line_of)

    titles = genres = profiles = None
    if item_path is not None:
        titles, genres = read_item_text(item_path)
        check_ids_known(inter_path, items, titles, "item_id", inter.line_of, item_path)
    if user_path is not None:
        profiles = _read_user_profiles(user_path)
        if profiles is not None:
            check_ids_known(inter_path, users, profiles, "user_id", inter.line_of, user_path)

    return build_interaction_data(
        name or dataset_name,
        users,
        items,
        timestamps=_optional_numbers(inter, "timestamp", expected="a Unix time"),
        ratings=_optional_numbers(inter, "rating", expected="a number"),
        item_titles=titles,
        item_genres=genres,
        user_profiles=profiles,
        shuffle_seed=shuffle_seed,
    )


def read_atomic_file(path: Path) -> AtomicTable:
    """Parse one atomic file and check its typed header; the values stay strings."""
    text = read_text(path)
    first_line = text.split("\n", 1)[0].rstrip("\r")
    if "\t" not in first_line:
        others = [shown for separator, shown in ((",", "','"), (";", "';'"), (" ", "a space")) if separator in first_line]
        if others:
            message = f"the header has no tab but contains {others[0]}; RecBole atomic files separate fields with tabs"
            raise DataFormatError(path, message, line=1)

    def field_names(header: list[str]) -> list[str]:
        return [name for name, _ in _parse_header(path, header)]

    header, columns, line_of = read_columns(path, text, "\t", field_names)
    typed_fields = _parse_header(path, header)
    names = [name for name, _ in typed_fields]
    types = [field_type for _, field_type in typed_fields]
    return AtomicTable(path, names, types, columns, line_of)


def _parse_header(path: Path, header: list[str]) -> list[tuple[str, str]]:
    """Split each ``name:type`` header entry, raising DataFormatError on a missing or unknown type."""
    typed_fields = []
    for entry in header:
        field_name, separator, field_type = entry.rpartition(":")
        if not separator or field_type not in FIELD_TYPES:
            message = f"'{entry}' is not 'name:type'; the type must be one of {', '.join(FIELD_TYPES)}"
            raise DataFormatError(path, message, line=1, field=field_name or entry)
        typed_fields.append((field_name, field_type))
    return typed_fields


def read_item_text(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Read an atomic .item file into a title and a comma-separated genre string per item id."""
    table = read_atomic_file(path)
    item_ids = table.require("item_id")
    check_ids_present(path, item_ids, "item_id", table.line_of)
    title_field = table.first_present(TITLE_FIELDS)
    year_field = table.first_present(YEAR_FIELDS)
    genre_field = table.first_present(GENRE_FIELDS)
    if title_field is None:
        logger.warning("%s has none of the title fields %s; items get no titles", path, ", ".join(TITLE_FIELDS))

    empty = ("",) * table.num_rows
    title_column = table.column(title_field) if title_field else empty
    year_column = table.column(year_field) if year_field else empty
    genre_column = table.column(genre_field) if genre_field else empty
    split_genres = genre_field is not None and table.type_of(genre_field) == "token_seq"

    titles: dict[str, str] = {}
    genres: dict[str, str] = {}
    for index, (item_id, title, year, genre_text) in enumerate(zip(item_ids, title_column, year_column, genre_column)):
        if item_id in titles:
            message = f"item {item_id} is listed twice; keep one line per item"
            raise DataFormatError(path, message, line=table.line_of(index), field="item_id")
        titles[item_id] = _title_with_year(clean_title(title), year.strip())
        genre_list = genre_text.split(" ") if split_genres else [genre_text]
        genres[item_id] = ", ".join(genre.strip() for genre in genre_list if genre.strip())
    return titles, genres


def _find_inter_file(root: Path, dataset_name: str | None) -> Path:
    if dataset_name is not None:
        return require_file(root, f"{dataset_name}.inter", _CONTENTS)
    found = sorted(root.glob("*.inter")) + sorted(root.glob("*.inter.gz"))
    if len(found) != 1:
        listed = ", ".join(path.name for path in found) or "none"
        raise FileNotFoundError(
            f"{root} must contain exactly one *.inter file when no dataset name is given (found: {listed}); "
            "pass the dataset name to choose one"
        )
    return found[0]


def _optional_numbers(table: AtomicTable, name: str, *, expected: str) -> np.ndarray | None:
    column = table.column(name)
    if column is None:
        return None
    return parse_numbers(table.path, column, name, table.line_of, expected=expected)


def _title_with_year(title: str, year: str) -> str:
    """Append the year as "Title (1995)" unless it is missing or already there; "1995.0" becomes "1995"."""
    if year.endswith(".0"):
        year = year[:-2]
    if not title or not year or title.endswith(f"({year})"):
        return title
    return f"{title} ({year})"


def _read_user_profiles(path: Path) -> dict[str, str] | None:
    """Build one profile sentence per user from the age, gender and occupation fields; None when none exist."""
    table = read_atomic_file(path)
    user_ids = table.require("user_id")
    check_ids_present(path, user_ids, "user_id", table.line_of)
    if not any(name in table.names for name in ("age", "gender", "occupation")):
        logger.info("%s has no age, gender or occupation field; users get no profiles", path)
        return None

    empty = ("",) * table.num_rows
    ages = table.column("age") or empty
    genders = table.column("gender") or empty
    occupations = table.column("occupation") or empty
    # RecBole's conversion of MovieLens-1M keeps users.dat's codes (age 25 = 25-34, occupation 12 = programmer).
    coded = (
        table.column("occupation") is not None
        and set(occupations) <= ML1M_OCCUPATIONS.keys()
        and set(ages) <= ML1M_AGE_GROUPS.keys() | {""}
    )

    profiles: dict[str, str] = {}
    for index, (user_id, age, gender, occupation) in enumerate(zip(user_ids, ages, genders, occupations)):
        if user_id in profiles:
            message = f"user {user_id} is listed twice; keep one line per user"
            raise DataFormatError(path, message, line=table.line_of(index), field="user_id")
        if coded:
            age_text, occupation_text = ML1M_AGE_GROUPS.get(age, ""), ML1M_OCCUPATIONS[occupation]
        else:
            age_text, occupation_text = age.strip(), occupation_clause(occupation)
        profiles[user_id] = describe_user(gender, age_text, occupation_text)
    return profiles
