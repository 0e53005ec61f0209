# Two commands matter: `make demo` and `make test`. Each sets up .venv itself, idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Installed extras are stamped so a second run does not touch pip unless pyproject.toml changed.
JOB_STAMP := $(VENV)/.stamp-job
DEV_STAMP := $(VENV)/.stamp-dev

.PHONY: demo test lint format crd lock cluster cluster-down control-plane bench clean \
	node-deps node-binaries node-dns node-prereqs node node-down images deploy test-node sched-binaries test-sched

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(JOB_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[job]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(JOB_STAMP)

# PyTorch (CPU use only), pinned here and nowhere else: the benchmarks' baseline, and torchvision's
# resnet101 that the convert-torch test compares our converted backbone with (`make test` installs it).
# The stamp names the versions, so changing one reinstalls. torch and torchvision come with --no-deps
# (pyproject.toml's `bench` extra has what they need; comment there).
TORCH_VERSION := 2.15.0
TORCHVISION_VERSION := 0.29.2
TORCH_STAMP := $(VENV)/.stamp-torch-$(TORCH_VERSION)-torchvision-$(TORCHVISION_VERSION)

$(TORCH_STAMP): pyproject.toml $(DEV_STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m pip install --quiet --no-deps torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	touch $@

# Benchmarks (bench/README.md): not part of `make test`; rewrites bench/RESULTS.md.
bench: $(TORCH_STAMP) control-plane sched-binaries
	$(PY) -m bench.run $(BENCH_ARGS)

# As root on a Debian-based machine: the whole system on the local node (envtest/demo.py: node, images,
# operator, the sample data Job and a two-stage training followed as `kubectl get dlt -w`). Elsewhere, or
# when the node's packages or binaries cannot be set up, a line says why and the one-device demo runs
# (python -m job demo). DEMO_ARGS=--keep-node leaves the node it started running.
demo: $(DEV_STAMP)
	@why=; [ "$$(id -u)" = 0 ] || why="the local node needs root"; \
	[ -n "$$why" ] || command -v apt-get >/dev/null || why="the local node needs a Debian-based machine"; \
	[ -n "$$why" ] || $(MAKE) --no-print-directory node-deps node-binaries node-dns \
		|| why="the node's packages or binaries could not be set up (above)"; \
	if [ -z "$$why" ]; then $(PY) -m envtest demo $(DEMO_ARGS); \
	else echo "make demo: $$why; running the one-device demo instead: python -m job demo" >&2; $(PY) -m job demo; fi

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

# tests/node runs on a real node: on a root Debian-based machine (CI) the node's packages and binaries come
# first; elsewhere one line says why and those tests are skipped (with CI=true they fail instead).
# The real-node tests that need the 3.4 GB worker image (build and import ~14 min cold, then `make demo`'s
# training and the fault tests, ~17 min) are marked full_node and run by `make test-node`, outside this budget.
# tests/sched (marker sched) runs kube-scheduler, kwok and Kueue, built against the plane's module versions
# (about 5 minutes cold, nothing warm); `make test-sched` runs those tests alone.
test: lint control-plane node-prereqs sched-binaries $(TORCH_STAMP)
	$(PY) -m pytest -m "not full_node"

test-node: node-prereqs
	$(PY) -m pytest -m full_node

test-sched: control-plane sched-binaries
	$(PY) -m pytest -m sched

cluster: control-plane
	$(PY) -m envtest up

cluster-down: $(DEV_STAMP)
	$(PY) -m envtest down

# The real one-node cluster (envtest/node.py): root on a Debian-based machine. These packages are the
# node's runtime and image tools; apt-get leaves installed ones alone.
NODE_PACKAGES := containerd runc containernetworking-plugins podman buildah mmdebstrap iptables conntrack
NODE_STAMP := $(VENV)/.stamp-node-deps

$(NODE_STAMP): | $(PY)
	@test "$$(id -u)" = 0 || { echo "make node: needs root (containerd, kubelet, iptables)" >&2; exit 1; }
	@command -v apt-get >/dev/null || { echo "make node: needs apt-get (a Debian-based machine)" >&2; exit 1; }
	apt-get install -y --no-install-recommends $(NODE_PACKAGES) \
		|| { apt-get update && apt-get install -y --no-install-recommends $(NODE_PACKAGES); }
	touch $@

node-deps: $(NODE_STAMP)

# kubelet, kube-scheduler and kube-proxy from the plane's pinned module set (about a minute once warm).
node-binaries: $(DEV_STAMP)
	$(PY) -m envtest build --node

node-prereqs: $(DEV_STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		$(MAKE) --no-print-directory node-deps node-binaries node-dns; \
	else echo "make test: not root on a Debian-based machine, so tests/node will not run"; fi

# CoreDNS with only the node's plugins (envtest/coredns/; ~7 min cold) for the node's cluster DNS.
node-dns: $(DEV_STAMP)
	$(PY) -m envtest build --node --dns

node: node-deps node-binaries node-dns
	$(PY) -m envtest node

node-down: $(DEV_STAMP)
	$(PY) -m envtest node-down

# Builds the images with podman (cached by a hash of their inputs); imports them when a node runs.
images: node-deps $(DEV_STAMP)
	$(PY) -m envtest images $(if $(wildcard .node/state.json),--node)

# Installs the operator with its image from a registry: make deploy IMG=REGISTRY/deeplab-controller:TAG
KUBECTL ?= kubectl
deploy:
	@case "$(IMG)" in *:*) ;; *) echo "usage: make deploy IMG=REGISTRY/deeplab-controller:TAG" >&2; exit 2;; esac
	img='$(IMG)' && tmp=$$(mktemp -d) && base=$$(realpath --relative-to=$$tmp manifests) \
	&& printf 'resources:\n  - %s\nimages:\n  - name: deeplab-controller\n    newName: %s\n    newTag: "%s"\n' \
		"$$base" "$${img%:*}" "$${img##*:}" > $$tmp/kustomization.yaml \
	&& $(KUBECTL) apply -k $$tmp; status=$$?; rm -rf $$tmp; exit $$status

clean:
	rm -rf $(VENV) .cluster .pytest_cache

# tests/sched and bench/scheduling_scale.py (envtest/sched.py): kube-scheduler, kwok and Kueue, built once
# into the binary cache from the plane's pinned module versions (cold: about 5 minutes on 2 cores; warm: nothing).
sched-binaries: $(DEV_STAMP)
	$(PY) -m envtest.sched build
