"""Load a data set by name, choosing the reader that fits its layout."""

from __future__ import annotations

import logging
from importlib.resources import as_file, files
from pathlib import Path

from coldprompt.data._files import find_file, require_folder
from coldprompt.data.amazon import read_amazon_reviews
from coldprompt.data.dataset import InteractionData
from coldprompt.data.lcrec import read_lcrec_sequences
from coldprompt.data.movielens import read_movielens_csv, read_movielens_dat
from coldprompt.data.recbole import read_recbole_atomic

logger = logging.getLogger(__name__)

DATASET_NAMES = (
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

#: For the fixed data sets: a file that marks the data set's folder, and the usual names of that folder.
#: ``data_dir`` may be the folder itself or a parent that contains one of these subfolders.
_FOLDERS = {
    "ml-latest-small": ("ratings.csv", ("ml-latest-small",)),
    "ml-1m": ("movies.dat", ("ml-1m",)),
    "ml-1m-timestamped": ("movies.dat", ("ml-1m",)),
    "ml-100k": ("ml-100k.inter", ("recbole-ml-100k", "ml-100k")),
    "amazon-games": ("Games.inter.json", ("amazon-2018-games-lcrec",)),
    "amazon-beauty": ("All_Beauty_5.json", ("amazon-2018-all-beauty-5core",)),
}

_REVIEW_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
_ITEM_SUFFIXES = (".item", ".item.gz")


def load_dataset(name: str, data_dir: str | Path | None = None, *, shuffle_seed: int = 0) -> InteractionData:
    """Read the data set ``name`` (one of :data:`DATASET_NAMES`) from ``data_dir``.

    Only ``ml-latest-small`` works without ``data_dir``: it then reads the copy shipped inside the package.
    ``shuffle_seed`` orders the interactions of data sets without timestamps. Raises ValueError for an unknown
    name or a missing ``data_dir``; the readers raise DataFormatError or FileNotFoundError for bad files.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset '{name}'; choose one of {', '.join(DATASET_NAMES)}")
    if data_dir is None:
        if name != "ml-latest-small":
            raise ValueError(
                f"dataset '{name}' is not shipped with the package; pass its folder with --data-dir "
                "(data_dir in Python)"
            )
        return _read_shipped_ml_latest_small(shuffle_seed)

    folder = _dataset_folder(name, Path(data_dir))
    logger.info("loading dataset %s from %s", name, folder)
    if name in ("ml-latest-small", "movielens-csv"):
        return read_movielens_csv(folder, shuffle_seed=shuffle_seed, name=name)
    if name in ("ml-1m", "ml-1m-timestamped"):
        subset = name == "ml-1m-timestamped"
        return read_movielens_dat(folder, timestamped_subset=subset, shuffle_seed=shuffle_seed, name=name)
    if name == "ml-100k":
        return read_recbole_atomic(folder, "ml-100k", shuffle_seed=shuffle_seed, name=name)
    if name == "recbole":
        return read_recbole_atomic(folder, shuffle_seed=shuffle_seed, name=name)
    if name == "amazon-games":
        return read_lcrec_sequences(folder, "Games", name=name)
    if name == "amazon-beauty":
        reviews, meta = _beauty_files(folder)
    else:
        reviews, meta = _find_amazon_files(folder)
    return read_amazon_reviews(reviews, meta, shuffle_seed=shuffle_seed, name=name)


def _read_shipped_ml_latest_small(shuffle_seed: int) -> InteractionData:
    resource = files("coldprompt").joinpath("datasets").joinpath("ml-latest-small")
    # NOTE: as_file gives a real folder only for packages installed as files; Python 3.10 and 3.11 cannot
    # extract a directory from a zipped install.
    with as_file(resource) as folder:
        return read_movielens_csv(folder, shuffle_seed=shuffle_seed, name="ml-latest-small")


def _dataset_folder(name: str, data_dir: Path) -> Path:
    """Return ``data_dir`` or, when it lacks the data set's files, its subfolder with the data set's usual name."""
    if name not in _FOLDERS:
        return data_dir
    marker, subfolders = _FOLDERS[name]
    if find_file(data_dir, marker) is not None:
        return data_dir
    for subfolder in subfolders:
        if find_file(data_dir / subfolder, marker) is not None:
            return data_dir / subfolder
    return data_dir  # the reader raises FileNotFoundError listing the files it needs


def _beauty_files(folder: Path) -> tuple[Path, Path]:
    contents = "All_Beauty_5.json(.gz) and amazon-all-beauty-18.item(.gz)"
    require_folder(folder, contents)
    reviews = find_file(folder, "All_Beauty_5.json")
    meta = find_file(folder, "amazon-all-beauty-18.item")
    if reviews is None or meta is None:
        raise FileNotFoundError(f"{folder} must contain {contents}")
    return reviews, meta


def _find_amazon_files(folder: Path) -> tuple[Path, Path | None]:
    """Find one review file (*.json, *.jsonl, optionally .gz) and at most one metadata file (meta*.json* or *.item)."""
    require_folder(folder, "one review file (*.json, *.jsonl, *.json.gz) and optionally one meta*.json or *.item file")
    paths = sorted(path for path in folder.iterdir() if path.is_file())
    json_files = [path for path in paths if path.name.endswith(_REVIEW_SUFFIXES)]
    meta_files = [path for path in json_files if path.name.startswith("meta")]
    meta_files += [path for path in paths if path.name.endswith(_ITEM_SUFFIXES)]
    review_files = [path for path in json_files if path not in meta_files]
    if len(review_files) != 1:
        found = ", ".join(path.name for path in review_files) or "none"
        raise ValueError(f"{folder} must contain exactly one review file (*.json, *.jsonl, *.json.gz); found: {found}")
    if len(meta_files) > 1:
        found = ", ".join(path.name for path in meta_files)
        raise ValueError(f"{folder} must contain at most one metadata file (meta*.json or *.item); found: {found}")
    return review_files[0], meta_files[0] if meta_files else None
