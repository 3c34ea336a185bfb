"""The ML engine: posts its view of the stations as suggestions, in batches the service accepts, and reads
back what became of them."""

import asyncio
import typing
from collections.abc import Iterator, Sequence
from typing import Self

import msgspec

from ..models import IngestResult, SuggestionBatch, SuggestionIn, SuggestionOutcome
from .base import BaseClient

# The service's own limit on a batch (POST /suggestions), read from the model it validates with.
BATCH_MAX: int = next(m.max_length for m in typing.get_args(SuggestionBatch)[1:] if m.max_length)
# The service's default MAX_BODY_BYTES (10 MiB); a service configured lower needs ``max_bytes`` to match.
BODY_MAX = 10 * 1024 * 1024
# The outcomes feed's beginning, and the most rows of one page (OutcomePage).
START = "0-0"
OUTCOMES_PAGE_MAX = 1000


class MLEngine(BaseClient):
    """The ML engine's calls. ``post_suggestions`` splits a view of any size into batches within the service's
    limits (``batch_size`` items, ``max_bytes`` of JSON) and posts them in order, so the last item for a
    station pair still wins; each batch is its own transaction."""

    async def post_suggestions(
        self, items: Sequence[SuggestionIn], *, batch_size: int = BATCH_MAX, max_bytes: int = BODY_MAX
    ) -> IngestResult:
        """The batches' results added up: ``ids`` is aligned with ``items`` (None for an item skipped because
        its pair has an open task)."""
        if not 1 <= batch_size <= BATCH_MAX:
            raise ValueError(f"batch_size must be 1..{BATCH_MAX}")
        encoded = [msgspec.json.encode(item) for item in items]
        created = updated = duplicates = 0
        ids: list[int | None] = []
        for chunk in _chunks(encoded, batch_size, max_bytes):
            # Safe to resend after a lost answer: a pending suggestion of the same pair is updated in place.
            result = await self.call(
                "POST", "/suggestions", IngestResult, body=[msgspec.Raw(b) for b in chunk]
            )
            created += result.created
            updated += result.updated
            duplicates += result.duplicates
            ids += result.ids
        return IngestResult(created=created, updated=updated, duplicates=duplicates, ids=ids)

    def outcomes(
        self, after: str = START, *, limit: int = OUTCOMES_PAGE_MAX, poll: float | None = None
    ) -> "Outcomes":
        """What became of the suggestions, a page at a time from the cursor ``after`` (the beginning unless
        given: pass a cursor saved before to resume there): ``async for page in engine.outcomes(saved):``.
        Without ``poll`` the pages end when the feed is caught up; with it, an empty page is asked for again
        ``poll`` seconds later, for ever. See ``Outcomes``."""
        if not 1 <= limit <= OUTCOMES_PAGE_MAX:
            raise ValueError(f"limit must be 1..{OUTCOMES_PAGE_MAX}")
        return Outcomes(self, after, limit, poll)

    async def outcomes_page(
        self, after: str = START, limit: int = OUTCOMES_PAGE_MAX
    ) -> list[SuggestionOutcome]:
        """One page of ``GET /suggestions/outcomes``: the changes after the cursor ``after``, in order."""
        params: dict[str, str | int] = {"after": after, "limit": limit}
        return await self.call("GET", "/suggestions/outcomes", list[SuggestionOutcome], params=params)


class Outcomes:
    """The outcomes feed as an async iterator of non-empty pages. ``cursor`` is the last row's of the page
    handed out last (``after`` before the first): save it once that page is dealt with, and a restart that
    passes it to ``MLEngine.outcomes`` reads on from the next change, so nothing is missed and, at worst, the
    page in hand when the process died is read twice."""

    def __init__(self, engine: MLEngine, after: str, limit: int, poll: float | None) -> None:
        self.cursor = after
        self._engine = engine
        self._limit = limit
        self._poll = poll

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[SuggestionOutcome]:
        while True:
            page = await self._engine.outcomes_page(self.cursor, self._limit)
            if page:
                self.cursor = page[-1].cursor
                return page
            if self._poll is None:
                raise StopAsyncIteration
            await asyncio.sleep(self._poll)


def _chunks(encoded: list[bytes], batch_size: int, max_bytes: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    size = 2  # the brackets
    for item in encoded:
        if chunk and (len(chunk) == batch_size or size + len(item) + 1 > max_bytes):
            yield chunk
            chunk, size = [], 2
        if size + len(item) > max_bytes:
            raise ValueError(f"one suggestion is larger than {max_bytes} bytes of JSON")
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        yield chunk
