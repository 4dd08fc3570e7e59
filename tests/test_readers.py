"""Data readers on tiny hand-written files: good layouts, each kind of bad input, and the shared policies."""

import gzip
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from coldprompt.data.build import MissingTimestampsWarning
from coldprompt.data.dataset import ORDER_SEEDED_SHUFFLE, ORDER_SOURCE, ORDER_TIMESTAMP
from coldprompt.data.errors import DataFormatError
from coldprompt.data.readers import (
    read_amazon_reviews,
    read_lcrec_sequences,
    read_movielens_csv,
    read_movielens_dat,
    read_recbole_atomic,
)
from coldprompt.data.registry import DATASET_NAMES, load_dataset


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode(encoding)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def sequence_ids(data, user_id: str) -> list[str]:
    """Return a user's raw item ids in interaction order."""
    return [data.item_ids[item] for item in data.sequences()[data.user_ids.index(user_id)]]


# --- MovieLens-1M .dat ------------------------------------------------------------------------------------------

ML_MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "12::Dracula: Dead and Loving It (1995)::Comedy|Horror\n"
    "582::Metisse (Café au Lait) (1993)::Comedy\n"
)
ML_USERS = "1::F::25::12::48067\n2::M::56::13::70072\n"
ML_RATINGS = "1::12::5::978300760\n1::1::4::978300000\n2::582::3::978200000\n"


def make_ml1m(folder: Path, ratings: str = ML_RATINGS, ratings_name: str = "ratings.dat") -> Path:
    write(folder / "movies.dat", ML_MOVIES, "latin-1")
    write(folder / "users.dat", ML_USERS, "latin-1")
    write(folder / ratings_name, ratings, "latin-1")
    return folder


def test_dat_counts_and_ids(tmp_path):
    data = read_movielens_dat(make_ml1m(tmp_path))
    assert data.num_interactions == 3
    assert data.num_users == 2
    assert data.num_items == 3
    assert data.user_ids == ["1", "2"]
    assert data.item_ids == ["1", "12", "582"]
    assert data.order == ORDER_TIMESTAMP


def test_dat_titles_keep_colons_and_latin1(tmp_path):
    data = read_movielens_dat(make_ml1m(tmp_path))
    assert data.item_titles[data.item_ids.index("12")] == "Dracula: Dead and Loving It (1995)"
    assert data.item_titles[data.item_ids.index("582")] == "Metisse (Café au Lait) (1993)"
    assert data.item_genres[data.item_ids.index("1")] == "Animation, Children's, Comedy"


def test_dat_profiles_are_sentences(tmp_path):
    data = read_movielens_dat(make_ml1m(tmp_path))
    assert data.user_profiles == [
        "A female user aged 25-34 who works as a programmer.",
        "A male user aged 56 or older who is retired.",
    ]


def test_dat_orders_by_timestamp(tmp_path):
    data = read_movielens_dat(make_ml1m(tmp_path))
    assert sequence_ids(data, "1") == ["1", "12"]
    assert data.timestamps[data.users == 0].tolist() == [978300000.0, 978300760.0]
    assert data.ratings[data.users == 0].tolist() == [4.0, 5.0]


def test_dat_without_users_file_has_no_profiles(tmp_path):
    make_ml1m(tmp_path)
    (tmp_path / "users.dat").unlink()
    assert read_movielens_dat(tmp_path).user_profiles is None


def test_dat_reads_gzipped_ratings(tmp_path):
    make_ml1m(tmp_path)
    (tmp_path / "ratings.dat").unlink()
    write(tmp_path / "ratings.dat.gz", ML_RATINGS)
    assert read_movielens_dat(tmp_path).num_interactions == 3


def test_dat_without_timestamps_shuffles_with_warning(tmp_path):
    make_ml1m(tmp_path, "1::12::5\n1::1::4\n2::582::3\n", ratings_name="ratings_no_timestamp.dat")
    with pytest.warns(MissingTimestampsWarning, match="shuffle seeded with 0"):
        data = read_movielens_dat(tmp_path)
    assert data.order == ORDER_SEEDED_SHUFFLE
    assert np.isnan(data.timestamps).all()
    assert any("no timestamps" in note for note in data.notes)


def test_dat_ambiguous_file_is_skipped_with_note(tmp_path):
    make_ml1m(tmp_path, "1::12::5\n", ratings_name="ratings_no_timestamp.dat")
    write(tmp_path / "ratings_ambiguous_movie_id.csv", "user_id,rating,candidate_movie_ids,source_item_index\n46,5,3278|3279,3055\n")
    with pytest.warns(MissingTimestampsWarning):
        data = read_movielens_dat(tmp_path)
    assert data.num_interactions == 1
    assert "skipped 1 rating with an uncertain movie id, listed in ratings_ambiguous_movie_id.csv" in data.notes


