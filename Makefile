# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install lakeloop into it on first use; later runs skip
# the install unless pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-scale test-fast bench clean tools

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lakeloop demo

# two pytest-xdist workers: each test module runs whole on one worker, the serving modules together
# (tests/conftest.py orders and groups them); `make test PYTEST_WORKERS=0` runs the suite in one process
PYTEST_WORKERS ?= 2
PYTEST_DIST    := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

test: $(STAMP) tools
	$(BIN)/python -m pytest -q $(PYTEST_DIST) -m "not scale"

# the slowest tests (a 3-node loopback cluster, the HAProxy ingress, the champion rollout under load, the
# notebook top to bottom): 7.5 minutes on 2 cores (04:27-04:35 UTC 2026-12-01, 10 passed)
test-scale: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_DIST) -m scale

tools:  # test-only programs from Debian packages (Prometheus for tests/test_prometheus.py), when root
	@deploy/install-prometheus.sh

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_DIST) -m "not slow"

clean:
	rm -rf $(VENV) lake/*/ lake/mlflow.db lake/_* .pytest_cache
