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
# each time (DATABASE_URL, if set, is used as it is). SPEED=60 is an hour a minute.
DEMO_PORT ?= 8000
SPEED ?= 60
demo: install ## The service and a simulated day against it (ML engine, operator, vans); Ctrl-C stops both
	@if [ -z "$$DATABASE_URL" ]; then rm -rf .data-demo; fi
	@# One admin key for this demo's service and simulator, made up here (ADMIN_API_KEY), never written down.
	@key=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))'); \
	  DATA_DIR=.data-demo PORT=$(DEMO_PORT) ACCESS_LOG=false ADMIN_API_KEY=$$key $(BIN)/baywheels serve & server=$$!; \
	  trap 'kill $$server 2>/dev/null; wait $$server' EXIT INT TERM; \
	  $(BIN)/baywheels simulate --url http://127.0.0.1:$(DEMO_PORT) --key $$key --speed $(SPEED) --wait-ready 120

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