def test_dat_timestamped_subset_reads_partial_file(tmp_path):
    make_ml1m(tmp_path, "1::12::5\n1::1::4\n2::582::3\n", ratings_name="ratings_no_timestamp.dat")
    write(tmp_path / "ratings_timestamps_partial.dat", "1::12::5::978300760\n")
    data = read_movielens_dat(tmp_path, timestamped_subset=True)
    assert data.num_interactions == 1
    assert data.order == ORDER_TIMESTAMP
    assert any("subset of MovieLens-1M" in note for note in data.notes)


def test_dat_prefers_full_ratings_file(tmp_path):
    make_ml1m(tmp_path)
    write(tmp_path / "ratings_no_timestamp.dat", "1::12::5\n")
    assert read_movielens_dat(tmp_path).num_interactions == 3


@pytest.mark.parametrize(
    ("ratings", "pattern"),
    [
        ("1::12::5::978300760\n1,1,4,978300000\n", r"line 2, field 'MovieID': missing.*contains ',' instead of '::'; MovieLens-1M .dat files"),
        ("1\t12\t5\t978300760\n", r"line 1, field 'MovieID': missing.*contains a tab instead of '::'"),
        ("1::12::5::978300760\n1::1::4\n", r"line 2, field 'Timestamp': missing"),
        ("1::12::5::978300760::7\n", r"line 1, field 'Timestamp': expected 4 fields .* found 5; remove the extra fields"),
        ("1::12::5::978300760\n1::1::five::978300000\n", r"line 2, field 'Rating': 'five' is not a number"),
        ("1::12::5::978300760\n1::1::4::soon\n", r"line 2, field 'Timestamp': 'soon' is not a Unix time"),
        ("1::12::nan::978300760\n", r"line 1, field 'Rating': 'nan' is not a number"),
        ("1::12::5::978300760\n1::999::4::978300000\n", r"line 2, field 'MovieID': '999' is not in movies.dat"),
        ("1::12::5::978300760\n7::1::4::978300000\n", r"line 2, field 'UserID': '7' is not in users.dat"),
        ("1::12::5::978300760\n::1::4::978300000\n", r"line 2, field 'UserID': the id is empty"),
        ("1::12::5::978300760\n\n1::1::4::978300000\n", r"line 2: the line is empty"),
        ("", r"ratings.dat, line 1: the file is empty"),
    ],
)
def test_dat_rejects_bad_ratings(tmp_path, ratings, pattern):
    make_ml1m(tmp_path, ratings)
    with pytest.raises(DataFormatError, match=pattern) as caught:
        read_movielens_dat(tmp_path)
    assert str(tmp_path / "ratings.dat") in str(caught.value)


@pytest.mark.parametrize(
    ("file_name", "text", "pattern"),
    [
        ("movies.dat", "1::Toy Story (1995)\n", r"movies.dat, line 1, field 'Genres': missing"),
        ("movies.dat", "1::Toy Story (1995)::Comedy\n1::Copy (1995)::Comedy\n", r"line 2, field 'MovieID': movie 1 is listed twice"),
        ("users.dat", "1::F::25::12::48067\n2::M::30::13::70072\n", r"users.dat, line 2, field 'Age': '30' is not an age code"),
        ("users.dat", "1::X::25::12::48067\n", r"users.dat, line 1, field 'Gender': 'X' is not a gender code"),
        ("users.dat", "1::F::25::21::48067\n", r"users.dat, line 1, field 'Occupation': '21' is not an occupation code"),
        ("users.dat", "1,F,25,12,48067\n", r"users.dat, line 1, field 'Gender': missing.*','"),
    ],
)
def test_dat_rejects_bad_movies_and_users(tmp_path, file_name, text, pattern):
    make_ml1m(tmp_path, "1::1::5::978300760\n")
    write(tmp_path / file_name, text, "latin-1")
    with pytest.raises(DataFormatError, match=pattern):
        read_movielens_dat(tmp_path)


def test_dat_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        read_movielens_dat(tmp_path / "absent")
    write(tmp_path / "movies.dat", ML_MOVIES)
    with pytest.raises(FileNotFoundError, match="ratings.dat or ratings_no_timestamp.dat"):
        read_movielens_dat(tmp_path)
    with pytest.raises(FileNotFoundError, match="ratings_timestamps_partial.dat"):
        read_movielens_dat(tmp_path, timestamped_subset=True)


