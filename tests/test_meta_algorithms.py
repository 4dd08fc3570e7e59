"""Reference checks for the inner and outer loops in ``coldprompt.meta.algorithms``.

A tiny differentiable model replaces the frozen backbone. A user's soft prompt ``[P, H]`` and an item's features
go through frozen random weights and a ``tanh``, so every loss has non-zero second derivatives.
A shared ``bias`` inside the ``tanh`` plays the trainable module that both the support and the query loss reach.
Everything runs in float64 with seeded generators, so the finite-difference checks can use tight tolerances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch.func import grad, jacrev

from coldprompt.meta.algorithms import adapt, maml_step, reptile_step

DTYPE = torch.float64
PROMPT_TOKENS = 2  # P
PROMPT_WIDTH = 3  # H
PROMPT_SIZE = PROMPT_TOKENS * PROMPT_WIDTH
ITEM_FEATURES = 4
HIDDEN_SIZE = 5
USERS = 3
INTERACTIONS = 4  # per support set and per query set

FD_EPS = 1e-6
# Estimated error of float64 central differences with eps=1e-6: eps^2 truncation plus about 1e-16 / eps rounding.
FD_TOLERANCE = {"rtol": 1e-6, "atol": 1e-8}
# Two exact computations of the same gradient differ only by rounding.
EXACT_TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}


def check_close(actual: torch.Tensor, expected: torch.Tensor, reason: str, tolerance: dict[str, float]) -> None:
    """Assert ``actual`` matches ``expected``, leading the failure message with ``reason``."""
    torch.testing.assert_close(actual, expected, msg=lambda detail: f"{reason}\n{detail}", **tolerance)


@dataclass
class ColdStartProblem:
    """Frozen tiny backbone plus the support and query sets of ``USERS`` users."""

    prompt_weight: torch.Tensor  # [P * H, HIDDEN_SIZE]
    item_weight: torch.Tensor  # [ITEM_FEATURES, HIDDEN_SIZE]
    output_weight: torch.Tensor  # [HIDDEN_SIZE]
    support_items: torch.Tensor  # [USERS, INTERACTIONS, ITEM_FEATURES]
    support_ratings: torch.Tensor  # [USERS, INTERACTIONS]
    query_items: torch.Tensor  # [USERS, INTERACTIONS, ITEM_FEATURES]
    query_ratings: torch.Tensor  # [USERS, INTERACTIONS]

    def user_loss(
        self, prompt: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Return one user's mean squared error for prompt ``[P, H]``, items ``[N, F]`` and ratings ``[N]``."""
        prompt_part = prompt.reshape(-1) @ self.prompt_weight  # [HIDDEN_SIZE]
        hidden = torch.tanh(prompt_part + items @ self.item_weight + bias)  # [N, HIDDEN_SIZE]
        scores = hidden @ self.output_weight  # [N]
        return ((scores - ratings) ** 2).mean()

    def batch_loss(
        self, prompts: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Return the per-user losses ``[B]`` for prompts ``[B, P, H]``, written without a loop over users."""
        prompt_part = prompts.flatten(1) @ self.prompt_weight  # [B, HIDDEN_SIZE]
        hidden = torch.tanh(prompt_part[:, None, :] + items @ self.item_weight + bias)  # [B, N, HIDDEN_SIZE]
        scores = hidden @ self.output_weight  # [B, N]
        return ((scores - ratings) ** 2).mean(dim=1)

    def support_loss(self, bias: torch.Tensor, users: slice = slice(None)) -> Callable[[torch.Tensor], torch.Tensor]:
        """Build the support ``LossFn`` of the selected users."""
        items, ratings = self.support_items[users], self.support_ratings[users]
        return lambda prompts: self.batch_loss(prompts, items, ratings, bias)

    def query_loss(self, bias: torch.Tensor, users: slice = slice(None)) -> Callable[[torch.Tensor], torch.Tensor]:
        """Build the query ``LossFn`` of the selected users."""
        items, ratings = self.query_items[users], self.query_ratings[users]
        return lambda prompts: self.batch_loss(prompts, items, ratings, bias)

    def user_support_loss(self, user: int, bias: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Build one user's support loss of a single prompt ``[P, H]``, for ``torch.func`` transforms."""
        return lambda prompt: self.user_loss(prompt, self.support_items[user], self.support_ratings[user], bias)

    def user_query_loss(self, user: int, bias: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Build one user's query loss of a single prompt ``[P, H]``, for ``torch.func`` transforms."""
        return lambda prompt: self.user_loss(prompt, self.query_items[user], self.query_ratings[user], bias)


def make_problem(seed: int = 0) -> ColdStartProblem:
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=generator, dtype=DTYPE)

    # Scales keep the tanh away from saturation, so second derivatives stay large.
    return ColdStartProblem(
        prompt_weight=normal(PROMPT_SIZE, HIDDEN_SIZE, scale=0.5),
        item_weight=normal(ITEM_FEATURES, HIDDEN_SIZE, scale=0.5),
        output_weight=normal(HIDDEN_SIZE),
        support_items=normal(USERS, INTERACTIONS, ITEM_FEATURES),
        support_ratings=normal(USERS, INTERACTIONS),
        query_items=normal(USERS, INTERACTIONS, ITEM_FEATURES),
        query_ratings=normal(USERS, INTERACTIONS),
    )


def make_parameters(seed: int = 1) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """Return a meta-initialisation ``[P, H]`` and a shared bias ``[HIDDEN_SIZE]``, both trainable."""
    generator = torch.Generator().manual_seed(seed)
    init = torch.randn(PROMPT_TOKENS, PROMPT_WIDTH, generator=generator, dtype=DTYPE)
    bias = 0.3 * torch.randn(HIDDEN_SIZE, generator=generator, dtype=DTYPE)
    return torch.nn.Parameter(init), torch.nn.Parameter(bias)


def reference_adapt(
    support_loss: Callable[[torch.Tensor], torch.Tensor],
    prompt: torch.Tensor,
    steps: int,
    inner_lr: torch.Tensor | float,
) -> torch.Tensor:
    """Run plain gradient descent on one prompt ``[P, H]`` with ``torch.func.grad``, differentiable throughout."""
    for _ in range(steps):
        prompt = prompt - inner_lr * grad(support_loss)(prompt)
    return prompt


def reference_meta_loss(
    problem: ColdStartProblem,
    init: torch.Tensor,
    bias: torch.Tensor,
    inner_lr: torch.Tensor | float,
    steps: int,
) -> torch.Tensor:
    """Return the mean over users of the query loss after adapting ``init`` on each user's support set."""
    losses = []
    for user in range(USERS):
        adapted = reference_adapt(problem.user_support_loss(user, bias), init, steps, inner_lr)
        losses.append(problem.user_query_loss(user, bias)(adapted))
    return torch.stack(losses).mean()


def central_differences(function: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor) -> torch.Tensor:
    """Estimate the gradient of scalar ``function`` at ``point`` entry by entry."""
    point = point.detach()
    gradient = torch.zeros_like(point)
    for index in range(point.numel()):
        step = torch.zeros_like(point)
        step.view(-1)[index] = FD_EPS
        with torch.no_grad():
            gradient.view(-1)[index] = (function(point + step) - function(point - step)) / (2 * FD_EPS)
    return gradient


def run_maml_step(
    problem: ColdStartProblem,
    steps: int,
    inner_lr: torch.Tensor | float,
    *,
    second_order: bool,
    users: slice = slice(None),
) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """Run ``maml_step`` on fresh parameters and return them with their ``.grad`` filled."""
    init, bias = make_parameters()
    batch_size = len(range(USERS)[users])
    maml_step(
        problem.support_loss(bias, users),
        problem.query_loss(bias, users),
        init,
        batch_size,
        steps,
        inner_lr,
        second_order=second_order,
    )
    return init, bias


def random_prompts(seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(USERS, PROMPT_TOKENS, PROMPT_WIDTH, generator=generator, dtype=DTYPE)


# adapt


@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("lr_kind", ["scalar", "per_entry"])
def test_adapt_matches_unrolled_descent(second_order: bool, lr_kind: str) -> None:
    problem = make_problem()
    _, bias = make_parameters()
    prompts = random_prompts()
    inner_lr: torch.Tensor | float = 0.4
    if lr_kind == "per_entry":
        inner_lr = torch.linspace(0.1, 0.6, PROMPT_SIZE, dtype=DTYPE).reshape(PROMPT_TOKENS, PROMPT_WIDTH)
    steps = 3

    adapted = adapt(problem.support_loss(bias), prompts, steps, inner_lr, second_order=second_order)

    assert adapted.shape == prompts.shape, f"adapt returned shape {tuple(adapted.shape)}, not {tuple(prompts.shape)}"
    for user in range(USERS):
        expected = reference_adapt(problem.user_support_loss(user, bias), prompts[user], steps, inner_lr)
        check_close(
            adapted[user].detach(),
            expected.detach(),
            f"user {user}: adapt differs from {steps} hand-unrolled gradient steps",
            EXACT_TOLERANCE,
        )


def test_adapt_users_independent() -> None:
    problem = make_problem()
    _, bias = make_parameters()
    prompts = random_prompts()

    together = adapt(problem.support_loss(bias), prompts, 2, 0.4)

    for user in range(USERS):
        alone = adapt(problem.support_loss(bias, slice(user, user + 1)), prompts[user : user + 1], 2, 0.4)
        check_close(
            together[user].detach(),
            alone[0].detach(),
            f"user {user}: adapting in a batch differs from adapting alone",
            EXACT_TOLERANCE,
        )


def test_adapt_step_lowers_support_loss() -> None:
    problem = make_problem()
    _, bias = make_parameters()
    prompts = random_prompts()
    support_loss = problem.support_loss(bias)

    adapted = adapt(support_loss, prompts, 1, 1e-2)

    with torch.no_grad():
        before = support_loss(prompts)
        after = support_loss(adapted)
    for user in range(USERS):
        assert after[user] < before[user], (
            f"user {user}: support loss rose from {before[user].item():.6g} to {after[user].item():.6g} "
            "after one small inner step"
        )


def test_adapt_zero_steps_unchanged() -> None:
    problem = make_problem()
    _, bias = make_parameters()
    prompts = random_prompts()

    adapted = adapt(problem.support_loss(bias), prompts, 0, 0.4)

    assert torch.equal(adapted, prompts), "adapt with steps=0 changed the prompts"


# MAML and FOMAML


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_matches_unrolled_gradient(steps: int) -> None:
    problem = make_problem()
    inner_lr = 0.5

    init, bias = run_maml_step(problem, steps, inner_lr, second_order=True)

    reference_init, reference_bias = make_parameters()
    expected_init, expected_bias = torch.func.grad(
        lambda init, bias: reference_meta_loss(problem, init, bias, inner_lr, steps), argnums=(0, 1)
    )(reference_init.detach(), reference_bias.detach())
    check_close(init.grad, expected_init, "MAML init gradient differs from the hand-unrolled one", EXACT_TOLERANCE)
    check_close(bias.grad, expected_bias, "MAML shared gradient differs from the hand-unrolled one", EXACT_TOLERANCE)


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_matches_finite_differences(steps: int) -> None:
    problem = make_problem()
    inner_lr = 0.5

    init, bias = run_maml_step(problem, steps, inner_lr, second_order=True)

    expected_init = central_differences(lambda point: reference_meta_loss(problem, point, bias, inner_lr, steps), init)
    expected_bias = central_differences(lambda point: reference_meta_loss(problem, init, point, inner_lr, steps), bias)
    check_close(init.grad, expected_init, "MAML init gradient differs from central differences", FD_TOLERANCE)
    check_close(bias.grad, expected_bias, "MAML shared gradient differs from central differences", FD_TOLERANCE)


def test_maml_step_reports_losses() -> None:
    problem = make_problem()
    init, bias = make_parameters()

    result = maml_step(problem.support_loss(bias), problem.query_loss(bias), init, USERS, 2, 0.5, second_order=True)

    with torch.no_grad():
        prompts = init.expand(USERS, PROMPT_TOKENS, PROMPT_WIDTH)
        expected_support = problem.support_loss(bias)(prompts).mean().item()
        expected_query = reference_meta_loss(problem, init, bias, 0.5, 2).item()
    assert result.support_loss == pytest.approx(expected_support, rel=1e-12), (
        "reported support loss is not the mean support loss before adapting"
    )
    assert result.query_loss == pytest.approx(expected_query, rel=1e-12), (
        "reported query loss is not the mean query loss after adapting"
    )


def test_fomaml_uses_query_gradient_at_adapted() -> None:
    problem = make_problem()
    inner_lr = 0.5
    steps = 2

    init, bias = run_maml_step(problem, steps, inner_lr, second_order=False)

    fixed_init, fixed_bias = make_parameters()
    fixed_init, fixed_bias = fixed_init.detach(), fixed_bias.detach()
    expected_init = torch.zeros_like(fixed_init)
    expected_bias = torch.zeros_like(fixed_bias)
    for user in range(USERS):
        adapted = reference_adapt(problem.user_support_loss(user, fixed_bias), fixed_init, steps, inner_lr)
        expected_init += grad(problem.user_query_loss(user, fixed_bias))(adapted) / USERS
        # The bias gets only the query loss's partial derivative, because FOMAML drops every path through
        # the inner gradients.
        items, ratings = problem.query_items[user], problem.query_ratings[user]
        query_loss_of_bias = lambda b: problem.user_loss(adapted, items, ratings, b)  # noqa: E731
        expected_bias += grad(query_loss_of_bias)(fixed_bias) / USERS
    check_close(
        init.grad, expected_init, "FOMAML init gradient is not the query gradient at adapted prompts", EXACT_TOLERANCE
    )
    check_close(
        bias.grad, expected_bias, "FOMAML shared gradient is not the query partial at adapted prompts", EXACT_TOLERANCE
    )


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_minus_fomaml_is_hessian_term(steps: int) -> None:
    problem = make_problem()
    inner_lr = 0.5
    user = 1
    one_user = slice(user, user + 1)

    maml_init, _ = run_maml_step(problem, steps, inner_lr, second_order=True, users=one_user)
    fomaml_init, _ = run_maml_step(problem, steps, inner_lr, second_order=False, users=one_user)

    # d(p_K)/d(p_0) = (I - lr H_{K-1}) ... (I - lr H_0), and each Hessian H_t is symmetric, so the
    # meta-gradient is (I - lr H_0) ... (I - lr H_{K-1}) g_query(p_K).
    init, bias = make_parameters()
    init, bias = init.detach(), bias.detach()
    support_loss = problem.user_support_loss(user, bias)
    identity = torch.eye(PROMPT_SIZE, dtype=DTYPE)
    jacobian_transpose = identity
    prompt = init
    for _ in range(steps):
        support_hessian = jacrev(grad(support_loss))(prompt).reshape(PROMPT_SIZE, PROMPT_SIZE)
        jacobian_transpose = jacobian_transpose @ (identity - inner_lr * support_hessian)
        prompt = prompt - inner_lr * grad(support_loss)(prompt)
    query_gradient = grad(problem.user_query_loss(user, bias))(prompt).reshape(-1)

    check_close(
        fomaml_init.grad.reshape(-1),
        query_gradient,
        "FOMAML init gradient is not the query gradient at the adapted prompt",
        EXACT_TOLERANCE,
    )
    check_close(
        maml_init.grad.reshape(-1),
        jacobian_transpose @ query_gradient,
        "MAML init gradient is not the product of (I - lr H_t) times the query gradient",
        EXACT_TOLERANCE,
    )
    check_close(
        (maml_init.grad - fomaml_init.grad).reshape(-1),
        (jacobian_transpose - identity) @ query_gradient,
        "MAML minus FOMAML is not the second-order term",
        EXACT_TOLERANCE,
    )
    if steps == 1:
        check_close(
            (maml_init.grad - fomaml_init.grad).reshape(-1),
            -inner_lr * support_hessian @ query_gradient,
            "MAML minus FOMAML after one step is not -lr * H_support(init) @ g_query(adapted)",
            EXACT_TOLERANCE,
        )


# Meta-SGD


def learnable_inner_lr() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.linspace(0.2, 0.7, PROMPT_SIZE, dtype=DTYPE).reshape(PROMPT_TOKENS, PROMPT_WIDTH))


def test_meta_sgd_maml_lr_gradient() -> None:
    problem = make_problem()
    inner_lr = learnable_inner_lr()
    steps = 2

    init, bias = run_maml_step(problem, steps, inner_lr, second_order=True)

    assert inner_lr.grad is not None, "MAML left the learnable inner learning rate without a gradient"
    expected = central_differences(lambda point: reference_meta_loss(problem, init, bias, point, steps), inner_lr)
    check_close(inner_lr.grad, expected, "MAML inner-lr gradient differs from central differences", FD_TOLERANCE)


def test_meta_sgd_fomaml_lr_gradient() -> None:
    problem = make_problem()
    inner_lr = learnable_inner_lr()

    # With one inner step the support gradient at init does not depend on the learning rate, so the
    # first-order learning-rate gradient is exact and finite differences must match it.
    init, bias = run_maml_step(problem, 1, inner_lr, second_order=False)

    assert inner_lr.grad is not None, "FOMAML left the learnable inner learning rate without a gradient"
    expected = central_differences(lambda point: reference_meta_loss(problem, init, bias, point, 1), inner_lr)
    check_close(inner_lr.grad, expected, "FOMAML inner-lr gradient differs from central differences", FD_TOLERANCE)


def test_meta_sgd_fomaml_lr_gradient_two_steps() -> None:
    problem = make_problem()
    inner_lr = learnable_inner_lr()
    steps = 2

    init, bias = run_maml_step(problem, steps, inner_lr, second_order=False)

    # p_K = p_0 - lr * sum_t g_t with every support gradient g_t held constant, so dL/dlr = -sum_t g_t * g_query.
    fixed_init, fixed_bias, fixed_lr = init.detach(), bias.detach(), inner_lr.detach()
    expected = torch.zeros_like(fixed_lr)
    for user in range(USERS):
        support_loss = problem.user_support_loss(user, fixed_bias)
        prompt = fixed_init
        gradient_sum = torch.zeros_like(fixed_init)
        for _ in range(steps):
            support_gradient = grad(support_loss)(prompt)
            gradient_sum += support_gradient
            prompt = prompt - fixed_lr * support_gradient
        expected -= gradient_sum * grad(problem.user_query_loss(user, fixed_bias))(prompt) / USERS
    check_close(inner_lr.grad, expected, "FOMAML inner-lr gradient differs from -sum_t g_t * g_query", EXACT_TOLERANCE)


# Reptile


@dataclass
class QuadraticUsers:
    """Support losses ``0.5 * ||A_u (p - c_u)||^2`` on the flattened prompt ``p``."""

    matrices: torch.Tensor  # A_u, [USERS, PROMPT_SIZE, PROMPT_SIZE]
    centres: torch.Tensor  # c_u, [USERS, PROMPT_SIZE]

    def loss(self, prompts: torch.Tensor) -> torch.Tensor:
        residuals = torch.einsum("bij,bj->bi", self.matrices, prompts.flatten(1) - self.centres)
        return 0.5 * (residuals**2).sum(dim=1)

    def adapted(self, init: torch.Tensor, steps: int, inner_lr: float) -> torch.Tensor:
        """Return the closed form ``p_K = c + (I - lr A^T A)^K (p_0 - c)`` for every user, ``[USERS, P, H]``."""
        identity = torch.eye(PROMPT_SIZE, dtype=DTYPE)
        contraction = identity - inner_lr * self.matrices.transpose(1, 2) @ self.matrices
        offsets = init.reshape(-1) - self.centres  # [USERS, PROMPT_SIZE]
        adapted = self.centres + torch.einsum("bij,bj->bi", torch.linalg.matrix_power(contraction, steps), offsets)
        return adapted.reshape(USERS, PROMPT_TOKENS, PROMPT_WIDTH)


def make_quadratic_users(seed: int = 3) -> QuadraticUsers:
    generator = torch.Generator().manual_seed(seed)
    matrices = 0.4 * torch.randn(USERS, PROMPT_SIZE, PROMPT_SIZE, generator=generator, dtype=DTYPE)
    centres = torch.randn(USERS, PROMPT_SIZE, generator=generator, dtype=DTYPE)
    return QuadraticUsers(matrices, centres)


def test_reptile_direction_closed_form() -> None:
    problem = make_problem()
    quadratic = make_quadratic_users()
    init, bias = make_parameters()
    start = init.detach().clone()
    inner_lr = 0.1
    steps = 3
    epsilon = 0.25

    reptile_step(quadratic.loss, problem.query_loss(bias), init, USERS, steps, inner_lr)

    adapted = quadratic.adapted(start, steps, inner_lr)
    mean_adapted = adapted.mean(dim=0)
    check_close(init.grad, start - mean_adapted, "Reptile gradient is not init - mean(adapted)", EXACT_TOLERANCE)

    expected_bias = grad(lambda b: problem.batch_loss(adapted, problem.query_items, problem.query_ratings, b).mean())(
        bias.detach()
    )
    check_close(
        bias.grad, expected_bias, "shared gradient is not the query gradient at the adapted prompts", EXACT_TOLERANCE
    )

    torch.optim.SGD([init], lr=epsilon).step()
    check_close(
        init.detach(),
        start + epsilon * (mean_adapted - start),
        "an SGD step of size epsilon is not init + epsilon * (mean(adapted) - init)",
        EXACT_TOLERANCE,
    )


def test_reptile_keeps_inner_lr_fixed() -> None:
    problem = make_problem()
    quadratic = make_quadratic_users()
    init, bias = make_parameters()
    inner_lr = torch.nn.Parameter(torch.full((PROMPT_TOKENS, PROMPT_WIDTH), 0.1, dtype=DTYPE))

    reptile_step(quadratic.loss, problem.query_loss(bias), init, USERS, 2, inner_lr)

    assert inner_lr.grad is None, "Reptile gave the inner learning rate a gradient"
    expected = init.detach() - quadratic.adapted(init.detach(), 2, 0.1).mean(dim=0)
    check_close(init.grad, expected, "Reptile with a tensor inner lr differs from the closed form", EXACT_TOLERANCE)


def test_reptile_accumulates_gradient() -> None:
    problem = make_problem()
    quadratic = make_quadratic_users()
    init, bias = make_parameters()
    start = init.detach().clone()

    reptile_step(quadratic.loss, problem.query_loss(bias), init, USERS, 2, 0.1)
    reptile_step(quadratic.loss, problem.query_loss(bias), init, USERS, 2, 0.1)

    expected = 2 * (start - quadratic.adapted(start, 2, 0.1).mean(dim=0))
    check_close(init.grad, expected, "a second Reptile step did not add to init.grad", EXACT_TOLERANCE)
