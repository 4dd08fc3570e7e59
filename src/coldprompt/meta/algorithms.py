"""Inner and outer loops for meta-learning a soft-prompt initialisation.

Every user is a task. The inner loop adapts a batch of per-user prompts ``[B, P, H]`` with gradient steps on
each user's support loss. Users never interact inside a forward pass, so the gradient of the summed loss with
respect to the prompt batch is each user's own gradient, and B users adapt in one backward pass.

Outer loops (the meta-gradient is written into ``.grad`` of the initialisation and shared modules; the caller
steps its optimiser):

* MAML: the query loss is differentiated through the inner steps (second order; needs attention with a double
  backward, which CPU SDPA lacks, so use eager attention). Finn, Abbeel and Levine, "Model-Agnostic
  Meta-Learning for Fast Adaptation of Deep Networks" (2017).
* FOMAML: the same, but the inner gradients are treated as constants, so d(adapted)/d(init) = I and the
  second-order term is dropped.
* Reptile: adapt on the user's data, then move the initialisation towards the adapted prompt:
  ``init <- init + epsilon * mean(adapted - init)``. Nichol, Achiam and Schulman, "On First-Order
  Meta-Learning Algorithms" (2018).

Inner learning rates may be a learned tensor broadcastable to the prompt (Meta-SGD: Li et al., "Meta-SGD:
Learning to Learn Quickly for Few-Shot Learning", 2017); MAML and FOMAML train them, Reptile keeps them fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ALGORITHMS = ("reptile", "fomaml", "maml")

#: Per-user loss: prompts [B, P, H] -> losses [B].
LossFn = Callable[[torch.Tensor], torch.Tensor]


def adapt(
    loss_fn: LossFn,
    prompts: torch.Tensor,
    steps: int,
    inner_lr: torch.Tensor | float,
    *,
    second_order: bool = False,
) -> torch.Tensor:
    """Run ``steps`` gradient steps on each user's prompt and return the adapted prompts ``[B, P, H]``.

    With ``second_order`` the returned tensor stays differentiable through the inner gradients (MAML).
    Without it the inner gradients are constants, but the result is still differentiable with respect to
    ``prompts`` (identity Jacobian) and ``inner_lr`` (FOMAML, Meta-SGD).
    """
    if steps == 0:
        return prompts
    if not prompts.requires_grad:
        prompts = prompts.detach().requires_grad_(True)
    for _ in range(steps):
        loss = loss_fn(prompts).sum()
        (grad,) = torch.autograd.grad(loss, prompts, create_graph=second_order)
        prompts = prompts - inner_lr * grad
    return prompts


@dataclass
class OuterStep:
    """Losses of one outer step (means over the meta-batch), for logging."""

    support_loss: float
    query_loss: float


def maml_step(
    support_loss: LossFn,
    query_loss: LossFn,
    init: torch.Tensor,
    batch_size: int,
    steps: int,
    inner_lr: torch.Tensor | float,
    *,
    second_order: bool,
) -> OuterStep:
    """Accumulate the (FO)MAML meta-gradient of the mean query loss into ``.grad`` of every leaf it reaches.

    ``init`` is the meta-learned initialisation ``[P, H]``; it is broadcast to ``batch_size`` users.
    """
    prompts = init.unsqueeze(0).expand(batch_size, *init.shape)
    with torch.no_grad():
        before = support_loss(prompts).mean().item() if steps else float("nan")
    adapted = adapt(support_loss, prompts, steps, inner_lr, second_order=second_order)
    loss = query_loss(adapted).mean()
    loss.backward()
    return OuterStep(before, loss.item())


def reptile_step(
    task_loss: LossFn,
    query_loss: LossFn,
    init: torch.nn.Parameter,
    batch_size: int,
    steps: int,
    inner_lr: torch.Tensor | float,
) -> OuterStep:
    """Write the Reptile direction ``init - mean(adapted)`` into ``init.grad``.

    A plain SGD step of size ``epsilon`` on that gradient is the Reptile update
    ``init + epsilon * (mean(adapted) - init)``. Shared modules (anything else ``query_loss`` reaches) get the
    first-order gradient of the query loss at the adapted prompts, which Reptile itself leaves undefined.
    """
    prompts = init.detach().unsqueeze(0).expand(batch_size, *init.shape)
    adapted = adapt(task_loss, prompts, steps, float(inner_lr) if not torch.is_tensor(inner_lr) else inner_lr.detach())
    adapted = adapted.detach()
    loss = query_loss(adapted).mean()
    loss.backward()
    direction = init.detach() - adapted.mean(dim=0)
    init.grad = direction if init.grad is None else init.grad + direction
    return OuterStep(float("nan"), loss.item())