def test_dat_requires_movies_file(tmp_path):
    write(tmp_path / "ratings.dat", ML_RATINGS)
    with pytest.raises(FileNotFoundError, match=r"movies.dat not found.*must contain movies.dat"):
        read_movielens_dat(tmp_path)


# --- Shared policies: duplicates and missing timestamps -----------------------------------------------------------


def test_duplicate_keeps_first_in_time_order(tmp_path):
    ratings = "1::12::2::978300900\n1::12::5::978300100\n1::1::4::978300500\n"
    data = read_movielens_dat(make_ml1m(tmp_path, ratings))
    assert data.num_interactions == 2
    assert sequence_ids(data, "1") == ["12", "1"]
    assert data.ratings[data.item_ids.index("12") == data.items].tolist() == [5.0]
    assert "1 duplicate (user, item) interactions dropped; the first of each pair is kept" in data.notes


def shuffled_order(tmp_path: Path, seed: int) -> list[str]:
    ratings = "".join(f"1::{movie}::4\n" for movie in range(1, 13))
    movies = "".join(f"{movie}::Movie {movie} (2000)::Drama\n" for movie in range(1, 13))
    write(tmp_path / "movies.dat", movies)
    write(tmp_path / "ratings_no_timestamp.dat", ratings)
    with pytest.warns(MissingTimestampsWarning):
        data = read_movielens_dat(tmp_path, shuffle_seed=seed)
    assert data.order == ORDER_SEEDED_SHUFFLE
    return sequence_ids(data, "1")


def test_shuffle_same_seed_same_order(tmp_path):
    assert shuffled_order(tmp_path, 3) == shuffled_order(tmp_path, 3)


def test_shuffle_different_seed_different_order(tmp_path):
    first, second = shuffled_order(tmp_path, 3), shuffled_order(tmp_path, 4)
    assert first != second
    assert sorted(first) == sorted(second)


# --- MovieLens CSV ------------------------------------------------------------------------------------------------

CSV_MOVIES = (
    "movieId,title,genres\r\n"
    "1,Toy Story (1995),Adventure|Animation|Children\r\n"
    '4995,"Beautiful Mind, A (2001)",Drama|Romance\r\n'
    "582,Café (2019),(no genres listed)\r\n"
)
CSV_RATINGS = "userId,movieId,rating,timestamp\r\n1,4995,4.5,964982703\r\n1,1,4.0,964981247\r\n2,582,0.5,964982224\r\n"


def make_csv(folder: Path, ratings: str = CSV_RATINGS, movies: str = CSV_MOVIES) -> Path:
    write(folder / "movies.csv", movies)
    write(folder / "ratings.csv", ratings)
    return folder


def test_csv_counts_and_titles(tmp_path):
    data = read_movielens_csv(make_csv(tmp_path))
    assert (data.num_interactions, data.num_users, data.num_items) == (3, 2, 3)
    assert data.item_titles[data.item_ids.index("4995")] == "Beautiful Mind, A (2001)"
    assert data.item_titles[data.item_ids.index("582")] == "Café (2019)"
    assert data.item_genres[data.item_ids.index("4995")] == "Drama, Romance"
    assert data.item_genres[data.item_ids.index("582")] == ""
    assert data.ratings[data.items == data.item_ids.index("582")].tolist() == [0.5]


def test_csv_orders_by_timestamp(tmp_path):
    data = read_movielens_csv(make_csv(tmp_path))
    assert data.order == ORDER_TIMESTAMP
    assert sequence_ids(data, "1") == ["1", "4995"]


def test_csv_columns_found_by_name(tmp_path):
    ratings = "timestamp,rating,movieId,userId\n964982703,4.5,4995,1\n"
    data = read_movielens_csv(make_csv(tmp_path, ratings))
    assert data.user_ids == ["1"]
    assert data.item_ids == ["4995"]
    assert data.ratings.tolist() == [4.5]


def test_csv_without_timestamp_shuffles(tmp_path):
    make_csv(tmp_path, "userId,movieId,rating\n1,1,4.0\n1,4995,3.0\n")
    with pytest.warns(MissingTimestampsWarning):
        data = read_movielens_csv(tmp_path)
    assert data.order == ORDER_SEEDED_SHUFFLE


