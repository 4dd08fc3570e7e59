"""Readers for MovieLens: the '::'-separated files of MovieLens-1M and the CSV files of ml-latest-small."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coldprompt.data._files import (
    check_ids_known,
    check_ids_present,
    field_count_error,
    find_column,
    find_file,
    parse_numbers,
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
from coldprompt.data.profiles import ML1M_AGE_GROUPS, ML1M_OCCUPATIONS, describe_user

logger = logging.getLogger(__name__)

_DAT_CONTENTS = "movies.dat and ratings.dat or ratings_no_timestamp.dat (users.dat is optional)"
_DAT_HINT = "; MovieLens-1M .dat files separate fields with '::' (use read_movielens_csv for ratings.csv)"
_DAT_RATINGS_FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")
_DAT_USERS_FIELDS = ("UserID", "Gender", "Age", "Occupation", "Zip-code")
_DAT_MOVIES_FIELDS = ("MovieID", "Title", "Genres")
_DAT_ENCODING = "latin-1"  # ML-1M's movies.dat is ISO-8859-1, e.g. "Café" is the byte 0xe9

_CSV_CONTENTS = "ratings.csv (userId,movieId,rating,timestamp) and movies.csv (movieId,title,genres)"
_NO_GENRES = "(no genres listed)"  # ml-latest-small's marker for a movie without genres


def read_movielens_dat(
    folder: str | Path,
    *,
    timestamped_subset: bool = False,
    shuffle_seed: int = 0,
    name: str | None = None,
) -> InteractionData:
    """Read MovieLens-1M from its native files: ratings, ``movies.dat`` and, when present, ``users.dat``.

    The ratings come from ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) or, when it is absent,
    from ``ratings_no_timestamp.dat`` (``UserID::MovieID::Rating``), in which case each user's interactions
    are shuffled with ``shuffle_seed``. ``timestamped_subset=True`` reads ``ratings_timestamps_partial.dat``
    instead, which contains only the ratings that have their original timestamp. ``ratings_ambiguous_movie_id.csv`` is
    never read, because its movie ids are uncertain; a note records the skipped ratings.
    Any file may be gzipped (``NAME.gz``). Raises DataFormatError on invalid lines.
    """
    root = require_folder(folder, _DAT_CONTENTS)
    ratings_path = _find_dat_ratings(root, timestamped_subset)
    movies_path = require_file(root, "movies.dat", _DAT_CONTENTS)
    users_path = find_file(root, "users.dat")
    notes = _dat_notes(root, ratings_path)

    titles, genres = _read_dat_movies(movies_path)
    profiles = _read_dat_users(users_path) if users_path is not None else None

    has_timestamps = ratings_path.name.split(".")[0] != "ratings_no_timestamp"
    field_names = _DAT_RATINGS_FIELDS if has_timestamps else _DAT_RATINGS_FIELDS[:3]
    lines = split_lines(read_text(ratings_path, _DAT_ENCODING))
    if not lines:
        raise DataFormatError(ratings_path, "the file is empty; it must list at least one rating", line=1)
    columns = split_fields(ratings_path, lines, "::", field_names, hint=_DAT_HINT)
    users, items = columns[0], columns[1]
    ratings, timestamps = _check_dat_ratings(ratings_path, columns, titles, movies_path, profiles, users_path)

    return build_interaction_data(
        name or root.name,
        users,
        items,
        timestamps=timestamps,
        ratings=ratings,
        item_titles=titles,
        item_genres=genres,
        user_profiles=profiles,
        shuffle_seed=shuffle_seed,
        notes=notes,
    )


def read_movielens_csv(folder: str | Path, *, shuffle_seed: int = 0, name: str | None = None) -> InteractionData:
    """Read MovieLens in the CSV layout of ml-latest-small: ``ratings.csv`` and ``movies.csv`` (UTF-8).

    Columns are found by their header names, so their order does not matter. ``timestamp`` is optional;
    without it each user's order is a shuffle seeded with ``shuffle_seed``. Quoted titles may contain commas,
    and LF or CRLF line endings both work. Either file may be gzipped. Raises DataFormatError on invalid rows.
    """
    root = require_folder(folder, _CSV_CONTENTS)
    ratings_path = require_file(root, "ratings.csv", _CSV_CONTENTS)
    movies_path = require_file(root, "movies.csv", _CSV_CONTENTS)
    titles, genres = _read_csv_movies(movies_path)

    header, columns, line_of = read_columns(ratings_path, read_text(ratings_path), ",")
    layout = "userId,movieId,rating (and optionally timestamp)"
    users = columns[find_column(ratings_path, header, "userId", layout)]
    items = columns[find_column(ratings_path, header, "movieId", layout)]
    ratings_column = columns[find_column(ratings_path, header, "rating", layout)]
    if not users:
        raise DataFormatError(ratings_path, "no ratings after the header; the file must list at least one", line=2)
    timestamps = None
    if "timestamp" in header:
        timestamp_column = columns[header.index("timestamp")]
        timestamps = parse_numbers(ratings_path, timestamp_column, "timestamp", line_of, expected="a Unix time")
    ratings = parse_numbers(ratings_path, ratings_column, "rating", line_of)
    check_ids_present(ratings_path, users, "userId", line_of)
    check_ids_present(ratings_path, items, "movieId", line_of)
    check_ids_known(ratings_path, items, titles, "movieId", line_of, movies_path)

    return build_interaction_data(
        name or root.name,
        users,
        items,
        timestamps=timestamps,
        ratings=ratings,
        item_titles=titles,
        item_genres=genres,
        shuffle_seed=shuffle_seed,
    )


def _find_dat_ratings(root: Path, timestamped_subset: bool) -> Path:
    if timestamped_subset:
        return require_file(root, "ratings_timestamps_partial.dat", "ratings_timestamps_partial.dat and movies.dat")
    for file_name in ("ratings.dat", "ratings_no_timestamp.dat"):
        path = find_file(root, file_name)
        if path is not None:
            return path
    raise FileNotFoundError(f"no ratings file in {root}; the folder must contain {_DAT_CONTENTS}")


def _dat_notes(root: Path, ratings_path: Path) -> list[str]:
    notes = []
    if ratings_path.name.startswith("ratings_timestamps_partial"):
        notes.append(
            f"{ratings_path.name} holds only the ratings that have their original timestamp, "
            "a subset of MovieLens-1M rather than the whole data set"
        )
    ambiguous_path = find_file(root, "ratings_ambiguous_movie_id.csv")
    if ambiguous_path is not None and not ratings_path.name.startswith("ratings.dat"):
        count = max(len(split_lines(read_text(ambiguous_path))) - 1, 0)  # minus the header line
        ratings = "1 rating" if count == 1 else f"{count} ratings"
        notes.append(f"skipped {ratings} with an uncertain movie id, listed in {ambiguous_path.name}")
    return notes


def _check_dat_ratings(
    path: Path,
    columns: Sequence[tuple[str, ...]],
    titles: dict[str, str],
    movies_path: Path,
    profiles: dict[str, str] | None,
    users_path: Path | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check the ids of split .dat ratings against the movie and user files; return ratings and timestamps."""

    def line_of(index: int) -> int:
        return index + 1

    users, items = columns[0], columns[1]
    check_ids_present(path, users, "UserID", line_of)
    check_ids_present(path, items, "MovieID", line_of)
    check_ids_known(path, items, titles, "MovieID", line_of, movies_path)
    if profiles is not None and users_path is not None:
        check_ids_known(path, users, profiles, "UserID", line_of, users_path)
    ratings = parse_numbers(path, columns[2], "Rating", line_of)
    timestamps = None
    if len(columns) == 4:
        timestamps = parse_numbers(path, columns[3], "Timestamp", line_of, expected="a Unix time")
    return ratings, timestamps


