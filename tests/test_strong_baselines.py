"""EASE, ALS, SASRec and MeLU: closed forms against direct solves, model checks and protocol hygiene."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from coldprompt.baselines.als import ALSRecommender, fit_item_factors, fold_in
from coldprompt.baselines.common import binary_matrix
from coldprompt.baselines.ease import EASERecommender, ease_weights
from coldprompt.baselines.melu import (
    MeLUNetwork,
    MeLURecommender,
    adapt,
    age_group,
    labelled_items,
    parse_profile,
    user_field_ids,
)
from coldprompt.baselines.sasrec import SASRec, SASRecRecommender, scoring_tokens, training_windows
from coldprompt.data.build import build_interaction_data
from coldprompt.evaluation.protocol import ScoringBatch, UserSplit, evaluation_users

KS = (0, 1, 3)
GENRES = ("Drama", "Comedy", "Action", "Horror")
PROFILES = ("A female user aged 25-34 who works as a programmer.", "A male user aged 41 whose occupation is writer.")


def _fixture(seed: int = 0, num_users: int = 60, num_items: int = 25, length: int = 12, test_seed: int | None = None):
    """Users with ``length`` distinct items in time order, two genres per item and a profile per user.

    With ``test_seed`` the histories of the test users (the last 10) are drawn from that seed instead.
    """
    rng = np.random.default_rng(seed)
    other = np.random.default_rng(test_seed) if test_seed is not None else rng
    users, items, times = [], [], []
    for user in range(num_users):
        source = other if user >= num_users - 10 else rng
        picked = source.choice(num_items, size=length, replace=False)
        users += [f"u{user:03d}"] * length
        items += [f"i{i:03d}" for i in picked]
        times += list(range(length))
    genres = {f"i{i:03d}": f"{GENRES[i % 4]}, {GENRES[(i // 4) % 4]}" for i in range(num_items)}
    profiles = {f"u{user:03d}": PROFILES[user % 2] for user in range(num_users)}
    return build_interaction_data("fixture", users, items, timestamps=times, item_genres=genres, user_profiles=profiles)


def _split(num_users: int = 60) -> UserSplit:
    train, validation = np.arange(num_users - 20), np.arange(num_users - 20, num_users - 10)
    return UserSplit(train, validation, np.arange(num_users - 10, num_users))


def _batch(data, users: np.ndarray, k: int) -> ScoringBatch:
    sequences = data.sequences()
    supports = [sequences[u][:k] for u in users]
    return ScoringBatch(np.asarray(users), supports, [np.full(k, np.nan)] * len(users), k)


def _has_implicit() -> bool:
    try:
        import implicit.cpu.als  # noqa: F401
    except ImportError:
        return False
    return True


needs_implicit = pytest.mark.skipif(not _has_implicit(), reason="the 'implicit' package is not installed")

# Small settings so that each fit takes well under a second on the fixture.
FACTORIES = {
    "EASE": lambda: EASERecommender(lambdas=(1.0, 10.0)),
    "ALS": pytest.param(
        lambda: ALSRecommender(factors=(4,), regularizations=(0.1,), alphas=(1.0, 10.0), iterations=3, num_threads=1),
        marks=needs_implicit,
    ),
    "SASRec": lambda: SASRecRecommender(dim=16, blocks=1, max_length=8, max_epochs=2, budget_s=60.0),
    "MeLU": lambda: MeLURecommender(dim=8, hidden=16, meta_batch=8, max_steps=6, eval_every=3, budget_s=60.0),
}


# ----------------------------------------------------------------------------------------------- EASE
def test_ease_weights_match_inverse():
    X = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=np.float64)
    gram = X.T @ X
    weights = ease_weights(gram, 2.0)
    P = np.linalg.inv(gram + 2.0 * np.eye(4))
    expected = np.eye(4) - P @ np.diag(1.0 / np.diag(P))
    assert weights == pytest.approx(expected, abs=1e-12)
    assert np.all(np.diag(weights) == 0.0)


def test_ease_columns_are_ridge_regressions():
    # Column j of B regresses item j on the other items with an L2 penalty: B_{-j,j} = (G_{-j,-j} + l I)^-1 G_{-j,j}.
    X = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=np.float64)
    gram = X.T @ X
    weights = ease_weights(gram, 2.0)
    for j in range(4):
        others = [i for i in range(4) if i != j]
        ridge = np.linalg.solve(gram[np.ix_(others, others)] + 2.0 * np.eye(3), gram[others, j])
        assert weights[others, j] == pytest.approx(ridge, abs=1e-12)


def test_ease_scores_sum_support_rows():
    data = _fixture()
    model = EASERecommender(lambdas=(5.0,))
    model.fit(data, _split(), KS)
    batch = _batch(data, np.array([52, 55]), 3)
    weights = model.weights[5.0]
    expected = np.stack([weights[support].sum(axis=0) for support in batch.supports])
    assert model.score(batch) == pytest.approx(expected, abs=1e-8)


def test_ease_rejects_non_positive_lambda():
    with pytest.raises(ValueError, match="positive L2 weight"):
        ease_weights(np.eye(3), 0.0)


# ----------------------------------------------------------------------------------------------- ALS
def test_fold_in_matches_weighted_least_squares():
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(6, 3))
    support, regularization, alpha = np.array([1, 4]), 0.3, 5.0
    # min_x sum_i c_i (p_i - x . y_i)^2 + reg ||x||^2 as one stacked least-squares problem.
    preference = np.zeros(6)
    preference[support] = 1.0
    root_confidence = np.sqrt(1.0 + alpha * preference)
    lhs = np.vstack([root_confidence[:, None] * Y, np.sqrt(regularization) * np.eye(3)])
    rhs = np.concatenate([root_confidence * preference, np.zeros(3)])
    expected = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    assert fold_in(Y, [support], regularization, alpha)[0] == pytest.approx(expected, abs=1e-10)


def test_fold_in_without_support_is_zero():
    assert np.all(fold_in(np.ones((5, 2)), [np.array([], dtype=np.int64)], 0.1, 1.0) == 0.0)


@needs_implicit
def test_fold_in_matches_implicit_recalculate_user():
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    data = _fixture()
    matrix = binary_matrix(data, np.arange(40))
    alpha = 10.0
    confidence = matrix.copy()
    confidence.data[:] = 1.0 + alpha
    with threadpool_limits(1, "blas"):  # implicit warns when BLAS runs its own threads
        model = AlternatingLeastSquares(factors=4, regularization=0.5, iterations=3, random_state=0, num_threads=1)
        model.fit(confidence, show_progress=False)
    support = data.sequences()[50][:3]
    values = np.full(3, 1.0 + alpha, dtype=np.float32)
    row = sp.csr_matrix((values, (np.zeros(3, dtype=np.int64), support)), shape=(1, data.num_items))
    expected = model.recalculate_user(0, row)
    folded = fold_in(model.item_factors, [support], 0.5, alpha)[0]
    assert folded == pytest.approx(np.ravel(expected), rel=1e-3, abs=1e-4)


@needs_implicit
def test_als_item_factors_shape():
    data = _fixture()
    factors = fit_item_factors(binary_matrix(data, np.arange(40)), 4, 0.1, 1.0, 2, seed=0, num_threads=1)
    assert factors.shape == (data.num_items, 4)


# ----------------------------------------------------------------------------------------------- SASRec
def _sasrec(num_items: int = 10) -> SASRec:
    torch.manual_seed(0)
    model = SASRec(num_items, max_length=6, dim=8, blocks=2, heads=1, dropout=0.2)
    return model.eval()


def test_sasrec_prefix_ignores_later_items():
    model = _sasrec()
    start = model.start_token
    short = torch.tensor([[start, 3, 5]])
    longer = torch.tensor([[start, 3, 5, 7, 2], [start, 3, 5, 0, 0]])
    with torch.no_grad():
        expected = model.hidden(short)[0]
        got = model.hidden(longer)[:, :3]
    assert got[0] == pytest.approx(expected.numpy(), abs=1e-5)
    assert got[1] == pytest.approx(expected.numpy(), abs=1e-5)


def test_training_windows_cover_every_item_once():
    inputs, targets = training_windows([np.array([0, 1, 2, 3, 4])], num_items=5, max_length=4)
    start = 6
    assert inputs.tolist() == [[start, 1, 2, 3], [4, 0, 0, 0]]
    assert targets.tolist() == [[1, 2, 3, 4], [5, 0, 0, 0]]


def test_scoring_tokens_start_with_start_token():
    tokens = scoring_tokens([np.array([2, 0])], num_items=5, max_length=4)
    assert tokens.tolist() == [[6, 3, 1]]
    truncated = scoring_tokens([np.array([0, 1, 2, 3, 4])], num_items=5, max_length=4)
    assert truncated.tolist() == [[2, 3, 4, 5]]


def test_sasrec_training_lowers_loss():
    data = _fixture()
    split = _split()
    model = SASRecRecommender(dim=16, blocks=1, max_length=8, max_epochs=4, patience=10, budget_s=60.0)
    model.fit(data, split, KS)
    inputs, targets = training_windows([data.sequences()[u] for u in split.train], data.num_items, 8)
    torch.manual_seed(model.seed)
    untrained = SASRec(data.num_items, 8, dim=16, blocks=1, heads=1, dropout=0.2).eval()
    with torch.no_grad():
        before = untrained.loss(inputs, targets).item()
        after = model.model.loss(inputs, targets).item()
    assert after < before


def test_sasrec_zero_history_uses_start_token_or_onboarding():
    data = _fixture()
    model = SASRecRecommender(dim=16, blocks=1, max_length=8, max_epochs=1, budget_s=60.0)
    model.fit(data, _split(), KS)
    batch = _batch(data, np.array([51, 52]), 0)
    model.zero_history = "start token"
    from_start = model.score(batch)
    assert from_start.shape == (2, data.num_items)
    assert np.array_equal(from_start[0], from_start[1])
    model.zero_history = "onboarding popularity"
    assert np.array_equal(model.score(batch)[0], model.onboarding.counts_for(0))


# ----------------------------------------------------------------------------------------------- MeLU
def test_parse_profile_fields():
    assert parse_profile(PROFILES[0]) == {"gender": "female", "age": "25-34", "occupation": "who works as a programmer"}
    assert parse_profile(PROFILES[1])["age"] == "35-44"
    assert parse_profile("A user aged under 18.") == {"gender": "", "age": "under 18", "occupation": ""}
    assert parse_profile("likes films") == {"gender": "", "age": "", "occupation": ""}


def test_age_group_bounds():
    assert [age_group(a) for a in (7, 18, 24, 25, 49, 50, 56, 80)] == [
        "under 18", "18-24", "18-24", "25-34", "45-49", "50-55", "56 or older", "56 or older",
    ]


def test_user_field_vocabulary_from_train_users_only():
    data = _fixture()
    ids, sizes = user_field_ids(data, np.array([0, 2, 4]))  # only female programmers aged 25-34
    assert sizes == [2, 2, 2]
    assert ids[0].tolist() == [1, 1, 1]
    assert ids[1].tolist() == [0, 0, 0]


def _melu_inputs(dtype=torch.float32):
    torch.manual_seed(0)
    network = MeLUNetwork(num_items=12, field_sizes=[3, 4], num_genres=5, dim=4, hidden=8).to(dtype)
    genre_ids, genre_offsets = torch.tensor([0, 1, 2, 3, 4] * 2 + [1, 2]), torch.arange(0, 12)
    user = network.user_features(torch.tensor([[1, 2]]))[0].detach()
    items = network.item_features(genre_ids, genre_offsets).detach()
    support_items, support_labels = labelled_items(np.array([0, 3]), np.array([5, 7, 9]))
    query_items, query_labels = labelled_items(np.array([4]), np.array([6, 8]))
    return network, user, items, (support_items, support_labels.to(dtype)), (query_items, query_labels.to(dtype))


def test_melu_local_update_lowers_support_loss():
    network, user, items, (support_items, labels), _ = _melu_inputs()
    weights = network.local_parameters()
    loss = lambda w: torch.nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
        MeLUNetwork.decide(user, items[support_items], w), labels
    ).item()
    adapted = adapt(user, items[support_items], labels, weights, steps=1, step_size=0.1, create_graph=False)
    assert loss(adapted) < loss(weights)


def test_melu_meta_gradient_matches_finite_difference():
    network, user, items, (support_items, support_labels), (query_items, query_labels) = _melu_inputs(torch.float64)
    weights = network.local_parameters()
    names = list(weights)

    def query_loss(initial: dict[str, torch.Tensor]) -> torch.Tensor:
        fast = adapt(user, items[support_items], support_labels, initial, steps=2, step_size=0.5, create_graph=True)
        logits = MeLUNetwork.decide(user, items[query_items], fast)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, query_labels)

    grads = torch.autograd.grad(query_loss(weights), [weights[n] for n in names], retain_graph=True)
    generator = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(weights[n].shape, generator=generator, dtype=torch.float64) for n in names}
    analytic = sum((g * direction[n]).sum() for g, n in zip(grads, names)).item()
    eps = 1e-6
    with torch.enable_grad():
        plus = query_loss({n: (weights[n] + eps * direction[n]).detach().requires_grad_() for n in names}).item()
        minus = query_loss({n: (weights[n] - eps * direction[n]).detach().requires_grad_() for n in names}).item()
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-5, abs=1e-8)


def test_melu_meta_loss_reaches_every_parameter():
    data = _fixture()
    model = MeLURecommender(dim=8, hidden=16, meta_batch=8, max_steps=1, eval_every=1, budget_s=60.0)
    model.fit(data, _split(), KS)
    model.network.zero_grad()
    loss = model.meta_loss(data, np.arange(8), np.random.default_rng(0), [1, 3])
    loss.backward()
    for name, parameter in model.network.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert model.network.item_embedding.weight.grad.abs().sum() > 0
    assert model.network.field_embeddings[0].weight.grad.abs().sum() > 0
    assert model.network.hidden1.weight.grad.abs().sum() > 0


def test_melu_zero_history_scores_without_adaptation():
    data = _fixture()
    model = MeLURecommender(dim=8, hidden=16, meta_batch=8, max_steps=3, eval_every=3, budget_s=60.0)
    model.fit(data, _split(), KS)
    model.zero_history = "user fields"
    batch = _batch(data, np.array([50, 51]), 0)
    scores = model.score(batch)
    assert scores.shape == (2, data.num_items)
    assert np.all(np.isfinite(scores))
    # Users 50 and 51 have different profiles, so their K = 0 scores differ.
    assert not np.allclose(scores[0], scores[1])
    model.zero_history = "onboarding popularity"
    assert np.array_equal(model.score(batch)[0], model.onboarding.counts_for(0))


# ----------------------------------------------------------------------------------------------- all four
@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_test_users_do_not_change_scores(factory):
    data = _fixture()
    changed = _fixture(test_seed=99)  # same train and validation users, other test histories
    split = _split()
    assert not all(np.array_equal(data.sequences()[u], changed.sequences()[u]) for u in split.test)
    first, second = factory(), factory()
    first.fit(data, split, KS)
    second.fit(changed, split, KS)
    users = evaluation_users(data, split.test, KS).users
    for k in KS:
        batch = _batch(data, users, k)
        assert np.array_equal(first.score(batch), second.score(batch)), k


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_scores_shape_and_seeded_repeat(factory):
    data = _fixture()
    first, second = factory(), factory()
    first.fit(data, _split(), KS)
    second.fit(data, _split(), KS)
    for k in KS:
        batch = _batch(data, np.array([50, 53, 57]), k)
        scores = first.score(batch)
        assert scores.shape == (3, data.num_items)
        assert np.all(np.isfinite(scores))
        assert np.array_equal(scores, second.score(batch)), k


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_scores_do_not_depend_on_batching(factory):
    data = _fixture()
    model = factory()
    model.fit(data, _split(), KS)
    together = model.score(_batch(data, np.array([50, 53]), 3))
    alone = model.score(_batch(data, np.array([53]), 3))
    assert together[1] == pytest.approx(alone[0], abs=1e-6)
