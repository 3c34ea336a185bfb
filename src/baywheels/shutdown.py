"""Graceful shutdown of a serving process. On SIGTERM (or SIGINT) uvicorn stops accepting, closes idle
connections, waits for the requests in flight, then ends the lifespan. A long poll would keep it waiting for
up to 30 s and then be cut; so the signal also drains the dispatcher at once: its sleeping long polls are
answered (404, as when their wait ends: the client asks again, and reaches another instance), while the
dispatch statements in flight finish and deliver their answers, or give their tasks back if the client left.
Event streams (GET /events), which never end by themselves, end too: their clients reconnect elsewhere with
Last-Event-ID.

uvicorn handles the signals itself (``signal.signal`` while it serves, restored afterwards) and tells the app
nothing until every request has ended, so the lifespan chains a handler in front of uvicorn's."""

import asyncio
import signal
from collections.abc import Callable
from types import FrameType

import structlog

from .dispatcher import Dispatcher
from .events import EventHub

log = structlog.get_logger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def drain_on_signals(dispatcher: Dispatcher, events: EventHub) -> Callable[[], None]:
    """From now on SIGTERM and SIGINT drain ``dispatcher`` and end the event streams, then reach the handler
    they had (uvicorn's). Returns the function that puts those handlers back."""
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def drain() -> None:
        answered = dispatcher.drain()
        log.info("shutdown_draining", long_polls_answered=answered, event_streams_ended=events.close())

    def handler(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(drain)
        chained = previous[signal.Signals(sig)]
        if callable(chained):
            chained(sig, frame)
        elif chained == signal.SIG_DFL and sig == signal.SIGINT:
            raise KeyboardInterrupt

    for sig in SIGNALS:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, chained in previous.items():
            signal.signal(sig, chained)

    return restore
