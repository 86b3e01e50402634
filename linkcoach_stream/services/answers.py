"""What a user does with an answer once it is there: rate it, or ask for another one.

Feedback: one rating per user per answer (`up`/`down`, an optional comment); a second
call replaces the first. Only the conversation's owner can rate, and only an answer that
finished (`complete`, or `interrupted` with what was written by then): a `streaming`
answer is not there yet and a failed one has nothing to judge.

Regeneration is a turn without a new question. The user message the answer replied to
is asked again: the same rules as a turn apply (turn rate limit, stream cap,
`client_message_id` idempotency), the same generation job runs (`ChatService.start_generation`,
so usage, partial writes, cancel and resume behave exactly like a turn's), and the model
gets the history before that question, current versions only. The answer it replaces
stays stored as an earlier version; `GET /conversations/{id}` shows the newest one, in
the place of the first, with the ids of all versions. Decisions:

- One question has at most one answer being written: regenerating while the current
  version still streams is refused (409 `answer_in_progress`) instead of starting a
  second stream that would race the first to be "current". The question's row is
  locked while the new version is numbered, so two regenerations cannot both win.
- Any version may be named: the new answer always replies to the same question and
  becomes the newest version.
- The regeneration's `client_message_id` lives on the new answer row (its own unique
  index per conversation), not on the question, whose id is the original turn's.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from ..db.repositories import answers
from ..db.repositories import conversations as repo
from ..errors import Conflict
from ..llm.base import PassageLike, Turn
from ..metrics import Metrics
from ..rag.protocol import sources_of
from .auth import Principal
from .chat import _HISTORY_ROWS, ChatService, TurnStarted, turn_code
from .leases import Leases
from .usage import check_budget

RATEABLE = frozenset({"complete", "interrupted"})


def feedback_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "message_id": str(row["message_id"]),
        "rating": row["rating"],
        "comment": row["comment"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def give_feedback(
    pool: asyncpg.Pool,
    metrics: Metrics,
    user: Principal,
    message_id: uuid.UUID,
    *,
    rating: str,
    comment: str | None,
) -> dict[str, Any]:
    async with pool.acquire() as conn:
        answer = await answers.get_answer(conn, message_id=message_id, user_id=user.user_id)
        if answer["status"] == "streaming":
            raise Conflict(
                "the answer is still being written; rate it once it has finished",
                code="answer_not_finished",
            )
        if answer["status"] not in RATEABLE:
            raise Conflict("a failed answer cannot be rated", code="answer_failed")
        row = await answers.upsert_feedback(
            conn, message_id=message_id, user_id=user.user_id, rating=rating, comment=comment
        )
    metrics.feedback.labels(rating).inc()
    return feedback_json(row)


async def regenerate(
    chat: ChatService,
    user: Principal,
    message_id: uuid.UUID,
    *,
    client_message_id: str | None = None,
) -> TurnStarted:
    """Start a new version of the answer `message_id` (or replay the one this
    `client_message_id` already started), under an admission slot like a turn."""
    return await chat.admitted(
        lambda leases: _regenerate(
            chat, user, message_id, client_message_id=client_message_id, leases=leases
        )
    )


async def _regenerate(
    chat: ChatService,
    user: Principal,
    message_id: uuid.UUID,
    *,
    client_message_id: str | None,
    leases: Leases,
) -> TurnStarted:
    await chat.limiter.hit("turns", user.user_id)
    async with chat.pool.acquire() as conn:
        target = await answers.get_answer(conn, message_id=message_id, user_id=user.user_id)
        conversation = await repo.get_conversation(
            conn, conversation_id=target["conversation_id"], user_id=user.user_id
        )

        async def earlier() -> asyncpg.Record | None:
            """This request's regeneration, if one with its client_message_id exists."""
            if not client_message_id:
                return None
            return await answers.find_regeneration(
                conn, conversation_id=conversation["id"], client_message_id=client_message_id
            )

        if (existing := await earlier()) is not None:
            return _replayed(existing, target)
        question = await answers.get_question(conn, message_id=target["reply_to"])
        current = await answers.current_reply(conn, reply_to=target["reply_to"])
        if client_message_id and current["status"] == "streaming":
            # The streaming version may be this very request's, committed by a twin
            # between the two reads above: it is replayed, not refused.
            if (existing := await earlier()) is not None:
                return _replayed(existing, target)
    _refuse_if_streaming(current)
    # A regeneration is billed like a turn, so it is refused like one once today's
    # budget is spent.
    await check_budget(chat.pool, chat.settings, chat.metrics, user_id=user.user_id)

    code = turn_code(user, conversation)
    passages = await chat.context(question["content"], code)
    new_id = uuid.uuid4()
    leases.take(await chat.limiter.acquire_stream(user.user_id, str(new_id)))
    return await _store_and_start(
        chat,
        user,
        target=target,
        code=code,
        passages=passages,
        new_id=new_id,
        client_message_id=client_message_id,
        leases=leases,
    )


async def _store_and_start(
    chat: ChatService,
    user: Principal,
    *,
    target: asyncpg.Record,
    code: str | None,
    passages: list[PassageLike],
    new_id: uuid.UUID,
    client_message_id: str | None,
    leases: Leases,
) -> TurnStarted:
    conversation_id: uuid.UUID = target["conversation_id"]
    sources = sources_of(passages)
    async with chat.pool.acquire() as conn, conn.transaction():
        question = await answers.lock_question(conn, message_id=target["reply_to"])
        if client_message_id:
            existing = await answers.find_regeneration(
                conn, conversation_id=conversation_id, client_message_id=client_message_id
            )
            if existing is not None:
                # The same request won the lock first; this one only reads its answer.
                return _replayed(existing, target)
        current = await answers.current_reply(conn, reply_to=question["id"])
        _refuse_if_streaming(current)
        version = int(current["last_version"]) + 1
        try:
            await answers.insert_version(
                conn,
                message_id=new_id,
                conversation_id=conversation_id,
                user_id=user.user_id,
                reply_to=question["id"],
                version=version,
                anchor_seq=int(current["position"]),
                client_message_id=client_message_id,
                provider=chat.provider.name,
                model=chat.provider.model,
                sources=sources,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(
                "this client_message_id is already used in this conversation",
                code="client_message_id_used",
            ) from None
        history_rows = await answers.history_before(
            conn, conversation_id=conversation_id, position=question["seq"], limit=_HISTORY_ROWS
        )
        await repo.touch_conversation(conn, conversation_id=conversation_id)

    prompt = chat.prompt(
        turns=[Turn(r["role"], r["content"]) for r in history_rows],
        question=question["content"],
        passages=passages,
        code=code,
    )
    started = TurnStarted(
        str(conversation_id),
        str(new_id),
        sources,
        replayed=False,
        meta={
            "regenerated_from": str(target["id"]),
            "reply_to": str(question["id"]),
            "version": version,
        },
    )
    chat.metrics.regenerations.inc()
    chat.start_generation(started=started, prompt=prompt, leases=leases)
    return started


def _refuse_if_streaming(current: asyncpg.Record) -> None:
    if current["status"] == "streaming":
        raise Conflict(
            "an answer to this question is still being written; wait for it or cancel it",
            code="answer_in_progress",
            message_id=str(current["id"]),
        )


def _replayed(existing: asyncpg.Record, target: asyncpg.Record) -> TurnStarted:
    if existing["reply_to"] != target["reply_to"]:
        raise Conflict(
            "this client_message_id was used to regenerate another answer",
            code="client_message_id_used",
        )
    return TurnStarted(
        str(existing["conversation_id"]), str(existing["id"]), existing["sources"], True
    )
