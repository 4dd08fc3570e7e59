"""A frozen causal LM that reads a user's support items through per-user soft prompts and scores every item.

Input row for one user (right-padded to the longest row of the batch, so real positions never attend to
padding and position ids are 0..L-1 as when the row is alone)::

    [profile tokens] [P virtual tokens = the user's soft prompt] [item_1] [item_2] ... [item_T]

* Items are one input vector each: ``in_proj(text encoding) + item id embedding + rating embedding``. The text
  encoding is the frozen backbone's mean-pooled hidden state for "Title (Year), genres". The id embedding is
  learned from meta-train interactions, so it carries collaborative signal that titles alone do not.
* The soft prompt sits after the profile and before the items, so under causal attention it conditions how
  every item is read, while the profile (plain text, known at sign-up) is read first.
* The hidden state at the last prompt position predicts item_1, the one at item_t predicts item_{t+1}. A
  single forward pass therefore gives the inner-loop loss (support positions) and the query loss.
* Scores are ``out_proj(h) . item output embedding + item bias`` for the whole catalogue: one matrix product,
  so ranking 10,000 items costs about as much as one extra token.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coldprompt.llm.lean import LeanLlama

RATING_UNKNOWN, RATING_LIKED, RATING_DISLIKED = 0, 1, 2
LIKED_THRESHOLD = 4.0  # ratings at or above this (on a 5-point scale) count as liked


@dataclass
class SequenceBatch:
    """Padded inputs for B users; every row has the same number T of item slots (items padded with 0)."""

    items: torch.Tensor  # int64 [B, T]
    ratings: torch.Tensor  # int64 [B, T] rating class per item
    lengths: torch.Tensor  # int64 [B] number of real items per row
    profile_ids: torch.Tensor  # int64 [B, Lp] profile token ids (padded with 0)
    profile_lengths: torch.Tensor  # int64 [B]
    # Keys and values of the profile tokens, filled on first use by a lean backbone and reused by every later
    # forward pass over this batch (the profile comes before the prompt, so the prompt never changes them).
    profile_past: list | None = field(default=None, compare=False, repr=False)

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return SequenceBatch(*(getattr(self, f).to(device) for f in ("items", "ratings", "lengths", "profile_ids", "profile_lengths")))


def rating_classes(ratings: np.ndarray) -> np.ndarray:
    classes = np.full(len(ratings), RATING_UNKNOWN, dtype=np.int64)
    known = ~np.isnan(ratings)
    classes[known & (ratings >= LIKED_THRESHOLD)] = RATING_LIKED
    classes[known & (ratings < LIKED_THRESHOLD)] = RATING_DISLIKED
    return classes


class SoftPromptRecommender(nn.Module):
    """Per-user soft prompts and small shared modules around a frozen backbone."""

    def __init__(
        self,
        backbone_model: nn.Module,
        item_encodings: torch.Tensor,
        *,
        num_virtual_tokens: int = 8,
        prompt_init_ids: torch.Tensor | None = None,
        learn_item_ids: bool = True,
        inner_lr: float = 0.1,
        support_in_context: bool = True,
    ):
        super().__init__()
        # False: the backbone reads only [profile][prompt], and a user's interactions reach the scores only
        # through the inner loop's gradient steps on the prompt (the prompt is the user's whole representation).
        self.support_in_context = support_in_context
        self.backbone = backbone_model
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.backbone.eval()
        embeddings = self.backbone.get_input_embeddings().weight
        hidden = embeddings.shape[1]
        token_scale = float(embeddings.detach().float().std())
        num_items = item_encodings.shape[0]

        # Text encodings are standardised per dimension so that the projections start at a sane scale.
        mean = item_encodings.mean(dim=0, keepdim=True)
        std = item_encodings.std(dim=0, keepdim=True).clamp_min(1e-6)
        self.register_buffer("item_text", ((item_encodings - mean) / std).float(), persistent=False)

        self.in_proj = nn.Linear(item_encodings.shape[1], hidden, bias=False)
        nn.init.normal_(self.in_proj.weight, std=token_scale / math.sqrt(item_encodings.shape[1]))
        self.item_in = nn.Embedding(num_items, hidden)
        self.item_out = nn.Embedding(num_items, hidden)
        nn.init.zeros_(self.item_in.weight)
        nn.init.zeros_(self.item_out.weight)
        self.item_in.weight.requires_grad_(learn_item_ids)
        self.item_out.weight.requires_grad_(learn_item_ids)
        self.rating = nn.Embedding(3, hidden)
        nn.init.zeros_(self.rating.weight)
        # Hidden states after the backbone's final norm can have a few very large dimensions, more so after
        # profile text. A LayerNorm first keeps the initial loss near log(N) instead of twice that.
        self.user_norm = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.text_out = nn.Linear(item_encodings.shape[1], hidden, bias=False)
        nn.init.normal_(self.text_out.weight, std=1.0 / math.sqrt(item_encodings.shape[1]))
        self.item_bias = nn.Parameter(torch.zeros(num_items))

        # The meta-initialisation starts from the embeddings of real tokens (a common prompt-tuning start).
        if prompt_init_ids is None:
            prompt_init_ids = torch.arange(num_virtual_tokens) % embeddings.shape[0]
        self.prompt_init = nn.Parameter(embeddings[prompt_init_ids[:num_virtual_tokens]].detach().float().clone())
        # Meta-SGD: a learned inner learning rate per prompt entry, stored as a log for positivity.
        self.log_inner_lr = nn.Parameter(torch.full((num_virtual_tokens, hidden), math.log(inner_lr)))
        self._fixed_item_outputs: torch.Tensor | None = None  # set by fixed_item_outputs() or freeze_item_outputs()

    # ----------------------------------------------------------------------------------------- properties
    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_init.shape[0]

    @property
    def num_items(self) -> int:
        return self.item_bias.shape[0]

    def inner_lr(self) -> torch.Tensor:
        return self.log_inner_lr.exp()

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def backbone_parameter_count(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters())

    # ----------------------------------------------------------------------------------------- forward
    def item_inputs(self, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """Input vectors for item slots: [B, T] -> [B, T, H]."""
        return self.in_proj(self.item_text[items]) + self.item_in(items) + self.rating(ratings)

    def item_outputs(self) -> torch.Tensor:
        """Output embeddings of the whole catalogue: [N, H].

        Inside :meth:`fixed_item_outputs` this is a stored constant; otherwise it is recomputed, a
        ``[N, D] x [D, H]`` product (about 4 GFLOP for ML-1M), so that training gets its gradients.
        """
        if self._fixed_item_outputs is not None:
            return self._fixed_item_outputs
        return self._compute_item_outputs()

    def _compute_item_outputs(self) -> torch.Tensor:
        return self.text_out(self.item_text) + self.item_out.weight

    @contextmanager
    def fixed_item_outputs(self):
        """Compute the catalogue's output embeddings once and reuse them until the block ends.

        For adaptation and scoring, where only the prompts are differentiated. Inside the block no gradient
        reaches ``text_out`` or ``item_out``, so it must not wrap a training step.
        """
        if self._fixed_item_outputs is not None:  # nested: the outer block already fixed them
            yield
            return
        with torch.no_grad():
            self._fixed_item_outputs = self._compute_item_outputs()
        try:
            yield
        finally:
            self._fixed_item_outputs = None

    def freeze_item_outputs(self) -> None:
        """Fix the catalogue's output embeddings for good, for a model that only serves and never trains."""
        with torch.no_grad():
            self._fixed_item_outputs = self._compute_item_outputs()

    def hidden_states(self, prompts: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        """Return the hidden states at the T prediction positions: [B, T + 1, H].

        Position 0 is the last virtual token (predicts item 1); position t is item t (predicts item t + 1).
        """
        if isinstance(self.backbone, LeanLlama):  # it can reuse the profile's keys and values
            return self._hidden_states_with_past(prompts, batch)
        embed = self.backbone.get_input_embeddings()
        B, T = batch.items.shape
        Lp = batch.profile_ids.shape[1]
        P = prompts.shape[1]
        dtype = embed.weight.dtype  # the backbone's dtype; trainable inputs stay float32 until here
        profile = embed(batch.profile_ids)  # [B, Lp, H]
        items = self.item_inputs(batch.items, batch.ratings).to(dtype)  # [B, T, H]
        prompts = prompts.to(dtype)

        # Rows are laid out as [profile | prompt | items] then compacted left so padding sits at the right.
        pieces = torch.cat([profile, prompts, items], dim=1)  # [B, Lp + P + T, H]
        device = batch.items.device
        real = torch.cat(
            [
                torch.arange(Lp, device=device).expand(B, Lp) < batch.profile_lengths[:, None],
                torch.ones(B, P, dtype=torch.bool, device=device),
                torch.arange(T, device=device).expand(B, T) < batch.lengths[:, None],
            ],
            dim=1,
        )
        order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)  # real positions first, in order
        inputs = torch.gather(pieces, 1, order[..., None].expand_as(pieces))
        mask = torch.gather(real, 1, order).long()
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)

        out = self.backbone.base_model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions)
        hidden = out.last_hidden_state.float()  # [B, L, H]

        # Prediction positions: last prompt token, then each item slot.
        start = batch.profile_lengths + P - 1  # [B]
        index = start[:, None] + torch.arange(T + 1, device=device)[None, :]  # [B, T + 1]
        index = index.clamp_max(hidden.shape[1] - 1)
        return torch.gather(hidden, 1, index[..., None].expand(B, T + 1, hidden.shape[-1]))

    def _hidden_states_with_past(self, prompts: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        """:meth:`hidden_states` with the profile encoded once per batch and passed as keys and values.

        Rows are ``[profile, right-padded] [prompt] [items, right-padded]``. The attention mask has holes where
        a profile is shorter than the longest, and positions continue from each row's own profile length. So
        every real token attends to the same keys, at the same positions, as in the compacted layout.
        """
        embed = self.backbone.get_input_embeddings()
        B, T = batch.items.shape
        Lp, P = batch.profile_ids.shape[1], prompts.shape[1]
        device, dtype = batch.items.device, embed.weight.dtype
        profile_mask = torch.arange(Lp, device=device).expand(B, Lp) < batch.profile_lengths[:, None]
        if Lp and batch.profile_past is None:
            with torch.no_grad():
                out = self.backbone(inputs_embeds=embed(batch.profile_ids), attention_mask=profile_mask.long(), return_past=True)
            batch.profile_past = out.past
        items = self.item_inputs(batch.items, batch.ratings).to(dtype)
        inputs = torch.cat([prompts.to(dtype), items], dim=1)  # [B, P + T, H]
        mask = torch.cat(
            [profile_mask, torch.ones(B, P, dtype=torch.bool, device=device),
             torch.arange(T, device=device).expand(B, T) < batch.lengths[:, None]], dim=1,
        ).long()
        positions = batch.profile_lengths[:, None] + torch.arange(P + T, device=device)[None, :]
        past = batch.profile_past if Lp else None
        hidden = self.backbone(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, past=past).last_hidden_state
        return hidden[:, P - 1 :].float()  # [B, T + 1, H]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item from hidden states: [..., H] -> [..., N].

        The dot product is divided by sqrt(H), as in attention, so that the initial scores are small and the
        initial cross-entropy is close to log(N).
        """
        user = self.out_proj(self.user_norm(hidden.float()))
        return user @ self.item_outputs().T / math.sqrt(user.shape[-1]) + self.item_bias

    def position_losses(self, prompts: torch.Tensor, batch: SequenceBatch, first: int, last: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per user over predictions of items ``first..last-1`` (0-based): [B].

        ``last`` is per user ([B]); users with no position in range get a loss of 0.
        """
        B, T = batch.items.shape
        targets = batch.items[:, first:T]
        if self.support_in_context:
            logits = self.logits(self.hidden_states(prompts, batch)[:, first:T])  # predicts items first..T-1
            ce = F.cross_entropy(logits.reshape(-1, self.num_items), targets.reshape(-1), reduction="none").view(B, -1)
        else:
            # One user vector predicts every item in range, so the loss is a bag of items, not a sequence.
            log_probs = F.log_softmax(self.logits(self.user_vectors(prompts, batch)), dim=-1)  # [B, N]
            ce = -torch.gather(log_probs, 1, targets)
        slot = torch.arange(first, T, device=batch.items.device)[None, :]
        use = (slot < last[:, None]).float()
        return (ce * use).sum(dim=1) / use.sum(dim=1).clamp_min(1.0)

    def user_vectors(self, prompts: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        """Hidden state at the last prompt position when the backbone reads only profile and prompt: [B, H]."""
        empty = SequenceBatch(
            batch.items[:, :0], batch.ratings[:, :0], torch.zeros_like(batch.lengths), batch.profile_ids,
            batch.profile_lengths, batch.profile_past,
        )
        hidden = self.hidden_states(prompts, empty)[:, 0]
        batch.profile_past = empty.profile_past  # keep the profile's keys and values for the next pass
        return hidden

    def user_scores(self, prompts: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        """Scores for the item after each user's last real item: [B, N]."""
        if not self.support_in_context:
            return self.logits(self.user_vectors(prompts, batch))
        hidden = self.hidden_states(prompts, batch)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.lengths]  # [B, H]
        return self.logits(last)