@pytest.mark.parametrize(
    ("ratings", "pattern"),
    [
        ("userId,movieId,timestamp\n1,1,964982703\n", r"ratings.csv, line 1, field 'rating': missing column"),
        ("userId;movieId;rating;timestamp\n1;1;4;964982703\n", r"line 1, field 'userId': missing column.*';'"),
        ("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,4995,good,964982704\n", r"line 3, field 'rating': 'good' is not a number"),
        ("userId,movieId,rating,timestamp\n1,1,4.0,yesterday\n", r"line 2, field 'timestamp': 'yesterday' is not a Unix time"),
        ("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,77,4.0,964982703\n", r"line 3, field 'movieId': '77' is not in movies.csv"),
        ("userId,movieId,rating,timestamp\n1,1,4.0\n", r"line 2, field 'timestamp': missing"),
        ("userId,movieId,rating,timestamp\n", r"line 2: no ratings after the header"),
        ("", r"line 1: the file is empty"),
    ],
)
def test_csv_rejects_bad_ratings(tmp_path, ratings, pattern):
    make_csv(tmp_path, ratings)
    with pytest.raises(DataFormatError, match=pattern):
        read_movielens_csv(tmp_path)


def test_csv_rejects_unclosed_quote(tmp_path):
    movies = 'movieId,title,genres\n1,Toy Story (1995),Comedy\n2,"Broken, A (1999)x,Drama\n'
    make_csv(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n", movies)
    with pytest.raises(DataFormatError, match=r"movies.csv, line 3: invalid quoting"):
        read_movielens_csv(tmp_path)


def test_csv_missing_files_are_named(tmp_path):
    write(tmp_path / "ratings.csv", CSV_RATINGS)
    with pytest.raises(FileNotFoundError, match=r"movies.csv not found.*ratings.csv .* and movies.csv"):
        read_movielens_csv(tmp_path)


# --- RecBole atomic files -----------------------------------------------------------------------------------------

RB_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "196\t302\t4\t881250000\n"
    "186\t302\t3\t891717742\n"
)
RB_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n"
    "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
)
RB_USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "196\t49\tM\twriter\t55105\n"
    "186\t39\tF\texecutive\t00000\n"
)


def make_recbole(folder: Path, inter: str = RB_INTER, item: str | None = RB_ITEM, user: str | None = RB_USER) -> Path:
    write(folder / "toy.inter", inter)
    if item is not None:
        write(folder / "toy.item", item)
    if user is not None:
        write(folder / "toy.user", user)
    return folder


def test_recbole_counts_and_text(tmp_path):
    data = read_recbole_atomic(make_recbole(tmp_path), "toy")
    assert data.name == "toy"
    assert (data.num_interactions, data.num_users, data.num_items) == (3, 2, 2)
    assert data.item_titles == ["Kolya (1996)", "L.A. Confidential (1997)"]
    assert data.item_genres == ["Comedy", "Crime, Film-Noir, Mystery, Thriller"]
    assert sequence_ids(data, "196") == ["302", "242"]


def test_recbole_profiles_from_user_fields(tmp_path):
    data = read_recbole_atomic(make_recbole(tmp_path))
    assert data.user_ids == ["186", "196"]
    assert data.user_profiles == [
        "A female user aged 39 whose occupation is executive.",
        "A male user aged 49 whose occupation is writer.",
    ]


def test_recbole_ml1m_codes_use_code_tables(tmp_path):
    user = "user_id:token\tage:token\tgender:token\toccupation:token\n196\t25\tF\t12\n186\t1\tM\t10\n"
    data = read_recbole_atomic(make_recbole(tmp_path, user=user))
    assert data.user_profiles == [
        "A male user aged under 18 who is a K-12 student.",
        "A female user aged 25-34 who works as a programmer.",
    ]


def test_recbole_finds_single_inter_file(tmp_path):
    data = read_recbole_atomic(make_recbole(tmp_path, item=None, user=None))
    assert data.name == "toy"
    assert data.item_titles == ["", ""]
    assert data.user_profiles is None


def test_recbole_gzipped_item_with_quoted_tab(tmp_path):
    make_recbole(tmp_path, item=None)
    item = 'item_id:token\ttitle:token\tbrand:token\n242\t"Kolya &amp;\tfriends"\tx\n302\tPlain\t\n'
    write(tmp_path / "toy.item.gz", item)
    data = read_recbole_atomic(tmp_path)
    assert data.item_titles == ["Kolya & friends", "Plain"]


def test_recbole_without_timestamp_shuffles(tmp_path):
    inter = "user_id:token\titem_id:token\n196\t242\n196\t302\n"
    with pytest.warns(MissingTimestampsWarning):
        data = read_recbole_atomic(make_recbole(tmp_path, inter))
    assert data.order == ORDER_SEEDED_SHUFFLE
    assert np.isnan(data.ratings).all()


