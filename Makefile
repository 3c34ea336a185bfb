# Bay Wheels dispatch service. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run demo test check fmt migrate bench bench-quick lock clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

# The lock is fully resolved and hash-pinned, so it installs with --no-deps (this also keeps out Django,
# which drf-spectacular-sidecar declares but we never import: we only serve its Swagger UI/ReDoc files).
$(INSTALLED): pyproject.toml requirements-dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

install: $(INSTALLED) ## Create .venv and install the pinned dependencies

run: install ## Migrate and serve on http://127.0.0.1:8000 (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/baywheels serve

# The day needs a service with no open work, so the demo's embedded PostgreSQL starts afresh under .data-demo/
# each time (DATABASE_URL, if set, is used as it is). Its stations are real to the service: made up (STATIONS,
# SEED), written as a GBFS feed and imported into the registry first. SPEED=60 is an hour a minute. Suggestions
# the ML engine stops posting expire after 30 simulated minutes (SUGGESTION_TTL in real seconds). At a
# terminal the service stays up after the day, for the console, until Ctrl-C; otherwise the demo ends with the
# simulator's exit code. The service logs warnings and errors only (DEMO_LOG_LEVEL).
DEMO_PORT ?= 8000
SPEED ?= 60
STATIONS ?= 60
VANS ?= 12
SEED ?= 1
DEMO_LOG_LEVEL ?= warning
demo: install ## The service and a simulated day against it (ML engine, operator, vans), watched at /ui
	@if [ -z "$$DATABASE_URL" ]; then rm -rf .data-demo; fi
	@mkdir -p .data-demo
	@$(BIN)/baywheels simulate --write-gbfs .data-demo/gbfs --stations $(STATIONS) --seed $(SEED)
	@LOG_LEVEL=$(DEMO_LOG_LEVEL) DATA_DIR=.data-demo $(BIN)/baywheels stations import .data-demo/gbfs
	@# One admin key for this demo's service and simulator, made up here (ADMIN_API_KEY), kept in a file only
	@# this user can read, for signing in to the console. It stands in for every caller (ML engine, operator,
	@# all the vans), so its rate limit is lifted (RATE_LIMIT_ADMIN).
	@key=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))'); \
	  (umask 077 && printf '%s\n' "$$key" > .data-demo/admin-api-key); \
	  ttl=$$(awk 'BEGIN { print 1800 / $(SPEED) }'); \
	  SUGGESTION_TTL=$$ttl LOG_LEVEL=$(DEMO_LOG_LEVEL) ACCESS_LOG=false RATE_LIMIT_ADMIN=1000000/second \
	    DATA_DIR=.data-demo PORT=$(DEMO_PORT) ADMIN_API_KEY=$$key \
	    $(BIN)/baywheels serve & server=$$!; \
	  trap 'kill $$server 2>/dev/null; wait $$server' EXIT INT TERM; \
	  url=http://127.0.0.1:$(DEMO_PORT); \
	  signin="sign in with the demo's admin key: cat .data-demo/admin-api-key"; \
	  echo "The console: $$url/ui ($$signin)"; \
	  echo "The API: curl -H \"Authorization: Bearer \$$(cat .data-demo/admin-api-key)\" $$url/stats"; \
	  $(BIN)/baywheels simulate --url $$url --key $$key --speed $(SPEED) --vans $(VANS) --seed $(SEED) \
	    --wait-ready 120; \
	  status=$$?; \
	  if [ -t 0 ] && [ $$status -eq 0 ]; then \
	    echo "The day is over; the service stays up for the console at $$url/ui ($$signin)."; \
	    echo "Ctrl-C stops it."; \
	    wait $$server; \
	  fi; \
	  exit $$status

migrate: install ## Apply pending migrations (DATABASE_URL, or the embedded server under .data/)
	$(BIN)/baywheels migrate

check: install ## Lint, format check and type check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: check ## Checks, then the test suite against a real PostgreSQL
	$(BIN)/pytest

# The benchmark is a package beside the service (bench/), not part of it: run from the checkout.
bench: install ## Benchmark of record (see docs/benchmarks.md)
	$(BIN)/python -m bench

bench-quick: install ## A few-second run of the benchmark harness
	$(BIN)/python -m bench --quick

fmt: install ## Format and auto-fix
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

lock: install ## Re-resolve requirements*.lock from pyproject.toml
	$(BIN)/python -m pip install --quiet uv
	@# The image's lock has the tracing extra: OTEL_EXPORTER_OTLP_ENDPOINT then works without a rebuild.
	for pair in "requirements.lock:tracing" "requirements-dev.lock:dev"; do \
	  out=$${pair%%:*}; extra="--extra $${pair#*:}"; \
	  $(BIN)/uv pip compile pyproject.toml $$extra --python-version 3.11 --generate-hashes --quiet \
	    --no-emit-package django --no-emit-package asgiref --no-emit-package sqlparse -o $$out; \
	done

clean: ## Remove the virtual environment and the embedded database's data
	rm -rf $(VENV) .data .data-demo
