"""The data readers, one per file layout; each returns an :class:`~coldprompt.data.dataset.InteractionData`.

The readers live in one module per source (movielens, recbole, amazon, lcrec); this module collects them.
"""

from coldprompt.data.amazon import read_amazon_reviews
from coldprompt.data.lcrec import read_lcrec_sequences
from coldprompt.data.movielens import read_movielens_csv, read_movielens_dat
from coldprompt.data.recbole import read_recbole_atomic

__all__ = [
    "read_amazon_reviews",
    "read_lcrec_sequences",
    "read_movielens_csv",
    "read_movielens_dat",
    "read_recbole_atomic",
]
