"""Request and response bodies of the HTTP API, and the limits the API enforces.

Every request model forbids unknown fields, so a misspelt field gives 422 instead of being ignored.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# User ids: 1 to 64 characters from letters, digits, "_", "-" and ".", starting with a letter or digit.
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_ITEM_ID_CHARS = 64
MAX_PROFILE_CHARS = 1000
MAX_INTERACTIONS_PER_REQUEST = 200
MAX_K = 100
DEFAULT_K = 10
MAX_BODY_BYTES = 1024 * 1024  # larger request bodies get 413 before they are parsed

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ITEM_ID_CHARS)]
Profile = Annotated[
    str,
    StringConstraints(max_length=MAX_PROFILE_CHARS),
    Field(description="profile sentence, e.g. 'A female user aged 25-34.'; cut to the checkpoint's max_profile_tokens"),
]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InteractionIn(RequestModel):
    """One interaction of a user with a catalogue item."""

    item_id: ItemId = Field(description="item id from the checkpoint's catalogue (the data set's item id)")
    timestamp: float | None = Field(
        None, allow_inf_nan=False, description="seconds since the Unix epoch; stored, not used for ordering"
    )
    rating: float | None = Field(
        None, ge=0.0, le=5.0, allow_inf_nan=False,
        description="rating on a 0-5 scale; 4 or more counts as liked, less as disliked, absent as unrated",
    )


class InteractionsRequest(RequestModel):
    interactions: list[InteractionIn] = Field(
        default_factory=list, max_length=MAX_INTERACTIONS_PER_REQUEST,
        description=f"interactions in the order they happened, at most {MAX_INTERACTIONS_PER_REQUEST} per request",
    )
    profile: Profile | None = Field(None, description="replaces the stored profile when given")

    @model_validator(mode="after")
    def _stores_something(self) -> InteractionsRequest:
        if not self.interactions and self.profile is None:
            raise ValueError("the request stores nothing: give at least one interaction or a profile")
        return self


class InteractionsResponse(BaseModel):
    user_id: str
    created: bool = Field(description="true when this request created the user")
    stored: int = Field(description="interactions stored by this request")
    total_interactions: int = Field(description="interactions stored for the user, this request included")
    history_version: int = Field(description="increases with every change of the user's history or profile")


class StoredInteraction(BaseModel):
    sequence: int = Field(description="0-based position in the user's history, in the order stored")
    item_id: str
    timestamp: float | None
    rating: float | None


class UserResponse(BaseModel):
    user_id: str
    profile: str | None
    history_version: int
    interactions: list[StoredInteraction]


class StatelessRequest(RequestModel):
    history: list[ItemId] = Field(
        default_factory=list, max_length=MAX_INTERACTIONS_PER_REQUEST,
        description="item ids the user interacted with, oldest first",
    )
    profile: Profile | None = None
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="number of items to return")


class Reason(BaseModel):
    """A support item that explains a recommendation."""

    item_id: str
    title: str
    similarity: float = Field(description="cosine similarity of the two items' output embeddings, in [-1, 1]")


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    score: float = Field(description="the model's logit for the item; higher ranks first")
    because: list[Reason] = Field(description="up to 3 support items most similar to this item, most similar first")


class RecommendationsResponse(BaseModel):
    user_id: str | None = Field(description="null for POST /v1/recommendations")
    prompt: str = Field(
        description="where the soft prompt came from: 'adapted' (inner loop run by this request), 'stored' "
        "(adapted earlier on the same history and checkpoint) or 'initialisation' (no history: the meta-learned init)"
    )
    history_used: int = Field(description="interactions the model read: the most recent ones, up to the context limit")
    checkpoint_id: str
    items: list[RecommendedItem]


class ErrorResponse(BaseModel):
    detail: str


class UnknownItemsResponse(BaseModel):
    detail: str
    unknown_item_ids: list[str]


class HealthResponse(BaseModel):
    status: str = Field(description="'ok', 'loading' or 'failed'")
    checkpoint_id: str | None = None
    detail: str | None = None
