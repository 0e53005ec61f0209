# Two commands matter: `make demo` and `make test`. Each sets up .venv itself, idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Installed extras are stamped so a second run does not touch pip unless pyproject.toml changed.
JOB_STAMP := $(VENV)/.stamp-job
DEV_STAMP := $(VENV)/.stamp-dev

.PHONY: demo test lint format crd lock cluster cluster-down control-plane bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(JOB_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[job]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(JOB_STAMP)

# Benchmarks (bench/README.md): not part of `make test`; rewrites bench/RESULTS.md.
BENCH_STAMP := $(VENV)/.stamp-bench
TORCH_VERSION := 2.15.0

$(BENCH_STAMP): pyproject.toml $(DEV_STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m pip install --quiet --no-deps torch==$(TORCH_VERSION)
	touch $@

bench: $(BENCH_STAMP) control-plane
	$(PY) -m bench.run $(BENCH_ARGS)

demo: $(JOB_STAMP)
	$(PY) -m job demo

# Builds (first run) or reuses the pinned control-plane binaries outside the repo.
control-plane: $(DEV_STAMP)
	$(PY) -m envtest build

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint images/*.Dockerfile
	$(PY) -m controller crd --check

format: $(DEV_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The CRD is generated from controller/api.py; lint fails when the committed file is stale.
crd: $(DEV_STAMP)
	$(PY) -m controller crd --write

# The images install their packages from these hashed locks (pip --require-hashes). Run after changing a
# dependency in pyproject.toml; existing pins are kept unless `make lock LOCK_ARGS=--upgrade`. The target
# is CPython 3.11 on Linux from any host (the aarch64 resolution is the same; README "Images").
LOCK := $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' $(LOCK_ARGS) \
	pyproject.toml images/build-requirements.in

lock: $(DEV_STAMP)
	$(LOCK) --extra controller -o images/requirements-controller.lock
	$(LOCK) --extra job -o images/requirements-worker.lock

test: lint control-plane
	$(PY) -m pytest

cluster: control-plane
	$(PY) -m envtest up

cluster-down: $(DEV_STAMP)
	$(PY) -m envtest down

clean:
	rm -rf $(VENV) .cluster .pytest_cache