@pytest.mark.parametrize(
    ("inter", "pattern"),
    [
        ("user_id:token,item_id:token\n196,242\n", r"toy.inter, line 1: the header has no tab but contains ','"),
        ("user_id:token\trating:float\n196\t3\n", r"line 1, field 'item_id': missing header field"),
        ("user_id\titem_id:token\n196\t242\n", r"line 1, field 'user_id': 'user_id' is not 'name:type'"),
        ("user_id:token\titem_id:int\n196\t242\n", r"line 1, field 'item_id': 'item_id:int' is not 'name:type'"),
        ("user_id:token\titem_id:token\trating:float\n196\t242\t3\n196\t302\tgood\n", r"line 3, field 'rating': 'good' is not a number"),
        ("user_id:token\titem_id:token\ttimestamp:float\n196\t242\t\n", r"line 2, field 'timestamp': '' is not a Unix time"),
        ("user_id:token\titem_id:token\n196\t242\n196\t999\n", r"line 3, field 'item_id': '999' is not in toy.item"),
        ("user_id:token\titem_id:token\n196\t242\n7\t242\n", r"line 3, field 'user_id': '7' is not in toy.user"),
        ("user_id:token\titem_id:token\n196 242\n", r"line 2, field 'item_id': missing.*a space instead of a tab"),
        ("user_id:token\titem_id:token\n196\t242\t9\n", r"line 2, field 'item_id': expected 2 fields"),
        ("user_id:token\titem_id:token\n", r"line 2: no interactions after the header"),
    ],
)
def test_recbole_rejects_bad_inter(tmp_path, inter, pattern):
    make_recbole(tmp_path, inter)
    with pytest.raises(DataFormatError, match=pattern):
        read_recbole_atomic(tmp_path)


def test_recbole_rejects_repeated_item(tmp_path):
    make_recbole(tmp_path, item="item_id:token\ttitle:token\n242\tA\n302\tB\n242\tC\n")
    with pytest.raises(DataFormatError, match=r"toy.item, line 4, field 'item_id': item 242 is listed twice"):
        read_recbole_atomic(tmp_path)


def test_recbole_needs_one_inter_file(tmp_path):
    make_recbole(tmp_path)
    write(tmp_path / "other.inter", RB_INTER)
    with pytest.raises(FileNotFoundError, match=r"exactly one \*.inter file .*other.inter, toy.inter"):
        read_recbole_atomic(tmp_path)
    assert read_recbole_atomic(tmp_path, "other").name == "other"


# --- Amazon reviews -----------------------------------------------------------------------------------------------


def review_2018(user: str, item: str, rating: float, day: int) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": day, "reviewText": "ok"})


REVIEWS_2018 = "\n".join(
    [review_2018("U1", "B01", 5.0, 1400000000), review_2018("U1", "B02", 3.0, 1300000000), review_2018("U2", "B01", 4.0, 1350000000)]
) + "\n"
META_2014 = (
    "{'asin': 'B01', 'title': 'Soap &amp; Water', 'categories': [['Beauty', 'Bath'], ['Beauty', 'Soap']]}\n"
    "{'asin': 'B02', 'title': \"Jo's Shampoo\", 'categories': [['Beauty']]}\n"
)


def test_amazon_2018_with_2014_literal_metadata(tmp_path):
    reviews = write(tmp_path / "reviews.json", REVIEWS_2018)
    meta = write(tmp_path / "meta.json", META_2014)
    data = read_amazon_reviews(reviews, meta)
    assert data.name == "reviews"
    assert (data.num_interactions, data.num_users, data.num_items) == (3, 2, 2)
    assert data.item_titles == ["Soap & Water", "Jo's Shampoo"]
    assert data.item_genres == ["Beauty, Bath, Soap", "Beauty"]
    assert sequence_ids(data, "U1") == ["B02", "B01"]
    assert data.timestamps[data.users == 0].tolist() == [1300000000.0, 1400000000.0]


