# A DeepLabV3 worker with MindSpore's CPU backend: clusters without NPUs, and trying the operator anywhere.
# Build from the repository root: docker build -f images/worker-cpu.Dockerfile -t IMAGE .
# Reproducible builds pin the base by digest (README "Images" says how to look it up):
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
# The base must be CPython 3.11: images/requirements-worker.lock is resolved for it (`make lock`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/venv
WORKDIR /src
# Every third-party file (MindSpore included) is checked against the lock's hashes; then the project
# itself is built offline with the locked setuptools. `pip check` fails a lock missing a dependency.
COPY images/requirements-worker.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.lock
COPY pyproject.toml ./
# Only the package this image runs: no controller/, no envtest/.
COPY job job
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation --no-index . \
    && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="deeplab-operator worker (CPU)" \
      org.opencontainers.image.description="DeepLabV3 MindSpore training job, CPU backend" \
      org.opencontainers.image.licenses="Apache-2.0"
# MindSpore's CPU kernels link OpenMP at run time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN useradd --uid 1000 --create-home worker
USER 1000:1000
WORKDIR /home/worker
ENTRYPOINT ["python", "-m", "job", "launch", "--"]
CMD ["train", "--help"]
