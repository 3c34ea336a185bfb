# syntax=docker/dockerfile:1
# The service image: the pinned dependencies from requirements.lock, then the project as a wheel (not
# editable), so the installed package carries its SQL files as baywheels/sql. `docker compose up` runs it
# next to PostgreSQL (compose.yaml).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sql ./sql
COPY src ./src
RUN python -m pip wheel --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin baywheels
RUN python -m venv /opt/venv
# Dependencies first, in their own layer: it is rebuilt only when the lock changes. The lock is fully
# resolved and hash-pinned, hence --no-deps (it also keeps out Django; see the Makefile).
RUN --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    pip install --no-deps --require-hashes -r /tmp/requirements.lock
RUN --mount=type=bind,from=wheel,source=/dist,target=/tmp/dist \
    pip install --no-deps /tmp/dist/*.whl

WORKDIR /app
USER baywheels

# DATABASE_URL must be given (compose.yaml does): without it `serve` would start the embedded PostgreSQL,
# which is meant for `make run` on a laptop, not for a container.
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
# /readyz answers 503 while the database is unreachable; urlopen raises on it, so the check fails.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=4)"]
# `serve` applies pending migrations first (an advisory lock lets replicas start together), then serves.
CMD ["baywheels", "serve"]
