"""Published counts of the real data sets, read from the team folder given by COLDPROMPT_SHARED_DATA.

Only the ml-latest-small test runs without that folder, because the package ships its own copy.
"""

import pytest

from coldprompt.data.build import MissingTimestampsWarning
from coldprompt.data.dataset import ORDER_SEEDED_SHUFFLE, ORDER_SOURCE, ORDER_TIMESTAMP
from coldprompt.data.registry import load_dataset


def title_of(data, item_id: str) -> str:
    return data.item_titles[data.item_ids.index(item_id)]


def test_shipped_ml_latest_small_counts():
    data = load_dataset("ml-latest-small")
    assert data.name == "ml-latest-small"
    assert data.num_interactions == 100_836
    assert data.num_users == 610
    assert data.num_items == 9_724
    assert data.order == ORDER_TIMESTAMP
    assert title_of(data, "11") == "American President, The (1995)"
    assert data.item_genres[data.item_ids.index("1")] == "Adventure, Animation, Children, Comedy, Fantasy"


@pytest.mark.shared_data
def test_ml1m_counts(shared_data_dir):
    with pytest.warns(MissingTimestampsWarning):
        data = load_dataset("ml-1m", shared_data_dir / "ml-1m")
    assert data.num_interactions == 1_000_203
    assert data.num_users == 6_040
    assert data.num_items == 3_700
    assert data.order == ORDER_SEEDED_SHUFFLE
    assert "skipped 6 ratings with an uncertain movie id, listed in ratings_ambiguous_movie_id.csv" in data.notes


@pytest.mark.shared_data
def test_ml1m_text_and_profiles(shared_data_dir):
    with pytest.warns(MissingTimestampsWarning):
        data = load_dataset("ml-1m", shared_data_dir)
    assert title_of(data, "12") == "Dracula: Dead and Loving It (1995)"
    assert title_of(data, "582") == "Metisse (Café au Lait) (1993)"
    assert data.user_profiles[data.user_ids.index("1")] == "A female user aged under 18 who is a K-12 student."
    assert data.user_profiles[data.user_ids.index("2")] == "A male user aged 56 or older who is self-employed."
    assert all(data.user_profiles)


@pytest.mark.shared_data
def test_ml1m_timestamped_subset_counts(shared_data_dir):
    data = load_dataset("ml-1m-timestamped", shared_data_dir / "ml-1m")
    assert data.num_interactions == 566_954
    assert data.order == ORDER_TIMESTAMP
    assert not any("duplicate" in note for note in data.notes)


@pytest.mark.shared_data
def test_ml100k_counts(shared_data_dir):
    data = load_dataset("ml-100k", shared_data_dir / "recbole-ml-100k")
    assert data.num_interactions == 100_000
    assert data.num_users == 943
    assert data.num_items == 1_682
    assert data.order == ORDER_TIMESTAMP
    assert title_of(data, "1") == "Toy Story (1995)"
    assert data.user_profiles[data.user_ids.index("1")] == "A male user aged 24 whose occupation is technician."


@pytest.mark.shared_data
def test_games_counts(shared_data_dir):
    data = load_dataset("amazon-games", shared_data_dir / "amazon-2018-games-lcrec")
    assert data.num_interactions == 452_989
    assert data.num_users == 50_546
    assert data.num_items == 16_859
    assert data.order == ORDER_SOURCE
    assert all(data.item_titles)
    assert any(note.startswith("14 items in Games.titles.tsv") for note in data.notes)


@pytest.mark.shared_data
def test_games_first_user_in_file_order(shared_data_dir):
    data = load_dataset("amazon-games", shared_data_dir)
    first_user = data.sequences()[data.user_ids.index("A31160I7G2EZVN")]
    expected = ["B00L59D9HG", "B00E1A1SP6", "B00T3452AW"]
    assert [data.item_ids[item] for item in first_user[:3]] == expected
    assert title_of(data, "B00E1A1SP6") == "Nintendo 3DS XL - Black [Old Model]"


@pytest.mark.shared_data
def test_all_beauty_counts(shared_data_dir):
    data = load_dataset("amazon-beauty", shared_data_dir / "amazon-2018-all-beauty-5core")
    # 5,269 review lines hold 4,092 distinct (user, item) pairs; the reader keeps the first of each.
    assert data.num_interactions == 4_092
    assert data.num_users == 991
    assert data.num_items == 85
    assert data.order == ORDER_TIMESTAMP
    assert "1177 duplicate (user, item) interactions dropped; the first of each pair is kept" in data.notes
    assert all(data.item_titles)
    assert not any("&amp;" in title for title in data.item_titles)


@pytest.mark.shared_data
def test_all_beauty_through_generic_amazon(shared_data_dir):
    data = load_dataset("amazon", shared_data_dir / "amazon-2018-all-beauty-5core")
    assert data.num_interactions == 4_092
    assert data.name == "amazon"
