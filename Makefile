# Two commands do all the set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REDIS_URL ?= redis://127.0.0.1:6379/0
export REDIS_URL

.PHONY: install test lint unit demo redis chromium bench clean compose-test

# The venv is rebuilt only when pyproject.toml changes (stamp file).
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

install: $(VENV)/.installed

redis:
	@bash scripts/ensure_redis.sh "$(REDIS_URL)"

# The web page's tests drive Debian's chromium through chromium-driver (installed when missing).
chromium:
	@bash scripts/ensure_chromium.sh

# ruff, then the architecture contracts of pyproject.toml [tool.importlinter] (which package may import which).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

test: install redis chromium lint
	$(PY) -m pytest -q

# The demo starts (and afterwards stops) Redis itself when it can, and runs without it otherwise.
# Extra flags: make demo DEMO_ARGS="--quick" (or --keep-running, --rounds N, --out DIR).
demo: install
	$(PY) -m sjft.demo $(DEMO_ARGS)

# The real stack under `docker compose` (CPU override): engine, base images, build, up, query, one training round,
# down. Needs root or a Docker engine; it makes what it lacks (scripts/compose_smoke.sh says what it does).
compose-test:
	@bash scripts/compose_smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
