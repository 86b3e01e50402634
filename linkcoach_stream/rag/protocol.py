"""What the services ask of retrieval, and how a passage is cited.

`Retrieval` is the one interface the chat turn and the report service both take (the
`Retriever` satisfies it; so does a test double). `prefetch` starts a question's analysis
ahead of its search (None when there is nothing to start); its handle goes to `search`.
`source_of` is the one citation of a passage, stored with answers and reports and sent in
`meta`. A knowledge-base file that a report reads whole cites the file, not a section:
such passages set `cites_section` false (`services/reports/knowledge.py`), so a report
composed without retrieval cites exactly what it did before these were one function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class Retrieval(Protocol):
    def prefetch(self, query: str, *, leadership_type: str | None = None) -> Any: ...

    async def search(
        self,
        query: str,
        *,
        leadership_type: str | None = None,
        followership_types: Sequence[str] = (),
        categories: Sequence[str] | None = None,
        k: int = 4,
        prefetched: Any = None,
    ) -> Sequence[Any]: ...


def source_of(passage: Any) -> dict[str, Any]:
    source = {"path": passage.path, "title": passage.title, "category": passage.category}
    if getattr(passage, "cites_section", True):
        source["section"] = passage.section
    return source


def sources_of(passages: Iterable[Any]) -> list[dict[str, Any]]:
    """Each document once, in rank order, with the section that matched best."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for passage in passages:
        if passage.path not in seen:
            seen.add(passage.path)
            out.append(source_of(passage))
    return out
