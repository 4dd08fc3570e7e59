"""Small synthetic interaction tables shared by the tests."""

import numpy as np

from coldprompt.data.build import build_interaction_data


def toy_data(num_users: int = 50, num_items: int = 30, length: int = 14, seed: int = 0, name: str = "toy"):
    """Users with ``length`` distinct items each, in timestamp order; ratings alternate 5 and 2."""
    rng = np.random.default_rng(seed)
    users, items, times, ratings = [], [], [], []
    for user in range(num_users):
        picked = rng.choice(num_items, size=length, replace=False)
        users += [f"u{user:03d}"] * length
        items += [str(i) for i in picked]
        times += list(range(length))
        ratings += [5.0 if t % 2 == 0 else 2.0 for t in range(length)]
    return build_interaction_data(name, users, items, timestamps=times, ratings=ratings)
