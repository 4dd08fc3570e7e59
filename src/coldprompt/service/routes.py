"""HTTP routes: users, their interactions and recommendations under /v1, plus /healthz and /metrics."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from coldprompt.service.middleware import user_id_for_log
from coldprompt.service.model import RankedItem, ServiceModel
from coldprompt.service.schemas import (
    DEFAULT_K,
    MAX_K,
    USER_ID_PATTERN,
    ErrorResponse,
    HealthResponse,
    InteractionsRequest,
    InteractionsResponse,
    Reason,
    RecommendationsResponse,
    RecommendedItem,
    StatelessRequest,
    StoredInteraction,
    UnknownItemsResponse,
    UserResponse,
)
from coldprompt.service.state import ServiceState
from coldprompt.service.store import NewInteraction, TooManyInteractionsError

logger = logging.getLogger(__name__)

PROMPT_ADAPTED, PROMPT_STORED, PROMPT_INITIALISATION = "adapted", "stored", "initialisation"
COLD_START_KEY = ("no history",)  # concurrent requests for users without history share one scoring job
_warned_outside_catalogue = False

UserId = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        description="1 to 64 characters from letters, digits, '_', '-' and '.', starting with a letter or digit",
    ),
]

router = APIRouter()
UNAVAILABLE = {503: {"model": ErrorResponse, "description": "the model is loading, or the queue or database is busy"}}


class UnknownItemsError(Exception):
    """Item ids that are not in the checkpoint's catalogue; the response is a 422 that lists them."""

    def __init__(self, item_ids: list[str]):
        super().__init__(f"unknown item ids: {item_ids}")
        self.item_ids = item_ids


async def unknown_items_handler(request: Request, error: UnknownItemsError) -> JSONResponse:
    logger.info(
        "rejected %d unknown item ids (user %s, request %s)",
        len(error.item_ids), user_id_for_log(request.scope), request.state.request_id,
    )
    body = UnknownItemsResponse(
        detail=f"unknown item ids {error.item_ids}; use item ids from the checkpoint's catalogue",
        unknown_item_ids=error.item_ids,
    )
    return JSONResponse(body.model_dump(), status_code=422)


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(service_state)]


# ---------------------------------------------------------------------------------------------- users
@router.post(
    "/v1/users/{user_id}/interactions",
    response_model=InteractionsResponse,
    status_code=201,
    responses={200: {"model": InteractionsResponse, "description": "stored for an existing user"},
               409: {"model": ErrorResponse, "description": "the per-user interaction limit would be exceeded"},
               **UNAVAILABLE},
    summary="Store interactions (and optionally the profile) of a user",
    description="Commits before responding: 201 when the request created the user, 200 otherwise. Unknown item "
    "ids give 422 with `unknown_item_ids`, and nothing is stored.",
)
async def add_interactions(
    user_id: UserId, body: InteractionsRequest, request: Request, response: Response, state: State
) -> InteractionsResponse:
    model = state.require_model()
    _, unknown = model.item_indices(x.item_id for x in body.interactions)
    if unknown:
        raise UnknownItemsError(unknown)

    new = [NewInteraction(x.item_id, x.timestamp, x.rating) for x in body.interactions]
    limit = state.settings.max_interactions_per_user
    try:
        result = await state.call_store(
            request, "append interactions", user_id, state.store.append_interactions, user_id, new, body.profile, limit
        )
    except TooManyInteractionsError as error:
        logger.info("rejected a write over the per-user limit (user %s, request %s)", user_id, request.state.request_id)
        raise HTTPException(409, str(error)) from error
    response.status_code = 201 if result.created else 200
    return InteractionsResponse(
        user_id=user_id, created=result.created, stored=result.stored,
        total_interactions=result.total_interactions, history_version=result.history_version,
    )


@router.get(
    "/v1/users/{user_id}",
    response_model=UserResponse,
    responses={404: {"model": ErrorResponse, "description": "no such user"}, **UNAVAILABLE},
    summary="Read a user's profile and whole history",
)
async def get_user(user_id: UserId, request: Request, state: State) -> UserResponse:
    user = await state.call_store(request, "read user", user_id, state.store.load_user, user_id)
    if user is None:
        raise HTTPException(404, f"user {user_id!r} not found")
    return UserResponse(
        user_id=user_id, profile=user.profile, history_version=user.history_version,
        interactions=[StoredInteraction(**row) for row in user.interactions],
    )