def test_amazon_2023_milliseconds_to_seconds(tmp_path):
    lines = [
        {"user_id": "AX", "parent_asin": "P1", "asin": "C1", "rating": 4.0, "timestamp": 1588687728923},
        {"user_id": "AX", "parent_asin": "P2", "asin": "C2", "rating": 2.0, "timestamp": 1588615855070},
    ]
    reviews = write(tmp_path / "All_Beauty.jsonl.gz", "".join(json.dumps(line) + "\n" for line in lines))
    meta_lines = [
        {"parent_asin": "P1", "title": "Lip Balm", "main_category": "All Beauty", "categories": []},
        {"parent_asin": "P2", "title": "Brush", "main_category": "All Beauty", "categories": ["Tools", "Brushes"]},
    ]
    meta = write(tmp_path / "meta_All_Beauty.jsonl", "".join(json.dumps(line) + "\n" for line in meta_lines))
    data = read_amazon_reviews(reviews, meta)
    assert data.name == "All_Beauty"
    assert sequence_ids(data, "AX") == ["P2", "P1"]
    assert data.timestamps.tolist() == [1588615855.07, 1588687728.923]
    assert data.item_titles == ["Lip Balm", "Brush"]
    assert data.item_genres == ["All Beauty", "Tools, Brushes"]


def test_amazon_recbole_item_file_as_metadata(tmp_path):
    reviews = write(tmp_path / "reviews.json.gz", REVIEWS_2018)
    meta = write(tmp_path / "beauty.item.gz", "item_id:token\ttitle:token\nB01\tSoap &amp; Water\nB02\tShampoo\nB03\tUnused\n")
    data = read_amazon_reviews(reviews, meta)
    assert data.item_titles == ["Soap & Water", "Shampoo"]


def test_amazon_without_metadata(tmp_path):
    data = read_amazon_reviews(write(tmp_path / "reviews.json", REVIEWS_2018))
    assert data.item_titles == ["", ""]
    assert data.item_text(0) == "item B01"


def test_amazon_duplicates_and_repeated_metadata(tmp_path):
    reviews = write(tmp_path / "reviews.json", REVIEWS_2018 + review_2018("U1", "B01", 1.0, 1200000000) + "\n")
    meta = write(tmp_path / "meta.json", META_2014 + "{'asin': 'B01', 'title': 'Later copy'}\n")
    data = read_amazon_reviews(reviews, meta)
    assert data.num_interactions == 3
    assert data.ratings[(data.users == 0) & (data.items == 0)].tolist() == [1.0]
    assert data.item_titles[0] == "Soap & Water"
    assert "1 repeated items in meta.json were ignored; the first record of each is used" in data.notes
    assert any("duplicate (user, item) interactions dropped" in note for note in data.notes)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (review_2018("U1", "B01", 5.0, 1) + "\n{\"reviewerID\": \"U2\", \n", r"line 2: malformed JSON"),
        (review_2018("U1", "B01", 5.0, 1) + "\n" + json.dumps({"reviewerID": "U2", "asin": "B01", "unixReviewTime": 1}), r"line 2, field 'overall': missing"),
        (review_2018("U1", "B01", 5.0, 1) + "\n" + review_2018("U2", "B01", "great", 1), r"line 2, field 'overall': 'great' is not a number"),
        (review_2018("U1", "B01", 5.0, 1) + "\n" + review_2018("U2", "B01", 4.0, "May"), r"line 2, field 'unixReviewTime': 'May' is not a Unix time"),
        (json.dumps({"reviewerID": "U1", "asin": "", "overall": 5, "unixReviewTime": 1}), r"line 1, field 'asin': '' is not a non-empty string"),
        (json.dumps({"reviewer": "U1", "item": "B01"}), r"line 1, field 'reviewerID': unknown review layout"),
        ("[1, 2]\n", r"line 1: expected a JSON object but found list"),
        (review_2018("U1", "B01", 5.0, 1) + "\n\n" + review_2018("U2", "B01", 4.0, 1), r"line 2: the line is empty"),
        ("", r"line 1: the file is empty"),
    ],
)
def test_amazon_rejects_bad_reviews(tmp_path, text, pattern):
    with pytest.raises(DataFormatError, match=pattern):
        read_amazon_reviews(write(tmp_path / "reviews.json", text))


def test_amazon_rejects_unknown_item(tmp_path):
    reviews = write(tmp_path / "reviews.json", REVIEWS_2018)
    meta = write(tmp_path / "meta.json", "{'asin': 'B01', 'title': 'Soap'}\n")
    with pytest.raises(DataFormatError, match=r"reviews.json, line 2, field 'asin': 'B02' is not in meta.json"):
        read_amazon_reviews(reviews, meta)


