"""What the `/chat` shim does beyond a normal turn: it cleans the history the product's
widget sends and finds the stored conversation that history continues.

The product's widget (React, Link-Coach `widget/`) keeps the conversation itself and sends
its whole visible message list with every question: its canned greeting as the first
assistant turn, every answer, and the generic error text it shows when a call failed. It
has no conversation id.

Deliberate decisions (do not "fix"):

- Nothing in the history is refused for size, as the list only ever grows: items whose
  role is not `user` or `assistant` (`model`, Gemini's name for the assistant, counts as
  one) are dropped, so a `system` item never reaches the model as an instruction; text
  that is not a string is dropped; an item over `CHAT_HISTORY_ITEM_CHARS` is cut to that
  length; the prompt keeps the newest turns within `HISTORY_TOKEN_BUDGET`
  (`budget_history`). The route's body limit is `CHAT_MAX_BODY_BYTES`, not
  `MAX_BODY_BYTES`.
- The prompt uses the widget's history, which is what the leader sees; the conversation
  only decides where the turn is stored.
- A history continues a stored conversation when the conversation's last messages line up
  with the end of the history: the longest common subsequence of the conversation's last
  `TAIL` messages and the history's last `TAIL + SLACK` items must hold at least
  `MIN_SHARE` of those messages, including the newest stored question. Items the server
  never stored (the greeting, the widget's error text) are the slack; a message edited
  on the way still matches when its character trigrams mostly agree
  (`SIMILAR_TRIGRAMS`). Texts are compared on their first `COMPARE_CHARS` characters
  with whitespace collapsed, so a cut item matches its stored original (and two answers
  that agree on their first `COMPARE_CHARS` characters count as the same). Scoring
  all candidates costs under 10 ms of CPU in the worst case (20 conversations of
  same-length texts).
- Candidates are the user's `CANDIDATES` most recently updated conversations, read in one
  statement. The best match wins (most matched messages, then the larger share, then the
  most recent); two chats whose histories are identical are indistinguishable and the
  most recent one is continued. A history with no question in it (the first turn, only
  the greeting) or one that matches nothing starts a new conversation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ..db.repositories import conversations as repo
from ..llm.base import Turn

ROLES = {"user": "user", "assistant": "assistant", "model": "assistant"}
TAIL = 12
SLACK = 4
MIN_SHARE = 0.6
CANDIDATES = 20
COMPARE_CHARS = 400
SIMILAR_TRIGRAMS = 0.6


def clean_history(
    items: Iterable[Any], *, max_chars: int, question: str | None = None
) -> list[Turn]:
    """The widget's history as prompt turns: known roles only, text cut to `max_chars`,
    and without a last item that is the question itself (a client that appends the
    question before sending the list would otherwise ask it twice)."""
    turns: list[Turn] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        role = ROLES.get(str(item.get("role", "")).strip().lower())
        content = item.get("content")
        if role is None or not isinstance(content, str) or not content.strip():
            continue
        turns.append(Turn(role, content[:max_chars]))
    if question is not None and turns and turns[-1].role == "user":
        if turns[-1].content.strip() == question.strip():
            turns.pop()
    return turns


class _Text:
    """A message as compared: role, collapsed text, and its character trigrams (built
    only when an exact comparison fails)."""

    __slots__ = ("role", "text", "_trigrams")

    def __init__(self, role: str, text: str) -> None:
        self.role = role
        self.text = text
        self._trigrams: frozenset[str] | None = None

    @classmethod
    def of(cls, role: str, content: str) -> _Text:
        return cls(role, " ".join(content.split())[:COMPARE_CHARS])

    @property
    def trigrams(self) -> frozenset[str]:
        if self._trigrams is None:
            text = self.text
            self._trigrams = frozenset(text[i : i + 3] for i in range(len(text) - 2))
        return self._trigrams

    def matches(self, other: _Text) -> bool:
        if self.role != other.role:
            return False
        if self.text == other.text:
            return True
        # An edit keeps the length roughly; this also skips building most trigram sets.
        small, large = sorted((len(self.text), len(other.text)))
        if small < 3 or small < SIMILAR_TRIGRAMS * large:
            return False
        mine, theirs = self.trigrams, other.trigrams
        shared = len(mine & theirs)
        return shared / (len(mine) + len(theirs) - shared) >= SIMILAR_TRIGRAMS


def _common(stored: Sequence[_Text], history: Sequence[_Text]) -> tuple[int, set[int]]:
    """Length of the longest common subsequence, and which stored items are in it."""
    rows, cols = len(stored), len(history)
    same = [[s.matches(h) for h in history] for s in stored]
    table = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            if same[i][j]:
                table[i][j] = table[i + 1][j + 1] + 1
            else:
                table[i][j] = max(table[i + 1][j], table[i][j + 1])
    matched: set[int] = set()
    i = j = 0
    while i < rows and j < cols:
        if same[i][j]:
            matched.add(i)
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return table[0][0], matched


@dataclass(frozen=True, slots=True)
class _Score:
    matched: int
    share: float
    updated_at: datetime
    conversation_id: uuid.UUID


def score_tail(
    conversation_id: uuid.UUID,
    updated_at: datetime,
    stored: Sequence[_Text],
    history: Sequence[_Text],
) -> _Score | None:
    """How well a conversation's last messages line up with the end of the history;
    None when they do not."""
    last_question = max((i for i, t in enumerate(stored) if t.role == "user"), default=None)
    if last_question is None:
        return None
    window = history[-(len(stored) + SLACK) :]
    # Most candidates fail here, before the full comparison.
    if not any(stored[last_question].matches(h) for h in window):
        return None
    matched, which = _common(stored, window)
    share = matched / len(stored)
    if last_question not in which or share < MIN_SHARE:
        return None
    return _Score(matched, share, updated_at, conversation_id)


async def find_continued_conversation(
    conn: asyncpg.Connection, *, user_id: str, history: Sequence[Turn]
) -> uuid.UUID | None:
    """The user's stored conversation that `history` continues, or None for a new one."""
    if not any(t.role == "user" for t in history):
        return None
    texts = [_Text.of(t.role, t.content) for t in history[-(TAIL + SLACK) :]]
    rows = await repo.recent_tails(
        conn,
        user_id=user_id,
        conversations=CANDIDATES,
        messages=TAIL,
        prefix_chars=COMPARE_CHARS * 2,
    )
    tails: dict[uuid.UUID, tuple[datetime, list[_Text]]] = {}
    for row in rows:
        entry = tails.setdefault(row["conversation_id"], (row["updated_at"], []))
        entry[1].append(_Text.of(row["role"], row["content"]))
    scores = [
        score
        for cid, (updated_at, stored) in tails.items()
        if (score := score_tail(cid, updated_at, stored, texts)) is not None
    ]
    if not scores:
        return None
    best = max(scores, key=lambda s: (s.matched, s.share, s.updated_at))
    return best.conversation_id
