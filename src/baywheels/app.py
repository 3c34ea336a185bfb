"""The Starlette application: routes, error handlers, middleware, and the pool owned by the lifespan."""

import asyncio
import gc
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import db, direct, logs, metrics, openapi, overview, protocol, shutdown
from . import settings as config
from .auth import Guard
from .dispatcher import Dispatcher
from .endpoints import FixedPathsFirst
from .errors import EXCEPTION_HANDLERS
from .events import EventHub
from .handlers import ENDPOINTS, console
from .listener import Listener
from .maintenance import Maintenance, default_jobs
from .middleware import RequestContext
from .models import AUTH_OFF_WARNING
from .settings import Settings
from .state import STATE_KEY, AppState

log = structlog.get_logger(__name__)


def create_app(settings: Settings, *, serving: bool = False) -> Starlette:
    """``serving``: under uvicorn in a process of its own, where SIGTERM drains the dispatcher first
    (shutdown.py); not in tests that run the app in-process."""
    db.dsn(settings)  # fails here, not at start-up, when there is none
    if settings.tracing_on:
        from . import tracing  # OpenTelemetry is imported only when tracing is on

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, AppState]]:
        if settings.tracing_on:
            tracing.start(settings)
        pool = await db.create_pool(settings)
        log.info("pool_open", database=settings.safe_database_url, max_size=settings.pool_max_size)
        read_pool = await db.create_read_pool(settings, pool)
        if read_pool is not pool:
            log.info("read_pool_open", database=settings.safe_read_database_url)
        if not settings.auth_on:
            log.warning("auth_off", detail=AUTH_OFF_WARNING)
        guard = Guard(settings, pool)
        dispatcher = Dispatcher(pool, settings)
        events = EventHub(pool)
        listener = Listener(settings)
        listener.subscribe(dispatcher)
        listener.subscribe(events)
        await listener.start()
        maintenance = asyncio.create_task(Maintenance(settings, default_jobs(settings)).run())
        # With several worker processes, whichever answers /metrics reads the others' pools from their files.
        sampler = None
        if metrics.multiprocess_mode():
            sampler = asyncio.create_task(metrics.sample_pool_every(pool))
        restore_signals = shutdown.drain_on_signals(dispatcher, events) if serving else None
        state = AppState(
            settings=settings,
            pool=pool,
            read_pool=read_pool,
            dispatcher=dispatcher,
            guard=guard,
            events=events,
            figures=overview.Cached(),
        )
        try:
            yield {STATE_KEY: state}
        finally:
            if restore_signals is not None:
                restore_signals()
            maintenance.cancel()
            if sampler is not None:
                sampler.cancel()
            await asyncio.gather(maintenance, *([sampler] if sampler else []), return_exceptions=True)
            await events.stop()
            await listener.stop()
            # What is left of SHUTDOWN_GRACE_SECONDS once uvicorn has waited for the requests: half for the
            # statements in flight (tasks given back), half for the pool, then its connections are cut.
            cleanup = settings.shutdown_cleanup_seconds / 2
            await dispatcher.stop(within=cleanup)
            for each in {read_pool, pool}:
                try:
                    await asyncio.wait_for(each.close(), cleanup)
                except TimeoutError:
                    each.terminate()
                    log.warning("pool_terminated", after_seconds=cleanup)
            log.info("pool_closed")
            if settings.tracing_on:
                tracing.stop()

    routes = [
        *(endpoint.route() for endpoint in ENDPOINTS),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/docs", openapi.swagger_ui, methods=["GET"]),
        Route("/docs/init.js", openapi.swagger_init, methods=["GET"]),
        Route("/redoc", openapi.redoc, methods=["GET"]),
        Mount("/static/docs", StaticFiles(directory=openapi.assets_dir()), name="docs-assets"),
        *console.routes(),
    ]
    middleware = [
        Middleware(
            RequestContext,
            max_body_bytes=settings.max_body_bytes,
            body_timeout=settings.request_body_timeout,
            access_log=settings.access_log,
        )
    ]
    if settings.tracing_on:
        # Around RequestContext, so that its lines (the access log's, a 500's) are written in the span.
        middleware.insert(0, Middleware(tracing.Tracing))
    if settings.cors_origin_list:
        # A dashboard on another origin; preflights are answered here, before any credential is asked for.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origin_list,
                allow_methods=["GET", "POST", "PUT", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
                expose_headers=[
                    "X-Request-ID",
                    "Retry-After",
                    "RateLimit-Limit",
                    "RateLimit-Remaining",
                    "RateLimit-Reset",
                ],
                max_age=600,
            )
        )
    app = Starlette(exception_handlers=EXCEPTION_HANDLERS, middleware=middleware)
    # Starlette takes no router class; its own would try every route's pattern in turn.
    app.router = FixedPathsFirst(routes, lifespan=lifespan)
    return app


def serving_gc() -> None:
    """For a process about to serve. Hundreds of requests in flight keep many young objects alive, and each
    full collection walks them all: collecting less often took the p99 of dispatch at 256 concurrent workers
    from 90-96 ms to 61-68 ms. What exists by now (modules, the app) lives as long as the process, so it is
    kept out of every later collection."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def from_environment() -> Starlette:
    """The app of one worker process when `serve` runs several (uvicorn's factory): each builds its own from
    the environment, where the parent has put the DATABASE_URL it resolved."""
    settings = config.load()
    logs.configure(settings.log_level, settings.log_format, trace_ids=settings.tracing_on)
    protocol.configure(settings)
    direct.configure(settings)
    app = create_app(settings, serving=True)
    serving_gc()
    return app