@router.delete(
    "/v1/users/{user_id}",
    status_code=204,
    responses={404: {"model": ErrorResponse, "description": "no such user"}, **UNAVAILABLE},
    summary="Delete everything stored about a user: profile, interactions and adapted prompt",
)
async def delete_user(user_id: UserId, request: Request, state: State) -> Response:
    deleted = await state.call_store(request, "delete user", user_id, state.store.delete_user, user_id)
    if not deleted:
        raise HTTPException(404, f"user {user_id!r} not found")
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------------- recommendations
@router.get(
    "/v1/users/{user_id}/recommendations",
    response_model=RecommendationsResponse,
    responses=UNAVAILABLE,
    summary="Top-k items for a stored user, leaving out items they interacted with",
    description="Adapts the user's soft prompt on their most recent interactions when the history changed since "
    "the stored prompt was adapted (or the checkpoint changed); otherwise reuses the stored prompt. A user "
    "without history, or unknown to the store, gets the meta-learned initialisation.",
)
async def recommend_for_user(
    user_id: UserId, request: Request, state: State,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="number of items to return")] = DEFAULT_K,
) -> RecommendationsResponse:
    model = state.require_model()
    context = await state.call_store(
        request, "read user context", user_id, state.store.load_context, user_id, model.context_size
    )
    if context is None:
        job = model.make_job([], [], None, None)
        result, _ = await state.run_model(request, user_id, job, COLD_START_KEY)
        return _response(model, user_id, PROMPT_INITIALISATION, 0, model.rank(result.scores, [], [], k))

    items, ratings = _known_history(model, context.recent_items, context.recent_ratings)
    excluded, _ = model.item_indices(context.interacted_items)
    stored_prompt = model.decode_prompt(context.prompt, context.history_version)
    job = model.make_job(items, ratings, context.profile, stored_prompt)
    # Requests for one user and history version share one adaptation.
    key = (user_id, context.history_version) if model.needs_adaptation(job) else None
    result, queued_here = await state.run_model(request, user_id, job, key)

    if result.adapted and queued_here:
        prompt = model.encode_prompt(result.prompt, context.history_version)
        try:
            await state.call_store(request, "save prompt", user_id, state.store.save_prompt, user_id, prompt)
        except (HTTPException, SQLAlchemyError):
            pass  # call_store logged and counted it; the recommendations stand, the next request adapts again
    if result.adapted:
        source = PROMPT_ADAPTED
    elif stored_prompt is not None:
        source = PROMPT_STORED
        state.metrics.prompt_reuses.inc()
    else:
        source = PROMPT_INITIALISATION
    ranked = model.rank(result.scores, excluded, job.items, k)
    return _response(model, user_id, source, len(job.items), ranked)


@router.post(
    "/v1/recommendations",
    response_model=RecommendationsResponse,
    responses=UNAVAILABLE,
    summary="Top-k items for a history given in the request; stores nothing",
    description="Adapts a prompt on the history (its most recent interactions, up to the context limit) and "
    "leaves the history's items out of the ranking. Unknown item ids give 422 with `unknown_item_ids`.",
)
async def recommend_stateless(body: StatelessRequest, request: Request, state: State) -> RecommendationsResponse:
    model = state.require_model()
    items, unknown = model.item_indices(body.history)
    if unknown:
        raise UnknownItemsError(unknown)
    job = model.make_job(items, [], body.profile, None)
    result, _ = await state.run_model(request, None, job)
    source = PROMPT_ADAPTED if result.adapted else PROMPT_INITIALISATION
    return _response(model, None, source, len(job.items), model.rank(result.scores, items, job.items, body.k))


def _known_history(model: ServiceModel, item_ids: list[str], ratings: list[float | None]) -> tuple[list[int], list]:
    """Map stored item ids to catalogue indices, dropping ids this checkpoint's catalogue lacks."""
    global _warned_outside_catalogue
    items, kept_ratings = [], []
    for item_id, rating in zip(item_ids, ratings):
        index = model.item_index.get(item_id)
        if index is not None:
            items.append(index)
            kept_ratings.append(rating)
    if len(items) < len(item_ids) and not _warned_outside_catalogue:
        _warned_outside_catalogue = True
        logger.warning("stored interactions name items outside the checkpoint's catalogue; the model skips them "
                       "(logged once per process)")
    return items, kept_ratings


def _response(
    model: ServiceModel, user_id: str | None, source: str, history_used: int, ranked: list[RankedItem]
) -> RecommendationsResponse:
    return RecommendationsResponse(
        user_id=user_id,
        prompt=source,
        history_used=history_used,
        checkpoint_id=model.checkpoint_id,
        items=[
            RecommendedItem(
                item_id=model.item_id(r.index),
                title=model.title(r.index),
                score=r.score,
                because=[Reason(item_id=model.item_id(i), title=model.title(i), similarity=s) for i, s in r.because],
            )
            for r in ranked
        ],
    )


# ---------------------------------------------------------------------------------------------- operations
@router.get(
    "/healthz",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "the model is loading or failed to load"}},
    summary="200 once the checkpoint is loaded, 503 before (or when loading failed)",
)
async def healthz(state: State) -> JSONResponse:
    if state.model is not None:
        return JSONResponse(HealthResponse(status="ok", checkpoint_id=state.model.checkpoint_id).model_dump())
    if state.load_error is not None:
        return JSONResponse(HealthResponse(status="failed", detail=state.load_error).model_dump(), status_code=503)
    return JSONResponse(HealthResponse(status="loading").model_dump(), status_code=503,
                        headers={"Retry-After": str(state.settings.retry_after_s)})


@router.get("/metrics", summary="Prometheus metrics in the text exposition format", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