def test_amazon_rejects_bad_metadata(tmp_path):
    reviews = write(tmp_path / "reviews.json", REVIEWS_2018)
    meta = write(tmp_path / "meta.json", "{'asin': 'B01'}\n{'title': 'No id'}\n")
    with pytest.raises(DataFormatError, match=r"meta.json, line 2, field 'asin': missing or empty item id"):
        read_amazon_reviews(reviews, meta)
    write(meta, "{'asin': 'B01', 'title': 'Soap'\n")
    with pytest.raises(DataFormatError, match=r"meta.json, line 1: malformed JSON"):
        read_amazon_reviews(reviews, meta)


def test_amazon_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_amazon_reviews(tmp_path / "absent.json")


# --- LC-Rec sequences ---------------------------------------------------------------------------------------------

LC_TITLES = (
    "lcrec_item_id\tasin\tllmrank_item_id\ttitle\tmatch\n"
    "0\tB0A\t5\tMario &amp; Luigi\tunique\n"
    "1\tB0B\t6|7\tPad (Red &amp; White) || Pad Blue\tambiguous_pair\n"
    "2\tB0C\t6|7\tPad (Red &amp; White) || Pad Blue\tambiguous_pair\n"
)


def make_lcrec(folder: Path, inter: str = '{"0": [2, 0, 1], "1": [1, 0]}', titles: str | None = LC_TITLES) -> Path:
    write(folder / "Games.inter.json", inter)
    write(folder / "Games.item2id", "B0A\t0\nB0B\t1\nB0C\t2\n")
    write(folder / "Games.user2id", "AUSER\t0\nBUSER\t1\n")
    if titles is not None:
        write(folder / "Games.titles.tsv", titles)
    return folder


def test_lcrec_keeps_source_order(tmp_path):
    data = read_lcrec_sequences(make_lcrec(tmp_path))
    assert data.order == ORDER_SOURCE
    assert (data.num_interactions, data.num_users, data.num_items) == (5, 2, 3)
    assert data.user_ids == ["AUSER", "BUSER"]
    assert sequence_ids(data, "AUSER") == ["B0C", "B0A", "B0B"]
    assert sequence_ids(data, "BUSER") == ["B0B", "B0A"]
    assert np.isnan(data.timestamps).all()


def test_lcrec_titles_and_notes(tmp_path):
    data = read_lcrec_sequences(make_lcrec(tmp_path))
    assert data.item_titles == ["Mario & Luigi", "Pad (Red & White) || Pad Blue", "Pad (Red & White) || Pad Blue"]
    assert any("same day is arbitrary" in note for note in data.notes)
    assert any(note.startswith("2 items in Games.titles.tsv") for note in data.notes)


def test_lcrec_without_titles(tmp_path):
    data = read_lcrec_sequences(make_lcrec(tmp_path, titles=None))
    assert data.item_titles == ["", "", ""]


@pytest.mark.parametrize(
    ("inter", "pattern"),
    [
        ('{"0": [2, 0, 9]}', r"Games.inter.json, line 1, field '0': 9 is not an item index in Games.item2id"),
        ('{"0": [2],\n "5": [0]}', r"line 2, field '5': user index '5' is not in Games.user2id"),
        ('{"0": [2], "1": 3}', r"line 1, field '1': expected a list of item indices but found int"),
        ('{"0": [2, "1"]}', r"field '0': '1' is not an item index"),
        ('{"0": [2, 0,]', r"line 1: malformed JSON"),
        ("{}", r"line 1: the object is empty"),
        ("[[0, 1]]", r"line 1: expected a JSON object"),
        ('{"0": [2],\n "0": [1]}', r"line 1, field '0': user index '0' appears twice"),
    ],
)
def test_lcrec_rejects_bad_sequences(tmp_path, inter, pattern):
    with pytest.raises(DataFormatError, match=pattern):
        read_lcrec_sequences(make_lcrec(tmp_path, inter))


def test_lcrec_rejects_bad_maps_and_titles(tmp_path):
    make_lcrec(tmp_path)
    write(tmp_path / "Games.titles.tsv", LC_TITLES.replace("2\tB0C", "2\tB0Z"))
    with pytest.raises(DataFormatError, match=r"titles.tsv, line 4, field 'lcrec_item_id': item index '2' belongs to 'B0C'"):
        read_lcrec_sequences(tmp_path)
    write(tmp_path / "Games.item2id", "B0A\t0\nB0B\tone\n")
    with pytest.raises(DataFormatError, match=r"Games.item2id, line 2, field 'index': 'one' is not a non-negative integer"):
        read_lcrec_sequences(tmp_path)
    write(tmp_path / "Games.item2id", "B0A 0\n")
    with pytest.raises(DataFormatError, match=r"Games.item2id, line 1, field 'index': missing.*a space instead of a tab"):
        read_lcrec_sequences(tmp_path)