def _read_dat_movies(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Read ``MovieID::Title::Genres`` lines; a title may itself contain ':' or '::'."""
    titles: dict[str, str] = {}
    genres: dict[str, str] = {}
    lines = split_lines(read_text(path, _DAT_ENCODING))
    if not lines:
        raise DataFormatError(path, "the file is empty; it must list every rated movie", line=1)
    for line_number, line in enumerate(lines, start=1):
        movie_id, _, rest = line.partition("::")
        title, separator, genre_text = rest.rpartition("::")
        if not separator:
            fields = line.split("::")
            raise field_count_error(path, line, fields, "::", _DAT_MOVIES_FIELDS, line_number, _DAT_HINT)
        if not movie_id:
            raise DataFormatError(path, "the movie id is empty; every line needs one", line=line_number, field="MovieID")
        if movie_id in titles:
            raise DataFormatError(path, f"movie {movie_id} is listed twice; keep one line per movie", line=line_number, field="MovieID")
        titles[movie_id] = title
        genres[movie_id] = _join_genres(genre_text)
    return titles, genres


def _read_dat_users(path: Path) -> dict[str, str]:
    """Read ``UserID::Gender::Age::Occupation::Zip-code`` lines into one profile sentence per user."""
    lines = split_lines(read_text(path, _DAT_ENCODING))
    columns = split_fields(path, lines, "::", _DAT_USERS_FIELDS, hint=_DAT_HINT)
    profiles: dict[str, str] = {}
    for index, (user_id, gender, age, occupation) in enumerate(zip(*columns[:4])):
        line_number = index + 1
        if user_id in profiles:
            raise DataFormatError(path, f"user {user_id} is listed twice; keep one line per user", line=line_number, field="UserID")
        if gender not in ("F", "M"):
            raise DataFormatError(path, f"'{gender}' is not a gender code; use F or M", line=line_number, field="Gender")
        if age not in ML1M_AGE_GROUPS:
            codes = ", ".join(ML1M_AGE_GROUPS)
            raise DataFormatError(path, f"'{age}' is not an age code; use one of {codes}", line=line_number, field="Age")
        if occupation not in ML1M_OCCUPATIONS:
            raise DataFormatError(
                path, f"'{occupation}' is not an occupation code; use 0 to 20", line=line_number, field="Occupation"
            )
        profiles[user_id] = describe_user(gender, ML1M_AGE_GROUPS[age], ML1M_OCCUPATIONS[occupation])
    return profiles


def _read_csv_movies(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    header, columns, line_of = read_columns(path, read_text(path), ",")
    layout = "movieId,title,genres"
    movie_ids = columns[find_column(path, header, "movieId", layout)]
    title_column = columns[find_column(path, header, "title", layout)]
    genre_column = columns[find_column(path, header, "genres", layout)]
    check_ids_present(path, movie_ids, "movieId", line_of)

    titles: dict[str, str] = {}
    genres: dict[str, str] = {}
    for index, (movie_id, title, genre_text) in enumerate(zip(movie_ids, title_column, genre_column)):
        if movie_id in titles:
            raise DataFormatError(path, f"movie {movie_id} is listed twice; keep one row per movie", line=line_of(index), field="movieId")
        titles[movie_id] = title
        genres[movie_id] = "" if genre_text == _NO_GENRES else _join_genres(genre_text)
    return titles, genres


def _join_genres(genre_text: str) -> str:
    """Turn MovieLens's ``Action|Comedy`` into the comma-separated ``Action, Comedy`` the item text uses."""
    return ", ".join(genre for genre in genre_text.split("|") if genre)