def test_lcrec_missing_map_is_named(tmp_path):
    make_lcrec(tmp_path)
    (tmp_path / "Games.user2id").unlink()
    with pytest.raises(FileNotFoundError, match=r"Games.user2id not found.*Games.inter.json, Games.item2id and Games.user2id"):
        read_lcrec_sequences(tmp_path)


# --- Registry -----------------------------------------------------------------------------------------------------


def test_registry_lists_every_name():
    assert DATASET_NAMES == (
        "ml-latest-small",
        "ml-1m",
        "ml-1m-timestamped",
        "ml-100k",
        "recbole",
        "amazon-games",
        "amazon-beauty",
        "amazon",
        "movielens-csv",
    )


def test_registry_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"unknown dataset 'ml-2m'; choose one of ml-latest-small, ml-1m"):
        load_dataset("ml-2m")


@pytest.mark.parametrize("name", [name for name in DATASET_NAMES if name != "ml-latest-small"])
def test_registry_needs_data_dir(name):
    with pytest.raises(ValueError, match="pass its folder with --data-dir"):
        load_dataset(name)


def test_registry_sets_dataset_name(tmp_path):
    data = load_dataset("movielens-csv", make_csv(tmp_path / "csv"))
    assert data.name == "movielens-csv"
    data = load_dataset("recbole", make_recbole(tmp_path / "rb"))
    assert data.name == "recbole"
    data = load_dataset("amazon-games", make_lcrec(tmp_path / "games"))
    assert data.name == "amazon-games"


def test_registry_finds_dataset_subfolder(tmp_path):
    make_ml1m(tmp_path / "ml-1m")
    data = load_dataset("ml-1m", tmp_path)
    assert data.name == "ml-1m"
    assert data.num_interactions == 3


def test_registry_timestamped_subset(tmp_path):
    make_ml1m(tmp_path)
    write(tmp_path / "ratings_timestamps_partial.dat", "1::12::5::978300760\n")
    assert load_dataset("ml-1m-timestamped", tmp_path).num_interactions == 1


def test_registry_finds_amazon_files(tmp_path):
    write(tmp_path / "reviews.json.gz", REVIEWS_2018)
    write(tmp_path / "meta_Beauty.json", META_2014)
    data = load_dataset("amazon", tmp_path)
    assert data.name == "amazon"
    assert data.item_titles == ["Soap & Water", "Jo's Shampoo"]
    write(tmp_path / "more.jsonl", REVIEWS_2018)
    with pytest.raises(ValueError, match=r"exactly one review file .*found: more.jsonl, reviews.json.gz"):
        load_dataset("amazon", tmp_path)


def test_registry_shuffle_seed_reaches_reader(tmp_path):
    make_csv(tmp_path, "userId,movieId,rating\n" + "".join(f"1,{m},4.0\n" for m in (1, 4995, 582)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingTimestampsWarning)
        data = load_dataset("movielens-csv", tmp_path, shuffle_seed=11)
    assert any("seeded with 11" in note for note in data.notes)
    assert not math.isnan(data.ratings[0])


# --- Encodings and compression ------------------------------------------------------------------------------------


def test_invalid_utf8_names_its_line(tmp_path):
    make_csv(tmp_path)
    (tmp_path / "movies.csv").write_bytes(b"movieId,title,genres\n1,Toy Story (1995),Comedy\n2,Caf\xe9 (2019),Drama\n")
    with pytest.raises(DataFormatError, match=r"movies.csv, line 3: byte 0xe9 is not valid utf-8"):
        read_movielens_csv(tmp_path)


def test_invalid_utf8_in_json_lines_names_its_line(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_bytes(REVIEWS_2018.encode() + b'{"reviewerID": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"reviews.json, line 4: byte 0xff is not valid utf-8"):
        read_amazon_reviews(reviews)


def test_corrupt_gzip_is_rejected(tmp_path):
    make_ml1m(tmp_path)
    (tmp_path / "ratings.dat").unlink()
    (tmp_path / "ratings.dat.gz").write_bytes(b"not gzip data")
    with pytest.raises(DataFormatError, match=r"ratings.dat.gz: not a valid gzip file"):
        read_movielens_dat(tmp_path)
    (tmp_path / "reviews.json.gz").write_bytes(b"not gzip data")
    with pytest.raises(DataFormatError, match=r"reviews.json.gz: not a valid gzip file"):
        read_amazon_reviews(tmp_path / "reviews.json.gz")
